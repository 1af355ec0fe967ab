"""The bundled default model on bundled sample files: a file in, files and numbers out."""

from __future__ import annotations

import json
import shutil

from typer.testing import CliRunner

from rcmed.cli import app
from rcmed.demo import SAMPLES, run_demo


def _subset(tmp_path, stems):
    cases = [c for c in json.loads((SAMPLES / "demo.json").read_text()) if c["file"].split(".")[0] in stems]
    d = tmp_path / "samples"
    d.mkdir()
    for c in cases:
        for f in [c["file"], *c["truth"].values()]:
            shutil.copy(SAMPLES / f, d / f)
    (d / "demo.json").write_text(json.dumps(cases))
    return d


def test_default_model_segments_by_words_and_says_not_found(tmp_path):
    samples = _subset(tmp_path, {"dermoscopy_skin", "endoscopy_colon", "microscopy_nuclei"})
    rows = {r.case: r for r in run_demo(tmp_path / "out", samples=samples, packages=[])}
    skin = rows["dermoscopy_skin"].targets[0]
    assert skin["name"] == "skin lesion" and skin["found"] and skin["dice"] > 0.8
    # a held-out tile of the real DSB-2018 image: scored against its true mask (Dice 0 when called absent). The
    # shipped weights' nuclei presence is miscalibrated on real images (model card), so its value is reported
    # there and in the demo summary, not asserted here
    nuclei = rows["microscopy_nuclei"].targets[0]
    assert nuclei["name"] == "nuclei" and nuclei["truth"] == "present" and 0.0 <= nuclei["dice"] <= 1.0
    polyp = rows["endoscopy_colon"].targets[0]
    assert polyp["truth"] == "absent" and not polyp["found"]  # this endoscopy image has no polyp
    for stem in rows:
        assert (tmp_path / "out" / stem / "answer.json").is_file() and (tmp_path / "out" / stem / "overlay.png").is_file()
    assert (tmp_path / "out" / "dermoscopy_skin" / "mask_0_skin_lesion.png").is_file()
    assert not list((tmp_path / "out" / "endoscopy_colon").glob("mask_*"))  # no mask for what is not there
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "skin lesion: Dice" in summary and "polyp: not found (absent: correct)" in summary


def test_demo_cli_with_a_missing_model_is_one_clear_line(tmp_path):
    res = CliRunner().invoke(app, ["demo", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "not an RCMed model folder" in res.output and "Traceback" not in res.output


def test_demo_shows_real_images_that_packages_ship_without_scoring_them(tmp_path):
    from rcmed.demo import PACKAGE_CASES

    samples = _subset(tmp_path, set())
    fundus = [c for c in PACKAGE_CASES if c[0] == "real_fundus_skimage"]
    rows = run_demo(tmp_path / "out", samples=samples, packages=[*fundus, ("real_missing", "pydicom:nope.dcm", "ct", "x")])
    shown, missing = rows
    assert shown.case == "real_fundus_skimage" and {t["name"] for t in shown.targets} <= {"optic disc", "vessels"}
    assert all(t["truth"] == "unknown" and "dice" not in t for t in shown.targets)
    assert (tmp_path / "out" / "real_fundus_skimage" / "overlay.png").is_file()
    assert missing.answer.startswith("skipped") and not missing.targets
    assert "(no expert mask)" in (tmp_path / "out" / "summary.md").read_text() or not shown.targets


def test_loading_the_default_model_prints_nothing(capfd):
    import warnings

    from rcmed.predictor import Predictor

    with warnings.catch_warnings():
        warnings.simplefilter("default")  # what a user's plain `python` shows
        Predictor.from_pretrained("default")
    out, err = capfd.readouterr()
    assert out == "" and err == "", (out, err)
