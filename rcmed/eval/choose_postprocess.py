"""Choose a model's post-processing on a validation store: what `rcmed postprocess MODEL --data STORE` runs.

As nnU-Net's `determine_postprocessing`, every rule is chosen on validation answers and kept only where it
helps, with its evidence written beside it (`postprocess.json`, read by `Predictor`). In order, each step on
the masks the steps before it give:
1. mirrors per target (`rcmed.tta.choose_flips`: left-right / top-bottom flips whose mask logits are
   averaged with the image's; a name that states a side never gets the mirror that swaps it);
2. the mask-logit cut per target (`rcmed.postprocess.choose_thresholds`);
3. component rules per target (`rcmed.postprocess.choose_rules`: keep the largest, drop specks);
4. the presence cut per target (`rcmed.postprocess.choose_presence_cuts`), on the questions the model decides
   itself: a name taught only on other modalities is refused before the model is asked, so it is left out;
5. the mask path per target (`rcmed.postprocess.choose_mask_paths`: the text query into our decoder, our box
   into LiteMedSAM's decoder, or both), for models whose encoder is LiteMedSAM's.

Every question is "Segment the {target}." by words alone, on the record's image with its modality.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rcmed.data.store import iter_records, read_sample
from rcmed.eval.harness import _per_dataset, record_image, record_truths
from rcmed.eval.metrics import dice
from rcmed.postprocess import (
    MASK_PATHS,
    PostprocessRules,
    choose_mask_paths,
    choose_presence_cuts,
    choose_rules,
    choose_thresholds,
    target_key,
)
from rcmed.tta import VIEWS, choose_flips

MISSED = -1e4  # the logits of a target the model called absent: empty at every cut, Dice 0


@dataclass
class Answers:
    """Validation answers: per present target its logits per view (source pixels) and true mask; per
    question the model decided (name, presence, truly present); per present target the Dice of each path."""

    views: list[tuple[str, dict[str, np.ndarray], np.ndarray]] = field(default_factory=list)
    questions: list[tuple[str, float, bool]] = field(default_factory=list)
    paths: list[tuple[str, dict[str, float]]] = field(default_factory=list)


def ask(predictor, store: str | Path, split: str = "val", per_dataset: int | None = None,
        progress: bool = False, views: tuple[str, ...] = VIEWS, paths: bool = True) -> Answers:
    """Ask every target of every record of `split` (at most `per_dataset` per dataset, by a fixed hash of the
    record id) with the folder's rules off, keeping what the choices need: the logits of each of `views`
    (`rcmed.tta.VIEWS`; "" the image alone) and, with `paths`, each mask path's Dice."""
    from tqdm import tqdm

    records = list(iter_records(store, split=split))
    if per_dataset is not None:
        records = _per_dataset(records, per_dataset)
    predictor.rules = PostprocessRules()
    with_paths = paths and predictor.model.config.pretrained_vision
    out = Answers()
    for rec in tqdm(records, desc="postprocess", unit="rec", disable=not progress):
        sample = read_sample(store, rec)
        predictor.set_image(record_image(rec, sample))
        for name, true in record_truths(rec, sample).items():
            prompt = f"Segment the {name}."
            if predictor.read(prompt, rec.modality).refused:
                continue  # refused by rule: the model never decides it
            present = true is not None and bool(true.any())
            got = {v: predictor.predict(prompt, flips=tuple(v)).targets for v in views} if present else \
                {"": predictor.predict(prompt, flips=()).targets}
            first = got[""][0] if got[""] else None
            out.questions.append((name, first.presence if first is not None else 0.0, present))
            if not present:
                continue
            out.views.append((name, {v: (t[0].logits if t and t[0].logits is not None else np.full(true.shape, MISSED))
                                     for v, t in got.items()}, true))
            if with_paths:
                scores = {}
                for path in MASK_PATHS:
                    t = predictor.predict(prompt, flips=(), mask_path=path).targets
                    scores[path] = dice(t[0].mask, true) if t and t[0].mask is not None else 0.0
                out.paths.append((name, scores))
    return out


def determine(answers: Answers) -> PostprocessRules:
    """The rules (with their evidence) chosen on `answers`, in the order of the module's docstring."""
    flips, flip_evidence = choose_flips([(n, {v: x > 0 for v, x in p.items()}, t) for n, p, t in answers.views])
    logits = [(n, p["".join(flips.get(target_key(n), []))], t) for n, p, t in answers.views]
    cuts, cut_evidence = choose_thresholds(logits)
    pairs = [(n, x > cuts.get(target_key(n), 0.0), t) for n, x, t in logits]
    rules = choose_rules([(n, p, t) for n, p, t in pairs if p.any()])  # a missed target says nothing about the rule
    rules.flips, rules.flip_evidence = flips, flip_evidence
    rules.thresholds, rules.threshold_evidence = cuts, cut_evidence
    rules.presence_cuts, rules.presence_evidence = choose_presence_cuts(answers.questions)
    if answers.paths:
        rules.mask_paths, rules.mask_path_evidence = choose_mask_paths(answers.paths)
    return rules


def determine_postprocessing(model: str | Path, store: str | Path, out: str | Path | None = None, split: str = "val",
                             per_dataset: int | None = None, progress: bool = False) -> tuple[PostprocessRules, Path]:
    """Choose the rules of the model folder `model` on `store`'s `split` and write `postprocess.json` into `out`
    (default: the model folder, replacing its rules). Returns the rules and the file written."""
    from rcmed.predictor import Predictor

    predictor = Predictor.from_pretrained(model)
    rules = determine(ask(predictor, store, split, per_dataset, progress))
    return rules, rules.save(Path(out) if out is not None else Path(model))
