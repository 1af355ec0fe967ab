"""Real-image evaluation of a model next to its references, all in one run, printed as one table: a
triplet store made by `rcmed data convert --format pairs` (+ `rcmed data build`), one split, per dataset:
RCMed (words alone), LiteMedSAM given the true box of each connected component, optionally a MONAI U-Net
trained on the store's train split, and presence accuracy on present and on absent questions apart.

Run: `python bench/real.py --data data/real-built --split val [--per-dataset 6] [--model RUN/model ...]
[--baselines litemedsam-cc-box unet] [--unet-budget-s 600]`. The split scored should be `val` while
choices are being made; the test split is scored once per shipped model (`scripts/train_default.py
realtest`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rcmed.eval.harness import evaluate


def table(rows: list[dict]) -> str:
    methods = list(dict.fromkeys(r["method"] for r in rows))
    by = {(r["dataset"], r["method"]): r for r in rows}
    datasets = sorted({r["dataset"] for r in rows})
    out = ["dataset".ljust(32) + "".join(m[-18:].rjust(20) for m in methods) + "   present  absent"]
    for d in datasets:
        r = by.get((d, "rcmed"), {})
        pres = f"{r['present_accuracy']:9.3f}" if r.get("present_accuracy") is not None else "        -"
        ab = f"{r['absent_accuracy']:8.3f}" if r.get("absent_accuracy") is not None else "       -"
        out.append(d.ljust(32) + "".join(f"{by[(d, m)]['dice']:20.4f}" if (d, m) in by else " " * 20 for m in methods)
                   + pres + ab)
    means = []
    for m in methods:
        v = [by[(d, m)]["dice"] for d in datasets if (d, m) in by]
        means.append(f"{sum(v) / len(v):20.4f}" if v else " " * 20)
    out.append("mean over datasets".ljust(32) + "".join(means))
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, help="built triplet store of real images (pairs converter)")
    ap.add_argument("--model", nargs="+", default=[str(Path(__file__).resolve().parents[1] / "rcmed" / "weights" / "default")])
    ap.add_argument("--split", default="val")
    ap.add_argument("--per-dataset", type=int, default=6)
    ap.add_argument("--baselines", nargs="*", default=["litemedsam-cc-box"])
    ap.add_argument("--unet-budget-s", type=float, default=600.0)
    ap.add_argument("--out", default="runs/bench-real")
    args = ap.parse_args()
    rep = evaluate([Path(m) for m in args.model], args.data, args.out, split=args.split, baselines=tuple(args.baselines),
                   progress=False, describe=False, per_dataset=args.per_dataset, unet_budget_s=args.unet_budget_s)
    print(table(rep.tables["datasets"]))
    pres = rep.tables["presence"][0]
    print(f"presence: {pres['questions']} questions, present accuracy {pres['present_accuracy']}, "
          f"absent accuracy {pres['absent_accuracy']} ({pres['absent']} absent)")


if __name__ == "__main__":
    main()
