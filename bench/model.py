"""Model latency on one 256x256 input, CPU, one process, all measured in the same run:

1. LiteMedSAM encoder: RCMed's modules vs the reference implementation (its own code, from the
   wheel), with the largest output difference.
2. LiteMedSAM box-prompted forward, reference code path (the baseline of a full answer).
3. The default RCMed config: a full answer (encoder + LM + decoder with the loop) with k targets,
   k = 1, 2, 4, 8 in one answer vs k separate answers. The answer text is fixed (teacher-forced)
   so the cost does not depend on what an untrained LM would say; greedy generation of 30 tokens
   is timed separately.
4. Peak resident memory of the process.

Targets (issue 5): encoder >= 2x faster than the reference with equal outputs; a full answer with
up to 4 targets < 3 s; 4 targets in one answer <= 1.5x one target. Run: `python bench/model.py`.
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from litemedsam_reference import load_reference  # noqa: E402

from rcmed.model.config import RCMedConfig  # noqa: E402
from rcmed.model.medsam import LiteMedSAM  # noqa: E402
from rcmed.model.rcmed import RCMedModel  # noqa: E402


def best(fn, n: int = 3) -> float:
    fn()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


@torch.inference_mode()
def answer(model: RCMedModel, x: torch.Tensor, k: int) -> dict[str, float]:
    """Encoder + one LM pass over prompt and a k-target answer + loop rounds of the decoder."""
    names = ["liver", "spleen", "left kidney", "right kidney", "aorta", "vertebra", "lesion", "body"][:k]
    prompt = "Segment the " + ", the ".join(names) + "."
    ans = ", ".join(f"the {n} <seg>" for n in names) + "."
    ids, _ = model.processor.encode(prompt, ans)
    ids_t = torch.tensor([ids])
    t0 = time.perf_counter()
    feats = model.encode(x)
    t1 = time.perf_counter()
    vis = model.visual_tokens(feats)
    h = model.run_lm(model.embed(ids_t, vis), None).hidden_states[-1]
    t2 = time.perf_counter()
    # decoder and loop: round 1 decode, then (rounds - 1) x (region pooling + LM re-read + decode)
    model._rounds(feats, ids_t, None, vis, h, model.config.loop_rounds)
    t3 = time.perf_counter()
    return {"encoder": t1 - t0, "lm": t2 - t1, "decoder+loop": t3 - t2, "total": t3 - t0}


def main() -> None:
    torch.manual_seed(0)
    x = torch.rand(1, 3, 256, 256)
    ref = load_reference()
    ours = LiteMedSAM.from_pretrained()
    with torch.inference_mode():
        diff = float((ours.encode(x).embedding - ref.image_encoder(x)).abs().max())
        t_ref = best(lambda: ref.image_encoder(x))
        t_ours = best(lambda: ours.encode(x))
        t_ref_full = best(lambda: ref(x, [[60, 70, 190, 200]]))
    print(f"LiteMedSAM encoder: reference {t_ref * 1000:.0f} ms, RCMed {t_ours * 1000:.0f} ms, "
          f"speed-up {t_ref / t_ours:.2f}x, max |diff| {diff:.2e}")
    print(f"LiteMedSAM full box-prompted forward (reference code): {t_ref_full * 1000:.0f} ms")

    model = RCMedModel(RCMedConfig.default()).eval()
    print(f"\nRCMed default config ({model.config.loop_rounds} loop rounds), one answer, teacher-forced text:")
    print(f"{'k':>3}{'encoder':>10}{'LM':>8}{'dec+loop':>10}{'total s':>9}{'k separate s':>14}{'one/separate':>14}{'vs k=1':>8}")
    one = None
    for k in (1, 2, 4, 8):
        runs = [answer(model, x, k) for _ in range(3)]
        r = {key: min(d[key] for d in runs) for key in runs[0]}
        single = min(answer(model, x, 1)["total"] for _ in range(2))
        one = one or r["total"]
        print(f"{k:>3}{r['encoder']:>10.2f}{r['lm']:>8.2f}{r['decoder+loop']:>10.2f}{r['total']:>9.2f}"
              f"{k * single:>14.2f}{r['total'] / (k * single):>13.2f}x{r['total'] / one:>7.2f}x")
    feats = model.encode(x)
    t_gen = best(lambda: model.generate(x, "Describe the image.", feats=feats, max_new_tokens=30), n=2)
    print(f"\ngreedy generation, up to 30 tokens with KV cache (image encoded once): {t_gen:.2f} s")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory of this process: {peak:.0f} MB")


if __name__ == "__main__":
    main()
