"""The prompt suite: does the model understand a request however it is worded, and refuse what it was never taught?

On each record of a store split the image is set once, then asked:
- `template`: "Segment the X." for one present target and, when the record has one, one absent target taught on
  its modality (the form every other table uses);
- `paraphrase`: the same names in PARAPHRASES' families, some that the request reader turns into the template
  ("Can you outline the X?") and some it does not, which reach the language model as written;
- `synonym`: the present target by a spelling variant, synonym or plural ("tumor", "optic disk", "polyps");
- `multi`: two to four of the record's targets in one request, each scored against asking it alone;
- `unknown`: a name the model was never taught ("unicorn"): must come back with no mask and `unknown` set;
- `other-modality`: a name taught only on another modality (a polyp on a CT): must come back with no mask.

Per category and family, `prompt_suite.csv` gives Dice on present targets (0 when not found), its difference
from the template on the same questions, present and absent accuracy, and refusal accuracy (no mask) for the
names that must be refused; `prompt_suite_cases.jsonl` has every question. Dice is in source pixels.
"""

from __future__ import annotations

import csv
import json
import zlib
from collections import defaultdict
from pathlib import Path

import numpy as np

from rcmed.data.store import iter_records, read_sample
from rcmed.eval.harness import _per_dataset, record_image, record_truths
from rcmed.eval.metrics import dice
from rcmed.vocabulary import SYNONYMS, canonical_prompt, join_names, norm, resolve, target_key

PARAPHRASES: dict[str, str] = {  # family -> phrasing of one or several names ("{names}": "the A and the B")
    "can-you-outline": "Can you outline {names}?",
    "where-is": "Where is {names}?",
    "please-delineate": "Please delineate {names} in this image.",
    "show-me": "Show me {names}.",
    "highlight-for-me": "Highlight {names} for me.",
    "would-like-segmented": "I would like {names} segmented.",  # not a pattern the reader knows: reaches the LM as written
    "is-there-outline": "Is there {names} here? If so, outline it.",  # read as a request since the test of real3
}
UNKNOWN_NAMES = ("unicorn", "skull bone", "carburettor", "left ear", "appendix", "spinal cord", "gallbladder stone")


def _the(names: list[str]) -> str:
    return join_names([f"the {n}" for n in names])


def variants(name: str, known: set[str]) -> list[str]:
    """Other ways a user writes `name` that the model should understand: the spelling variants and synonyms
    of `rcmed.vocabulary.SYNONYMS` that stand for it, else its plural or singular."""
    key = norm(name)
    out = [k for k, v in SYNONYMS.items() if v == key and resolve(k, known) == key]
    if not out:
        other = key[:-1] if key.endswith("s") else key + "s"
        out = [other] if resolve(other, known) == key else []
    return out


def _pick(options: list[str], rec_id: str, salt: str) -> str | None:
    return sorted(options, key=lambda o: zlib.crc32(f"{rec_id}|{salt}|{o}".encode()))[0] if options else None


def _found(answer, name: str, true: np.ndarray | None) -> dict[str, object]:
    """The answer's target named `name` (by its trained name), scored against `true` (None: absent)."""
    got = next((t for t in answer.targets if target_key(t.name) == target_key(name)), None)
    called = got is not None and got.mask is not None
    row: dict[str, object] = {"present": true is not None, "called": called,
                              "presence": None if got is None else round(float(got.presence), 4)}
    if true is not None:
        row["dice"] = float(dice(got.mask, true)) if called else 0.0
    return row


def run_prompt_suite(predictor, store: str | Path, out: str | Path, split: str = "test",
                     records: list | None = None, per_dataset: int | None = None, progress: bool = False) -> list[dict[str, object]]:
    """Ask every question of the suite on `records` (default: the `split` of `store`, at most `per_dataset` per
    dataset by a fixed hash of the record id) and write `out`/prompt_suite.csv and prompt_suite_cases.jsonl.
    Returns the table's rows. The image's modality is the record's (as the other tables)."""
    from tqdm import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if records is None:
        records = list(iter_records(store, split=split))
        if per_dataset is not None:
            records = _per_dataset(records, per_dataset)
    vocab = predictor.vocabulary or {}
    known = {n.lower() for names in vocab.values() for n in names}
    rows: list[dict[str, object]] = []
    with open(out / "prompt_suite_cases.jsonl", "w", encoding="utf-8") as fh:
        for rec in tqdm(records, desc="prompt suite", unit="rec", disable=not progress):
            for row in _ask_record(predictor, store, rec, vocab, known):
                fh.write(json.dumps(row) + "\n")
                rows.append(row)
    table = summarise(rows)
    cols = list(dict.fromkeys(k for r in table for k in r))
    with open(out / "prompt_suite.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(table)
    return table


def _ask_record(predictor, store, rec, vocab: dict[str, list[str]], known: set[str]) -> list[dict[str, object]]:
    sample = read_sample(store, rec)
    predictor.set_image(record_image(rec, sample))
    here = {n.lower() for n in vocab.get(rec.modality, [])}
    # the names taught on the record's modality by their own names; an empty mask asks nothing here
    truth = {target_key(n): t for n, t in record_truths(rec, sample).items()
             if resolve(n, here) == target_key(n) and (t is None or t.any())}
    base = {"record": rec.id, "dataset": rec.source or rec.modality, "modality": rec.modality}
    rows: list[dict[str, object]] = []

    def ask(category: str, family: str, prompt: str, name: str, true) -> dict[str, object]:
        answer = predictor.predict(prompt)
        row = {**base, "category": category, "family": family, "prompt": prompt, "name": name, **_found(answer, name, true)}
        rows.append(row)
        return row

    present = sorted(n for n, m in truth.items() if m is not None)
    absent = sorted(n for n, m in truth.items() if m is None)
    first, missing = _pick(present, rec.id, "present"), _pick(absent, rec.id, "absent")
    for name in [n for n in (first, missing) if n is not None]:
        ask("template", "template", canonical_prompt([name]), name, truth[name])
        for family, pattern in PARAPHRASES.items():
            ask("paraphrase", family, pattern.format(names=_the([name])), name, truth[name])
    if first is not None:
        for v in variants(first, known)[:2]:
            ask("synonym", v, canonical_prompt([v]), first, truth[first])
    several = sorted(truth, key=lambda n: zlib.crc32(f"{rec.id}|multi|{n}".encode()))[:4]
    if len(several) >= 2:
        answer = predictor.predict(canonical_prompt(several))
        names = [target_key(t.name) for t in answer.targets]
        for n in several:
            alone = next((r for r in rows if r["category"] == "template" and r["name"] == n), None) or \
                ask("alone", "alone", canonical_prompt([n]), n, truth[n])
            rows.append({**base, "category": "multi", "family": f"{len(several)} targets", "prompt": canonical_prompt(several),
                         "name": n, **_found(answer, n, truth[n]), "named_once": names.count(n) == 1,
                         "dice_alone": alone.get("dice")})
    unknown = _pick([u for u in UNKNOWN_NAMES if resolve(u, known) is None], rec.id, "unknown")
    if unknown is not None:
        row = ask("unknown", "unknown", canonical_prompt([unknown]), unknown, None)
        row["refused"] = not row["called"]
    elsewhere = _pick(sorted({n.lower() for m, ns in vocab.items() if m != rec.modality for n in ns} - known_here(here)),
                      rec.id, "elsewhere")
    if elsewhere is not None and rec.modality in vocab:
        row = ask("other-modality", "other-modality", canonical_prompt([elsewhere]), elsewhere, None)
        row["refused"] = not row["called"]
    return rows


def known_here(here: set[str]) -> set[str]:
    """`here` and every name a taught name there would be read as (so a side-less "lung" is not asked as
    another modality's name on an X-ray)."""
    return set(here) | {h.split(" ", 1)[1] for h in here if " " in h}


def summarise(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """One row per (category, family): questions, Dice on present targets, its difference from the template on
    the same (record, name), present / absent accuracy, and for names that must be refused the share refused.
    Multi-target rows also give Dice of the same targets asked alone and the share named exactly once."""
    template = {(r["record"], r["name"]): r.get("dice") for r in rows if r["category"] == "template"}
    groups: dict[tuple[str, str], list[dict[str, object]]] = defaultdict(list)
    for r in rows:
        if r["category"] != "alone":
            groups[(str(r["category"]), str(r["family"]))].append(r)
    table = []
    for (cat, fam), rs in sorted(groups.items(), key=lambda kv: (_ORDER.index(kv[0][0]), kv[0][1])):
        pres = [r for r in rs if r["present"]]
        absn = [r for r in rs if not r["present"]]
        d = [float(r["dice"]) for r in pres]
        row: dict[str, object] = {"category": cat, "family": fam, "questions": len(rs),
                                  "dice": _mean(d), "present_accuracy": _mean([float(r["called"]) for r in pres]),
                                  "absent_accuracy": _mean([float(not r["called"]) for r in absn])}
        if cat == "multi":
            row["dice_vs_template"] = _delta(d, [r.get("dice_alone") for r in pres])
            row["named_once"] = _mean([float(bool(r.get("named_once"))) for r in rs])
        else:
            row["dice_vs_template"] = _delta(d, [template.get((r["record"], r["name"])) for r in pres])
        if cat in ("unknown", "other-modality"):
            row["refusal_accuracy"] = _mean([float(bool(r.get("refused"))) for r in rs])
        table.append(row)
    return table


_ORDER = ["template", "paraphrase", "synonym", "multi", "unknown", "other-modality"]


def _mean(v: list[float]) -> float | None:
    return round(float(np.mean(v)), 4) if v else None


def _delta(d: list[float], ref: list[object]) -> float | None:
    pairs = [(a, float(b)) for a, b in zip(d, ref, strict=True) if b is not None]
    return round(float(np.mean([a - b for a, b in pairs])), 4) if pairs else None
