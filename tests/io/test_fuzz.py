"""Seeded mutation fuzz of every reader, and of a zipped series as the server extracts it: a damaged file is
loaded or refused with RCMedInputError, never another exception or a hang (bench/fuzz.py runs the same at scale)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("fuzz", Path(__file__).resolve().parents[2] / "bench" / "fuzz.py")
fuzz = importlib.util.module_from_spec(_spec)
sys.modules["fuzz"] = fuzz
_spec.loader.exec_module(fuzz)


@pytest.mark.filterwarnings("ignore")
def test_mutated_files_load_or_are_refused_clearly():
    counts = fuzz.run(200, seed=1, hang_s=10.0)
    assert set(counts) == {"png", "tiff", "nifti", "npz", "dicom", "zip"}  # zip: a series as the server extracts it
    for name, c in counts.items():
        assert set(c) <= {"loaded", "refused"}, (name, dict(c))
        assert c["refused"] > 0 and sum(c.values()) == 200


def test_a_reader_exception_becomes_one_input_error(tmp_path, monkeypatch):
    from rcmed.errors import CorruptFileError
    from rcmed.io import readers

    def boom(*_):
        raise KeyError("(0028,0010)")

    monkeypatch.setattr(readers, "read_pil", boom)
    (tmp_path / "x.png").write_bytes(b"\x89PNG....")
    with pytest.raises(CorruptFileError, match=r"x.png: cannot be read: KeyError"):
        readers.load(tmp_path / "x.png")
