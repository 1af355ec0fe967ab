"""The tiny RCMed model (random init, 64² input, 2-layer LM): forward, backward, one-pass
multi-target decoding, the closed loop, and a short overfit on phantoms."""

from __future__ import annotations

import numpy as np
import torch

from rcmed.data.synth import synth
from rcmed.io.normalize import normalize
from rcmed.model.config import RCMedConfig
from rcmed.model.processing import Example, build_batch, postprocess_mask, prepare_image
from rcmed.model.rcmed import RCMedModel
from tests.conftest import phantom_examples


def _model(**kw) -> RCMedModel:
    torch.manual_seed(0)
    return RCMedModel(RCMedConfig(**kw))


def _examples(n: int = 8) -> list[Example]:
    return phantom_examples(n)


def test_forward_backward_every_trainable_parameter_gets_a_gradient():
    m = _model()
    batch = build_batch(m.processor, _examples(2) + [Example(
        normalize(synth("ct", 5, size=64).image), "Segment the liver and the aorta.", "The liver <seg> and the aorta <seg>.",
        [synth("ct", 5, size=64).masks["liver"], synth("ct", 5, size=64).masks["aorta"]])], 64)
    out = m(batch)
    assert torch.isfinite(out["loss"]) and set(out) >= {"lm", "mask_bce", "mask_dice", "box_l1", "box_giou", "presence", "consistency"}
    out["loss"].backward()
    missing = [n for n, p in m.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert missing == []


def test_three_targets_in_one_pass_equal_three_single_passes_without_loop():
    m = _model(loop_rounds=1).eval()
    with torch.no_grad():
        feats = m.encode(torch.rand(1, 3, 64, 64))
        q = torch.randn(3, m.config.vision.neck_dim)
        idx = torch.zeros(3, dtype=torch.long)
        together = m.decode(feats, q, idx).masks
        apart = torch.cat([m.decode(feats, q[i: i + 1], idx[:1]).masks for i in range(3)])
    torch.testing.assert_close(together, apart, atol=1e-5, rtol=1e-4)


def test_closed_loop_changes_the_masks():
    batch = build_batch(_model().processor, _examples(1)[:1], 64)
    with torch.no_grad():
        m = _model(loop_rounds=2).eval()
        feats = m.encode(batch.pixel_values)
        vis = m.visual_tokens(feats)
        h = m.run_lm(m.embed(batch.input_ids, vis), batch.attention_mask).hidden_states[-1]
        r1, r2 = m._rounds(feats, batch.input_ids, batch.attention_mask, vis, h, 2)
        calls = []
        m.run_lm = lambda *a, **k: calls.append(1) or RCMedModel.run_lm(m, *a, **k)
        _, no_region = m._rounds(feats, batch.input_ids, batch.attention_mask, vis, h, 2, loop="no-region")
        assert calls == []  # the language model is not asked again: round 1's states are reused
        _, no_prompt = m._rounds(feats, batch.input_ids, batch.attention_mask, vis, h, 2, loop="no-mask-prompt")
        assert calls == [1]
    assert not torch.allclose(r1.masks, r2.masks)
    # each ablation takes one part of the loop away, and each part changes the second round
    assert not torch.allclose(no_region.masks, r2.masks) and not torch.allclose(no_prompt.masks, r2.masks)


def test_overfits_phantoms_and_learns_absence(tiny_trained):
    """Trained by the `tiny_trained` fixture (180 steps on 8 phantoms), reloaded from disk."""
    m = RCMedModel.from_pretrained(tiny_trained)
    exs = phantom_examples(8)
    dices, absent_presence = [], []
    for i in range(0, len(exs), 2):
        pix, geom = prepare_image(exs[i].image, 64)
        g = m.generate(pix[None], "Segment the liver.", max_new_tokens=40)
        assert g.text == "The liver is here." and len(g.targets) == 1 and g.targets[0].name == "liver"
        pred, true = postprocess_mask(g.targets[0].mask_logits, geom), exs[i].masks[0]
        dices.append(2 * (pred & true).sum() / (pred.sum() + true.sum()))
        neg = m.generate(pix[None], "Segment the tumour.", max_new_tokens=40)
        assert "not present" in neg.text
        absent_presence += [t.presence for t in neg.targets]
    assert np.mean(dices) >= 0.9
    assert absent_presence and max(absent_presence) < 0.5


def test_generation_stops_at_the_token_bound_and_save_load_round_trip(tmp_path):
    m = _model().eval()
    pix = torch.rand(1, 3, 64, 64)
    g = m.generate(pix, "Describe.", max_new_tokens=5, do_sample=True, seed=1)
    assert len(g.token_ids) <= 6  # a forced <region> may follow a final <seg>
    m.save_pretrained(tmp_path / "ckpt")
    m2 = RCMedModel.from_pretrained(tmp_path / "ckpt")
    with torch.no_grad():
        a = m.visual_tokens(m.encode(pix))
        b = m2.visual_tokens(m2.encode(pix))
    torch.testing.assert_close(a, b)
    assert m2.generate(pix, "Describe.", max_new_tokens=5, do_sample=True, seed=1).token_ids == g.token_ids


def test_target_names_are_read_from_the_answer():
    from rcmed.model.rcmed import _target_names

    assert _target_names("Here are the liver <seg> and the left kidney <seg>.") == ["liver", "left kidney"]
    assert _target_names("There are 12 nuclei <seg>.") == ["nuclei"]


def test_box_prompt_joins_the_text_query():
    m = _model(loop_rounds=1).eval()
    with torch.no_grad():
        feats = m.encode(torch.rand(1, 3, 64, 64))
        q = torch.randn(2, m.config.vision.neck_dim)
        idx = torch.zeros(2, dtype=torch.long)
        plain = m.decode(feats, q, idx).masks
        boxed = m.decode(feats, q, idx, boxes=torch.tensor([[5.0, 5.0, 30.0, 30.0], [20.0, 20.0, 60.0, 60.0]])).masks
    assert boxed.shape == plain.shape and not torch.allclose(plain, boxed)


def test_any_local_hugging_face_causal_lm_plugs_in(tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from rcmed.model.language import byte_tokenizer

    tok = byte_tokenizer()
    lm = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512))
    lm.save_pretrained(tmp_path / "qwen")
    tok.save_pretrained(tmp_path / "qwen")
    m = _model(lm=str(tmp_path / "qwen"))
    assert m.lm.config.model_type == "qwen2" and m.tokenizer.convert_tokens_to_ids("<seg>") >= 256
    batch = build_batch(m.processor, _examples(1), 64)
    out = m(batch)
    assert torch.isfinite(out["loss"])


def test_special_tokens_typed_into_a_prompt_are_text_not_slots():
    """`<image>` in a prompt used to open an extra image slot (a crash), `<seg>` a fake target."""
    m = _model().eval()
    p = m.processor
    ids = p.prompt_ids("Segment <image> the <seg> liver <region> <box>.")
    assert ids.count(p.image_id) == p.n_visual and p.seg_id not in ids and p.region_id not in ids
    assert "seg> liver" in m.tokenizer.decode(ids[p.n_visual:])
    x, _ = prepare_image(normalize(synth("ct", 0, size=64).image), 64)
    gen = m.generate(x[None], "Segment the <image> <seg> liver.", max_new_tokens=4)
    assert isinstance(gen.text, str)
