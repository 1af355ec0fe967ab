"""Frozen-encoder feature cache: LiteMedSAM encoding (a cache miss, which also stores the entry)
vs reading a cached entry, for the same 4 images in the same run; entry size on disk and the
largest relative error fp16 storage introduces. Run: `python bench/feature_cache.py`."""

from __future__ import annotations

import os
import tempfile
import time

import torch

from rcmed.model.medsam import LiteMedSAM
from rcmed.train.feature_cache import FeatureCache


def main() -> None:
    model = LiteMedSAM.from_pretrained()
    cache = FeatureCache(tempfile.mkdtemp(prefix="rcmed-fc-"), model.image_encoder)
    x = torch.rand(4, 3, 256, 256)
    t = time.perf_counter()
    cache.features(x, model.encode)
    miss = (time.perf_counter() - t) / 4
    t = time.perf_counter()
    hit_feats = cache.features(x, model.encode)
    hit = (time.perf_counter() - t) / 4
    with torch.no_grad():
        ref = model.encode(x)
    err = max(float((a - b).abs().max() / b.abs().max())
              for a, b in zip(hit_feats.levels + [hit_feats.embedding], ref.levels + [ref.embedding], strict=True))
    size = sum(os.path.getsize(cache.dir / f) for f in os.listdir(cache.dir)) / 4 / 2**20
    print(f"encode + store (miss): {miss * 1000:.0f} ms/image; read (hit): {hit * 1000:.1f} ms/image; "
          f"speed-up {miss / hit:.0f}x; entry {size:.1f} MB; max relative error of fp16 storage {err:.1e}")


if __name__ == "__main__":
    main()
