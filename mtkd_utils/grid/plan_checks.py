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
from ..data.encoding import DEFAULT_ENCODING, check_encoding, read_csv_text
from ..data.manifest import MANIFEST_FIX


def check_command_line(args: argparse.Namespace, default_experiment_dir: Path) -> None:
    """Everything on the command line that would otherwise fail inside a notebook, hours later."""
    check_experiment_dir(Path(args.experiment_dir) if args.experiment_dir else default_experiment_dir)
    check_no_repeats("--p", args.p, lambda p: float(p))
    check_no_repeats("--seeds", args.seeds, int)
    check_no_repeats("--tasks", args.tasks, lambda t: task_key(parse_tasks(t)))
    options = args.source_options or {}
    if not isinstance(options, dict):
        raise ValueError(f"--source-options {options!r}: give a JSON object, e.g. '{{\"encoding\": \"latin-1\"}}'")
    if args.source_path is not None:
        check_source_path(args.source, Path(args.source_path), options.get("encoding", DEFAULT_ENCODING))


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


def check_source_path(source: str | None, path: Path, encoding: str = DEFAULT_ENCODING) -> None:
    """The data source exists and, for a CSV or a manifest, is a table with rows, read whole: a byte that does not
    decode (a CSV saved in Latin-1) or a row that does not parse is named by line now, not in notebook 01."""
    if not path.exists():
        raise ValueError(f"--source-path {path}: no such file or folder")
    if source in ("csv", "manifest"):
        if not path.is_file():
            raise ValueError(f"--source-path {path}: --source {source} needs a CSV file, not a folder")
        check_encoding(encoding, "source_options encoding")
        try:
            table = read_csv_text(path, encoding if source == "csv" else DEFAULT_ENCODING,
                                  **({} if source == "csv" else {"fix": MANIFEST_FIX}), dtype=str)
        except pd.errors.EmptyDataError:
            raise ValueError(f"--source-path {path}: the file is empty; a CSV needs a header row and one row "
                             "per image") from None
        except pd.errors.ParserError as err:
            raise ValueError(f"--source-path {path}: not a CSV table pandas can read ({' '.join(str(err).split())}); "
                             "every line needs as many fields as the header (quote fields that hold commas)") from None
        except ValueError as err:
            raise ValueError(f"--source-path {err}") from None
        if table.empty:
            raise ValueError(f"--source-path {path}: a header but no rows; add one row per image")
