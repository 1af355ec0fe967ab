from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from rcmed.errors import (
    CorruptFileError,
    EmptyInputError,
    ImageTooLargeError,
    MixedSeriesError,
    UnsupportedFormatError,
    UnsupportedTransferSyntaxError,
)
from rcmed.io import Modality, load
from tests.conftest import write_ct_slice


def test_series_is_sorted_by_position_and_rescaled_to_hu(ct_series):
    folder, hu = ct_series
    img = load(folder)
    assert img.array.shape == (5, 12, 10)
    np.testing.assert_array_equal(img.array, hu)
    assert img.modality is Modality.CT
    assert img.spacing == (2.5, 0.7, 0.7)
    assert img.orientation == "SPL"  # slices inferior->superior, rows -> posterior, cols -> left
    assert img.origin == (-100.0, -120.0, 10.0)


def test_series_world_coordinates_match_dicom_positions(ct_series):
    folder, _ = ct_series
    img = load(folder)
    for f in folder.iterdir():
        ds = pydicom.dcmread(f)
        k = [float(v) for v in ds.ImagePositionPatient]
        world = img.affine @ np.array([0, 0, 0, 1.0])
        slice_idx = round((k[2] - world[2]) / 2.5)
        pos = img.affine @ np.array([slice_idx, 3, 4, 1.0])
        # row 3 lies 3 * 0.7 mm posterior (+y), column 4 lies 4 * 0.7 mm left (+x) of IPP
        np.testing.assert_allclose(pos[:3], [k[0] + 4 * 0.7, k[1] + 3 * 0.7, k[2]], atol=1e-6)
        stored = ds.pixel_array.astype(np.int32) - 1024
        np.testing.assert_array_equal(img.array[slice_idx], stored)


def test_mixed_series_is_rejected_with_count(ct_series, tmp_path):
    folder, _ = ct_series
    write_ct_slice(folder / "other.dcm", np.zeros((12, 10)), 50.0, generate_uid(), generate_uid())
    with pytest.raises(MixedSeriesError, match="2 SeriesInstanceUIDs"):
        load(folder)


def test_duplicate_positions_are_rejected(ct_series):
    folder, _ = ct_series
    ds = pydicom.dcmread(folder / "a.dcm")
    ds.SOPInstanceUID = generate_uid()
    ds.save_as(folder / "dup.dcm")
    with pytest.raises(MixedSeriesError, match="share one position"):
        load(folder)


def test_non_dicom_files_in_folder_are_ignored(ct_series):
    folder, hu = ct_series
    (folder / "notes.txt").write_text("hello")
    np.testing.assert_array_equal(load(folder).array, hu)


def test_empty_folder_is_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmptyInputError, match="no DICOM image files"):
        load(tmp_path / "empty")


def test_single_file_applies_rescale():
    path = get_testdata_file("CT_small.dcm", download=False)
    img = load(path)
    ds = pydicom.dcmread(path)
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(img.array, expected)
    assert img.modality is Modality.CT and img.orientation is not None


def test_rgb_dicom_reads_as_rgb():
    img = load(get_testdata_file("SC_rgb_small_odd.dcm", download=False))
    assert img.rgb and img.array.shape[-1] == 3


def test_truncated_dicom_is_corrupt_error(tmp_path):
    src = Path(get_testdata_file("CT_small.dcm", download=False))
    data = src.read_bytes()
    bad = tmp_path / "cut.dcm"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match="cut.dcm"):
        load(bad)


def test_unreadable_transfer_syntax_is_named(tmp_path):
    # MPEG-2 video: no pydicom decoder exists for it.
    path = write_ct_slice(tmp_path / "mpeg.dcm", np.zeros((8, 8)), 0.0, generate_uid(), generate_uid(),
                          transfer_syntax="1.2.840.10008.1.2.4.100")
    with pytest.raises(UnsupportedTransferSyntaxError, match="mpeg.dcm: cannot decode pixel data in MPEG2"):
        load(path)


def test_absurd_header_size_is_refused_before_decoding(tmp_path):
    path = write_ct_slice(tmp_path / "big.dcm", np.zeros((8, 8)), 0.0, generate_uid(), generate_uid())
    ds = pydicom.dcmread(path)
    ds.Rows, ds.Columns, ds.NumberOfFrames = 60000, 60000, 3
    ds.save_as(path)
    with pytest.raises(ImageTooLargeError, match="over the limit"):
        load(path)


def test_extensionless_dicom_is_detected(tmp_path):
    dst = tmp_path / "IM0001"
    shutil.copy(get_testdata_file("MR_small.dcm", download=False), dst)
    assert load(dst).modality is Modality.MRI


def test_deflated_dicom_bomb_is_refused_before_pydicom_inflates_it(tmp_path):
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    from rcmed.io.limits import ReadLimits

    pixels = np.zeros((1024, 1024), np.uint16)  # 2 MB of zeros: a few KB deflated
    path = write_ct_slice(tmp_path / "deflated.dcm", pixels, 0.0, generate_uid(), generate_uid(),
                          transfer_syntax=DeflatedExplicitVRLittleEndian)
    assert path.stat().st_size < 100_000
    with pytest.raises(ImageTooLargeError, match="deflated DICOM inflates to more than 1,000,000 bytes"):
        load(path, limits=ReadLimits(max_bytes=1_000_000))
    assert load(path).array.shape == (1024, 1024)  # under the default limit it reads as before


def test_dicom_without_preamble_is_read_when_it_is_an_image(tmp_path):
    src = get_testdata_file("CT_small.dcm", download=False)
    ds = pydicom.dcmread(src)
    bare = tmp_path / "bare.dcm"
    ds.save_as(bare, enforce_file_format=False, implicit_vr=ds.is_implicit_VR, little_endian=ds.is_little_endian)
    with open(bare, "rb") as fh:
        head = fh.read(132)
    if head[128:] == b"DICM":  # strip the preamble and file meta as old exports lack them
        raw = pydicom.filebase.DicomBytesIO()
        pydicom.filewriter.write_dataset(raw, ds)
        bare.write_bytes(raw.getvalue())
    img = load(bare)
    assert img.array.shape == (128, 128) and img.modality is Modality.CT
    (tmp_path / "text.dcm").write_bytes(b"hello, not a dicom at all" * 10)
    with pytest.raises(UnsupportedFormatError, match="text.dcm: not a DICOM file"):
        load(tmp_path / "text.dcm")


def test_a_huge_dicom_slice_is_reduced_on_read_like_a_huge_png(tmp_path):
    """Block means before the modality LUT (a huge slice never exists in floating point), spacing scaled,
    `downsampled_from` recorded, HU kept."""
    from rcmed.io.limits import ReadLimits

    stored = (np.arange(300 * 200).reshape(300, 200) % 2000).astype(np.uint16)
    path = write_ct_slice(tmp_path / "big.dcm", stored, 0.0, generate_uid(), generate_uid(), spacing=(0.5, 0.5))
    img = load(path, limits=ReadLimits(max_2d_side=100))
    assert img.array.shape == (100, 66) and img.metadata["downsampled_from"] == [300, 200]
    assert img.spacing == pytest.approx((1.5, 1.5))
    expect = stored[:300, :198].reshape(100, 3, 66, 3).mean(axis=(1, 3)).round() - 1024
    np.testing.assert_allclose(img.array, expect, atol=1)
    assert load(path).array.shape == (300, 200)  # under the default limit, read as it is


def test_a_deflated_dicom_with_bytes_after_its_stream_is_read_not_spun_on(tmp_path):
    """zlib hands back a tail after the end of the deflated stream (a padding byte); the size check used to
    spin on it forever, hanging the server's only inference thread."""
    import threading

    from pydicom.uid import DeflatedExplicitVRLittleEndian

    # 8 MB inflated: the stream ends inside a bounded read, so a tail is left over
    path = write_ct_slice(tmp_path / "deflated.dcm", np.zeros((2048, 2048), np.uint16), 0.0, generate_uid(), generate_uid(),
                          transfer_syntax=DeflatedExplicitVRLittleEndian)
    got = {}
    t = threading.Thread(target=lambda: got.update(img=load(path)), daemon=True)
    t.start()
    t.join(20)
    assert not t.is_alive(), "load() did not return"
    assert got["img"].array.shape == (2048, 2048)
