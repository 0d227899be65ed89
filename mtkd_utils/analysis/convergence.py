"""How far each trained model is from its plateau: validation histories summarised per (model, tasks, p)."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from ..config import task_key
from ..runs import RunKey, parse_fraction_folder, student_runs, trained_model_dir
from .results import sort_key

PROGRESS_ORDER = ("M1", "M1b", "M2", "M3", "teacher")   # the rows of training_progress


def last_quarter_gain(val_score: pd.Series) -> float:
    """Best validation score in the last quarter of the epochs minus the best before it: about 0 or below once
    validation has plateaued, clearly positive while the model still improves; NaN under 2 epochs."""
    if len(val_score) < 2:
        return float("nan")
    tail = math.ceil(len(val_score) / 4)
    return float(val_score.iloc[-tail:].max() - val_score.iloc[:-tail].max())


def _histories(experiment_dir: str | Path) -> list[tuple[str, RunKey, Path]]:
    """(model, key, history.csv) of every trained model: the teachers (M1 among them), M2/M3 at the setting chosen
    on validation, M1b."""
    found = []
    for path in sorted(Path(experiment_dir).glob("teachers/p*_s*/*/history.csv")):
        found.append(("teacher", RunKey(path.parent.name, *parse_fraction_folder(path.parent.parent.name)), path))
    for key, _ in student_runs(experiment_dir):
        if key.model != "M1":                    # M1 is its teacher: listed above
            found.append((key.model, key, trained_model_dir(experiment_dir, key) / "history.csv"))
    return [(model, key, path) for model, key, path in found if path.exists()]


def training_progress(experiment_dir: str | Path) -> pd.DataFrame:
    """Per trained (model, tasks, p), mean over seeds: updates, best epoch, epochs run, best validation score and its
    last_quarter_gain. The teacher with the most tasks at its (p, seed) is M1, the multi-task model."""
    rows = []
    for model, key, path in _histories(experiment_dir):
        h = pd.read_csv(path)
        rows.append(dict(model=model, tasks=task_key(key.tasks), n_tasks=len(key.tasks), p=key.p_label,
                         seed=key.seed, updates=h.updates.iloc[-1], best_epoch=h.epoch[h.val_score.idxmax()],
                         epochs=len(h), val_score=h.val_score.max(), last_quarter_gain=last_quarter_gain(h.val_score)))
    cols = ["model", "tasks", "p", "n_seeds", "updates", "best_epoch", "epochs", "val_score", "last_quarter_gain"]
    if not rows:
        return pd.DataFrame(columns=cols)
    df = pd.DataFrame(rows)
    teachers = df.model == "teacher"
    most = df.n_tasks[teachers].groupby([df.p, df.seed]).transform("max").reindex(df.index)
    df.loc[teachers & (df.n_tasks == most), "model"] = "M1"
    df["model"] = pd.Categorical(df.model, PROGRESS_ORDER, ordered=True)
    out = df.groupby(["model", "tasks", "p"], observed=True).agg(
        n_seeds=("seed", "count"), updates=("updates", "mean"), best_epoch=("best_epoch", "mean"),
        epochs=("epochs", "mean"), val_score=("val_score", "mean"), last_quarter_gain=("last_quarter_gain", "mean"))
    out = out.reset_index().sort_values(["p", "model", "tasks"], key=sort_key)
    return out.astype({"model": str}).reset_index(drop=True)[cols]
