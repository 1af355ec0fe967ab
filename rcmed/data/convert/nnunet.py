"""nnU-Net raw folders: `dataset.json` + `imagesTr/{case}_0000.nii.gz` + `labelsTr/{case}.nii.gz`
(and `imagesTs`/`labelsTs` when present, which go to the test split).

Both dataset.json dialects are read: v2 (`"labels": {"liver": 1}`, `"channel_names"`,
`"file_ending"`) and v1 (`"labels": {"1": "liver"}`, `"modality"`). A v2 region label
(`"liver_and_tumour": [1, 2]`) becomes a target that is the union of those labels. Only channel
0 is converted; the record notes the channel name.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from rcmed.data.convert.common import case_samples
from rcmed.data.store import Sample
from rcmed.errors import CorruptFileError, EmptyInputError, RCMedInputError, ShapeMismatchError
from rcmed.io.image import Modality, parse_modality
from rcmed.io.readers import load


def _labels(spec: dict[str, object]) -> dict[str, list[int]]:
    """target name -> label values (one value, or several for a region)."""
    out: dict[str, list[int]] = {}
    for k, v in spec.items():
        if str(k).isdigit():  # v1: "1": "liver"
            if int(k) != 0:
                out[str(v)] = [int(k)]
        elif isinstance(v, list):  # v2 region
            if any(int(x) != 0 for x in v):
                out[str(k)] = [int(x) for x in v if int(x) != 0]
        elif int(v) != 0:  # type: ignore[call-overload]
            out[str(k)] = [int(v)]  # type: ignore[call-overload]
    return out


def _modality(meta: dict[str, object], override: str | None) -> Modality:
    if override:
        return parse_modality(override)
    chans = meta.get("channel_names") or meta.get("modality") or {}
    first = str(chans.get("0", "")) if isinstance(chans, dict) else ""
    try:
        return parse_modality(first) if first else Modality.UNKNOWN
    except RCMedInputError:
        return Modality.MRI if first.lower() in {"t1", "t1ce", "t1gd", "t2", "flair", "pd"} else Modality.UNKNOWN


def nnunet_samples(
    src: Path, *, modality: str | None = None, body_region: str = "unknown", keep_empty: float = 0.05, seed: int = 0,
) -> Iterator[tuple[Sample, str | None]]:
    """Yield (sample, split) for every labelled case of an nnU-Net raw dataset folder."""
    meta_path = src / "dataset.json"
    if not meta_path.is_file():
        raise EmptyInputError(src.name, "no dataset.json; not an nnU-Net raw dataset folder")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise CorruptFileError("dataset.json", f"invalid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(meta.get("labels"), dict):
        raise CorruptFileError("dataset.json", "no 'labels' mapping")
    targets = _labels(meta["labels"])
    ending = str(meta.get("file_ending", ".nii.gz"))
    mod = _modality(meta, modality)
    source = src.name
    found = 0
    for images, labels, split in (("imagesTr", "labelsTr", None), ("imagesTs", "labelsTs", "test")):
        lab_dir = src / labels
        if not lab_dir.is_dir():
            continue
        for lab_path in sorted(lab_dir.glob(f"*{ending}")):
            case = lab_path.name[: -len(ending)]
            img_path = src / images / f"{case}_0000{ending}"
            if not img_path.is_file():
                raise EmptyInputError(img_path.name, f"labels exist for case {case!r} but its image {images}/{img_path.name} is missing")
            image = load(img_path, modality=mod)
            lab = load(lab_path).array
            if lab.shape != image.array.shape:
                raise ShapeMismatchError(lab_path.name, f"label shape {lab.shape} != image shape {image.array.shape}")
            if lab.dtype.kind == "f":
                if not np.all(np.mod(lab, 1) == 0):
                    raise CorruptFileError(lab_path.name, "label map holds non-integer values")
                lab = lab.astype(np.int32)
            if all(len(v) == 1 for v in targets.values()):
                merged = lab.astype(np.int32)
                names = {v[0]: k for k, v in targets.items()}
                unknown = set(np.unique(merged).tolist()) - set(names) - {0}
                if unknown:
                    raise CorruptFileError(lab_path.name, f"label values {sorted(unknown)} are not in dataset.json labels")
                yield from ((s, split) for s in case_samples(
                    image, merged, names, case_id=case, source=source, body_region=body_region,
                    keep_empty=keep_empty, seed=seed))
            else:  # region targets may overlap, so they cannot share one label map
                yield from ((s, split) for s in _region_samples(image, lab, targets, case, source, body_region, keep_empty, seed))
            found += 1
    if not found:
        raise EmptyInputError(src.name, f"no labelled cases found (looked for labelsTr/*{ending})")


def _region_samples(image, lab, targets, case, source, body_region, keep_empty, seed) -> Iterator[Sample]:
    """Overlapping region targets: convert each target's union mask separately and merge per slice."""
    per_target = {name: np.isin(lab, vals) for name, vals in targets.items()}
    union = np.any(np.stack(list(per_target.values())), axis=0).astype(np.int32)
    # Slice selection follows the union; masks per target are rebuilt on each kept slice.
    samples = list(case_samples(image, union, {1: "__union__"}, case_id=case, source=source,
                                body_region=body_region, keep_empty=keep_empty, seed=seed))
    from rcmed.io.slices import to_slices

    stacks = {name: to_slices(image.with_array(m.astype(np.uint8))) if image.is_volume else None for name, m in per_target.items()}
    for s in samples:
        k = s.record.slice_index
        masks, present = [], []
        for name, m in per_target.items():
            m2 = (stacks[name].slices[k] if k is not None else m).astype(bool)  # type: ignore[union-attr]
            if m2.any():
                masks.append(m2)
                present.append(name)
        s.record.targets = present
        s.record.absent = [n for n in targets if n not in present]
        s.masks = np.stack(masks) if masks else np.zeros((0, *s.image.shape[:2]), bool)
        yield s
