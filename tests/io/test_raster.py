from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from rcmed.errors import CorruptFileError, EmptyInputError, ImageTooLargeError, UnsupportedFormatError
from rcmed.io import Modality, load


def test_png_grey_and_rgb_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.png")
    Image.fromarray(rgb).save(tmp_path / "c.png")
    g, c = load(tmp_path / "g.png"), load(tmp_path / "c.png", modality="fundus")
    np.testing.assert_array_equal(g.array, grey)
    np.testing.assert_array_equal(c.array, rgb)
    assert not g.rgb and c.rgb and c.modality is Modality.FUNDUS
    assert g.spacing is None and g.orientation is None  # PNG carries no physical geometry


def test_png_16bit_keeps_16_bits(tmp_path):
    arr = (np.arange(64 * 64, dtype=np.uint16) * 13).reshape(64, 64)
    Image.fromarray(arr).save(tmp_path / "x16.png")
    np.testing.assert_array_equal(load(tmp_path / "x16.png").array, arr)


def test_tiff_multipage_16bit_with_spacing(tmp_path):
    vol = np.random.default_rng(2).integers(0, 65535, (4, 16, 18), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "stack.tif", vol, imagej=True, resolution=(1 / 0.5, 1 / 0.25),
                     metadata={"spacing": 2.0, "unit": "micron"})
    img = load(tmp_path / "stack.tif")
    np.testing.assert_array_equal(img.array, vol)
    assert img.is_volume
    np.testing.assert_allclose(img.spacing, (0.002, 0.00025, 0.0005))  # mm, array-axis order (z, y, x)


def test_tiff_rgb(tmp_path):
    rgb = np.random.default_rng(3).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "he.tiff", rgb, photometric="rgb")
    img = load(tmp_path / "he.tiff", modality="pathology")
    assert img.rgb and img.spatial_shape == (10, 12)
    np.testing.assert_array_equal(img.array, rgb)


def test_tiff_nan_is_refused(tmp_path):
    arr = np.ones((5, 5), np.float32)
    arr[2, 2] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", arr)
    with pytest.raises(Exception, match="nan.tif: 1 NaN/inf values"):
        load(tmp_path / "nan.tif")


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_header_only(path: Path, w: int, h: int) -> None:
    """A valid PNG signature and IHDR announcing w x h, with a few bytes of pixel data."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _chunk(b"IEND", b""))


def test_absurd_png_header_is_refused(tmp_path):
    _png_header_only(tmp_path / "huge.png", 100_000, 100_000)
    with pytest.raises(ImageTooLargeError, match="huge.png: header announces shape \\(100000, 100000\\)"):
        load(tmp_path / "huge.png")


def test_truncated_png_is_corrupt(tmp_path):
    Image.fromarray(np.random.default_rng(4).integers(0, 256, (50, 50), dtype=np.uint8)).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match="cut.png"):
        load(tmp_path / "cut.png")


def test_garbage_with_image_extension_is_corrupt(tmp_path):
    (tmp_path / "x.jpg").write_bytes(b"this is not a jpeg at all")
    (tmp_path / "y.tif").write_bytes(b"II*\x00garbage")
    for name in ("x.jpg", "y.tif"):
        with pytest.raises(CorruptFileError, match=name):
            load(tmp_path / name)


def test_unknown_extension_and_empty_file(tmp_path):
    (tmp_path / "scan.xyz").write_bytes(b"abc")
    (tmp_path / "zero.png").write_bytes(b"")
    with pytest.raises(UnsupportedFormatError, match="unknown file type '.xyz'"):
        load(tmp_path / "scan.xyz")
    with pytest.raises(EmptyInputError, match="0 bytes"):
        load(tmp_path / "zero.png")


def test_unknown_modality_lists_valid_ones(tmp_path):
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(Exception, match="unknown modality 'sonar'; use one of: ct, mri"):
        load(tmp_path / "a.png", modality="sonar")


def test_reading_leaves_pillows_global_guard_as_it_was(tmp_path):
    before = Image.MAX_IMAGE_PIXELS
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "a.png")
    load(tmp_path / "a.png")
    _png_header_only(tmp_path / "huge.png", 100_000, 100_000)
    with pytest.raises(ImageTooLargeError):
        load(tmp_path / "huge.png")
    assert Image.MAX_IMAGE_PIXELS == before


def test_huge_legal_images_are_reduced_on_read_not_inflated(tmp_path):
    import tifffile
    from PIL import Image

    from rcmed.io.limits import ReadLimits
    from rcmed.io.readers import load

    limits = ReadLimits(max_2d_side=1000)
    big = np.zeros((2500, 1800), np.uint8)
    big[1000:1500, 500:900] = 200
    Image.fromarray(big).save(tmp_path / "big.png")
    img = load(tmp_path / "big.png", limits=limits)
    assert img.array.shape == (834, 600) and img.metadata["downsampled_from"] == [2500, 1800]
    assert img.array[400, 240] == 200 and img.array[10, 10] == 0  # a box-filtered copy, not noise
    Image.fromarray(np.stack([big] * 3, -1)).save(tmp_path / "big.jpg", quality=90)
    assert max(load(tmp_path / "big.jpg", limits=limits).array.shape[:2]) <= 1000
    tifffile.imwrite(tmp_path / "big.tif", big, resolution=(100.0, 100.0), resolutionunit=3)  # 0.1 mm pixels
    t = load(tmp_path / "big.tif", limits=limits)
    assert t.array.shape == (834, 600) and t.metadata["downsampled_from"] == [2500, 1800]
    assert t.spacing == pytest.approx((0.1 * 2500 / 834, 0.1 * 1800 / 600))
    small = load(tmp_path / "big.png")  # under the default limit: untouched
    assert small.array.shape == (2500, 1800) and "downsampled_from" not in small.metadata
