"""A request for a name the model was never taught is answered "not trained", with no mask, in Python,
on the command line and over HTTP; known names, synonyms and plurals pass through to the model."""

from __future__ import annotations

import io
import json
import re
import shutil

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from rcmed.cli import app
from rcmed.data.synth import synth
from rcmed.io.image import MedicalImage
from rcmed.io.normalize import normalize
from rcmed.predictor import Predictor
from rcmed.vocabulary import canonical_prompt, read_request, requested_names, resolve, unknown_names

KNOWN = {"liver", "kidneys", "tumour", "optic disc", "left lung", "right lung", "nuclei", "polyp", "vessels"}


@pytest.mark.parametrize("prompt, names", [
    ("Segment the unicorn.", ["unicorn"]),
    ("Can you outline the polyp for me?", ["polyp"]),
    ("Where is the liver?", ["liver"]),
    ("Segment the optic disk and the vessels in this fundus image.", ["optic disk", "vessels"]),
    ("Segment the right lung, the left lung and the heart.", ["right lung", "left lung", "heart"]),
    ("Describe the image.", []),
    ("Is there a nodule?", []),  # a question of presence alone stays a question
    ("Is there a nodule here? If so, outline it.", ["nodule"]),
    ("Are there any nuclei in this image? If so, segment them please.", ["nuclei"]),
])
def test_requested_names(prompt, names):
    assert requested_names(prompt) == names


def test_synonyms_plurals_spelling_and_sides_resolve():
    assert resolve("tumor", KNOWN) == "tumour" and resolve("optic disk", KNOWN) == "optic disc"
    assert resolve("kidney", KNOWN) == "kidneys" and resolve("Polyps", KNOWN) == "polyp"
    assert resolve("lungs", KNOWN) == "left lung" and resolve("the nucleus", KNOWN) == "nuclei"
    assert resolve("unicorn", KNOWN) is None and resolve("skull bone", KNOWN) is None
    assert unknown_names("Segment the liver and the unicorn.", KNOWN) == ["unicorn"]


@pytest.fixture(scope="module")
def taught(tiny_trained, tmp_path_factory):
    folder = tmp_path_factory.mktemp("taught") / "model"
    shutil.copytree(tiny_trained, folder)
    (folder / "targets.json").write_text(json.dumps({"ct": ["body", "kidneys", "liver"], "endoscopy": ["polyp"]}))
    return folder


def _png(tmp_path):
    ph = synth("ct", 2, size=64)
    path = tmp_path / "ct.png"
    Image.fromarray((normalize(ph.image) * 255).astype(np.uint8)).save(path)
    return path


def test_unknown_name_is_refused_without_a_mask(taught, tmp_path):
    p = Predictor.from_pretrained(taught)
    p.set_image(synth("ct", 2, size=64).image)
    a = p.predict("Segment the unicorn.")
    assert a.targets == [] and a.unknown == ["unicorn"]
    assert "not trained to find 'unicorn'" in a.text and "body, kidneys, liver" in a.text
    doc = p.answer_json(a)
    assert doc["known"] is False and doc["not_trained_for"] == ["unicorn"] and doc["targets"] == []
    # a name taught on this modality goes to the model (which may say "not found")
    assert p.predict("Segment the liver.").unknown == []
    assert p.answer_json(p.predict("Segment the kidney."))["known"] is True
    vol = synth("ct", 2, size=64, volume=True).image
    assert p.predict_volume(vol, "Segment the skull bone.").unknown == ["skull bone"]


def test_an_untaught_name_close_in_meaning_to_a_taught_one_gets_a_suggestion_not_a_mask(taught):
    from rcmed.vocabulary import suggest

    p = Predictor.from_pretrained(taught)
    p.set_image(synth("ct", 2, size=64).image)
    a = p.predict("Segment the hepatic organ.")
    assert a.targets == [] and a.unknown == ["hepatic organ"] and a.suggestions["hepatic organ"][0] == "liver"
    assert "Did you mean 'liver'" in a.text
    assert p.answer_json(a)["did_you_mean"]["hepatic organ"][0] == "liver"
    assert suggest("renal organs", ["body", "kidneys", "liver"])[0][0] == "kidneys"
    assert suggest("mitochondria", ["body", "kidneys", "liver"]) == []  # nothing close: no suggestion


def test_a_name_taught_only_on_another_modality_gets_no_mask(taught):
    p = Predictor.from_pretrained(taught)
    p.set_image(synth("ct", 2, size=64).image)
    a = p.predict("Segment the polyp.")
    assert a.targets == [] and a.unknown == [] and a.off_modality == {"polyp": ["endoscopy"]}
    assert "only on endoscopy images, not on ct images" in a.text and "body, kidneys, liver" in a.text
    doc = p.answer_json(a)
    assert doc["known"] is True and doc["not_trained_for"] == ["polyp"] and doc["trained_only_on"] == {"polyp": ["endoscopy"]}
    both = p.predict("Segment the polyp and the unicorn.")
    assert both.targets == [] and both.unknown == ["unicorn"] and list(both.off_modality) == ["polyp"]
    # the names taught here reach the model, by their trained names in the training template; the others are
    # said in words and get no mask
    mixed = p.predict("Could you outline the livers and the polyp for me?")
    assert mixed.off_modality == {"polyp": ["endoscopy"]} and "polyp" not in [t.name for t in mixed.targets]
    assert mixed.text.endswith("I was trained to find 'polyp' only on endoscopy images, not on ct images, so I drew "
                               "no mask for it.")
    assert p.read("Could you outline the livers and the polyp for me?", "ct").prompt == "Segment the liver."
    assert p.read("Where is the kidney and the unicorn?", "ct").prompt == "Segment the kidneys."
    # an image of unknown modality may hold any target the model knows
    p.set_image(MedicalImage(array=synth("ct", 2, size=64).image.array))
    assert p.predict("Segment the polyp.").off_modality == {}
    assert p.predict("Segment the unicorn.").unknown == ["unicorn"]


def test_unknown_name_through_cli_and_http(taught, tmp_path):
    png = _png(tmp_path)
    res = CliRunner().invoke(app, ["segment", str(png), "Segment the unicorn.", "--model", str(taught), "--out",
                                   str(tmp_path / "o"), "-m", "ct"])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "o" / "answer.json").read_text())
    assert doc["known"] is False and not list((tmp_path / "o").glob("mask_*"))
    from rcmed.serve.app import ServeSettings, create_app

    c = TestClient(create_app(Predictor.from_pretrained(taught), ServeSettings()))
    for prompt in ("Segment the unicorn.", "Segment the <image> <seg> unicorn <region>."):
        r = c.post("/v1/segment", files={"file": ("scan.png", io.BytesIO(png.read_bytes()), "image/png")}, data={"prompt": prompt})
        assert r.status_code == 200, r.text
        assert r.json()["targets"] == [] and r.json()["known"] is False


def test_a_damaged_targets_list_is_a_clear_model_error(taught, tmp_path):
    from rcmed.predictor import ModelNotAvailableError

    folder = tmp_path / "model"
    shutil.copytree(taught, folder)
    (folder / "targets.json").write_text('["liver", "kidneys"]')
    with pytest.raises(ModelNotAvailableError, match="targets.json"):
        Predictor.from_pretrained(folder)


def test_a_request_is_read_into_the_training_template():
    taught = {"xray": ["heart", "left lung", "right lung"], "mri": ["brain tumour"], "endoscopy": ["polyp"]}
    lungs = read_request("Please show me the lungs in this X-ray.", taught, "xray")
    assert lungs.prompt == "Segment the left lung and the right lung." and lungs.names == ["left lung", "right lung"]
    assert read_request("Where is the tumor?", taught, "mri").prompt == "Segment the brain tumour."
    twice = read_request("Segment the heart, the hearts and the unicorn.", taught, "xray")
    assert twice.prompt == "Segment the heart." and twice.unknown == ["unicorn"] and not twice.refused
    assert read_request("Segment the polyp.", taught, "xray").refused
    assert read_request("Describe the image.", taught, "xray").prompt == "Describe the image."  # not a request for names
    assert read_request("Segment the polyp.", taught, "unknown").prompt == "Segment the polyp."
    assert canonical_prompt(["a", "b", "c"]) == "Segment the a, the b and the c."


def test_a_request_for_several_names_is_asked_one_name_at_a_time(taught, monkeypatch):
    """The mask decoder learnt from the language model's state after single-target questions, so "the liver
    and the kidneys" is asked as two questions; each name is answered once, and the text agrees with each."""
    taught_names = {"ct": ["body", "kidneys", "liver"]}
    req = read_request("Is there the liver and the kidney here? If so, outline them.", taught_names, "ct")
    assert req.questions() == ["Segment the liver.", "Segment the kidneys."]
    assert read_request("Segment the liver.", taught_names, "ct").questions() == ["Segment the liver."]
    assert read_request("Describe the image.", taught_names, "ct").questions() == ["Describe the image."]
    p = Predictor.from_pretrained(taught)
    p.set_image(synth("ct", 2, size=64).image)
    asked = []
    real = p.model.generate

    def spy(image, prompt, **kwargs):
        asked.append(prompt)
        return real(image, prompt, **kwargs)

    monkeypatch.setattr(p.model, "generate", spy)
    a = p.predict("Could you outline the liver, the kidney and the liver for me?")
    assert asked == ["Segment the liver.", "Segment the kidneys."]
    names = [t.name for t in a.targets]  # (what the tiny model calls its targets is its own affair)
    assert names[0] == "liver" and len(names) == len(set(names)) <= 2
    for t in a.targets:  # each decision is said, in agreement with it
        assert t.present or re.search(rf"The {t.name} (?:is|are) not present in this image\.", a.text)
    asked.clear()
    vol = p.predict_volume(synth("ct", 2, size=64, volume=True).image, "Segment the liver and the kidneys.")
    assert asked[0] == "Segment the liver." and asked[-1] == "Segment the kidneys." and vol.targets[0].name == "liver"


def test_a_sentence_naming_an_absent_target_is_rewritten():
    """The answer never lists a target as there when its decision is "not found"."""
    from rcmed.predictor import Target, agree_text

    gone = Target(name="optic disc", present=False, score=0.0, presence=0.02, mask=None)
    text, amended = agree_text("Here are the optic disc and the vessels.", [gone])
    assert text == "Here are the vessels. The optic disc is not present in this image." and amended == ["optic disc"]
    assert agree_text("Here is the optic disc.", [gone])[0] == "The optic disc is not present in this image."
    kept = "The optic disc is not present in this image.\n The cup is small."
    assert agree_text(kept, [gone]) == (kept, [])


def test_a_volume_target_found_off_the_middle_slice_is_not_called_absent():
    """A volume is answered in words on its middle slice and decided on every slice: the words follow the decision
    (the demo's CT said "The liver is not present in this image." beside a 14 mL liver mask)."""
    import numpy as np

    from rcmed.predictor import Target, agree_text

    mask = np.zeros((5, 8, 8), bool)
    mask[0, 2:4, 2:4] = True  # only on a slice away from the middle
    liver = Target(name="liver", present=True, score=0.8, presence=1.0, mask=mask, components=1)
    text, amended = agree_text("The liver is not present in this image. The spleen is in the centre of the image.", [liver])
    assert text == "The liver is present in this volume. The spleen is in the centre of the image." and amended == ["liver"]
    assert agree_text("No, the liver is not in this image.", [liver])[0] == "Yes, the liver is present in this volume."
