"""Flip test-time augmentation (TTA), per target and chosen on validation, as nnU-Net mirrors.

A target's mask logits are averaged over the image as given and its mirror images ("h": left-right,
"v": top-bottom), each mirror's logits mirrored back in source pixels. Averaging cancels part of the
errors that depend on where a structure sits in the frame; on the default model's validation phantoms
it lifted X-ray nodules and polyps. It is not safe everywhere: a model that learned "left lung" as
"the lung on the image's right" answers with the other lung on a left-right mirror, and an organ whose
shape the model knows upright may be drawn worse upside down. So:

- names that say a side never get the mirror that swaps it (`allowed`): "left"/"right" forbid "h";
  "upper"/"lower", "superior"/"inferior", "anterior"/"posterior", "top"/"bottom" forbid "v";
- which mirrors a target gets is measured (`choose_flips`): the combination of views that raises the
  target's mean validation Dice most, by at least `min_gain` over at least `min_cases` cases, and none
  otherwise. The model folder carries the outcome in `postprocess.json` (`PostprocessRules.flips`).

Written here rather than taken from MONAI's `TestTimeAugmentation`, which inverts random transforms of a
dictionary pipeline and votes on the outputs: we need the deterministic mirrors of one image, averaged
in logit space inside a predictor that has already encoded the image as given.
"""

from __future__ import annotations

import re
from collections import defaultdict

import numpy as np
import torch

from rcmed.eval.metrics import dice
from rcmed.vocabulary import target_key

VIEWS = ("", "h", "v", "hv")  # in `choose_flips`: the image alone, plus h, plus v, plus both mirrors
_AXIS = {"h": -1, "v": -2}  # the axis of (..., H, W) logits each mirror reverses
_SIDE = {"h": re.compile(r"\b(left|right)\b"),
         "v": re.compile(r"\b(upper|lower|superior|inferior|anterior|posterior|top|bottom)\b")}


def allowed(name: str, flips: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The mirrors of `flips` that keep the meaning of target `name` (a named side never swaps)."""
    key = name.lower()
    out = []
    for f in flips:
        if f not in _AXIS:
            raise ValueError(f"unknown flip {f!r}; use 'h' (left-right) or 'v' (top-bottom)")
        if not _SIDE[f].search(key) and f not in out:
            out.append(f)
    return tuple(out)


def flip_image(image: np.ndarray, flip: str) -> np.ndarray:
    """An (H, W) or (H, W, C) image mirrored by `flip` ("h" or "v")."""
    axis = 1 if flip == "h" else 0
    return np.ascontiguousarray(np.flip(image, axis=axis))


def unflip(logits: torch.Tensor, flip: str) -> torch.Tensor:
    """(..., H, W) logits of a mirrored image -> the same logits in the image's own orientation."""
    return torch.flip(logits, dims=(_AXIS[flip],))


def choose_flips(cases: list[tuple[str, dict[str, np.ndarray], np.ndarray]], min_gain: float = 0.005,
                 min_cases: int = 3) -> tuple[dict[str, list[str]], dict[str, dict[str, float]]]:
    """From validation (target name, {view: predicted mask}, true mask) triples of present targets,
    where a view is one of `VIEWS` (the mask from logits averaged over the image and those mirrors),
    the mirrors for each name: the allowed view of highest mean Dice if it beats the image alone by
    `min_gain` over `min_cases` cases or more. Returns ({name: flips}, {name: evidence})."""

    scores: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for name, views, true in cases:
        if "" not in views:
            raise ValueError(f"{name}: no prediction on the image as given")
        key = target_key(name)
        for view, pred in views.items():
            if view not in VIEWS:
                raise ValueError(f"{name}: unknown view {view!r}; views are {VIEWS}")
            if pred.shape != true.shape:
                raise ValueError(f"{name}: prediction {pred.shape} and truth {true.shape} differ in shape")
            scores[key][view].append(dice(pred, true))
    chosen: dict[str, list[str]] = {}
    evidence: dict[str, dict[str, float]] = {}
    for key in sorted(scores):
        by_view = {v: float(np.mean(s)) for v, s in scores[key].items()}
        n = len(scores[key][""])
        evidence[key] = {"cases": n, **{f"dice_{v or 'image'}": round(d, 4) for v, d in by_view.items()}}
        ok = [v for v in by_view if v and allowed(key, v) == tuple(v) and len(scores[key][v]) == n]
        if n < min_cases or not ok:
            continue
        best = max(ok, key=lambda v: (by_view[v], -len(v)))  # a tie goes to fewer mirrors (cheaper)
        if by_view[best] - by_view[""] >= min_gain:
            chosen[key] = list(best)
    return chosen, evidence
