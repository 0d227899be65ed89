"""Notebook 01's learnability check: per-class image counts per split and the tiny-CNN baseline on the experiment's
own split (issue 13.7), on the smoke synthetic dataset."""
from pathlib import Path

import pandas as pd
import pytest

from mtkd_utils.analysis.views import class_counts
from mtkd_utils.data import synthetic
from mtkd_utils.data.learnability import split_baseline
from mtkd_utils.data.manifest import LabelMap, read_manifest, validate_manifest
from mtkd_utils.data.splits import load_evaluation_only, make_splits, select_fraction


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[Path, pd.DataFrame, pd.DataFrame, LabelMap]:
    """The smoke dataset with its seeded splits, as 01 makes them."""
    root = synthetic.generate(tmp_path_factory.mktemp("syn") / "smoke", **synthetic.SIZES["smoke"])
    labels = LabelMap.load(root / "label_map.json")
    manifest = validate_manifest(root / "manifest.csv", labels)
    splits = make_splits(manifest, 0, evaluation_only=load_evaluation_only(root / "manifest.csv"))
    return root / "manifest.csv", read_manifest(root / "manifest.csv"), splits, labels


def test_class_counts_per_split_grouped_by_coarse(prepared):
    manifest_path, manifest, splits, labels = prepared
    table = class_counts(splits, manifest, labels, fractions=(15, 70))
    assert list(table.columns) == ["train p=15", "train p=70", "val", "test"]
    pairs = table.index[:-1].tolist()
    assert [c for c, _ in pairs] == sorted((c for c, _ in pairs), key=labels.coarse.index)   # grouped by coarse
    assert [f for _, f in pairs] == [f for c in labels.coarse for f in labels.fine if labels.fine_parent[f] == c]
    for column, role, p in [("train p=15", "train", 15), ("train p=70", "train", 70), ("test", "test", 70)]:
        chosen = manifest[select_fraction(splits, p).role.to_numpy() == role]
        assert table.loc[("total", ""), column] == len(chosen)
        fine = chosen.fine.iat[0]
        assert table.loc[(labels.fine_parent[fine], fine), column] == (chosen.fine == fine).sum()
    assert (table["train p=15"] <= table["train p=70"]).all()                   # nested fractions
    with pytest.raises(ValueError, match="row for row"):
        class_counts(splits.iloc[::-1], manifest, labels)


def test_split_baseline_trains_on_fraction_p_and_scores_validation(prepared):
    manifest_path, manifest, splits, _ = prepared
    roles = {p: select_fraction(splits, p).role for p in (15, 70)}
    results = [split_baseline(manifest_path, splits, p, steps=10) for p in (15, 70)]
    val = manifest[roles[15].to_numpy() == "val"]
    for p, res in zip((15, 70), results):
        assert res["p"] == p and res["evaluated_on"] == "val"
        assert res["n_train_images"] == (roles[p] == "train").sum() and res["n_test_images"] == len(val)
        correct = res["coarse_acc"] * len(val)
        assert correct == pytest.approx(round(correct))                      # a share of whole validation images
    train15 = manifest[roles[15].to_numpy() == "train"]
    for column, key in (("coarse", "majority_acc"), ("fine", "fine_majority_acc")):
        commonest = train15[column].value_counts().idxmax()
        assert results[0][key] == pytest.approx((val[column] == commonest).mean())
    test = split_baseline(manifest_path, splits, 70, steps=10, evaluate_on="test")
    assert test["n_test_images"] == (roles[70] == "test").sum()
    with pytest.raises(ValueError, match="evaluate_on"):
        split_baseline(manifest_path, splits, 70, evaluate_on="unlabeled")
    with pytest.raises(ValueError, match="splits.csv"):
        split_baseline(manifest_path, splits.iloc[::-1], 70)
