"""Flip test-time augmentation: mirrors per target, chosen on validation, applied by the Predictor."""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from rcmed.data.synth import synth
from rcmed.errors import RCMedInputError
from rcmed.postprocess import FILE, PostprocessRules
from rcmed.predictor import ModelNotAvailableError, Predictor
from rcmed.tta import allowed, choose_flips, flip_image, unflip


def test_named_sides_never_swap():
    assert allowed("liver", ("h", "v")) == ("h", "v")
    assert allowed("Left Lung", ("h", "v")) == ("v",)
    assert allowed("right kidney", "h") == ()
    assert allowed("upper lobe", ("h", "v")) == ("h",)
    assert allowed("brightness", ("h",)) == ("h",)  # "right" inside a word is no side
    with pytest.raises(ValueError, match="unknown flip"):
        allowed("liver", ("x",))


def test_mirror_and_back_is_identity_in_2d_and_rgb():
    rng = np.random.default_rng(0)
    for shape in [(5, 7), (5, 7, 3)]:
        a = rng.random(shape)
        for f in ("h", "v"):
            m = flip_image(a, f)
            assert m.shape == a.shape and not np.array_equal(m, a)
    a = torch.as_tensor(rng.random((2, 5, 7)))
    assert torch.equal(unflip(torch.flip(a, dims=(-1,)), "h"), a)
    assert torch.equal(unflip(torch.flip(a, dims=(-2,)), "v"), a)
    assert np.array_equal(flip_image(np.arange(6).reshape(2, 3), "h"), [[2, 1, 0], [5, 4, 3]])


def _disc(cy, cx, r, shape=(40, 40)):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_choose_flips_measures_and_keeps_sides():
    cases = []
    for k in range(4):
        true = _disc(20, 20 + k, 8)
        worse, better = _disc(20, 23 + k, 8), true
        cases.append(("Polyp", {"": worse, "h": worse, "v": better, "hv": better}, true))  # v is enough
        cases.append(("left lung", {"": worse, "h": better, "v": worse, "hv": better}, true))  # h is not allowed
        cases.append(("liver", {"": true, "h": worse, "v": worse, "hv": worse}, true))  # mirrors hurt
    cases.append(("nodule", {"": _disc(20, 24, 3), "v": _disc(20, 20, 3)}, _disc(20, 20, 3)))  # one case only
    flips, ev = choose_flips(cases)
    assert flips == {"polyp": ["v"]}  # a tie between v and hv goes to fewer mirrors
    assert ev["left lung"]["dice_h"] == 1.0 and ev["liver"]["dice_image"] == 1.0 and ev["nodule"]["cases"] == 1
    with pytest.raises(ValueError, match="unknown view"):
        choose_flips([("x", {"": true, "d": true}, true)])
    with pytest.raises(ValueError, match="no prediction"):
        choose_flips([("x", {"h": true}, true)])


@pytest.fixture()
def predictor(tiny_trained) -> Predictor:
    return Predictor.from_pretrained(tiny_trained)


def test_mirror_logits_come_back_in_source_pixels(predictor, monkeypatch):
    """A non-square image (padded bottom/right in the model): what the model finds at the top-left of
    the left-right mirror is the source image's top-right, whatever the padding."""
    ph = synth("ct", 3, size=96)
    img = replace(ph.image, array=np.ascontiguousarray(ph.image.array[:60]))  # 60 x 96: rows padded in the model
    predictor.set_image(img)
    real_gen = predictor.model.generate

    def faint(*args, **kwargs):  # the image's own logits: faintly negative everywhere
        gen = real_gen(*args, **kwargs)
        for t in gen.targets:
            t.mask_logits = torch.full_like(t.mask_logits, -0.1)
            t.presence = 0.9
        return gen

    def top_left(pixels, ids, feats=None, rounds=None, loop="full"):
        out = real_decode(pixels, ids, feats=feats, rounds=rounds, loop=loop)
        m = torch.full_like(out.masks, -10.0)
        m[..., :20, :16] = 10.0  # model pixels: the top-left 20 x 16 of the 40 x 64 image region
        return replace(out, masks=m)

    real_decode = predictor.model.decode_answer
    monkeypatch.setattr(predictor.model, "generate", faint)
    monkeypatch.setattr(predictor.model, "decode_answer", top_left)
    assert predictor.predict("Segment the liver.", flips=()).targets[0].present is False  # -0.1 alone: nothing
    (t,) = predictor.predict("Segment the liver.", flips=("h",)).targets
    assert t.present and t.mask.shape == (60, 96)
    x0, y0, x1, y1 = t.box
    assert (x0, y0, x1, y1) == (72, 0, 95, 29)  # the source's top-right 30 x 24 (model 20 x 16, scale 1.5)
    (v,) = predictor.predict("Segment the liver.", flips=("v",)).targets
    assert v.box == [0, 30, 23, 59]  # a top-bottom mirror: bottom-left


def test_rules_choose_mirrors_per_target_and_words_only(tiny_trained, tmp_path, monkeypatch):
    folder = tmp_path / "model"
    shutil.copytree(tiny_trained, folder)
    PostprocessRules(flips={"liver": ["h", "v"], "left lung": ["h"]}).save(folder)
    predictor = Predictor.from_pretrained(folder)
    assert predictor.rules.flips_for("Liver") == ("h", "v") and predictor.rules.flips_for("left lung") == ()
    ph = synth("ct", 3, size=96)
    predictor.set_image(ph.image)
    calls = {"generate": 0, "decode": 0}
    real_gen, real_decode = predictor.model.generate, predictor.model.decode_answer

    def gen(*a, **k):
        calls["generate"] += 1
        return real_gen(*a, **k)

    def decode(*a, **k):
        calls["decode"] += 1
        return real_decode(*a, **k)

    monkeypatch.setattr(predictor.model, "generate", gen)
    monkeypatch.setattr(predictor.model, "decode_answer", decode)
    raw = predictor.predict("Segment the liver.", flips=()).targets[0]
    assert calls == {"generate": 1, "decode": 0}
    tta = predictor.predict("Segment the liver.").targets[0]  # the folder's rule: both mirrors
    assert calls == {"generate": 1, "decode": 2}  # the same question is not generated again
    assert predictor.predict("Segment the liver.", flips=("h",)).targets[0].present
    assert calls["decode"] == 2  # the mirrors of this answer are kept
    dice = 2 * (tta.mask & ph.masks["liver"]).sum() / (tta.mask.sum() + ph.masks["liver"].sum())
    assert dice > 0.8 and tta.mask.shape == raw.mask.shape
    boxed = predictor.predict("Segment the liver.", boxes=[[5, 5, 90, 90]]).targets[0]
    assert calls["decode"] == 2 and boxed.mask is not None  # with a box: the image's own mask
    predictor.set_image(ph.image)
    predictor.predict("Segment the liver.")
    assert calls == {"generate": 3, "decode": 4}  # a new image: generated and mirrored again
    with pytest.raises(RCMedInputError, match="unknown flip"):
        predictor.predict("Segment the liver.", flips=("diagonal",))
    (folder / FILE).write_text('{"flips": {"liver": ["d"]}}')
    with pytest.raises(ModelNotAvailableError, match="unknown flip"):
        Predictor.from_pretrained(folder)


def test_a_mirror_without_the_target_leaves_its_logits_whole(predictor, monkeypatch):
    """An answer cut short on a mirror has no slot for the target: the mean is over the views that
    answered, so a folder's cut sees the image's own logits, not half of them."""
    predictor.set_image(synth("ct", 3, size=96).image)
    predictor.rules = PostprocessRules(thresholds={"liver": 3.0})
    own = predictor.predict("Segment the liver.", flips=()).targets[0]
    monkeypatch.setattr(predictor, "_mirror_logits", lambda *a: torch.zeros((0, 96, 96)))
    mirrored = predictor.predict("Segment the liver.", flips=("h",)).targets[0]
    assert own.present and (mirrored.logits == own.logits).all() and (mirrored.mask == own.mask).all()
