"""`--format pairs`: the image/mask pair layout of shared/realdata, on a tiny tree the test writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rcmed.data.convert import convert
from rcmed.data.convert.pairs import assign_splits
from rcmed.data.store import iter_records, read_sample
from rcmed.errors import EmptyInputError, InvalidMaskError, ShapeMismatchError

REALDATA = Path(__file__).resolve().parents[3] / "shared" / "realdata"


def _dataset(root: Path, modality: str, name: str, rows: list[tuple], size=(40, 48), rgb=False) -> Path:
    """rows: (case, patient, split, {target: mask array or 'inst' label map or None (empty)})."""
    ds = root / modality / name
    (ds / "images").mkdir(parents=True)
    lines = ["case,patient,split,image,targets"]
    rng = np.random.default_rng(0)
    for case, patient, split, targets in rows:
        shape = (*size, 3) if rgb else size
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(ds / "images" / f"{case}.png")
        (ds / "masks" / case).mkdir(parents=True)
        for t, m in targets.items():
            stem = ds / "masks" / case / t.replace(" ", "_")
            if m is None:
                m = np.zeros(size, bool)
            if m.dtype.kind in "ui" and m.dtype != np.uint8:
                Image.fromarray(m.astype(np.uint16)).save(f"{stem}.instances.png")
                m = m > 0
            Image.fromarray((m > 0).astype(np.uint8) * 255).save(f"{stem}.png")
        lines.append(f"{case},{patient},{split},images/{case}.png,{'|'.join(targets)}")
    (ds / "cases.csv").write_text("\n".join(lines) + "\n")
    return ds


def _box(size, r0, r1, c0, c1):
    m = np.zeros(size, bool)
    m[r0:r1, c0:c1] = True
    return m


def test_pairs_tree_keeps_patients_splits_absent_and_instances(tmp_path):
    size = (40, 48)
    liver = _box(size, 5, 20, 6, 30)
    _dataset(tmp_path, "ct", "msd_task03_liver_2d", [
        ("a_s1", "p1", "", {"liver": liver}),
        ("a_s2", "p1", "", {"liver": None}),  # a slice of the same patient without liver: absent
        ("b_s1", "p2", "", {"liver": liver}),
    ])
    labels = np.zeros(size, np.uint16)
    labels[2:8, 2:8], labels[20:30, 20:26] = 1, 2
    _dataset(tmp_path, "pathology", "MoNuSeg2018", [
        ("t0", "slideA", "train", {"nuclei": labels}),
        ("t1", "slideB", "test", {"nuclei": labels}),
    ], rgb=True)
    n = convert(tmp_path, "pairs", tmp_path / "st", progress=False, cross_absent=2)
    recs = {r.id: r for r in iter_records(tmp_path / "st")}
    assert n == len(recs) == 5
    a1, a2 = recs["msd_task03_liver_2d-a_s1"], recs["msd_task03_liver_2d-a_s2"]
    # one patient, one case id, so a split by case is a split by patient
    assert a1.case_id == a2.case_id == "msd_task03_liver_2d-p1"
    assert a1.split == a2.split
    assert a1.modality == "ct" and a1.body_region == "abdomen" and a1.targets == ["liver"]
    assert a2.targets == [] and a2.absent[0] == "liver"
    # other regions lend their names as absent targets: nuclei are not asked of a CT, liver not of H&E
    assert "nuclei" in a1.absent and "liver" in recs["MoNuSeg2018-t0"].absent
    s = read_sample(tmp_path / "st", a1)
    np.testing.assert_array_equal(s.masks[0], liver)
    t0 = recs["MoNuSeg2018-t0"]
    assert t0.instance_target == "nuclei" and t0.targets == [] and t0.modality == "pathology"
    st = read_sample(tmp_path / "st", t0)
    assert st.image.shape == (*size, 3) and set(np.unique(st.instances)) == {0, 1, 2}
    # the official split is kept: the test slide stays in test
    assert recs["MoNuSeg2018-t1"].split == "test"
    assert {r.split for r in recs.values()} <= {"train", "val", "test"}


def test_pairs_one_dataset_folder_takes_its_modality_from_the_parent(tmp_path):
    ds = _dataset(tmp_path, "endoscopy", "mine", [("c1", "c1", "", {"polyp": _box((40, 48), 3, 9, 3, 9)})], rgb=True)
    convert(ds, "pairs", tmp_path / "st", progress=False)
    (rec,) = iter_records(tmp_path / "st")
    assert rec.modality == "endoscopy" and rec.body_region == "unknown" and rec.absent == []


def test_splits_by_patient_official_val_becomes_test_when_no_test():
    from rcmed.data.convert.pairs import _Case

    def case(p, split):
        return _Case(Path("d"), "endoscopy", p, p, split, Path("x"), ("polyp",))

    cases = [case(f"p{i}", "train") for i in range(200)] + [case(f"q{i}", "val") for i in range(30)]
    out = assign_splits(cases)
    assert all(out[f"q{i}"] == "test" for i in range(30))
    n_val = sum(out[f"p{i}"] == "val" for i in range(200))
    assert 10 < n_val < 50  # validation drawn from the training patients
    assert out == assign_splits(list(reversed(cases)))  # stable, order-free
    free = assign_splits([case(f"r{i}", "") for i in range(400)])
    counts = {s: sum(v == s for v in free.values()) for s in ("train", "val", "test")}
    assert counts["train"] > 230 and counts["val"] > 30 and counts["test"] > 30


def test_pairs_bad_folders_are_clear_errors(tmp_path):
    with pytest.raises(EmptyInputError, match="cases.csv"):
        convert(tmp_path, "pairs", tmp_path / "st", progress=False)
    _dataset(tmp_path / "a", "ct", "d", [("c", "c", "", {"liver": _box((40, 48), 1, 5, 1, 5)})])
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "a" / "ct" / "d" / "masks" / "c" / "liver.png")
    with pytest.raises(ShapeMismatchError):
        convert(tmp_path / "a", "pairs", tmp_path / "st1", progress=False)
    _dataset(tmp_path / "b", "ct", "d", [("c", "c", "", {"liver": _box((40, 48), 1, 5, 1, 5)})])
    m = np.zeros((40, 48), np.uint8)
    m[1, 1], m[2, 2] = 7, 255
    Image.fromarray(m).save(tmp_path / "b" / "ct" / "d" / "masks" / "c" / "liver.png")
    with pytest.raises(InvalidMaskError):
        convert(tmp_path / "b", "pairs", tmp_path / "st2", progress=False)
    assert not (tmp_path / "st1").exists() and not (tmp_path / "st2").exists()


@pytest.mark.skipif(not (REALDATA / "README.md").is_file(), reason=f"no real data at {REALDATA} (it is never in the repository)")
def test_pairs_reads_every_dataset_of_shared_realdata(tmp_path):
    """About 30 s: every image and mask of the twelve datasets is read and checked."""
    convert(REALDATA, "pairs", tmp_path / "st", progress=False, cross_absent=2)
    recs = list(iter_records(tmp_path / "st"))
    assert len({r.source for r in recs}) == 12
    by_case: dict[str, set[str]] = {}
    for r in recs:
        by_case.setdefault(r.case_id, set()).add(r.split)
    assert all(len(s) == 1 for s in by_case.values())  # a patient never straddles two splits
    assert {r.split for r in recs} == {"train", "val", "test"}


def test_pairs_through_the_cli(tmp_path):
    from typer.testing import CliRunner

    from rcmed.cli import app

    _dataset(tmp_path / "src", "dermoscopy", "mine", [("c1", "p1", "", {"skin lesion": _box((40, 48), 3, 20, 3, 30)})], rgb=True)
    res = CliRunner().invoke(app, ["data", "convert", str(tmp_path / "src"), "--format", "pairs", "--out", str(tmp_path / "st"),
                                   "--cross-absent", "1", "--seed", "3"])
    assert res.exit_code == 0 and "wrote 1 records" in res.output, res.output
    res = CliRunner().invoke(app, ["data", "convert", str(tmp_path / "src"), "--format", "nnunet", "--out", str(tmp_path / "s2"),
                                   "--cross-absent", "1"])
    assert res.exit_code == 2 and "takes no option" in res.output
