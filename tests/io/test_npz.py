from __future__ import annotations

import io
import pickle
import zipfile

import numpy as np
import pytest

from rcmed.errors import CorruptFileError, ShapeMismatchError
from rcmed.io import Modality, load
from rcmed.io.limits import DEFAULT_LIMITS
from rcmed.io.npz import read_segfm


def _segfm(path, imgs, gts, spacing=(0.8, 0.7, 2.5), prompts=None):
    prompts = prompts if prompts is not None else {"1": "liver in abdominal CT", "2": "liver tumour", "instance_label": 0}
    np.savez_compressed(path, imgs=imgs, gts=gts, spacing=np.array(spacing), text_prompts=np.array(prompts, dtype=object))


def test_segfm_case_is_read_without_unsafe_pickle(tmp_path):
    imgs = np.random.default_rng(0).integers(-100, 200, (6, 16, 20)).astype(np.int16)
    gts = np.zeros_like(imgs, dtype=np.uint8)
    gts[2:4, 4:8, 5:9] = 1
    gts[3, 6, 6] = 2
    _segfm(tmp_path / "CT_AbdTumor_case1.npz", imgs, gts)
    case = read_segfm(tmp_path / "CT_AbdTumor_case1.npz", Modality.UNKNOWN, DEFAULT_LIMITS)
    np.testing.assert_array_equal(case.image.array, imgs)
    np.testing.assert_array_equal(case.labels, gts)
    assert case.image.modality is Modality.CT
    assert case.image.spacing == (2.5, 0.7, 0.8)  # file is (x, y, z); array order is (z, y, x)
    assert case.label_names == {1: "liver in abdominal CT", 2: "liver tumour"}
    assert not case.instance
    assert load(tmp_path / "CT_AbdTumor_case1.npz").spatial_shape == (6, 16, 20)


def test_npz_with_hostile_pickle_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    with zipfile.ZipFile(tmp_path / "evil.npz", "w") as zf:
        arr = io.BytesIO()
        np.save(arr, np.zeros((4, 4), np.uint8))
        zf.writestr("imgs.npy", arr.getvalue())
        zf.writestr("text_prompts.npy", _npy_object(Evil()))
    with pytest.raises(CorruptFileError, match="refusing to load builtins.print"):
        read_segfm(tmp_path / "evil.npz", Modality.UNKNOWN, DEFAULT_LIMITS)


def _npy_object(obj) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|O", "fortran_order": False, "shape": ()})
    pickle.dump(obj, buf, protocol=3)
    return buf.getvalue()


def test_segfm_shape_mismatch(tmp_path):
    _segfm(tmp_path / "MR_x.npz", np.zeros((4, 8, 8), np.int16), np.zeros((4, 8, 7), np.uint8))
    with pytest.raises(ShapeMismatchError, match="MR_x.npz"):
        read_segfm(tmp_path / "MR_x.npz", Modality.UNKNOWN, DEFAULT_LIMITS)


def test_npz_not_a_zip(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"nope")
    with pytest.raises(CorruptFileError, match="bad.npz: not a readable .npz"):
        load(tmp_path / "bad.npz")


def test_npz_bomb_is_refused_before_inflating(tmp_path):
    import zipfile

    from rcmed.errors import ImageTooLargeError
    from rcmed.io.limits import ReadLimits

    # 64 MB of zeros compress to a few tens of KB; the header is honest, the size is the problem
    np.savez_compressed(tmp_path / "CT_bomb.npz", imgs=np.zeros((64, 1024, 1024), np.uint8))
    assert (tmp_path / "CT_bomb.npz").stat().st_size < 1_000_000
    with pytest.raises(ImageTooLargeError, match="announces 67,108,864 bytes"):
        load(tmp_path / "CT_bomb.npz", limits=ReadLimits(max_bytes=16 * 2**20))
    # a header announcing less than the member holds is a damaged file, read no further than announced
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": (2, 4, 4)})
    with zipfile.ZipFile(tmp_path / "CT_lie.npz", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("imgs.npy", b"\x93NUMPY" + bytes([1, 0]) + header.getvalue()[8:] + bytes(10_000_000))
    with pytest.raises(CorruptFileError, match="more data than its header announces"):
        load(tmp_path / "CT_lie.npz")
