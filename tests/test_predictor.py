"""The Predictor API and `rcmed segment`/`rcmed ask` on the tiny model trained by the fixture."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from rcmed.cli import app
from rcmed.data.synth import synth
from rcmed.errors import RCMedInputError
from rcmed.io.writers import write_nifti
from rcmed.postprocess import PostprocessRules
from rcmed.predictor import ModelNotAvailableError, Predictor

runner = CliRunner()


@pytest.fixture(scope="module")
def predictor(tiny_trained) -> Predictor:
    return Predictor.from_pretrained(tiny_trained)


def test_predict_gives_masks_in_source_geometry_and_absence(predictor):
    ph = synth("ct", 3, size=96)  # a different size than the model's 64² input
    predictor.set_image(ph.image)
    ans = predictor.predict("Segment the liver.")
    (liver,) = ans.targets
    assert liver.present and liver.mask.shape == (96, 96)
    dice = 2 * (liver.mask & ph.masks["liver"]).sum() / (liver.mask.sum() + ph.masks["liver"].sum())
    assert dice > 0.8
    assert liver.area_mm2 == pytest.approx(liver.area_px * 0.8 * 0.8)
    x0, y0, x1, y1 = liver.box
    assert liver.mask[y0:y1 + 1, x0:x1 + 1].sum() == liver.area_px
    absent = predictor.predict("Segment the tumour.")
    assert [t.present for t in absent.targets] == [False] and absent.targets[0].mask is None
    assert "not present" in absent.text


def test_a_target_named_twice_is_answered_once(predictor, monkeypatch):
    """The language model may repeat a name ("the left lung and the left lung"): one target, the first."""
    ph = synth("ct", 3, size=96)
    predictor.set_image(ph.image)
    real = predictor.model.generate

    def repeating(*args, boxes=None, **kwargs):  # the tiny model names one target; boxes play no part here
        gen = real(*args, **kwargs)
        first, second = gen.targets[0], gen.targets[0]
        second = type(first)(**{**first.__dict__, "name": " Liver ", "mask_logits": -first.mask_logits})
        gen.targets = [first, second]
        return gen

    monkeypatch.setattr(predictor.model, "generate", repeating)
    (liver,) = predictor.predict("Segment the liver.").targets
    assert liver.name == "liver" and liver.present and (liver.mask & ph.masks["liver"]).sum() > 0.8 * liver.area_px
    # one box per target: the caller asked for two instances, both are kept
    two = predictor.predict("Segment the liver.", boxes=[[10, 10, 40, 40], [50, 50, 90, 90]]).targets
    assert len(two) == 2


def test_answer_text_says_what_the_decision_says(predictor, monkeypatch):
    """The language model's yes/no comes before the mask decoder looks; where they disagree the
    sentence is rewritten to the decision (trained answer forms only) and answer.json says so."""
    ph = synth("ct", 3, size=96)
    predictor.set_image(ph.image)
    real = predictor.model.generate
    claims = {"liver": "The liver <seg> is not present in this image.", "tumour": "Yes, the tumour <seg> is present, in the centre of the image."}

    def contradicting(image, prompt, **kwargs):
        gen = real(image, prompt, **kwargs)
        name = gen.targets[0].name
        gen.text = claims[name].replace(" <seg>", "") + " Nothing else."
        return gen

    monkeypatch.setattr(predictor.model, "generate", contradicting)
    liver_ans = predictor.predict("Segment the liver.")
    (liver,) = liver_ans.targets
    assert liver.present
    assert liver_ans.text.startswith("The liver is in the ") and liver_ans.text.endswith("of the image. Nothing else.")
    assert liver_ans.amended == ["liver"] and predictor.answer_json(liver_ans)["text_amended_for"] == ["liver"]
    tumour_ans = predictor.predict("Segment the tumour.")
    assert not tumour_ans.targets[0].present
    assert tumour_ans.text == "No, the tumour is not in this image. Nothing else."
    claims["tumour"] = "Here are the 10 tumour <seg>, evenly spread."  # the count form of instance answers
    predictor.set_image(ph.image)  # (a new image: the same question is generated anew)
    assert predictor.predict("Segment the tumour.").text == "The tumour is not present in this image. Nothing else."
    claims["liver"] = "Here are the 10 liver <seg>, evenly spread."  # a count the words made up: the mask's wins
    predictor.set_image(ph.image)
    counted = predictor.predict("Segment the liver.")
    n = counted.targets[0].components
    assert counted.text.startswith(f"Here {'is' if n == 1 else 'are'} the {n} liver, evenly spread.")
    assert (n == 10) == (counted.amended == [])
    monkeypatch.undo()
    predictor.set_image(ph.image)  # (the last answer is not reused)
    agreeing = predictor.predict("Segment the liver.")  # the model's own text already agrees: untouched
    assert agreeing.amended == [] and "text_amended_for" not in predictor.answer_json(agreeing)


def test_predict_volume_assembles_3d_masks_with_volume(predictor, monkeypatch):
    ph = synth("ct", 3, size=64, volume=True)
    ans = predictor.predict_volume(ph.image, "Segment the liver.", batch_slices=5)
    (liver,) = ans.targets
    assert liver.mask.shape == ph.image.spatial_shape
    true_ml = ph.masks["liver"].sum() * 0.8 * 0.8 * 2.5 / 1000
    assert liver.volume_ml == pytest.approx(true_ml, rel=0.25)
    assert liver.components >= 1
    monkeypatch.setattr(predictor, "rules", PostprocessRules(thresholds={"liver": 4.0}))  # a folder's higher cut
    (cut,) = predictor.predict_volume(ph.image, "Segment the liver.", batch_slices=5).targets
    assert 0 < cut.volume_ml < liver.volume_ml and not (cut.mask & ~liver.mask).any()
    # a cut chosen on another path's logits (the volume is decoded by the query) is not applied to the query's;
    # one chosen for the liver on MRI is not applied to a CT
    for rules in (PostprocessRules(thresholds={"liver": 4.0}, mask_paths={"liver": "box"}),
                  PostprocessRules(thresholds={"liver@mri": 4.0})):
        monkeypatch.setattr(predictor, "rules", rules)
        (same,) = predictor.predict_volume(ph.image, "Segment the liver.", batch_slices=5).targets
        assert same.volume_ml == liver.volume_ml


def test_bad_prompts_and_boxes(predictor):
    predictor.set_image(synth("ct", 1, size=64).image)
    with pytest.raises(RCMedInputError, match="empty prompt"):
        predictor.predict("   ")
    with pytest.raises(RCMedInputError, match="the limit is 2000"):
        predictor.predict("liver " * 20000)
    with pytest.raises(RCMedInputError, match="outside the 64x64 image"):
        predictor.predict("Segment the liver.", boxes=[[10, 10, 500, 20]])
    with pytest.raises(RCMedInputError, match="not a finite number"):
        predictor.predict("Segment the liver.", boxes=[[float("nan"), 10, 20, 20]])
    with pytest.raises(RCMedInputError, match="not a finite number"):
        predictor.predict("Segment the liver.", points=[[float("inf"), 3]])


def test_missing_models_are_clear():
    with pytest.raises(ModelNotAvailableError, match="not an RCMed model folder"):
        Predictor.from_pretrained("/nonexistent/model")


def test_cli_segment_png_and_nifti(tiny_trained, tmp_path):
    ph = synth("ct", 2, size=64)
    from rcmed.io.normalize import normalize

    Image.fromarray((normalize(ph.image) * 255).astype(np.uint8)).save(tmp_path / "ct.png")
    res = runner.invoke(app, ["segment", str(tmp_path / "ct.png"), "Segment the liver.", "--model", str(tiny_trained),
                              "--out", str(tmp_path / "o"), "-m", "ct"])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "o" / "answer.json").read_text())
    assert data["model"]["sha256"] and data["targets"][0]["name"] == "liver"
    mask = np.asarray(Image.open(tmp_path / "o" / data["targets"][0]["mask"]))
    assert mask.shape == (64, 64) and (tmp_path / "o" / "overlay.png").is_file()
    vol = synth("ct", 2, size=64, volume=True)
    write_nifti(tmp_path / "ct.nii.gz", vol.image.array, vol.image)
    res = runner.invoke(app, ["segment", str(tmp_path / "ct.nii.gz"), "Segment the liver.", "--model", str(tiny_trained),
                              "--out", str(tmp_path / "v"), "-m", "ct", "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    assert d["targets"][0]["mask"].endswith(".nii.gz") and d["targets"][0]["volume_ml"] > 0
    res = runner.invoke(app, ["ask", str(tmp_path / "ct.png"), "Segment the tumour.", "--model", str(tiny_trained), "-m", "ct"])
    assert res.exit_code == 0 and "not found" in res.output


def test_cli_segment_errors_are_one_line(tmp_path):
    res = runner.invoke(app, ["segment", str(tmp_path / "x.png"), "liver", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "x.png" in res.output and "Traceback" not in res.output


def test_cli_bad_out_folders_are_one_line_and_leave_nothing(tiny_trained, tmp_path):
    import os

    ph = synth("ct", 2, size=64)
    Image.fromarray((ph.masks["liver"] * 255).astype(np.uint8)).save(tmp_path / "ct.png")
    (tmp_path / "afile").write_text("keep me")
    for out, expected in ((tmp_path / "afile", "is a file, not a folder"), (tmp_path / "afile" / "sub", "is a file")):
        res = runner.invoke(app, ["segment", str(tmp_path / "ct.png"), "Segment the liver.", "--model", str(tiny_trained),
                                  "--out", str(out), "-m", "ct"])
        assert res.exit_code == 2 and expected in res.output and "Traceback" not in res.output, res.output
    assert (tmp_path / "afile").read_text() == "keep me"
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        res = runner.invoke(app, ["segment", str(tmp_path / "ct.png"), "Segment the liver.", "--model", str(tiny_trained),
                                  "--out", str(locked / "o"), "-m", "ct"])
        assert res.exit_code == 2 and "permission denied" in res.output
    # a run that fails on its input leaves no empty output folder behind
    res = runner.invoke(app, ["segment", str(tmp_path / "missing.png"), "Segment the liver.", "--model", str(tiny_trained),
                              "--out", str(tmp_path / "never"), "-m", "ct"])
    assert res.exit_code == 2 and not (tmp_path / "never").exists()


def test_cli_batch_folder_and_describe(tiny_trained, tmp_path):
    from rcmed.io.normalize import normalize

    folder = tmp_path / "batch"
    folder.mkdir()
    for s in range(2):
        Image.fromarray((normalize(synth("ct", s, size=64).image) * 255).astype(np.uint8)).save(folder / f"ct{s}.png")
    (folder / "broken.png").write_bytes(b"nope")
    res = runner.invoke(app, ["segment", str(folder), "Segment the liver.", "--model", str(tiny_trained), "--out",
                              str(tmp_path / "o"), "-m", "ct", "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    assert set(d) == {"ct0.png", "ct1.png", "broken.png"} and "error" in d["broken.png"]
    assert (tmp_path / "o" / "ct0" / "answer.json").is_file()
    # describe: the model finds the targets, the engine measures what it found
    res = runner.invoke(app, ["describe", str(folder / "ct0.png"), "--model", str(tiny_trained), "-m", "ct",
                              "-t", "liver", "-t", "tumour", "--out", str(tmp_path / "d")])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "d" / "description.json").read_text())
    regions = {r["name"]: r for r in doc["regions"]}
    assert set(regions) == {"liver", "tumour"} and set(doc["presence"]) == {"liver", "tumour"}
    for k, name in enumerate(n for n in ("liver", "tumour") if regions[n]["present"]):
        mask = np.asarray(Image.open(tmp_path / "d" / f"mask_{k}_{name}.png")) > 0
        assert regions[name]["area_px"] == int(mask.sum())  # facts measured on the model's own mask
    assert doc["text"] in res.output
    # without --target: the targets the model was trained on for this modality (targets.json, written by rcmed train)
    import shutil

    model = tmp_path / "m"
    shutil.copytree(tiny_trained, model)
    (model / "targets.json").write_text(json.dumps({"ct": ["body", "liver"], "mri": ["brain"]}))
    res = runner.invoke(app, ["describe", str(folder / "ct0.png"), "--model", str(model), "-m", "ct", "--json"])
    assert res.exit_code == 0, res.output
    assert {r["name"] for r in json.loads(res.output)["regions"]} == {"body", "liver"}
    res = runner.invoke(app, ["describe", str(folder / "ct0.png"), "--model", str(tiny_trained), "-m", "ct"])
    assert res.exit_code == 2 and "--target" in res.output  # no targets.json and no --target: a clear error


def test_point_prompts_and_instance_maps(predictor):
    ph = synth("ct", 3, size=64)
    predictor.set_image(ph.image)
    plain = predictor.predict("Segment the liver.")
    pointed = predictor.predict("Segment the liver.", points=[[20, 25], [50, 50]], point_labels=[1, 0])
    assert pointed.targets and pointed.targets[0].name == "liver"
    assert not np.array_equal(plain.targets[0].mask, pointed.targets[0].mask) or \
        plain.targets[0].score != pointed.targets[0].score  # the points reach the decoder
    t = plain.targets[0]
    assert t.instances.shape == t.mask.shape and t.instances.max() == t.components
    with pytest.raises(RCMedInputError, match="outside the 64x64 image"):
        predictor.predict("Segment the liver.", points=[[70, 5]])


@pytest.mark.parametrize("text, names, expected", [
    ("The glands is in the centre of the image.", ["glands"], "The glands are in the centre of the image."),
    ("The ground glass opacities is not present in this image.", ["ground glass opacities"],
     "The ground glass opacities are not present in this image."),
    ("The nuclei is in the upper left of the image.", ["nuclei"], "The nuclei are in the upper left of the image."),
    ("The liver is in the centre of the image.", ["liver"], "The liver is in the centre of the image."),
    ("The pancreas is not present in this image.", ["pancreas"], "The pancreas is not present in this image."),
    ("The airways is in the upper centre. The heart is here.", ["airways", "heart"],
     "The airways are in the upper centre. The heart is here."),
])
def test_answer_grammar_for_plural_targets(text, names, expected):
    from rcmed.predictor import grammar

    assert grammar(text, names) == expected


def test_an_image_reduced_on_read_says_so_in_answer_json(predictor, tmp_path):
    from rcmed.io.limits import ReadLimits
    from rcmed.io.normalize import normalize
    from rcmed.io.readers import load

    ph = synth("ct", 2, size=64)
    Image.fromarray((normalize(ph.image) * 255).astype(np.uint8)).resize((128, 128)).save(tmp_path / "big.png")
    img = load(tmp_path / "big.png", limits=ReadLimits(max_2d_side=64))
    predictor.set_image(img)
    doc = predictor.answer_json(predictor.predict("Segment the liver."))
    assert doc["downsampled_from"] == [128, 128] and doc["mask_shape"] == [64, 64]
    predictor.set_image(ph.image)  # an image read whole says nothing of the kind
    assert "downsampled_from" not in predictor.answer_json(predictor.predict("Segment the liver."))


def test_an_image_sent_again_is_not_encoded_again(tiny_trained, monkeypatch):
    """The page sends the same image with every click: its features come from a small, expiring cache."""
    p = Predictor.from_pretrained(tiny_trained)
    calls = []
    real = p.model.encode
    monkeypatch.setattr(p.model, "encode", lambda px: calls.append(1) or real(px))
    a, b = synth("ct", 2, size=64).image, synth("ct", 3, size=64).image
    p.set_image(a)
    first = p.predict("Segment the liver.")
    p.set_image(a)
    assert len(calls) == 1  # the same pixels: the encoder is not run again
    again = p.predict("Segment the liver.")
    assert [t.presence for t in again.targets] == [t.presence for t in first.targets]
    p.set_image(b)
    p.set_image(a)
    assert len(calls) == 2  # another image is encoded; the first is still cached
    p.cache_size = 1
    p.set_image(b)
    p.set_image(a)
    assert len(calls) == 3 and len(p._encoded) == 1  # bounded: the oldest went
    p.cache_ttl_s = 0.0
    p.set_image(a)
    assert len(calls) == 4  # expired


def test_a_one_name_answer_keeps_the_sentence_of_its_name():
    from rcmed.predictor import _first_sentence_of

    text = "The target is in the left of the image. The liver is in the centre of the image."
    assert _first_sentence_of(text, "liver") == "The liver is in the centre of the image."
    assert _first_sentence_of(text, "kidneys") == "The target is in the left of the image."
    assert _first_sentence_of("no full stop", "liver") == "no full stop"
