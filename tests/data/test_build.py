from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from rcmed.cli import app
from rcmed.data.build import build_store
from rcmed.data.convert import convert
from rcmed.data.store import iter_records, read_sample
from rcmed.errors import StoreError
from tests.conftest import SAMPLE


@pytest.fixture
def store(tmp_path):
    convert(SAMPLE, "nnunet", tmp_path / "st", progress=False, shard_samples=10)
    return tmp_path / "st"


def test_build_describes_and_expands_every_record(store, tmp_path):
    report = build_store(store, tmp_path / "b", workers=1, progress=False)
    recs = list(iter_records(tmp_path / "b"))
    assert report.records == len(recs) == len(list(iter_records(store)))
    for r in recs:
        assert r.descriptions and r.examples and len(r.regions) == len(r.targets) + len(r.absent)
        s = read_sample(tmp_path / "b", r)
        assert s.masks.shape[0] == len(r.targets)
        for ex in r.examples:
            assert all(k == -1 or 0 <= k < len(r.regions) for k in ex["seg_targets"])
    assert report.examples == sum(len(r.examples) for r in recs)


def test_build_is_parallel_and_resumable_with_the_same_result(store, tmp_path):
    build_store(store, tmp_path / "one", workers=1, progress=False)
    build_store(store, tmp_path / "par", workers=2, progress=False)
    one = [r.to_json() for r in iter_records(tmp_path / "one")]
    par = [r.to_json() for r in iter_records(tmp_path / "par")]
    assert one == par
    # simulate an interruption: two shards were finished, the rest not
    out = tmp_path / "resumed"
    build_store(store, out, workers=1, progress=False)
    (out / "store.json").unlink()
    (out / "manifest.jsonl").unlink()
    (out / ".parts").mkdir()
    for k, tar in enumerate(sorted((out / "shards").glob("*.tar"))):
        if k < 2:
            recs = [r for r in one if r["shard"] == f"shards/{tar.name}"]
            (out / ".parts" / f"{tar.stem}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
        else:
            tar.unlink()
    report = build_store(store, out, workers=1, progress=False)
    assert report.shards_skipped == 2 and report.shards_built == 3
    assert [r.to_json() for r in iter_records(out)] == one
    with pytest.raises(StoreError, match="already complete"):
        build_store(store, out, progress=False)


def test_cli_describe_writes_overlay_and_json(tmp_path):
    yy, xx = np.mgrid[:64, :80]
    img = np.full((64, 80), 90, np.uint8)
    m1 = (yy - 20) ** 2 + (xx - 20) ** 2 <= 81
    m2 = np.zeros((64, 80), bool)
    m2[40:60, 50:70] = True
    img[m1] = 200
    Image.fromarray(img).save(tmp_path / "img.png")
    Image.fromarray((m1 * 255).astype(np.uint8)).save(tmp_path / "liver.png")
    Image.fromarray((m2 * 255).astype(np.uint8)).save(tmp_path / "tumour.png")
    res = CliRunner().invoke(app, ["data", "describe", str(tmp_path / "img.png"), "--mask", str(tmp_path / "liver.png"),
                                   "--name", "liver", "--mask", str(tmp_path / "tumour.png"), "--name", "tumour",
                                   "--spacing", "0.5", "0.5", "--out", str(tmp_path / "out"), "-m", "ct"])
    assert res.exit_code == 0, res.output
    d = json.loads((tmp_path / "out" / "description.json").read_text())
    assert [r["name"] for r in d["regions"]] == ["liver", "tumour"]
    assert [r["colour"] for r in d["regions"]] == ["red", "green"]
    t = d["regions"][1]
    assert t["area_px"] == 400 and t["area_mm2"] == 100.0 and t["box"] == [50, 40, 69, 59] and t["count"] == 1
    assert t["shape"] and t["position"] == "lower right"
    assert d["regions"][0]["measurements"]["intensity"] == "hyperdense"
    overlay = np.asarray(Image.open(tmp_path / "out" / "overlay.png"))
    assert overlay.shape == (64, 80, 3)
    res = CliRunner().invoke(app, ["data", "describe", str(tmp_path / "img.png"), "--mask", str(tmp_path / "liver.png"),
                                   "--out", str(tmp_path / "o2")])
    assert res.exit_code == 2 and "one name per mask" in res.output


def test_cli_describe_instances_and_volume_slice(tmp_path):
    lab = np.zeros((40, 40), np.uint16)
    for k in range(5):
        lab[4 + 7 * k: 8 + 7 * k, 5:9] = k + 1
    Image.fromarray(np.zeros((40, 40), np.uint8) + 50).save(tmp_path / "cells_img.png")
    Image.fromarray(lab).save(tmp_path / "cells_masks.png")
    res = CliRunner().invoke(app, ["data", "describe", str(tmp_path / "cells_img.png"), "--instances",
                                   str(tmp_path / "cells_masks.png"), "--name", "nuclei", "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "o" / "description.json").read_text())["regions"][0]["count"] == 5
    img = SAMPLE / "imagesTr" / "phantom_000_0000.nii.gz"
    lab3 = SAMPLE / "labelsTr" / "phantom_000.nii.gz"
    res = CliRunner().invoke(app, ["data", "describe", str(img), "--instances", str(lab3), "--name", "labels",
                                   "--slice", "8", "-m", "ct", "--out", str(tmp_path / "v")])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["data", "describe", str(img), "--mask", str(lab3), "--name", "x", "--out", str(tmp_path / "w")])
    assert res.exit_code == 2 and "pass --slice K" in res.output


def test_cli_describe_semantic_label_map(tmp_path):
    img = SAMPLE / "imagesTr" / "phantom_000_0000.nii.gz"
    lab = SAMPLE / "labelsTr" / "phantom_000.nii.gz"
    res = CliRunner().invoke(app, ["data", "describe", str(img), "--labels", str(lab), "--name", "liver", "--name",
                                   "liver lesion", "--slice", "8", "-m", "ct", "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    d = json.loads((tmp_path / "o" / "description.json").read_text())
    liver, lesion = d["regions"]
    assert liver["measurements"]["intensity"] == "hyperdense" and lesion["measurements"]["intensity"] == "hypodense"
    assert lesion["area_mm2"] == pytest.approx(lesion["area_px"] * 0.64)
    res = CliRunner().invoke(app, ["data", "describe", str(img), "--labels", str(lab), "--name", "liver",
                                   "--slice", "8", "--out", str(tmp_path / "p")])
    assert res.exit_code == 2 and "label values [2] have no --name" in res.output


def test_instance_class_after_target_masks_keeps_its_own_mask_and_colour(tmp_path):
    """A pathology-like record with a gland mask and a nuclei label map: the nuclei's `<seg>`
    must point at the nuclei (region 1, painted second: green), never at the glands."""
    from rcmed.data.build import describe_sample
    from rcmed.data.store import Record, Sample
    from rcmed.train.data import sample_examples

    rng = np.random.default_rng(0)
    img = rng.uniform(0.4, 0.6, (64, 64)).astype(np.float32)
    glands = np.zeros((64, 64), bool)
    glands[20:44, 20:44] = True
    inst = np.zeros((64, 64), np.int32)
    for k, (r, c) in enumerate([(5, 5), (5, 50), (50, 5), (50, 50)], start=1):
        inst[r:r + 6, c:c + 6] = k
    rec = Record(id="p1", case_id="p1", modality="pathology", targets=["glands"], instance_target="nuclei",
                 spacing=[0.0005, 0.0005])
    s = describe_sample(Sample(record=rec, image=img, masks=glands[None], instances=inst))
    nuclei_ex = [e for e in s.record.examples if e["task"] == "segment_name" and "nuclei" in e["answer"]]
    assert nuclei_ex and all(e["seg_targets"] == [1] for e in nuclei_ex)
    colour = next(e for e in s.record.examples if e["task"] == "describe_colour" and "nuclei" in e["answer"])
    assert "green" in colour["prompt"].lower() + colour["answer"].lower()
    assert "µm²" in colour["answer"] and "0.0 mm²" not in colour["answer"]
    import random

    from rcmed.data.store import Sample as S

    for seed in range(20):  # the ground-stage example for "nuclei" carries the nuclei mask
        for ex in sample_examples(S(record=s.record, image=img, masks=glands[None], instances=inst), "ground",
                                  random.Random(seed)):
            if "nuclei" in ex.answer and ex.masks:
                assert all(m is None or np.array_equal(m, inst > 0) for m in ex.masks)
