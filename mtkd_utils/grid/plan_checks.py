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
from ..data.duplicates import check_policy
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
    if "duplicates" in options:
        check_policy(options["duplicates"])
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


# ---------------------------------------------------------------- image sizes
MAX_PROBED_SIZE = 1024   # the search for the smallest usable image_size stops here
NO_CAMS = "no CAMs"       # size_problem's cam_stride when no notebook of the grid computes CAMs


def notebook_default(notebook: str | Path, name: str, missing=None):
    """The value a notebook's `parameters` cell gives `name` (a literal), or `missing` when it declares none."""
    import ast

    import nbformat

    nb = nbformat.read(str(notebook), as_version=4)
    cell = next((c for c in nb.cells if "parameters" in c.metadata.get("tags", [])), None)
    for node in ast.parse(cell.source).body if cell is not None else []:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    return missing


def size_problem(encoder, size: int, cam_stride: int | str | None) -> str | None:
    """Why square images of `size` px cannot go through every notebook with this encoder, or None.

    02/03 need the encoder to run; 05 computes CAMs at the last block of output stride `cam_stride` (None: the
    last block; NO_CAMS: no such notebook), which must exist at this size (strides are measured as 05 measures them: cam.block_strides)
    and hold at least 2 x 2 cells: a 1 x 1 map gives a constant CAM, which localises nothing."""
    import torch

    sides, h = [], torch.zeros(1, 3, size, size)
    try:
        with torch.no_grad():
            for block in encoder:
                h = block(h)
                sides.append(h.shape[-1])
    except RuntimeError as err:
        return f"the encoder cannot run on {size} px images ({' '.join(str(err).split())[:120]})"
    strides = [round(size / side) for side in sides]      # as 05 measures them (analysis.cam.block_strides)
    if cam_stride == NO_CAMS:
        return None
    where = len(strides) - 1 if cam_stride is None else \
        (len(strides) - 1 - strides[::-1].index(cam_stride) if cam_stride in strides else None)
    if where is None:
        return (f"notebook 05 computes CAMs at output stride cam_stride={cam_stride}, and at {size} px the encoder's "
                f"blocks have output strides {sorted(set(strides))}")
    if sides[where] < 2:
        return (f"notebook 05's CAMs (cam_stride={cam_stride}) would be 1 x 1 at {size} px: constant, they "
                "localise nothing")
    return None


def check_image_size(cfg, gradcam_notebook: str | Path | None) -> None:
    """Refuse, at plan time, an image_size (with this backbone, output_stride and 05's cam_stride) that some
    notebook of the grid cannot use, naming the smallest image_size that works and the nearest above."""
    from ..train.model import build_encoder

    # a 05 that declares no cam_stride (a user's own notebook) computes no CAMs we know of: only the encoder is checked
    cam_stride = notebook_default(gradcam_notebook, "cam_stride", NO_CAMS) if gradcam_notebook else NO_CAMS
    encoder = build_encoder(cfg.backbone, None, cfg.output_stride)[0].eval()   # untrained: only shapes matter
    problem = size_problem(encoder, cfg.image_size, cam_stride)
    if problem is None:
        return
    works = (s for s in range(1, MAX_PROBED_SIZE + 1) if size_problem(encoder, s, cam_stride) is None)
    smallest = next(works, None)
    above = next((s for s in range(max(cfg.image_size, smallest or 0), MAX_PROBED_SIZE + 1)
                  if size_problem(encoder, s, cam_stride) is None), None)
    setting = f"image_size={cfg.image_size} (backbone={cfg.backbone!r}, output_stride={cfg.output_stride})"
    if smallest is None:
        raise ValueError(f"{setting}: {problem}; no image_size up to {MAX_PROBED_SIZE} works: set cam_stride in "
                         f"{gradcam_notebook} to one of the strides above, or None for the last block")
    raise ValueError(f"{setting}: {problem}. The smallest image_size that works here is {smallest}"
                     + (f", the nearest above {cfg.image_size} is {above}" if above and above != smallest else "")
                     + f": --set image_size={above or smallest}")
