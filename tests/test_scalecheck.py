"""The field-of-view check's image transform (`scripts/train_default.py shrunk`): the image and its mask move
together, smaller, to the same place."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def shrunk():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from train_default import SCALE_LEFT, shrunk
    finally:
        sys.path.pop(0)
    return shrunk, SCALE_LEFT


@pytest.mark.parametrize("rgb", [True, False])
def test_the_image_and_its_mask_shrink_together_to_the_left_middle(shrunk, rgb):
    fn, left = shrunk
    h, w = 100, 200
    mask = np.zeros((h, w), bool)
    mask[40:60, 80:120] = True  # 20 x 40 in the centre
    image = np.where(mask, 200, 10).astype(np.uint8) if rgb else np.where(mask, 1.0, 0.1).astype(np.float32)
    if rgb:
        image = np.repeat(image[..., None], 3, -1)
    same = fn(image, mask, 1.0)
    assert same[0] is image and same[1] is mask
    img, m = fn(image, mask, 0.5)
    assert img.shape == image.shape and img.dtype == image.dtype and m.shape == mask.shape
    assert m.sum() == pytest.approx(mask.sum() * 0.25, rel=0.1)  # a quarter of the area
    ys, xs = np.nonzero(m)
    assert ys.mean() == pytest.approx(49.5, abs=1.5)  # still vertically centred
    assert xs.mean() == pytest.approx(left * w + 0.5 * 0.5 * w, abs=1.5)  # the canvas starts SCALE_LEFT from the left
    bright = (img[..., 0] if rgb else img) > (100 if rgb else 0.5)
    assert (bright == m).mean() > 0.98  # the bright square is where the mask says
    outside = np.ones_like(m)
    outside[25:75, round(left * w):round(left * w) + 100] = False
    assert not img[outside].any()  # black around the shrunk image
