"""File-level colour-region description (what `rcmed data describe` runs): read an image and its
masks, describe them, write `overlay.png` and `description.json`. All I/O for `describe` lives
here so that `rcmed.data.describe` stays pure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rcmed.data.describe import Description, describe, describe_instances
from rcmed.errors import InvalidMaskError, RCMedInputError, ShapeMismatchError
from rcmed.io.atomic import atomic_path
from rcmed.io.image import MedicalImage
from rcmed.io.limits import binary_mask
from rcmed.io.normalize import normalize
from rcmed.io.readers import load
from rcmed.io.slices import to_slices
from rcmed.overlay import paint


def _plane(img: MedicalImage, slice_index: int | None, what: str) -> MedicalImage:
    if not img.is_volume:
        if slice_index is not None:
            raise RCMedInputError(what, "--slice given but the image is 2-D")
        return img
    if slice_index is None:
        raise RCMedInputError(what, f"is a volume with {img.n_slices} slices; pass --slice K")
    stack = to_slices(img)
    if not 0 <= slice_index < len(stack):
        raise RCMedInputError(what, f"slice {slice_index} out of range 0..{len(stack) - 1}")
    return stack.slice_image(slice_index)


def _mask_2d(path: Path, slice_index: int | None, shape: tuple[int, ...]) -> np.ndarray:
    m = _plane(load(path), slice_index, path.name)
    arr = m.array[..., 0] if m.rgb else m.array
    if arr.shape != shape:
        raise ShapeMismatchError(path.name, f"mask shape {arr.shape} != image shape {shape}")
    return arr


def describe_files(
    image_path: Path,
    masks: list[Path],
    names: list[str],
    out: Path,
    *,
    instances: Path | None = None,
    labels: Path | None = None,
    modality: str | None = None,
    spacing: tuple[float, float] | None = None,
    slice_index: int | None = None,
    mode: str = "fill",
    seed: int = 0,
) -> Description:
    """Describe masks (or an instance map, or a semantic label map whose value k is `names[k-1]`)
    over an image file; write the overlay and JSON."""
    from PIL import Image

    img = _plane(load(image_path, modality=modality), slice_index, image_path.name)
    shape = img.spatial_shape
    x = normalize(img)
    sp = spacing or (img.spacing if img.spacing else None)
    if labels is not None:
        if masks or instances is not None:
            raise RCMedInputError("--labels", "give one of --mask, --labels or --instances")
        if not names:
            raise RCMedInputError("--name", "--labels needs one --name per label value 1, 2, ...")
        lab = _mask_2d(labels, slice_index, shape)
        if lab.dtype.kind not in "ui":
            raise InvalidMaskError(labels.name, f"label map must be integer, got {lab.dtype}")
        unknown = sorted(set(np.unique(lab).tolist()) - set(range(len(names) + 1)))
        if unknown:
            raise InvalidMaskError(labels.name, f"label values {unknown[:5]} have no --name (got {len(names)} names)")
        masks_from_labels = [lab == k for k in range(1, len(names) + 1)]
    if instances is not None:
        if masks:
            raise RCMedInputError("--instances", "give either --mask files or --instances, not both")
        if len(names) > 1:
            raise RCMedInputError("--name", "--instances takes one --name (the object class)")
        labels = _mask_2d(instances, slice_index, shape)
        if labels.dtype.kind not in "ui":
            raise InvalidMaskError(instances.name, f"instance label map must be integer, got {labels.dtype}")
        desc = describe_instances(labels, names[0] if names else "objects", image=x, modality=img.modality.value,
                                  spacing=sp, seed=seed)  # type: ignore[arg-type]
        overlay = paint(x, [labels > 0], mode="outline") if mode == "outline" else _paint_instances(x, labels)
    else:
        if labels is not None:
            bool_masks = masks_from_labels
        else:
            if not masks:
                raise RCMedInputError("--mask", "give at least one --mask (or --labels / --instances)")
            if len(names) != len(masks):
                raise RCMedInputError("--name", f"{len(masks)} --mask but {len(names)} --name; give one name per mask")
            bool_masks = [binary_mask(_mask_2d(p, slice_index, shape), p.name) for p in masks]
        desc = describe(x, bool_masks, names, modality=img.modality.value, spacing=sp,  # type: ignore[arg-type]
                        orientation=img.orientation if img.orientation and len(img.orientation) == 2 else None, seed=seed)
        overlay = paint(x, bool_masks, mode=mode)  # type: ignore[arg-type]
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "overlay.png") as tmp:
        Image.fromarray(overlay).save(tmp, format="PNG")
    with atomic_path(out / "description.json") as tmp:
        tmp.write_text(json.dumps(_public_json(desc), indent=2))
    return desc


def _paint_instances(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Instances filled in the class colour with each object's outline drawn, so touching objects stay apart."""
    from skimage.segmentation import find_boundaries

    rgb = paint(x, [labels > 0], mode="fill")
    rgb[find_boundaries(labels, mode="inner")] = (255, 255, 255)
    return rgb


def _public_json(desc: Description) -> dict[str, object]:
    """The documented description.json layout (the `regions` entries also carry all measurements)."""
    full = desc.to_json()
    regions = []
    for r in full["regions"]:  # type: ignore[union-attr]
        regions.append({"name": r["name"], "colour": r["colour"], "present": r["present"], "text": r["text"],
                        "area_px": r["area_px"], "area_mm2": r["area_mm2"], "count": r["count"] if r["count"] is not None else (r["n_components"] if r["present"] else 0),
                        "box": r["box"], "shape": r["shape"], "position": r["grid_position"],
                        "measurements": {k: r[k] for k in ("circularity", "solidity", "eccentricity", "axis_ratio",
                                                           "orientation_deg", "boundary", "intensity", "contrast",
                                                           "patient_position", "share_image", "parent", "share_parent",
                                                           "relations", "size_median_px", "size_cv", "distribution")}})
    return {"text": full["text"], "regions": regions}
