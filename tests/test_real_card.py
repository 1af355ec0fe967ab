"""The real-image section of the model card and the README is generated from result files only."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def card(tmp_path, monkeypatch):
    """scripts/real_card.py as a module, reading its result files from an empty `tmp_path`."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import real_card
    finally:
        sys.path.pop(0)
    monkeypatch.setattr(real_card, "EVAL", tmp_path)
    return real_card


def test_card_and_readme_match_the_result_files():
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "real_card.py"), "--check"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_a_changed_result_changes_the_card(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import real_card
    finally:
        sys.path.pop(0)
    rows = [{"dataset": "A", "method": "rcmed", "case_targets": "3", "dice": "0.5", "dice_ci_low": "0.4", "dice_ci_high": "0.6"},
            {"dataset": "A", "method": "litemedsam-cc-box", "case_targets": "3", "dice": "0.9"},
            {"dataset": "A", "method": "unet", "case_targets": "3", "dice": "0.7"}]
    lines, stats = real_card.dataset_table(rows, {"BiomedParse": {"dice": {"A": 0.8}}})
    assert stats["mean_dice"] == 0.5 and stats["below"] == ["A"] and stats["unet_wins"] == 0
    assert abs(stats["ratios"]["A"] - 0.5 / 0.9) < 1e-9
    assert "| A (3 case-targets) | 0.500 [0.40, 0.60] | 0.900 | 0.700 |" in lines[2]
    card = tmp_path / "card.md"
    card.write_text(f"head\n{real_card.BEGIN}\nold\n{real_card.END}\ntail\n")
    assert not real_card.write_block(card, "new", check=True)
    real_card.write_block(card, "new", check=False)
    assert card.read_text() == f"head\n{real_card.BEGIN}\nnew\n{real_card.END}\ntail\n"


def test_the_unet_curve_says_whether_the_reference_levelled_off(card, tmp_path):
    assert "not checked" in card.unet_curve_lines()[0]

    def curve(*means):
        return [{"steps": 100 * (k + 1), "seconds": k, "mean_dice": m, "datasets": {"A": m}} for k, m in enumerate(means)]

    head = {"reference": {"steps": "450", "size": "128", "budget_s": "60", "train_records": "9"}, "factor": 2, "questions": 5}
    # a plateau after the reference's 450 steps: one point swinging up is not "still learning"
    (tmp_path / "real_val_unet_curve.json").write_text(json.dumps({**head, "curve": curve(0.5, 0.6, 0.61, 0.6, 0.63, 0.59, 0.61)}))
    lines = card.unet_curve_lines()
    assert "steps 200–400 (up to the reference's steps): 0.603" in lines[0] and "best single point: 0.630 at step 500" in lines[0]
    assert "steps 500–700: 0.610" in lines[0] and "it had levelled off: the later points gained +0.007" in lines[0]
    assert "| 400 (last before the reference's 450) | 0.600 | 0.600 |" in lines and "| 500 | 0.630 | 0.630 |" in lines
    (tmp_path / "real_val_unet_curve.json").write_text(json.dumps({**head, "curve": curve(0.5, 0.6, 0.65, 0.7, 0.72, 0.75, 0.78)}))
    lines = card.unet_curve_lines()
    assert "still learning: +0.100 by the end" in lines[0] and "flatters RCMed" in lines[0]
    # a dataset the U-Net never learns at any step is said apart: no step count would change it
    flat = [{**c, "datasets": {"A": c["mean_dice"], "B": 0.01}} for c in curve(0.5, 0.6, 0.61, 0.6, 0.63, 0.59, 0.61)]
    (tmp_path / "real_val_unet_curve.json").write_text(json.dumps({**head, "curve": flat}))
    lines = card.unet_curve_lines()
    assert "On B it never reached 0.05 at any point of the curve" in lines[0] and "(128-px input)" in lines[0]
    assert "On A" not in lines[0]
    # a check that stopped before the reference's steps cannot call it levelled off
    (tmp_path / "real_val_unet_curve.json").write_text(json.dumps({**head, "curve": curve(0.5, 0.6)}))
    lines = card.unet_curve_lines()
    assert "stopped at step 200, before the reference's 450" in lines[0] and "it had levelled off" not in lines[0]


def test_the_demo_notes_say_which_weights_they_were_seen_with(card, tmp_path):
    assert "have not been looked at" in card.demo_lines("a" * 64)[0]
    seen = {"model_sha256": "a" * 64, "looked_at": "2026-12-02", "cases": {
        "ct": {"prompt": "Segment the liver.", "verdict": "right", "seen": "no liver; 'not present'"},
        "ihc": {"prompt": "Segment the nuclei.", "verdict": "wrong", "seen": "the glands"}}}
    (tmp_path / "demo_seen.json").write_text(json.dumps(seen))
    lines = card.demo_lines("a" * 64)
    assert "the shipped ones" in lines[0] and "| ihc | Segment the nuclei. | wrong | – | the glands |" in lines
    assert lines[-1].startswith("Right on 1 of 2.")
    assert "not the shipped weights" in card.demo_lines("b" * 64)[0]  # new weights: the notes are out of date
    # with what the answer said of the image's familiarity
    seen["cases"]["ct"]["warned"], seen["cases"]["ihc"]["warned"] = False, True
    seen["note"] = "A packaged sample was warned on too."
    (tmp_path / "demo_seen.json").write_text(json.dumps(seen))
    lines = card.demo_lines("a" * 64)
    assert "| ihc | Segment the nuclei. | wrong | yes | the glands |" in lines and "| ct | Segment the liver. | right | no |" in lines[-6]
    assert "warned that the image is unlike those the target was taught on for 1 of 2, and for 1 of the 1 not answered right" in lines[-3]
    assert lines[-1] == "A packaged sample was warned on too."


def test_the_scale_check_names_the_targets_lost_when_smaller(card, tmp_path):
    assert "not checked" in card.scale_lines()[0]
    rows = [{"dataset": "Drishti-GS1", "target": "optic disc", "questions": 5, "present@1.0": 1.0, "dice@1.0": 0.96,
             "present@0.4": 0.0, "dice@0.4": 0.0},
            {"dataset": "PH2", "target": "skin lesion", "questions": 5, "present@1.0": 1.0, "dice@1.0": 0.9,
             "present@0.4": 0.8, "dice@0.4": 0.7}]
    (tmp_path / "real_val_scale.json").write_text(json.dumps({"scales": [1.0, 0.4], "left": 0.08, "records_per_dataset": 5,
                                                              "rows": rows}))
    lines = card.scale_lines()
    assert "| Drishti-GS1 | optic disc | 5 | 1.00 / 0.960 | 0.00 / 0.000 |" in lines
    assert "Lost at × 0.4" in lines[-1] and "optic disc (Drishti-GS1)" in lines[-1] and "skin lesion" not in lines[-1]


def test_a_stage_on_other_views_says_whether_its_fixed_criterion_held(card, tmp_path):
    assert card.views_lines() == []
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from train_default import VIEW_SLACK, view_verdict
    finally:
        sys.path.pop(0)

    def part(mean, a, b):
        return {"mean_dice": mean, "datasets": {"A": {"dice": a}, "B": {"dice": b}, "phantom-ct": {"dice": 0.9}}}

    head = {"questions": 40, "view_questions": 20, "train_view_every": 3, "val_view_every": 2, "best_step": 150}
    # as is 0.004 lower (within the slack of 0.005), other views higher: it held
    assert VIEW_SLACK == 0.005
    (tmp_path / "tried_realx_views.json").write_text(json.dumps(view_verdict({
        **head, "source_as_is": part(0.700, 0.6, 0.8), "kept_as_is": part(0.696, 0.6, 0.792),
        "source_views": part(0.4, 0.3, 0.5), "kept_views": part(0.5, 0.45, 0.55)})))
    lines = card.views_lines()
    assert "the criterion held, and `realx` was not shipped" in lines[0]
    assert "as is 0.700 → 0.696, other views 0.400 → 0.500" in lines[0] and "one real train record in 3" in lines[0]
    assert "zoomed out to 0.4-0.85 of its side" in lines[0] and "a crop of 0.5-0.8 of its side" in lines[0]
    assert "at most 0.005 below the source's" in lines[0]
    assert "| A | 0.600 | 0.600 | 0.300 | 0.450 |" in lines and not any("phantom-ct" in x for x in lines)
    (tmp_path / "tried_realx_val_history.json").write_text(json.dumps([{"step": 0, "mean_dice": 0.55}, {"step": 50, "mean_dice": 0.6}]))
    assert "by step (as is and other views pooled, which chose the step): 0: 0.550, 50: 0.600." in card.views_lines()[0]
    # as is 0.006 lower: it did not, however much the other views gained
    (tmp_path / "tried_realx_views.json").write_text(json.dumps(view_verdict({
        **head, "source_as_is": part(0.700, 0.6, 0.8), "kept_as_is": part(0.694, 0.6, 0.788),
        "source_views": part(0.4, 0.3, 0.5), "kept_views": part(0.6, 0.55, 0.65)})))
    assert "the criterion did not hold" in card.views_lines()[0]
    # as is unchanged, other views not higher: it did not either
    assert not view_verdict({**head, "source_as_is": part(0.7, 0.6, 0.8), "kept_as_is": part(0.7, 0.6, 0.8),
                             "source_views": part(0.4, 0.3, 0.5), "kept_views": part(0.4, 0.3, 0.5)})["held"]


def test_familiarity_says_what_the_warning_catches_on_validation(card, tmp_path):
    shipped = "a" * 64
    assert "not run" in card.familiarity_lines(shipped)[0]

    def row(dataset, kind, familiar, dice):
        return {"dataset": dataset, "record": "r", "target": "t", "kind": kind, "present": dice is not None,
                "familiar": familiar, "ratio": 1.0 if familiar else 4.0, "dice": dice}

    rows = [row("A", "as is", True, 0.8), row("A", "as is", True, 0.6), row("A", "as is", True, None),
            row("A", "view", False, 0.2), row("A", "view", True, 0.7), row("B", "as is", False, 0.1)]
    (tmp_path / "familiarity_val.json").write_text(json.dumps({
        "file": "familiarity.safetensors", "model_sha256": shipped, "components": 16, "gaussians": 30, "train_images": 800,
        "train_per_dataset": 50, "keep": 0.95, "cut": 2.5, "half_a_questions": 150, "half_b": rows}))
    lines = card.familiarity_lines(shipped)
    assert "30 Gaussians from 800 train images" in lines[0] and "The cut, 2.50, is the 0.95 quantile of the ratios of 150" in lines[0]
    # as is: 4 questions, 3 of 4 familiar; Dice of present targets: familiar (0.8 + 0.6) / 2, unfamiliar 0.1
    assert "| as is | 4 | 0.75 | 0.700 (2) | 0.100 (1) |" in lines
    assert "| other view | 2 | 0.50 | 0.700 (1) | 0.200 (1) |" in lines
    assert "| A | 3 | 1.00 | 0.50 | 0.700 (2) / – (0) | 0.700 (1) / 0.200 (1) |" in lines
    assert "| B | 1 | 0.00 | – | – (0) / 0.100 (1) | – (0) / – (0) |" in lines
    # present questions by ratio: 1.0 (0.8), 1.0 (0.6), 4.0 (0.2), 1.0 (0.7), 4.0 (0.1): both Dice < 0.5 rank above
    assert any("Over half B's 5 present questions" in x and "AUROC 1.00" in x for x in lines)
    assert "not the shipped" not in lines[0]
    v = json.loads((tmp_path / "familiarity_val.json").read_text())
    (tmp_path / "familiarity_val.json").write_text(json.dumps({**v, "model_sha256": "0" * 64}))
    assert "**Measured with weights `000000000000`, not the shipped" in card.familiarity_lines(shipped)[0]


def test_familiarity_of_volumes_and_small_phantoms_is_rendered(card, tmp_path):
    shipped = "a" * 64
    vols = [{"modality": "ct", "side": 256, "volume": 0, "target": "liver", "familiar": True, "ratio": 1.4, "dice": 0.9},
            {"modality": "ct", "side": 256, "volume": 0, "target": "body", "familiar": True, "ratio": 1.2, "dice": 0.96},
            {"modality": "ct", "side": 128, "volume": 0, "target": "liver", "familiar": False, "ratio": 2.9, "dice": 0.7},
            {"modality": "ct", "side": 128, "volume": 1, "target": "liver", "familiar": True, "ratio": 1.6, "dice": 0.8}]
    (tmp_path / "familiarity_val.json").write_text(json.dumps({
        "file": "familiarity.safetensors", "model_sha256": shipped, "components": 16, "gaussians": 30, "train_images": 800,
        "train_per_dataset": 50, "keep": 0.95, "cut": 2.5, "half_a_questions": 150, "half_b": [],
        "small_phantoms": {"seed": 17, "per_modality": 20, "side": 128}, "volumes": vols}))
    lines = card.familiarity_lines(shipped)
    assert "20 of each modality at 128 px as groups of their own" in lines[0]
    assert "| ct | 256 | 1 | 2 | 1.00 | 1.40 | 0.930 |" in lines
    assert "| ct | 128 | 2 | 2 | 0.50 | 2.90 | 0.750 |" in lines
    assert lines.index("| ct | 256 | 1 | 2 | 1.00 | 1.40 | 0.930 |") < lines.index("| ct | 128 | 2 | 2 | 0.50 | 2.90 | 0.750 |")
