"""How many updates M1 needs at each fraction: validation curves that set a preset's budgets (a probe run on
purpose, on a prepared experiment; never reads the test split).

    python -m mtkd_utils.plateau outputs/demo --p 5 15 70 --updates 600 700

For each (p, updates) it trains M1 (T1+T2+T3, the preset's recipe and seed) for exactly that many updates (one
cosine schedule) into a scratch folder and prints the validation curve's end: the best score, the update it
came at and the gain over the last quarter (about 0: the plateau is reached). Budgets are schedule lengths:
compare the end of a 600-update run with that of a 1,200-update run, not points along one schedule.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pandas as pd

from ..analysis.convergence import last_quarter_gain
from ..config import TASKS
from ..data.dataset import load_data
from ..presets import config as preset_config
from ..train.engine import MultiTaskLoss, TrainPlan, fit
from ..train.runtime import setup_runtime
from ..train.steps import new_model

SHOWN = ["val_score", "val_T1_acc", "val_T2_acc", "val_T3_bleu4"]


def curve(experiment_dir: str | Path, p: float, updates: int | None = None, preset: str = "demo",
          **overrides) -> pd.DataFrame:
    """M1's validation history at fraction p over a schedule of `updates` updates (None: the preset's own),
    patience off. Initialisation and data order are M1's teacher run's (02), so on the teacher's schedule the
    probe retraces the teacher's history."""
    cfg = preset_config(preset, patience=10**6, **overrides)
    setup_runtime(cfg)
    data = load_data(experiment_dir, p, cfg)
    own_seed = cfg.model_seed("teacher", TASKS)
    model = new_model(cfg, data, TASKS, own_seed)
    with tempfile.TemporaryDirectory() as scratch:
        return fit(model, data, TrainPlan(data.rows("train"), cfg.epochs, updates=updates),
                   MultiTaskLoss(data, cfg.task_weights), cfg.updated(seed=own_seed), scratch, desc=f"p={p:g}")


def summary(history: pd.DataFrame, p: float, updates: int) -> dict:
    """The end of one curve: best validation metrics (at the best score), where it came, the last quarter's gain."""
    best = history.loc[history.val_score.idxmax()]
    return dict(p=p, schedule=updates, n_val=int(best.val_n), best_at=int(best.updates),
                **{k: round(float(best[k]), 3) for k in SHOWN}, last_quarter_gain=round(last_quarter_gain(history.val_score), 3))


def main(argv: list[str] | None = None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("experiment", help="a prepared experiment folder (01_data_prep ran), e.g. outputs/demo")
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--p", nargs="+", type=float, default=[5, 15, 70], help="training fractions, %%")
    ap.add_argument("--updates", nargs="+", type=int, default=[600], help="schedule lengths to compare")
    args = ap.parse_args(argv)
    rows = [summary(curve(args.experiment, p, n, args.preset), p, n) for p in args.p for n in args.updates]
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    return table


if __name__ == "__main__":
    main()
