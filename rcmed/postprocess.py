"""Mask post-processing chosen on validation data, as nnU-Net does: for each target name, keep only
the largest connected component, or drop the specks (components under `SPECK_FRACTION` of the
largest), when (and only when) that raised mean Dice on validation cases.

A single structure (a polyp, a lung, the liver) predicted with a few stray specks loses Dice and,
worse, gets a box that spans the specks; a many-part target (nuclei, vessels, scattered lesions)
must keep its parts, and a paired or multi-part one (kidneys, a tumour with satellites) keeps its
real parts but not the specks. Which is which is measured, not assumed: `choose_rules` compares
Dice with and without each rule on (prediction, truth) pairs of cases the model was not trained
on, and the model folder carries the outcome in `postprocess.json`, read by
`Predictor.from_pretrained`. The speck rule is ours, not nnU-Net's: on the default model's
validation phantoms it helped kidneys and tumours, where keeping only the largest part cost Dice.

The mask threshold is chosen the same way (`choose_thresholds`): a mask is the pixels whose mask
logit (the mean over the averaged mirrors) exceeds the target's threshold, 0 (probability 0.5) unless
another value on `THRESHOLDS` raised the target's mean validation Dice. A model that outlines a
target into a bright neighbour with weak logits, or draws it too thin, is corrected per target,
not for all. nnU-Net has no such step (its softmax argmax is its cut); MedSAM and SAM cut at 0.

A target asked on more than one modality (nuclei in fluorescence microscopy and in H&E pathology) can
want other rules on each: a cut that suits bright nuclei on black may paint the tissue around dark
nuclei on pink. Its rules are then chosen per modality, under the key `rule_key(name, modality)`
("nuclei@pathology"), and `PostprocessRules.for_modality` gives the rules an image of that modality uses.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from rcmed.eval.metrics import dice
from rcmed.io.image import Modality
from rcmed.tta import allowed
from rcmed.vocabulary import target_key

FILE = "postprocess.json"
SPECK_FRACTION = 0.1  # a component under this share of the largest component's size is a speck
THRESHOLDS = tuple(np.arange(-3.0, 6.01, 0.5))  # candidate mask-logit cuts (sigmoid 0.05 .. 0.998)
# How a mask is drawn for a target named in words: "query": the language model's <seg> state as a query
# into our fine-tuned decoder; "box": the box our decoder predicts from that query, given as a box prompt
# to LiteMedSAM's own decoder (as pretrained on about 1.5 M real medical masks); "both": the query and
# that box together into our decoder; "refine": the query's mask (logit 0), one box per connected part of it
# (specks left out), each into LiteMedSAM's own decoder, the masks joined: our words find the parts,
# LiteMedSAM draws their edges (as it does from a true box, `rcmed.eval.baselines.LiteMedSAMComponentBoxes`).
MASK_PATHS = ("query", "box", "both", "refine")
MODALITY_SEP = "@"  # "nuclei@pathology": the rules of a target chosen on images of one modality


def rule_key(name: str, modality: str | None = None) -> str:
    """The key of target `name`'s rules: its `target_key`, or with `modality` the key of the rules chosen for
    that modality alone ("nuclei@pathology")."""
    key = target_key(name)
    return f"{key}{MODALITY_SEP}{target_key(modality)}" if modality else key


def base_name(key: str) -> str:
    """The target name of a rule key ("nuclei@pathology" -> "nuclei")."""
    return key.split(MODALITY_SEP, 1)[0]


def keep_largest(mask: np.ndarray) -> np.ndarray:
    """The largest connected component of a boolean mask (2-D or 3-D, face connectivity); empty stays empty."""
    labels, n = ndi.label(mask)
    if n <= 1:
        return mask.astype(bool, copy=True)
    sizes = np.bincount(labels.ravel())[1:]
    return labels == (int(np.argmax(sizes)) + 1)


def drop_specks(mask: np.ndarray, fraction: float = SPECK_FRACTION) -> np.ndarray:
    """The mask without components smaller than `fraction` of its largest one (face connectivity)."""
    labels, n = ndi.label(mask)
    if n <= 1:
        return mask.astype(bool, copy=True)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    keep = sizes >= fraction * sizes.max()
    keep[0] = False
    return keep[labels]


@dataclass
class PostprocessRules:
    """`keep_largest`: target names (lower case) reduced to their largest component; `drop_specks`:
    names whose components under `SPECK_FRACTION` of the largest are removed. `flips`: per name, the
    mirrors whose logits are averaged with the image's (`rcmed.tta`; applied before the other rules).
    `evidence`: per name, the validation cases where the target was found and their mean Dice without
    and with each component rule (on the masks of the chosen mirrors); `flip_evidence`: per name, all
    validation cases of the target (a miss counts 0) and their mean Dice per view. `thresholds`: per
    name, the mask-logit cut when it is not 0 (applied after the mirrors, before the component
    rules); `threshold_evidence`: per name, mean Dice at 0 and at the best cut. So every choice can
    be audited."""

    keep_largest: list[str] = field(default_factory=list)
    drop_specks: list[str] = field(default_factory=list)
    flips: dict[str, list[str]] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    evidence: dict[str, dict[str, float]] = field(default_factory=dict)
    flip_evidence: dict[str, dict[str, float]] = field(default_factory=dict)
    threshold_evidence: dict[str, dict[str, float]] = field(default_factory=dict)
    mask_paths: dict[str, str] = field(default_factory=dict)
    mask_path_evidence: dict[str, dict[str, float]] = field(default_factory=dict)
    presence_cuts: dict[str, float] = field(default_factory=dict)
    presence_evidence: dict[str, dict[str, float]] = field(default_factory=dict)

    def for_modality(self, modality: str | None) -> PostprocessRules:
        """The rules an image of `modality` uses: a target's general rules, with those chosen for that modality
        alone ("nuclei@pathology") in their place; rules chosen for other modalities are left out. The evidence
        stays whole, for the audit."""
        mine = MODALITY_SEP + target_key(modality) if modality else None

        def own(key: str) -> bool:
            return mine is not None and key.endswith(mine)

        def pick(table: dict) -> dict:
            return {**{k: v for k, v in table.items() if MODALITY_SEP not in k},
                    **{base_name(k): v for k, v in table.items() if own(k)}}

        def names(rule: list[str]) -> list[str]:  # a component rule for this modality; none where its own table chose none
            split = {base_name(k) for k in self.evidence if own(k)}
            return sorted({*(k for k in rule if MODALITY_SEP not in k and k not in split),
                           *(base_name(k) for k in rule if own(k))})

        return PostprocessRules(
            keep_largest=names(self.keep_largest), drop_specks=names(self.drop_specks), flips=pick(self.flips),
            thresholds=pick(self.thresholds), evidence=self.evidence, flip_evidence=self.flip_evidence,
            threshold_evidence=self.threshold_evidence, mask_paths=pick(self.mask_paths),
            mask_path_evidence=self.mask_path_evidence, presence_cuts=pick(self.presence_cuts),
            presence_evidence=self.presence_evidence)

    def presence_for(self, name: str, default: float = 0.5) -> float:
        """The presence probability at or above which target `name` is called present (`default` unless
        validation chose another cut for it)."""
        return float(self.presence_cuts.get(target_key(name), default))

    def mask_path_for(self, name: str) -> str:
        """How target `name`'s mask is drawn from words (`MASK_PATHS`); "query" unless validation chose another."""
        return self.mask_paths.get(target_key(name), "query")

    def flips_for(self, name: str) -> tuple[str, ...]:
        """The mirrors to average for target `name` (never one that swaps a side the name says)."""
        return allowed(name, self.flips.get(target_key(name), ()))

    def threshold_for(self, name: str) -> float:
        """The mask-logit cut for target `name`: a pixel is in the mask when its logit is above it."""
        return float(self.thresholds.get(target_key(name), 0.0))

    def apply(self, name: str, mask: np.ndarray) -> np.ndarray:
        key = target_key(name)
        if key in self.keep_largest:
            return keep_largest(mask)
        return drop_specks(mask) if key in self.drop_specks else mask

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, folder: str | Path) -> PostprocessRules:
        """The rules of a model folder; none (masks as predicted) when it has no `postprocess.json`."""
        path = Path(folder) / FILE
        if not path.is_file():
            return cls()
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            flips = {target_key(str(n)): [str(f) for f in v] for n, v in dict(data.get("flips", {})).items()}
            for name, v in flips.items():
                allowed(name, v)  # an unknown mirror is an error now, not at the first prediction
            cuts = {target_key(str(n)): float(v) for n, v in dict(data.get("thresholds", {})).items()}
            bad = [n for n, v in cuts.items() if not -30.0 <= v <= 30.0]  # (also NaN) a cut no logit map could mean
            if bad:
                raise ValueError(f"mask threshold of {bad[0]!r} is {cuts[bad[0]]}, not a logit in [-30, 30]")
            pcuts = {target_key(str(n)): float(v) for n, v in dict(data.get("presence_cuts", {})).items()}
            off = [n for n, v in pcuts.items() if not 0.0 < v < 1.0]
            if off:
                raise ValueError(f"presence cut of {off[0]!r} is {pcuts[off[0]]}, not a probability in (0, 1)")
            paths = {target_key(str(n)): str(v) for n, v in dict(data.get("mask_paths", {})).items()}
            odd = [n for n, v in paths.items() if v not in MASK_PATHS]
            if odd:
                raise ValueError(f"mask path of {odd[0]!r} is {paths[odd[0]]!r}, not one of {MASK_PATHS}")
            known = {m.value for m in Modality}
            for key in (*flips, *cuts, *pcuts, *paths, *data.get("keep_largest", []), *data.get("drop_specks", [])):
                if MODALITY_SEP in str(key) and str(key).split(MODALITY_SEP, 1)[1] not in known:
                    raise ValueError(f"rule key {key!r} names no modality RCMed knows ({', '.join(sorted(known))})")
        except (ValueError, TypeError) as err:
            raise ValueError(f"{path}: unreadable post-processing rules ({err})") from None
        return cls(keep_largest=[str(n) for n in data.get("keep_largest", [])],
                   drop_specks=[str(n) for n in data.get("drop_specks", [])], flips=flips, thresholds=cuts,
                   evidence=dict(data.get("evidence", {})), flip_evidence=dict(data.get("flip_evidence", {})),
                   threshold_evidence=dict(data.get("threshold_evidence", {})), mask_paths=paths,
                   mask_path_evidence=dict(data.get("mask_path_evidence", {})), presence_cuts=pcuts,
                   presence_evidence=dict(data.get("presence_evidence", {})))


def holds_in_each_fold(gains: list[float] | np.ndarray, folds: list[int] | np.ndarray | None) -> bool:
    """Whether a rule's per-case Dice gains over the default (`gains`) are above 0 on average in every fold of
    `folds` (one fold label per case, e.g. a hash of the record id; None: no check). A rule chosen as the best of
    several on the same cases looks better there than it is (it won a race on noise); one whose gain also holds in
    each half of the cases on its own is less likely to be chasing a few of them."""
    if folds is None:
        return True
    gains, folds = np.asarray(gains, dtype=float), np.asarray(folds)
    return all(gains[folds == f].mean() > 0 for f in np.unique(folds)) and len(np.unique(folds)) > 1


def choose_rules(pairs: list[tuple[str, np.ndarray, np.ndarray]], min_gain: float = 0.005,
                 min_cases: int = 3, folds: list[int] | None = None) -> PostprocessRules:
    """Rules from validation (name, predicted mask, true mask) triples of present targets: of keeping
    the largest component and dropping specks, the rule that raises a name's mean Dice most, if by
    at least `min_gain` over at least `min_cases` cases (fewer cases: no rule, the evidence is too
    thin) and, given `folds` (one label per triple), its gain holds in every fold (`holds_in_each_fold`);
    on a tie the gentler speck rule, which keeps every real part."""
    by_name: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    fold_of: dict[str, list[int]] = defaultdict(list)
    for k, (name, pred, true) in enumerate(pairs):
        if pred.shape != true.shape:
            raise ValueError(f"{name}: prediction {pred.shape} and truth {true.shape} differ in shape")
        by_name[target_key(name)].append((dice(pred, true), dice(keep_largest(pred), true),
                                          dice(drop_specks(pred), true)))
        fold_of[target_key(name)].append(folds[k] if folds is not None else 0)
    rules = PostprocessRules()
    for name in sorted(by_name):
        scores = np.array(by_name[name])
        raw, largest, specks = (float(v) for v in scores.mean(axis=0))
        rules.evidence[name] = {"cases": len(scores), "dice": round(raw, 4), "dice_largest": round(largest, 4),
                                "dice_no_specks": round(specks, 4)}
        if len(scores) < min_cases or max(largest, specks) - raw < min_gain:
            continue
        column = 2 if specks >= largest else 1
        if not holds_in_each_fold(scores[:, column] - scores[:, 0], fold_of[name] if folds is not None else None):
            rules.evidence[name]["not_in_every_fold"] = True
            continue
        (rules.drop_specks if column == 2 else rules.keep_largest).append(name)
    return rules


def choose_thresholds(cases: list[tuple[str, np.ndarray, np.ndarray]], min_gain: float = 0.005, min_cases: int = 3,
                      grid: tuple[float, ...] = THRESHOLDS,
                      folds: list[int] | None = None) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """From validation (name, mask logits, true mask) triples of present targets (a target the model
    missed: logits of -inf, empty at every cut), the mask-logit cut of each name: the value of `grid`
    with the highest mean Dice, if it beats 0 by `min_gain` over `min_cases` cases or more and, given `folds`
    (one label per triple), its gain holds in every fold (`holds_in_each_fold`); of equal scores, the cut
    nearest 0. Returns ({name: cut} for names whose cut is not 0, {name: evidence})."""
    by_name: dict[str, list[list[float]]] = defaultdict(list)
    fold_of: dict[str, list[int]] = defaultdict(list)
    cuts = sorted({0.0, *(float(g) for g in grid)}, key=lambda c: (abs(c), c))  # nearest 0 first: max() keeps the first best
    for k, (name, logits, true) in enumerate(cases):
        if logits.shape != true.shape:
            raise ValueError(f"{name}: logits {logits.shape} and truth {true.shape} differ in shape")
        by_name[target_key(name)].append([dice(logits > c, true) for c in cuts])
        fold_of[target_key(name)].append(folds[k] if folds is not None else 0)
    chosen: dict[str, float] = {}
    evidence: dict[str, dict[str, float]] = {}
    for name in sorted(by_name):
        means = np.mean(by_name[name], axis=0)
        best = max(range(len(cuts)), key=lambda i: means[i])
        evidence[name] = {"cases": len(by_name[name]), "dice_at_0": round(float(means[0]), 4),
                          "best_cut": cuts[best], "dice_at_best": round(float(means[best]), 4)}
        if len(by_name[name]) >= min_cases and means[best] - means[0] >= min_gain:
            scores = np.array(by_name[name])
            if holds_in_each_fold(scores[:, best] - scores[:, 0], fold_of[name] if folds is not None else None):
                chosen[name] = cuts[best]
            else:
                evidence[name]["not_in_every_fold"] = True
    return chosen, evidence


def choose_mask_paths(cases: list[tuple[str, dict[str, float]]], min_gain: float = 0.01,
                      min_cases: int = 3, folds: list[int] | None = None) -> tuple[dict[str, str], dict[str, dict[str, float]]]:
    """From validation (name, {mask path: Dice}) pairs of present targets (each path scored on the same
    case), the mask path of each name: the one of highest mean Dice if it beats "query" by `min_gain`
    over `min_cases` cases or more and, given `folds` (one label per pair), its gain holds in every fold
    (`holds_in_each_fold`). Returns ({name: path} for names not on "query", {name: evidence})."""
    by_name: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    fold_of: dict[str, list[int]] = defaultdict(list)
    for k, (name, scores) in enumerate(cases):
        for path, d in scores.items():
            if path not in MASK_PATHS:
                raise ValueError(f"unknown mask path {path!r}")
            by_name[target_key(name)][path].append(float(d))
        fold_of[target_key(name)].append(folds[k] if folds is not None else 0)
    chosen: dict[str, str] = {}
    evidence: dict[str, dict[str, float]] = {}
    for name, scores in sorted(by_name.items()):
        means = {p: float(np.mean(v)) for p, v in scores.items()}
        n = len(scores.get("query", []))
        evidence[name] = {"cases": n, **{f"dice_{p}": round(v, 4) for p, v in means.items()}}
        best = max(means, key=lambda p: (means[p], p == "query"))
        if best != "query" and n >= min_cases and means[best] - means.get("query", 0.0) >= min_gain:
            gains = np.subtract(scores[best], scores["query"])
            if holds_in_each_fold(gains, fold_of[name] if folds is not None else None):
                chosen[name] = best
            else:
                evidence[name]["not_in_every_fold"] = True
    return chosen, evidence


# above 0.5 for a head that leans "present" on a target's absent images, below for one that is shy on its present ones
PRESENCE_CUTS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.3, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001)


def _balanced(pos: list[float], neg: list[float], cut: float) -> float:
    """Mean of the accuracies on present (p >= cut) and absent (p < cut) questions."""
    a = np.mean([p >= cut for p in pos]) if pos else 1.0
    b = np.mean([p < cut for p in neg]) if neg else 1.0
    return float(a + b) / 2


def choose_presence_cuts(questions: list[tuple[str, float, bool]], min_gain: float = 0.05, min_each: int = 3,
                         grid: tuple[float, ...] = PRESENCE_CUTS) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """From validation (name, presence probability, truly present) questions, the presence cut of each name:
    the value of `grid` with the best balanced accuracy (mean of the accuracies on present and on absent
    questions), if it beats 0.5 by `min_gain`, with at least `min_each` questions of each kind; of equal
    scores 0.5 if it is among them, else the middle one by value (the widest margin). A presence head that ranks a target's images right but is miscalibrated on
    a new kind of image (trained on phantoms, asked on real scans) is corrected per target, on evidence."""
    by_name: dict[str, list[tuple[float, bool]]] = defaultdict(list)
    for name, p, truth in questions:
        by_name[target_key(name)].append((float(p), bool(truth)))
    cuts = sorted({0.5, *grid}, key=lambda c: (abs(np.log(c / 0.5)), -c))  # nearest 0.5 first
    chosen: dict[str, float] = {}
    evidence: dict[str, dict[str, float]] = {}
    for name, qs in sorted(by_name.items()):
        pos = [p for p, t in qs if t]
        neg = [p for p, t in qs if not t]

        scores = [_balanced(pos, neg, c) for c in cuts]
        top = sorted(i for i, v in enumerate(scores) if v == max(scores))
        # of the cuts tied at the best score, the middle one (by value): the widest margin on both sides
        best = top[0] if 0 in top else sorted(top, key=lambda i: cuts[i])[len(top) // 2]
        evidence[name] = {"present_questions": len(pos), "absent_questions": len(neg), "balanced_at_0.5": round(scores[0], 4),
                          "best_cut": cuts[best], "balanced_at_best": round(scores[best], 4)}
        if len(pos) >= min_each and len(neg) >= min_each and scores[best] - scores[0] >= min_gain:
            chosen[name] = cuts[best]
    return chosen, evidence
