"""The modality head: fitted on pooled encoder features, saved beside the model, used by the predictor
when the caller gives no modality (the answer says what the image looks like and is normalised by that
modality's rule), and by the server's optional `modality` field."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from rcmed.data.synth import synth
from rcmed.io.image import MedicalImage, Modality
from rcmed.io.normalize import normalize
from rcmed.model.modality import FILE, ModalityHead, fit, pooled
from rcmed.model.processing import prepare_image
from rcmed.model.rcmed import RCMedModel
from rcmed.predictor import ModelNotAvailableError, Predictor


def test_fit_separates_modalities_and_round_trips(tmp_path):
    g = torch.Generator().manual_seed(0)
    centres = {"ct": torch.randn(8, generator=g) * 3, "fundus": torch.randn(8, generator=g) * 3}
    labels = [m for m in centres for _ in range(20)]
    x = torch.stack([centres[m] + torch.randn(8, generator=g) * 0.3 for m in labels])
    head = fit(x, labels, epochs=200)
    assert head.names == ["ct", "fundus"]
    assert [head.names[k] for k in head(x).argmax(1).tolist()] == labels
    head.save(tmp_path)
    again = ModalityHead.load(tmp_path)
    assert again.names == head.names and torch.allclose(again(x), head(x))
    assert ModalityHead.load(tmp_path / "nothing") is None
    (tmp_path / FILE).write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="not a modality head"):
        ModalityHead.load(tmp_path)


def _embedding(model: RCMedModel, image: MedicalImage) -> torch.Tensor:
    with torch.inference_mode():
        return model.encode(prepare_image(normalize(image), model.config.vision.img_size)[0][None]).embedding


@pytest.fixture(scope="module")
def recognising(tiny_trained, tmp_path_factory):
    """The tiny model with a head fitted on CT and fundus phantoms (as an image of unknown modality looks)."""
    folder = tmp_path_factory.mktemp("recognising") / "model"
    shutil.copytree(tiny_trained, folder)
    (folder / "targets.json").write_text(json.dumps({"ct": ["liver"], "fundus": ["optic disc"]}))
    model = RCMedModel.from_pretrained(folder)
    feats, labels = [], []
    for mod in ("ct", "fundus"):
        for seed in range(6):
            img = synth(mod, seed, size=64).image
            feats.append(pooled(_embedding(model, MedicalImage(array=img.array, rgb=img.rgb)))[0])
            labels.append(mod)
    fit(torch.stack(feats), labels, epochs=300).save(folder)
    return folder


def test_predictor_names_the_modality_when_none_is_given(recognising):
    p = Predictor.from_pretrained(recognising)
    fundus = synth("fundus", 11, size=64).image
    p.set_image(MedicalImage(array=fundus.array, rgb=True))
    a = p.predict("Segment the optic disc.")
    assert a.modality["name"] == "fundus" and a.modality["source"] == "recognised"
    assert 0.5 < a.modality["confidence"] <= 1.0
    assert a.text.startswith("This looks like a fundus image (")
    assert p.answer_json(a)["modality"] == a.modality
    # a target of another modality on the recognised one gets no mask
    refused = p.predict("Segment the liver.")
    assert refused.targets == [] and refused.off_modality == {"liver": ["ct"]}
    assert refused.text.startswith("This looks like a fundus image")
    # a given modality is used as given, and the text does not guess
    p.set_image(synth("ct", 11, size=64).image)
    a = p.predict("Segment the liver.")
    assert a.modality == {"name": "ct", "source": "given", "confidence": None}
    assert not a.text.startswith("This looks like")


def test_a_volume_of_hu_values_is_ct_without_asking_the_head(recognising):
    p = Predictor.from_pretrained(recognising)
    vol = synth("ct", 3, size=64, volume=True).image
    assert float(vol.array.min()) < p.CT_MIN_VALUE
    a = p.predict_volume(MedicalImage(array=vol.array, affine=vol.affine), "Segment the liver.")
    assert a.modality == {"name": "ct", "source": "intensity", "confidence": None}
    assert a.text.startswith("This looks like a CT image (from its intensities")


def test_a_damaged_head_is_a_clear_model_error(recognising, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(recognising, folder)
    (folder / FILE).write_bytes(b"\x00" * 10)
    with pytest.raises(ModelNotAvailableError, match="not a modality head"):
        Predictor.from_pretrained(folder)


def test_server_takes_an_optional_modality(recognising):
    from rcmed.serve.app import ServeSettings, create_app

    fundus = synth("fundus", 11, size=64).image
    buf = io.BytesIO()
    Image.fromarray((normalize(fundus) * 255).astype(np.uint8)).save(buf, format="PNG")
    c = TestClient(create_app(Predictor.from_pretrained(recognising), ServeSettings()))

    def post(**extra):
        return c.post("/v1/segment", files={"file": ("eye.png", io.BytesIO(buf.getvalue()), "image/png")},
                      data={"prompt": "Segment the optic disc.", **extra})

    r = post()
    assert r.status_code == 200, r.text
    assert r.json()["modality"]["source"] == "recognised" and r.json()["modality"]["name"] == "fundus"
    r = post(modality="fundus")
    assert r.status_code == 200 and r.json()["modality"] == {"name": "fundus", "source": "given", "confidence": None}
    r = post(modality="sonar")
    assert r.status_code == 400 and "unknown modality 'sonar'" in r.json()["error"]
    assert Modality("fundus").is_rgb_modality
