"""`rcmed demo`: the default model on the bundled sample images of several modalities.

For each case of `rcmed/samples/demo/demo.json` (a CT volume, 2-D MRI, X-ray, ultrasound,
dermoscopy, endoscopy, fundus and pathology phantoms never used in training, and a held-out tile
of the real DSB-2018 nuclei image), and for real images that installed packages ship (scikit-image's
fundus photograph, immunohistochemistry and cell images; pydicom's CT and MR test files) it asks the case's prompt, writes masks, overlay and
`answer.json` into `OUT/<case>/` exactly as `rcmed segment` does, scores each named target
against the true mask where there is one (Dice; presence for targets the image does not hold; the package
images have no expert mask and are shown, not scored), and writes
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


# Real images that ship inside installed packages (read from them at run time, never copied here), asked as a
# user would; they carry no expert mask, so they are shown, not scored.
PACKAGE_CASES = [
    ("real_fundus_skimage", "skimage:retina", "fundus", "Segment the optic disc and the vessels."),
    ("real_ihc_skimage", "skimage:immunohistochemistry", "pathology", "Segment the nuclei."),
    ("real_cell_skimage", "skimage:cell", "microscopy", "Segment the nuclei."),
    ("real_ct_pydicom", "pydicom:CT_small.dcm", "ct", "Segment the liver."),
    ("real_mr_pydicom", "pydicom:MR_small.dcm", "mri", "Segment the brain."),
]


def package_image(source: str, folder: Path) -> Path | None:
    """A file holding the packaged real image `source` ("skimage:NAME" or "pydicom:FILE"); None when the
    package or the file is not installed (the case is then skipped, saying so)."""
    kind, name = source.split(":", 1)
    try:
        if kind == "pydicom":
            from pydicom.data import get_testdata_file

            found = get_testdata_file(name, download=False)
            return Path(found) if found else None
        import skimage.data
        from PIL import Image

        arr = getattr(skimage.data, name)()
        path = folder / f"{name}.png"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(arr)).save(path)
        return path
    except (ImportError, AttributeError, OSError, ValueError):
        return None


def run_demo(out: str | Path, model: str | Path = "default", samples: Path = SAMPLES,
             packages: list[tuple[str, str, str, str]] | None = None) -> list[DemoRow]:
    """`packages`: the packaged real images to show (default `PACKAGE_CASES`; [] for none)."""
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
    for stem, source, modality, prompt in PACKAGE_CASES if packages is None else packages:
        path = package_image(source, out / stem / "input")
        if path is None:
            rows.append(DemoRow(stem, modality, prompt, f"skipped: {source} is not installed", [], 0.0))
            continue
        t0 = time.perf_counter()
        answer, _ = segment_file(predictor, path, prompt, out / stem, modality=modality)
        targets = [{"name": t.name, "found": t.present, "presence": round(t.presence, 3), "truth": "unknown",
                    **({"area_px": t.area_px} if t.area_px is not None else {})} for t in answer.targets]
        rows.append(DemoRow(stem, modality, prompt, answer.text, targets, round(time.perf_counter() - t0, 2)))
    (out / "summary.json").write_text(json.dumps([r.__dict__ for r in rows], indent=1) + "\n")
    (out / "summary.md").write_text(format_summary(rows, out) + "\n")
    return rows


def _target_cell(t: dict[str, object]) -> str:
    if t["truth"] == "present":
        return f"{t['name']}: Dice {t['dice']:.2f}" + (f", {t['volume_ml']} mL" if "volume_ml" in t else "")
    if t["truth"] == "absent":
        said = "not found" if not t["found"] else "FOUND"
        return f"{t['name']}: {said} (absent: {'correct' if t['correct'] else 'wrong'})"
    return f"{t['name']}: {'found' if t['found'] else 'not found'} (no expert mask)"


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
