"""`rcmed demo`: the default model on the bundled sample images of several modalities.

For each case of `rcmed/samples/demo/demo.json` (a CT volume, 2-D MRI, X-ray, ultrasound,
dermoscopy, endoscopy, fundus and pathology phantoms never used in training, and a held-out tile
of the real DSB-2018 nuclei image) it asks the case's prompt, writes masks, overlay and
`answer.json` into `OUT/<case>/` exactly as `rcmed segment` does, scores each named target
against the true mask (Dice; presence for targets the image does not hold), and writes
`OUT/summary.json` and `OUT/summary.md`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rcmed.eval.metrics import dice
from rcmed.io.readers import load
from rcmed.predictor import Predictor
from rcmed.segment_files import segment_file

SAMPLES = Path(__file__).resolve().parent / "samples" / "demo"


@dataclass
class DemoRow:
    case: str
    modality: str
    prompt: str
    answer: str
    targets: list[dict[str, object]]
    seconds: float


def run_demo(out: str | Path, model: str | Path = "default", samples: Path = SAMPLES) -> list[DemoRow]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cases = json.loads((samples / "demo.json").read_text())
    predictor = Predictor.from_pretrained(model)
    rows = []
    for c in cases:
        stem = c["file"].split(".")[0]
        t0 = time.perf_counter()
        answer, _ = segment_file(predictor, samples / c["file"], c["prompt"], out / stem, modality=c["modality"])
        seconds = time.perf_counter() - t0
        targets = []
        for t in answer.targets:
            row: dict[str, object] = {"name": t.name, "found": t.present, "presence": round(t.presence, 3)}
            if t.name in c["truth"]:
                truth = load(samples / c["truth"][t.name]).array > 0
                pred = t.mask if t.mask is not None else np.zeros(truth.shape, bool)
                row["dice"] = round(dice(pred, truth), 3)
                row["truth"] = "present"
            elif t.name in c.get("absent", []):
                row["truth"] = "absent"
                row["correct"] = not t.present
            else:
                row["truth"] = "unknown"  # a name the sample has no label for
            if t.volume_ml is not None:
                row["volume_ml"] = round(t.volume_ml, 2)
            targets.append(row)
        rows.append(DemoRow(stem, c["modality"], c["prompt"], answer.text, targets, round(seconds, 2)))
    (out / "summary.json").write_text(json.dumps([r.__dict__ for r in rows], indent=1) + "\n")
    (out / "summary.md").write_text(format_summary(rows, out) + "\n")
    return rows


def _target_cell(t: dict[str, object]) -> str:
    if t["truth"] == "present":
        return f"{t['name']}: Dice {t['dice']:.2f}" + (f", {t['volume_ml']} mL" if "volume_ml" in t else "")
    if t["truth"] == "absent":
        said = "not found" if not t["found"] else "FOUND"
        return f"{t['name']}: {said} (absent: {'correct' if t['correct'] else 'wrong'})"
    return f"{t['name']}: {'found' if t['found'] else 'not found'}"


def format_summary(rows: list[DemoRow], out: Path) -> str:
    """One screen: per case the prompt, the answer and each target's score."""
    lines = [f"RCMed demo: {len(rows)} images, results in {out}/", ""]
    for r in rows:
        ans = r.answer if len(r.answer) <= 90 else r.answer[:87] + "..."
        lines.append(f"{r.case:<20} {r.modality:<10} {r.prompt}")
        lines.append(f"{'':<20} answer: {ans}")
        cells = "; ".join(_target_cell(t) for t in r.targets) or "no target named"
        lines.append(f"{'':<20} {cells}  [{r.seconds:.1f} s]")
    dices = [t["dice"] for r in rows for t in r.targets if "dice" in t]
    absent = [t["correct"] for r in rows for t in r.targets if "correct" in t]
    lines += ["", f"mean Dice over {len(dices)} present targets: {np.mean(dices):.3f}" if dices else "no present target scored",
              f"absent targets answered 'not found': {sum(absent)}/{len(absent)}" if absent else ""]
    return "\n".join(lines).rstrip()
