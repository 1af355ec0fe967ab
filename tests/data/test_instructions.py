from __future__ import annotations

import numpy as np

from rcmed.data.describe import describe, describe_instances
from rcmed.data.instructions import BOX, SEG, build_examples
from tests.data.test_describe import disc, ellipse

H = W = 256


def _examples(seed=0):
    masks = [disc(50, 50, 20), ellipse(180, 170, 60, 8, 10), np.zeros((H, W), bool)]
    d = describe(None, masks, ["cyst", "vessel", "tumour"], modality="ct", seed=seed)
    return d, build_examples(d, (H, W), modality="ct", absent=["spleen"], seed=seed)


def test_every_task_is_built_and_seg_tokens_match_targets():
    _, ex = _examples()
    tasks = {e.task for e in ex}
    assert tasks >= {"describe_all", "describe_colour", "segment_name", "segment_multi", "segment_description",
                     "locate", "presence", "absent"}
    for e in ex:
        assert e.answer.count(SEG) == len(e.seg_targets)
        assert e.answer.count(BOX) == len(e.boxes)
    multi = next(e for e in ex if e.task == "segment_multi")
    assert multi.seg_targets == [0, 1]
    assert multi.answer.index("cyst") < multi.answer.index("vessel")
    # each <seg> follows its target's name
    for e in ex:
        if e.task == "segment_name":
            name = ["cyst", "vessel"][e.seg_targets[0]]
            assert f"{name} {SEG}" in e.answer


def test_absent_targets_get_not_present_and_no_mask():
    _, ex = _examples()
    for name in ("tumour", "spleen"):
        neg = [e for e in ex if name in e.prompt]
        assert {e.task for e in neg} == {"absent", "presence"}
        assert all(e.seg_targets == [-1] and e.answer.count(SEG) == 1 for e in neg)  # presence 0, no mask
        assert any("not present" in e.answer for e in neg) and any(e.answer.startswith("No,") for e in neg)


def test_locate_boxes_are_pixels_and_0_1000_in_text():
    d, ex = _examples()
    loc = next(e for e in ex if e.task == "locate" and "cyst" in e.prompt)
    assert loc.boxes == [d.regions[0].box] == [[30, 30, 70, 70]]
    assert "[117, 117, 277, 277]" in loc.answer


def test_segment_by_description_names_a_unique_region():
    _, ex = _examples()
    descs = [e for e in ex if e.task == "segment_description"]
    assert {e.seg_targets[0] for e in descs} == {0, 1}
    assert any("round region in the upper left" in e.prompt for e in descs)


def test_count_for_instances():
    lab = np.zeros((H, W), np.int32)
    for k in range(12):
        lab[disc(20 + 18 * k, 40, 5)] = k + 1
    d = describe_instances(lab, "nuclei")
    ex = build_examples(d, (H, W), modality="microscopy")
    count = next(e for e in ex if e.task == "count")
    assert "12 nuclei" in count.answer and count.seg_targets == [0]


def test_prompts_vary_but_are_deterministic():
    a = [e.prompt for e in _examples(1)[1]]
    assert a == [e.prompt for e in _examples(1)[1]]
    prompts = {tuple(e.prompt for e in _examples(s)[1]) for s in range(6)}
    assert len(prompts) > 2


def test_every_phrasing_of_a_request_is_kept_for_training():
    _, ex = _examples()
    for e in ex:
        assert e.prompt in e.prompts and len(e.prompts) >= 3
        assert len(set(e.prompts)) == len(e.prompts)
    seg = next(e for e in ex if e.task == "segment_name" and e.seg_targets == [0])
    assert "Segment the cyst." in seg.prompts and all("cyst" in p for p in seg.prompts)
    assert all("tumour" in p for e in ex if e.task == "absent" and "tumour" in e.prompt for p in e.prompts)
