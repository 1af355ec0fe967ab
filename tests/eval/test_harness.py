from __future__ import annotations

import json
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from rcmed.cli import app
from rcmed.data.split import split_by_case
from rcmed.data.synth import synth_store
from rcmed.errors import RCMedInputError
from rcmed.eval.harness import evaluate


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalstore")
    synth_store(str(root / "st"), "ct", 6, seed=11, size=64, progress=False)
    split_by_case(root / "st", {"train": 0.5, "test": 0.5}, seed=0)
    return root / "st"


def test_eval_writes_cases_tables_plots_with_baseline(tiny_trained, store, tmp_path):
    rep = evaluate(tiny_trained, store, tmp_path / "ev", split="test", baselines=("litemedsam-box",), progress=False)
    rows = [json.loads(line) for line in (tmp_path / "ev" / "cases.jsonl").read_text().splitlines()]
    assert rep.rows == len(rows) > 0 and rep.cases == 3
    assert {"liver", "body"} <= {r["target"] for r in rows}
    liver = [r for r in rows if r["target"] == "liver"]
    assert all(0.0 <= r["dice"] <= 1.0 and "dice_litemedsam-box" in r for r in liver)
    methods = {r["method"] for r in rep.tables["tasks"]}
    assert methods == {"rcmed", "litemedsam-box"}
    liver_task = next(r for r in rep.tables["tasks"] if r["method"] == "rcmed" and r["target"] == "liver")
    assert liver_task["cases"] == 3 and liver_task["scale"] == "organ"
    seg = [r for r in rows if r["task"] == "segment"]
    assert rep.tables["presence"][0]["questions"] == len(seg)
    for f in ("report.md", "tasks.csv", "modalities.csv", "registry.csv", "descriptions.csv", "dice_by_modality.png",
              "presence_reliability.png"):
        assert (tmp_path / "ev" / f).is_file(), f
    report = (tmp_path / "ev" / "report.md").read_text()
    assert "segmentation tasks over 1 modalities" in report and "Task registry:" in report
    # one describe question per record, checked against the engine's facts for the true mask
    desc = [r for r in rows if r["task"] == "describe"]
    assert len(desc) == 3 and all("name" in r["facts"] and 0 <= r["fact_accuracy"] <= 1 for r in desc)
    assert rep.tables["descriptions"][0]["modality"] == "ct" and rep.tables["descriptions"][0]["regions"] == 3
    # the registry names every task with its type; liver segmentation and presence rows agree with the rows above
    reg = {(r["target"], r["task"]): r for r in rep.tables["registry"]}
    assert reg[("liver", "segment")]["score"] == pytest.approx(sum(r["dice"] for r in liver) / len(liver), abs=1e-3)
    pres = [r for r in seg if r["target"] == "liver"]
    assert reg[("liver", "presence")]["n"] == len(pres)
    assert {t for _, t in reg} >= {"segment", "presence", "locate", "describe"}


def test_eval_refuses_cases_used_for_training(tiny_trained, store, tmp_path):
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    for f in ("config.json", "model.safetensors"):
        (run / "model" / f).write_bytes((tiny_trained / f).read_bytes())
    (run / "train.json").write_text(json.dumps({"data": [str(store)], "split": None}))
    with pytest.raises(RCMedInputError, match="used for training"):
        evaluate(run / "model", store, tmp_path / "ev", split="test", progress=False)
    # a shipped model folder lists its training cases itself (no run folder around it)
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    for f in ("config.json", "model.safetensors"):
        (shipped / f).write_bytes((tiny_trained / f).read_bytes())
    from rcmed.data.store import iter_records

    test_case = next(iter_records(store, split="test")).case_id
    (shipped / "training_cases.json").write_text(json.dumps(["other", test_case]))
    with pytest.raises(RCMedInputError, match="used for training"):
        evaluate(shipped, store, tmp_path / "ev2", split="test", progress=False)


def test_eval_cli(tiny_trained, store, tmp_path):
    res = CliRunner().invoke(app, ["eval", "--model", str(tiny_trained), "--data", str(store), "--out", str(tmp_path / "o"),
                                   "--limit", "4"])
    assert res.exit_code == 0, res.output
    assert "RCMed evaluation" in res.output
    res = CliRunner().invoke(app, ["eval", "--model", str(tiny_trained), "--data", str(store), "--out", str(tmp_path / "p"),
                                   "--split", "val"])
    assert res.exit_code == 2 and "no records in split 'val'" in res.output


def test_otsu_watershed_baseline_counts_nuclei(tiny_trained, tmp_path):
    from rcmed.data.synth import synth
    from rcmed.eval.baselines import OtsuWatershed
    from rcmed.eval.metrics import match_instances
    from rcmed.io.normalize import normalize

    p = synth("microscopy", 0, size=128)
    lab = OtsuWatershed().labels(normalize(p.image))
    m = match_instances(lab, p.instances, 0.5)
    assert m.ap > 0.3  # the classical method is a real baseline on sparse fluorescent nuclei
    synth_store(str(tmp_path / "mic"), "microscopy", 2, seed=0, size=64, progress=False)
    split_by_case(tmp_path / "mic", {"test": 1.0})
    rep = evaluate(tiny_trained, tmp_path / "mic", tmp_path / "ev", baselines=("otsu-watershed",), progress=False)
    rows = [json.loads(line) for line in (tmp_path / "ev" / "cases.jsonl").read_text().splitlines()]
    present = [r for r in rows if r["task"] == "segment" and r["present"]]
    assert present and all("ap50" in r and "ap50_otsu-watershed" in r and r["count_true"] > 0 for r in present)
    assert any(r["task"] == "count" and r["target"] == "nuclei" for r in rep.tables["registry"])
    assert {r["scale"] for r in rep.tables["tasks"]} == {"cell"}


def test_compare_models_and_no_loop_ablation(tiny_trained, store, tmp_path):
    import shutil

    other = tmp_path / "second"
    shutil.copytree(tiny_trained, other)
    res = CliRunner().invoke(app, ["eval", "--model", str(tiny_trained), "--model", str(other), "--data", str(store),
                                   "--out", str(tmp_path / "cmp"), "--ablation", "no-loop", "--ablation", "loop",
                                   "--ablation", "loop-no-region", "--ablation", "loop-no-mask-prompt", "--limit", "6"])
    assert res.exit_code == 0, res.output
    methods = {line.split(",")[0] for line in (tmp_path / "cmp" / "modalities.csv").read_text().splitlines()[1:]}
    assert methods == {"rcmed", "second", "rcmed-no-loop", "rcmed-loop", "rcmed-loop-no-region", "rcmed-loop-no-mask-prompt"}
    bad = CliRunner().invoke(app, ["eval", "--model", str(tiny_trained), "--data", str(store), "--out", str(tmp_path / "x"),
                                   "--ablation", "no-brain"])
    assert bad.exit_code == 2 and "unknown ablation" in bad.output


def test_unet_baseline_trains_on_the_train_split(tiny_trained, store, tmp_path):
    rep = evaluate(tiny_trained, store, tmp_path / "u", baselines=("unet",), unet_budget_s=8, progress=False)
    unet = {r["target"]: r["dice"] for r in rep.tables["tasks"] if r["method"] == "unet"}
    assert unet["body"] > 0.8  # the easiest target: a real, trained baseline
    assert set(unet) >= {"liver", "vertebra"}


def test_unet_checkpoints_score_the_net_on_the_way_outside_the_budget(store):
    from rcmed.eval.baselines import UNetBaseline

    seen = []

    def check(net, seconds):
        seen.append((net.steps, seconds, net.net.training, net.predict(np.zeros((64, 64, 3), np.float32), "liver", (64, 64)).shape))
        if len(seen) == 1:
            time.sleep(2.5)  # a scoring longer than the whole budget must not end the training

    # (one step a checkpoint and 2 s of budget: two steps fit even on a loaded machine)
    net = UNetBaseline(store, budget_s=2.0, size=64, checkpoint=check, checkpoint_every=1)
    assert len(seen) >= 2 and [s for s, *_ in seen] == list(range(1, len(seen) + 1))
    assert all(not training and shape == (64, 64) for _, _, training, shape in seen)  # scored in eval mode
    assert all(0 <= sec < 2.5 for _, sec, *_ in seen) and net.steps >= seen[-1][0]  # the 2.5 s scoring not counted
    assert net.net.training is False  # left ready to predict


def test_unet_trains_to_a_step_count_and_its_weights_say_so(store, tmp_path):
    """A convergence check counts steps, not seconds: a run beside other work gets fewer steps in the same time."""
    from safetensors import safe_open

    from rcmed.eval.baselines import UNetBaseline

    seen = []
    w = tmp_path / "unet.safetensors"
    net = UNetBaseline(store, budget_s=float("inf"), size=64, max_steps=7, weights=w,
                       checkpoint=lambda n, s: seen.append(n.steps), checkpoint_every=2)
    assert net.steps == 7 and seen == [2, 4, 6]
    with safe_open(str(w), "pt") as fh:
        assert fh.metadata()["max_steps"] == "7" and fh.metadata()["steps"] == "7"
    assert UNetBaseline(store, budget_s=float("inf"), size=64, max_steps=7, weights=w).steps == 7  # loaded, not retrained
    with pytest.raises(RCMedInputError, match="another store, size or budget"):
        UNetBaseline(store, budget_s=float("inf"), size=64, max_steps=8, weights=w)


def test_evaluate_trains_the_unet_reference_to_the_step_count_it_is_given(tiny_trained, store, tmp_path):
    """`realtest` defines the U-Net reference by its steps (`evaluate(unet_max_steps=)`), not by a wall-clock budget."""
    from safetensors import safe_open

    w = tmp_path / "unet.safetensors"
    evaluate(tiny_trained, store, tmp_path / "u", baselines=("unet",), unet_budget_s=float("inf"), unet_size=64,
             unet_weights=w, unet_max_steps=3, progress=False, describe=False)
    with safe_open(str(w), "pt") as fh:
        assert fh.metadata()["steps"] == "3" and fh.metadata()["max_steps"] == "3"


def test_per_dataset_table_with_component_box_oracle(tiny_trained, tmp_path):
    """A pairs store of two datasets: one table row per dataset and method, presence split into present and
    absent questions, nuclei scored by instance F1 and AJI, and the per-component-box oracle beside them."""
    import numpy as np
    from PIL import Image

    from rcmed.data.convert import convert

    rng = np.random.default_rng(0)
    for mod, name, target in [("endoscopy", "polyps", "polyp"), ("microscopy", "cells", "nuclei")]:
        ds = tmp_path / "src" / mod / name
        (ds / "images").mkdir(parents=True)
        lines = ["case,patient,split,image,targets"]
        for i in range(2):
            img = rng.integers(0, 60, (64, 64, 3), dtype=np.uint8)
            lab = np.zeros((64, 64), np.uint16)
            lab[8:20, 8:20], lab[40:52, 30:44] = 1, 2
            img[lab > 0] = 220
            Image.fromarray(img if mod == "endoscopy" else img[..., 0]).save(ds / "images" / f"c{i}.png")
            (ds / "masks" / f"c{i}").mkdir(parents=True)
            Image.fromarray((lab > 0).astype(np.uint8) * 255).save(ds / "masks" / f"c{i}" / f"{target}.png")
            if target == "nuclei":
                Image.fromarray(lab).save(ds / "masks" / f"c{i}" / "nuclei.instances.png")
            lines.append(f"c{i},c{i},test,images/c{i}.png,{target}")
        (ds / "cases.csv").write_text("\n".join(lines) + "\n")
    convert(tmp_path / "src", "pairs", tmp_path / "st", progress=False, cross_absent=1, body_region="tissue")
    rep = evaluate(tiny_trained, tmp_path / "st", tmp_path / "ev", baselines=("litemedsam-cc-box",), progress=False,
                   per_dataset=1, describe=False)
    rows = {(r["dataset"], r["method"]): r for r in rep.tables["datasets"]}
    assert set(rows) == {(d, m) for d in ("polyps", "cells") for m in ("rcmed", "litemedsam-cc-box")}
    assert all(r["case_targets"] == 1 for r in rows.values())  # one record of each dataset
    # the oracle sees each of the two bright squares' own box: near-perfect on this easy image
    assert rows[("polyps", "litemedsam-cc-box")]["dice"] > 0.8
    model = rows[("cells", "rcmed")]
    assert model["present_questions"] == 1 and 0 <= model["aji"] <= 1 and 0 <= model["instance_f1_50"] <= 1
    pres = rep.tables["presence"][0]
    assert pres["present_accuracy"] is not None
    assert (tmp_path / "ev" / "datasets.csv").is_file()


def test_modality_recognition_is_scored_when_the_model_has_a_head(tiny_trained, store, tmp_path):
    import shutil

    import torch

    from rcmed.model.modality import fit

    folder = tmp_path / "model"
    shutil.copytree(tiny_trained, folder)
    g = torch.Generator().manual_seed(0)
    from rcmed.model.config import RCMedConfig

    dim = 2 * RCMedConfig.tiny().vision.neck_dim  # pooled mean and max of the tiny encoder's embedding
    fit(torch.randn(4, dim, generator=g), ["ct", "ct", "mri", "mri"], epochs=5).save(folder)
    rep = evaluate(folder, store, tmp_path / "ev", split="test", progress=False, describe=False)
    rows = {r["dataset"]: r for r in rep.tables["recognition"]}
    assert rows["all"]["images"] == 3 and len(rows) == 2
    (dataset,) = set(rows) - {"all"}
    assert 0.0 <= rows["all"]["accuracy"] <= 1.0 and rows[dataset]["modality"] == "ct"
    wrong = rows["all"]["accuracy"] < 1
    assert (rows["all"]["most_common_error"] == "mri") == wrong
    assert (tmp_path / "ev" / "recognition.csv").is_file()
