"""The prompt suite on a tiny trained model and a store of CT phantoms: every category asked, the table written,
and what must be refused is refused."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from rcmed.data.split import split_by_case
from rcmed.data.synth import synth_store
from rcmed.eval.prompt_suite import PARAPHRASES, run_prompt_suite, variants
from rcmed.predictor import Predictor


@pytest.fixture(scope="module")
def taught(tiny_trained, tmp_path_factory):
    folder = tmp_path_factory.mktemp("suite") / "model"
    shutil.copytree(tiny_trained, folder)
    (folder / "targets.json").write_text(json.dumps({"ct": ["body", "kidneys", "liver", "tumour"], "endoscopy": ["polyp"]}))
    return folder


def test_every_category_is_asked_and_unknown_names_are_refused(taught, tmp_path):
    store = tmp_path / "st"
    synth_store(str(store), "ct", 3, seed=5, size=64, progress=False)
    split_by_case(store, {"test": 1.0})
    table = run_prompt_suite(Predictor.from_pretrained(taught), store, tmp_path / "out", split="test")
    cats = {r["category"] for r in table}
    assert cats == {"template", "paraphrase", "synonym", "multi", "unknown", "other-modality"}
    assert {r["family"] for r in table if r["category"] == "paraphrase"} == set(PARAPHRASES)
    by = {r["category"]: r for r in table}
    # never taught, or taught only on endoscopy: no mask, whatever the tiny model would have painted
    assert by["unknown"]["refusal_accuracy"] == 1.0 and by["other-modality"]["refusal_accuracy"] == 1.0
    # the request reader turns these paraphrases into the template: the same answer, the same Dice
    same = {r["family"]: r["dice_vs_template"] for r in table if r["category"] == "paraphrase"}
    assert same["can-you-outline"] == same["where-is"] == same["show-me"] == 0.0
    rows = list(csv.DictReader(open(tmp_path / "out" / "prompt_suite.csv")))
    assert len(rows) == len(table)
    cases = [json.loads(line) for line in open(tmp_path / "out" / "prompt_suite_cases.jsonl")]
    assert all(0.0 <= c["dice"] <= 1.0 for c in cases if c["present"])


def test_variants_stand_for_the_name():
    known = {"brain tumour", "optic disc", "liver", "polyp"}
    assert "brain tumor" in variants("brain tumour", known)
    assert "optic disk" in variants("optic disc", known)
    assert variants("liver", known) == ["livers"] and "polyps" in variants("polyp", known)
