"""A re-run repairs what was damaged since: every finished run's outputs are checked against the checksums
written with them; a damaged run is set aside and runs again, with everything downstream of it (dag.plan).

Caches (the image cache, a student's soft targets) are rebuilt instead: their readers rebuild them anyway, so a
damaged cache never makes anything run again. Nothing is deleted: a damaged run's folders move to
<experiment>/damaged/<time>/, where they can be compared or removed by hand.
"""
from __future__ import annotations

import shutil
import sys
from datetime import datetime
from pathlib import Path

from .. import runs as layout
from ..config import parse_tasks
from ..io import BATCH_COMMAND, DamagedFileError, checksum_path, read_json, verify_file, write_json
from .dag import ANALYSES, DONE, NotebookRun, recorded_status

ANALYSIS_FOLDER = dict(zip(ANALYSES, layout.ANALYSES))   # batch stage -> its folder: error_analysis -> analysis/
DAMAGED = "damaged"
RESUME_POINT = "last.pt"   # train.engine's checkpoint to resume a killed training from, removed at its end


def output_dirs(run: NotebookRun) -> list[Path]:
    """The folders a batch run writes (runs.py's layout)."""
    exp, params = Path(run.parameters["experiment_dir"]), run.parameters
    if run.stage == "data":
        return [layout.data_dir(exp)]
    if run.stage == "teachers":
        return [layout.teacher_dir(exp, layout.RunKey(parse_tasks(params["tasks"]), params["p"], params["seed"]))]
    if run.stage == "students":
        key = layout.RunKey(parse_tasks(params["tasks"]), params["p"], params["seed"])
        return [layout.student_dir(exp, key.with_model(m)) for m in params["models"]]
    return [layout.analysis_dir(exp, ANALYSIS_FOLDER[run.stage])]


def is_cache(path: Path) -> bool:
    """Rebuilt by whoever reads it when damaged (data.dataset.build_image_cache, train.reload.student_teachers)."""
    return path.parent.name == "cache" and path.name.startswith("images_") or path.name == "soft_targets.pt"


def damaged_files(folder: Path) -> list[DamagedFileError]:
    """Every file under `folder` whose checksum sidecar it no longer matches (missing included)."""
    found = []
    for side in sorted(folder.rglob("*.sha256")) if folder.is_dir() else []:
        path = side.with_name(side.name[: -len(".sha256")])
        if path.name == RESUME_POINT and not path.exists():   # removed when training ends (before issue 33, its
            continue                                           # checksum stayed): not damage
        try:
            verify_file(path)
        except DamagedFileError as err:
            found.append(err)
    return found


def _rebuild_cache(path: Path, exp: Path) -> None:
    """An image cache is rebuilt now from the source images (as 01 built it); soft targets when next needed."""
    checksum_path(path).unlink(missing_ok=True)
    path.unlink(missing_ok=True)
    if path.name.startswith("images_"):
        from ..data.dataset import build_image_cache  # lazy: torch only when a cache is damaged

        info = read_json(layout.data_dir(exp) / "dataset.json")
        size = int(path.stem.split("_", 1)[1])
        build_image_cache(layout.manifest_location(exp, info), path.parent, size, info.get("crop_fov", True))


def _set_aside(folder: Path, exp: Path, stamp: str) -> Path:
    target = exp / DAMAGED / stamp / folder.relative_to(exp)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(folder), str(target))
    return target


def repair(runs: list[NotebookRun], dry_run: bool = False) -> list[str]:
    """Check every finished run's outputs; rebuild damaged caches and set damaged runs aside so that they run
    again (their record with them: dag.plan then re-runs them and everything after). Returns those runs' names."""
    stamp, again = datetime.now().strftime("%Y%m%d-%H%M%S"), []
    for run in runs:
        if recorded_status(run) != DONE:
            continue
        exp = Path(run.parameters["experiment_dir"])
        damaged = [err for folder in output_dirs(run) for err in damaged_files(folder)]
        for err in damaged:
            print(f"WARNING {run.name}: {err.path} is {err.problem}", file=sys.stderr)
        caches = [err.path for err in damaged if is_cache(err.path)]
        for path in caches if not dry_run else []:
            _rebuild_cache(path, exp)
            print(f"  {path}: a cache, {'rebuilt' if path.exists() else 'rebuilt when next needed'}", file=sys.stderr)
        if len(caches) == len(damaged):
            continue
        again.append(run.name)
        if not dry_run:
            for folder in [*output_dirs(run), run.run_dir]:
                if folder.exists():
                    _set_aside(folder, exp, stamp)
            print(f"  {run.name} runs again, with everything after it; its old folders are kept in "
                  f"{exp / DAMAGED / stamp}", file=sys.stderr)
    return again


def record_command(exp: Path, argv: list[str]) -> Path:
    """Remember the batch command that runs this experiment: a damaged file's message repeats it (io.repair_hint)."""
    return write_json({"argv": list(argv), "cwd": str(Path.cwd()), "python": sys.executable}, exp / BATCH_COMMAND)
