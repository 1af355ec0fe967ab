"""Instance-label folders in the Cellpose convention: `{name}_img.{png,tif}` beside
`{name}_masks.{png,tif}`, where the mask is a label map (0 background, 1..N one object each)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from rcmed.data.store import Record, Sample, make_key
from rcmed.errors import EmptyInputError, InvalidMaskError, ShapeMismatchError
from rcmed.io.readers import load

_SUFFIXES = (".png", ".tif", ".tiff")


def instance_samples(
    src: Path, *, target: str = "cells", modality: str | None = "microscopy", body_region: str = "cells",
) -> Iterator[tuple[Sample, str | None]]:
    """Yield (sample, None) for each `_img`/`_masks` pair in `src` (recursively)."""
    found = 0
    for img_path in sorted(p for p in src.rglob("*_img.*") if p.suffix.lower() in _SUFFIXES):
        base = img_path.name[: img_path.name.rindex("_img.")]
        mask_path = next((img_path.with_name(f"{base}_masks{s}") for s in _SUFFIXES
                          if img_path.with_name(f"{base}_masks{s}").is_file()), None)
        if mask_path is None:
            raise EmptyInputError(img_path.name, f"no {base}_masks.png/.tif beside it")
        image = load(img_path, modality=modality)
        if image.is_volume:
            raise ShapeMismatchError(img_path.name, "3-D instance stacks are not supported; save 2-D planes")
        labels = load(mask_path).array
        if labels.shape != image.spatial_shape:
            raise ShapeMismatchError(mask_path.name, f"label map shape {labels.shape} != image shape {image.spatial_shape}")
        if labels.dtype.kind not in "ui":
            raise InvalidMaskError(mask_path.name, f"instance label map must be integer, got {labels.dtype}")
        rel = img_path.parent.relative_to(src)
        case = make_key(*rel.parts, base)
        record = Record(id=make_key(src.name, case), case_id=case, modality=image.modality.value,
                        instance_target=target, body_region=body_region, source=src.name,
                        spacing=list(image.spacing) if image.spacing else None)
        yield Sample(record=record, image=image.array, masks=np.zeros((0, *labels.shape), bool),
                     instances=labels.astype(np.int32)), None
        found += 1
    if not found:
        raise EmptyInputError(src.name, "no *_img.png/.tif files found (Cellpose instance-folder layout)")
