"""The prompt suite of one model on one store split, printed as one table: the training template, paraphrase
families, synonyms and spelling variants, several targets in one request (against each asked alone), names never
taught (must be refused) and names taught only on another modality (must get no mask). Every row is measured
in this run on the same records; "vs template" is the Dice difference on the same (record, target).

Run: `python bench/prompt_suite.py --data data/real-built --split val [--per-dataset 3] [--model RUN/model]
[--out runs/prompt-suite]`. Score `val` while choosing; the test split is scored once per shipped model
(`scripts/train_default.py realtest`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rcmed.eval.prompt_suite import run_prompt_suite
from rcmed.predictor import Predictor


def _f(v) -> str:
    return "-" if v is None or v == "" else f"{float(v):.3f}"


def table(rows: list[dict]) -> str:
    cols = ["dice", "dice_vs_template", "present_accuracy", "absent_accuracy", "refusal_accuracy"]
    out = ["category".ljust(16) + "family".ljust(24) + "n".rjust(5) + "".join(c[:16].rjust(18) for c in cols)]
    for r in rows:
        out.append(str(r["category"]).ljust(16) + str(r["family"])[:23].ljust(24) + str(r["questions"]).rjust(5)
                   + "".join(_f(r.get(c)).rjust(18) for c in cols))
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--model", default="default")
    ap.add_argument("--per-dataset", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("runs/prompt-suite"))
    args = ap.parse_args()
    rows = run_prompt_suite(Predictor.from_pretrained(args.model), args.data, args.out, split=args.split,
                            per_dataset=args.per_dataset, progress=True)
    print(table(rows))


if __name__ == "__main__":
    main()
