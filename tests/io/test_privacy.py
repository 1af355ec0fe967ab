"""No identifying DICOM field may reach logs, error messages, JSON or exported files."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from pydicom.uid import generate_uid
from typer.testing import CliRunner

from rcmed.cli import app
from rcmed.errors import RCMedInputError
from rcmed.io import load
from rcmed.io.writers import write_dicom_seg, write_nifti, write_overlay_png
from tests.conftest import PHI, write_ct_slice


def _assert_clean(text: str | bytes) -> None:
    for field, value in PHI.items():
        needle = value.encode() if isinstance(text, bytes) else value
        assert needle not in text, f"{field} leaked"
        for part in value.split("^"):
            if len(part) > 3:
                assert (part.encode() if isinstance(text, bytes) else part) not in text, f"{field} part leaked"


def test_summary_repr_and_logs_carry_no_phi(ct_series, caplog):
    folder, _ = ct_series
    with caplog.at_level(logging.DEBUG):
        img = load(folder)
    _assert_clean(json.dumps(img.summary()))
    _assert_clean(repr(img))
    _assert_clean(caplog.text)


def test_cli_info_text_and_json_carry_no_phi(ct_series):
    folder, _ = ct_series
    runner = CliRunner()
    for args in (["info", str(folder)], ["info", str(folder), "--json"]):
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
        _assert_clean(res.output)
    data = json.loads(runner.invoke(app, ["info", str(folder), "--json"]).output)
    assert {"shape", "spacing", "modality", "orientation"} <= set(data)


def test_error_messages_carry_no_phi(ct_series):
    folder, _ = ct_series
    write_ct_slice(folder / "other.dcm", np.zeros((12, 10)), 99.0, generate_uid(), generate_uid())
    with pytest.raises(RCMedInputError) as err:
        load(folder)
    _assert_clean(str(err.value))
    res = CliRunner().invoke(app, ["info", str(folder)])
    assert res.exit_code == 2
    _assert_clean(res.output)


def test_exported_files_carry_no_phi(ct_series, tmp_path):
    folder, hu = ct_series
    tmp_path = tmp_path / "out"
    img = load(folder)
    mask = hu > 0
    write_dicom_seg(tmp_path / "seg.dcm", {"tissue": mask}, img)
    write_nifti(tmp_path / "m.nii.gz", mask, img)
    from rcmed.io.slices import to_slices

    write_overlay_png(tmp_path / "o.png", to_slices(img).slice_image(0), [to_slices(img.with_array(mask)).slices[0]])
    for f in tmp_path.iterdir():
        raw = f.read_bytes()
        if f.suffix == ".gz":
            import gzip

            raw = gzip.decompress(raw)
        _assert_clean(raw)
    import pydicom

    seg = pydicom.dcmread(tmp_path / "seg.dcm")
    assert seg.PatientIdentityRemoved == "YES"
