"""Load check of `rcmed serve` on 127.0.0.1: a bounded burst of concurrent requests (valid ones,
bad uploads and oversized ones mixed), then latency percentiles, throughput, status counts, and
the server's resident memory before, right after, and a few seconds after the burst.

Run: `python bench/serve_load.py [--model RUN/model] [--requests 60] [--concurrency 8]`.
Without --model a randomly initialised tiny model is saved to a temporary folder (latency and
robustness do not depend on what the model learned). Expected: no 5xx other than 503 (overload),
and memory back near its baseline after the burst.
"""

from __future__ import annotations

import argparse
import io
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def model_folder(given: str | None, tmp: Path) -> str:
    """`given`, or a randomly initialised tiny model saved under `tmp` (what a server does with a request does
    not depend on what its model learned)."""
    if given is not None:
        return given
    from rcmed.model.config import RCMedConfig
    from rcmed.model.rcmed import RCMedModel

    RCMedModel(RCMedConfig.tiny()).save_pretrained(tmp / "tiny")
    return str(tmp / "tiny")


def main() -> None:
    import httpx
    from PIL import Image

    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--requests", type=int, default=60)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--queue-size", type=int, default=4)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="rcmed-load-"))
    model = model_folder(args.model, tmp)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "rcmed.cli", "serve", "--model", model, "--port", str(port),
                             "--queue-size", str(args.queue_size), "--max-upload-mb", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(base + "/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        rng = np.random.default_rng(0)
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (128, 128), dtype=np.uint8)).save(buf, format="PNG")
        good = buf.getvalue()
        kinds = {"valid": (good, "segment the liver"), "corrupt": (b"not an image", "segment the liver"),
                 "empty prompt": (good, " "), "too large": (b"\0" * (3 * 2**20), "segment the liver")}
        plan = [list(kinds)[i % 4] if i % 3 == 0 else "valid" for i in range(args.requests)]
        warm = httpx.post(base + "/v1/segment", files={"file": ("x.png", good)}, data={"prompt": "segment the liver"}, timeout=120)
        baseline = rss_mb(proc.pid)

        def one(kind: str) -> tuple[str, int, float]:
            data, prompt = kinds[kind]
            t = time.perf_counter()
            r = httpx.post(base + "/v1/segment", files={"file": ("x.png", data)}, data={"prompt": prompt}, timeout=300)
            return kind, r.status_code, time.perf_counter() - t

        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            results = list(pool.map(one, plan))
        wall = time.perf_counter() - t0
        after = rss_mb(proc.pid)
        time.sleep(5)
        settled = rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    codes: dict[int, int] = {}
    for _, c, _ in results:
        codes[c] = codes.get(c, 0) + 1
    lat = np.array([t for k, c, t in results if c == 200])
    print(f"warm-up request: {warm.status_code}")
    print(f"{len(results)} requests, concurrency {args.concurrency}, queue size {args.queue_size}: {wall:.1f} s, "
          f"{len(results) / wall:.2f} req/s")
    print("status counts: " + ", ".join(f"{c}: {n}" for c, n in sorted(codes.items())))
    if lat.size:
        p50, p90, p99 = np.percentile(lat, [50, 90, 99])
        print(f"latency of 200s: p50 {p50:.2f} s, p90 {p90:.2f} s, p99 {p99:.2f} s")
    bad5xx = sum(n for c, n in codes.items() if c >= 500 and c != 503)
    print(f"5xx other than 503: {bad5xx}")
    print(f"server RSS: baseline {baseline:.0f} MB, right after burst {after:.0f} MB, 5 s later {settled:.0f} MB "
          f"({settled / baseline:.2f}x baseline)")


if __name__ == "__main__":
    main()
