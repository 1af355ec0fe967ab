"""DICOM readers (pydicom): one file (single- or multi-frame) or one series folder.

A series folder is grouped by SeriesInstanceUID (more than one -> `MixedSeriesError`), sorted by
slice position along the slice normal (never by file name or InstanceNumber), and rescaled with
the modality LUT (slope/intercept per slice, so CT comes out in HU). Only whitelisted, non-
identifying header fields reach `MedicalImage.metadata`; nothing from the patient, study or
equipment modules is copied, and no header value is ever put into an error message.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from rcmed.errors import (
    CorruptFileError,
    EmptyInputError,
    ImageTooLargeError,
    MixedSeriesError,
    RCMedInputError,
    UnsupportedFormatError,
    UnsupportedTransferSyntaxError,
)
from rcmed.io.image import MedicalImage, Modality, parse_modality
from rcmed.io.limits import ReadLimits, check_finite, check_shape

DICOM_SUFFIXES = {".dcm", ".dicom", ".ima"}
# Objects that share a folder with images but are not slices of the series.
_NON_IMAGE_MODALITIES = {"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "SR", "PR", "KO", "REG"}


def _dcmread(path: Path, header_only: bool, max_bytes: int = 2**31):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        _check_deflated(path, max_bytes)
        try:
            return pydicom.dcmread(path, stop_before_pixels=header_only)
        except InvalidDicomError:
            if path.suffix.lower() not in DICOM_SUFFIXES:
                raise
            # a .dcm without the 128-byte preamble and DICM magic (older exports): read it as a bare dataset;
            # one without pixel data or image attributes is refused further on
            ds = pydicom.dcmread(path, stop_before_pixels=header_only, force=True)
            if "SOPClassUID" not in ds and "Rows" not in ds:
                raise
            if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):  # without a file meta: the encoding read
                from pydicom.dataset import FileMetaDataset
                from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

                implicit, little = ds.original_encoding
                ds.file_meta = FileMetaDataset()
                ds.file_meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                                                  ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
            return ds
    except InvalidDicomError:
        raise UnsupportedFormatError(path.name, "not a DICOM file (no DICM preamble)") from None
    except RCMedInputError:
        raise
    except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CorruptFileError(path.name, f"cannot parse DICOM header ({exc.__class__.__name__})") from None


def _check_deflated(path: Path, max_bytes: int) -> None:
    """A DICOM in the Deflated transfer syntax is one zlib stream that pydicom inflates whole before any
    header can be checked: count its inflated size first, in bounded chunks, and refuse it over `max_bytes`
    (a 1 MB file can hold gigabytes of zeros)."""
    import zlib

    from pydicom.filereader import _read_file_meta_info, read_preamble
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    with open(path, "rb") as fp:
        if fp.read(132)[128:] != b"DICM":
            return
        fp.seek(0)
        read_preamble(fp, False)
        meta = _read_file_meta_info(fp)
        if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
            return
        d = zlib.decompressobj(-zlib.MAX_WBITS)
        total = 0
        while not d.eof and (chunk := fp.read(1 << 20)):
            buf = chunk
            while buf and not d.eof:  # (after the end of the stream zlib keeps handing back a tail: stop there)
                out = d.decompress(buf, 1 << 22)
                total += len(out)
                if total > max_bytes:
                    raise ImageTooLargeError(path.name, f"deflated DICOM inflates to more than {max_bytes:,} bytes; "
                                                        "refused before decoding")
                if not out and d.unconsumed_tail == buf:
                    break  # no progress: damaged stream, left to pydicom to refuse
                buf = d.unconsumed_tail


def looks_like_dicom(path: Path) -> bool:
    """True if the file has the DICM magic at offset 128 (the Part 10 preamble)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _safe_metadata(ds, n_files: int) -> dict[str, str | int | float]:
    """Copy only technical, non-identifying fields. No patient/study/equipment identifiers."""
    meta: dict[str, str | int | float] = {"format": "dicom", "n_files": n_files}
    code = str(getattr(ds, "Modality", "") or "")
    if code:
        meta["dicom_modality"] = code
    body = getattr(ds, "BodyPartExamined", None)
    if body:
        meta["body_part"] = str(body).lower()
    for key, name in (("PhotometricInterpretation", "photometric"), ("BitsStored", "bits_stored"),
                      ("SliceThickness", "slice_thickness_mm")):
        val = getattr(ds, key, None)
        if val not in (None, ""):
            meta[name] = float(val) if key == "SliceThickness" else (int(val) if key == "BitsStored" else str(val))
    for key, name in (("WindowCenter", "window_center"), ("WindowWidth", "window_width")):
        val = getattr(ds, key, None)
        if val not in (None, ""):
            first = val[0] if hasattr(val, "__len__") and not isinstance(val, str) else val
            try:
                meta[name] = float(first)
            except (TypeError, ValueError):
                pass
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is not None:
        meta["transfer_syntax"] = ts.name
    return meta


def _pixels(ds, path: Path, factor: int = 1) -> np.ndarray:
    """Decode pixel data and apply the modality LUT (rescale slope/intercept). `factor` > 1 reduces a 2-D
    image by that integer factor (block mean) before the LUT, so a huge slice never exists in floating point."""
    from pydicom.pixels import apply_modality_lut

    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise EmptyInputError(path.name, "DICOM file has no pixel data")
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    ts_name = ts.name if ts is not None else "unknown transfer syntax"
    try:
        arr = ds.pixel_array
    except (NotImplementedError, RuntimeError, ImportError) as exc:
        raise UnsupportedTransferSyntaxError(
            path.name, f"cannot decode pixel data in {ts_name} ({exc.__class__.__name__}); install a pydicom "
            "decoder plugin for it (pylibjpeg-openjpeg for JPEG 2000, pylibjpeg-libjpeg for JPEG) or "
            "decompress the file (e.g. gdcmconv --raw)"
        ) from None
    except (ValueError, EOFError, OSError, AttributeError, TypeError, KeyError) as exc:
        raise CorruptFileError(path.name, f"pixel data is damaged or truncated ({exc.__class__.__name__})") from None
    if factor > 1:
        arr = block_mean(arr, factor)
    photometric = str(getattr(ds, "PhotometricInterpretation", ""))
    if photometric in ("MONOCHROME1", "MONOCHROME2") and ("RescaleSlope" in ds or "ModalityLUTSequence" in ds):
        out = apply_modality_lut(arr, ds)
        if out.dtype.kind == "f" and np.all(np.mod(out, 1) == 0) and out.min() >= -32768 and out.max() <= 32767:
            out = out.astype(np.int16)
        elif out.dtype.kind == "f":
            out = out.astype(np.float32)
        arr = out
    return arr


def _frames(ds) -> int:
    return int(getattr(ds, "NumberOfFrames", 1) or 1)


def _plane(ds) -> tuple[np.ndarray, np.ndarray, tuple[float, float], bool]:
    """(row_cosine, col_cosine, (row_spacing, col_spacing), orientation_known) of one slice.

    DICOM: the first IOP triplet is the direction along a row (column index increases), the second
    the direction down a column (row index increases); PixelSpacing is (between rows, between columns).
    """
    iop = getattr(ds, "ImageOrientationPatient", None)
    ps = getattr(ds, "PixelSpacing", None) or getattr(ds, "ImagerPixelSpacing", None)
    shared = getattr(ds, "SharedFunctionalGroupsSequence", None)
    if shared and (iop is None or ps is None):
        item = shared[0]
        if iop is None and "PlaneOrientationSequence" in item:
            iop = item.PlaneOrientationSequence[0].ImageOrientationPatient
        if ps is None and "PixelMeasuresSequence" in item:
            ps = item.PixelMeasuresSequence[0].PixelSpacing
    known = iop is not None and len(iop) == 6
    r = np.array([float(v) for v in iop[:3]]) if known else np.array([0.0, 1.0, 0.0])
    c = np.array([float(v) for v in iop[3:]]) if known else np.array([1.0, 0.0, 0.0])
    spacing = (float(ps[0]), float(ps[1])) if ps is not None and len(ps) == 2 else (1.0, 1.0)
    return r, c, spacing, known


def _position(ds) -> np.ndarray | None:
    ipp = getattr(ds, "ImagePositionPatient", None)
    return np.array([float(v) for v in ipp]) if ipp is not None and len(ipp) == 3 else None


def _modality(ds, override: Modality) -> Modality:
    if override is not Modality.UNKNOWN:
        return override
    code = str(getattr(ds, "Modality", "") or "")
    try:
        return parse_modality(code) if code else Modality.UNKNOWN
    except RCMedInputError:
        return Modality.UNKNOWN


def read_dicom_file(path: Path, modality: Modality, limits: ReadLimits) -> MedicalImage:
    """One DICOM file -> (H, W), (H, W, 3) or, multi-frame, (F, H, W)."""
    ds = _dcmread(path, header_only=False, max_bytes=limits.max_bytes)
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        what = str(getattr(ds, "Modality", "") or "") or getattr(getattr(ds, "SOPClassUID", None), "name", "") or "object"
        raise EmptyInputError(path.name, f"DICOM {what} holds no image (no pixel data); send an image series")
    rows, cols = int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0)
    spp = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    frames = _frames(ds)
    check_shape(path, (frames, rows, cols, spp), limits)
    # a huge 2-D image is reduced on read, as PNG and TIFF are (`ReadLimits.max_2d_side`)
    factor = -(-max(rows, cols) // limits.max_2d_side) if frames == 1 and max(rows, cols) > limits.max_2d_side else 1
    arr = _pixels(ds, path, factor)
    check_finite(path, arr)
    rgb = spp == 3
    r, c, (sr, sc), known = _plane(ds)
    sr, sc = sr * factor, sc * factor
    pos = _position(ds)
    normal = np.cross(r, c)
    affine = np.eye(4)
    spacing_known = getattr(ds, "PixelSpacing", None) is not None or getattr(ds, "ImagerPixelSpacing", None) is not None
    if frames > 1:
        step = float(getattr(ds, "SpacingBetweenSlices", 0) or getattr(ds, "SliceThickness", 0) or 1.0)
        affine[:3, 0], affine[:3, 1], affine[:3, 2] = normal * step, c * sr, r * sc
    else:
        thick = float(getattr(ds, "SliceThickness", 0) or 1.0)
        affine[:3, 0], affine[:3, 1], affine[:3, 2] = c * sr, r * sc, normal * thick
    if pos is not None:
        affine[:3, 3] = pos
    return MedicalImage(
        array=np.ascontiguousarray(arr),
        affine=affine,
        modality=_modality(ds, modality),
        rgb=rgb,
        spacing_known=bool(spacing_known),
        orientation_known=known and pos is not None,
        metadata={**_safe_metadata(ds, 1), **({"downsampled_from": [rows, cols]} if factor > 1 else {})},
        source_files=(path,),
    )


def block_mean(arr: np.ndarray, factor: int) -> np.ndarray:
    """(H, W) or (H, W, C) pixels reduced by an integer `factor`: the mean of each factor × factor block (the
    last partial row and column of blocks dropped), in the input's dtype (rounded for integers)."""
    h, w = (arr.shape[0] // factor) * factor, (arr.shape[1] // factor) * factor
    blocks = arr[:h, :w].reshape(h // factor, factor, w // factor, factor, *arr.shape[2:])
    out = blocks.mean(axis=(1, 3), dtype=np.float32)
    return np.rint(out).astype(arr.dtype) if arr.dtype.kind in "iub" else out.astype(arr.dtype)


def _candidate_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".") and p.name.upper() != "DICOMDIR")


def read_dicom_series(folder: Path, modality: Modality, limits: ReadLimits) -> MedicalImage:
    """A folder holding one DICOM series -> (slices, rows, cols) volume, sorted by position."""
    headers = []
    for p in _candidate_files(folder):
        if not looks_like_dicom(p):
            continue
        ds = _dcmread(p, header_only=True, max_bytes=limits.max_bytes)
        if str(getattr(ds, "Modality", "")) in _NON_IMAGE_MODALITIES:
            continue
        headers.append((p, ds))
    if not headers:
        raise EmptyInputError(folder.name or str(folder), "folder holds no DICOM image files")
    by_series: dict[str, list] = defaultdict(list)
    for p, ds in headers:
        by_series[str(getattr(ds, "SeriesInstanceUID", ""))].append((p, ds))
    if len(by_series) > 1:
        counts = ", ".join(str(len(v)) for v in by_series.values())
        raise MixedSeriesError(
            folder.name, f"mixed series ({len(by_series)} SeriesInstanceUIDs, {counts} files); pass one series folder"
        )
    if len(headers) == 1:
        return read_dicom_file(headers[0][0], modality, limits)

    first = headers[0][1]
    rows, cols = int(first.Rows), int(first.Columns)
    if any(_frames(ds) > 1 for _, ds in headers):
        raise MixedSeriesError(folder.name, "series mixes multi-frame files with other files; pass one file")
    shapes = {(int(ds.Rows), int(ds.Columns)) for _, ds in headers}
    if len(shapes) > 1:
        raise MixedSeriesError(folder.name, f"slices differ in size {sorted(shapes)}; not one volume")
    check_shape(folder, (len(headers), rows, cols), limits)
    r, c, (sr, sc), known = _plane(first)
    normal = np.cross(r, c)
    positions = [_position(ds) for _, ds in headers]
    if not known or any(p is None for p in positions):
        raise MixedSeriesError(folder.name, "slices lack ImagePositionPatient/ImageOrientationPatient; cannot stack by position")
    for _, ds in headers[1:]:
        r2, c2, _, _ = _plane(ds)
        if not (np.allclose(r, r2, atol=1e-3) and np.allclose(c, c2, atol=1e-3)):
            raise MixedSeriesError(folder.name, "slices have different orientations; not one volume")
    dist = np.array([float(np.dot(p, normal)) for p in positions])  # type: ignore[arg-type]
    order = np.argsort(dist, kind="stable")
    dist_sorted = dist[order]
    gaps = np.diff(dist_sorted)
    if np.any(np.abs(gaps) < 1e-4):
        raise MixedSeriesError(folder.name, "two or more slices share one position (repeated acquisitions?); pass one series")
    slices = [_pixels(_dcmread(headers[i][0], header_only=False, max_bytes=limits.max_bytes), headers[i][0]) for i in order]
    kinds = {s.dtype.kind for s in slices}
    dtype = np.float32 if "f" in kinds else np.result_type(*[s.dtype for s in slices])
    vol = np.stack([s.astype(dtype, copy=False) for s in slices])
    check_finite(folder, vol)
    p0, pn = positions[order[0]], positions[order[-1]]
    step_vec = (pn - p0) / (len(order) - 1)  # type: ignore[operator]
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2], affine[:3, 3] = step_vec, c * sr, r * sc, p0
    meta = _safe_metadata(first, len(headers))
    mean_gap = float(np.mean(gaps))
    meta["slice_spacing_mm"] = round(mean_gap, 4)
    if np.max(np.abs(gaps - mean_gap)) > 0.01 * max(mean_gap, 1e-6) + 1e-3:
        meta["irregular_slice_spacing"] = 1
    return MedicalImage(
        array=vol,
        affine=affine,
        modality=_modality(first, modality),
        rgb=vol.ndim == 4,
        spacing_known=True,
        orientation_known=True,
        metadata=meta,
        source_files=tuple(headers[i][0] for i in order),
    )
