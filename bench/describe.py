"""Colour-region description throughput vs a bare `skimage.measure.regionprops` pass.

Prints, per input kind (organ scale: three overlapping/adjacent organ and lesion masks; cell
scale: an instance map of ~40-pixel nuclei) and size (256², 1024²): region descriptions per second
on one core, the regionprops rate over the same masks in the same run, their cost ratio, and the
projected hours to describe 20 million triplets on 16 cores. Targets: >= 1,000 regions/s/core at
256², cost <= 3x regionprops. Run: `python bench/describe.py` (single process; pin to one core
with `taskset -c 0` for a cleaner number).
"""

from __future__ import annotations

import time

import numpy as np
from skimage.measure import label, regionprops

from rcmed.data.describe import describe, describe_instances

ORGAN_PROPS = ("area", "bbox", "centroid", "perimeter", "eccentricity", "orientation", "solidity")
CELL_PROPS = ("area", "bbox", "centroid")


def organ_case(size: int, seed: int) -> tuple[np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    img = rng.normal(0.4, 0.05, (size, size)).astype(np.float32)
    cx, cy = 0.4 + 0.1 * rng.random(), 0.45 + 0.1 * rng.random()
    organ = ((yy - cy) / 0.3) ** 2 + ((xx - cx) / 0.22) ** 2 <= 1
    lesion = ((yy - cy - 0.05) ** 2 + (xx - cx + 0.05) ** 2) <= 0.06**2
    other = ((yy - cy) / 0.15) ** 2 + ((xx - cx - 0.33) / 0.1) ** 2 <= 1
    img[lesion] -= 0.2
    return img, [organ, lesion & organ, other & ~organ]


def cell_case(size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = 300 * (size // 256) ** 2
    lab = np.zeros((size, size), np.int32)
    r = rng.integers(4, size - 4, n)
    c = rng.integers(4, size - 4, n)
    yy, xx = np.mgrid[-4:5, -4:5]
    disc = yy**2 + xx**2 <= 12.7  # ~40 px
    for k in range(n):
        lab[r[k] - 4: r[k] + 5, c[k] - 4: c[k] + 5][disc] = k + 1
    img = rng.normal(0.2, 0.05, (size, size)).astype(np.float32)
    img[lab > 0] += 0.5
    return img, lab


def _rate(fn, items, n_regions: int, min_time: float = 1.0) -> float:
    """Regions per second; `n_regions` is the number of regions in one pass over all `items`."""
    fn(*items[0])  # warm up
    t0 = time.perf_counter()
    done = 0
    while True:
        for it in items:
            fn(*it)
        done += 1
        dt = time.perf_counter() - t0
        if dt >= min_time:
            return done * n_regions / dt


def _props(masks, props) -> None:
    for m in masks:
        for p in regionprops(label(m) if m.dtype == bool else m):
            for name in props:
                getattr(p, name)


def main() -> None:
    rows = []
    for size in (256, 1024):
        organ = [organ_case(size, s) for s in range(4)]
        n_org = sum(int(m.any()) for _, ms in organ for m in ms)
        ours = _rate(lambda img, ms: describe(img, ms, ["liver", "lesion", "kidney"], modality="ct",
                                              spacing=(0.8, 0.8), orientation="PL"), organ, n_org)
        base = _rate(lambda img, ms: _props(ms, ORGAN_PROPS), organ, n_org)
        rows.append(("organ", size, ours, base, n_org / len(organ)))
        cells = [cell_case(size, s) for s in range(2)]
        n_cells = sum(len(np.unique(lab)) - 1 for _, lab in cells)
        ours = _rate(lambda img, lab: describe_instances(lab, "nuclei", image=img), cells, n_cells)
        base = _rate(lambda img, lab: _props([lab], CELL_PROPS), cells, n_cells)
        rows.append(("cell", size, ours, base, n_cells / len(cells)))
    print(f"{'scale':<6}{'size':>6}{'regions/img':>12}{'ours reg/s':>12}{'regionprops reg/s':>19}{'cost ratio':>12}"
          f"{'h for 20M triplets @16 cores':>30}")
    for kind, size, ours, base, n in rows:
        imgs_per_s = ours / n
        hours = 20e6 / (imgs_per_s * 16) / 3600
        print(f"{kind:<6}{size:>6}{n:>12.0f}{ours:>12.0f}{base:>19.0f}{base / ours:>11.2f}x{hours:>30.2f}")
    print("cost ratio = our time / regionprops time for the same regions (target <= 3x); one triplet = one image.")


if __name__ == "__main__":
    main()
