"""Readers for raster images: PNG, JPEG, BMP (Pillow) and TIFF (tifffile).

These files rarely carry patient geometry. TIFF resolution tags (and ImageJ's `spacing`/`unit`)
give pixel spacing when present; otherwise spacing is unknown, never silently 1 mm.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rcmed.errors import CorruptFileError, RCMedInputError
from rcmed.io.image import MedicalImage, Modality, affine_from_spacing
from rcmed.io.limits import ReadLimits, check_finite, check_shape

PIL_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
TIFF_SUFFIXES = {".tif", ".tiff"}


def read_pil(path: Path, modality: Modality, limits: ReadLimits) -> MedicalImage:
    """PNG/JPEG/BMP -> (H, W) grey or (H, W, 3|4) RGB(A). 16-bit PNG keeps 16 bits."""
    from PIL import Image

    # Pillow's own bomb guard would warn or raise on its own terms; ours (check_shape) is checked
    # first. Pillow keeps its guard in a module global: lift it for this read only.
    pillow_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        with Image.open(path) as im:
            w, h = im.size
            bands = len(im.getbands())
            check_shape(path, (h, w) if bands == 1 else (h, w, bands), limits)
            factor = -(-max(h, w) // limits.max_2d_side)  # ceil
            if factor > 1 and im.format == "JPEG":
                im.draft(im.mode, (w // factor, h // factor))  # JPEG decodes at 1/2, 1/4, 1/8 scale directly
            if im.mode in ("P", "PA"):
                im = im.convert("RGBA" if "transparency" in im.info or im.mode == "PA" else "RGB")
            elif im.mode in ("LA",):
                im = im.convert("L")
            elif im.mode in ("CMYK", "YCbCr", "HSV", "LAB"):
                im = im.convert("RGB")
            elif im.mode == "1":
                im = im.convert("L")
            if factor > 1:
                im = _reduce(im, -(-max(im.size) // limits.max_2d_side))
            arr = np.asarray(im)
            if im.mode == "I":
                arr = arr.astype(np.int32)
    except RCMedInputError:
        raise
    except (OSError, SyntaxError, ValueError) as exc:
        raise CorruptFileError(path.name, f"cannot decode as {path.suffix.lstrip('.').upper()} ({exc.__class__.__name__}); the file is damaged or not that format") from None
    finally:
        Image.MAX_IMAGE_PIXELS = pillow_limit
    rgb = arr.ndim == 3
    if rgb and arr.shape[-1] == 4 and np.all(arr[..., 3] == 255):
        arr = arr[..., :3]
    # PNG/JPEG resolution fields are display DPI (often a default 72), not a physical pixel size.
    meta: dict[str, object] = {"format": path.suffix.lstrip(".").lower()}
    if arr.shape[:2] != (h, w):
        meta["downsampled_from"] = [h, w]
    return MedicalImage(
        array=np.ascontiguousarray(arr),
        affine=affine_from_spacing(None, 2),
        modality=modality,
        rgb=rgb,
        metadata=meta,
        source_files=(path,),
    )


def _reduce(im, factor: int):
    """Pillow image reduced by an integer factor (box filter; every mode Pillow can reduce, else every
    factor-th pixel)."""
    if factor <= 1:
        return im
    try:
        return im.reduce(factor)
    except (ValueError, NotImplementedError):
        from PIL import Image

        return Image.fromarray(np.asarray(im)[::factor, ::factor])


def _tiff_spacing(tif: "object", ndim_spatial: int) -> tuple[float, ...] | None:
    """Pixel spacing in mm from ImageJ metadata or resolution tags; None if absent or unitless."""
    page = tif.pages[0]  # type: ignore[attr-defined]
    tags = page.tags
    ij = getattr(tif, "imagej_metadata", None) or {}
    unit_to_mm = {"micron": 1e-3, "\\u00B5m": 1e-3, "um": 1e-3, "µm": 1e-3, "mm": 1.0, "cm": 10.0, "nm": 1e-6}
    try:
        xres = tags["XResolution"].value
        yres = tags["YResolution"].value
        unit = tags["ResolutionUnit"].value if "ResolutionUnit" in tags else 2
    except KeyError:
        return None
    px_x = xres[1] / xres[0] if xres[0] else None
    px_y = yres[1] / yres[0] if yres[0] else None
    if px_x is None or px_y is None:
        return None
    if ij.get("unit") in unit_to_mm:
        scale = unit_to_mm[ij["unit"]]
    elif int(unit) == 2:  # inch
        scale = 25.4
    elif int(unit) == 3:  # centimetre
        scale = 10.0
    else:  # no absolute unit: spacing unknown
        return None
    yx = (px_y * scale, px_x * scale)
    if ndim_spatial == 3:
        z = float(ij.get("spacing", 1.0)) * scale
        return (z, *yx)
    return yx


def read_tiff(path: Path, modality: Modality, limits: ReadLimits) -> MedicalImage:
    """TIFF -> (H, W), (H, W, 3) RGB, or (N, H, W) for a multi-page grey stack."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise CorruptFileError(path.name, "TIFF holds no image series")
            series = tif.series[0]
            shape = tuple(int(s) for s in series.shape)
            check_shape(path, shape, limits)
            axes = series.axes
            full_hw = shape[:2] if axes in ("YX", "YXS") else None
            if full_hw is not None and max(full_hw) > limits.max_2d_side:
                # a pyramidal TIFF (whole-slide images) holds smaller levels: read the largest one that fits
                levels = list(getattr(series, "levels", None) or [series])
                fits = [lv for lv in levels if max(int(v) for v in lv.shape[:2]) <= limits.max_2d_side]
                series = fits[0] if fits else levels[-1]
            arr = series.asarray()
            if full_hw is not None and max(arr.shape[:2]) > limits.max_2d_side:
                f = -(-max(arr.shape[:2]) // limits.max_2d_side)
                arr = np.ascontiguousarray(arr[::f, ::f])  # every f-th pixel: no full-size float copies
            rgb = axes.endswith("S") and shape[-1] in (3, 4)
            spatial = arr.ndim - (1 if rgb else 0)
            if spatial > 3:
                arr = arr.reshape((-1, *arr.shape[-(3 if rgb else 2):]))
                spatial = 3
            spacing = _tiff_spacing(tif, spatial)
            if full_hw is not None and arr.shape[:2] != full_hw and spacing is not None:
                spacing = (spacing[0] * full_hw[0] / arr.shape[0], spacing[1] * full_hw[1] / arr.shape[1])
    except RCMedInputError:
        raise
    except (ValueError, OSError, KeyError, IndexError) as exc:
        raise CorruptFileError(path.name, f"cannot decode as TIFF ({exc.__class__.__name__}); the file is damaged or not a TIFF") from None
    check_finite(path, arr)
    return MedicalImage(
        array=np.ascontiguousarray(arr),
        affine=affine_from_spacing(spacing, spatial),
        modality=modality,
        rgb=bool(rgb),
        spacing_known=spacing is not None,
        metadata={"format": "tiff", "axes": axes,
                  **({"downsampled_from": list(full_hw)} if full_hw is not None and arr.shape[:2] != full_hw else {})},
        source_files=(path,),
    )
