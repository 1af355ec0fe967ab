"""Volumes to 2-D slices along a chosen plane or axis, and back, keeping geometry.

With known orientation, `to_slices(vol, "axial")` reorients (never resamples) so every slice is
shown the radiological way whatever the file's voxel order: rows run anterior->posterior, columns
patient right->left, slices inferior->superior (coronal: rows superior->inferior, columns right->
left; sagittal: rows superior->inferior, columns anterior->posterior). `from_slices` undoes the
reorientation exactly, so a mask stacked from slice predictions lies on the source voxels.
nibabel's orientation tools do the axis bookkeeping.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rcmed.errors import RCMedInputError, ShapeMismatchError
from rcmed.io.image import LPS_TO_RAS, MedicalImage

# Target RAS axis codes (slice axis, row axis, column axis) per plane.
PLANES: dict[str, tuple[str, str, str]] = {
    "axial": ("S", "P", "L"),
    "coronal": ("P", "I", "L"),
    "sagittal": ("L", "I", "P"),
}


@dataclass(frozen=True, eq=False)
class SliceStack:
    """2-D slices of a volume and what is needed to put masks back.

    `slices`: (N, H, W) (or (N, H, W, C) for RGB). `affine`: (4, 4) LPS affine of `slices`
    treated as a volume (slice, row, col). `transform`: nibabel orientation transform from the
    source layout to the slice layout. `source_shape`: spatial shape of the source volume.
    """

    slices: np.ndarray
    affine: np.ndarray
    transform: np.ndarray
    source_shape: tuple[int, ...]
    source: MedicalImage

    def __len__(self) -> int:
        return int(self.slices.shape[0])

    def slice_image(self, index: int) -> MedicalImage:
        """Slice `index` as a 2-D `MedicalImage` with its own in-plane geometry."""
        aff = np.eye(4)
        aff[:3, 0] = self.affine[:3, 1]
        aff[:3, 1] = self.affine[:3, 2]
        aff[:3, 2] = self.affine[:3, 0]
        aff[:3, 3] = self.affine[:3, 3] + self.affine[:3, 0] * index
        src = self.source
        meta = dict(src.metadata)
        meta["slice_index"] = index
        return MedicalImage(
            array=self.slices[index], affine=aff, modality=src.modality, rgb=src.rgb,
            spacing_known=src.spacing_known, orientation_known=src.orientation_known,
            metadata=meta, source_files=src.source_files,
        )


def _ornt(image: MedicalImage):
    import nibabel.orientations as nio

    return nio.io_orientation(LPS_TO_RAS @ image.affine)


def to_slices(image: MedicalImage, plane: str | int | None = None) -> SliceStack:
    """Cut a volume into 2-D slices.

    Args:
        image: a volume (`image.is_volume`).
        plane: "axial", "coronal" or "sagittal" (needs known orientation), or an array axis 0/1/2
            (slices taken along that axis, no reorientation). None: axial when the orientation is
            known, else axis 0.
    Returns:
        SliceStack with `slices` (N, H, W).
    """
    import nibabel.orientations as nio

    if not image.is_volume:
        raise RCMedInputError("image", f"to_slices needs a volume; got a 2-D image of shape {image.array.shape}")
    if plane is None:
        plane = "axial" if image.orientation_known else 0
    cur = _ornt(image)
    if isinstance(plane, str):
        if plane not in PLANES:
            raise RCMedInputError("plane", f"unknown plane {plane!r}; use one of {sorted(PLANES)} or an axis 0/1/2")
        if not image.orientation_known:
            raise RCMedInputError("plane", f"the image has no known orientation, so {plane!r} is undefined; pass an array axis 0/1/2")
        target = nio.axcodes2ornt(PLANES[plane])
        transform = nio.ornt_transform(cur, target)
    else:
        if plane not in (0, 1, 2):
            raise RCMedInputError("axis", f"axis must be 0, 1 or 2, got {plane}")
        order = [plane] + [a for a in range(3) if a != plane]
        # A pure axis permutation: output axis k takes input axis order[k].
        transform = np.array([[float(order.index(i)), 1.0] for i in range(3)])
    arr = image.array
    spatial = image.spatial_shape
    out = nio.apply_orientation(arr, transform)
    aff_ras = (LPS_TO_RAS @ image.affine) @ nio.inv_ornt_aff(transform, spatial)
    return SliceStack(
        slices=np.ascontiguousarray(out), affine=LPS_TO_RAS @ aff_ras, transform=transform,
        source_shape=spatial, source=image,
    )


def from_slices(slices: np.ndarray, stack: SliceStack) -> np.ndarray:
    """Stack per-slice arrays (N, H, W), in `stack`'s layout, back into the source voxel order."""
    import nibabel.orientations as nio

    expected = stack.slices.shape[:3]
    if tuple(slices.shape[:3]) != tuple(expected):
        raise ShapeMismatchError("slices", f"got shape {tuple(slices.shape)}, expected {tuple(expected)} (the SliceStack's)")
    # `transform` maps source -> slices; its inverse maps slices -> source.
    return np.ascontiguousarray(nio.apply_orientation(slices, _invert(stack.transform)))


def _invert(transform: np.ndarray) -> np.ndarray:
    """Inverse of a nibabel orientation transform ([[out_axis, flip], ...] per input axis)."""
    inv = np.zeros_like(transform)
    for in_axis, (out_axis, flip) in enumerate(transform):
        inv[int(out_axis)] = [in_axis, flip]
    return inv
