"""Error analysis of one predictions table (supplement section 3): how T1, T2 and T3 go right or wrong together.

Works on predictions.csv as docs/ARCHITECTURE.md defines it. A task the model does not have leaves its
columns empty ('' in memory, NaN after a CSV round trip): that task's dimension is left out of the tables,
with a warning that says so.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

DIMENSIONS = {"T1": "coarse", "T2": "fine", "T3": "bleu_bucket"}  # task -> its dimension (column / index level)
OUTCOMES = ("right", "wrong")
# The supplement's counts for its best model (M3) on 1,082 test images, at BLEU thresholds 0.2 / 0.5.
PAPER_COUNTS = (42, 20, 100, 13, 1082)


def _filled(col: pd.Series) -> pd.Series:
    """True where a cell holds a value: neither NaN nor an empty / blank string."""
    return col.notna() & (col.astype(str).str.strip() != "")


def _column(preds: pd.DataFrame, name: str) -> pd.Series:
    """A column, or an all-empty one when the file does not have it."""
    return preds[name] if name in preds.columns else pd.Series("", index=preds.index, name=name)


def _task_state(preds: pd.DataFrame, task: str) -> bool:
    """Whether a task's columns are filled; ValueError when they are filled for some rows only."""
    needed = {"T1": ("coarse_true", "coarse_pred"), "T2": ("fine_true", "fine_pred"), "T3": ("bleu",)}[task]
    filled = {c: _filled(_column(preds, c)) for c in needed}
    if not any(f.any() for f in filled.values()):
        return False
    for c, f in filled.items():
        if not f.all():
            raise ValueError(f"{task}: column {c!r} is empty for {int((~f).sum())} of {len(preds)} rows; "
                             f"a task's columns must be filled for every row or for none")
    if task == "T3" and not pd.to_numeric(preds["bleu"], errors="coerce").notna().all():
        raise ValueError("T3: column 'bleu' holds values that are not numbers")
    return True


def available_tasks(preds: pd.DataFrame) -> tuple[str, ...]:
    """The tasks whose prediction columns are filled (T3 is judged by its BLEU column)."""
    return tuple(t for t in DIMENSIONS if _task_state(preds, t))


def _check_edges(bleu_edges: Sequence[float]) -> tuple[float, float]:
    if len(bleu_edges) != 2 or not 0.0 <= bleu_edges[0] < bleu_edges[1] <= 1.0:
        raise ValueError(f"bleu_edges={tuple(bleu_edges)}: give two thresholds (low, high) with 0 <= low < high <= 1")
    return float(bleu_edges[0]), float(bleu_edges[1])


def bleu_labels(bleu_edges: Sequence[float] = (0.2, 0.5)) -> list[str]:
    """Bucket names, low to high: '< low', '[low, high]' (ends included), '> high' (strict, as in the paper)."""
    lo, hi = _check_edges(bleu_edges)
    return [f"< {lo:g}", f"[{lo:g}, {hi:g}]", f"> {hi:g}"]


def bleu_bucket(bleu: pd.Series, bleu_edges: Sequence[float] = (0.2, 0.5)) -> pd.Series:
    """Each BLEU as an ordered category: below low, between (inclusive), above high."""
    lo, hi = _check_edges(bleu_edges)
    b = pd.to_numeric(bleu, errors="coerce").to_numpy(dtype=float)
    labels = bleu_labels(bleu_edges)
    idx = np.where(b < lo, 0, np.where(b > hi, 2, 1))
    buckets = pd.Categorical.from_codes(idx, categories=labels, ordered=True)
    return pd.Series(buckets, index=bleu.index, name="bleu_bucket")


def _pick_tasks(preds: pd.DataFrame, tasks: Sequence[str] | None) -> tuple[str, ...]:
    """`tasks` checked against what the table has; None: all it has, with a warning naming what is missing."""
    have = available_tasks(preds)
    if tasks is None:
        missing = [t for t in DIMENSIONS if t not in have]
        if missing:
            warnings.warn(f"no predictions for {', '.join(missing)} (columns empty): the "
                          f"{', '.join(DIMENSIONS[t] for t in missing)} dimension(s) are left out", stacklevel=3)
        tasks = have
    bad = [t for t in tasks if t not in have]
    if bad:
        raise ValueError(f"tasks={tuple(tasks)}: this table has predictions for {have} only")
    if not tasks:
        raise ValueError("no task has predictions: nothing to analyse")
    return tuple(t for t in DIMENSIONS if t in tasks)


def outcome_cells(preds: pd.DataFrame, bleu_edges: Sequence[float] = (0.2, 0.5),
                  tasks: Sequence[str] | None = None) -> pd.DataFrame:
    """Per image, its cell of the error table: columns coarse / fine ('right' / 'wrong') and bleu_bucket."""
    tasks = _pick_tasks(preds, tasks)
    right_wrong = pd.CategoricalDtype(OUTCOMES, ordered=True)
    cells = {}
    if "T1" in tasks:
        hit = preds["coarse_pred"].astype(str) == preds["coarse_true"].astype(str)
        cells["coarse"] = np.where(hit, "right", "wrong")
    if "T2" in tasks:
        hit = preds["fine_pred"].astype(str) == preds["fine_true"].astype(str)
        cells["fine"] = np.where(hit, "right", "wrong")
    out = pd.DataFrame({k: pd.Series(v, index=preds.index).astype(right_wrong) for k, v in cells.items()},
                       index=preds.index)
    if "T3" in tasks:
        out["bleu_bucket"] = bleu_bucket(preds["bleu"], bleu_edges)
    return out


def _count_labels(low_bleu: float, high_bleu: float) -> list[str]:
    return [f"coarse right, BLEU < {low_bleu:g}", f"coarse wrong, BLEU > {high_bleu:g}",
            "fine right, coarse wrong", "coarse right, fine wrong", "n"]


def supplement_counts(preds: pd.DataFrame, low_bleu: float = 0.2, high_bleu: float = 0.5) -> pd.Series:
    """The supplement's four counts (NA where a task they need has no predictions), plus n."""
    _check_edges((low_bleu, high_bleu))
    have = available_tasks(preds)
    na = pd.NA
    coarse = (preds["coarse_pred"].astype(str) == preds["coarse_true"].astype(str)) if "T1" in have else None
    fine = (preds["fine_pred"].astype(str) == preds["fine_true"].astype(str)) if "T2" in have else None
    bleu = pd.to_numeric(preds["bleu"], errors="coerce") if "T3" in have else None
    counts = [
        int((coarse & (bleu < low_bleu)).sum()) if coarse is not None and bleu is not None else na,
        int((~coarse & (bleu > high_bleu)).sum()) if coarse is not None and bleu is not None else na,
        int((fine & ~coarse).sum()) if coarse is not None and fine is not None else na,
        int((coarse & ~fine).sum()) if coarse is not None and fine is not None else na,
        len(preds),
    ]
    return pd.Series(counts, index=_count_labels(low_bleu, high_bleu), dtype="Int64", name="count")


def paper_counts() -> pd.Series:
    """The supplement's numbers for M3 (thresholds 0.2 / 0.5), labelled as supplement_counts labels them."""
    return pd.Series(PAPER_COUNTS, index=_count_labels(0.2, 0.5), dtype="Int64", name="paper M3")


def _table(cells: pd.DataFrame) -> pd.DataFrame:
    """Counts and percentages over every combination of the cells' categories (zeros kept)."""
    counts = cells.groupby(list(cells.columns), observed=False).size()   # categoricals: the full product
    total = counts.sum()
    pct = 100.0 * counts / total if total else counts * np.nan
    return pd.DataFrame({"count": counts.astype(int), "percent": pct})


def _groups(preds: pd.DataFrame, by: str) -> pd.Series:
    if by not in preds.columns or not _filled(preds[by]).all():
        raise ValueError(f"by={by!r}: needs a column filled for every row; columns are {list(preds.columns)}")
    return preds[by].astype(str)


def error_table(preds: pd.DataFrame, bleu_edges: Sequence[float] = (0.2, 0.5), by: str | None = None,
                tasks: Sequence[str] | None = None) -> pd.DataFrame:
    """Counts and percentages per cell coarse x fine x BLEU bucket; with `by`, per group and 'all' (last)."""
    cells = outcome_cells(preds, bleu_edges, tasks)
    if by is None:
        table = _table(cells)
    else:
        groups = _groups(preds, by)
        parts = {g: _table(cells[groups == g]) for g in sorted(groups.unique())}
        parts["all"] = _table(cells)
        table = pd.concat(parts, names=[by])
    table.attrs["tasks"] = [t for t, dim in DIMENSIONS.items() if dim in cells.columns]
    table.attrs["bleu_edges"] = list(bleu_edges)
    return table


def _common_tasks(named_preds: Mapping[str, pd.DataFrame]) -> tuple[str, ...]:
    have = {name: available_tasks(p) for name, p in named_preds.items()}
    common = tuple(t for t in DIMENSIONS if all(t in h for h in have.values()))
    lacking = {name: [t for t in DIMENSIONS if t not in h] for name, h in have.items()}
    dropped = [t for t in DIMENSIONS if t not in common]
    if dropped:
        warnings.warn(f"compared on {common} only: {', '.join(DIMENSIONS[t] for t in dropped)} left out "
                      f"(tasks without predictions: {lacking})", stacklevel=3)
    return common


def _check_same_images(named_preds: Mapping[str, pd.DataFrame]) -> None:
    ids = {name: frozenset(p["image_id"].astype(str)) for name, p in named_preds.items() if "image_id" in p}
    if len(set(ids.values())) > 1:
        warnings.warn(f"the runs were scored on different test images ({ {k: len(v) for k, v in ids.items()} } "
                      f"images): their tables are not directly comparable", stacklevel=3)


def compare_tables(named_preds: Mapping[str, pd.DataFrame], bleu_edges: Sequence[float] = (0.2, 0.5),
                   by: str | None = None) -> pd.DataFrame:
    """error_table of each run side by side (columns: run x count/percent), on the tasks all runs have."""
    if not named_preds:
        raise ValueError("named_preds is empty: give {'run name': predictions DataFrame, ...}")
    _check_same_images(named_preds)
    tasks = _common_tasks(named_preds)
    if not tasks:
        raise ValueError("the runs share no task with predictions: nothing to compare")
    tables = {name: error_table(p, bleu_edges, by, tasks) for name, p in named_preds.items()}
    out = pd.concat(tables, axis=1, names=["run", None])
    for col in [c for c in out.columns if c[1] == "count"]:
        out[col] = out[col].fillna(0).astype(int)   # a group one run lacks: zero images there
    return out


def compare_counts(named_preds: Mapping[str, pd.DataFrame], low_bleu: float = 0.2, high_bleu: float = 0.5,
                   paper: bool = False) -> pd.DataFrame:
    """supplement_counts of each run side by side; paper=True adds the supplement's M3 column."""
    _check_same_images(named_preds)
    cols = {name: supplement_counts(p, low_bleu, high_bleu) for name, p in named_preds.items()}
    if paper:
        if (low_bleu, high_bleu) != (0.2, 0.5):
            raise ValueError("paper=True needs the paper's thresholds low_bleu=0.2, high_bleu=0.5")
        cols["paper M3"] = paper_counts()
    return pd.DataFrame(cols)


def cell_examples(preds: pd.DataFrame, n: int = 2, seed: int = 0, bleu_edges: Sequence[float] = (0.2, 0.5),
                  by: str | None = None, tasks: Sequence[str] | None = None) -> pd.DataFrame:
    """Up to n rows of `preds` drawn (seeded) from each non-empty cell, with the cell's labels in front."""
    if n < 1:
        raise ValueError(f"n={n}: draw at least one example per cell")
    preds = preds.reset_index(drop=True)   # rows are matched back by index: make it unique
    cells = outcome_cells(preds, bleu_edges, tasks)
    keys = list(cells.columns)
    if by is not None:
        cells.insert(0, by, _groups(preds, by))
        keys = [by, *keys]
    # Each cell is drawn with the same seed on its own rows: one cell's draw never depends on another's.
    picked = [g.sample(n=min(n, len(g)), random_state=seed)
              for _, g in cells.groupby(keys, observed=True, sort=True)]
    chosen = pd.concat(picked) if picked else cells.iloc[:0]
    rest = [c for c in preds.columns if c not in chosen.columns]
    return chosen.join(preds[rest]).reset_index(drop=True)
