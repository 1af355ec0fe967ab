"""The decoder stage on the tiny model: questions collected with the language model's slot states, a few
decoder steps on them (only the seg-query head and the mask decoder change), validation scored, the
best step kept; and the modality head's training features from the same store."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from rcmed.data.build import build_store
from rcmed.data.split import split_by_case
from rcmed.data.synth import synth_store
from rcmed.model.config import RCMedConfig
from rcmed.model.rcmed import RCMedModel
from rcmed.train import decoder_stage as ds
from rcmed.train.feature_cache import FeatureCache


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("stage")
    synth_store(str(root / "st"), "ct", 8, seed=5, size=64, progress=False)
    split_by_case(root / "st", {"train": 0.75, "val": 0.25}, seed=0)
    build_store(root / "st", root / "built", progress=False)
    return root / "built"


def test_collect_train_and_keep_the_best_step(built, tmp_path):
    torch.manual_seed(0)
    cfg = RCMedConfig.tiny()
    cfg.freeze_vision = True
    model = RCMedModel(cfg)
    cache = FeatureCache(tmp_path / "cache", model.image_encoder)
    train = ds.collect_items(model, [str(built)], "train", cache, seed=1)
    val = ds.collect_items(model, [str(built)], "val", cache, seed=1)
    assert train and val and {it.dataset for it in train} == {train[0].dataset}
    assert all(it.hidden.shape == (len(it.hidden), cfg.lm_hidden) and 1 <= len(it.hidden) <= 2 for it in train)
    assert any(it.mask is None for it in train) and any(it.mask is not None for it in train)  # absent and present
    # the state at a slot does not depend on what follows it: the same question gives the same state
    again = ds.collect_items(model, [str(built)], "train", cache, seed=1)
    assert torch.equal(again[0].hidden, train[0].hidden)
    before = {k: v.clone() for k, v in model.trainable_state_dict().items()}
    best = ds.train_decoder(model, train, val, tmp_path / "run", 6, records_per_step=2, lr=5e-3, warmup=1,
                            eval_every=3, seed=0)
    assert best["step"] in (0, 3, 6) and 0.0 <= best["mean_dice"] <= 1.0
    assert (tmp_path / "run" / "metrics.csv").read_text().count("\n") == 7
    hist = (tmp_path / "run" / "val_history.json").read_text()
    assert '"step": 3' in hist and '"step": 6' in hist
    after = model.trainable_state_dict()
    changed = {k.split(".")[0] for k in after if not torch.equal(before[k], after[k])}
    assert changed <= {"mask_decoder", "seg_query"}
    assert changed or best["step"] == 0  # the kept weights are the best step's (step 0: untouched)
    rows = ds.score(model, val)
    summary = ds.summarise(rows)
    assert set(summary) == {val[0].dataset}
    assert all(0.0 <= r["presence"] <= 1.0 for r in rows)

    from rcmed.model.medsam import LiteMedSAM

    class FilledBox:
        """Stands in for LiteMedSAM's decoder: the box it is given, filled (for each part's box, joined)."""

        segment_components = LiteMedSAM.segment_components

        def segment_boxes(self, feats, boxes):
            assert feats.embedding.shape[0] == 1  # one image's features, its boxes
            masks = torch.full((len(boxes), 1, 64, 64), -1.0)
            for k, (x0, y0, x1, y1) in enumerate(boxes.long().tolist()):
                masks[k, 0, y0:y1 + 1, x0:x1 + 1] = 1.0
            return SimpleNamespace(masks=masks)

    paths = ds.score_paths(model, val, FilledBox(), chunk=3)
    present = [it for it in val if it.mask is not None and bool(it.mask.any())]
    assert [n for n, _ in paths] == [it.name for it in present]
    assert all(set(d) == {"query", "box", "both", "refine"} and all(0.0 <= v <= 1.0 for v in d.values()) for _, d in paths)
    # "refine": each part of the query's mask (specks left out) as a filled box; an empty query mask stays the query's
    query = ds.path_logits(model, present, None, ["query"] * len(present))
    refined = ds.path_logits(model, present, FilledBox(), ["refine"] * len(present))
    from rcmed.postprocess import drop_specks

    for q, r in zip(query, refined, strict=True):
        parts = drop_specks((q > 0).numpy())
        if parts.any():
            from scipy import ndimage as ndi

            boxes = torch.zeros_like(r, dtype=torch.bool)
            for sl in ndi.find_objects(ndi.label(parts)[0]):
                boxes[sl] = True
            assert torch.equal(r > 0, boxes)
        else:
            assert torch.equal(r, q)
    # the query path is the one `score` measures
    assert [d["query"] for _, d in paths] == pytest.approx([r["dice"] for r in rows if r["present"] and "dice" in r
                                                           and any(r["record"] == it.record for it in present)])


def test_modality_features_from_a_store(built):
    from rcmed.train.modality import collect_pooled

    cfg = RCMedConfig.tiny()
    model = RCMedModel(cfg)
    feats, labels, sources = collect_pooled(model, [str(built)], "train", None)
    assert feats.shape == (len(labels), 2 * cfg.vision.neck_dim) and set(labels) == {"ct"} and len(sources) == len(labels)
    unknown, _, _ = collect_pooled(model, [str(built)], "train", None, as_unknown=True)
    assert unknown.shape == feats.shape and not torch.allclose(unknown, feats)  # HU window vs the generic rule
    empty, none, _ = collect_pooled(model, [str(built)], "test", None)
    assert empty.shape == (0, 2 * cfg.vision.neck_dim) and none == []


def test_presence_cuts_see_only_the_questions_the_model_decides():
    """A polyp asked on a CT is refused by rule before the model is asked, so it must not steer the cut."""
    rows = [{"dataset": "LGG", "name": "brain tumour", "presence": 0.3, "present": False},
            {"dataset": "LGG", "name": "Brain Tumour", "presence": 0.6, "present": True},
            {"dataset": "Kvasir", "name": "brain tumour", "presence": 0.1, "present": False},
            {"dataset": "Kvasir", "name": "polyp", "presence": 0.9, "present": True},
            {"dataset": "unseen", "name": "polyp", "presence": 0.9, "present": True}]
    taught = {"mri": ["brain tumour"], "endoscopy": ["polyp"]}
    kept = ds.reaching_model(rows, taught, {"LGG": "mri", "Kvasir": "endoscopy"})
    assert [(r["dataset"], r["name"]) for r in kept] == [("LGG", "brain tumour"), ("LGG", "Brain Tumour"),
                                                         ("Kvasir", "polyp")]


def test_loop_items_are_the_second_round_the_model_runs(built, tmp_path):
    """A question collected with `loop=True` carries the language model's state after re-reading round 1's
    region; the stage's two-round decode of it is the model's own two-round decode of the same words, and a
    two-round stage trains both rounds (only the seg-query head and the mask decoder change)."""
    import random

    from rcmed.data.store import ShardStream
    from rcmed.model.processing import build_batch

    torch.manual_seed(0)
    cfg = RCMedConfig.tiny()
    cfg.freeze_vision = True
    model = RCMedModel(cfg).eval()
    cache = FeatureCache(tmp_path / "cache", model.image_encoder)
    items = ds.collect_items(model, [str(built)], "val", cache, seed=1, loop=True)
    assert all(it.hidden2 is not None and it.hidden2.shape == it.hidden.shape for it in items)
    assert not torch.allclose(items[0].hidden2, items[0].hidden)  # the region changed what the model reads
    plain = ds.collect_items(model, [str(built)], "val", cache, seed=1)
    assert all(p.hidden2 is None and torch.equal(p.hidden, it.hidden) for p, it in zip(plain, items, strict=True))
    with pytest.raises(ValueError, match="re-read"):
        ds.score(model, plain, rounds=2)

    # the same first question, as the model answers it with two rounds
    sample = next(iter(ShardStream(str(built), split="val", seed=1, epoch=0, buffer=1)))
    questions = ds._record_examples(sample, random.Random(1))
    batch = build_batch(model.processor, [questions[0][1][0]], cfg.vision.img_size)
    ids = batch.input_ids[0][batch.attention_mask[0].bool()].tolist()
    feats = cache.features(batch.pixel_values[:1], model.encode)
    ours = model.decode_answer(batch.pixel_values[:1], ids, feats=feats, rounds=2)
    stage = ds._decode(model, [items[0]], None, rounds=2)[-1]
    assert torch.allclose(stage.masks, ours.masks, atol=1e-4) and torch.allclose(stage.presence, ours.presence, atol=1e-4)
    one = ds._decode(model, [items[0]], None, rounds=1)[-1]
    assert not torch.allclose(one.masks, stage.masks)
    no_region = ds._decode(model, [items[0]], None, rounds=2, loop="no-region")[-1]
    assert torch.allclose(no_region.masks, model.decode_answer(batch.pixel_values[:1], ids, feats=feats, rounds=2,
                                                               loop="no-region").masks, atol=1e-4)

    before = {k: v.clone() for k, v in model.trainable_state_dict().items()}
    ds.train_decoder(model, items, items, tmp_path / "run", 2, records_per_step=2, lr=5e-3, warmup=1, eval_every=2,
                     seed=0, rounds=2)
    after = model.trainable_state_dict()
    assert {k.split(".")[0] for k in after if not torch.equal(before[k], after[k])} <= {"mask_decoder", "seg_query"}


def test_a_residual_loop_starts_as_round_one_and_learns_what_the_region_adds(built, tmp_path):
    """`loop_residual`: round 2's query is round 1's plus a correction from what re-reading the region changed,
    zero at the start, so the full loop equals the loop without the region fed back until training moves it; a
    two-round stage trains the correction, and it survives a save."""
    torch.manual_seed(0)
    cfg = RCMedConfig.tiny()
    cfg.freeze_vision = True
    base = RCMedModel(cfg).eval()
    cfg2 = RCMedConfig.tiny()
    cfg2.freeze_vision, cfg2.loop_residual = True, True
    model = RCMedModel(cfg2).eval()
    model.load_trainable(base.trainable_state_dict())  # a one-round model's weights, the correction new and zero
    cache = FeatureCache(tmp_path / "cache", model.image_encoder)
    items = ds.collect_items(model, [str(built)], "val", cache, seed=1, loop=True)
    full = ds._decode(model, items, None, rounds=2)[-1]
    no_region = ds._decode(model, items, None, rounds=2, loop="no-region")[-1]
    assert torch.equal(full.masks, no_region.masks)  # zero correction: the region read back changes nothing yet
    assert not torch.equal(ds._decode(base, items, None, rounds=2)[-1].masks, full.masks)  # the plain loop re-asks
    ds.train_decoder(model, items, items, tmp_path / "run", 3, records_per_step=2, lr=5e-3, warmup=1, eval_every=10,
                     seed=0, rounds=2)
    assert float(model.loop_delta.weight.detach().abs().sum()) > 0  # trained
    full = ds._decode(model, items, None, rounds=2)[-1]
    assert not torch.allclose(full.masks, ds._decode(model, items, None, rounds=2, loop="no-region")[-1].masks)
    model.config.loop_rounds = 2
    model.save_pretrained(tmp_path / "m")
    again = RCMedModel.from_pretrained(tmp_path / "m")
    assert again.config.loop_residual and torch.equal(again.loop_delta.weight, model.loop_delta.weight)


def test_questions_on_another_field_of_view_move_the_mask_and_name_their_record(built, tmp_path):
    """`collect_items(view=...)`: the same questions, asked on the image and mask the view gives (here: zoomed out to
    half the side at the top left), each item's record marked as a view, its features those of the new image."""
    from rcmed.data.views import zoom_out

    def corner(sample, rng):
        image, masks, inst = zoom_out(sample.image, sample.masks, 0.5, (0, 0), instances=sample.instances)
        return replace(sample, image=image, masks=masks, instances=inst)

    torch.manual_seed(0)
    cfg = RCMedConfig.tiny()
    cfg.freeze_vision = True
    model = RCMedModel(cfg)
    cache = FeatureCache(tmp_path / "cache", model.image_encoder)
    plain = ds.collect_items(model, [str(built)], "val", cache, seed=1, phrasings=1)
    seen = ds.collect_items(model, [str(built)], "val", cache, seed=1, phrasings=1, view=corner)
    assert [(it.record + ds.VIEW_SUFFIX, it.name) for it in plain] == [(it.record, it.name) for it in seen]
    for a, b in zip(plain, seen, strict=True):
        assert a.feature != b.feature  # another image, encoded on its own
        assert (a.mask is None) == (b.mask is None)
        if a.mask is not None and a.mask.sum() > 40:
            size = a.mask.shape[0]
            assert not b.mask[size // 2 + 2:].any() and not b.mask[:, size // 2 + 2:].any()  # all in the top-left quarter
            assert int(b.mask.sum()) == pytest.approx(int(a.mask.sum()) / 4, rel=0.35)
