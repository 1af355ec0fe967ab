"""`rcmed postprocess`: rules chosen on a validation store and written with their evidence."""

from __future__ import annotations

import json
import shutil

from typer.testing import CliRunner

from rcmed.cli import app
from rcmed.data.split import split_by_case
from rcmed.data.synth import synth_store
from rcmed.postprocess import PostprocessRules


def test_postprocess_command_writes_rules_with_evidence(tiny_trained, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_trained, model)
    (model / "targets.json").write_text(json.dumps({"ct": ["body", "liver", "kidneys", "tumour"], "endoscopy": ["polyp"]}))
    store = tmp_path / "st"
    synth_store(str(store), "ct", 4, seed=9, size=64, progress=False)
    split_by_case(store, {"val": 1.0})
    res = CliRunner().invoke(app, ["postprocess", str(model), "--data", str(store)])
    assert res.exit_code == 0, res.output
    assert "wrote" in res.output and "presence cuts:" in res.output
    rules = PostprocessRules.load(model)
    # every present target asked has its evidence: mirrors (4 views), the cut, and presence questions
    assert "liver" in rules.flip_evidence and "liver" in rules.threshold_evidence
    assert rules.presence_evidence["liver"]["present_questions"] >= 1
    assert rules.mask_paths == {} and rules.mask_path_evidence == {}  # the tiny encoder is not LiteMedSAM's
    refused = CliRunner().invoke(app, ["postprocess", str(model), "--data", str(store), "--split", "test"])
    assert refused.exit_code == 2 and "validation" in refused.output
