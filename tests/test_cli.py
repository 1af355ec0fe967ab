from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from rcmed.cli import app
from tests.conftest import SAMPLE

runner = CliRunner()


@pytest.mark.parametrize("cmd", [[], ["info"], ["data"], ["data", "convert"], ["data", "split"], ["data", "stats"]])
def test_help_everywhere(cmd):
    res = runner.invoke(app, [*cmd, "--help"])
    assert res.exit_code == 0 and "Usage" in res.output


def test_info_json_for_nifti_and_png(tmp_path):
    res = runner.invoke(app, ["info", str(SAMPLE / "imagesTr" / "phantom_000_0000.nii.gz"), "--json", "-m", "ct"])
    d = json.loads(res.output)
    assert d["shape"] == [64, 64, 16] and d["spacing"] == [0.8, 0.8, 2.5]
    assert d["modality"] == "ct" and d["orientation"] == "LPS" and d["n_slices"] == 16
    Image.fromarray(np.zeros((5, 7), np.uint8)).save(tmp_path / "x.png")
    d = json.loads(runner.invoke(app, ["info", str(tmp_path / "x.png"), "--json"]).output)
    assert d["shape"] == [5, 7] and d["spacing"] is None and d["orientation"] is None


def test_info_dicom_series_text(ct_series):
    folder, _ = ct_series
    res = runner.invoke(app, ["info", str(folder)])
    assert res.exit_code == 0
    assert "2.5 x 0.7 x 0.7 mm" in res.output and "SPL" in res.output and "ct" in res.output


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "scan.dcm").write_bytes(b"garbage" * 40)
    res = runner.invoke(app, ["info", str(tmp_path / "scan.dcm")])
    assert res.exit_code == 2
    assert res.output.strip().count("\n") == 0 and res.output.startswith("error: scan.dcm:")
    assert "Traceback" not in res.output


def test_convert_split_stats(tmp_path):
    out = tmp_path / "store"
    res = runner.invoke(app, ["data", "convert", str(SAMPLE), "--format", "nnunet", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "manifest.jsonl").is_file() and list((out / "shards").glob("*.tar"))
    res = runner.invoke(app, ["data", "split", str(out), "--train", "0.34", "--val", "0.33", "--test", "0.33"])
    assert res.exit_code == 0 and "test" in res.output
    stats = json.loads(runner.invoke(app, ["data", "stats", str(out), "--json"]).output)
    assert stats["cases"] == 3 and set(stats["splits"]) == {"train", "val", "test"}
    res = runner.invoke(app, ["data", "convert", str(SAMPLE), "--format", "nnunet", "--out", str(out)])
    assert res.exit_code == 2 and "not empty" in res.output
