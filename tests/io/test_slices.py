from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from rcmed.errors import RCMedInputError, ShapeMismatchError
from rcmed.io import load
from rcmed.io.image import MedicalImage
from rcmed.io.slices import from_slices, to_slices


@pytest.fixture
def ras_volume(tmp_path):
    """A NIfTI stored the 'neurological' way (i -> right, j -> anterior, k -> superior)."""
    data = np.random.default_rng(3).integers(0, 1000, (8, 9, 5)).astype(np.int16)
    aff = np.diag([1.0, 1.2, 3.0, 1.0])
    img = nib.Nifti1Image(data, aff)
    img.set_sform(aff, code=1)
    nib.save(img, str(tmp_path / "v.nii.gz"))
    return load(tmp_path / "v.nii.gz"), data


@pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal", 0, 1, 2])
def test_slices_round_trip_exactly(ras_volume, plane):
    img, data = ras_volume
    stack = to_slices(img, plane)
    np.testing.assert_array_equal(from_slices(stack.slices, stack), data)


def test_axial_slices_are_radiological_whatever_the_file_order(ras_volume):
    img, data = ras_volume
    stack = to_slices(img, "axial")
    assert stack.slices.shape == (5, 9, 8)
    s = stack.slice_image(2)
    assert s.orientation == "PL"  # rows run to posterior, columns to patient left
    assert s.spacing == (1.2, 1.0)
    # every slice pixel holds the file voxel at the same patient position
    for (r, c) in [(0, 0), (3, 5), (8, 7)]:
        world = s.affine @ np.array([r, c, 0, 1.0])
        ijk = np.linalg.solve(img.affine, world).round().astype(int)
        assert s.array[r, c] == data[tuple(ijk[:3])]


def test_mask_stacked_from_slices_lies_on_source_voxels(ras_volume):
    img, data = ras_volume
    stack = to_slices(img, "axial")
    pred = stack.slices > 500  # any per-slice "prediction"
    np.testing.assert_array_equal(from_slices(pred, stack), data > 500)


def test_plane_needs_known_orientation():
    vol = MedicalImage(array=np.zeros((3, 4, 5)))
    assert to_slices(vol).slices.shape == (3, 4, 5)  # default: axis 0
    with pytest.raises(RCMedInputError, match="no known orientation"):
        to_slices(vol, "axial")
    with pytest.raises(RCMedInputError, match="needs a volume"):
        to_slices(MedicalImage(array=np.zeros((4, 5))))


def test_from_slices_checks_shape(ras_volume):
    img, _ = ras_volume
    stack = to_slices(img, "axial")
    with pytest.raises(ShapeMismatchError, match="expected"):
        from_slices(np.zeros((5, 8, 9)), stack)
