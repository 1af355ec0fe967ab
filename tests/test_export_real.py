"""The real-data recipe's export (`scripts/train_default.py export_real`): the chosen run's weights and rules land in
the model folder, the training cases of every store the decoder stages learnt from are recorded (so `rcmed eval`
refuses to score them), and results that describe the weights being replaced go."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from rcmed.data.build import build_store
from rcmed.data.split import split_by_case
from rcmed.data.store import iter_records
from rcmed.data.synth import synth_store

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def recipe(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import train_default as td
    finally:
        sys.path.pop(0)
    data, runs, weights = tmp_path / "data", tmp_path / "runs", tmp_path / "weights"
    for name, folder in (("DATA", data), ("RUNS", runs), ("WEIGHTS", weights)):
        monkeypatch.setattr(td, name, folder)
    monkeypatch.setattr(td, "ROOT", tmp_path)
    for name, mod, seed in (("real", "ct", 1), ("phantoms-11", "mri", 2)):
        synth_store(str(data / name), mod, 4, seed=seed, size=64, progress=False)
        split_by_case(data / name, {"train": 0.5, "val": 0.5}, seed=0)
        build_store(data / name, data / f"{name}-built", workers=1, progress=False)
    return td, data, runs, weights


def _write(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_export_real_ships_the_chosen_stage_and_drops_what_described_the_weights_it_replaces(recipe):
    td, data, runs, weights = recipe
    model = runs / f"default-{td.SHIPPED_REAL}" / "model"
    _write(model / "config.json", '{"new": true}')
    _write(model / "model.safetensors", "new weights")
    _write(model / "postprocess.json", '{"rules": "chosen on validation"}')
    for stage in td.DECODER_STAGES[:td.DECODER_STAGES.index(td.SHIPPED_REAL) + 1]:
        for f in ("val_summary.json", "val_history.json", "metrics.csv"):
            _write(runs / f"default-{stage}" / f, f"{stage} {f}")
    _write(weights / "model.safetensors", "old weights")
    _write(weights / "training_cases.json", json.dumps(["an-earlier-case"]))
    _write(weights / "familiarity.safetensors", "statistics of the frozen encoder")
    eval_ = weights / "eval"
    old = [_write(eval_ / f) for f in ("real_test_worst.json", "phantom_fresh_modalities.csv", "real_val_scale.json",
                                       "real9_val_summary.json", "real10_views.json", "real12_loop_ablation.json")]
    kept = [_write(eval_ / f) for f in ("real_test_log.jsonl", "tried_real7_views.json", "familiarity_val.json")]

    td.export_real()

    assert (weights / "model.safetensors").read_text() == "new weights"
    assert json.loads((weights / "config.json").read_text()) == {"new": True}
    assert json.loads((weights / "postprocess.json").read_text()) == {"rules": "chosen on validation"}
    assert [f.name for f in old if f.exists()] == []  # results of other weights, stage 10 and up included
    assert all(f.is_file() for f in kept)  # the test log lists every model scored; tried runs stay as tried
    assert (weights / "familiarity.safetensors").is_file()
    assert (eval_ / f"{td.SHIPPED_REAL}_val_summary.json").read_text() == f"{td.SHIPPED_REAL} val_summary.json"
    assert (weights / f"{td.SHIPPED_REAL}_metrics.csv").is_file()
    cases = set(json.loads((weights / "training_cases.json").read_text()))
    train = {r.case_id for s in ("real-built", "phantoms-11-built") for r in iter_records(data / s, split="train")}
    val = {r.case_id for s in ("real-built", "phantoms-11-built") for r in iter_records(data / s, split="val")}
    assert train and val
    assert "an-earlier-case" in cases and train <= cases and not (val & cases)


def test_export_real_without_rules_ships_none_rather_than_the_old_weights_rules(recipe):
    td, data, runs, weights = recipe
    model = runs / f"default-{td.SHIPPED_REAL}" / "model"
    _write(model / "config.json", "{}")
    _write(model / "model.safetensors", "new")
    for stage in td.DECODER_STAGES[:td.DECODER_STAGES.index(td.SHIPPED_REAL) + 1]:
        for f in ("val_summary.json", "val_history.json", "metrics.csv"):
            _write(runs / f"default-{stage}" / f)
    _write(weights / "training_cases.json", "[]")
    _write(weights / "postprocess.json", json.dumps({"thresholds": {"liver": -2.0}}))
    td.export_real()
    from rcmed.postprocess import PostprocessRules

    assert PostprocessRules.load(weights) == PostprocessRules()
