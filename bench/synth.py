"""Phantom generation speed: 2-D images per second per core at 256² for every modality, and
3-D volumes per second (CT, MRI), next to a baseline measured in the same run: the cost of
encoding the same sample for the triplet store (compressed .npz), which every generated image
pays anyway. Target: >= 50 2-D images/s/core, so data generation never limits CPU training.
Run: `python bench/synth.py` (single process).
"""

from __future__ import annotations

import time

from rcmed.data.store import encode_sample
from rcmed.data.synth import GENERATORS, VOLUME_MODALITIES, phantom_samples, synth


def _rate(fn, n_min: int = 10, min_time: float = 1.0) -> float:
    fn(0)
    t0 = time.perf_counter()
    i = 0
    while i < n_min or time.perf_counter() - t0 < min_time:
        fn(i)
        i += 1
    return i / (time.perf_counter() - t0)


def main() -> None:
    print(f"{'modality':<12}{'2-D img/s':>10}{'vs target 50':>14}{'store encode img/s':>20}{'synth/encode':>14}")
    for mod in GENERATORS:
        rate = _rate(lambda i, m=mod: synth(m, i))
        samples = [phantom_samples(synth(mod, i), f"b{i}")[0] for i in range(5)]
        enc = _rate(lambda i, s=samples: encode_sample(s[i % len(s)]))
        print(f"{mod:<12}{rate:>10.0f}{rate / 50:>13.1f}x{enc:>20.0f}{rate / enc:>13.2f}x")
    for mod in VOLUME_MODALITIES:
        vol = _rate(lambda i, m=mod: synth(m, i, volume=True), n_min=3)
        shape = synth(mod, 0, volume=True).image.array.shape
        print(f"{mod:<12} volumes {shape}: {vol:.2f} volumes/s ({vol * shape[0]:.0f} slices/s)")
    print("synth/encode > 1 means generating a phantom costs less than storing it.")


if __name__ == "__main__":
    main()
