"""Held-out phantom evaluation of a model next to the baselines, all in the same run: generates
phantoms of every modality (new seeds), splits them by case into train/test, runs `rcmed eval`
with the LiteMedSAM true-box, Otsu + watershed and U-Net (trained on the train split for the
given CPU budget) baselines, and prints the per-modality table.

Run: `python bench/eval.py --model RUN/model [--per-modality 6] [--size 128] [--unet-budget-s 120]`
(without --model it uses the bundled default model). `--modality endoscopy --per-modality 80
--baselines litemedsam-box` measures one modality on more cases than the fixed test set holds.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from rcmed.data.split import split_by_case
from rcmed.data.synth import GENERATORS, synth_store
from rcmed.eval.harness import evaluate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(Path(__file__).resolve().parents[1] / "rcmed" / "weights" / "default"))
    ap.add_argument("--per-modality", type=int, default=6)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--unet-budget-s", type=float, default=120.0)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--modality", default="all", choices=["all", *sorted(GENERATORS)], help="phantoms of one modality only")
    ap.add_argument("--baselines", nargs="+", default=["litemedsam-box", "otsu-watershed", "unet"])
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="rcmed-bench-eval-"))
    n = args.per_modality * (len(GENERATORS) if args.modality == "all" else 1)
    synth_store(str(tmp / "store"), args.modality, n, seed=args.seed, size=args.size, progress=False)
    split_by_case(tmp / "store", {"train": 0.5, "test": 0.5}, seed=args.seed)
    rep = evaluate(args.model, tmp / "store", tmp / "eval", split="test", progress=False, unet_budget_s=args.unet_budget_s,
                   baselines=tuple(args.baselines), describe=False)
    rows = rep.tables["modalities"]
    methods = sorted({r["method"] for r in rows})
    mods = sorted({r["modality"] for r in rows})
    print(f"{'modality':<12}" + "".join(f"{m:>18}" for m in methods))
    for mod in mods:
        cells = []
        for m in methods:
            r = next((x for x in rows if x["method"] == m and x["modality"] == mod), None)
            cells.append(f"{r['dice']:>18.3f}" if r else f"{'-':>18}")
        print(f"{mod:<12}" + "".join(cells))
    p = rep.tables["presence"][0]
    print(f"presence: accuracy {p['accuracy']}, AUROC {p['auroc']} over {p['questions']} questions ({p['absent']} absent)")
    print(f"full report: {tmp / 'eval' / 'report.md'}")


if __name__ == "__main__":
    main()
