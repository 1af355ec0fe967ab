"""Size limits checked against file headers before any pixel data is decoded."""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from pathlib import Path

import numpy as np

from rcmed.errors import EmptyInputError, ImageTooLargeError, InvalidMaskError, NonFiniteError


@dataclass(frozen=True)
class ReadLimits:
    """`max_voxels` caps the element count a header may announce (2**30 ~ a 1024^3 volume);
    `max_side` caps any single axis. Both are checked before decoding so a forged header cannot
    make RCMed allocate terabytes."""

    max_voxels: int = 2**30
    max_side: int = 65536
    # A 2-D image with a side above this is reduced on read by the smallest integer factor that brings it
    # under (box filter): the model works at 256 px, so 4096 keeps 16x its detail, and an 8192^2 PNG of
    # 65 KB no longer becomes gigabytes of float copies downstream. The answer says it was reduced.
    max_2d_side: int = 4096
    # decoded bytes a single array may take (checked from the header where the format announces a dtype)
    max_bytes: int = 2**31


DEFAULT_LIMITS = ReadLimits()


def check_shape(path: str | Path, shape: tuple[int, ...], limits: ReadLimits) -> None:
    """Raise if a header-announced shape is empty or absurd."""
    name = Path(path).name
    if len(shape) == 0 or any(int(s) <= 0 for s in shape):
        raise EmptyInputError(name, f"image has an empty shape {tuple(shape)}")
    if max(shape) > limits.max_side or prod(int(s) for s in shape) > limits.max_voxels:
        raise ImageTooLargeError(
            name,
            f"header announces shape {tuple(int(s) for s in shape)} "
            f"({prod(int(s) for s in shape):,} values), over the limit of {limits.max_voxels:,} values "
            f"/ {limits.max_side} per axis; crop or downsample it first",
        )


def check_finite(path: str | Path, array: np.ndarray) -> None:
    """Raise `NonFiniteError` if a float array holds NaN or inf."""
    if array.dtype.kind in "fc" and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise NonFiniteError(Path(path).name, f"{bad} NaN/inf values in the pixel data; fix or mask them first")


def binary_mask(mask: np.ndarray, what: str, hint: str = "pass a 0/1 or 0/255 mask") -> np.ndarray:
    """A boolean mask from a bool or 0/1/255 array; anything else raises `InvalidMaskError`."""
    m = np.asarray(mask)
    if m.dtype == bool:
        return m
    values = np.unique(m)
    if not np.all(np.isin(values, (0, 1, 255))):
        raise InvalidMaskError(what, f"mask is not binary (values {values[:6].tolist()}); {hint}")
    return m > 0
