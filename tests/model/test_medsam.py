"""RCMed's encoder, prompt encoder and decoder map one to one onto the LiteMedSAM checkpoint:
their outputs equal LiteMedSAM's own reference code (stored fixture) within 1e-4."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rcmed.model.medsam import LiteMedSAM
from rcmed.model.pretrained import WeightsError, load_litemedsam, sha256
from tests.model.reference_input import BOX, reference_image

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "litemedsam_reference.npz"


@pytest.fixture(scope="module")
def model() -> LiteMedSAM:
    return LiteMedSAM.from_pretrained()


def test_outputs_equal_the_reference_forward(model):
    ref = np.load(FIXTURE)
    x = torch.from_numpy(reference_image())[None]
    with torch.inference_mode():
        feats = model.encode(x)
        out = model.segment_boxes(feats, torch.tensor([BOX]))
    emb = feats.embedding
    np.testing.assert_allclose(emb[0, :, ::8, ::8].numpy(), ref["embedding"], atol=1e-4, rtol=0)
    assert float(emb.double().sum()) == pytest.approx(float(ref["embedding_sum"]), rel=1e-5)
    np.testing.assert_allclose(out.masks[0, 0, ::4, ::4].numpy(), ref["masks"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(out.iou[0].numpy(), ref["iou"], atol=1e-4)
    # the box prompt segments the bright disc: most of it positive, the far corner negative
    m = out.masks[0, 0] > 0
    assert m[135, 125] and not m[10, 10]


def test_encoder_gives_all_scales(model):
    with torch.inference_mode():
        f = model.encode(torch.zeros(1, 3, 256, 256))
    assert [tuple(t.shape[1:]) for t in f.levels] == [(128, 128, 128), (160, 64, 64), (320, 64, 64), (320, 64, 64)]
    assert tuple(f.embedding.shape) == (1, 256, 64, 64)


def test_training_mode_matches_eval_mode(model):
    """Folded Conv+BN (eval) and the plain modules (train, BN frozen by eval stats) agree."""
    x = torch.from_numpy(reference_image())[None]
    with torch.inference_mode():
        a = model.image_encoder(x).embedding
    enc = model.image_encoder
    enc.train()
    for m in enc.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()  # use running statistics, as when the encoder is frozen
    try:
        with torch.no_grad():
            b = enc(x).embedding
    finally:
        enc.eval()
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_tampered_weights_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    from rcmed.model.pretrained import litemedsam_safetensors

    state = load_file(str(litemedsam_safetensors()))
    state["mask_decoder.iou_token.weight"] = state["mask_decoder.iou_token.weight"] + 1.0
    bad = tmp_path / "lite_medsam.safetensors"
    save_file(state, str(bad))
    assert sha256(bad) != sha256(litemedsam_safetensors())
    with pytest.raises(WeightsError, match="refusing tampered weights"):
        load_litemedsam(bad)


def test_segment_components_gives_each_part_its_own_box(model):
    """The "refine" mask path's step: one box per connected part of a rough mask (specks under `min_fraction` of the
    largest left out, at most `max_boxes`), LiteMedSAM's masks joined; an empty mask gives None."""
    x = torch.from_numpy(reference_image())[None]
    with torch.inference_mode():
        feats = model.encode(x)
    rough = torch.zeros(256, 256, dtype=torch.bool)
    rough[100:170, 90:160] = True  # a rough square inside the bright disc (centre 135, 125; radius 55)
    rough[5:7, 5:7] = True  # a speck in the far corner
    seen = []

    class Recording(LiteMedSAM):
        def segment_boxes(self, features, boxes):
            seen.append(boxes.tolist())
            return super().segment_boxes(features, boxes)

    rec = Recording()
    rec.load_state_dict(model.state_dict())
    with torch.inference_mode():
        refined = rec.segment_components(feats, rough, min_fraction=0.1)
        assert seen == [[[90.0, 100.0, 159.0, 169.0]]]  # the speck got no box
        assert rec.segment_components(feats, torch.zeros(256, 256, dtype=torch.bool)) is None
        both = rec.segment_components(feats, rough, max_boxes=None)
        assert len(seen[-1]) == 2
        first = rec.segment_components(feats, rough, max_boxes=1)
    assert refined.shape == (256, 256)
    m = refined > 0
    assert m[135, 125] and not m[10, 10] and not m[6, 6]  # the part's object is drawn; the speck's corner is not
    assert torch.equal(first, refined)  # the largest part only: the square, as with the speck left out
    assert bool((both >= refined - 1e-3).all())  # joined: the maximum over the parts' masks (batched: float noise)
