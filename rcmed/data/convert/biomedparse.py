"""BiomedParse folder layout: `{split}/{id}_{modality}_{site}.png` images and
`{split}_mask/{id}_{modality}_{site}_{target}.png` binary masks (target words joined by `+`).

Split folders named train/val/valid/test set the record split; the case id is the image id.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from rcmed.data.store import Record, Sample, make_key
from rcmed.errors import EmptyInputError, RCMedInputError, ShapeMismatchError
from rcmed.io.image import Modality, parse_modality
from rcmed.io.limits import binary_mask
from rcmed.io.readers import load

_SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff"}


def _binary_mask(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    arr = load(path).array
    if arr.ndim == 3:
        arr = arr[..., 0]
    if arr.shape != shape:
        raise ShapeMismatchError(path.name, f"mask shape {arr.shape} != image shape {shape}")
    return binary_mask(arr, path.name, "BiomedParse masks are 0/255")


def biomedparse_samples(src: Path, *, modality: str | None = None, body_region: str | None = None) -> Iterator[tuple[Sample, str | None]]:
    """Yield (sample, split) for every image with at least one mask."""
    found = 0
    for split_dir in sorted(p for p in src.iterdir() if p.is_dir() and p.name.lower() in _SPLIT_NAMES):
        mask_dir = src / f"{split_dir.name}_mask"
        split = _SPLIT_NAMES[split_dir.name.lower()]
        masks_all = sorted(mask_dir.iterdir()) if mask_dir.is_dir() else []
        for img_path in sorted(p for p in split_dir.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES):
            stem = img_path.stem
            parts = stem.rsplit("_", 2)
            if len(parts) != 3:
                raise RCMedInputError(img_path.name, "expected {id}_{modality}_{site} in the image name (BiomedParse layout)")
            case, mod_name, site = parts
            try:
                mod = parse_modality(modality or mod_name)
            except RCMedInputError:
                mod = Modality.UNKNOWN
            image = load(img_path, modality=mod)
            masks, targets = [], []
            for m in masks_all:
                if m.stem.startswith(stem + "_") and m.suffix.lower() in _IMAGE_SUFFIXES:
                    masks.append(_binary_mask(m, image.spatial_shape))
                    targets.append(m.stem[len(stem) + 1:].replace("+", " "))
            if not masks:
                continue
            record = Record(
                id=make_key(src.name, stem), case_id=case, modality=image.modality.value, targets=targets,
                body_region=body_region or site.lower(), source=src.name,
            )
            yield Sample(record=record, image=image.array, masks=np.stack(masks)), split
            found += 1
    if not found:
        raise EmptyInputError(src.name, "no image with masks found (expected train/ and train_mask/ folders, BiomedParse layout)")
