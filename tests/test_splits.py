import numpy as np
import pandas as pd
import pytest

from mtkd_utils.config import FRACTIONS
from mtkd_utils.data.splits import (
    LeakageError,
    check_leakage,
    load_evaluation_only,
    load_user_splits,
    make_splits,
    select_fraction,
)

CLASSES, PRIOR = ["normal", "dr", "amd", "glaucoma", "melanoma"], [0.45, 0.25, 0.15, 0.1, 0.05]


@pytest.fixture(scope="module")
def manifest() -> pd.DataFrame:
    """700 labeled patients (two eyes, often different classes) and 1,400 never-labeled ones."""
    rng = np.random.default_rng(1)
    rows = []
    for i in range(700):
        c = rng.choice(CLASSES, p=PRIOR)
        for eye in ("left", "right"):
            coarse = c if rng.random() < 0.7 else "normal"
            rows.append(dict(image_id=f"p{i}_{eye}", patient_id=f"p{i}", labeled=1, coarse=coarse))
    for i in range(700, 2100):
        for eye in ("left", "right"):
            rows.append(dict(image_id=f"p{i}_{eye}", patient_id=f"p{i}", labeled=0, coarse=""))
    return pd.DataFrame(rows)


def test_no_patient_in_two_splits(manifest):
    s = make_splits(manifest, seed=0)
    assert (s.groupby("patient_id").split.nunique() == 1).all()
    for p in FRACTIONS:
        r = select_fraction(s, p)
        used = r[r.role.isin(["train", "val", "test", "unlabeled"])]
        side = used.role.replace({"unlabeled": "train"})
        assert (side.groupby(used.patient_id).nunique() == 1).all()


def test_held_out_sizes_and_stratification_within_one_image(manifest):
    s = make_splits(manifest, seed=0)
    lab = s[s.labeled == 1]
    totals = lab.coarse.value_counts()
    for split in ("test", "val"):
        got = lab[lab.split == split].coarse.value_counts().reindex(totals.index, fill_value=0)
        assert (abs(got - 0.15 * totals) <= 1.0 + 1e-9).all(), (split, (got - 0.15 * totals).to_dict())


def test_fractions_are_nested_and_sized(manifest):
    s = make_splits(manifest, seed=3)
    n_labeled = (s.labeled == 1).sum()
    previous = set()
    for p in FRACTIONS:
        r = select_fraction(s, p)
        train = set(r.image_id[r.role == "train"])
        assert previous <= train                                   # 15 % inside 30 % inside ...
        if p < 70:
            assert 0 <= len(train) - p / 100 * n_labeled < 2        # whole patients: at most one patient over
        else:
            assert train == set(s.image_id[s.split == "train"])      # p = 70 is the whole train pool
        assert set(r.image_id[r.role == "val"]) == set(s.image_id[s.split == "val"])    # fixed for every p
        assert set(r.image_id[r.role == "test"]) == set(s.image_id[s.split == "test"])
        hidden = r[(r.role == "unlabeled") & (r.labeled == 1)]
        assert (hidden.split == "train").all()                      # only train-pool images lose their labels
        previous = train


def test_same_seed_same_splits_other_seed_other_splits(manifest):
    a, b, c = make_splits(manifest, 7), make_splits(manifest, 7), make_splits(manifest, 8)
    pd.testing.assert_frame_equal(a, b)
    assert (a.split != c.split).any()


def test_unlabeled_images_of_held_out_patients_are_excluded():
    m = pd.DataFrame([dict(image_id=f"{p}_{e}", patient_id=p, labeled=int(e == "L"), coarse="dr" if e == "L" else "")
                      for p in [f"p{i}" for i in range(40)] for e in ("L", "R")])
    s = make_splits(m, 0)
    held = s[s.split.isin(["val", "test"])].patient_id.unique()
    assert (s[s.patient_id.isin(held) & (s.labeled == 0)].split == "excluded").all()
    check_leakage(select_fraction(s, 15))


@pytest.mark.parametrize("p", [0, -5, 75, "15"])
def test_fraction_outside_range(manifest, p):
    with pytest.raises(ValueError, match="training fraction"):
        select_fraction(make_splits(manifest, 0), p)


def test_user_split_with_patient_in_two_splits(tmp_path, manifest):
    m = manifest.head(6)
    split = ["train", "test", "train", "train", "val", "val"]
    pd.DataFrame(dict(image_id=m.image_id, split=split)).to_csv(tmp_path / "s.csv", index=False)
    with pytest.raises(LeakageError, match="p0"):
        load_user_splits(tmp_path / "s.csv", m)
    split = ["train", "train", "test", "test", "val", "val"]
    pd.DataFrame(dict(image_id=m.image_id, split=split)).to_csv(tmp_path / "s.csv", index=False)
    ok = load_user_splits(tmp_path / "s.csv", m)
    assert ok.split.tolist() == ["train", "train", "test", "test", "val", "val"]


def test_evaluation_only_patients_are_always_tested_and_not_counted_in_p(manifest):
    held = {f"p{i}" for i in range(0, 700, 7)}                       # 100 labeled patients set aside
    s = make_splits(manifest, seed=0, evaluation_only=held)
    assert (s[s.patient_id.isin(held)].split == "test").all()
    assert set(s.patient_id[s.evaluation_only == 1]) == held
    n_development = ((s.labeled == 1) & (s.evaluation_only == 0)).sum()
    for p in (15, 45):
        train = select_fraction(s, p).query("role == 'train'")
        assert 0 <= len(train) - p / 100 * n_development < 2          # p is taken of the development images only
    development = s[(s.labeled == 1) & (s.evaluation_only == 0)]
    assert abs((development.split == "test").mean() - 0.15) < 0.01   # the usual 15 % test besides them


def test_evaluation_only_patient_in_training_is_leakage(manifest):
    s = make_splits(manifest, seed=0, evaluation_only={"p1"})
    s.loc[s.patient_id == "p1", "split"] = "train"
    with pytest.raises(LeakageError, match="evaluation-only"):
        check_leakage(s)


def test_unknown_evaluation_only_patient_is_refused(manifest):
    with pytest.raises(ValueError, match="nobody"):
        make_splits(manifest, seed=0, evaluation_only={"nobody"})
    with pytest.raises(ValueError, match="p700"):                    # never labeled: it cannot be tested
        make_splits(manifest, seed=0, evaluation_only={"p700"})


def test_load_evaluation_only(tmp_path):
    manifest = tmp_path / "manifest.csv"
    assert load_evaluation_only(manifest) == set()                   # a source without a list
    (tmp_path / "evaluation_only.csv").write_text("patient_id\np3\np9\n")
    assert load_evaluation_only(manifest) == {"p3", "p9"}
    (tmp_path / "evaluation_only.csv").write_text("patient\np3\n")
    with pytest.raises(ValueError, match="patient_id"):
        load_evaluation_only(manifest)
