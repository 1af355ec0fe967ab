"""Decoder stage: many passes of the mask decoder over real data, with the language model's states cached.

Why a separate stage: on 2 CPU cores a full training step (the 30-layer language model forward and
backward, two loop rounds) costs about 7 s for 4 examples, so an hour sees the 1,325 real training
images about once, and the decoder, the part that draws the pixels and says present/absent, is far
from converged (validation Dice 0.26 after 400 full steps). With the language model frozen, its
hidden state at a target's `<region>` slot depends only on the image's visual tokens and the words
before the slot ("Segment the liver." / "The liver <seg>"), so it is computed once per (image,
phrasing) and stored. A decoder step then costs the decoder only, and the real training split can
be seen many times. What trains here: the seg-query head (LM state -> decoder query) and the mask
decoder (mask, box, IoU and presence heads); the encoder and the language model stay as they are.

The closed loop's second round (`loop=True` when collecting, `rounds=2` when training): the language
model re-reads the region round 1 found (`RCMedModel.reread`: the region embedding is written into the
`<region>` slot), and the decoder queries again with that state and round 1's mask as its dense prompt.
The re-read state at the slot depends on the words before it and on the region, so it too is computed
once per question, from the round-1 mask of the model the items are collected with, and stored
(`hidden2`). A two-round step then trains both rounds: round 1 on `hidden`, round 2 on `hidden2` with the
live round-1 mask as its prompt, which is what the loop does at inference. The region is that of the
collecting model's round 1, not of the decoder as it trains: the stage starts from the collecting model
and its round 1 moves little, and `score(..., loop=...)` measures on validation what each part gives.

Items (one target question of one image), tensors at the model input size S:
    hidden (P, H) LM states of P phrasings; hidden2 (P, H) the same after the loop's re-read, or None;
    mask (S, S) bool or None (absent target).
"""

from __future__ import annotations

import json
import math
import random
import time
import zlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from rcmed.data.store import Sample, ShardStream
from rcmed.io.image import MedicalImage, parse_modality
from rcmed.io.normalize import normalize
from rcmed.model.losses import rcmed_loss
from rcmed.model.processing import SEG, Example, box_from_mask, box_prompt_pixels, build_batch
from rcmed.model.rcmed import RCMedModel
from rcmed.model.vision import VisionFeatures
from rcmed.postprocess import base_name, rule_key, target_key
from rcmed.train.feature_cache import FeatureCache

ITEM_TASKS = ("segment_name", "absent")
VIEW_SUFFIX = "#view"  # the record of an item asked on another field of view of its image (`collect_items(view=...)`)


@dataclass
class Item:
    record: str
    dataset: str
    name: str
    feature: str  # the image's feature-cache entry
    hidden: torch.Tensor  # (P, H) LM state at the <region> slot, one row per phrasing
    mask: torch.Tensor | None  # (S, S) bool in model-input pixels; None: the target is absent
    hidden2: torch.Tensor | None = None  # (P, H) LM state at the slot after re-reading round 1's region


def dataset_of(record) -> str:
    """The dataset a record comes from: its `source` (real stores), else the modality (phantoms)."""
    return record.source or f"phantom-{record.modality}"


def _record_examples(sample, rng: random.Random, phrasings: int = 2) -> list[tuple[str, list[Example]]]:
    """Per single-target question of the record (segment_name for present targets and instances,
    absent for known-absent names): its name and the example in up to `phrasings` phrasings (the evaluation's
    "Segment the X.", then one drawn from the record's own phrasings). The image is normalised once."""
    rec = sample.record
    questions = [ex for ex in rec.examples if ex["task"] in ITEM_TASKS and len(ex["seg_targets"]) == 1]
    if not questions:
        return []
    img = MedicalImage(array=sample.image, modality=parse_modality(rec.modality), rgb=sample.image.ndim == 3)
    x = normalize(img)
    regions: list[np.ndarray | None] = list(sample.masks)
    if sample.instances is not None and rec.instance_target:
        regions.append(sample.instances > 0)
    out = []
    for ex in questions:
        k = ex["seg_targets"][0]
        mask = regions[k] if 0 <= k < len(regions) else None
        prompts = list(dict.fromkeys([_canonical(ex), rng.choice(ex.get("prompts") or [ex["prompt"]])]))[:phrasings]
        # the slot's state depends only on what comes before it (causal attention): the answer stops there
        head = ex["answer"].split(SEG)[0] + SEG
        out.append((_name_of(ex), [Example(x, p, head, [mask]) for p in prompts]))
    return out


def _canonical(ex: dict) -> str:
    return f"Segment the {_name_of(ex)}."


def _name_of(ex: dict) -> str:
    """The target an example asks about, read from its answer ("The X <seg> ...", "Here are the N X <seg>")."""
    head = ex["answer"].split("<seg>")[0].strip().rstrip(",")
    words = head.split()
    if words[:3] == ["Here", "are", "the"] and len(words) > 3 and words[3].isdigit():
        return " ".join(words[4:])
    if words and words[0] in {"The", "the"}:
        return " ".join(words[1:])
    return " ".join(words)


@torch.inference_mode()
def collect_items(model: RCMedModel, stores: list[str], split: str, cache: FeatureCache, seed: int = 0,
                  limit: int | None = None, every: int = 1, loop: bool = False, phrasings: int = 2,
                  view: Callable[[Sample, random.Random], Sample] | None = None, log=print) -> list[Item]:
    """Every single-target question of every record of `split` in `stores` (of one record in `every`,
    by a fixed hash of its id), in up to `phrasings` phrasings, with the frozen LM's states at its `<region>`
    slot, and with `loop` also the states after the LM re-reads the region of the model's round-1 mask
    (`hidden2`). Features are read from (or written to) `cache`. With `view`, each record is first seen from
    another field of view (`rcmed.data.views.random_view`; drawn from the record's id and `seed`, so the same
    whatever the order), and its items' record is the id + VIEW_SUFFIX."""
    model.eval()
    size = model.config.vision.img_size
    items: list[Item] = []
    rng = random.Random(seed)
    t0 = time.perf_counter()
    n = 0
    for store in stores:
        for sample in ShardStream(store, split=split, seed=seed, epoch=0, buffer=1):
            if every > 1 and zlib.crc32(sample.record.id.encode()) % every:
                continue
            record = sample.record.id
            if view is not None:
                sample = view(sample, random.Random(zlib.crc32(record.encode()) * 1_000_003 + seed))
                record += VIEW_SUFFIX
            questions = _record_examples(sample, rng, phrasings)
            if not questions:
                continue
            flat = [e for _, exs in questions for e in exs]
            batch = build_batch(model.processor, flat, size)
            feats = cache.features(batch.pixel_values[:1], model.encode)
            key = str(cache.path_of(batch.pixel_values[0]))
            visual = model.visual_tokens(feats).expand(len(flat), -1, -1)
            h = slot_states(model, model.embed(batch.input_ids, visual), batch.attention_mask)
            b_idx, pos = model._slots(batch.input_ids)
            states = h[b_idx, pos].float()
            states2 = _reread_states(model, feats, batch, visual, h[b_idx, pos]) if loop else None
            j = 0
            for (name, exs) in questions:
                first = j
                j += len(exs)
                m = batch.target_masks[first] if batch.presence[first] > 0 else None
                items.append(Item(record, dataset_of(sample.record), name, key, states[first:j].clone(),
                                  None if m is None else m.bool(),
                                  None if states2 is None else states2[first:j].clone()))
            n += 1
            if n % 100 == 0:
                log(f"  {split}: {n} records, {len(items)} questions, {time.perf_counter() - t0:.0f} s")
            if limit is not None and n >= limit:
                break
    return items


def _reread_states(model: RCMedModel, feats: VisionFeatures, batch, visual: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    """(N, H) slot states of the N single-slot questions of one image after the loop's re-read: round 1
    decodes from `first` (N, H), the region of its mask goes into the slot, the LM reads again."""
    index = torch.zeros(first.shape[0], dtype=torch.long)
    prev = model.decode(feats, model.seg_query(first), index).masks[:, 0]
    regions = model.region_pooler(torch.sigmoid(prev)[:, None], feats.levels, index)
    h = slot_states(model, model.embed(batch.input_ids, visual, regions), batch.attention_mask)
    b_idx, pos = model._slots(batch.input_ids)
    return h[b_idx, pos].float()


def slot_states(model: RCMedModel, embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The LM's last hidden states (B, L, H), as `run_lm(...).hidden_states[-1]`, without the vocabulary head."""
    lm = model.lm.get_base_model() if hasattr(model.lm, "get_base_model") else model.lm
    return lm.model(inputs_embeds=embeds, attention_mask=attention_mask).last_hidden_state


def _features(paths: list[str]) -> VisionFeatures:
    """The embedding and finest level of cached images (all the decoder reads)."""
    embs, fines = [], []
    for p in paths:
        with safe_open(p, "pt") as f:
            embs.append(f.get_tensor("embedding"))
            fines.append(f.get_tensor("level0"))
    return VisionFeatures(levels=[torch.stack(fines).float()], embedding=torch.stack(embs).float())


def _decode(model: RCMedModel, items: list[Item], rng: random.Random | None, rounds: int = 1,
            loop: str = "full", boxes: torch.Tensor | None = None) -> list:
    """The decoder's outputs over `items` (grouped by image), one DecoderOutput per loop round, as
    `RCMedModel._rounds` runs them: round 2 queries with the re-read states (`hidden2`; round 1's with
    `loop="no-region"`) and round 1's mask logits as the dense prompt (none with "no-mask-prompt").
    `rng` draws each item's phrasing (None: the first); `boxes` (K, 4) model-input pixels go to every round."""
    if rounds not in (1, 2):
        raise ValueError(f"the decoder stage runs one or two loop rounds, not {rounds}")
    paths = list(dict.fromkeys(it.feature for it in items))
    index = {p: i for i, p in enumerate(paths)}
    feats = _features(paths)
    pick = [rng.randrange(len(it.hidden)) if rng else 0 for it in items]
    image_index = torch.tensor([index[it.feature] for it in items])
    hidden = torch.stack([it.hidden[k] for it, k in zip(items, pick, strict=True)])
    outs = [model.decode(feats, model.seg_query(hidden), image_index, boxes=boxes)]
    if rounds == 2:
        if loop == "no-region":
            hidden2 = hidden
        elif any(it.hidden2 is None for it in items):
            raise ValueError("two rounds need the re-read states: collect the items with loop=True")
        else:
            hidden2 = torch.stack([it.hidden2[k] for it, k in zip(items, pick, strict=True)])
        prev = None if loop == "no-mask-prompt" else outs[0].masks[:, 0].detach()
        outs.append(model.decode(feats, model.round_query(hidden, hidden2), image_index, prev_logits=prev, boxes=boxes))
    return outs


def _targets(items: list[Item], size: int):
    masks = torch.stack([it.mask.float() if it.mask is not None else torch.zeros(size, size) for it in items])
    has = torch.tensor([it.mask is not None and bool(it.mask.any()) for it in items])
    boxes = torch.stack([box_from_mask(m) if h else torch.zeros(4) for m, h in zip(masks, has, strict=True)])
    presence = torch.tensor([float(it.mask is not None) for it in items])
    return masks, has, boxes, presence


def record_weights(items: list[Item], power: float) -> tuple[list[str], list[float]]:
    """Records and their draw weights: a record of a dataset with n records weighs n**-power (0: every
    record alike; 1: every dataset alike)."""
    per_record = {it.record: it.dataset for it in items}
    count: dict[str, int] = defaultdict(int)
    for d in per_record.values():
        count[d] += 1
    records = sorted(per_record)
    return records, [count[per_record[r]] ** -power for r in records]


@torch.inference_mode()
def score(model: RCMedModel, items: list[Item], chunk: int = 16, rounds: int = 1, loop: str = "full") -> list[dict[str, object]]:
    """Per question: dataset, name, presence probability, truth, and Dice (at logit 0, model-input
    pixels) of the mask when the target is present; the last of `rounds` loop rounds (variant `loop`)."""
    model.eval()
    rows = []
    for i in range(0, len(items), chunk):
        part = items[i:i + chunk]
        out = _decode(model, part, None, rounds, loop)[-1]
        prob = torch.sigmoid(out.presence).tolist()
        for it, p, logits in zip(part, prob, out.masks[:, 0], strict=True):
            row = {"dataset": it.dataset, "name": it.name, "record": it.record, "presence": p, "present": it.mask is not None}
            if it.mask is not None:
                pred, true = logits > 0, it.mask
                denom = int(pred.sum() + true.sum())
                row["dice"] = 1.0 if denom == 0 else 2 * int((pred & true).sum()) / denom
            rows.append(row)
    return rows


def _draw(model: RCMedModel, part: list[Item], sam, wanted: list[set[str]], rounds: int = 1) -> list[dict[str, torch.Tensor]]:
    """Per question of `part`, the (S, S) mask logits (last loop round) of each mask path in its set of `wanted` paths
    (`rcmed.postprocess.MASK_PATHS`, as `Predictor` draws them): "query", the text query into our decoder; "box", the
    box our decoder predicts into LiteMedSAM's own decoder `sam`; "both", query and that box into ours (in every
    round); "refine", one box per part of the query's mask (logit 0; specks left out) into `sam`, joined
    (`LiteMedSAM.segment_components`; a query mask that is empty stays the query's logits). Round 1 is decoded once
    for every path; `sam` may be None when no path needs it."""
    from rcmed.postprocess import SPECK_FRACTION

    first = _decode(model, part, None, rounds)[-1]
    query = first.masks[:, 0]
    boxes = box_prompt_pixels(first.box, model.config.vision.img_size)  # as the predictor
    redo = _decode(model, part, None, rounds, boxes=boxes)[-1].masks[:, 0] if any("both" in w for w in wanted) else None
    feats = index = None
    if any(w & {"box", "refine"} for w in wanted):
        index = {f: i for i, f in enumerate(dict.fromkeys(it.feature for it in part))}
        feats = _features(list(index))
    drawn: list[dict[str, torch.Tensor]] = []
    for j, (it, want) in enumerate(zip(part, wanted, strict=True)):
        out = {"query": query[j]} if "query" in want else {}
        if "both" in want:
            out["both"] = redo[j]
        if want & {"box", "refine"}:
            k = index[it.feature]
            one = VisionFeatures(levels=[feats.levels[0][k][None]], embedding=feats.embedding[k][None])
            if "box" in want:
                out["box"] = sam.segment_boxes(one, boxes[j:j + 1]).masks[0, 0]
            if "refine" in want:
                refined = sam.segment_components(one, query[j] > 0, min_fraction=SPECK_FRACTION)
                out["refine"] = query[j] if refined is None else refined
        drawn.append(out)
    return drawn


def path_logits(model: RCMedModel, part: list[Item], sam, paths: list[str], rounds: int = 1) -> torch.Tensor:
    """(K, S, S) mask logits of the K questions of `part` (last loop round), each drawn by its mask path in `paths`
    (`_draw`)."""
    drawn = _draw(model, part, sam, [{p} for p in paths], rounds)
    return torch.stack([d[p] for d, p in zip(drawn, paths, strict=True)])


@torch.inference_mode()
def score_paths(model: RCMedModel, items: list[Item], sam, chunk: int = 16, rounds: int = 1) -> list[tuple[str, dict[str, float]]]:
    """Per present question, Dice (at logit 0, model-input pixels) of each way from words to a mask
    (`rcmed.postprocess.MASK_PATHS`, all drawn by one `_draw`). For `rcmed.postprocess.choose_mask_paths`."""
    from rcmed.postprocess import MASK_PATHS

    model.eval()
    present = [it for it in items if it.mask is not None and bool(it.mask.any())]
    out: list[tuple[str, dict[str, float]]] = []
    for i in range(0, len(present), chunk):
        part = present[i:i + chunk]
        drawn = _draw(model, part, sam, [set(MASK_PATHS)] * len(part), rounds)
        out += [(it.name, {p: _dice(d[p] > 0, it.mask) for p in MASK_PATHS}) for it, d in zip(part, drawn, strict=True)]
    return out


@torch.inference_mode()
def mask_logits(model: RCMedModel, items: list[Item], paths: dict[str, str] | None = None, chunk: int = 16,
                rounds: int = 1, sam=None) -> list[tuple[Item, np.ndarray]]:
    """Per present question, the mask logits (S, S) the model draws for it (last loop round), by the target's
    mask path in `paths` (name key -> path; "query" when absent; `path_logits`, `sam` for "box" and "refine"):
    what the mask threshold and the component rules are chosen on (`rcmed.postprocess.choose_thresholds`,
    `choose_rules`)."""
    model.eval()
    paths = paths or {}
    present = [it for it in items if it.mask is not None and bool(it.mask.any())]
    out: list[tuple[Item, np.ndarray]] = []
    for i in range(0, len(present), chunk):
        part = present[i:i + chunk]
        logits = path_logits(model, part, sam, [paths.get(target_key(it.name), "query") for it in part], rounds)
        out += [(it, logits[j].float().numpy()) for j, it in enumerate(part)]
    return out


def _dice(pred: torch.Tensor, true: torch.Tensor) -> float:
    denom = int(pred.sum() + true.sum())
    return 1.0 if denom == 0 else 2 * int((pred & true).sum()) / denom


def summarise(rows: list[dict[str, object]], cuts: dict[str, float] | None = None) -> dict[str, dict[str, float]]:
    """Per dataset: words-alone Dice (a present target called absent scores 0), present and absent accuracy."""
    cuts = cuts or {}
    by: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        called = r["presence"] >= cuts.get(target_key(r["name"]), 0.5)
        d = by[r["dataset"]]
        if r["present"]:
            d["dice"].append(r["dice"] if called else 0.0)
            d["present"].append(float(called))
        else:
            d["absent"].append(float(not called))
    return {k: {m: float(np.mean(v)) for m, v in d.items()} for k, d in sorted(by.items())}


def reaching_model(rows: list[dict[str, object]], taught: dict[str, list[str]],
                   modality_of: dict[str, str]) -> list[dict[str, object]]:
    """The validation questions the model itself decides: those naming a target taught on the image's
    modality (`taught`: modality -> names, as `targets.json`; `modality_of`: dataset -> modality). The
    others (a polyp asked on a CT) are refused by rule before the model is asked (`Predictor.refusal`),
    so they must not steer a presence cut: they are easy negatives, and counting them makes a low cut look
    free while on the image's own modality it calls absent targets present. A row's name may be a rule key
    ("nuclei@pathology", `rcmed.postprocess.rule_key`): its target is the name before the "@"."""
    known = {m: {target_key(n) for n in names} for m, names in taught.items()}
    return [r for r in rows
            if base_name(target_key(str(r["name"]))) in known.get(modality_of.get(str(r["dataset"]), ""), set())]


def by_modality_where_apart(items: list[Item], modality_of: dict[str, str]) -> list[Item]:
    """`items` with the name of each target whose present questions come from images of more than one modality
    changed to its per-modality rule key (`rcmed.postprocess.rule_key`: "nuclei@pathology"), so each modality
    gets rules chosen on its own images: one name can look and behave otherwise on two modalities (nuclei bright
    on black in fluorescence, dark on pink in H&E), and one set of rules chosen over both follows the one with
    more questions. (A test overlay, MoNuSeg's worst case, prompted this; the model card says so.) Absent
    questions are keyed by their image's modality too. `modality_of`: dataset -> modality."""
    seen: dict[str, set[str]] = {}
    for it in items:
        if it.mask is not None and bool(it.mask.any()):
            seen.setdefault(target_key(it.name), set()).add(modality_of[it.dataset])
    apart = {name for name, mods in seen.items() if len(mods) > 1}
    return [replace(it, name=rule_key(it.name, modality_of[it.dataset])) if target_key(it.name) in apart else it
            for it in items]


def mean_dice(summary: dict[str, dict[str, float]], real_only: bool = True) -> float:
    vals = [s["dice"] for k, s in summary.items() if "dice" in s and not (real_only and k.startswith("phantom-"))]
    return float(np.mean(vals)) if vals else 0.0


def train_decoder(model: RCMedModel, train: list[Item], val: list[Item], out: Path, steps: int, *,
                  records_per_step: int = 6, lr: float = 2e-4, warmup: int = 50, power: float = 0.75,
                  eval_every: int = 250, seed: int = 0, rounds: int = 1, log=print) -> dict[str, object]:
    """Train the seg-query head and the mask decoder on cached items; keep the weights of the best
    validation mean Dice (real datasets, words alone, presence at 0.5, the last of `rounds` loop rounds).
    With `rounds=2` every step trains both rounds (the loss of each, halved, as `rcmed_loss` weighs rounds).
    Writes `out/metrics.csv`, `out/val_history.json`; returns the best step and its validation summary."""
    out.mkdir(parents=True, exist_ok=True)
    # Only these are optimised; the rest keep `requires_grad` as the model set it (so the saved
    # trainable state is complete) but get no gradient: the cached states and features are leaves.
    loop = [*model.loop_delta.parameters()] if model.loop_delta is not None else []
    params = [p for p in [*model.seg_query.parameters(), *model.mask_decoder.parameters(), *loop] if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    by_record: dict[str, list[Item]] = defaultdict(list)
    for it in train:
        by_record[it.record].append(it)
    records, weights = record_weights(train, power)
    rng = random.Random(seed)
    torch.manual_seed(seed)
    size = model.config.vision.img_size
    best: dict[str, object] = {"step": 0, "mean_dice": mean_dice(summarise(score(model, val, rounds=rounds))) if val else 0.0}
    best_state = {k: v.clone() for k, v in model.trainable_state_dict().items()}
    history = [{"step": 0, "mean_dice": best["mean_dice"]}]
    log(f"decoder stage: {len(train)} train questions on {len(records)} images, {len(val)} val; step 0 val {best['mean_dice']:.4f}")
    fh = open(out / "metrics.csv", "w")
    fh.write("step,loss,mask_bce,mask_dice,presence,box_l1,iou,step_s\n")
    for step in range(1, steps + 1):
        model.train()
        t0 = time.perf_counter()
        items = [it for r in rng.choices(records, weights, k=records_per_step) for it in by_record[r]]
        outs = _decode(model, items, rng, rounds)
        masks, has, boxes, presence = _targets(items, size)
        parts = rcmed_loss([{"masks": d.masks[:, 0], "box": d.box, "presence": d.presence, "iou": d.iou[:, 0]} for d in outs],
                           torch.zeros(()), masks, has, boxes, presence, None, model.config.losses)
        opt.zero_grad()
        parts["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        fh.write(f"{step},{float(parts['loss'].detach()):.5f},{float(parts['mask_bce']):.5f},{float(parts['mask_dice']):.5f},"
                 f"{float(parts['presence']):.5f},{float(parts['box_l1']):.5f},{float(parts['iou']):.5f},"
                 f"{time.perf_counter() - t0:.3f}\n")
        fh.flush()
        if val and (step % eval_every == 0 or step == steps):
            summary = summarise(score(model, val, rounds=rounds))
            md = mean_dice(summary)
            history.append({"step": step, "mean_dice": md, "datasets": summary})
            log(f"  step {step}: val mean Dice {md:.4f} (best {best['mean_dice']:.4f} at {best['step']})")
            if md > best["mean_dice"]:
                best = {"step": step, "mean_dice": md, "datasets": summary}
                best_state = {k: v.clone() for k, v in model.trainable_state_dict().items()}
            (out / "val_history.json").write_text(json.dumps(history, indent=1))
    fh.close()
    model.load_trainable(best_state)
    return best
