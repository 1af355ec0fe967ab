from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
import pytest
from PIL import Image

from rcmed.errors import InvalidMaskError, RCMedInputError, ShapeMismatchError
from rcmed.io import load
from rcmed.io.image import MedicalImage, Modality
from rcmed.io.writers import write_dicom_seg, write_mask_png, write_overlay_png
from rcmed.overlay import PALETTE


def test_mask_png_round_trip_and_label_maps(tmp_path):
    m = np.zeros((9, 11), bool)
    m[2:5, 3:7] = True
    write_mask_png(tmp_path / "m.png", m)
    back = np.asarray(Image.open(tmp_path / "m.png"))
    assert back.shape == (9, 11) and set(np.unique(back)) == {0, 255}
    np.testing.assert_array_equal(back > 0, m)
    labels = np.arange(99).reshape(9, 11) * 300  # > 255 -> 16-bit
    write_mask_png(tmp_path / "l.png", labels, label_map=True)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "l.png")), labels)


def test_non_binary_mask_is_refused_and_nothing_written(tmp_path):
    with pytest.raises(InvalidMaskError, match="not binary"):
        write_mask_png(tmp_path / "m.png", np.array([[0, 1], [2, 3]]))
    assert list(tmp_path.iterdir()) == []  # no partial or temporary file left


def test_overlay_paints_palette_colours(tmp_path):
    img = MedicalImage(array=np.zeros((20, 20), np.uint8), modality=Modality.XRAY)
    a = np.zeros((20, 20), bool)
    a[2:10, 2:10] = True
    b = np.zeros((20, 20), bool)
    b[12:18, 12:18] = True
    write_overlay_png(tmp_path / "o.png", img, [a, b])
    rgb = np.asarray(Image.open(tmp_path / "o.png"))
    assert rgb.shape == (20, 20, 3)
    assert tuple(rgb[2, 2]) == PALETTE[0][1]  # outline pixel: opaque first colour (red)
    assert tuple(rgb[12, 12]) == PALETTE[1][1]
    assert rgb[5, 5, 0] > rgb[5, 5, 1]  # red-tinted fill
    assert tuple(rgb[0, 19]) == (0, 0, 0)  # untouched background
    with pytest.raises(ShapeMismatchError, match="mask 0"):
        write_overlay_png(tmp_path / "x.png", img, [np.zeros((5, 5), bool)])


def test_dicom_seg_references_the_source_series(ct_series, tmp_path):
    folder, hu = ct_series
    img = load(folder)
    liver = hu > 500
    lesion = np.zeros(hu.shape, bool)
    lesion[2, 3:6, 3:6] = True
    write_dicom_seg(tmp_path / "seg.dcm", {"liver": liver, "lesion": lesion}, img)
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    assert seg.number_of_segments == 2
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == pydicom.dcmread(next(folder.iterdir())).SeriesInstanceUID
    # Read the SEG back per source instance and compare with what we wrote, slice by slice.
    for k, src in enumerate(img.source_files):
        uid = pydicom.dcmread(src, stop_before_pixels=True).SOPInstanceUID
        px = seg.get_pixels_by_source_instance(source_sop_instance_uids=[uid], segment_numbers=[1, 2])
        np.testing.assert_array_equal(px[0, ..., 0].astype(bool), liver[k])
        np.testing.assert_array_equal(px[0, ..., 1].astype(bool), lesion[k])


def test_dicom_seg_needs_a_dicom_source(tmp_path):
    with pytest.raises(RCMedInputError, match="needs a source image read from DICOM"):
        write_dicom_seg(tmp_path / "s.dcm", {"x": np.zeros((4, 4), bool)}, MedicalImage(array=np.zeros((4, 4))))


def test_result_files_get_the_usual_mode_not_0600(tmp_path):
    import os
    import stat

    from rcmed.io.atomic import atomic_dir, atomic_path

    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "answer.json") as tmp:
            tmp.write_text("{}")
        with atomic_dir(tmp_path / "out") as d:
            (d / "x").write_text("1")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "answer.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755
