"""Mask post-processing chosen on validation pairs, carried by the model folder."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from rcmed.postprocess import FILE, PostprocessRules, choose_rules, choose_thresholds, drop_specks, keep_largest
from rcmed.predictor import ModelNotAvailableError, Predictor


def _disc(cy, cx, r, shape=(64, 64)):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_keep_largest_2d_and_3d():
    m = _disc(30, 30, 10) | _disc(5, 58, 2)
    assert keep_largest(m).sum() == _disc(30, 30, 10).sum()
    assert not keep_largest(np.zeros((8, 8), bool)).any()
    v = np.zeros((4, 16, 16), bool)
    v[1:3, 2:8, 2:8] = True
    v[3, 14, 14] = True
    assert keep_largest(v).sum() == 2 * 36


def test_drop_specks_keeps_real_parts():
    two = _disc(20, 20, 8) | _disc(44, 44, 6)  # a pair (kidneys): the smaller part is half the larger
    speck = _disc(5, 58, 1)
    assert (drop_specks(two | speck) == two).all()
    assert keep_largest(two | speck).sum() == _disc(20, 20, 8).sum()
    assert not drop_specks(np.zeros((8, 8), bool)).any()


def test_rules_follow_validation_dice_per_target():
    rng = np.random.default_rng(0)
    pairs = []
    for k in range(4):
        true = _disc(30 + k, 30, 10)
        pairs.append(("Polyp", true | _disc(5, 5 + k, 2), true))  # one structure with a speck: rule helps
        cells = _disc(15, 15 + k, 4) | _disc(45, 45, 4) | _disc(15, 45, 4)
        pairs.append(("nuclei", cells, cells))  # many parts: the rule would delete most of them
        kidneys = _disc(20, 20, 8) | _disc(44, 44 - k, 6)
        pairs.append(("kidneys", kidneys | _disc(5, 58, 1), kidneys))  # two real parts and a speck
    pairs.append(("kidney", _disc(20, 20, 5) | _disc(50, 50, 1), _disc(20, 20, 5)))  # one case only
    rules = choose_rules(pairs)
    assert rules.keep_largest == [] and rules.drop_specks == ["kidneys", "polyp"]  # a tie goes to the gentler rule
    assert rules.evidence["kidneys"]["dice_largest"] < rules.evidence["kidneys"]["dice"] < rules.evidence["kidneys"]["dice_no_specks"]
    big_speck = [("lung", _disc(30, 30, 12) | _disc(6, 6, 5), _disc(30, 30, 12))] * 3  # 81 px: not a speck of 450
    assert choose_rules(big_speck).keep_largest == ["lung"]
    assert rules.evidence["nuclei"]["dice"] == 1.0 and rules.evidence["nuclei"]["dice_largest"] <= 0.5
    assert rules.evidence["kidney"]["cases"] == 1  # measured, but too few cases for a rule
    noisy = _disc(30, 30, 10) | (rng.random((64, 64)) > 0.999)
    assert rules.apply(" POLYP ", noisy).sum() == _disc(30, 30, 10).sum()  # single pixels are specks
    assert rules.apply("nuclei", noisy).sum() == noisy.sum()
    with pytest.raises(ValueError, match="differ in shape"):
        choose_rules([("x", np.zeros((4, 4), bool), np.zeros((5, 4), bool))])


def test_model_folder_carries_the_rules(tiny_trained, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_trained, folder)
    assert Predictor.from_pretrained(folder).rules.keep_largest == []
    PostprocessRules(keep_largest=["liver"]).save(folder)
    assert Predictor.from_pretrained(folder).rules.keep_largest == ["liver"]
    PostprocessRules(drop_specks=["kidneys"]).save(folder)
    assert Predictor.from_pretrained(folder).rules.drop_specks == ["kidneys"]
    PostprocessRules(thresholds={"polyp": 2.5}).save(folder)
    rules = Predictor.from_pretrained(folder).rules
    assert rules.threshold_for(" Polyp") == 2.5 and rules.threshold_for("liver") == 0.0
    (folder / FILE).write_text("{not json")
    with pytest.raises(ModelNotAvailableError, match="post-processing rules"):
        Predictor.from_pretrained(folder)
    for bad in ('"NaN"', "100", '"high"'):
        (folder / FILE).write_text('{"thresholds": {"polyp": %s}}' % bad)
        with pytest.raises(ModelNotAvailableError, match="post-processing rules"):
            Predictor.from_pretrained(folder)


def test_thresholds_follow_validation_dice_per_target():
    cases = []
    for k in range(4):
        true = _disc(30, 30 + k, 10)
        spill = _disc(30, 45 + k, 8) & ~true  # a bright neighbour drawn with weak logits
        cases.append(("Polyp", np.where(true, 9.0, np.where(spill, 2.0, -8.0)), true))
        cases.append(("liver", np.where(true, 6.0, -6.0), true))  # clean: any cut in (-6, 6) is as good
        thin = _disc(30, 30, 7 + k % 2)  # drawn too thin: its rim has logits just under 0
        cases.append(("vessel", np.where(thin, 4.0, np.where(true, -1.2, -9.0)), true))
    halo = np.where(_disc(20, 20, 2), 3.0, np.where(_disc(20, 20, 4), 1.0, -5.0))
    cases.append(("nodule", halo, _disc(20, 20, 2)))  # one case only
    cases.append(("polyp", np.full((64, 64), -np.inf), _disc(30, 30, 10)))  # missed: 0 at every cut
    cuts, evidence = choose_thresholds(cases)
    assert cuts == {"polyp": 2.0, "vessel": -1.5}  # the cut nearest 0 of those that score best
    assert evidence["polyp"]["cases"] == 5 and evidence["polyp"]["dice_at_best"] == pytest.approx(0.8)
    assert evidence["polyp"]["dice_at_0"] < 0.8 and evidence["liver"]["best_cut"] == 0.0
    assert evidence["nodule"]["best_cut"] > 0 and "nodule" not in cuts  # measured, but one case is too few
    with pytest.raises(ValueError, match="differ in shape"):
        choose_thresholds([("x", np.zeros((4, 4)), np.zeros((5, 4), bool))])


def test_predictor_applies_the_rule_to_its_masks(tiny_trained, monkeypatch):
    from rcmed.data.synth import synth

    predictor = Predictor.from_pretrained(tiny_trained)
    ph = synth("ct", 3, size=96)
    predictor.set_image(ph.image)
    real = predictor.model.generate

    def with_speck(*args, **kwargs):  # a stray positive blob far from the liver
        gen = real(*args, **kwargs)
        logits = gen.targets[0].mask_logits.clone()
        logits[:3, -3:] = 10.0
        logits[:3, -6:-3] = -10.0
        gen.targets[0].mask_logits = logits
        return gen

    monkeypatch.setattr(predictor.model, "generate", with_speck)
    raw = predictor.predict("Segment the liver.").targets[0]
    predictor.rules = PostprocessRules(keep_largest=["liver"])
    kept = predictor.predict("Segment the liver.").targets[0]
    assert raw.components >= 2 and kept.components == 1
    assert kept.area_px < raw.area_px and kept.mask[0, -1] == 0 and raw.mask[0, -1]


def _spilling_ct_predictor(tiny_trained, monkeypatch) -> Predictor:
    """A predictor on a CT phantom whose every target is a strong square (logit 9) with a weak spill (logit 2)
    of the same size beside it, presence 0.9."""
    from rcmed.data.synth import synth

    predictor = Predictor.from_pretrained(tiny_trained)
    predictor.set_image(synth("ct", 3, size=96).image)
    real = predictor.model.generate

    def spill(*args, **kwargs):
        gen = real(*args, **kwargs)
        for t in gen.targets:
            logits = torch.full_like(t.mask_logits, -8.0)
            logits[10:30, 10:30] = 9.0
            logits[10:30, 30:50] = 2.0
            t.mask_logits, t.presence = logits, 0.9
        return gen

    monkeypatch.setattr(predictor.model, "generate", spill)
    return predictor


def test_predictor_cuts_masks_at_the_targets_threshold(tiny_trained, monkeypatch):
    """A weak spill (logit 2) next to a strong target (logit 9): the folder's cut of 3 for that name
    removes it from prompts by words; another name's cut, or a box prompt, leave the cut at 0."""
    predictor = _spilling_ct_predictor(tiny_trained, monkeypatch)
    raw = predictor.predict("Segment the liver.").targets[0]
    predictor.rules = PostprocessRules(thresholds={"spleen": 3.0})
    assert predictor.predict("Segment the liver.").targets[0].area_px == raw.area_px  # another name's cut
    predictor.rules = PostprocessRules(thresholds={"liver": 3.0})
    cut = predictor.predict("Segment the liver.").targets[0]
    assert 0.4 < cut.area_px / raw.area_px < 0.6 and cut.box[2] < raw.box[2]  # (model 20 x 20 of 20 x 40, resized)
    assert cut.logits is not None and cut.logits.shape == cut.mask.shape == (96, 96)
    assert ((cut.logits > 3.0) == cut.mask).all() and cut.logits.max() == pytest.approx(9.0, abs=1e-3)
    boxed = predictor.predict("Segment the liver.", boxes=[[0, 0, 95, 95]]).targets[0]
    assert boxed.area_px == raw.area_px  # the cut was chosen for prompts by words alone


def test_mask_paths_follow_validation_dice_and_round_trip(tiny_trained, tmp_path):
    from rcmed.postprocess import choose_mask_paths

    cases = [("polyp", {"query": 0.667, "box": 1.0, "both": 0.667})] * 3 + [("liver", {"query": 1.0, "box": 0.667, "both": 1.0})] * 3
    chosen, evidence = choose_mask_paths(cases)
    assert chosen == {"polyp": "box"}  # liver: the query is as good as "both" -> stays on the query
    assert evidence["polyp"]["cases"] == 3 and evidence["polyp"]["dice_box"] == 1.0
    assert choose_mask_paths(cases[:2])[0] == {}  # 2 cases: too thin to move off the query
    folder = tmp_path / "model"
    shutil.copytree(tiny_trained, folder)
    PostprocessRules(mask_paths=chosen, mask_path_evidence=evidence).save(folder)
    rules = Predictor.from_pretrained(folder).rules
    assert rules.mask_path_for("Polyp") == "box" and rules.mask_path_for("liver") == "query"
    (folder / FILE).write_text('{"mask_paths": {"polyp": "magic"}}')
    with pytest.raises(ModelNotAvailableError, match="mask path"):
        Predictor.from_pretrained(folder)


def test_predictor_mask_path_both_decodes_with_the_predicted_box(tiny_trained):
    from rcmed.data.synth import synth
    from rcmed.errors import RCMedInputError

    predictor = Predictor.from_pretrained(tiny_trained)
    predictor.set_image(synth("ct", 3, size=96).image)
    query = predictor.predict("Segment the liver.", flips=())
    both = predictor.predict("Segment the liver.", mask_path="both")
    assert [t.name for t in both.targets] == [t.name for t in query.targets]  # the same answer, decoded again
    assert all(t.mask is None or t.mask.shape == (96, 96) for t in both.targets)
    with pytest.raises(RCMedInputError, match="LiteMedSAM"):  # the tiny model's encoder is not LiteMedSAM's
        predictor.predict("Segment the liver.", mask_path="box")
    with pytest.raises(RCMedInputError, match="unknown mask path"):
        predictor.predict("Segment the liver.", mask_path="sideways")


def test_presence_cuts_follow_validation_balanced_accuracy(tiny_trained, tmp_path, monkeypatch):
    """A head that ranks a target's images right but is shy on a new kind of image (0.02 present, 0.001 absent)
    gets a lower cut for that name only; a name whose questions are already right keeps 0.5."""
    from rcmed.data.synth import synth
    from rcmed.postprocess import choose_presence_cuts

    qs = [("liver", 0.02, True)] * 4 + [("liver", 0.001, False)] * 4 + [("polyp", 0.9, True)] * 3 + [("polyp", 0.1, False)] * 3
    cuts, evidence = choose_presence_cuts(qs)
    assert cuts == {"liver": 0.01} and evidence["liver"]["balanced_at_0.5"] == 0.5 and evidence["liver"]["balanced_at_best"] == 1.0
    assert choose_presence_cuts(qs[:2] + qs[4:6])[0] == {}  # 2 of each: too thin to move
    # a head that leans "present" on absent images (0.75 absent, 0.97 present) gets a higher cut
    eager = [("brain tumour", 0.97, True)] * 4 + [("brain tumour", 0.75, False)] * 4
    assert choose_presence_cuts(eager)[0] == {"brain tumour": 0.9}
    folder = tmp_path / "model"
    shutil.copytree(tiny_trained, folder)
    PostprocessRules(presence_cuts=cuts, presence_evidence=evidence).save(folder)
    predictor = Predictor.from_pretrained(folder)
    assert predictor.rules.presence_for("Liver") == 0.01 and predictor.rules.presence_for("polyp") == 0.5
    predictor.set_image(synth("ct", 3, size=64).image)
    real = predictor.model.generate

    def shy(*args, **kwargs):
        gen = real(*args, **kwargs)
        for t in gen.targets:
            t.presence = 0.02
            t.mask_logits = torch.full_like(t.mask_logits, -8.0)
            t.mask_logits[10:30, 10:30] = 5.0
        return gen

    monkeypatch.setattr(predictor.model, "generate", shy)
    liver = predictor.predict("Segment the liver.").targets[0]
    assert liver.present and liver.mask is not None  # 0.02 >= the liver's cut of 0.01
    predictor.rules = PostprocessRules()
    assert not predictor.predict("Segment the liver.").targets[0].present  # at 0.5 it was "not found"
    (folder / FILE).write_text('{"presence_cuts": {"liver": 1.5}}')
    with pytest.raises(ModelNotAvailableError, match="presence cut"):
        Predictor.from_pretrained(folder)


def test_a_rule_whose_gain_lives_in_one_half_of_the_cases_is_not_kept():
    """Chosen as the best of several on the same cases, a rule must also gain in each half on its own
    (`holds_in_each_fold`): a threshold, a component rule and a mask path that win on one half only are refused."""
    from rcmed.postprocess import choose_mask_paths, choose_rules, choose_thresholds, holds_in_each_fold

    assert holds_in_each_fold([0.1, 0.2, 0.05, 0.1], [0, 0, 1, 1])
    assert not holds_in_each_fold([0.4, 0.4, 0.0, -0.01], [0, 0, 1, 1])  # mean gain 0.2, all from half 0
    assert not holds_in_each_fold([0.1, 0.1], [0, 0])  # one half: nothing to confirm with
    assert holds_in_each_fold([0.0, -0.1], None)  # no folds: no check
    # paths: "box" gains 0.3 on half 0 and loses on half 1
    cases = [("polyp", {"query": 0.5, "box": 0.8})] * 3 + [("polyp", {"query": 0.5, "box": 0.49})] * 3
    folds = [0, 0, 0, 1, 1, 1]
    assert choose_mask_paths(cases)[0] == {"polyp": "box"}
    chosen, evidence = choose_mask_paths(cases, folds=folds)
    assert chosen == {} and evidence["polyp"]["not_in_every_fold"]
    assert choose_mask_paths(cases, folds=[0, 1, 0, 1, 0, 1])[0] == {"polyp": "box"}  # spread over both halves
    # thresholds: a low cut helps the three under-drawn cases of half 0 only
    true = np.zeros((8, 8), bool)
    true[2:6, 2:6] = True
    thin = np.where(true, -0.5, -5.0)  # at 0: empty; at -1: exact
    right = np.where(true, 3.0, -0.7)  # at 0: exact; at -1: the whole image
    tcases = [("liver", thin, true)] * 3 + [("liver", right, true)] * 3
    assert choose_thresholds(tcases)[0] == {"liver": -1.0}
    assert choose_thresholds(tcases, folds=folds)[0] == {}
    # component rules: keeping the largest part helps half 0 (specks) and hurts half 1 (two real parts)
    specked = true.copy()
    specked[7, 7] = True
    two = np.zeros((8, 8), bool)
    two[0:3, 0:3] = two[5:8, 5:8] = True
    pairs = [("kidneys", specked, true)] * 3 + [("kidneys", two, two)] * 1
    assert choose_rules(pairs).keep_largest == ["kidneys"] or choose_rules(pairs).drop_specks == ["kidneys"]
    assert choose_rules(pairs, folds=[0, 0, 0, 1]).keep_largest == [] and choose_rules(pairs, folds=[0, 0, 0, 1]).drop_specks == []


def test_predictor_refine_path_boxes_each_part_of_the_query_mask(tiny_trained):
    """"refine" (chosen per target in the rules): each part of the query's mask gets its own box prompt into
    LiteMedSAM's decoder (here a stand-in that fills the box at logit 2), and the target's cut applies on that path's
    logits; asked explicitly on a model whose encoder is not LiteMedSAM's, it is refused."""
    from types import SimpleNamespace

    from scipy import ndimage as ndi

    from rcmed.data.synth import synth
    from rcmed.errors import RCMedInputError
    from rcmed.model.medsam import LiteMedSAM

    class FilledBox:
        segment_components = LiteMedSAM.segment_components

        def segment_boxes(self, feats, boxes):
            s = feats.embedding.shape[-1] * 4
            masks = torch.full((len(boxes), 1, s, s), -4.0)
            for k, (x0, y0, x1, y1) in enumerate(boxes.long().tolist()):
                masks[k, 0, y0:y1 + 1, x0:x1 + 1] = 2.0
            return SimpleNamespace(masks=masks)

    predictor = Predictor.from_pretrained(tiny_trained)
    predictor.set_image(synth("ct", 3, size=64).image)
    with pytest.raises(RCMedInputError, match="LiteMedSAM"):
        predictor.predict("Segment the liver.", mask_path="refine")
    predictor.rules = PostprocessRules(presence_cuts={"liver": 0.001})
    query = predictor.predict("Segment the liver.", flips=()).targets[0]
    assert query.mask is not None and query.mask.any()
    predictor._sam = FilledBox()
    predictor.rules = PostprocessRules(presence_cuts={"liver": 0.001}, mask_paths={"liver": "refine"}, thresholds={"liver": 1.0})
    refined = predictor.predict("Segment the liver.").targets[0]
    assert refined.mask is not None and (refined.mask | ~query.mask).all()  # every part of the query's mask is kept...
    boxes = np.zeros_like(query.mask)
    for sl in ndi.find_objects(ndi.label(query.mask)[0]):
        boxes[sl] = True
    assert refined.mask.sum() >= query.mask.sum() and (refined.mask <= np.pad(boxes, 2)[2:-2, 2:-2] | boxes).all()
    predictor.rules = PostprocessRules(presence_cuts={"liver": 0.001}, mask_paths={"liver": "refine"}, thresholds={"liver": 3.0})
    assert predictor.predict("Segment the liver.").targets[0].mask is None  # the cut is the path's: 2 < 3, nothing left


def test_rules_chosen_per_modality_replace_the_general_ones_on_that_modality_only(tmp_path):
    """"nuclei@pathology" rules serve pathology images; microscopy images get theirs, a third modality the
    general ones; a modality-keyed file survives a save, and a key naming no modality is refused on load."""
    from rcmed.postprocess import base_name, rule_key

    assert rule_key("The Nuclei", "pathology") == "the nuclei@pathology" and base_name("nuclei@pathology") == "nuclei"
    rules = PostprocessRules(thresholds={"nuclei@pathology": 1.5, "nuclei@microscopy": -1.0, "liver": 2.0},
                             mask_paths={"nuclei@pathology": "refine"}, presence_cuts={"nuclei": 0.3},
                             drop_specks=["nuclei@microscopy", "liver"],
                             evidence={"nuclei@pathology": {"cases": 4}, "nuclei@microscopy": {"cases": 9}})
    path, micro, ct = rules.for_modality("pathology"), rules.for_modality("microscopy"), rules.for_modality("ct")
    assert path.threshold_for("nuclei") == 1.5 and micro.threshold_for("nuclei") == -1.0 and ct.threshold_for("nuclei") == 0.0
    assert path.mask_path_for("Nuclei") == "refine" and micro.mask_path_for("nuclei") == "query"
    assert path.presence_for("nuclei") == micro.presence_for("nuclei") == 0.3  # no cut of its own: the general one
    assert micro.drop_specks == ["liver", "nuclei"] and path.drop_specks == ["liver"]
    assert path.threshold_for("liver") == 2.0 and rules.for_modality(None).thresholds == {"liver": 2.0}
    rules.save(tmp_path)
    assert PostprocessRules.load(tmp_path).for_modality("pathology").threshold_for("nuclei") == 1.5
    (tmp_path / FILE).write_text('{"thresholds": {"nuclei@histology": 1.0}}')
    with pytest.raises(ValueError, match="names no modality"):
        PostprocessRules.load(tmp_path)


def test_targets_seen_on_two_modalities_get_rules_per_modality():
    """A target whose present validation questions come from two modalities is keyed per modality (absent
    questions too, by their image's modality); one seen on a single modality keeps its name."""
    from rcmed.train.decoder_stage import Item, by_modality_where_apart

    def item(dataset, name, present):
        mask = torch.ones(4, 4, dtype=torch.bool) if present else None
        return Item(record=f"{dataset}-{name}", dataset=dataset, name=name, feature="f", hidden=torch.zeros(1, 2), mask=mask)

    modality_of = {"DSB": "microscopy", "MoNuSeg": "pathology", "MSD": "ct", "phantom-ct": "ct"}
    items = [item("DSB", "nuclei", True), item("MoNuSeg", "Nuclei", True), item("MoNuSeg", "nuclei", False),
             item("MSD", "liver", True), item("phantom-ct", "liver", True)]
    keyed = by_modality_where_apart(items, modality_of)
    assert [it.name for it in keyed] == ["nuclei@microscopy", "nuclei@pathology", "nuclei@pathology", "liver", "liver"]
    assert keyed[0].hidden is items[0].hidden and items[0].name == "nuclei"  # new items, the tensors shared


def test_predictor_uses_the_rules_of_its_images_modality(tiny_trained, monkeypatch):
    """A cut chosen for the liver on CT cuts a CT image's mask; one chosen for MRI leaves it as drawn."""
    predictor = _spilling_ct_predictor(tiny_trained, monkeypatch)
    raw = predictor.predict("Segment the liver.").targets[0]
    predictor.rules = PostprocessRules(thresholds={"liver@mri": 3.0})
    assert predictor.predict("Segment the liver.").targets[0].area_px == raw.area_px
    predictor.rules = PostprocessRules(thresholds={"liver@ct": 3.0})
    assert 0.4 < predictor.predict("Segment the liver.").targets[0].area_px / raw.area_px < 0.6
