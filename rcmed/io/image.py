"""The one image type RCMed passes around: pixels plus the geometry needed to measure them.

Conventions (used everywhere in RCMed):
- `array` axes: a 2-D image is `(H, W)` or `(H, W, C)` with C in {3, 4} (RGB/RGBA, `rgb=True`);
  a volume is `(A0, A1, A2)` in the axis order of its file (a DICOM series: slice, row, column;
  a NIfTI: i, j, k). Values are in physical units where the file defines them (CT: Hounsfield).
- `affine`: (4, 4) maps an array index `(a0, a1, a2, 1)` to patient coordinates in mm in the
  DICOM **LPS** convention (+x left, +y posterior, +z superior). A 2-D image uses `(row, col, 0)`.
- `spacing`: mm per spatial array axis, in array-axis order; `None` when the file carries none.
- `orientation`: the patient direction each spatial axis increases towards, as RAS letters in
  array-axis order (e.g. "SPL" for an axial DICOM series), or `None` when unknown.

This module holds no I/O; readers live in `rcmed.io.readers`, writers in `rcmed.io.writers`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path

import numpy as np

from rcmed.errors import UnknownModalityError


class Modality(str, Enum):
    """Imaging modalities RCMed knows. `UNKNOWN` means the file did not say and nobody told us."""

    CT = "ct"
    MRI = "mri"
    XRAY = "xray"
    ULTRASOUND = "ultrasound"
    PET = "pet"
    PATHOLOGY = "pathology"
    MICROSCOPY = "microscopy"
    DERMOSCOPY = "dermoscopy"
    ENDOSCOPY = "endoscopy"
    FUNDUS = "fundus"
    UNKNOWN = "unknown"

    @property
    def is_rgb_modality(self) -> bool:
        """Colour photographs/scans whose pixel values are already display values."""
        return self in (Modality.PATHOLOGY, Modality.DERMOSCOPY, Modality.ENDOSCOPY, Modality.FUNDUS)


_ALIASES = {
    "ct": Modality.CT, "mr": Modality.MRI, "mri": Modality.MRI, "t1": Modality.MRI, "t2": Modality.MRI,
    "flair": Modality.MRI, "adc": Modality.MRI, "dwi": Modality.MRI,
    "xray": Modality.XRAY, "x-ray": Modality.XRAY, "cr": Modality.XRAY, "dx": Modality.XRAY,
    "mg": Modality.XRAY, "rf": Modality.XRAY, "xa": Modality.XRAY, "mammography": Modality.XRAY,
    "us": Modality.ULTRASOUND, "ultrasound": Modality.ULTRASOUND,
    "pet": Modality.PET, "pt": Modality.PET,
    "pathology": Modality.PATHOLOGY, "sm": Modality.PATHOLOGY, "histology": Modality.PATHOLOGY,
    "he": Modality.PATHOLOGY,
    "microscopy": Modality.MICROSCOPY, "fluorescence": Modality.MICROSCOPY,
    "dermoscopy": Modality.DERMOSCOPY, "dermatology": Modality.DERMOSCOPY,
    "endoscopy": Modality.ENDOSCOPY, "es": Modality.ENDOSCOPY, "colonoscopy": Modality.ENDOSCOPY,
    "fundus": Modality.FUNDUS, "op": Modality.FUNDUS, "oct": Modality.FUNDUS,
    "unknown": Modality.UNKNOWN,
}


def parse_modality(name: str | Modality | None) -> Modality:
    """Map a modality name or DICOM code (`"CT"`, `"MR"`, `"t2"`, `"fundus"`) to `Modality`.

    Raises `UnknownModalityError` for a name that is none of them, listing the valid ones.
    """
    if name is None:
        return Modality.UNKNOWN
    if isinstance(name, Modality):
        return name
    key = str(name).strip().lower().replace("_", "-")
    if key in _ALIASES:
        return _ALIASES[key]
    valid = ", ".join(m.value for m in Modality)
    raise UnknownModalityError("modality", f"unknown modality {name!r}; use one of: {valid}")


LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True, eq=False)
class MedicalImage:
    """Pixels, geometry, modality and a small non-identifying metadata dict.

    `array`: see the module docstring for axis order. `affine`: (4, 4) index -> LPS mm.
    `metadata`: only whitelisted, non-identifying fields (never names, IDs, dates).
    `source_files`: files this image was read from, kept so a DICOM-SEG can reference its series;
    never printed or exported (excluded from `repr` and `summary`).
    """

    array: np.ndarray
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    modality: Modality = Modality.UNKNOWN
    rgb: bool = False
    spacing_known: bool = False
    orientation_known: bool = False
    metadata: dict[str, str | int | float] = field(default_factory=dict)
    source_files: tuple[Path, ...] = field(default=(), repr=False)

    @property
    def spatial_ndim(self) -> int:
        """2 for images (grey or RGB), 3 for volumes."""
        return self.array.ndim - (1 if self.rgb else 0)

    @property
    def is_volume(self) -> bool:
        return self.spatial_ndim == 3

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.array.shape[: self.spatial_ndim])

    @property
    def spacing(self) -> tuple[float, ...] | None:
        """mm per spatial array axis, array-axis order; None when the file gave no spacing."""
        if not self.spacing_known:
            return None
        norms = np.linalg.norm(self.affine[:3, : self.spatial_ndim], axis=0)
        return tuple(float(round(n, 6)) for n in norms)

    @property
    def origin(self) -> tuple[float, float, float]:
        """LPS position (mm) of the centre of voxel index 0."""
        return tuple(float(v) for v in self.affine[:3, 3])  # type: ignore[return-value]

    @property
    def direction(self) -> np.ndarray:
        """(3, 3): column k is the unit LPS direction in which array axis k increases."""
        m = self.affine[:3, :3]
        return m / np.linalg.norm(m, axis=0, keepdims=True)

    @property
    def orientation(self) -> str | None:
        """RAS letters for the spatial axes ("SPL", "RAS", "PL" for a 2-D slice), or None."""
        if not self.orientation_known:
            return None
        import nibabel.orientations as nio

        codes = nio.aff2axcodes(LPS_TO_RAS @ self.affine)
        return "".join(codes[: self.spatial_ndim])

    @property
    def slice_axis(self) -> int | None:
        """Array axis of the default slicing: the one closest to superior-inferior (axial slices)
        when the orientation is known, else axis 0; None for a 2-D image."""
        if not self.is_volume:
            return None
        if not self.orientation_known:
            return 0
        return int(np.argmax(np.abs(self.direction[2, :3])))

    @property
    def n_slices(self) -> int:
        """Number of 2-D slices along `slice_axis`; 1 for a 2-D image."""
        axis = self.slice_axis
        return 1 if axis is None else self.spatial_shape[axis]

    def with_array(self, array: np.ndarray) -> "MedicalImage":
        """Same geometry and metadata, new pixels (same spatial shape)."""
        return replace(self, array=array)

    def summary(self) -> dict[str, object]:
        """What `rcmed info` prints: geometry and value statistics, no patient data."""
        finite = self.array[np.isfinite(self.array)] if self.array.dtype.kind == "f" else self.array
        value_range = [float(finite.min()), float(finite.max())] if finite.size else None
        return {
            "shape": list(self.array.shape),
            "spatial_shape": list(self.spatial_shape),
            "dtype": str(self.array.dtype),
            "rgb": self.rgb,
            "spacing": list(self.spacing) if self.spacing is not None else None,
            "origin": list(self.origin) if self.orientation_known else None,
            "orientation": self.orientation,
            "modality": self.modality.value,
            "value_range": value_range,
            "n_slices": self.n_slices,
            "metadata": dict(self.metadata),
        }


def affine_from_spacing(spacing: tuple[float, ...] | None, ndim: int) -> np.ndarray:
    """Diagonal affine for an image with known (or unit) spacing and no known orientation."""
    aff = np.eye(4)
    if spacing is not None:
        for k, s in enumerate(spacing[:3]):
            aff[k, k] = float(s)
    return aff
