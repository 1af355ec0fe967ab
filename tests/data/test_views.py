"""Other fields of view for training (`rcmed.data.views`): the image, its masks and its instance map move together."""

from __future__ import annotations

import random

import numpy as np
import pytest

from rcmed.data import views
from rcmed.data.store import Record, Sample


def _scene(rgb: bool):
    h, w = 120, 160
    disc = np.zeros((h, w), bool)
    disc[50:70, 60:90] = True
    inst = np.zeros((h, w), np.int32)
    inst[10:20, 10:20], inst[100:110, 140:150] = 1, 2
    grey = np.where(disc, 200, 30).astype(np.uint8)
    image = np.repeat(grey[..., None], 3, -1) if rgb else grey.astype(np.float32)
    return image, disc, inst


@pytest.mark.parametrize("rgb", [True, False])
def test_zoom_out_shrinks_image_masks_and_instances_to_the_same_place_on_the_image_background(rgb):
    image, disc, inst = _scene(rgb)
    out, masks, labels = views.zoom_out(image, disc[None], 0.5, (10, 70), instances=inst)
    assert out.shape == image.shape and out.dtype == image.dtype and masks.shape == (1, *disc.shape)
    assert masks[0].sum() == pytest.approx(disc.sum() / 4, rel=0.15)
    ys, xs = np.nonzero(masks[0])
    assert ys.mean() == pytest.approx(10 + 59.5 / 2, abs=1.5) and xs.mean() == pytest.approx(70 + 74.5 / 2, abs=1.5)
    bright = (out[..., 0] if rgb else out) > 100
    assert (bright == masks[0]).mean() > 0.98  # the bright disc is where its mask is
    assert np.all(out[:10] == 30)  # the canvas is the image's own border colour, not a black frame
    assert set(np.unique(labels)) == {0, 1, 2}  # labels stay labels (nearest), both nuclei kept


def test_zoom_in_crops_and_enlarges_together():
    image, disc, inst = _scene(True)
    out, masks, labels = views.zoom_in(image, disc[None], (40, 50, 60, 80), instances=inst)
    assert out.shape == image.shape and masks.shape == (1, *disc.shape) and labels.shape == inst.shape
    assert masks[0].sum() == pytest.approx(disc.sum() * 4, rel=0.15)  # a half-side crop: 4 x the area
    assert ((out[..., 0] > 100) == masks[0]).mean() > 0.98
    assert not labels.any()  # both nuclei lie outside the crop


def test_a_random_view_keeps_every_present_target_present_and_is_repeatable():
    image, disc, inst = _scene(False)
    small = np.zeros_like(disc)
    small[5, 5] = True  # one pixel: lost when shrunk, so that view must grow or give the image back
    rec = Record(id="r", case_id="r", modality="fundus", targets=["optic disc", "speck"])
    sample = Sample(rec, image, np.stack([disc, small]), inst)
    kinds = set()
    for seed in range(40):
        a = views.random_view(sample, random.Random(seed))
        b = views.random_view(sample, random.Random(seed))
        assert np.array_equal(a.image, b.image) and np.array_equal(a.masks, b.masks)
        assert a.masks.shape == sample.masks.shape and a.image.shape == image.shape
        assert a.masks[0].any() and a.masks[1].any()  # no present target turned into an empty mask
        kinds.add("same" if a is sample else "in" if a.masks[0].sum() > disc.sum() else "out")
    assert {"in", "out"} <= kinds
