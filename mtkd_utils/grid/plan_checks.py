"""Checks the batch runner makes at plan time (`--dry-run` included), before any notebook starts.

Each raises ValueError naming the argument or the file and what to do; Config fields are checked by
Config.check when the grid is expanded.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import pandas as pd

from ..config import parse_tasks, task_key


def check_command_line(args: argparse.Namespace, default_experiment_dir: Path) -> None:
    """Everything on the command line that would otherwise fail inside a notebook, hours later."""
    check_experiment_dir(Path(args.experiment_dir) if args.experiment_dir else default_experiment_dir)
    check_no_repeats("--p", args.p, lambda p: float(p))
    check_no_repeats("--seeds", args.seeds, int)
    check_no_repeats("--tasks", args.tasks, lambda t: task_key(parse_tasks(t)))
    if args.source_path is not None:
        check_source_path(args.source, Path(args.source_path))


def check_experiment_dir(path: Path) -> None:
    """The experiment folder (or the folder it will be made in) is a folder this user may write."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"--experiment-dir {path}: a file is there, not a folder; choose another path")
    existing = next(p for p in [path, *path.absolute().parents] if p.exists())
    if not existing.is_dir():
        raise ValueError(f"--experiment-dir {path}: {existing} is a file, so the folder cannot be made there")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"--experiment-dir {path}: {existing} is not writable by this user; choose a folder you "
                         "can write, or change its permissions")


def check_no_repeats(option: str, values: list | None, key) -> None:
    """Refuse a value given twice (`--p 15 15.0`): it would plan the same cell twice."""
    seen: dict = {}
    for v in values or []:
        k = key(v)
        if k in seen:
            raise ValueError(f"{option}: {k!r} is given twice ({seen[k]!r} and {v!r} are one value); give each once")
        seen[k] = v


def check_source_path(source: str | None, path: Path) -> None:
    """The data source exists and, for a CSV or a manifest, is a table with rows (read: header and one row)."""
    if not path.exists():
        raise ValueError(f"--source-path {path}: no such file or folder")
    if source in ("csv", "manifest"):
        if not path.is_file():
            raise ValueError(f"--source-path {path}: --source {source} needs a CSV file, not a folder")
        try:
            head = pd.read_csv(path, dtype=str, nrows=1)
        except pd.errors.EmptyDataError:
            raise ValueError(f"--source-path {path}: the file is empty; a CSV needs a header row and one row "
                             "per image") from None
        if head.empty:
            raise ValueError(f"--source-path {path}: a header but no rows; add one row per image")
