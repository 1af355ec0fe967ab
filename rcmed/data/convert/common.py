"""Turn one image with a label map into store samples: 2-D images pass through, volumes are cut
into axial slices (or along axis 0 without orientation). Slices with no foreground are kept only
as a seeded fraction (`keep_empty`) so negatives exist without flooding the store."""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import numpy as np

from rcmed.data.store import Record, Sample, make_key
from rcmed.errors import ShapeMismatchError
from rcmed.io.image import MedicalImage
from rcmed.io.slices import to_slices


def _slice_samples(
    image2d: MedicalImage,
    labels2d: np.ndarray,
    names: dict[int, str],
    instance: bool,
    rec_base: dict[str, object],
    slice_index: int | None,
) -> Sample:
    present = [v for v in np.unique(labels2d) if v != 0]
    if instance:
        target = next(iter(names.values()), "objects")
        record = Record(**rec_base, targets=[], instance_target=target, slice_index=slice_index)  # type: ignore[arg-type]
        masks = np.zeros((0, *labels2d.shape), bool)
        inst = labels2d.astype(np.int32)
    else:
        targets = [names.get(int(v), f"label {int(v)}") for v in present]
        absent = [n for v, n in sorted(names.items()) if v not in set(int(p) for p in present)]
        record = Record(**rec_base, targets=targets, absent=absent, slice_index=slice_index)  # type: ignore[arg-type]
        masks = np.stack([labels2d == v for v in present]) if present else np.zeros((0, *labels2d.shape), bool)
        inst = None
    record.spacing = list(image2d.spacing) if image2d.spacing is not None else None
    record.orientation = image2d.orientation
    return Sample(record=record, image=np.ascontiguousarray(image2d.array), masks=masks, instances=inst)


def case_samples(
    image: MedicalImage,
    labels: np.ndarray,
    names: dict[int, str],
    *,
    case_id: str,
    source: str,
    body_region: str = "unknown",
    instance: bool = False,
    keep_empty: float = 0.05,
    seed: int = 0,
) -> Iterator[Sample]:
    """Samples for one case. `labels` has `image.spatial_shape`; `names` maps label -> target
    (for an instance map, the single object class name)."""
    if tuple(labels.shape) != image.spatial_shape:
        raise ShapeMismatchError(case_id, f"label map shape {tuple(labels.shape)} != image shape {image.spatial_shape}")
    base = {"case_id": case_id, "modality": image.modality.value, "body_region": body_region, "source": source}
    if not image.is_volume:
        yield _with_id(_slice_samples(image, labels, names, instance, {**base, "id": ""}, None), source, case_id, None)
        return
    img_stack = to_slices(image)
    lab_stack = to_slices(image.with_array(labels))
    rng = np.random.default_rng([seed, zlib.crc32(case_id.encode())])
    for k in range(len(img_stack)):
        lab = lab_stack.slices[k]
        if not lab.any() and rng.random() >= keep_empty:
            continue
        s = _slice_samples(img_stack.slice_image(k), lab, names, instance, {**base, "id": ""}, k)
        yield _with_id(s, source, case_id, k)


def _with_id(sample: Sample, source: str, case_id: str, k: int | None) -> Sample:
    sample.record.id = make_key(source, case_id, None if k is None else f"s{k:04d}")
    return sample
