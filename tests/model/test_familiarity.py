"""Familiarity: per-target Gaussians of the encoder features of the images a target was taught on, saved beside the
model; the predictor warns, in the text and in the answer's JSON, when an image is unlike them."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from rcmed.data.synth import synth
from rcmed.io.image import MedicalImage, Modality
from rcmed.model.familiarity import FILE, Familiarity, choose_cut, features, fit
from rcmed.predictor import ModelNotAvailableError, Predictor


def _clusters(seed: int = 0):
    """Pooled-feature-like rows: target "a" taught on two groups far apart, target "b" on one."""
    rng = np.random.default_rng(seed)
    c1, c2, c3 = rng.normal(0, 4, 512), rng.normal(0, 4, 512), rng.normal(0, 4, 512)
    x = np.concatenate([c1 + rng.normal(0, 1, (30, 512)), c2 + rng.normal(0, 1, (30, 512)),
                        c3 + rng.normal(0, 1, (30, 512))])
    groups = [["a|one"]] * 30 + [["a|two"]] * 30 + [["b|one"]] * 30
    return x, groups, (c1, c2, c3), rng


def test_near_any_group_of_a_target_is_familiar_and_far_from_all_is_not(tmp_path):
    x, groups, (c1, c2, c3), rng = _clusters()
    fam = fit(x, groups, components=8)
    assert fam.keys == ["a|one", "a|two", "b|one"] and fam.images.tolist() == [30, 30, 30]
    fresh = np.stack([c1 + rng.normal(0, 1, 512), c2 + rng.normal(0, 1, 512), c3 + rng.normal(0, 1, 512)])
    r = fam.ratios(fresh, "a")
    assert r[0] < 3 and r[1] < 3  # near either of a's groups
    assert r[2] > 10  # b's images are not a's
    assert fam.ratios(fresh, "never taught") is None
    fam.cut = choose_cut(fam.ratios(x[:60], "a"), 0.95)
    assert np.isclose(fam.cut, np.quantile(fam.ratios(x[:60], "a"), 0.95))
    fam.save(tmp_path)
    again = Familiarity.load(tmp_path)
    assert again.keys == fam.keys and np.isclose(again.cut, fam.cut)
    assert np.allclose(again.ratios(fresh, "a"), r, rtol=1e-4)


def test_a_group_of_too_few_images_gets_no_gaussian():
    x, groups, _, _ = _clusters()
    groups = [g if i != 0 else ["c|rare"] + g for i, g in enumerate(groups)]
    fam = fit(x, groups, components=8, min_images=8)
    assert "c|rare" not in fam.keys and fam.ratios(x[:1], "c") is None


def test_choose_cut_refuses_nothing_to_choose_on():
    with pytest.raises(ValueError):
        choose_cut([], 0.95)
    with pytest.raises(ValueError):
        choose_cut([1.0], 0)


def test_missing_or_damaged_statistics(tmp_path):
    assert Familiarity.load(tmp_path) is None
    (tmp_path / FILE).write_bytes(b"\x00" * 16)
    with pytest.raises(ValueError, match="not familiarity statistics"):
        Familiarity.load(tmp_path)


@pytest.fixture(scope="module")
def familiar_ct(tiny_trained, tmp_path_factory):
    """The tiny model with familiarity statistics of the liver fitted on CT phantoms, its cut at their 0.95 quantile."""
    folder = tmp_path_factory.mktemp("familiar") / "model"
    shutil.copytree(tiny_trained, folder)
    p = Predictor.from_pretrained(folder)  # (the features as the predictor computes them)
    feats = []
    for s in range(12):
        p.set_image(synth("ct", s, size=64).image)
        feats.append(features(p._feats.embedding)[0])
    fam = fit(np.stack(feats), [["liver|phantom-ct"]] * 12, components=4)
    fam.cut = choose_cut(fam.ratios(np.stack(feats), "liver"), 0.95) * 1.5
    fam.save(folder)
    return folder


def test_the_answer_warns_on_an_image_unlike_those_the_target_was_taught_on(familiar_ct):
    p = Predictor.from_pretrained(familiar_ct)
    p.set_image(synth("ct", 3, size=64).image)  # one of the images behind the statistics
    a = p.predict("Segment the liver.")
    liver = a.targets[0]
    assert liver.familiar is True and "unlike" not in a.text
    # a fundus photograph sent as a CT: the liver's mask, or its absence, is a guess, and the answer says so
    fundus = synth("fundus", 3, size=64).image
    p.set_image(MedicalImage(array=fundus.array.mean(-1), modality=Modality.CT))
    a = p.predict("Segment the liver.")
    t = a.targets[0]
    assert t.familiar is False and t.familiarity > 1.5
    assert "This image is unlike the images I learnt the liver from" in a.text
    doc = p.answer_json(a)
    assert doc["targets"][0]["familiar"] is False and doc["targets"][0]["familiarity"] == round(t.familiarity, 3)
    json.dumps(doc)


def test_a_model_without_statistics_says_nothing_of_familiarity(tiny_trained):
    p = Predictor.from_pretrained(tiny_trained)
    p.set_image(synth("ct", 3, size=64).image)
    a = p.predict("Segment the liver.")
    assert a.targets[0].familiar is None and "familiar" not in p.answer_json(a)["targets"][0]


def test_damaged_statistics_are_a_clear_model_error(familiar_ct, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(familiar_ct, folder)
    (folder / FILE).write_bytes(b"junk")
    with pytest.raises(ModelNotAvailableError, match="not familiarity statistics"):
        Predictor.from_pretrained(folder)


def _volume_of(slice_image: MedicalImage, depth: int = 5) -> MedicalImage:
    """A volume of `depth` copies of one 2-D slice (its middle slice is that image)."""
    return MedicalImage(array=np.stack([slice_image.array] * depth), modality=slice_image.modality)


def test_a_volume_is_judged_on_the_middle_slice_its_text_is_answered_on(familiar_ct):
    p = Predictor.from_pretrained(familiar_ct)
    a = p.answer(_volume_of(synth("ct", 3, size=64).image), "Segment the liver.")
    liver = a.targets[0]
    assert liver.familiar is True and "unlike" not in a.text
    # the same image as a 2-D answer: the same ratio (one feature path for both)
    p.set_image(synth("ct", 3, size=64).image)
    assert np.isclose(p.predict("Segment the liver.").targets[0].familiarity, liver.familiarity, rtol=1e-5)
    fundus = synth("fundus", 3, size=64).image
    a = p.answer(_volume_of(MedicalImage(array=fundus.array.mean(-1), modality=Modality.CT)), "Segment the liver.")
    t = a.targets[0]
    assert t.familiar is False and "This volume is unlike the images I learnt the liver from" in a.text
    assert p.answer_json(a)["targets"][0]["familiar"] is False
