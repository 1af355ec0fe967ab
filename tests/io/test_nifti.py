from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from rcmed.errors import CorruptFileError, ImageTooLargeError, NonFiniteError, ShapeMismatchError
from rcmed.io import load
from rcmed.io.writers import write_nifti


def _save(path, data, affine):
    img = nib.Nifti1Image(data, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    nib.save(img, str(path))


@pytest.fixture
def oblique_affine():
    rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # 90 deg about z: unusual voxel order
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([0.9, 1.1, 3.0])
    aff[:3, 3] = [12.0, -7.0, 40.0]
    return aff


def test_nifti_geometry_is_read(tmp_path, oblique_affine):
    data = np.random.default_rng(5).normal(0, 1, (10, 12, 6)).astype(np.float32)
    _save(tmp_path / "a.nii.gz", data, oblique_affine)
    img = load(tmp_path / "a.nii.gz", modality="mri")
    np.testing.assert_allclose(img.array, data)
    assert img.spacing == (0.9, 1.1, 3.0)
    assert img.orientation == "ALS"  # RAS+: axis 0 -> +y (anterior), axis 1 -> -x (left), axis 2 -> +z
    np.testing.assert_allclose(img.origin, [-12.0, 7.0, 40.0])  # LPS


def test_mask_written_for_nifti_overlays_exactly(tmp_path, oblique_affine):
    data = np.zeros((10, 12, 6), np.int16)
    _save(tmp_path / "img.nii", data, oblique_affine)
    img = load(tmp_path / "img.nii")
    mask = np.zeros(img.spatial_shape, bool)
    mask[2:5, 3:9, 1:4] = True
    write_nifti(tmp_path / "mask.nii.gz", mask, img)
    back = nib.load(str(tmp_path / "mask.nii.gz"))
    np.testing.assert_allclose(back.affine, oblique_affine, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(back.dataobj).astype(bool), mask)
    assert back.header["sform_code"] == 1 and back.header["qform_code"] == 1


def test_scaled_nifti_is_returned_in_physical_units(tmp_path):
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    img = nib.Nifti1Image(data, np.eye(4))
    img.header.set_slope_inter(2.0, -10.0)
    nib.save(img, str(tmp_path / "s.nii"))
    np.testing.assert_allclose(load(tmp_path / "s.nii").array, data * 2.0 - 10.0)


def test_nifti_mask_shape_mismatch(tmp_path):
    _save(tmp_path / "img.nii", np.zeros((4, 4, 4), np.int16), np.eye(4))
    with pytest.raises(ShapeMismatchError, match="mask shape"):
        write_nifti(tmp_path / "m.nii.gz", np.zeros((4, 4, 3), bool), load(tmp_path / "img.nii"))


def test_nifti_nan_is_refused(tmp_path):
    data = np.zeros((3, 3, 3), np.float32)
    data[1, 1, 1] = np.inf
    _save(tmp_path / "bad.nii.gz", data, np.eye(4))
    with pytest.raises(NonFiniteError, match="bad.nii.gz"):
        load(tmp_path / "bad.nii.gz")


def test_nifti_absurd_header(tmp_path):
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((30_000, 30_000, 30_000))  # NIfTI-1 dims are int16
    hdr.set_data_dtype(np.uint8)
    raw = hdr.binaryblock + b"\x00" * 4 + b"\x00" * 100
    (tmp_path / "huge.nii").write_bytes(raw)
    with pytest.raises(ImageTooLargeError, match="huge.nii"):
        load(tmp_path / "huge.nii")


def test_truncated_nifti_is_corrupt(tmp_path):
    _save(tmp_path / "a.nii", np.ones((20, 20, 20), np.float32), np.eye(4))
    raw = (tmp_path / "a.nii").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(gzip.compress(raw[: len(raw) // 3]))
    with pytest.raises(CorruptFileError, match="cut.nii.gz"):
        load(tmp_path / "cut.nii.gz")
