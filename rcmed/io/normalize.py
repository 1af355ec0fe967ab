"""Modality-aware intensity normalisation to model input: float32 in [0, 1], same shape.

| modality | rule |
| --- | --- |
| CT | a window (level, width) in HU: `soft_tissue` (40, 400), `lung` (-600, 1500), `bone` (400, 1800), `brain` (40, 80), `mediastinum` (50, 350), or `auto` |
| MRI | 0.5th-99.5th percentile of the foreground (values > 0), clipped |
| PET | 0 to the 99.5th percentile of positive uptake, clipped (uptake is never negative) |
| microscopy | 1st-99.8th percentile (the convention of StarDist and Cellpose) |
| X-ray, ultrasound | 0.5th-99.5th percentile; MONOCHROME1 X-rays are inverted so bone is bright |
| pathology, dermoscopy, endoscopy, fundus (RGB) | unchanged: divided by the dtype's maximum |
| unknown | 8-bit: divided by 255; otherwise the 0.5th-99.5th percentile |

`auto` for CT uses the window stored in the DICOM header when there is one, else the
0.5th-99.5th percentile of voxels above -900 HU (so air does not squeeze the tissue range).
This is a pure function: array in, array out, no I/O.
"""

from __future__ import annotations

import numpy as np

from rcmed.errors import RCMedInputError
from rcmed.io.image import MedicalImage, Modality

CT_WINDOWS: dict[str, tuple[float, float]] = {
    "soft_tissue": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "mediastinum": (50.0, 350.0),
}

Window = str | tuple[float, float]


def _scale(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi <= lo:  # constant image: nothing to stretch, map to 0
        return np.zeros(x.shape, np.float32)
    out = (x.astype(np.float32) - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out)


def _percentiles(x: np.ndarray, lo: float, hi: float) -> tuple[float, float]:
    if x.size == 0:
        return 0.0, 0.0
    # Percentiles of a strided sample: exact enough for a display range, O(1e6) work on big volumes.
    step = max(1, x.size // 2_000_000)
    flat = x.reshape(-1)[::step]
    a, b = np.percentile(flat, [lo, hi])
    return float(a), float(b)


def ct_window(image: MedicalImage, window: Window = "auto") -> tuple[float, float]:
    """(low, high) HU bounds of a named window, an explicit (level, width), or `auto`."""
    if isinstance(window, tuple):
        level, width = window
    elif window == "auto":
        meta = image.metadata
        if "window_center" in meta and "window_width" in meta and float(meta["window_width"]) > 1:
            level, width = float(meta["window_center"]), float(meta["window_width"])
        else:
            body = image.array[image.array > -900]
            return _percentiles(body, 0.5, 99.5) if body.size else (-1000.0, 1000.0)
    elif window in CT_WINDOWS:
        level, width = CT_WINDOWS[window]
    else:
        raise RCMedInputError("window", f"unknown CT window {window!r}; use one of {sorted(CT_WINDOWS) + ['auto']} or (level, width)")
    return float(level) - float(width) / 2.0, float(level) + float(width) / 2.0


def normalize(image: MedicalImage, window: Window = "auto") -> np.ndarray:
    """Map `image.array` to float32 in [0, 1] by the rule of its modality (see module docstring).

    Returns an array of the same shape: (H, W), (H, W, 3) or (D, H, W). `window` is used for CT only.
    """
    x = image.array
    mod = image.modality
    if image.rgb:
        maxval = float(np.iinfo(x.dtype).max) if x.dtype.kind in "ui" else max(float(x.max()), 1.0)
        return np.clip(x.astype(np.float32) / np.float32(maxval), 0.0, 1.0)
    if mod is Modality.CT:
        return _scale(x, *ct_window(image, window))
    if mod is Modality.MRI:
        fg = x[x > 0]
        return _scale(x, *_percentiles(fg if fg.size else x, 0.5, 99.5))
    if mod is Modality.PET:
        pos = x[x > 0]
        return _scale(x, 0.0, _percentiles(pos, 0.0, 99.5)[1] if pos.size else 0.0)
    if mod is Modality.MICROSCOPY:
        return _scale(x, *_percentiles(x, 1.0, 99.8))
    if mod in (Modality.XRAY, Modality.ULTRASOUND):
        out = _scale(x, *_percentiles(x, 0.5, 99.5))
        return 1.0 - out if image.metadata.get("photometric") == "MONOCHROME1" else out
    if mod.is_rgb_modality or (mod is Modality.UNKNOWN and x.dtype == np.uint8):
        maxval = float(np.iinfo(x.dtype).max) if x.dtype.kind in "ui" else 1.0
        return np.clip(x.astype(np.float32) / np.float32(maxval), 0.0, 1.0)
    return _scale(x, *_percentiles(x, 0.5, 99.5))
