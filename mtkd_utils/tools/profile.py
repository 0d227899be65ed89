"""Where a finished grid's time went: per notebook run, kernel start-up, training steps, validation, soft targets,
the test read and everything else (a tool run on purpose, on an experiment the batch runner wrote):

    python -m mtkd_utils.tools.profile outputs/demo            # per run kind, then per run (markdown)

It reads what the runs left: cell.json (each run's wall-clock seconds), the executed notebook (papermill's
seconds per cell) and the timing.json files that training and the test read write beside their results.
Start-up is the kernel's launch plus the notebook's set-up cell (imports, the experiment, the config).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from ..analysis.results import to_markdown
from ..io import read_json

TIMED = {"train_seconds": "training steps", "val_seconds": "validation", "soft_targets_seconds": "soft targets",
         "test_seconds": "test read"}
PHASES = ["start-up", *TIMED.values(), "other cells"]
PARAMETER_TAGS = {"parameters", "injected-parameters"}


def cell_seconds(notebook: Path) -> tuple[float, float]:
    """(seconds of every code cell, seconds of the set-up cell: the first one after the parameters)."""
    cells = [c for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code"]
    seconds = [float(c["metadata"].get("papermill", {}).get("duration") or 0.0) for c in cells]
    work = [s for c, s in zip(cells, seconds) if not PARAMETER_TAGS & set(c["metadata"].get("tags", []))]
    return sum(seconds), (work[0] if work else 0.0)


def run_kind(name: str) -> str:
    """'teachers/p5_s0/T1' -> 'teacher'; 'students/T1+T2+T3/p5_s0/M3' -> 'M3'; else the stage."""
    parts = name.split("/")
    return {"teachers": "teacher", "students": parts[-1]}.get(parts[0], parts[0])


def run_phases(experiment_dir: Path, record: dict) -> dict:
    """The seconds of one finished notebook run, by phase."""
    total = float(record["seconds"])
    in_cells, setup = cell_seconds(Path(record["output_notebook"]))
    timed = {phase: 0.0 for phase in TIMED.values()}
    for timing in sorted((experiment_dir / record["name"]).rglob("timing.json")):
        for key, seconds in read_json(timing).items():
            if key in TIMED:
                timed[TIMED[key]] += seconds
    startup = total - in_cells + setup
    return {"run": record["name"], "kind": run_kind(record["name"]), "seconds": total, "start-up": startup,
            **timed, "other cells": total - startup - sum(timed.values())}


def profile(experiment_dir: str | Path) -> pd.DataFrame:
    """One row per finished notebook run of the experiment: its seconds by phase."""
    exp = Path(experiment_dir)
    records = [read_json(p) for p in sorted(exp.glob("runs/**/cell.json"))]
    rows = [run_phases(exp, r) for r in records if r.get("status") == "done"]
    if not rows:
        raise FileNotFoundError(f"{exp}: no finished notebook run (runs/**/cell.json with status done); run the "
                                "grid first (python -m mtkd_utils.batch --preset demo)")
    return pd.DataFrame(rows, columns=["run", "kind", "seconds", *PHASES])


def by_kind(runs: pd.DataFrame) -> pd.DataFrame:
    """Seconds per run kind and phase, summed over runs, with the number of runs and each phase's share."""
    table = runs.groupby("kind", sort=False)[["seconds", *PHASES]].sum().rename_axis("kind")
    table.insert(0, "runs", runs.groupby("kind", sort=False).size())
    table.loc["all"] = table.sum()
    shares = table[PHASES].div(table.seconds, axis=0)
    table["biggest phase"] = [f"{p} ({shares.loc[k, p]:.0%})" for k, p in shares.idxmax(axis=1).items()]
    return table.round(1)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m mtkd_utils.tools.profile", description=__doc__.split("\n")[0])
    ap.add_argument("experiment_dir", help="an experiment the batch runner wrote, e.g. outputs/demo")
    args = ap.parse_args(argv)
    runs = profile(args.experiment_dir)
    print("Notebook seconds by run kind and phase (summed over runs):\n")
    print(to_markdown(by_kind(runs)))
    print("\nPer run:\n")
    print(to_markdown(runs.round(1)))


if __name__ == "__main__":
    main()
