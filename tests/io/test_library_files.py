"""The DICOM, NIfTI, Analyze and MGH test files that pydicom and nibabel ship in their wheels: every one
holding a 2-D or 3-D image loads; every other is refused with one RCMedInputError naming the file (never
another exception)."""

from __future__ import annotations

import glob
import os
import warnings

import pytest

from rcmed.errors import RCMedInputError
from rcmed.io.readers import load

# files that hold no loadable 2-D/3-D image, and why (a refusal is the right answer for these)
NOT_IMAGES = {
    "rtstruct.dcm", "rtplan.dcm", "rtplan_truncated.dcm", "reportsi.dcm", "reportsi_with_empty_number_tags.dcm",
    "test-SR.dcm", "waveform_ecg.dcm", "DICOMDIR-empty.dcm", "UN_sequence.dcm", "nested_priv_SQ.dcm", "priv_SQ.dcm",
    "no_meta_group_length.dcm", "meta_missing_tsyntax.dcm", "ExplVR_LitEndNoMeta.dcm", "ExplVR_BigEndNoMeta.dcm",
    "empty_charset_LEI.dcm", "no_meta.dcm",  # no pixel data
    "badVR.dcm", "MR_truncated.dcm", "JPEG-lossy.dcm",  # damaged on purpose (a VR of '1A', cut pixel data, bad markers)
    "resampled_anat_moved.nii",  # NaN voxels
    "example4d.nii.gz", "example_nifti2.nii.gz", "functional.nii",  # 4-D time series
    "row_major.dconn.nii",  # a CIFTI connectivity matrix, not an image
    "test.mgz",  # 4-D
    "analyze.hdr", "nifti1.hdr", "nifti2.hdr",  # headers shipped without their .img halves
    "JPEG2000-embedded-sequence-delimiter.dcm",  # a J2K stream OpenJPEG cannot parse (pydicom keeps it for GDCM)
}


def _library_files() -> list[str]:
    import nibabel
    import pydicom

    pd = os.path.join(os.path.dirname(pydicom.__file__), "data", "test_files")
    nb = os.path.join(os.path.dirname(nibabel.__file__), "tests", "data")
    return sorted(glob.glob(pd + "/**/*.dcm", recursive=True)
                  + [f for f in glob.glob(nb + "/*") if f.endswith((".nii", ".nii.gz", ".hdr", ".mgz"))])


@pytest.mark.filterwarnings("ignore")
def test_library_test_files_load_or_are_refused_clearly():
    files = _library_files()
    assert len(files) > 60, "pydicom's or nibabel's test files were not found"
    loaded, refused = [], []
    for f in files:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                img = load(f)
                assert img.array.size > 0
                loaded.append(os.path.basename(f))
            except RCMedInputError as err:
                assert os.path.basename(f) in str(err)
                refused.append(os.path.basename(f))
    wrongly_refused = sorted(set(refused) - NOT_IMAGES)
    assert not wrongly_refused, wrongly_refused
    assert {"CT_small.dcm", "MR_small.dcm", "example_nifti2.nii.gz"} - NOT_IMAGES <= set(loaded)
    assert any(f.startswith(("SC_rgb_jpeg2k", "J2K", "MR_small_jp2k", "GDCMJ2K")) for f in loaded)  # JPEG 2000 decodes


def test_analyze_pairs_and_mgh_volumes_load(tmp_path):
    import nibabel as nib
    import numpy as np

    from rcmed.errors import CorruptFileError

    vol = np.arange(6 * 5 * 4, dtype=np.int16).reshape(6, 5, 4)
    nib.save(nib.AnalyzeImage(vol, np.diag([0.9, 0.9, 3.0, 1])), tmp_path / "brain.hdr")
    a = load(tmp_path / "brain.hdr")
    assert a.array.shape == (6, 5, 4) and a.metadata["format"] == "analyze" and not a.orientation_known
    assert load(tmp_path / "brain.img").array.shape == (6, 5, 4)
    nib.save(nib.MGHImage(vol.astype(np.float32), np.diag([1.0, 1.0, 1.0, 1])), tmp_path / "t1.mgz")
    m = load(tmp_path / "t1.mgz")
    assert m.array.shape == (6, 5, 4) and m.metadata["format"] == "mgh" and m.orientation_known
    (tmp_path / "brain.img").unlink()
    with pytest.raises(CorruptFileError, match="brain.hdr: the other half of the header/image pair is missing"):
        load(tmp_path / "brain.hdr")
