"""Training runs on the tiny config: resumable after SIGKILL with identical final weights, and
data-parallel under torchrun with the gloo backend on this CPU."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rcmed.data.build import build_store
from rcmed.data.split import split_by_case
from rcmed.data.synth import synth_store
from rcmed.train.config import TrainConfig
from rcmed.train.trainer import Trainer

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train")
    synth_store(str(root / "st"), "ct", 16, seed=3, size=64, progress=False)
    split_by_case(root / "st", {"train": 1.0})
    build_store(root / "st", root / "built", progress=False)
    return root / "built"


def _config(built: Path, out: Path, **kw) -> Path:
    cfg = TrainConfig(data=[str(built)], out=str(out), steps=kw.pop("steps", 16), batch_size=4, save_every=4,
                      lr=2e-3, warmup_steps=2, **kw)
    path = out.parent / f"{out.name}.json"
    path.write_text(cfg.to_json())
    return path


def _checksum(run: Path, rank: int = 0) -> str:
    return json.loads((run / "ranks" / f"rank-{rank}.json").read_text())["checksum"]


def test_run_writes_metrics_checkpoints_model_and_plot(built, tmp_path):
    cfg = TrainConfig.load(_config(built, tmp_path / "a", steps=8))
    model_dir = Trainer(cfg).train()
    run = tmp_path / "a"
    assert (model_dir / "model.safetensors").is_file() and (run / "loss.png").is_file()
    rows = (run / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,loss,lm") and len(rows) == 9
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-0000004", "step-0000008"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss/loss")] == list(range(1, 9))
    targets = json.loads((model_dir / "targets.json").read_text())  # what `rcmed describe` looks for by default
    assert "liver" in targets["ct"]


def test_sigkill_then_resume_reaches_the_same_weights(built, tmp_path):
    Trainer(TrainConfig.load(_config(built, tmp_path / "full", steps=24))).train()
    cfg_b = _config(built, tmp_path / "killed", steps=24)
    proc = subprocess.Popen([sys.executable, "-m", "rcmed.train.run", "--config", str(cfg_b)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = tmp_path / "killed" / "checkpoints" / "step-0000004" / "trainer.json"
    deadline = time.time() + 120
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert first.exists(), "the run died before its first checkpoint"
    assert not (tmp_path / "killed" / "model").exists(), "the run finished before it could be killed"
    Trainer(TrainConfig.load(tmp_path / "killed" / "train.json"), resume=True).train()
    assert _checksum(tmp_path / "killed") == _checksum(tmp_path / "full")


def test_resume_without_checkpoint_is_a_clear_error(built, tmp_path):
    with pytest.raises(ValueError, match="no checkpoint to resume from"):
        Trainer(TrainConfig.load(_config(built, tmp_path / "none")), resume=True).train()


@pytest.mark.skipif(shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists(),
                    reason="torchrun not installed")
def test_torchrun_two_cpu_ranks_see_different_data_and_end_identical(built, tmp_path):
    cfg = _config(built, tmp_path / "ddp", steps=6)
    torchrun = str(Path(sys.executable).parent / "torchrun")
    import socket

    with socket.socket() as sock:  # a free port, so a busy 29500 cannot break the test
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    res = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", port, "-m", "rcmed.train.run",
                          "--config", str(cfg)], env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    r0 = json.loads((tmp_path / "ddp" / "ranks" / "rank-0.json").read_text())
    r1 = json.loads((tmp_path / "ddp" / "ranks" / "rank-1.json").read_text())
    # within an epoch (16 records, 8 per rank) the ranks' data are disjoint and together complete
    first0, first1 = set(r0["records_seen"][:8]), set(r1["records_seen"][:8])
    assert first0.isdisjoint(first1) and len(first0 | first1) == 16
    assert r0["params_checksum"] == r1["params_checksum"]  # DDP kept the replicas identical


def test_stream_resumes_at_the_same_sample_without_decoding_skipped_ones(built):
    from itertools import islice

    from rcmed.train.data import example_stream

    full = [(p, r) for p, r, _ in islice(example_stream([str(built)], "ground", 5, split="train"), 40)]
    resumed = [(p, r) for p, r, _ in islice(example_stream([str(built)], "ground", 5, start=21, split="train"), 10)]
    assert resumed == [x for x in full if x[0] > 21][:10]  # crosses into the second epoch too


def test_several_stores_are_interleaved_and_resume_exactly(built, tmp_path_factory):
    from itertools import islice

    from rcmed.train.data import example_stream

    root = tmp_path_factory.mktemp("second")
    synth_store(str(root / "st"), "xray", 8, seed=4, size=64, progress=False)
    split_by_case(root / "st", {"train": 1.0})
    build_store(root / "st", root / "built", progress=False)
    stores = [str(built), str(root / "built")]  # 16 CT records, 8 X-ray records: 24 per epoch
    full = [(p, r) for p, r, _ in islice(example_stream(stores, "ground", 5, split="train"), 60)]
    assert [p for p, _ in full] == sorted({p for p, _ in full})  # positions increase, one example per sample
    epoch1 = [r for p, r in full if p <= 24]
    assert sorted(epoch1) == sorted(set(epoch1)) and len(epoch1) == 24  # every record once per epoch
    first_half = [r for p, r in full if p <= 12]
    assert any("xray" in r for r in first_half) and any("ct" in r for r in first_half)  # mixed, not one store then the other
    assert [r for p, r in full if 24 < p <= 48] != epoch1  # a new order each epoch
    for start in (7, 24, 31):  # inside the first epoch, at its end, inside the second
        resumed = [(p, r) for p, r, _ in islice(example_stream(stores, "ground", 5, start=start, split="train"), 10)]
        assert resumed == [x for x in full if x[0] > start][:10]
    for some in (stores, stores[:1]):  # a split no record is in: a clear error, not an endless loop
        with pytest.raises(ValueError, match="no training samples"):
            next(example_stream(some, "ground", 5, split="test"))


def test_feature_cache_fills_once_and_matches_uncached_training(built, tmp_path):
    import csv

    common = {"model_overrides": {"freeze_vision": True}}
    Trainer(TrainConfig.load(_config(built, tmp_path / "plain", steps=6, **common))).train()
    cfg = TrainConfig.load(_config(built, tmp_path / "cached", steps=6, feature_cache=str(tmp_path / "fc"), **common))
    Trainer(cfg).train()
    entries = list((tmp_path / "fc").glob("*/*.safetensors"))
    assert 0 < len(entries) <= 16  # one per distinct image, never more than the store holds
    a = [float(r["loss"]) for r in csv.DictReader(open(tmp_path / "plain" / "metrics.csv"))]
    b = [float(r["loss"]) for r in csv.DictReader(open(tmp_path / "cached" / "metrics.csv"))]
    assert a == pytest.approx(b, rel=1e-2)
    with pytest.raises(ValueError, match="frozen encoder"):
        Trainer(TrainConfig.load(_config(built, tmp_path / "bad", steps=2, feature_cache=str(tmp_path / "fc")))).train()


def test_prefetched_batches_come_in_the_same_order_and_errors_surface(built):
    from itertools import islice

    from rcmed.train.data import batch_stream, example_stream

    def build(exs):
        return [e.prompt for e in exs]

    def run(prefetch):
        s = example_stream([str(built)], "ground", 3, split="train")
        return [(b, p, ids) for b, p, ids in islice(batch_stream(s, 4, build, prefetch), 6)]

    inline, ahead = run(0), run(3)
    assert inline == ahead and inline[-1][1] >= 24  # at least 24 samples consumed

    def failing(exs):
        raise ValueError("bad sample")

    with pytest.raises(ValueError, match="bad sample"):
        next(batch_stream(example_stream([str(built)], "ground", 3, split="train"), 4, failing, 2))


def test_draw_policy_weights_tasks_and_raises_absent_examples(built):
    """Stage "mixed" draws align and ground tasks (align ones shown painted, with no masks); task
    weights of 0 exclude a task; `absent_fraction` raises the share of absent-target examples."""
    from collections import Counter
    from itertools import islice

    from rcmed.train.data import DrawPolicy, example_stream

    asked: dict[tuple[str, str], set[str]] = {}  # (record, answer) -> the prompts it was asked with

    def stats(stage, policy, n=240):
        c, absent = Counter(), 0
        for _, rid, ex in islice(example_stream([str(built)], stage, 5, split="train", policy=policy), n):
            kind = "align" if not ex.masks and "<seg>" not in ex.answer and "<box>" not in ex.answer else "ground"
            c[kind] += 1
            absent += any(m is None for m in ex.masks)
            asked.setdefault((rid, ex.answer), set()).add(ex.prompt)
        return c, absent / n

    mixed, _ = stats("mixed", None)
    assert mixed["align"] > 20 and mixed["ground"] > 20
    only_ground, _ = stats("mixed", DrawPolicy({"describe_all": 0, "describe_colour": 0}))
    assert only_ground["align"] == 0
    _, base = stats("ground", DrawPolicy())
    _, raised = stats("ground", DrawPolicy(absent_fraction=0.6))
    assert base < 0.3 and raised > base + 0.2
    # the same request comes back in different phrasings across passes
    assert max(len(p) for p in asked.values()) >= 2
    with pytest.raises(ValueError, match="unknown tasks"):
        DrawPolicy({"segmnet_name": 2})
    for bad in (0.5, 1e9, "4"):
        with pytest.raises(ValueError, match="target_weights must be numbers in"):
            TrainConfig(target_weights={"liver lesion": bad})
    with pytest.raises(ValueError, match="absent_fraction"):
        TrainConfig(absent_fraction=1.5)
    with pytest.raises(ValueError, match="stage"):
        TrainConfig(stage="pretrain")


def test_target_weights_ask_for_a_rare_target_more_often(built):
    """A weighted target's records are streamed more often and its mask examples weigh more within a
    record, so many more of the drawn examples carry its mask (the records without it still come)."""
    from itertools import islice

    from rcmed.train.data import DrawPolicy, example_stream

    def share(policy, n=300):
        hits, ids = 0, set()
        for _, rid, ex in islice(example_stream([str(built)], "ground", 7, split="train", policy=policy), n):
            ids.add(rid)
            hits += "liver lesion <seg>" in ex.answer and "not" not in ex.answer
        return hits / n, ids

    base, ids_base = share(DrawPolicy())
    weighted, ids_weighted = share(DrawPolicy(target_weights={"Liver  Lesion": 4}))  # names compared as rules do
    assert weighted > 2 * base and weighted > 0.25
    assert ids_weighted == ids_base  # every record still streamed


@pytest.mark.parametrize("text, expected", [
    ('{"stage": "mixed", "task_weights": {"segmnt": 1}}', "unknown tasks ['segmnt']"),
    ('{"stepz": 3}', "unknown training options ['stepz']"),
    ('{"steps": 3,', "not valid JSON"),
    ('[1, 2]', "JSON object"),
    ('{"absent_fraction": -0.1}', "absent_fraction"),
    ('{"target_weights": {"nodule": 1e6}}', "target_weights must be numbers in [1, 100]"),
    ('{"target_weights": [1]}', "target_weights must be an object of name: weight"),
])
def test_cli_train_bad_config_is_one_line_error(tmp_path, text, expected):
    from typer.testing import CliRunner

    from rcmed.cli import app

    cfg = tmp_path / "bad.json"
    cfg.write_text(text)
    res = CliRunner().invoke(app, ["train", "--config", str(cfg)])
    assert res.exit_code == 2 and expected in res.output and "Traceback" not in res.output
    assert not (tmp_path / "runs").exists()


def test_a_config_states_only_what_differs_from_the_one_it_extends(tmp_path):
    """`"extends"` starts from another config beside this one; the run folder gets the resolved config."""
    from dataclasses import asdict

    from rcmed.errors import RCMedInputError
    from rcmed.train.config import TrainConfig

    (tmp_path / "base.json").write_text(json.dumps({"steps": 7, "lr": 0.01, "task_weights": {"locate": 2.0}, "stage": "mixed"}))
    (tmp_path / "child.json").write_text(json.dumps({"extends": "base.json", "lr": 0.5, "task_weights": {"describe_all": 1.0}}))
    cfg = TrainConfig.load(tmp_path / "child.json")
    assert (cfg.steps, cfg.lr, cfg.stage) == (7, 0.5, "mixed")
    assert cfg.task_weights == {"describe_all": 1.0}  # an object is replaced whole, never merged
    assert "extends" not in json.loads(cfg.to_json()) and json.loads(cfg.to_json())["steps"] == 7
    (tmp_path / "a.json").write_text(json.dumps({"extends": "b.json"}))
    (tmp_path / "b.json").write_text(json.dumps({"extends": "a.json"}))
    with pytest.raises(RCMedInputError, match="circle"):
        TrainConfig.load(tmp_path / "a.json")
    (tmp_path / "orphan.json").write_text(json.dumps({"extends": "missing.json"}))
    with pytest.raises(RCMedInputError, match="cannot read"):
        TrainConfig.load(tmp_path / "orphan.json")
    # every shipped recipe config resolves, and states fewer options than it resolves to
    root = Path(__file__).resolve().parents[2] / "configs" / "train"
    for path in sorted(root.glob("default_*.json")):
        stated = json.loads(path.read_text())
        assert len(asdict(TrainConfig.load(path))) > len(stated), path.name
