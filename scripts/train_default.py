"""Recipe of the bundled default model (`rcmed/weights/default/`), step by step, resumable.

    python scripts/train_default.py data     # phantoms + real nuclei tiles -> data/*-built
    python scripts/train_default.py align    # stage 1, configs/train/default_align.json
    python scripts/train_default.py ground   # stage 2, configs/train/default_ground.json (from stage 1)
    python scripts/train_default.py ground2  # stage 2 continued at a lower rate, default_ground2.json
    python scripts/train_default.py mixed    # stage 2 continued with description tasks mixed in, more
                                             # multi-target and absent-target examples (default_mixed.json)
    python scripts/train_default.py mixed2   # mixed continued, each request asked in all its phrasings
                                             # (default_mixed2.json)
    python scripts/train_default.py mixed3   # mixed continued, rare small targets (nodule, pneumothorax,
                                             # polyp) streamed and asked more often (default_mixed3.json)
    python scripts/train_default.py mixed4   # the same, 500 more steps at half the rate (default_mixed4.json)
    python scripts/train_default.py export   # runs/default-mixed4/model -> rcmed/weights/default/
    python scripts/train_default.py postprocess  # largest-component rule per target, chosen on the
                                                 # align phantoms (never asked grounding questions)
    python scripts/train_default.py eval     # held-out metrics vs LiteMedSAM + true box -> runs/default-eval/
    python scripts/train_default.py all      # everything above in order

Data (all generated here or fetched from a pinned wheel; nothing is downloaded at run time):
- `data/train`: 400 phantoms (40 per modality, seed 11) and the 12 training tiles of the real
  StarDist/DSB-2018 nuclei image, each tile in its 8 rotations/flips (records of one tile share
  its case id), interleaved so every shuffle buffer holds both kinds;
- `data/align`: 100 other phantoms (seed 13) and the 12 training tiles, for stage 1;
- `data/test`: 80 held-out phantoms (8 per modality, seed 12: case ids never seen in training)
  and the 4 held-out nuclei tiles (split by tile: one image only).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
RUNS = ROOT / "runs"
WEIGHTS = ROOT / "rcmed" / "weights" / "default"


def _dihedral(sample, k: int):
    """The k-th of the 8 rotations/flips of a 2-D sample (image, masks, instances), as a new record."""
    from dataclasses import replace

    from rcmed.data.store import Sample

    def t(a: np.ndarray, axes=(0, 1)) -> np.ndarray:
        a = np.rot90(a, k % 4, axes=axes)
        return np.ascontiguousarray(np.flip(a, axis=axes[1]) if k >= 4 else a)

    rec = replace(sample.record, id=f"{sample.record.id}-d{k}")
    return Sample(record=rec, image=t(sample.image), masks=t(sample.masks, (1, 2)) if sample.masks.size else sample.masks,
                  instances=None if sample.instances is None else t(sample.instances))


def _write(out: Path, phantom_seed: int, n_phantoms: int, tiles: list, split: str, augment: bool) -> None:
    from rcmed.data.store import StoreWriter
    from rcmed.data.synth import GENERATORS, phantom_samples, synth

    mods = sorted(GENERATORS)
    extra = [_dihedral(s, k) for s in tiles for k in range(8)] if augment else list(tiles)
    with StoreWriter(out) as w:
        j = 0
        for i in range(n_phantoms):
            mod = mods[i % len(mods)]
            for s in phantom_samples(synth(mod, phantom_seed * 1_000_003 + i, size=256), f"{mod}-{phantom_seed}-{i:07d}",
                                     source=f"synth-{mod}"):
                w.add(s)
                w.set_split(s.record.case_id, split)
            while j < len(extra) * (i + 1) // n_phantoms:  # spread the tiles evenly between phantoms
                w.add(extra[j])
                w.set_split(extra[j].record.case_id, split)
                j += 1
        for s in extra[j:]:
            w.add(s)
            w.set_split(s.record.case_id, split)


def data() -> None:
    from rcmed.data.build import build_store
    from rcmed.data.nuclei import nuclei_tiles, stardist_nuclei

    image, labels = stardist_nuclei()
    tiles = list(nuclei_tiles(image, labels, 128))
    train_tiles = [s for s, sp in tiles if sp == "train"]
    test_tiles = [s for s, sp in tiles if sp == "test"]
    print(f"nuclei tiles: {len(train_tiles)} train, {len(test_tiles)} test")
    for name, seed, n, tl, split, aug in [("train", 11, 400, train_tiles, "train", True),
                                          ("align", 13, 100, train_tiles, "train", False),
                                          ("test", 12, 80, test_tiles, "test", False)]:
        if (DATA / f"{name}-built" / "manifest.jsonl").is_file():
            continue
        shutil.rmtree(DATA / name, ignore_errors=True)
        _write(DATA / name, seed, n, tl, split, aug)
        build_store(DATA / name, DATA / f"{name}-built", workers=2)
        print(f"data/{name}-built ready")


def _train(config: str) -> None:
    subprocess.run([sys.executable, "-m", "rcmed.cli", "train", "--config", config], cwd=ROOT, check=True)


def align() -> None:
    _train("configs/train/default_align.json")


def ground() -> None:
    _train("configs/train/default_ground.json")


def ground2() -> None:
    _train("configs/train/default_ground2.json")


def mixed() -> None:
    _train("configs/train/default_mixed.json")


def mixed2() -> None:
    _train("configs/train/default_mixed2.json")


def mixed3() -> None:
    _train("configs/train/default_mixed3.json")


def mixed4() -> None:
    _train("configs/train/default_mixed4.json")


FINAL = "default-mixed4"  # the run whose model ships
STAGES = ("default-align", "default-ground", "default-ground2", "default-mixed", "default-mixed2",
          "default-mixed3", "default-mixed4")


def export() -> None:
    """Copy the trained parts (not the pretrained base) into the package, with the training record."""
    import os

    from rcmed.data.store import iter_records
    from rcmed.train.config import TrainConfig
    from rcmed.train.trainer import plot_losses, write_targets

    os.chdir(ROOT)  # the runs' data paths are relative to the repository
    src = RUNS / FINAL / "model"
    WEIGHTS.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file():
            shutil.copy2(f, WEIGHTS / f.name)
    for stage in STAGES:
        run = RUNS / stage
        shutil.copy2(run / "metrics.csv", WEIGHTS / f"{stage.split('-')[1]}_metrics.csv")
        plot_losses(run / "metrics.csv", WEIGHTS / f"{stage.split('-')[1]}_loss.png")
    write_targets(TrainConfig.load(RUNS / FINAL / "train.json"), WEIGHTS / "targets.json")
    cases = sorted({r.case_id for store in ("train-built", "align-built") for r in iter_records(DATA / store, split="train")})
    (WEIGHTS / "training_cases.json").write_text(json.dumps(cases) + "\n")  # `rcmed eval` refuses these cases
    size = sum(f.stat().st_size for f in WEIGHTS.iterdir())
    print(f"exported to {WEIGHTS} ({size / 2**20:.1f} MB)")


def postprocess(per_modality: int = 6) -> None:
    """Choose mask post-processing (largest component or not, per target) on validation cases: the
    `align` phantoms, which trained the descriptions (painted) but were never asked a grounding
    question. Writes `postprocess.json` into the shipped folder (before `eval`, which then uses it)."""
    from collections import Counter

    from rcmed.data.store import iter_records, read_sample
    from rcmed.io.image import MedicalImage, parse_modality
    from rcmed.postprocess import FILE, choose_rules
    from rcmed.predictor import Predictor

    (WEIGHTS / FILE).unlink(missing_ok=True)  # measure the raw masks
    predictor = Predictor.from_pretrained(WEIGHTS)
    seen: Counter = Counter()
    pairs = []
    t0 = time.time()
    for rec in iter_records(DATA / "align-built"):
        if rec.source.startswith("dsb2018") or seen[rec.modality] >= per_modality:  # training tiles
            continue
        seen[rec.modality] += 1
        sample = read_sample(DATA / "align-built", rec)
        predictor.set_image(MedicalImage(array=sample.image, modality=parse_modality(rec.modality),
                                         rgb=sample.image.ndim == 3))
        for k, name in enumerate(rec.targets):
            true = sample.masks[k]
            if true is None or not true.any():
                continue
            got = predictor.predict(f"Segment the {name}.").targets
            if got and got[0].mask is not None:
                pairs.append((name, got[0].mask, true))
    rules = choose_rules(pairs)
    rules.save(WEIGHTS)
    print(f"{len(pairs)} validation masks on {sum(seen.values())} images in {time.time() - t0:.0f} s; "
          f"largest component kept for: {', '.join(rules.keep_largest) or 'none'}")
    for name, ev in rules.evidence.items():
        print(f"  {name:<16} {ev}")


def evaluate_default() -> None:
    from rcmed.eval.harness import evaluate

    out = RUNS / "default-eval"
    t0 = time.time()
    rep = evaluate(WEIGHTS, DATA / "test-built", out, split="test", baselines=("litemedsam-box",), progress=True,
                   describe=True)
    print(f"evaluated {rep.rows} questions on {rep.cases} cases in {time.time() - t0:.0f} s -> {out / 'report.md'}")
    (out / "summary.json").write_text(json.dumps(rep.tables, indent=1))
    shipped = WEIGHTS / "eval"  # the card points here
    shipped.mkdir(exist_ok=True)
    for name in ("report.md", "registry.csv", "modalities.csv", "descriptions.csv", "dice_by_modality.png",
                 "presence_reliability.png"):
        shutil.copy2(out / name, shipped / name)


STEPS = {"data": data, "align": align, "ground": ground, "ground2": ground2, "mixed": mixed, "mixed2": mixed2,
         "mixed3": mixed3, "mixed4": mixed4, "export": export, "postprocess": postprocess, "eval": evaluate_default}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=[*STEPS, "all"])
    args = ap.parse_args()
    for name in STEPS if args.step == "all" else [args.step]:
        t0 = time.time()
        print(f"== {name}", flush=True)
        STEPS[name]()
        print(f"== {name} done in {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
