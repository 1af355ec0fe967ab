"""Reader for the CVPR 2025 BiomedSegFM `.npz` layout: `imgs`, `gts`, `spacing`, `text_prompts`.

`imgs` is (D, H, W) for 3-D (array order z, y, x, as SimpleITK writes it) or (H, W, 3) for 2-D;
`gts` a label map of the same spatial shape; `spacing` is SimpleITK's (x, y, z) order and is
reversed into array order here; `text_prompts` maps label ids ("1", "2", ...) to a text naming
the target, plus `"instance_label": 0|1`. That dict is stored pickled inside the archive;
`numpy.load(allow_pickle=True)` would run arbitrary code from a hostile file, so we unpickle it
with an allow-list of plain containers and numpy's array reconstructor only.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rcmed.errors import CorruptFileError, ImageTooLargeError, RCMedInputError, ShapeMismatchError
from rcmed.io.image import MedicalImage, Modality, affine_from_spacing, parse_modality
from rcmed.io.limits import ReadLimits, check_finite, check_shape

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"), ("builtins", "dict"), ("builtins", "list"),
    ("collections", "OrderedDict"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")


def _read_member(zf: zipfile.ZipFile, name: str, limits: ReadLimits, path: Path) -> np.ndarray:
    with zf.open(name) as fh:
        version = np.lib.format.read_magic(fh)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = reader(fh)
        if shape:
            check_shape(path, tuple(int(s) for s in shape), limits)
        count = int(np.prod(shape)) if shape else 1
        if count * dtype.itemsize > limits.max_bytes:
            raise ImageTooLargeError(path.name, f"array {name!r} announces {count * dtype.itemsize:,} bytes, over the "
                                                f"limit of {limits.max_bytes:,}; crop or downsample it first")
        if dtype.hasobject:
            return _SafeUnpickler(io.BytesIO(fh.read(1 << 20))).load()  # text prompts: small
        # never inflate more than the header announced (a lying header is a damaged file, not a bigger array)
        raw = fh.read(count * dtype.itemsize + 1)
        if len(raw) > count * dtype.itemsize:
            raise CorruptFileError(path.name, f"array {name!r} holds more data than its header announces")
        data = np.frombuffer(raw, dtype=dtype)
    if data.size != count:
        raise CorruptFileError(path.name, f"array {name!r} is truncated ({data.size} of {count} values)")
    return data.reshape(shape, order="F" if fortran else "C")


@dataclass(frozen=True)
class SegFMCase:
    """One BiomedSegFM case: the image, its label map (same spatial shape) and label names."""

    image: MedicalImage
    labels: np.ndarray
    label_names: dict[int, str]
    instance: bool


def read_segfm(path: Path, modality: Modality, limits: ReadLimits) -> SegFMCase:
    """Read a BiomedSegFM `.npz` case. Modality comes from the caller or the file-name prefix
    (`CT_AbdTumor_x.npz` -> ct)."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise CorruptFileError(path.name, f"not a readable .npz archive ({exc.__class__.__name__})") from None
    with zf:
        members = {n[:-4]: n for n in zf.namelist() if n.endswith(".npy")}
        if "imgs" not in members:
            raise CorruptFileError(path.name, f"no 'imgs' array (found {sorted(members)}); not the BiomedSegFM layout")
        try:
            imgs = _read_member(zf, members["imgs"], limits, path)
            gts = _read_member(zf, members["gts"], limits, path) if "gts" in members else None
            spacing = _read_member(zf, members["spacing"], limits, path) if "spacing" in members else None
            prompts = _read_member(zf, members["text_prompts"], limits, path) if "text_prompts" in members else None
        except RCMedInputError:
            raise
        except (pickle.UnpicklingError, ValueError, zipfile.BadZipFile, EOFError, OSError) as exc:
            raise CorruptFileError(path.name, f"damaged array in archive ({exc.__class__.__name__}: {exc})") from None
    rgb = imgs.ndim == 3 and imgs.shape[-1] == 3 and (gts is None or gts.ndim == 2)
    spatial = imgs.shape[:2] if rgb else imgs.shape
    if gts is not None and gts.shape != spatial:
        raise ShapeMismatchError(path.name, f"imgs spatial shape {spatial} != gts shape {gts.shape}")
    check_finite(path, imgs)
    sp = None
    if spacing is not None and np.size(spacing) >= len(spatial):
        sp = tuple(float(v) for v in np.ravel(spacing)[: len(spatial)][::-1])
    if modality is Modality.UNKNOWN:
        try:
            modality = parse_modality(path.name.split("_")[0])
        except RCMedInputError:
            modality = Modality.UNKNOWN
    names: dict[int, str] = {}
    instance = False
    if isinstance(prompts, np.ndarray) and prompts.dtype.hasobject:
        prompts = prompts.item()
    if isinstance(prompts, dict):
        for key, val in prompts.items():
            if str(key) == "instance_label":
                instance = bool(int(val))
            elif str(key).isdigit():
                names[int(key)] = str(val)
    image = MedicalImage(
        array=np.ascontiguousarray(imgs),
        affine=affine_from_spacing(sp, len(spatial)),
        modality=modality,
        rgb=rgb,
        spacing_known=sp is not None and all(v > 0 for v in sp),
        metadata={"format": "biomedsegfm-npz"},
        source_files=(path,),
    )
    labels = gts if gts is not None else np.zeros(spatial, np.uint8)
    return SegFMCase(image=image, labels=labels, label_names=names, instance=instance)
