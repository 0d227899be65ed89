"""Error analysis on a hand-made predictions table whose counts were worked out by hand."""
from __future__ import annotations

import pandas as pd
import pytest

from mtkd_utils.analysis.errors import (
    available_tasks,
    bleu_bucket,
    cell_examples,
    compare_counts,
    compare_tables,
    error_table,
    outcome_cells,
    paper_counts,
    supplement_counts,
)

# (coarse_true, coarse_pred, fine_true, fine_pred, bleu)  -> cell (coarse, fine, bucket at edges 0.2 / 0.5)
ROWS = [
    ("dr", "dr", "dr_a", "dr_a", 0.80),          # right right high
    ("dr", "dr", "dr_a", "dr_b", 0.10),          # right wrong low
    ("dr", "amd", "dr_a", "dr_a", 0.60),         # wrong right high
    ("amd", "amd", "amd_a", "amd_a", 0.30),      # right right mid
    ("amd", "dr", "amd_a", "amd_b", 0.05),       # wrong wrong low
    ("amd", "amd", "amd_a", "amd_a", 0.20),      # right right mid (0.2 is not < 0.2)
    ("glaucoma", "glaucoma", "gl_a", "gl_b", 0.50),   # right wrong mid (0.5 is not > 0.5)
    ("glaucoma", "normal", "gl_a", "normal", 0.90),   # wrong wrong high
    ("normal", "normal", "normal", "normal", 0.15),   # right right low
    ("normal", "dr", "normal", "normal", 0.55),       # wrong right high
]
LOW, MID, HIGH = "< 0.2", "[0.2, 0.5]", "> 0.5"
# Hand count of every cell (coarse, fine, bucket) over ROWS; all others are 0.
EXPECTED = {("right", "right", LOW): 1, ("right", "right", MID): 2, ("right", "right", HIGH): 1,
            ("right", "wrong", LOW): 1, ("right", "wrong", MID): 1,
            ("wrong", "right", HIGH): 2, ("wrong", "wrong", LOW): 1, ("wrong", "wrong", HIGH): 1}


def preds_table(rows=ROWS) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["coarse_true", "coarse_pred", "fine_true", "fine_pred", "bleu"])
    df.insert(0, "image_id", [f"img{i}" for i in range(len(df))])
    df["fine_top5"] = df["fine_pred"]
    df["text_true"] = "mild dr ."
    df["text_pred"] = "dr ."
    return df[["image_id", "coarse_true", "coarse_pred", "fine_true", "fine_pred", "fine_top5", "text_true", "text_pred",
               "bleu"]]


def without(df: pd.DataFrame, task: str) -> pd.DataFrame:
    """The table a model without `task` writes: that task's columns empty."""
    cols = {"T1": ["coarse_true", "coarse_pred"], "T2": ["fine_true", "fine_pred", "fine_top5"],
            "T3": ["text_pred", "bleu"]}[task]
    out = df.copy()
    out[cols] = ""
    return out


def test_supplement_counts_by_hand():
    counts = supplement_counts(preds_table())
    assert counts.tolist() == [2, 3, 2, 2, 10]
    assert list(counts.index) == ["coarse right, BLEU < 0.2", "coarse wrong, BLEU > 0.5",
                                  "fine right, coarse wrong", "coarse right, fine wrong", "n"]


def test_supplement_counts_follow_the_thresholds():
    counts = supplement_counts(preds_table(), low_bleu=0.1, high_bleu=0.6)
    assert counts.tolist() == [0, 1, 2, 2, 10]   # < 0.1 among coarse right: none; > 0.6 among wrong: 0.9 only
    with pytest.raises(ValueError, match="low < high"):
        supplement_counts(preds_table(), low_bleu=0.5, high_bleu=0.2)


def test_paper_counts_share_the_labels():
    assert list(paper_counts().index) == list(supplement_counts(preds_table()).index)
    assert paper_counts()["n"] == 1082


def test_bleu_buckets_have_strict_outer_edges():
    b = bleu_bucket(pd.Series([0.0, 0.199, 0.2, 0.5, 0.501, 1.0]))
    assert b.tolist() == [LOW, LOW, MID, MID, HIGH, HIGH]


def test_error_table_by_hand():
    table = error_table(preds_table())
    assert table.index.names == ["coarse", "fine", "bleu_bucket"]
    assert len(table) == 12                                     # 2 x 2 x 3, empty cells kept
    got = {k: v for k, v in table["count"].items() if v}
    assert got == EXPECTED
    assert table["count"].sum() == 10
    assert table.loc[("wrong", "right", HIGH), "percent"] == pytest.approx(20.0)
    assert table["percent"].sum() == pytest.approx(100.0)


def test_error_table_other_edges():
    table = error_table(preds_table(), bleu_edges=(0.1, 0.6))
    # low: 0.05; high: 0.8, 0.9; mid: the other seven (0.1 and 0.6 included)
    per_bucket = table["count"].groupby(level="bleu_bucket", observed=True).sum()
    assert per_bucket.tolist() == [1, 7, 2]


def test_error_table_per_disease():
    table = error_table(preds_table(), by="coarse_true")
    assert table.index.get_level_values(0).unique().tolist() == ["amd", "dr", "glaucoma", "normal", "all"]
    dr = table.loc["dr"]
    assert {k: v for k, v in dr["count"].items() if v} == {("right", "right", HIGH): 1, ("right", "wrong", LOW): 1,
                                                            ("wrong", "right", HIGH): 1}
    assert dr["percent"].max() == pytest.approx(100 / 3)
    assert table.loc["all", "count"].tolist() == error_table(preds_table())["count"].tolist()
    with pytest.raises(ValueError, match="by='disease'"):
        error_table(preds_table(), by="disease")


def test_missing_t3_drops_the_bleu_dimension_even_after_a_csv_round_trip(tmp_path):
    path = tmp_path / "predictions.csv"
    without(preds_table(), "T3").to_csv(path, index=False)
    preds = pd.read_csv(path)                                  # empty cells come back as NaN
    assert available_tasks(preds) == ("T1", "T2")
    with pytest.warns(UserWarning, match="T3"):
        table = error_table(preds)
    assert table.index.names == ["coarse", "fine"]
    assert table["count"].tolist() == [4, 2, 2, 2]
    counts = supplement_counts(preds)
    assert counts.isna().tolist() == [True, True, False, False, False]
    assert counts.iloc[2:].tolist() == [2, 2, 10]


def test_missing_t2_drops_the_fine_dimension():
    with pytest.warns(UserWarning, match="T2"):
        table = error_table(without(preds_table(), "T2"))
    assert table.index.names == ["coarse", "bleu_bucket"]
    assert table["count"].tolist() == [2, 3, 1, 1, 0, 3]


def test_partly_filled_column_is_an_error():
    preds = preds_table()
    preds.loc[3, "fine_pred"] = ""
    with pytest.raises(ValueError, match="fine_pred.*1 of 10"):
        error_table(preds)


def test_explicit_tasks_must_exist():
    with pytest.raises(ValueError, match="predictions for"):
        outcome_cells(without(preds_table(), "T3"), tasks=("T1", "T3"))


def test_compare_tables_side_by_side():
    a = preds_table()
    b = preds_table([(t, t, ft, ft, 0.9) for t, _, ft, _, _ in ROWS])   # a perfect run
    table = compare_tables({"M1 p15": a, "M3 p70": b})
    assert list(table.columns.get_level_values(0).unique()) == ["M1 p15", "M3 p70"]
    assert table[("M1 p15", "count")].tolist() == error_table(a)["count"].tolist()
    assert table.loc[("right", "right", HIGH), ("M3 p70", "count")] == 10
    assert table[("M3 p70", "count")].sum() == 10


def test_compare_tables_uses_the_tasks_all_runs_have():
    with pytest.warns(UserWarning, match="bleu_bucket left out"):
        table = compare_tables({"full": preds_table(), "no T3": without(preds_table(), "T3")})
    assert table.index.names == ["coarse", "fine"]
    assert table[("full", "count")].tolist() == table[("no T3", "count")].tolist() == [4, 2, 2, 2]


def test_compare_tables_warns_on_different_test_images():
    other = preds_table()
    other["image_id"] = other["image_id"] + "x"
    with pytest.warns(UserWarning, match="different test images"):
        compare_tables({"a": preds_table(), "b": other})


def test_compare_counts_with_the_paper():
    table = compare_counts({"run": preds_table()}, paper=True)
    assert table.columns.tolist() == ["run", "paper M3"]
    assert table["run"].tolist() == [2, 3, 2, 2, 10]


def test_cell_examples_are_seeded_and_come_from_their_cell():
    preds = preds_table()
    ex = cell_examples(preds, n=1, seed=0)
    assert len(ex) == len(EXPECTED)                           # one per non-empty cell
    cells = outcome_cells(preds).set_index(preds["image_id"])
    for _, row in ex.iterrows():
        assert tuple(cells.loc[row["image_id"]]) == (row["coarse"], row["fine"], row["bleu_bucket"])
    assert {"text_true", "text_pred", "bleu", "coarse_pred"} <= set(ex.columns)   # what the notebook shows
    pd.testing.assert_frame_equal(ex, cell_examples(preds, n=1, seed=0))
    draws = {tuple(cell_examples(preds, n=1, seed=s)["image_id"]) for s in range(10)}
    assert len(draws) > 1                                     # the seed matters where a cell has two images
    # n above a cell's size: all of it
    assert sorted(cell_examples(preds, n=5)["image_id"]) == sorted(preds["image_id"])


def test_cell_examples_per_disease():
    ex = cell_examples(preds_table(), n=3, by="coarse_true")
    assert ex.columns[0] == "coarse_true"
    assert len(ex) == 10                                       # every (disease, cell) here holds <= 3 images
    assert (ex.groupby("coarse_true").size() == pd.Series({"amd": 3, "dr": 3, "glaucoma": 2, "normal": 2})).all()


def test_examples_keep_the_bleu_value_beside_its_bucket():
    ex = cell_examples(preds_table(), n=1)
    by_id = preds_table().set_index("image_id")["bleu"]
    assert ex["bleu"].tolist() == by_id[ex["image_id"]].tolist()
    assert ex["bleu_bucket"].astype(str).isin([LOW, MID, HIGH]).all()


def test_the_focus_model_of_04_and_05_is_found_or_named_missing():
    from mtkd_utils.analysis.views import focus_names

    names = ["M1 p=5", "M3 p=5", "M1 p=70", "M3 p=15"]
    assert focus_names(names, "M3") == ["M3 p=5", "M3 p=15"] and focus_names(names, "M1") == ["M1 p=5", "M1 p=70"]
    with pytest.raises(ValueError, match=r"no finished M3 run .*\['M1'\].*-p focus M1"):
        focus_names(["M1 p=70", "M1 p=15"], "M3")
