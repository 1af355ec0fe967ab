"""Writers: masks as PNG, NIfTI (source geometry), DICOM-SEG (highdicom), and overlay PNGs.

Every writer is atomic (temporary file, then rename): an interrupted write leaves no partial file.
DICOM-SEG output is de-identified by default: the patient and study identifiers that highdicom
would copy from the source series are blanked (the references to the source series' UIDs stay, so
the SEG still points at its images). Pass `keep_patient_identity=True` only inside a PACS
workflow that needs the SEG filed under the patient.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from rcmed import __version__
from rcmed.errors import InvalidMaskError, RCMedInputError, ShapeMismatchError
from rcmed.io.atomic import atomic_path
from rcmed.io.image import LPS_TO_RAS, MedicalImage
from rcmed.io.limits import binary_mask
from rcmed.io.normalize import normalize
from rcmed.overlay import paint

# Identifying attributes highdicom copies from the source into a SEG (patient, study, clinical trial).
IDENTIFYING_KEYWORDS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientBirthTime", "PatientSex", "PatientAge",
    "OtherPatientIDs", "OtherPatientIDsSequence", "OtherPatientNames", "PatientAddress",
    "PatientTelephoneNumbers", "PatientMotherBirthName", "EthnicGroup", "PatientComments",
    "IssuerOfPatientID", "StudyID", "AccessionNumber", "StudyDate", "StudyTime", "SeriesDate",
    "SeriesTime", "AcquisitionDate", "AcquisitionTime", "ContentDate", "ContentTime",
    "ReferringPhysicianName", "InstitutionName", "InstitutionAddress", "StationName",
    "PerformingPhysicianName", "OperatorsName", "DeviceSerialNumber", "StudyDescription",
    "ClinicalTrialSubjectID", "ClinicalTrialSubjectReadingID",
)


def _binary(mask: np.ndarray, what: str) -> np.ndarray:
    return binary_mask(mask, what, "threshold it or write it as a label map")


def write_mask_png(path: str | Path, mask: np.ndarray, label_map: bool = False) -> Path:
    """(H, W) mask -> PNG. Binary masks are stored 0/255; label maps keep their labels
    (8-bit when they fit, else 16-bit)."""
    from PIL import Image

    m = np.asarray(mask)
    if m.ndim != 2:
        raise ShapeMismatchError(Path(path).name, f"a PNG mask must be 2-D (H, W), got {m.shape}")
    if label_map:
        if m.dtype.kind not in "ui" or (m.size and (m.min() < 0 or m.max() > 65535)):
            raise InvalidMaskError(Path(path).name, "a label map must hold integers in 0..65535")
        out = m.astype(np.uint8 if (m.max() if m.size else 0) <= 255 else np.uint16)
    else:
        out = _binary(m, Path(path).name).astype(np.uint8) * 255
    with atomic_path(path) as tmp:
        Image.fromarray(out).save(tmp, format="PNG")
    return Path(path)


def write_nifti(path: str | Path, mask: np.ndarray, like: MedicalImage) -> Path:
    """Write a mask or label map with the geometry of `like` (same voxel order and affine), so it
    overlays the source exactly in any viewer. `mask` must have `like.spatial_shape`."""
    import nibabel as nib

    m = np.asarray(mask)
    shape = like.spatial_shape if like.is_volume else (*like.spatial_shape, 1)
    if m.shape != like.spatial_shape and m.shape != shape:
        raise ShapeMismatchError(Path(path).name, f"mask shape {m.shape} != image shape {like.spatial_shape}")
    m = m.reshape(shape)
    if m.dtype == bool:
        m = m.astype(np.uint8)
    elif m.dtype.kind not in "ui":
        raise InvalidMaskError(Path(path).name, f"mask dtype {m.dtype} is not integer; threshold it first")
    elif m.size and m.max() <= 255 and m.min() >= 0:
        m = m.astype(np.uint8)
    affine_ras = LPS_TO_RAS @ like.affine
    img = nib.Nifti1Image(m, affine_ras)
    code = 1 if like.orientation_known else 0
    img.set_sform(affine_ras, code=code)
    img.set_qform(affine_ras, code=code)
    name = Path(path).name
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        raise RCMedInputError(name, "NIfTI output needs a .nii or .nii.gz name")
    with atomic_path(path, suffix=".nii.gz" if name.endswith(".gz") else ".nii") as tmp:
        nib.save(img, str(tmp))
    return Path(path)


def _deidentified(ds):
    out = copy.deepcopy(ds)
    for kw in IDENTIFYING_KEYWORDS:
        if kw in out:
            setattr(out, kw, "" if out.data_element(kw).VR != "SQ" else [])
    out.PatientIdentityRemoved = "YES"
    return out


def write_dicom_seg(
    path: str | Path,
    masks: Mapping[str, np.ndarray],
    like: MedicalImage,
    keep_patient_identity: bool = False,
) -> Path:
    """Write named binary masks as one DICOM-SEG referencing the series `like` was read from.

    Args:
        masks: target name -> boolean array of `like.spatial_shape` ((H, W) or (slices, rows, cols),
            in the order `load()` gave, i.e. sorted by slice position).
        like: a `MedicalImage` read from DICOM (its `source_files` are the referenced instances).
        keep_patient_identity: copy patient/study identifiers into the SEG (off by default).
    """
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    name = Path(path).name
    if not like.source_files or like.metadata.get("format") != "dicom":
        raise RCMedInputError(name, "DICOM-SEG needs a source image read from DICOM; write NIfTI or PNG instead")
    if not masks:
        raise InvalidMaskError(name, "no masks to write")
    sources = [pydicom.dcmread(p) for p in like.source_files]
    if len(sources) == 1 and int(getattr(sources[0], "NumberOfFrames", 1) or 1) > 1:
        raise RCMedInputError(name, "multi-frame sources are not supported for DICOM-SEG yet; write NIfTI")
    if not keep_patient_identity:
        sources = [_deidentified(ds) for ds in sources]
    frames_shape = (len(sources), *like.spatial_shape[-2:])
    stack = []
    descriptions = []
    for k, (target, mask) in enumerate(masks.items(), start=1):
        m = _binary(np.asarray(mask), f"{name} ({target})")
        if m.size != int(np.prod(frames_shape)):
            raise ShapeMismatchError(name, f"mask {target!r} shape {m.shape} != image shape {like.spatial_shape}")
        stack.append(m.reshape(frames_shape))
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=k,
            segment_label=str(target)[:64],
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=hd.AlgorithmIdentificationSequence(
                name="RCMed", version=__version__, family=codes.DCM.ArtificialIntelligence),
        ))
    pixels = np.stack(stack, axis=-1).astype(np.uint8)  # (frames, rows, cols, segments)
    try:
        seg = hd.seg.Segmentation(
            source_images=sources,
            pixel_array=pixels,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=9001,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="RCMed",
            manufacturer_model_name="RCMed",
            software_versions=__version__,
            device_serial_number="0",
            omit_empty_frames=False,
        )
    except ValueError as exc:  # highdicom's consistency checks (series, frame of reference, sizes)
        raise RCMedInputError(name, f"cannot build a DICOM-SEG from this source ({exc})") from None
    with atomic_path(path, suffix=".dcm") as tmp:
        seg.save_as(tmp)
    return Path(path)


def write_overlay_png(
    path: str | Path,
    image: MedicalImage,
    masks: Sequence[np.ndarray],
    mode: str = "fill",
    alpha: float = 0.45,
) -> Path:
    """Normalise a 2-D image by its modality, paint `masks` in palette order, save as PNG."""
    from PIL import Image

    if image.is_volume:
        raise RCMedInputError(Path(path).name, "overlay needs a 2-D image; cut the volume with rcmed.io.slices.to_slices")
    rgb = paint(normalize(image), list(masks), mode=mode, alpha=alpha)  # type: ignore[arg-type]
    with atomic_path(path) as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG")
    return Path(path)
