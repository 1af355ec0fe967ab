"""Write the real-image section of the default model's card, and its summary in the README, from result
files only (no number is typed here):

    rcmed/weights/default/eval/real_test_datasets.csv   `python scripts/train_default.py realtest` (the one test scoring)
    rcmed/weights/default/eval/real_test_presence.csv   the same run: presence on present and absent questions
    rcmed/weights/default/eval/real_test_log.jsonl      every model scored on the real test splits, shipped or not
    rcmed/weights/default/eval/real_val_datasets.csv    the validation comparison that chose what ships (`realval`)
    rcmed/weights/default/eval/phantom_fresh_modalities.csv   phantom held-out check on a fresh seed (`phantomcheck`)
    rcmed/weights/default/postprocess.json              mask path per target, with its validation evidence
    rcmed/weights/default/real1_metrics.csv             step times of the real-data training run
    rcmed/weights/default/real2_metrics.csv             step times of the decoder stage (`real2`)
    rcmed/weights/default/eval/real2_val_summary.json   the decoder stage's validation scores (best step, cuts)
    rcmed/weights/default/eval/real2_val_history.json   its validation mean Dice at every evaluation step
    rcmed/weights/default/eval/modality_val.json        the modality head on the validation splits (`modality`)
    rcmed/weights/default/eval/real_test_recognition.csv   the same head on the test records (`realtest`)
    rcmed/weights/default/eval/real_val_unet_curve.json    the U-Net reference's convergence check (`unetcurve`)
    rcmed/weights/default/config.json                   loop rounds the shipped model runs
    docs/published_reference.json                        published numbers of other models, with their source

    python scripts/real_card.py          # rewrites the marked blocks of the card and the README
    python scripts/real_card.py --check  # exit 1 if either file differs from what the results give

The blocks sit between `<!-- real-data:begin -->` and `<!-- real-data:end -->`.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "rcmed" / "weights" / "default"
EVAL = WEIGHTS / "eval"
BEGIN, END = "<!-- real-data:begin -->", "<!-- real-data:end -->"
REFERENCE = "litemedsam-cc-box"
# the bar of issue 19, stated once: the card says which of these the results meet
GOALS = {"mean_dice": 0.80, "min_dice": 0.60, "oracle_ratio": 0.9, "oracle_floor": 0.8, "unet_wins": 8,
         "absent_accuracy": 0.95, "present_accuracy": 0.95, "phantom_dice": 0.90}


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(open(path, encoding="utf-8"))) if path.is_file() else []


def _f(v: str | None) -> float | None:
    try:
        x = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return None if x != x else x


def _fmt(v: float | None, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _ci(r: dict[str, str]) -> str:
    lo, hi = _f(r.get("dice_ci_low")), _f(r.get("dice_ci_high"))
    return f" [{lo:.2f}, {hi:.2f}]" if lo is not None and hi is not None else ""


def dataset_table(rows: list[dict[str, str]], published: dict) -> tuple[list[str], dict[str, object]]:
    by = {(r["dataset"], r["method"]): r for r in rows}
    datasets = sorted({r["dataset"] for r in rows})
    pub = published.get("BiomedParse", {}).get("dice", {})
    lines = ["| dataset | RCMed Dice [95% CI] | LiteMedSAM, true box per component | U-Net | present acc. | absent acc. "
             "(all / decided by the model) | nuclei F1@0.5 / AJI | BiomedParse (published) |", "|---|---|---|---|---|---|---|---|"]
    stats: dict[str, object] = {"datasets": len(datasets)}
    ours, ratios, unet_wins, below = {}, {}, 0, []
    for d in datasets:
        r = by.get((d, "rcmed"))
        if r is None:
            continue
        dice = _f(r["dice"])
        ours[d] = dice
        ref = _f(by[(d, REFERENCE)]["dice"]) if (d, REFERENCE) in by else None
        unet = _f(by[(d, "unet")]["dice"]) if (d, "unet") in by else None
        if ref is not None and ref > GOALS["oracle_floor"] and dice is not None:
            ratios[d] = dice / ref
        if unet is not None and dice is not None and dice > unet:
            unet_wins += 1
        if dice is not None and dice < GOALS["min_dice"]:
            below.append(d)
        inst = f"{_fmt(_f(r.get('instance_f1_50')))} / {_fmt(_f(r.get('aji')))}" if _f(r.get("aji")) is not None else "–"
        pubs = [f"{k.replace(d, '').strip()} {v:.2f}".strip() for k, v in pub.items() if k.startswith(d)]
        lines.append(f"| {d} ({r['case_targets']} case-targets) | {_fmt(dice)}{_ci(r)} | {_fmt(ref)} | {_fmt(unet)} | "
                     f"{_fmt(_f(r.get('present_accuracy')), 2)} | {_fmt(_f(r.get('absent_accuracy')), 2)}{_model_absent(r)} | {inst} | "
                     f"{', '.join(pubs) or '–'} |")
    vals = [v for v in ours.values() if v is not None]
    stats.update(mean_dice=float(np.mean(vals)) if vals else None, below=below, ratios=ratios, unet_wins=unet_wins,
                 unet_datasets=sum(1 for d in datasets if (d, "unet") in by))
    return lines, stats


def _model_absent(r: dict[str, str]) -> str:
    n = _f(r.get("absent_model_questions"))
    return "" if n is None else f" / {_fmt(_f(r.get('absent_model_accuracy')), 2)} ({int(n)})"


def model_absent_overall(rows: list[dict[str, str]]) -> tuple[float | None, int]:
    """Accuracy on the absent questions the model decided itself (not answered by the vocabulary), over all datasets."""
    pairs = [(_f(r.get("absent_model_accuracy")), _f(r.get("absent_model_questions"))) for r in rows if r["method"] == "rcmed"]
    pairs = [(a, n) for a, n in pairs if a is not None and n]
    total = sum(n for _, n in pairs)
    return (sum(a * n for a, n in pairs) / total if total else None), int(total)


def presence_stats(rows: list[dict[str, str]]) -> dict[str, float | None]:
    r = rows[0] if rows else {}
    return {"present": _f(r.get("present_accuracy")), "absent": _f(r.get("absent_accuracy")),
            "questions": _f(r.get("questions")), "absent_questions": _f(r.get("absent"))}


def val_table(rows: list[dict[str, str]]) -> list[str]:
    if not rows:
        return ["(no validation comparison recorded)"]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    by = {(r["dataset"], r["method"]): _f(r["dice"]) for r in rows}
    label = {"default": "previous weights (phantoms)", "rcmed": "real1 (text query)", "rcmed-box": "real1, box path",
             "rcmed-both": "real1, both paths"}
    lines = ["| dataset | " + " | ".join(label.get(m, m) for m in methods) + " |", "|---|" + "---|" * len(methods)]
    for d in sorted({r["dataset"] for r in rows}):
        lines.append(f"| {d} | " + " | ".join(_fmt(by.get((d, m))) for m in methods) + " |")
    means = []
    for m in methods:
        v = [x for (d, mm), x in by.items() if mm == m and x is not None]
        means.append(_fmt(float(np.mean(v)) if v else None))
    lines.append("| **mean over datasets** | " + " | ".join(means) + " |")
    return lines


def worst_lines() -> list[str]:
    path = EVAL / "real_test_worst.json"
    if not path.is_file():
        return ["(not yet painted)"]
    notes_path = EVAL / "real_test_worst_notes.json"  # what was seen on the overlays, in words
    notes = json.loads(notes_path.read_text()) if notes_path.is_file() else {}
    lines = ["| dataset | record | target | RCMed Dice | references on the same case | seen on the overlay |", "|---|---|---|---|---|---|"]
    for w in json.loads(path.read_text()):
        refs = ", ".join(f"{k} {v:.3f}" for k, v in w.items() if k not in ("dataset", "record", "target", "dice"))
        lines.append(f"| {w['dataset']} | `{w['record']}` | {w['target']} | {w['dice']:.3f} | {refs or '–'} | "
                     f"{notes.get(w['dataset'], '')} |")
    return lines


UNET_LEVEL = 0.02  # validation mean Dice the U-Net may still gain after its budget and be called levelled off
UNET_NEVER = 0.05  # a dataset whose validation Dice stays below this at every point: the recipe fails, not the budget
UNET_WINDOW = 3  # curve points averaged on each side of that comparison (one point swings by a few hundredths)


def _demo_seen() -> dict | None:
    """eval/demo_seen.json: what was seen on the overlays of `make demo`'s packaged real images, and with which
    weights (their sha256); None when nobody looked."""
    path = EVAL / "demo_seen.json"
    return json.loads(path.read_text()) if path.is_file() else None


def demo_lines(shipped_sha: str) -> list[str]:
    """The packaged real images of `make demo` (no expert masks, so no Dice): what we saw on their overlays, in
    words (`_demo_seen`), stated for the weights they were seen with; a note about other weights says so."""
    seen = _demo_seen()
    if seen is None:
        return ["(the overlays of `make demo`'s packaged real images have not been looked at for these weights)"]
    same = seen["model_sha256"] == shipped_sha
    lines = [f"**`make demo` on real images that installed packages ship** (no expert mask: shown, not scored). What we saw "
             f"on each overlay ({seen['looked_at']}, weights `{seen['model_sha256'][:12]}`"
             + (", the shipped ones" if same else f"; **not the shipped weights** `{shipped_sha[:12]}`: these notes are "
                                                  f"out of date until the overlays are looked at again") + "):", "",
             "| case | request | verdict | the answer warns the image is unfamiliar | seen on the overlay |",
             "|---|---|---|---|---|"]
    warned = {case: c.get("warned") for case, c in seen["cases"].items()}  # (`rcmed.model.familiarity`; None: not noted)
    for case, c in seen["cases"].items():
        w = "–" if warned[case] is None else ("yes" if warned[case] else "no")
        lines.append(f"| {case} | {c['prompt']} | {c['verdict']} | {w} | {c['seen']} |")
    verdicts = [c["verdict"] for c in seen["cases"].values()]
    lines += ["", f"Right on {verdicts.count('right')} of {len(verdicts)}."
              + (" The per-dataset test table says how the model does on images like those it was trained on; these "
                 "show what it does on images unlike any of them." if verdicts.count("right") < len(verdicts) else "")]
    noted = [case for case, w in warned.items() if w is not None]
    if noted:
        not_right = [case for case in noted if seen["cases"][case]["verdict"] != "right"]
        lines[-1] += (f" The answer warned that the image is unlike those the target was taught on for "
                      f"{sum(bool(warned[c]) for c in noted)} of {len(noted)}, and for "
                      f"{sum(bool(warned[c]) for c in not_right)} of the {len(not_right)} not answered right.")
    if seen.get("note"):
        lines += ["", str(seen["note"])]
    return lines


def scale_lines() -> list[str]:
    """Found when smaller and off the centre? (`scalecheck`, validation): per dataset and target, the share of
    present targets called present and the mean Dice at each scale of the image."""
    path = EVAL / "real_val_scale.json"
    if not path.is_file():
        return ["(not checked: `python scripts/train_default.py scalecheck` not run)"]
    sc = json.loads(path.read_text())
    scales = [str(x) for x in sc["scales"]]
    lines = [f"**Found when smaller and off the centre?** (`python scripts/train_default.py scalecheck`, validation, "
             f"{sc['records_per_dataset']} records of each dataset: every present target asked by words alone on the "
             f"image as it is and shrunk to {', '.join(scales[1:])} of its side on a black canvas of its own size, "
             f"{sc['left']:g} of the width from the left; share called present / mean Dice.)", "",
             "| dataset | target | questions | " + " | ".join(f"× {x}" for x in scales) + " |",
             "|---|---|---|" + "---|" * len(scales)]
    for r in sc["rows"]:
        lines.append(f"| {r['dataset']} | {r['target']} | {r['questions']} | "
                     + " | ".join(f"{r[f'present@{x}']:.2f} / {r[f'dice@{x}']:.3f}" for x in scales) + " |")
    lost = [f"{r['target']} ({r['dataset']})" for r in sc["rows"]
            if r[f"present@{scales[0]}"] - r[f"present@{scales[-1]}"] >= 0.5]
    if lost:
        lines += ["", f"Lost at × {scales[-1]} (called present at least 0.5 less often than at full size): "
                      f"{', '.join(lost)}. Each was learnt at its dataset's one field of view. Either the smaller size or "
                      "the black border around the shrunk image (no training image has one) makes the model answer 'not "
                      "present'; this check cannot tell which. It fits what `make demo` shows on the whole-retina photograph "
                      "(no border, a small disc off the centre: 'optic disc not present'), and it says the test table holds "
                      "for images framed like each dataset's own, not for wider or narrower views."]
    return lines


def views_lines() -> list[str]:
    """Each decoder stage trained on other fields of view (`real7`; eval/<name>_views.json when it ships,
    eval/tried_<name>_views.json when it does not): validation mean Dice of its source and of the kept step on the
    images as they are and on their other views, per dataset, and whether the criterion fixed before the run held."""
    lines: list[str] = []
    for path in sorted(EVAL.glob("*_views.json")):
        v = json.loads(path.read_text())
        name = path.name.removeprefix("tried_").removesuffix("_views.json")
        tried = path.name.startswith("tried_")
        parts = [("source_as_is", "source, as is"), ("kept_as_is", "kept, as is"),
                 ("source_views", "source, other view"), ("kept_views", "kept, other view")]
        means = {k: v[k]["mean_dice"] for k, _ in parts}
        held, slack = v["held"], v["slack"]  # the recipe's verdict on its own criterion (`view_verdict`)
        out_range, in_range = "-".join(f"{x:g}" for x in v["zoom_out"]), "-".join(f"{x:g}" for x in v["zoom_in"])
        history = path.with_name(path.name.replace("_views.json", "_val_history.json"))
        steps = (" Validation mean Dice by step (as is and other views pooled, which chose the step): "
                 + ", ".join(f"{h['step']}: {h['mean_dice']:.3f}" for h in json.loads(history.read_text())) + "."
                 if history.is_file() else "")
        lines += [f"**Other fields of view: `{name}`** (`python scripts/train_default.py {name}`: the decoder stage from "
                  f"the weights it replaces, one real train record in {v['train_view_every']} also asked on another view "
                  f"of its image, zoomed out to {out_range} of its side on its own background colour or zoomed into a crop "
                  f"of {in_range} of its side that keeps each present target (`rcmed/data/views.py`). Validation, {v['questions']} questions as "
                  f"they are and {v['view_questions']} on other views, words alone, presence at 0.5, no rules; step "
                  f"{v['best_step']} kept, step 0 being the source.) Fixed before the run: it replaces its source only "
                  f"if its as-is mean Dice is at most {slack} below the source's and its other-view mean Dice is "
                  f"higher. Result: as is {means['source_as_is']:.3f} → {means['kept_as_is']:.3f}, other views "
                  f"{means['source_views']:.3f} → {means['kept_views']:.3f}; the criterion "
                  f"{'held' if held else 'did not hold'}, and `{name}` {'was not shipped' if tried else 'ships'}.{steps}", "",
                  "| dataset | " + " | ".join(label for _, label in parts) + " |", "|---|" + "---|" * len(parts)]
        datasets = sorted({d for k, _ in parts for d in v[k]["datasets"] if not d.startswith("phantom-")})
        for d in datasets:
            lines.append(f"| {d} | " + " | ".join(_fmt(v[k]["datasets"].get(d, {}).get("dice")) for k, _ in parts) + " |")
        lines.append("")
    return lines


def familiarity_lines(shipped_sha: str) -> list[str]:
    """Does the answer's "this image is unlike the images I learnt the X from" mean anything? From
    eval/familiarity_val.json (`python scripts/train_default.py familiarity`): the statistics, the cut chosen on half
    A of the validation images, and on half B, as they are and on another field of view: share called familiar and
    mean Dice of the present targets called familiar and not, per kind and per dataset."""
    path = EVAL / "familiarity_val.json"
    if not path.is_file():
        return ["(no familiarity statistics: `python scripts/train_default.py familiarity` not run)"]
    v = json.loads(path.read_text())
    rows = v["half_b"]
    stale = "" if v.get("model_sha256") == shipped_sha else (
        f" **Measured with weights `{str(v.get('model_sha256'))[:12]}`, not the shipped `{shipped_sha[:12]}`:** the statistics depend "
        "only on the frozen encoder and the training images, but the Dice columns below are out of date until the step "
        "runs again.")

    def stats(rs: list[dict]) -> tuple[str, str, str, str]:
        dices = [r for r in rs if r["dice"] is not None]
        fam = [r["dice"] for r in dices if r["familiar"]]
        unf = [r["dice"] for r in dices if not r["familiar"]]
        share = _fmt(float(np.mean([r["familiar"] for r in rs])), 2) if rs else "–"
        return (f"{len(rs)}", share, f"{_fmt(float(np.mean(fam))) if fam else '–'} ({len(fam)})",
                f"{_fmt(float(np.mean(unf))) if unf else '–'} ({len(unf)})")

    sp = v.get("small_phantoms")
    small = (f" (phantoms at 256 px, and {sp['per_modality']} of each modality at {sp['side']} px as groups of their own: "
             f"the phantom stages drew one phantom in 5 at that side)") if sp else ""
    lines = [f"**Familiarity: is the image like those the target was taught on?** (`rcmed.model.familiarity`; "
             f"`python scripts/train_default.py familiarity`.) Per target, a Gaussian of the encoder's pooled features "
             f"({v['components']} PCA components, Ledoit-Wolf covariance) for each real dataset "
             f"({v['train_per_dataset']} train images of each) and each phantom modality it was taught on{small}: "
             f"{v['gaussians']} Gaussians from {v['train_images']} train images. An image's ratio is its distance to the "
             f"nearest, in units of that group's median distance over its own train images. The cut, "
             f"{v['cut']:.2f}, is the {v['keep']} quantile of the ratios of {v['half_a_questions']} validation questions "
             "(half A of the validation images, by a hash of the record id; each name an image was asked about with "
             "a mask), fixed before half B was looked at. Above it the answer warns that the mask, or the 'not found', "
             "may be wrong; the mask and the decision are not changed. Half B of the validation images, as they are "
             "and on one other field of view of each (`rcmed.data.views.random_view`: zoomed out or into a crop), "
             f"words alone, as shipped:{stale}", "",
             "| images | questions | called familiar | mean Dice, present targets called familiar (questions) | "
             "... called unfamiliar (questions) |", "|---|---|---|---|---|"]
    for kind in ("as is", "view"):
        lines.append(f"| {kind if kind == 'as is' else 'other view'} | " + " | ".join(stats([r for r in rows if r["kind"] == kind])) + " |")
    present = [r for r in rows if r["dice"] is not None]
    if present and 0 < sum(r["dice"] < 0.5 for r in present) < len(present):
        from sklearn.metrics import roc_auc_score

        auc = roc_auc_score([r["dice"] < 0.5 for r in present], [r["ratio"] for r in present])
        lines += ["", f"Over half B's {len(present)} present questions (as is and other views together), the ratio ranks a "
                      f"question whose Dice is below 0.5 above one whose Dice is 0.5 or more with AUROC {auc:.2f}. The "
                      "warning says whether the image is like the training images, not whether the mask is right: a "
                      "familiar image can still get a poor mask, and an unfamiliar one a good mask."]
    lines += ["", "Per dataset (half B; share called familiar, as is / other view):", "",
              "| dataset | questions | familiar, as is | familiar, other view | Dice as is: familiar / unfamiliar | "
              "Dice other view: familiar / unfamiliar |", "|---|---|---|---|---|---|"]
    for d in sorted({r["dataset"] for r in rows}):
        a = stats([r for r in rows if r["dataset"] == d and r["kind"] == "as is"])
        b = stats([r for r in rows if r["dataset"] == d and r["kind"] == "view"])
        lines.append(f"| {d} | {a[0]} | {a[1]} | {b[1]} | {a[2]} / {a[3]} | {b[2]} / {b[3]} |")
    return [*lines, "", *_familiarity_volume_lines(v.get("volumes") or [])]


def _familiarity_volume_lines(rows: list[dict]) -> list[str]:
    """A volume's familiarity is measured on its middle slice: fresh 3-D phantoms answered as volumes, per modality and
    side, share called familiar, the largest ratio and mean Dice (from familiarity_val.json's "volumes")."""
    if not rows:
        return ["(volumes: not measured by this run of the step)", ""]
    lines = ["Volumes are judged on their middle slice, the one the answer's words come from. Fresh 3-D phantoms "
             "(a seed no store used), answered as volumes, the largest targets of the middle slice asked:", "",
             "| modality | side (px) | volumes | questions | called familiar | largest ratio | mean Dice |", "|---|---|---|---|---|---|---|"]
    for mod, side in sorted({(r["modality"], r["side"]) for r in rows}, key=lambda k: (k[0], -k[1])):
        rs = [r for r in rows if r["modality"] == mod and r["side"] == side]
        lines.append(f"| {mod} | {side} | {len({r['volume'] for r in rs})} | {len(rs)} | "
                     f"{_fmt(float(np.mean([r['familiar'] for r in rs])), 2)} | {max(r['ratio'] for r in rs):.2f} | "
                     f"{_fmt(float(np.mean([r['dice'] for r in rs])))} |")
    return [*lines, ""]


def unet_curve_lines() -> list[str]:
    """Did the U-Net reference converge in its budget? Its validation curve to twice its steps (`unetcurve`): the
    mean of the last UNET_WINDOW points up to the reference's steps against the mean of the curve's last UNET_WINDOW."""
    path = EVAL / "real_val_unet_curve.json"
    if not path.is_file():
        return ["(the U-Net reference's convergence was not checked: `python scripts/train_default.py unetcurve` not run)"]
    u = json.loads(path.read_text())
    ref, curve = u["reference"], u["curve"]
    steps = int(ref["steps"])
    upto = [c for c in curve if c["steps"] <= steps] or curve[:1]
    at = upto[-1]
    before, after = upto[-UNET_WINDOW:], curve[-UNET_WINDOW:]
    m_before = float(np.mean([c["mean_dice"] for c in before]))
    m_after = float(np.mean([c["mean_dice"] for c in after]))
    best = max(curve, key=lambda c: c["mean_dice"])

    def span(cs: list[dict]) -> str:
        return f"steps {cs[0]['steps']}–{cs[-1]['steps']}" if len(cs) > 1 else f"step {cs[0]['steps']}"

    compare = (f"averaged over the points of {span(before)} (up to the reference's steps): {m_before:.3f}; over the last "
               f"points, {span(after)}: {m_after:.3f}; best single point: {best['mean_dice']:.3f} at step {best['steps']}")
    if curve[-1]["steps"] < steps:  # the check ran beside other work and trained fewer steps in the same time
        early = ([c for c in curve if c["steps"] <= steps / 2] or curve[:1])[-1]
        verdict = (f"the check itself stopped at step {curve[-1]['steps']}, before the reference's {steps} (it ran beside "
                   f"other work, so fewer steps fitted in its time), so it cannot say whether the reference had levelled "
                   f"off; from step {early['steps']} to step {curve[-1]['steps']} the mean moved "
                   f"{curve[-1]['mean_dice'] - early['mean_dice']:+.3f}, so treat the U-Net column as a reference that "
                   f"may be short of converged, and the count of datasets where RCMed beats it as possibly flattering")
    elif m_after - m_before < UNET_LEVEL:
        verdict = (f"it had levelled off: the later points gained {m_after - m_before:+.3f}, less than {UNET_LEVEL}, so "
                   f"more steps of this recipe would not change the U-Net column much")
    else:
        verdict = (f"it was still learning: {m_after - m_before:+.3f} by the end, so the U-Net column above is below "
                   f"what it reaches with more time, and the count of datasets where RCMed beats it flatters RCMed")
    flat = [d for d in sorted(curve[-1]["datasets"]) if max(c["datasets"].get(d) or 0.0 for c in curve) < UNET_NEVER]
    if flat:  # no step count lifts these: the reference's recipe (its input size) is what fails there
        verdict += (f". On {', '.join(flat)} it never reached {UNET_NEVER} at any point of the curve: more steps do not "
                    f"help there, so RCMed's lead on {'it' if len(flat) == 1 else 'them'} says more about this reference's "
                    f"recipe ({ref['size']}-px input) than about RCMed")
    head = (f"**Does the U-Net reference converge in its budget?** (`python scripts/train_default.py unetcurve`: its "
            f"training run again, same seed and batches, to {u['factor']:g} × its steps, scored every "
            f"{curve[0]['steps']} steps on {u['questions']} present validation questions; Dice per question, averaged "
            f"per dataset, then over datasets.) The reference in the table trained {steps} steps of 8 images at "
            f"{ref['size']} px in {float(ref['budget_s']):.0f} s on {ref['train_records']} train images. Validation mean "
            f"Dice, {compare}; {verdict}.")
    datasets = sorted(curve[-1]["datasets"])
    lines = [head, "", "| steps | " + " | ".join(datasets) + " | mean |", "|---|" + "---|" * (len(datasets) + 1)]
    for c in curve:
        mark = " (reference)" if c["steps"] == steps else f" (last before the reference's {steps})" if c is at else ""
        lines.append(f"| {c['steps']}{mark} | " + " | ".join(_fmt(c["datasets"].get(d)) for d in datasets)
                     + f" | {c['mean_dice']:.3f} |")
    return lines


def stages() -> list[str]:
    """The decoder-stage runs behind the shipped weights, in order (their validation records in eval/)."""
    return sorted(p.name.split("_")[0] for p in EVAL.glob("real*_val_summary.json"))


def stage_lines() -> list[str]:
    """The decoder stage's validation scores per dataset (the last stage's kept weights): at presence 0.5 and with
    the per-target cuts, over all questions and over those the model decides itself; then the history of every stage."""
    names = stages()
    if not names:
        return ["(no decoder stage recorded)"]
    summ = json.loads((EVAL / f"{names[-1]}_val_summary.json").read_text())
    at, cut = summ["at_0.5"], summ["with_cuts"]
    decided = summ.get("decided_with_cuts", {})
    ruled = summ.get("with_rules")  # every per-target rule: presence cut, mask path, mask threshold, component rule
    lines = ["| dataset | Dice, presence at 0.5 | present / absent acc. | Dice, per-target cuts | present / absent acc. "
             "| absent acc., questions the model decides (with cuts) |" + (" Dice, every rule |" if ruled else ""),
             "|---|---|---|---|---|---|" + ("---|" if ruled else "")]
    for d in sorted(at):
        a, c = at[d], cut.get(d, {})
        lines.append(f"| {d} | {_fmt(a.get('dice'))} | {_fmt(a.get('present'), 2)} / {_fmt(a.get('absent'), 2)} | "
                     f"{_fmt(c.get('dice'))} | {_fmt(c.get('present'), 2)} / {_fmt(c.get('absent'), 2)} | "
                     f"{_fmt(decided.get(d, {}).get('absent'), 2)} |" + (f" {_fmt(ruled.get(d, {}).get('dice'))} |" if ruled else ""))
    lines.append(f"| **mean over real datasets** | {_fmt(summ['mean_dice_at_0.5'])} | | {_fmt(summ['mean_dice_with_cuts'])} | | |"
                 + (f" {_fmt(summ.get('mean_dice_with_rules'))} |" if ruled else ""))
    if summ.get("cuts_chosen_on"):
        lines += ["", f"The presence cuts were chosen on the {summ['cuts_chosen_on']}: questions about targets taught only "
                  "on other modalities are refused by rule before the model is asked, and are left out of the choice."]
    hist = []
    offset = 0
    for name in names:
        path = EVAL / f"{name}_val_history.json"
        if path.is_file():
            part = json.loads(path.read_text())
            hist += [f"{name} step {h['step']} (stage step {offset + h['step']}): {h['mean_dice']:.3f}" for h in part]
        offset += len(_rows(WEIGHTS / f"{name}_metrics.csv"))
    if hist:
        lines += ["", "Validation mean Dice (real datasets, presence at 0.5) at each evaluation; step 0 of a run is the weights "
                  "it started from: " + "; ".join(hist) + f". The weights of {names[-1]} step {summ['best_step']} were kept."]
    return lines


SUITE_BARS = {"paraphrase": -0.03, "synonym": -0.03, "multi": -0.03}  # Dice against the template (issue 20)
REFUSAL_BAR = 0.95  # names never taught refused (issue 20)


def prompt_suite_lines(path: Path) -> list[str]:
    """The prompt suite's table (`rcmed.eval.prompt_suite`), each row against its bar."""
    rows = _rows(path)
    if not rows:
        return ["(not measured)"]
    lines = ["| category | family | questions | Dice (present) | vs template | present acc. | absent acc. | refused | bar |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        delta, refused = _f(r.get("dice_vs_template")), _f(r.get("refusal_accuracy"))
        bar = SUITE_BARS.get(r["category"])
        if bar is not None and delta is not None:
            ok = _met(delta >= bar) + f" (≥ {bar})"
        elif r["category"] == "unknown" and refused is not None:
            ok = _met(refused >= REFUSAL_BAR) + f" (≥ {REFUSAL_BAR})"
        else:
            ok = ""
        lines.append(f"| {r['category']} | {r['family']} | {r['questions']} | {_fmt(_f(r.get('dice')))} | "
                     f"{'' if delta is None else f'{delta:+.3f}'} | {_fmt(_f(r.get('present_accuracy')), 2)} | "
                     f"{_fmt(_f(r.get('absent_accuracy')), 2)} | {_fmt(refused, 2)} | {ok} |")
    return lines


def loop_lines() -> list[str]:
    """The closed loop's ablation on validation (`loopval`): Dice per dataset of each variant, and each variant's
    paired difference from the shipped answer with its bootstrap interval."""
    rows = _rows(EVAL / "real_val_loop_datasets.csv")
    if not rows:
        return ["(not measured)"]
    rounds = json.loads((WEIGHTS / "config.json").read_text()).get("loop_rounds")
    label = {"rcmed": f"as shipped ({rounds} round{'s' if rounds != 1 else ''})", "rcmed-no-loop": "one round",
             "rcmed-loop": "two rounds",
             "rcmed-loop-no-region": "two rounds, region not fed back", "rcmed-loop-no-mask-prompt": "two rounds, no mask prompt"}
    methods = [m for m in label if any(r["method"] == m for r in rows)]
    by = {(r["dataset"], r["method"]): _f(r["dice"]) for r in rows}
    datasets = sorted({r["dataset"] for r in rows})
    lines = ["| dataset | " + " | ".join(label[m] for m in methods) + " |", "|---|" + "---|" * len(methods)]
    lines += [f"| {d} | " + " | ".join(_fmt(by.get((d, m))) for m in methods) + " |" for d in datasets]
    means = [np.mean([v for d in datasets if (v := by.get((d, m))) is not None]) for m in methods]
    lines.append("| **mean over datasets** | " + " | ".join(_fmt(float(v)) for v in means) + " |")
    paired_path = EVAL / "real_val_loop_paired.json"
    if paired_path.is_file():
        paired = json.loads(paired_path.read_text())
        lines += ["", "Paired difference from the shipped answer on the same present questions (mean Dice, 95% bootstrap "
                  "interval): " + "; ".join(f"{label['rcmed-' + k]}: {v['mean_difference']:+.3f} [{v['ci_low']:+.3f}, "
                                            f"{v['ci_high']:+.3f}] over {v['questions']}" for k, v in paired.items()) + "."]
    test_path = EVAL / "real_test_loop_paired.json"
    if test_path.is_file():  # the one-round answer asked in the same one scoring on the test splits
        test = json.loads(test_path.read_text())
        lines += ["", "On the test splits, in the model's one scoring: " + "; ".join(
            f"{label['rcmed-' + k]} minus as shipped: {v['mean_difference']:+.3f} [{v['ci_low']:+.3f}, {v['ci_high']:+.3f}] "
            f"over {v['questions']} present questions" for k, v in test.items()) + "."]
    return lines


TRIED_DESIGNS = {  # what each two-round stage tried (its recipe step's docstring in scripts/train_default.py says more)
    "real5": "both rounds trained; round 2 asks the decoder from the language model's state after it re-read round 1's region, "
             "with round 1's mask as the decoder's prompt",
    "real6": "the region fed back as a residual: round 2's query is round 1's plus a learnt correction from what the re-read "
             "changed in the language model's state, zero at the start (`loop_residual`), with round 1's mask as the prompt",
}


def _ablation_lines(ab: dict) -> list[str]:
    variants = ab["variants"]
    lines = ["| variant | mean Dice over datasets | present acc. | absent acc. (model decides) |", "|---|---|---|---|"]
    lines += [f"| {k} | {_fmt(v['mean_dice_over_datasets'])} | {_fmt(v['present_accuracy'])} | "
              f"{_fmt(v['absent_accuracy'])} ({v['absent_questions']}) |" for k, v in variants.items()]
    lines += ["", "Paired differences on the same present questions (95% bootstrap interval): "
              + "; ".join(f"{p['variant']} − {p['minus']}: {p['mean_difference']:+.3f} [{p['ci_low']:+.3f}, "
                          f"{p['ci_high']:+.3f}] over {p['questions']}" for p in ab["paired"]) + ".", ""]
    return lines


def loop_stage_lines() -> list[str]:
    """The closed loop's ablation on every validation question of the two-round decoder stage (`loopstage`), when
    the shipped weights come from one; then every two-round stage tried and not shipped (eval/tried_*), with its
    design and validation history: Dice per variant and the paired differences with their intervals."""
    found = [EVAL / f"{name}_loop_ablation.json" for name in stages() if (EVAL / f"{name}_loop_ablation.json").is_file()]
    lines: list[str] = []
    if found:
        ab = json.loads(found[-1].read_text())
        lines += [f"On every real validation question of the two-round stage ({ab['questions']} questions, the stage's own "
                  f"words; `python scripts/train_default.py loopstage`):", "", *_ablation_lines(ab)]
    for path in sorted(EVAL.glob("tried_*_loop_ablation.json")):  # trained and not shipped: the designs tried, on record
        ab = json.loads(path.read_text())
        name = path.name.split("_")[1]
        history = EVAL / f"tried_{name}_val_history.json"
        summary = EVAL / f"tried_{name}_val_summary.json"
        steps = json.loads(history.read_text()) if history.is_file() else []
        ruled = json.loads(summary.read_text()).get("mean_dice_with_rules") if summary.is_file() else None
        design = TRIED_DESIGNS.get(name, "a two-round stage")
        lines += [f"**A trained second round, tried and not shipped: `{name}`** ({design}; from the shipped weights, "
                  f"`python scripts/train_default.py {name}`, then `loopstage --run {name}`). "
                  "Its validation mean Dice (two rounds) by step: "
                  + ", ".join(f"{h['step']}: {_fmt(h['mean_dice'])}" for h in steps)
                  + (f"; with its own rules chosen on the same questions, {_fmt(ruled)}" if ruled is not None else "")
                  + f". On every real validation question of the stage ({ab['questions']} questions, \"Segment the X.\"):", "",
                  *_ablation_lines(ab)]
    return lines


def recognition_lines() -> list[str]:
    val_path, test_rows = EVAL / "modality_val.json", _rows(EVAL / "real_test_recognition.csv")
    if not val_path.is_file() and not test_rows:
        return ["(no modality head)"]
    lines = []
    if val_path.is_file():
        v = json.loads(val_path.read_text())
        lines.append(f"Validation ({v['given']['images']} images; the head was fitted on {v['train_images']} train images): "
                     f"accuracy {_fmt(v['given']['accuracy'])} on images normalised by their true modality, "
                     f"{_fmt(v['unknown']['accuracy'])} as an image sent without a modality is (the case that matters); "
                     f"errors seen: {', '.join(v['unknown']['errors']) or 'none'}.")
    if test_rows:
        lines += ["", "| test dataset | modality | images | recognised correctly | most common error |", "|---|---|---|---|---|"]
        lines += [f"| {r['dataset']} | {r['modality']} | {r['images']} | {_fmt(_f(r['accuracy']), 2)} | "
                  f"{r['most_common_error'] or '–'} |" for r in test_rows]
    return lines


def write_block(path: Path, block: str, check: bool) -> bool:
    text = path.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{path}: no {BEGIN} ... {END} markers")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{BEGIN}\n{block.rstrip()}\n{END}{tail}"
    if check:
        return new == text
    path.write_text(new, encoding="utf-8")
    return True


def _short(sha: str | None) -> str:
    return f"`{sha[:12]}`" if sha else "not logged"


def _met(ok: bool | None) -> str:
    return "not measured" if ok is None else ("met" if ok else "**not met**")


def build() -> tuple[str, str]:
    from rcmed.model.pretrained import sha256  # (not rcmed.predictor's _model_sha: that import brings torch, 4 s)

    shipped_sha = sha256(WEIGHTS / "model.safetensors")  # what `Predictor` reports as the weights' sha256
    published = json.loads((ROOT / "docs" / "published_reference.json").read_text())
    test_rows = _rows(EVAL / "real_test_datasets.csv")
    table, st = dataset_table(test_rows, published)
    pres = presence_stats(_rows(EVAL / "real_test_presence.csv"))
    log = [json.loads(x) for x in (EVAL / "real_test_log.jsonl").read_text().splitlines()] if (EVAL / "real_test_log.jsonl").is_file() else []
    phantom = [r for r in _rows(EVAL / "phantom_fresh_modalities.csv") if r["method"] == "rcmed"]
    phantom_mean = float(np.mean([float(r["dice"]) for r in phantom])) if phantom else None
    metrics = _rows(WEIGHTS / "real1_metrics.csv")
    step_min = sum(float(r["step_s"]) for r in metrics) / 60 if metrics else None
    stage = [r for name in stages() for r in _rows(WEIGHTS / f"{name}_metrics.csv")]
    stage_min = sum(float(r["step_s"]) for r in stage) / 60 if stage else None
    rounds = json.loads((WEIGHTS / "config.json").read_text()).get("loop_rounds")
    rules = json.loads((WEIGHTS / "postprocess.json").read_text()) if (WEIGHTS / "postprocess.json").is_file() else {}
    choice_path = EVAL / "real_choice.json"  # the decision taken on validation, in words (written when it was taken)
    choice = json.loads(choice_path.read_text()) if choice_path.is_file() else {}
    rules_of = choice.get("rules_from")
    if rules_of:  # the rules evidence of the candidate run, when the shipped folder is not that run
        rules = json.loads((ROOT / rules_of).read_text())
    ratios = st["ratios"]
    goals = [
        (f"mean Dice over the datasets ≥ {GOALS['mean_dice']}", _fmt(st["mean_dice"]),
         None if st["mean_dice"] is None else st["mean_dice"] >= GOALS["mean_dice"]),
        (f"no dataset below {GOALS['min_dice']}", ", ".join(st["below"]) or "none below", not st["below"] if test_rows else None),
        (f"≥ {GOALS['oracle_ratio']} × the per-component-box reference where it is above {GOALS['oracle_floor']}",
         ", ".join(f"{d} {v:.2f}" for d, v in sorted(ratios.items())) or "–",
         all(v >= GOALS["oracle_ratio"] for v in ratios.values()) if ratios else None),
        (f"above the U-Net on ≥ {GOALS['unet_wins']} datasets", f"{st['unet_wins']} of {st['unet_datasets']}",
         st["unet_wins"] >= GOALS["unet_wins"] if st["unet_datasets"] else None),
        (f"absent-question accuracy ≥ {GOALS['absent_accuracy']}", _fmt(pres["absent"]),
         None if pres["absent"] is None else pres["absent"] >= GOALS["absent_accuracy"]),
        (f"present-question accuracy ≥ {GOALS['present_accuracy']}", _fmt(pres["present"]),
         None if pres["present"] is None else pres["present"] >= GOALS["present_accuracy"]),
        (f"phantom held-out mean Dice ≥ {GOALS['phantom_dice']} (fresh seed)", _fmt(phantom_mean),
         None if phantom_mean is None else phantom_mean >= GOALS["phantom_dice"]),
    ]
    paths = rules.get("mask_paths", {})
    ev = rules.get("mask_path_evidence", {})
    pcuts, pev = rules.get("presence_cuts", {}), rules.get("presence_evidence", {})
    path_lines = ["| target | validation questions | query (text into our decoder) | box (our box into LiteMedSAM's decoder) | both | "
                  "refine (a box per part of the query's mask into LiteMedSAM's decoder) | "
                  "mask path | present / absent questions | balanced presence acc. at 0.5 | presence cut (acc.) | "
                  "mask-logit cut (Dice at 0 → at it) | component rule (Dice: as is / largest / no specks) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    thresholds, tev, cev = rules.get("thresholds", {}), rules.get("threshold_evidence", {}), rules.get("evidence", {})
    largest, specks = set(rules.get("keep_largest", [])), set(rules.get("drop_specks", []))
    for name in sorted(set(ev) | set(pev)):
        e, p = ev.get(name, {}), pev.get(name, {})
        cut = f"{pcuts[name]} ({_fmt(p.get('balanced_at_best'), 2)})" if name in pcuts else "0.5"
        t, c = tev.get(name, {}), cev.get(name, {})
        # a rule that won on all the questions but not in each half of them on its own is not kept (†)
        logit = (f"{thresholds.get(name, 0.0):g} ({_fmt(t.get('dice_at_0'))} → "
                 f"{_fmt(t.get('dice_at_best')) if name in thresholds else _fmt(t.get('dice_at_0'))})" if t else "0")
        logit += f"; {t['best_cut']:g} → {_fmt(t.get('dice_at_best'))} †" if t.get("not_in_every_fold") else ""
        rule = "keep largest" if name in largest else "drop specks" if name in specks else "none"
        comp = (f"{rule} ({_fmt(c.get('dice'))} / {_fmt(c.get('dice_largest'))} / {_fmt(c.get('dice_no_specks'))})" if c else rule)
        comp += " †" if c.get("not_in_every_fold") else ""
        chosen_path = paths.get(name, "query") + (" †" if e.get("not_in_every_fold") else "")
        path_lines.append(f"| {name} | {e.get('cases', '–')} | {_fmt(e.get('dice_query'))} | {_fmt(e.get('dice_box'))} | "
                          f"{_fmt(e.get('dice_both'))} | {_fmt(e.get('dice_refine'))} | {chosen_path} | {p.get('present_questions', '–')} / "
                          f"{p.get('absent_questions', '–')} | {_fmt(p.get('balanced_at_0.5'), 2)} | {cut} | {logit} | {comp} |")
    card = [
        "## Real images",
        "",
        "Trained and judged on twelve public datasets with expert masks in nine modalities (their citations and terms:",
        "[docs/real-data.md](../../../docs/real-data.md); **research use only**: so is this model). The images are not in this",
        "repository; the recipe reads them from a path at run time.",
        "",
        "**Protocol.** Every choice (data mix, target weights, steps, which run ships, the mask path per target) was made",
        "on the validation splits. The test splits were scored once for the shipped model, by",
        "`python scripts/train_default.py realtest`, after those choices; every model ever scored on them is listed below.",
        "The phantom test set (seed 12) steered choices of earlier runs (see the history below); it is frozen and decides",
        "nothing now. Dice is per case (a patient's images pooled), averaged over cases, with 95% bootstrap intervals.",
        "",
        f"**Test splits, words alone (\"Segment the {{target}}.\"), side by side on the same records.** References: LiteMedSAM "
        f"given the true box of each connected component of the truth (an oracle: it is told where every part is); a MONAI "
        f"U-Net trained on the same train splits (its budget, a count of steps, in `scripts/train_default.py`, `UNET_STEPS`); BiomedParse's "
        f"published numbers ({published['BiomedParse']['source']}; GPU-trained on far more data, other splits; "
        f"where its dataset differs: {'; '.join(f'{k}: {v}' for k, v in published['BiomedParse'].get('notes', {}).items())}).",
        "",
        *table,
        "",
        *unet_curve_lines(),
        "",
        f"Presence over all test questions: {_fmt(pres['present'])} of present targets called present, {_fmt(pres['absent'])} of "
        f"absent ones (other datasets' targets of another body region, and empty masks) called not found. "
        + ("Of the absent questions, those naming a target taught only on another modality are answered \"not trained "
           "for this modality\" without the model; on the {1} the model decided itself (targets taught on the image's "
           "modality, and empty masks) it was right on {0}.".format(_fmt(model_absent_overall(test_rows)[0]),
                                                                  model_absent_overall(test_rows)[1])
           if model_absent_overall(test_rows)[1] else ""),
        "",
        "**Against the bar of issue 19** (computed from the table above):",
        "",
        "| goal | result | |",
        "|---|---|---|",
        *[f"| {g} | {r} | {_met(ok)} |" for g, r, ok in goals],
        "",
        "**Mask path, presence cut, mask-logit cut and component rule per target, chosen on validation** (the decoder stage's validation questions, "
        "teacher-forced \"Segment the X.\", Dice at the 256-pixel model input; a path other than the query is kept only "
        "where it beat the query by 0.01 over at least 3 present questions; a presence cut other than 0.5 only where it "
        "raised the balanced accuracy of present and absent questions by 0.05, with 3 of each, counting only the "
        "questions the model decides itself, that is about targets taught on the image's modality; then, on the present "
        "questions and the masks the path gives, a mask-logit cut other than 0 and a component rule only where each "
        "raised mean Dice by 0.005 over at least 3 questions, in the order the predictor applies them; and a mask path, "
        "a mask-logit cut or a component rule only where its gain also held in each half of the questions on its own "
        "(halves by a hash of the record id). † marks a rule that won on all the questions but not in both halves, so "
        "was not kept. The halves check came after real4's earlier rules, chosen without it, raised validation Dice by "
        "0.014 and test Dice not at all (the log below): a test result that changed how rules are chosen, said here. "
        "The \"refine\" path is new with it, and both were chosen before this rule set was scored on test)"
        + (". A target asked on images of more than one modality has its rules chosen per modality, on that modality's "
           "validation questions alone (rows named target@modality; the predictor uses the row of the image's modality): "
           "with one set for all, the nuclei's rules were those of DSB-2018's fluorescence nuclei, most of the validation "
           "nuclei, and MoNuSeg's worst case on test showed their mask painting the H&E tissue around the nuclei, which "
           "raised the suspicion that the nuclei's shared mask-logit cut below 0 did it. That test overlay changed how "
           "rules are chosen, and is said here. "
           + ("On validation that was not borne out: on their own questions the H&E nuclei chose a cut below 0 again "
              "(their row). " if thresholds.get("nuclei@pathology", 0.0) < 0 else
              "On their own questions the H&E nuclei chose no cut below 0 (their row). ")
           + "Targets keyed by modality: "
           + ", ".join(sorted(k for k in ev if "@" in k)) + ". The rules chosen so were scored on test once (the log "
           "below):" if any("@" in k for k in ev) else ":"),
        "",
        *path_lines,
        "",
        f"**Decoder stage on the validation splits** (`python scripts/train_default.py {' then '.join(stages()) or 'real2'}`: every validation question,",
        "teacher-forced \"Segment the X.\", Dice at the model's 256-pixel input; the cuts were chosen on these same",
        "questions, so the right-hand columns flatter them; the test table above is the honest one):",
        "",
        *stage_lines(),
        "",
        "**Prompt suite on the test splits** (`rcmed.eval.prompt_suite`, in the same one scoring: "
        "`PROMPT_SUITE_PER_DATASET` test records of each dataset; one present and one absent target of each record asked "
        "in the template and in every paraphrase family; synonyms and spelling variants; two to four targets in one "
        "request against each asked alone; a name never taught; a name taught only on another modality). The request "
        "reader (`rcmed.vocabulary.read_request`) puts the families it recognises into the training template, so those "
        "rows equal the template by construction (`is-there-outline` among them since real3's test scoring showed it "
        "losing Dice as written: the language model answered the question instead); `would-like-segmented` reaches the "
        "language model as written. A request for several "
        "names is asked one name at a time (the decoder stage learnt from single-target questions), so the multi rows "
        "equal asking each alone by construction and test that every name is answered once; both changes were checked "
        "on validation before this scoring (docs/evaluation.md):",
        "",
        *prompt_suite_lines(EVAL / "real_test_prompt_suite.csv"),
        "",
        "The same suite on the fresh phantoms of the phantom check:",
        "",
        *prompt_suite_lines(EVAL / "phantom_fresh_prompt_suite.csv"),
        "",
        "**The closed loop, ablated on the validation splits** (`python scripts/train_default.py loopval`: words alone, "
        "`LOOP_VAL_PER_DATASET` records of each dataset, every variant on the same questions):",
        "",
        *loop_lines(),
        "",
        *loop_stage_lines(),
        "**Modality recognition** (`rcmed.model.modality`, used only when neither the caller nor the file names the",
        "modality):",
        "",
        *recognition_lines(),
        "",
        "**Earlier validation comparison (real1, before the decoder stage)** (mean Dice per dataset, presence at 0.5, no per-target rules):",
        "",
        *val_table(_rows(EVAL / "real_val_datasets.csv")),
        "",
        "The same validation records asked again of the shipped model with the rules chosen above:",
        "",
        *val_table(_rows(EVAL / "real_val_rules_datasets.csv")),
        "",
        "**Worst test case of each dataset** (`python scripts/train_default.py worst` paints each, the model's mask",
        "beside the expert's, into `runs/real-test/worst/`; they are not in the repository, being cut from the images):",
        "",
        *worst_lines(),
        "",
        *demo_lines(shipped_sha),
        "",
        *scale_lines(),
        "",
        *views_lines(),
        *familiarity_lines(shipped_sha),
        "**Every model scored on the real test splits:**",
        "",
        "| weights (sha256) | rules (sha256 of postprocess.json) | loop rounds | shipped | mean Dice over datasets | scored on |",
        "|---|---|---|---|---|---|",
        *[f"| `{e['sha256'][:12]}` | {_short(e.get('rules_sha256'))} | {e.get('loop_rounds', 'not logged')} | "
          f"{'yes' if e.get('shipped') else 'no'} | {_fmt(e.get('mean_dice'))} | {e.get('date', '')} |" for e in log],
        "",
        "(Rows scored before the rules and the loop rounds were logged leave them out; the same weights with other rules "
        "are another model and are scored again.)",
        "",
        f"Phantom held-out check of the shipped model (fresh seed, once): mean Dice over modalities {_fmt(phantom_mean)}.",
        "",
        f"**Which weights ship.** {choice.get('why', '(no decision recorded)')} The real-data run "
        f"(`configs/train/default_real1.json`, continued from the phantom-trained weights on the real train splits and 250 "
        f"phantoms): {len(metrics)} steps of batch 4, {_fmt(step_min, 1)} min of step time on the 2-core CPU, encoder "
        "features cached; its loss curve is `real1_loss.png`. "
        + (f"Then the decoder stage: {len(stage)} steps of 4 images (every question about each), {_fmt(stage_min, 1)} min "
           "of step time, language model states cached. " if stage else "")
        + (f"The shipped model runs {rounds} loop round{'s' if rounds != 1 else ''}: the decoder stage trains the first "
           "round's decoder only, and the second round (the found region read back by the language model) is not "
           "shipped until it is retrained and shown to help." if rounds == 1 else f"The shipped model runs {rounds} loop rounds."),
    ]
    suite = _rows(EVAL / "real_test_prompt_suite.csv")
    by_cat: dict[str, list[dict[str, str]]] = {}
    for r in suite:
        by_cat.setdefault(r["category"], []).append(r)
    suite_lines = ["| request | questions | Dice (present) | vs template | absent acc. | refused |", "|---|---|---|---|---|---|"]
    for cat, rs in by_cat.items():
        n = sum(int(r["questions"]) for r in rs)

        def mean(key: str, rs=rs) -> str:
            v = [(_f(r.get(key)), int(r["questions"])) for r in rs if _f(r.get(key)) is not None]
            return _fmt(sum(a * w for a, w in v) / sum(w for _, w in v), 3) if v else "–"
        suite_lines.append(f"| {cat} | {n} | {mean('dice')} | {mean('dice_vs_template')} | {mean('absent_accuracy')} | "
                           f"{mean('refusal_accuracy')} |")
    readme = [
        "Real test splits of twelve public datasets (words alone; generated from the model's result files by",
        "`scripts/real_card.py`; details, references and the protocol in the [model card](rcmed/weights/default/README.md)):",
        "",
        *table,
        *(["", "The same model asked in other words, on a subset of the same test records (the prompt suite; per family in "
           "the card):", "", *suite_lines] if suite else []),
        *demo_readme_lines(shipped_sha),
    ]
    return "\n".join(card), "\n".join(readme)


def demo_readme_lines(shipped_sha: str) -> list[str]:
    """One line for the README: how the shipped weights did, by eye, on `make demo`'s packaged real images."""
    seen = _demo_seen()
    if seen is None or seen["model_sha256"] != shipped_sha:
        return []
    verdicts = [c["verdict"] for c in seen["cases"].values()]
    return ["", f"On the {len(verdicts)} real images that `make demo` takes from installed packages (no expert masks, so "
                f"judged by eye on the overlays) the answer was right on {verdicts.count('right')}: "
                + "; ".join(f"{case} {c['verdict']}" for case, c in seen["cases"].items())
                + ". What was seen on each is in the model card."]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    card, readme = build()
    ok = write_block(WEIGHTS / "README.md", card, args.check) & write_block(ROOT / "README.md", readme, args.check)
    if args.check and not ok:
        print("card or README differ from the result files; run python scripts/real_card.py", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
