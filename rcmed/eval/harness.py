"""`rcmed eval`: run a model (and baselines) over a triplet store split, stream per-case results,
and aggregate per task, modality and scale with confidence intervals.

Each record (a 2-D image or one slice of a case) is asked "Segment the {target}." for every
target it names, present or absent. Rows are written to `cases.jsonl` as they are computed
(memory stays flat in the number of records). Aggregation is per case first: the slices of one
case are pooled into one mask pair per target before Dice is computed (volumetric Dice over the
slices the store holds), then cases are averaged; confidence intervals are 95% bootstrap over
cases. The reference methods (`--baseline`, `rcmed.eval.baselines`) and the other models (`--model`) are
run on the same records.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rcmed.data.store import iter_records, read_sample
from rcmed.errors import RCMedInputError
from rcmed.eval.baselines import LiteMedSAMBox, LiteMedSAMComponentBoxes, OtsuWatershed, UNetBaseline
from rcmed.eval.metrics import aji, box_iou, counting_error, description_facts, dice, presence_metrics, text_metrics
from rcmed.io.image import MedicalImage, affine_from_spacing, parse_modality
from rcmed.io.normalize import normalize
from rcmed.postprocess import MASK_PATHS


@dataclass
class EvalReport:
    rows: int
    cases: int
    tables: dict[str, list[dict[str, object]]]
    out: Path


_LESION_WORDS = ("lesion", "tumour", "tumor", "nodule", "polyp", "cyst", "mass", "metasta", "pneumothorax", "oedema", "edema")


# the closed loop's ablations: Predictor.predict arguments of each (see RCMedModel._rounds)
ABLATIONS: dict[str, dict[str, object]] = {"no-loop": {"rounds": 1}, "loop": {"rounds": 2},
                                           "loop-no-region": {"rounds": 2, "loop": "no-region"},
                                           "loop-no-mask-prompt": {"rounds": 2, "loop": "no-mask-prompt"}}

def record_image(rec, sample) -> MedicalImage:
    """A store record's 2-D image as the predictor takes it: its pixels, modality and spacing (mm, when known)."""
    return MedicalImage(array=sample.image, affine=affine_from_spacing(tuple(rec.spacing) if rec.spacing else None, 2),
                        modality=parse_modality(rec.modality), rgb=sample.image.ndim == 3, spacing_known=rec.spacing is not None)


def record_truths(rec, sample) -> dict[str, np.ndarray | None]:
    """Every name a store record answers for, in order, with its true mask ((H, W) bool, source pixels; may be
    empty) or None where the record says the name is absent: its targets, its instance target (the union of the
    instances), then its absent names. A name listed both ways keeps its mask. What every scoring asks."""
    truths: dict[str, np.ndarray | None] = {n: np.asarray(sample.masks[k], bool) for k, n in enumerate(rec.targets)}
    if sample.instances is not None and rec.instance_target:
        truths[rec.instance_target] = sample.instances > 0
    for n in rec.absent:
        truths.setdefault(n, None)
    return truths


def _scale(name: str, instance: bool) -> str:
    """organ, lesion or cell: instances are cells; lesion words name lesions; the rest are organs
    and anatomical structures."""
    if instance:
        return "cell"
    return "lesion" if any(w in name.lower() for w in _LESION_WORDS) else "organ"


def training_cases(model_folder: Path) -> set[str]:
    """Case ids the model was trained on: listed in the model folder's `training_cases.json`
    (shipped models carry it), or read from the training stores its run folder records."""
    cases: set[str] = set()
    listed = model_folder / "training_cases.json"
    if listed.is_file():
        cases |= set(json.loads(listed.read_text()))
    run_cfg = model_folder.parent / "train.json"
    if not run_cfg.is_file():
        return cases
    cfg = json.loads(run_cfg.read_text())
    for store in cfg.get("data", []):
        p = Path(store) if Path(store).is_absolute() else (run_cfg.parent.parent / store)
        if not (p / "store.json").is_file():
            p = Path(store)
        if (p / "store.json").is_file():
            cases |= {r.case_id for r in iter_records(p, split=cfg.get("split"))}
    return cases


def evaluate(model: str | Path | list[str | Path], store: str | Path, out: str | Path, split: str | None = "test",
             baselines: tuple[str, ...] = (), limit: int | None = None, progress: bool = True,
             ablations: tuple[str, ...] = (), unet_budget_s: float = 60.0, describe: bool = True,
             per_dataset: int | None = None, unet_size: int = 128, mask_paths: bool = False,
             unet_weights: str | Path | None = None, unet_max_steps: int | None = None) -> EvalReport:
    """Evaluate one model folder, or several side by side (`--compare`), on `store`'s `split`;
    write cases.jsonl, tables and plots to `out`. The first model is "rcmed" in the tables, the
    others are named by their folder. Ablations of the first model (`ABLATIONS`): "no-loop" (one round), "loop"
    (two rounds), "loop-no-region" (two rounds, the found region not fed back to the language model),
    "loop-no-mask-prompt" (two rounds, the previous mask not given to the decoder).
    `describe`: also paint each record's first present target and ask the model what the coloured
    region is; its answer is checked against the facts the description engine measures.
    `mask_paths`: also score the first model's other ways from words to a mask (`rcmed.postprocess.MASK_PATHS`:
    "rcmed-box", its predicted box into LiteMedSAM's own decoder; "rcmed-both", box and text query into ours;
    "rcmed-refine", a box per part of its query mask into LiteMedSAM's decoder)
    on the same answers. The U-Net trains `unet_budget_s` seconds or `unet_max_steps` steps, whichever ends first
    (`UNetBaseline`), or loads `unet_weights` trained so. `per_dataset`: evaluate at most that many records of each dataset (record `source`), drawn by a
    fixed hash of the record id (the same records on every run and machine)."""
    from tqdm import tqdm

    from rcmed.predictor import Predictor

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model_dirs = [Path(m) for m in (model if isinstance(model, list) else [model])]
    records = _select_records(store, split, limit, per_dataset)
    _refuse_leaks(store, model_dirs, records)
    for a in ablations:
        if a not in ABLATIONS:
            raise RCMedInputError("--ablation", f"unknown ablation {a!r}; use one of {sorted(ABLATIONS)} (to compare training "
                                                "choices, train the other model and pass it with --model)")
    runners = _baselines(baselines, store, unet_budget_s, unet_size, unet_weights, unet_max_steps)
    asker = _Asker(Predictor.from_pretrained(model_dirs[0]),
                   {_method_name(m, i): Predictor.from_pretrained(m) for i, m in enumerate(model_dirs[1:], start=1)},
                   runners, runners.pop("unet", None), ablations, mask_paths)
    tally = _Tally()
    with open(out / "cases.jsonl", "w", encoding="utf-8") as fh:
        for rec in tqdm(records, desc="eval", unit="rec", disable=not progress):
            for row in asker.record(store, rec, tally, describe):
                fh.write(json.dumps(row) + "\n")
                tally.rows += 1
    tables = _aggregate(tally.pooled, tally.meta, tally.presence_p, tally.presence_y, tally.presence_called)
    tables["datasets"] = _dataset_table(tally.pooled, tally.sources, out / "cases.jsonl")
    tables["descriptions"] = _description_table(tally.described)
    tables["registry"] = _registry_table(tally.registry)
    tables["recognition"] = _modality_table(tally.recognised)
    _write_tables(out, tables)
    _plot(out, tables)
    return EvalReport(rows=tally.rows, cases=len({r.case_id for r in records}), tables=tables, out=out)


def _select_records(store: str | Path, split: str | None, limit: int | None, per_dataset: int | None) -> list:
    """The records to score: the split's, the first `limit`, at most `per_dataset` of each dataset; never none."""
    records = list(iter_records(store, split=split)) if limit is None else []
    if limit is not None:
        for r in iter_records(store, split=split):
            records.append(r)
            if len(records) >= limit:
                break
    if per_dataset is not None:
        records = _per_dataset(records, per_dataset)
    if not records:
        raise RCMedInputError(str(store), f"no records in split {split!r}; split the store by case first (rcmed data split)")
    return records


def _refuse_leaks(store: str | Path, model_dirs: list[Path], records: list) -> None:
    """Refuse to score a case any of the models was trained on."""
    leaked = set().union(*(training_cases(m) for m in model_dirs)) & {r.case_id for r in records}
    if leaked:
        raise RCMedInputError(str(store), f"{len(leaked)} evaluation case(s) were used for training (e.g. {sorted(leaked)[0]!r}); "
                                          "evaluate on cases the model never saw")


def _baselines(names: tuple[str, ...], store, unet_budget_s: float, unet_size: int, unet_weights,
               unet_max_steps: int | None = None) -> dict[str, object]:
    """The reference methods asked for (`rcmed.eval.baselines`), by name; the U-Net trains (or loads) here."""
    base = {"litemedsam-box": LiteMedSAMBox, "litemedsam-cc-box": LiteMedSAMComponentBoxes, "otsu-watershed": OtsuWatershed,
            "unet": lambda: UNetBaseline(store, budget_s=unet_budget_s, size=unet_size, weights=unet_weights,
                                         max_steps=unet_max_steps)}
    runners = {}
    for b in names:
        if b not in base:
            raise RCMedInputError("--baseline", f"unknown baseline {b!r}; use one of {sorted(base)}")
        runners[b] = base[b]()
    return runners


@dataclass
class _Tally:
    """What the scoring gathers over the records, for the tables."""

    # per (method, case, modality|target): pooled voxel counts [intersection, predicted, true] for case-level Dice
    pooled: dict[tuple[str, str, str], list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0, 0]))
    meta: dict[tuple[str, str], dict[str, object]] = field(default_factory=dict)  # (modality, target) -> scale, region
    presence_p: list[float] = field(default_factory=list)
    presence_y: list[int] = field(default_factory=list)
    presence_called: list[bool] = field(default_factory=list)
    sources: dict[tuple[str, str], str] = field(default_factory=dict)  # (case, modality|target) -> dataset
    # (modality, region, target, task) -> scores
    registry: dict[tuple[str, str, str, str], list[float]] = field(default_factory=lambda: defaultdict(list))
    described: dict[str, list[dict[str, object]]] = field(default_factory=lambda: defaultdict(list))  # modality -> rows
    recognised: list[dict[str, object]] = field(default_factory=list)  # per record: true and recognised modality
    rows: int = 0


@dataclass
class _Asker:
    """Asks one record's questions of the model (and the other models, baselines, ablations and mask paths on
    its present targets), adding to a `_Tally`; yields the rows of cases.jsonl."""

    predictor: object
    others: dict[str, object]
    runners: dict[str, object]
    unet: object | None
    ablations: tuple[str, ...]
    mask_paths: bool

    def record(self, store, rec, tally: _Tally, describe: bool):
        sample = read_sample(store, rec)
        img = record_image(rec, sample)
        self.predictor.set_image(img)
        guess = self.predictor.recognise(img)  # the modality head, as for an image sent without a modality
        if guess is not None:
            tally.recognised.append({"dataset": rec.source or rec.modality, "modality": img.modality.value,
                                     "recognised": guess[0], "confidence": guess[1]})
        for other in self.others.values():
            other.set_image(img)
        x = normalize(img)
        for name, true in record_truths(rec, sample).items():
            yield self._segment(rec, sample, x, name, true, tally)
        if describe:
            row = _describe_row(self.predictor, x, rec, sample)
            if row is not None:
                tally.registry[(rec.modality, rec.body_region, row["target"], "describe")].append(row["fact_accuracy"])
                tally.described[rec.modality].append(row)
                yield row

    def _segment(self, rec, sample, x: np.ndarray, name: str, true: np.ndarray | None, tally: _Tally) -> dict[str, object]:
        """"Segment the {name}." asked and scored: the row of cases.jsonl."""
        from rcmed.predictor import mask_box

        answer = self.predictor.predict(f"Segment the {name}.")
        got = answer.targets[0] if answer.targets else None
        p = got.presence if got is not None else 0.0
        pred = got.mask if (got is not None and got.mask is not None) else np.zeros(sample.image.shape[:2], bool)
        present = true is not None and bool(true.any())
        called = bool(got is not None and got.present)  # the model's decision (its folder may cut presence per target)
        tally.presence_p.append(p)
        tally.presence_y.append(int(present))
        tally.presence_called.append(called)
        row = {"record": rec.id, "case": rec.case_id, "source": rec.source, "modality": rec.modality,
               "body_region": rec.body_region,
               "target": name, "task": "segment", "present": present, "presence": round(p, 4), "called": called,
               "answer": answer.text,
               # answered "not trained for this" by the vocabulary (never taught, or only on other modalities)
               "refused": bool(answer.unknown or answer.off_modality),
               # did the answer warn that the image is unlike those the target was taught on (`rcmed.model.familiarity`)?
               "familiar": got.familiar if got is not None else None}
        tally.registry[(rec.modality, rec.body_region, name, "presence")].append(float(called == present))
        if not present:
            return row
        tb, pb = mask_box(true), mask_box(pred)
        row["box_iou"] = round(box_iou(pb, tb), 4) if pb is not None else 0.0
        tally.registry[(rec.modality, rec.body_region, name, "locate")].append(row["box_iou"])
        is_inst = name == rec.instance_target
        tally.meta[(rec.modality, name)] = {"scale": _scale(name, is_inst), "body_region": rec.body_region}
        row["dice"] = round(dice(pred, true), 4)
        methods = [("rcmed", pred), *self._references(x, name, true, is_inst)]
        if is_inst:
            self._instances(rec, sample, x, name, pred, row, tally)
        tally.sources[(rec.case_id, f"{rec.modality}|{name}")] = rec.source or rec.modality
        for method, m in methods:
            acc = tally.pooled[(method, rec.case_id, f"{rec.modality}|{name}")]
            acc[0] += int((m & true).sum())
            acc[1] += int(m.sum())
            acc[2] += int(true.sum())
            if method != "rcmed":
                row[f"dice_{method}"] = round(dice(m, true), 4)
        tally.registry[(rec.modality, rec.body_region, name, "segment")].append(row["dice"])
        return row

    def _references(self, x: np.ndarray, name: str, true: np.ndarray, is_inst: bool) -> list[tuple[str, np.ndarray]]:
        """(method, mask) of every reference on a present target: baselines, the U-Net, the other models, the
        model's other mask paths and its ablations."""
        prompt = f"Segment the {name}."
        methods = [(b, f(x, true)) for b, f in self.runners.items() if is_inst or not getattr(f, "instance_only", False)]
        if self.unet is not None:
            methods.append(("unet", self.unet.predict(x, name, true.shape)))
        for label, other in self.others.items():
            methods.append((label, _first_mask(other.predict(prompt), true.shape)))
        if self.mask_paths:
            for path in MASK_PATHS[1:]:
                methods.append((f"rcmed-{path}", _first_mask(self.predictor.predict(prompt, mask_path=path), true.shape)))
        for a in self.ablations:
            methods.append((f"rcmed-{a}", _first_mask(self.predictor.predict(prompt, **ABLATIONS[a]), true.shape)))
        return methods

    def _instances(self, rec, sample, x: np.ndarray, name: str, pred: np.ndarray, row: dict[str, object],
                   tally: _Tally) -> None:
        """Instance scores of a mask of many objects (nuclei): AP and F1 at IoU 0.5, AJI, the count."""
        from scipy import ndimage as ndi

        from rcmed.eval.metrics import match_instances

        pred_labels = ndi.label(pred)[0]
        matched = match_instances(pred_labels, sample.instances, 0.5)
        row["ap50"], row["f1_50"] = round(matched.ap, 4), round(matched.f1, 4)
        row["aji"] = round(aji(pred_labels, sample.instances), 4)
        n_true = int(len(np.unique(sample.instances)) - (0 in sample.instances))
        row["count"], row["count_true"] = int(pred_labels.max()), n_true
        tally.registry[(rec.modality, rec.body_region, name, "count")].append(counting_error(int(pred_labels.max()), n_true)[1])
        if "otsu-watershed" in self.runners:
            ow = self.runners["otsu-watershed"].labels(x)
            row["ap50_otsu-watershed"] = round(match_instances(ow, sample.instances, 0.5).ap, 4)


# A task passes when its score reaches this (count: relative error at most this).
PASS = {"segment": 0.5, "presence": 0.9, "locate": 0.5, "count": 0.25, "describe": 0.5}
_METRIC = {"segment": "dice", "presence": "accuracy", "locate": "box IoU", "count": "relative count error",
           "describe": "fact accuracy"}


def _modality_table(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """Modality recognition per dataset and over all records: accuracy and the most frequent wrong answer."""
    by: dict[str, list[dict[str, object]]] = defaultdict(list)
    for r in rows:
        by[str(r["dataset"])].append(r)
    out = []
    for name, group in [*sorted(by.items()), *([("all", rows)] if rows else [])]:
        wrong = [str(r["recognised"]) for r in group if r["recognised"] != r["modality"]]
        out.append({"dataset": name, "modality": group[0]["modality"] if name != "all" else "",
                    "images": len(group), "accuracy": round(1 - len(wrong) / len(group), 4),
                    "most_common_error": max(set(wrong), key=wrong.count) if wrong else ""})
    return out


def _describe_row(predictor, x: np.ndarray, rec, sample) -> dict[str, object] | None:
    """Paint the record's first present region (a target mask, else the instance class) in the
    first palette colour, ask "What is the red region?", and check the answer against the facts
    the description engine measures on the true mask (name, grid position, shape class, count)."""
    import random

    from rcmed.data.describe import describe, describe_instances, region_text
    from rcmed.overlay import PALETTE, paint

    spacing = tuple(rec.spacing) if rec.spacing else None
    if len(rec.targets):
        mask = sample.masks[0]
        facts = describe(x, [mask], [rec.targets[0]], modality=rec.modality, spacing=spacing,
                         orientation=rec.orientation).regions[0]
    elif sample.instances is not None and rec.instance_target and sample.instances.any():
        mask = sample.instances > 0
        facts = describe_instances(sample.instances, rec.instance_target, image=x, modality=rec.modality,
                                   spacing=spacing).regions[0]
    else:
        return None
    painted = paint(x, [mask])
    predictor.set_image(MedicalImage(array=painted, modality=parse_modality(rec.modality), rgb=True))
    colour = PALETTE[0][0]
    answer = predictor.predict(f"What is the {colour} region?").text
    checks = {"name": facts.name.lower() in answer.lower(), **description_facts(answer, facts)}
    # the reference is the engine's single-region text, the form the alignment stage teaches
    reference = region_text(facts, rec.modality, random.Random(0))
    return {"record": rec.id, "case": rec.case_id, "modality": rec.modality, "body_region": rec.body_region,
            "target": facts.name, "task": "describe", "answer": answer, "reference": reference,
            "facts": checks, "fact_accuracy": round(sum(checks.values()) / len(checks), 4)}


def _description_table(described: dict[str, list[dict[str, object]]]) -> list[dict[str, object]]:
    """Per modality: share of each checkable fact stated correctly, and BLEU / ROUGE-L against
    the description engine's own text for the true mask (one describe row per record)."""
    rows = []
    for mod in sorted(described):
        facts: dict[str, list[bool]] = defaultdict(list)
        for r in described[mod]:
            for k, v in r["facts"].items():  # type: ignore[union-attr]
                facts[k].append(bool(v))
        allv = [v for vs in facts.values() for v in vs]
        tm = text_metrics([r["answer"] for r in described[mod]], [r["reference"] for r in described[mod]])
        rows.append({"modality": mod, "regions": len(described[mod]),
                     **{f"{k}_acc": round(float(np.mean(facts[k])), 4) if facts.get(k) else None
                        for k in ("name", "position", "shape", "count")},
                     "fact_accuracy": round(float(np.mean(allv)), 4), "bleu": round(tm["bleu"], 2),
                     "rouge_l": round(tm["rouge_l"], 4)})
    return rows


def _registry_table(registry) -> list[dict[str, object]]:
    """The task registry: one row per (modality, body region, target, task type) with its score."""
    rows = []
    for (mod, region, target, task), vals in sorted(registry.items()):
        score = float(np.mean(vals))
        ok = score <= PASS[task] if task == "count" else score >= PASS[task]
        rows.append({"modality": mod, "body_region": region, "target": target, "task": task, "metric": _METRIC[task],
                     "n": len(vals), "score": round(score, 4), "pass": ok})
    return rows


def _per_dataset(records: list, n: int) -> list:
    """At most `n` records of each dataset, chosen by a fixed hash of their id."""
    import zlib

    ranked = sorted(records, key=lambda r: zlib.crc32(r.id.encode()))
    kept, seen = [], defaultdict(int)
    for r in ranked:
        if seen[r.source] < n:
            seen[r.source] += 1
            kept.append(r)
    order = {r.id: i for i, r in enumerate(records)}
    return sorted(kept, key=lambda r: order[r.id])


def _dataset_table(pooled, sources: dict[tuple[str, str], str], cases_path: Path) -> list[dict[str, object]]:
    """Per dataset and method: Dice over (case, target) pairs with a 95% bootstrap interval; for
    the model also presence accuracy on present and on absent questions, and, where the dataset
    has instance maps, instance F1 at IoU 0.5 and AJI averaged over images."""
    dice_vals: dict[tuple[str, str], list[float]] = defaultdict(list)
    for (method, case, task), (inter, p, t) in pooled.items():
        dice_vals[(sources.get((case, task), "?"), method)].append(2 * inter / (p + t) if (p + t) else 1.0)
    pres: dict[str, list[tuple[bool, bool]]] = defaultdict(list)
    inst: dict[str, list[tuple[float, float]]] = defaultdict(list)
    with open(cases_path, encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            if row.get("task") != "segment":
                continue
            src = row["source"] or row["modality"]
            pres[src].append((bool(row["present"]), row["called"], bool(row.get("refused"))))
            if "aji" in row:
                inst[src].append((row["f1_50"], row["aji"]))
    out = []
    for (src, method), vals in sorted(dice_vals.items()):
        lo, hi = _bootstrap_ci(vals)
        r: dict[str, object] = {"dataset": src, "method": method, "case_targets": len(vals),
                                "dice": round(float(np.mean(vals)), 4), "dice_ci_low": round(lo, 4), "dice_ci_high": round(hi, 4)}
        if method == "rcmed":
            yes = [said for truth, said, _ in pres[src] if truth]
            no = [not said for truth, said, _ in pres[src] if not truth]
            asked = [not said for truth, said, refused in pres[src] if not truth and not refused]
            r.update(present_questions=len(yes), present_accuracy=round(float(np.mean(yes)), 4) if yes else None,
                     absent_questions=len(no), absent_accuracy=round(float(np.mean(no)), 4) if no else None,
                     # the absent questions the model itself decided (targets taught on this modality)
                     absent_model_questions=len(asked),
                     absent_model_accuracy=round(float(np.mean(asked)), 4) if asked else None)
            if inst[src]:
                r.update(instance_f1_50=round(float(np.mean([f for f, _ in inst[src]])), 4),
                         aji=round(float(np.mean([a for _, a in inst[src]])), 4))
        out.append(r)
    return out


def _method_name(folder: Path, i: int) -> str:
    name = folder.parent.name if folder.name == "model" else folder.name
    return f"{name}" if name != "rcmed" else f"model-{i}"


def _first_mask(answer, shape: tuple[int, ...]) -> np.ndarray:
    t = answer.targets[0] if answer.targets else None
    return t.mask if (t is not None and t.mask is not None) else np.zeros(shape, bool)


def _bootstrap_ci(values: list[float], seed: int = 0, n: int = 1000) -> tuple[float, float]:
    if len(values) < 2:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    v = np.asarray(values)
    means = v[rng.integers(0, len(v), (n, len(v)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def _aggregate(pooled, meta, presence_p, presence_y, called) -> dict[str, list[dict[str, object]]]:
    """`called`: the model's present/absent decisions (its folder may cut presence per target)."""
    by_task: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for (method, _case, task), (inter, p, t) in pooled.items():
        by_task[(method, *task.split("|", 1))].append(2 * inter / (p + t) if (p + t) else 1.0)
    task_rows, mod_vals, scale_vals = [], defaultdict(list), defaultdict(list)
    for (method, modality, target), vals in sorted(by_task.items()):
        lo, hi = _bootstrap_ci(vals)
        m = meta.get((modality, target), {})
        task_rows.append({"method": method, "modality": modality, "body_region": m.get("body_region", ""), "target": target,
                          "task": "segment", "scale": m.get("scale", ""), "cases": len(vals), "dice": round(float(np.mean(vals)), 4),
                          "dice_ci_low": round(lo, 4), "dice_ci_high": round(hi, 4)})
        mod_vals[(method, modality)] += vals
        scale_vals[(method, m.get("scale", ""))] += vals
    def rows(groups, key):
        out = []
        for (method, k), vals in sorted(groups.items()):
            lo, hi = _bootstrap_ci(vals)
            out.append({"method": method, key: k, "case_targets": len(vals), "dice": round(float(np.mean(vals)), 4),
                        "dice_ci_low": round(lo, 4), "dice_ci_high": round(hi, 4)})
        return out
    _, auc = presence_metrics(presence_p, presence_y)
    acc = float(np.mean([c == bool(y) for c, y in zip(called, presence_y, strict=True)])) if called else float("nan")
    return {"tasks": task_rows, "modalities": rows(mod_vals, "modality"), "scales": rows(scale_vals, "scale"),
            "presence": [{"questions": len(presence_y), "absent": int(len(presence_y) - sum(presence_y)),
                          "accuracy": round(acc, 4), "auroc": round(auc, 4) if auc == auc else None,
                          "present_accuracy": _side_accuracy(called, presence_y, 1),
                          "absent_accuracy": _side_accuracy(called, presence_y, 0)}],
            "reliability": _reliability(presence_p, presence_y)}


def _side_accuracy(called: list[bool], y: list[int], side: int) -> float | None:
    """Accuracy on the questions whose truth is `side` (1: present, 0: absent); None when none."""
    hits = [c == bool(side) for c, yi in zip(called, y, strict=True) if yi == side]
    return round(float(np.mean(hits)), 4) if hits else None


def _reliability(p: list[float], y: list[int], bins: int = 10) -> list[dict[str, object]]:
    out = []
    pa, ya = np.asarray(p), np.asarray(y)
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        m = (pa >= lo) & ((pa < hi) if b < bins - 1 else (pa <= hi))
        if m.any():
            out.append({"bin": f"{lo:.1f}-{hi:.1f}", "n": int(m.sum()), "mean_predicted": round(float(pa[m].mean()), 4),
                        "fraction_present": round(float(ya[m].mean()), 4)})
    return out


def _write_tables(out: Path, tables: dict[str, list[dict[str, object]]]) -> None:
    md = ["# RCMed evaluation", "",
          "Dice is computed per case (slices of a case pooled) and averaged over cases; [low, high] is a 95% bootstrap "
          "interval over cases. Both-empty masks count as Dice 1; absent targets are scored by presence only.", ""]
    for name, rows in tables.items():
        if not rows:
            continue
        cols = list(dict.fromkeys(k for r in rows for k in r))  # rows may carry extra columns (the model's row)
        with open(out / f"{name}.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=cols)
            w.writeheader()
            w.writerows(rows)
        md += [f"## {name}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        md += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
        md.append("")
    tasks = {(r["modality"], r["target"]) for r in tables["tasks"]}
    mods = {r["modality"] for r in tables["tasks"]}
    failing = sorted(f"{r['modality']}/{r['target']}" for r in tables["tasks"] if r["method"] == "rcmed" and r["dice"] < 0.5)
    md += [f"Covered: {len(tasks)} segmentation tasks over {len(mods)} modalities; below Dice 0.5: "
           + (", ".join(failing) if failing else "none") + "."]
    reg = tables.get("registry", [])
    if reg:
        failed = [f"{r['modality']}/{r['target']}/{r['task']} ({r['metric']} {r['score']})" for r in reg if not r["pass"]]
        md += ["", f"Task registry: {len(reg)} tasks (modality, body region, target, task type) over "
               f"{len({r['modality'] for r in reg})} modalities and {len({r['task'] for r in reg})} task types; "
               f"{len(reg) - len(failed)} pass. Pass rules: "
               + ", ".join(f"{t} {_METRIC[t]} {'<=' if t == 'count' else '>='} {v}" for t, v in PASS.items())
               + ". Failing: " + ("; ".join(failed) if failed else "none") + "."]
    (out / "report.md").write_text("\n".join(md) + "\n")


def _plot(out: Path, tables: dict[str, list[dict[str, object]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = tables["modalities"]
    if rows:
        methods = sorted({r["method"] for r in rows})
        mods = sorted({r["modality"] for r in rows})
        fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(mods)), 3.5))
        width = 0.8 / len(methods)
        for i, m in enumerate(methods):
            vals = [next((r for r in rows if r["method"] == m and r["modality"] == mod), None) for mod in mods]
            xs = np.arange(len(mods)) + i * width
            ys = [v["dice"] if v else 0 for v in vals]
            err = [[max(0, v["dice"] - v["dice_ci_low"]) if v and v["dice_ci_low"] == v["dice_ci_low"] else 0 for v in vals],
                   [max(0, v["dice_ci_high"] - v["dice"]) if v and v["dice_ci_high"] == v["dice_ci_high"] else 0 for v in vals]]
            ax.bar(xs, ys, width, yerr=err, label=m, capsize=3)
        ax.set_xticks(np.arange(len(mods)) + 0.4 - width / 2, mods)
        ax.set_ylim(0, 1)
        ax.set_ylabel("Dice (per case)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "dice_by_modality.png", dpi=110)
        plt.close(fig)
    rel = tables["reliability"]
    if rel:
        fig, ax = plt.subplots(figsize=(3.5, 3.5))
        ax.plot([0, 1], [0, 1], "--", color="grey")
        ax.plot([r["mean_predicted"] for r in rel], [r["fraction_present"] for r in rel], "o-")
        ax.set_xlabel("predicted presence")
        ax.set_ylabel("fraction present")
        fig.tight_layout()
        fig.savefig(out / "presence_reliability.png", dpi=110)
        plt.close(fig)
