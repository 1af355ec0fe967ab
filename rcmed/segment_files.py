"""What `rcmed segment` does with files: run the predictor on one input and write the overlay,
one mask per target (PNG for 2-D, NIfTI or DICOM-SEG for volumes) and `answer.json`."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from rcmed.errors import RCMedInputError
from rcmed.io.image import MedicalImage
from rcmed.io.readers import load
from rcmed.io.slices import to_slices
from rcmed.io.writers import write_dicom_seg, write_mask_png, write_nifti, write_overlay_png
from rcmed.predictor import Answer, Predictor, save_answer_json

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".nii", ".nii.gz", ".dcm", ".npz")


def batch_inputs(path: Path) -> list[Path] | None:
    """Files to process one by one when `path` is a folder of images (not one DICOM series);
    None for a single file or a DICOM series folder."""
    from rcmed.io.dicom import looks_like_dicom

    if not path.is_dir():
        return None
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    if files and all(looks_like_dicom(p) for p in files):
        return None
    images = [p for p in files if p.name.lower().endswith(IMAGE_SUFFIXES)]
    if not images:
        raise RCMedInputError(path.name, "folder holds no images (and is not a DICOM series)")
    return images


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").lower() or "target"


def check_out(out: Path) -> None:
    """Refuse an output folder that cannot be one before any work is done: an existing file, a path
    under a file, or a folder that cannot be written."""
    for p in [out, *out.parents]:
        if p.exists():
            if not p.is_dir():
                raise RCMedInputError("--out", f"{p} is a file, not a folder; give a folder for the results")
            if not os.access(p, os.W_OK | os.X_OK):
                raise RCMedInputError("--out", f"cannot write into {p} (permission denied)")
            return


def make_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RCMedInputError("--out", f"cannot create {out}: {err.strerror or err}") from None


def mask_format(image: MedicalImage, fmt: str = "auto") -> str:
    """The mask file format for `image`: "png" for 2-D; "dicom-seg" (a DICOM series) or "nifti" for
    volumes. An explicit `fmt` that cannot hold the image is refused before any work is done."""
    if image.is_volume:
        fmt = ("dicom-seg" if image.metadata.get("format") == "dicom" else "nifti") if fmt == "auto" else fmt
        if fmt not in ("nifti", "dicom-seg"):
            raise RCMedInputError("--format", f"volumes are written as nifti or dicom-seg, not {fmt!r}")
        return fmt
    if fmt not in ("auto", "png"):
        raise RCMedInputError("--format", f"2-D masks are written as png, not {fmt!r}")
    return "png"


def write_answer(predictor: Predictor, answer: Answer, image: MedicalImage, out: Path,
                 fmt: str = "auto") -> dict[str, object]:
    """Write one mask file per found target (PNG for 2-D; NIfTI, or one DICOM-SEG for a DICOM series),
    `overlay.png` (a volume's middle axial slice) and `answer.json` into `out` (created); return the JSON.
    The only writer of answer files: the CLI, the demo and `segment_file` use it."""
    fmt = mask_format(image, fmt)
    make_out(out)
    present = [t for t in answer.targets if t.mask is not None]
    files: list[str | None] = [None] * len(answer.targets)
    if fmt == "dicom-seg" and present:
        write_dicom_seg(out / "seg.dcm", {t.name: t.mask for t in present}, image)
        files = ["seg.dcm" if t.mask is not None else None for t in answer.targets]
    else:
        for k, t in enumerate(answer.targets):
            if t.mask is None:
                continue
            if fmt == "png":
                files[k] = f"mask_{k}_{_safe(t.name)}.png"
                write_mask_png(out / files[k], t.mask)
            else:
                files[k] = f"mask_{k}_{_safe(t.name)}.nii.gz"
                write_nifti(out / files[k], t.mask.astype(np.uint8), image)
    if image.is_volume:
        stack = to_slices(image)
        mid = len(stack) // 2
        write_overlay_png(out / "overlay.png", stack.slice_image(mid),
                          [to_slices(image.with_array(t.mask)).slices[mid] for t in present])
    else:
        write_overlay_png(out / "overlay.png", image, [t.mask for t in present])
    data = predictor.answer_json(answer, files)
    save_answer_json(out / "answer.json", data)
    return data


def segment_file(predictor: Predictor, path: Path, prompt: str, out: Path, *, modality: str | None = None,
                 boxes: list[list[float]] | None = None, fmt: str = "auto") -> tuple[Answer, dict[str, object]]:
    """Answer `prompt` about the file at `path`; write results into `out`; return (answer, answer.json).
    The folder and the format are checked first, and the folder is created only once there is an answer
    to write (a failed run leaves none)."""
    check_out(out)
    image = load(path, modality=modality)
    mask_format(image, fmt)
    answer = predictor.answer(image, prompt, boxes=boxes)
    return answer, write_answer(predictor, answer, image, out, fmt)


def known_targets(model_folder: Path, modality: str) -> list[str]:
    """Target names the model was trained on for `modality` (`targets.json` beside its weights)."""
    f = model_folder / "targets.json"
    if not f.is_file():
        return []
    return list(json.loads(f.read_text()).get(modality, []))


def describe_file(predictor: Predictor, path: Path, targets: list[str], out: Path | None = None, *,
                  modality: str | None = None) -> tuple[list, object]:
    """Find each named target with the model ("Segment the {name}."), then describe the regions
    it found with the colour-region description engine, so every size, position and shape in
    the text is measured on the model's own masks. Returns (answer targets, Description); with
    `out`, writes overlay.png, one PNG per found target and description.json."""
    from rcmed.data.describe import describe
    from rcmed.io.normalize import normalize

    if not targets:
        raise RCMedInputError("--target", "name what to look for (--target NAME); this model lists no known "
                              "targets for the image's modality")
    if out is not None:
        check_out(out)
    image = load(path, modality=modality)
    if image.is_volume:
        raise RCMedInputError(path.name, "is a volume; describe one slice (save it as 2-D) or use rcmed segment")
    predictor.set_image(image)
    found = []
    for name in targets:
        answer = predictor.predict(f"Segment the {name}.")
        # a present target always has a non-empty mask (Predictor.predict reports the rest as not found)
        found.append((name, next((t for t in answer.targets if t.present), answer.targets[0] if answer.targets else None)))
    present = [(name, t) for name, t in found if t is not None and t.present]
    names = [n for n, _ in present] + [n for n, t in found if t is None or not t.present]
    empty = np.zeros(image.spatial_shape, bool)
    masks = [t.mask for _, t in present] + [empty] * (len(found) - len(present))
    desc = describe(normalize(image), masks, names, modality=image.modality.value,
                    spacing=image.spacing if image.spacing else None,
                    orientation=image.orientation)
    if out is not None:
        make_out(out)
        for k, (name, t) in enumerate(present):
            write_mask_png(out / f"mask_{k}_{_safe(name)}.png", t.mask)
        write_overlay_png(out / "overlay.png", image, [t.mask for _, t in present])
        doc = {"model": {"name": predictor.name, "sha256": predictor.sha256}, **desc.to_json(),
               "presence": {n: (round(t.presence, 4) if t is not None else 0.0) for n, t in found}}
        save_answer_json(out / "description.json", doc)
    return found, desc
