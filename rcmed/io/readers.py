"""`load(path)`: one entry point that picks the reader by what the path is.

A folder is read as one DICOM series; a file by its extension, falling back to the DICOM magic
for extension-less DICOM files (common in PACS exports).
"""

from __future__ import annotations

from pathlib import Path

from rcmed.errors import CorruptFileError, EmptyInputError, ImageTooLargeError, RCMedError, UnsupportedFormatError
from rcmed.io.dicom import DICOM_SUFFIXES, looks_like_dicom, read_dicom_file, read_dicom_series
from rcmed.io.image import MedicalImage, Modality, parse_modality
from rcmed.io.limits import DEFAULT_LIMITS, ReadLimits
from rcmed.io.nifti import read_nifti
from rcmed.io.npz import read_segfm
from rcmed.io.raster import PIL_SUFFIXES, TIFF_SUFFIXES, read_pil, read_tiff

SUPPORTED = ".png .jpg .jpeg .bmp .tif .tiff .dcm .nii .nii.gz .hdr/.img .mgz .npz, or a DICOM series folder"


def load(path: str | Path, modality: str | Modality | None = None, limits: ReadLimits = DEFAULT_LIMITS) -> MedicalImage:
    """Read any supported medical image into a `MedicalImage`.

    Args:
        path: a PNG/JPEG/BMP/TIFF/DICOM/NIfTI/BiomedSegFM-NPZ file, or a folder with one DICOM series.
        modality: overrides (or supplies, for files that carry none) the modality, e.g. "ct", "fundus".
        limits: size limits checked against the header before decoding.

    Raises:
        RCMedInputError (a subclass naming the file and the problem) for anything unreadable.
    """
    p = Path(path)
    mod = parse_modality(modality)
    try:
        image = _dispatch(p, mod, limits)
    except RCMedError:
        raise
    except MemoryError:
        raise ImageTooLargeError(p.name, "too large to decode in the memory available") from None
    except RecursionError:
        raise CorruptFileError(p.name, "cannot be read (nested too deeply)") from None
    except Exception as err:  # noqa: BLE001 - a third-party reader's failure on a damaged file is an input error
        # pydicom, tifffile, nibabel, Pillow, numpy and zlib raise dozens of exception types on damaged
        # files (BytesLengthException, zlib.error, struct.error, KeyError, ...): one message naming the file
        raise CorruptFileError(p.name, f"cannot be read: {type(err).__name__}: {str(err)[:200]}") from None
    return image


def _dispatch(p: Path, mod: Modality, limits: ReadLimits) -> MedicalImage:
    if not p.exists():
        raise EmptyInputError(p.name or str(p), "no such file or folder")
    if p.is_dir():
        return read_dicom_series(p, mod, limits)
    if p.stat().st_size == 0:
        raise EmptyInputError(p.name, "file is empty (0 bytes)")
    name = p.name.lower()
    suffix = p.suffix.lower()
    if name.endswith((".nii", ".nii.gz", ".hdr", ".img", ".mgz", ".mgh")):
        return read_nifti(p, mod, limits)
    if suffix in PIL_SUFFIXES:
        return read_pil(p, mod, limits)
    if suffix in TIFF_SUFFIXES:
        return read_tiff(p, mod, limits)
    if suffix == ".npz":
        return read_segfm(p, mod, limits).image
    if suffix in DICOM_SUFFIXES or looks_like_dicom(p):
        return read_dicom_file(p, mod, limits)
    raise UnsupportedFormatError(p.name, f"unknown file type {suffix or '(no extension)'!r}; RCMed reads {SUPPORTED}")
