"""Batch runs: walk a preset's grid of notebooks with papermill, one run folder per cell, resumable.

    python -m mtkd_utils.batch --preset demo              # the whole grid, skipping finished cells
    python -m mtkd_utils.batch --preset paper --dry-run   # print the grid and what is already done
    python -m mtkd_utils.batch --preset demo --seeds 0 1 2   # the demo grid over three seeds

Each cell leaves experiment_dir/runs/<stage>/<key>/ with the executed notebook (kept also when it
fails: papermill writes the traceback into it), log.txt (the notebook's stdout/stderr, live) and
cell.json (parameters, status, timing, error).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from .config import Config, check_fraction, parse_tasks, task_key
from .presets import PRESETS
from .io import git_commit, read_json, write_csv, write_json
from .plan_checks import check_command_line

REPO_ROOT = Path(__file__).resolve().parent.parent
KERNEL_NAME = "mtkd"   # the workbook's Jupyter kernel: this venv's python (see ensure_kernel)

NOTEBOOKS = {   # stage -> notebook (relative to the repo root), in run order
    "data": "notebooks/01_data_prep.ipynb",
    "teachers": "notebooks/02_teachers.ipynb",
    "students": "notebooks/03_student_mtl_kd.ipynb",
    "error_analysis": "notebooks/04_error_analysis.ipynb",
    "gradcam": "notebooks/05_gradcam.ipynb",
    "results": "notebooks/06_results.ipynb",
}
STAGES = tuple(NOTEBOOKS)
ANALYSES = ("error_analysis", "gradcam", "results")   # read whatever runs exist: one cell each

DONE, FAILED, SKIPPED, RUNNING = "done", "failed", "skipped", "running"


@dataclass
class Cell:
    """One notebook run of the grid."""
    stage: str                    # one of STAGES
    key: str                      # unique within the stage, e.g. "p15_s0" or "T1+T2/p15_s0"
    notebook: str                 # input notebook, relative to the repo root (or absolute)
    parameters: dict[str, Any]    # papermill parameters
    run_dir: Path                 # experiment_dir/runs/<stage>/<key>/
    deps: tuple[str, ...] = ()    # names of the cells it needs

    @property
    def name(self) -> str:
        return f"{self.stage}/{self.key}"

    @property
    def output_notebook(self) -> Path:
        return self.run_dir / Path(self.notebook).name

    @property
    def record_path(self) -> Path:
        return self.run_dir / "cell.json"

    @property
    def log_path(self) -> Path:
        return self.run_dir / "log.txt"


# ---------------------------------------------------------------- the grid

def default_experiment_dir(preset: str) -> Path:
    """outputs/<preset> in the repo."""
    return REPO_ROOT / "outputs" / preset


def check_preset(preset: str, dims: dict[str, list] | None = None) -> dict[str, list]:
    """The preset's grid with any of its tasks / p / seeds replaced by `dims`; ValueError on a bad value."""
    if preset not in PRESETS:
        raise ValueError(f"preset={preset!r}: choose one of {sorted(PRESETS)}")
    dims = {k: list(v) for k, v in (dims or {}).items() if v is not None}
    unknown = sorted(set(dims) - {"tasks", "p", "seeds"})
    if unknown:
        raise ValueError(f"grid: {unknown} cannot be set; set tasks, p or seeds")
    for t in dims.get("tasks", []):
        parse_tasks(t)
    if "p" in dims:   # 15.0 and 15 are the same cell: whole percentages stay ints, as in the presets
        dims["p"] = [int(f) if f.is_integer() else f for f in map(check_fraction, dims["p"])]
    if any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in dims.get("seeds", [])):
        raise ValueError(f"seeds={dims['seeds']!r}: training seeds are integers >= 0")
    grid = {**PRESETS[preset].grid, **dims}
    empty = [k for k, v in grid.items() if not v]
    if empty:
        raise ValueError(f"grid: {empty} is empty; give at least one value")
    return grid


def check_overrides(preset: str, overrides: dict[str, Any]) -> None:
    """Fail now, not after hours of running, on an unknown or bad Config field."""
    Config.from_dict({**PRESETS[preset].config, **overrides})


def expand_grid(preset: str, experiment_dir: str | Path | None = None, *, notebooks: dict[str, str] | None = None,
                overrides: dict[str, Any] | None = None, data_parameters: dict[str, Any] | None = None,
                dims: dict[str, list] | None = None) -> list[Cell]:
    """The preset's cells in run order: data prep, teachers per (p, seed), students per (tasks, p, seed), analyses.

    `dims` replaces the preset's tasks / p / seeds lists (the command line's --tasks, --p, --seeds).
    """
    grid = check_preset(preset, dims)
    overrides = dict(overrides or {})
    check_overrides(preset, overrides)
    unknown = set(notebooks or {}) - set(STAGES)
    if unknown:
        raise ValueError(f"notebooks: unknown stage(s) {sorted(unknown)}; stages are {list(STAGES)}")
    paths = {**NOTEBOOKS, **(notebooks or {})}
    exp = Path(experiment_dir or default_experiment_dir(preset)).resolve()
    base = {"experiment_dir": str(exp), "preset": preset}

    def cell(stage: str, key: str, params: dict[str, Any], deps: list[str]) -> Cell:
        return Cell(stage, key, str(paths[stage]), {**base, **params}, exp / "runs" / stage / key, tuple(deps))

    combos = [task_key(parse_tasks(t)) for t in grid["tasks"]]
    # 02 trains every non-empty subset of its tasks: one run on the union serves every combination
    union = task_key(parse_tasks(sorted({t for c in combos for t in parse_tasks(c)})))
    runs = [(p, s) for s in grid["seeds"] for p in grid["p"]]   # seed-major: seed 0 completes first
    data = cell("data", "all", dict(data_parameters or {}), [])
    teachers = {(p, s): cell("teachers", f"p{p:g}_s{s}", dict(tasks=union, p=p, seed=s, overrides=dict(overrides)),
                             [data.name]) for p, s in runs}
    students = [cell("students", f"{t}/p{p:g}_s{s}",
                     dict(tasks=t, p=p, seed=s, models=list(grid["models"]), overrides=dict(overrides)),
                     [data.name, teachers[p, s].name]) for p, s in runs for t in combos]
    training = [data, *teachers.values(), *students]
    analyses = [cell(stage, "all", {}, [c.name for c in training]) for stage in ANALYSES]
    return training + analyses


def select_stages(cells: list[Cell], stages: list[str] | None) -> list[Cell]:
    """The cells of the named stages (all when None)."""
    if not stages:
        return list(cells)
    bad = set(stages) - set(STAGES)
    if bad:
        raise ValueError(f"stages: unknown {sorted(bad)}; choose among {list(STAGES)}")
    return [c for c in cells if c.stage in stages]


# ---------------------------------------------------------------- records

def read_record(cell: Cell) -> dict[str, Any] | None:
    """The cell's cell.json, or None if it never started."""
    return read_json(cell.record_path) if cell.record_path.exists() else None


def recorded_status(cell: Cell) -> str | None:
    """done / failed / skipped / running (a run that was killed), or None."""
    record = read_record(cell)
    return record["status"] if record else None


def _comparable(params: dict[str, Any]) -> dict[str, Any]:
    # the folder may have been moved or named by another relative path: that changes no result
    return {k: v for k, v in params.items() if k != "experiment_dir"}


def check_finished_parameters(cells: list[Cell]) -> None:
    """Refuse to mix results: a finished cell must have been run with the parameters asked now."""
    for cell in cells:
        record = read_record(cell)
        if record and record["status"] == DONE and _comparable(record["parameters"]) != _comparable(cell.parameters):
            raise ValueError(
                f"{cell.name} finished earlier with parameters {_comparable(record['parameters'])}, "
                f"now asked with {_comparable(cell.parameters)}: use another --experiment-dir, "
                f"or delete {cell.run_dir} to run it again")


def _now() -> str:
    return datetime.now().isoformat(timespec="seconds")


def _new_record(cell: Cell, status: str, **fields: Any) -> dict[str, Any]:
    """What cell.json holds: enough to rerun the cell by hand and to see why it failed."""
    return {"name": cell.name, "stage": cell.stage, "key": cell.key, "notebook": cell.notebook,
            "parameters": cell.parameters, "deps": list(cell.deps), "status": status,
            "output_notebook": str(cell.output_notebook), "log": str(cell.log_path), **fields}


def error_info(err: BaseException, cell: Cell) -> dict[str, Any]:
    """Exception type and message (the notebook's own, when a notebook cell raised) and the executed copy."""
    # PapermillExecutionError carries the notebook's exception as ename / evalue
    kind, message = getattr(err, "ename", None), getattr(err, "evalue", None)
    return {"type": kind or type(err).__name__, "message": message if message is not None else str(err),
            "notebook": str(cell.output_notebook) if cell.output_notebook.exists() else None,
            "notebook_cell": getattr(err, "exec_count", None)}


# ---------------------------------------------------------------- running

def run_cell(cell: Cell, kernel_name: str = KERNEL_NAME, cwd: str | Path = REPO_ROOT) -> str:
    """Execute one cell's notebook with papermill; record status, timing and error in cell.json."""
    import papermill as pm  # lazy: `--dry-run` and the results module need no kernel machinery

    cell.run_dir.mkdir(parents=True, exist_ok=True)
    started, t0 = _now(), time.monotonic()
    # 'running' on disk until the end: a kill leaves it, and the next run treats the cell as not done
    record = _new_record(cell, RUNNING, kernel=kernel_name, started=started, git_commit=git_commit())
    write_json(record, cell.record_path)
    with open(cell.log_path, "a", buffering=1) as log:
        log.write(f"=== {cell.name} started {started} (kernel {kernel_name})\n{json.dumps(cell.parameters)}\n")
        try:
            # the notebook's stdout/stderr go to log.txt as they come (tail -f it), not to the console
            pm.execute_notebook(Path(cwd) / cell.notebook, cell.output_notebook, parameters=cell.parameters,
                                kernel_name=kernel_name, language="python", cwd=str(cwd), progress_bar=False,
                                log_output=False, stdout_file=log, stderr_file=log)
            record.update(status=DONE, error=None)
        except Exception as err:  # noqa: BLE001  one failed cell must not stop the grid
            record.update(status=FAILED, error=error_info(err, cell))
            log.write("".join(traceback.format_exception(err)))
        record.update(finished=_now(), seconds=round(time.monotonic() - t0, 1))
        log.write(f"=== {record['status']} after {record['seconds']} s\n")
    write_json(record, cell.record_path)
    return record["status"]


def skip_cell(cell: Cell, blocker: str) -> str:
    """Record that the cell did not run because a cell it needs failed."""
    write_json(_new_record(cell, SKIPPED, reason=f"dependency failed: {blocker}", finished=_now()), cell.record_path)
    return SKIPPED


def failed_dependency(cell: Cell, status: dict[str, str | None]) -> str | None:
    """The first dependency (among the selected cells) that failed or was skipped, or None."""
    # dependencies outside the selection (--only-stage) are not checked: the notebooks read what exists
    return next((d for d in cell.deps if status.get(d, DONE) in (FAILED, SKIPPED)), None)


def needs_run(state: str | None, retry_failed: bool) -> bool:
    """Not done yet: never started, killed while running, skipped, or failed when retrying failures."""
    return state not in (DONE, FAILED) or (state == FAILED and retry_failed)


def is_stale(cell: Cell, cells: dict[str, Cell]) -> bool:
    """Done, but its inputs changed since, as make sees it: it needs other cells now (a grid grown by a
    seed), or one it needs finished after it (a failed teacher retried). Its notebook then runs again;
    the training notebooks skip every run already finished, so only summaries are recomputed."""
    record = read_record(cell)
    if not record or record["status"] != DONE:
        return False
    if list(record["deps"]) != list(cell.deps):
        return True
    finished = [(read_record(cells[d]) or {}).get("finished", "") for d in cell.deps if d in cells]
    return any(f > record.get("finished", "") for f in finished)


def plan(cells: list[Cell], retry_failed: bool = False) -> dict[str, str | None]:
    """Each cell's recorded status, or None when it runs this time: not done yet, or done but stale, or
    needing a cell that runs."""
    by_name, status = {c.name: c for c in cells}, {}
    for cell in cells:
        state = recorded_status(cell)
        if state == DONE and (is_stale(cell, by_name) or any(status.get(d, DONE) is None for d in cell.deps)):
            state = None                                 # a cell it needs runs (again) first
        status[cell.name] = None if needs_run(state, retry_failed) else state
    return status


def _counts(status: dict[str, str | None]) -> str:
    values = list(status.values())
    left = sum(v not in (DONE, FAILED, SKIPPED) for v in values)
    return f"done={values.count(DONE)} failed={values.count(FAILED)} skipped={values.count(SKIPPED)} left={left}"


def run_grid(cells: list[Cell], *, kernel_name: str = KERNEL_NAME, retry_failed: bool = False,
             cwd: str | Path = REPO_ROOT, progress: bool = True) -> pd.DataFrame:
    """Run every cell not yet done, in order, on to the end whatever fails; return the summary table."""
    from tqdm import tqdm

    check_finished_parameters(cells)
    status = plan(cells, retry_failed)                   # None: to run, counted as left
    with tqdm(total=len(cells), unit="cell", disable=not progress, file=sys.stderr) as bar:
        for cell in cells:
            if status[cell.name] is None:
                bar.set_description(cell.name)
                blocker = failed_dependency(cell, status)
                status[cell.name] = skip_cell(cell, blocker) if blocker else run_cell(cell, kernel_name, cwd)
            bar.set_postfix_str(_counts(status))
            bar.update(1)
    return summary(cells)


def summary(cells: list[Cell]) -> pd.DataFrame:
    """One row per cell from its cell.json: status, seconds, and the error or the reason for a skip."""
    rows = []
    for cell in cells:
        r = read_record(cell) or {}
        err = r.get("error") or {}
        note = f"{err['type']}: {err['message']}" if err else r.get("reason", "")
        rows.append({"cell": cell.name, "status": r.get("status", "not run"), "seconds": r.get("seconds"),
                     "note": " ".join(str(note).split())[:100], "run_dir": str(cell.run_dir)})
    return pd.DataFrame(rows)


def _planned_status(recorded: str | None, planned: str | None) -> str:
    return "done, inputs changed: runs again" if recorded == DONE and planned is None else recorded or "not run"


def describe_grid(cells: list[Cell]) -> pd.DataFrame:
    """The grid as a table (for --dry-run): cell, notebook, recorded status, dependencies, parameters."""
    rows, planned = [], plan(cells)
    for cell in cells:
        shown = {k: v for k, v in cell.parameters.items() if k not in ("experiment_dir", "preset")}
        deps = ", ".join(cell.deps) if len(cell.deps) <= 2 else f"{len(cell.deps)} cells (all training)"
        rows.append({"cell": cell.name, "notebook": Path(cell.notebook).name,
                     "status": _planned_status(recorded_status(cell), planned[cell.name]), "needs": deps,
                     "parameters": json.dumps(shown)})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- the kernel

def _runs_this_python(argv: list[str]) -> bool:
    """Whether a kernel spec's command starts this interpreter (this venv)."""
    exe = argv[0]
    # jupyter_client swaps a bare 'python' for the interpreter that launches the kernel
    if exe in ("python", "python3", f"python{sys.version_info[0]}.{sys.version_info[1]}"):
        return True
    # compare the bin folders: the venv's python is a symlink to the base interpreter
    return Path(exe).parent.resolve() == Path(sys.executable).parent.resolve()


def _find_kernel(name: str, kernel_dirs: list[str] | None):
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    ksm = KernelSpecManager() if kernel_dirs is None else KernelSpecManager(kernel_dirs=kernel_dirs)
    try:
        return ksm.get_kernel_spec(name)
    except NoSuchKernel:
        return None


def ensure_kernel(name: str = KERNEL_NAME, prefix: str | Path | None = None) -> Path:
    """Register this python as Jupyter kernel `name` in the venv (sys.prefix) unless there; return its folder."""
    from ipykernel.kernelspec import install

    prefix = Path(prefix or sys.prefix)
    # None: the search path papermill itself will use; otherwise only the given prefix (tests)
    dirs = None if prefix == Path(sys.prefix) else [str(prefix / "share" / "jupyter" / "kernels")]
    spec = _find_kernel(name, dirs)
    if spec is None or not _runs_this_python(spec.argv):
        # same as: python -m ipykernel install --sys-prefix --name mtkd --display-name "mtkd (.venv)"
        install(kernel_name=name, display_name=f"{name} (.venv)", prefix=str(prefix))
        spec = _find_kernel(name, dirs)
    if spec is None or not _runs_this_python(spec.argv):
        where = spec.resource_dir if spec else "nowhere"
        raise RuntimeError(f"kernel {name!r} found at {where} runs {spec.argv[0] if spec else '?'}, "
                           f"not {sys.executable}: remove that kernel spec or set JUPYTER_PREFER_ENV_PATH=1")
    return Path(spec.resource_dir)


# ---------------------------------------------------------------- command line

def _parse_value(text: str) -> Any:
    """'3' -> 3, '[2,5]' -> [2, 5], 'true' -> True, anything else stays a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """['epochs=3', 'pretrained=imagenet'] -> {'epochs': 3, 'pretrained': 'imagenet'}."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: write KEY=VALUE with KEY a Config field, e.g. --set epochs=3")
        out[key.strip()] = _parse_value(value)
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m mtkd_utils.batch", description=__doc__.split("\n")[0])
    ap.add_argument("--preset", required=True, choices=sorted(PRESETS), help="grid and Config preset")
    ap.add_argument("--experiment-dir", help="default: outputs/<preset>")
    ap.add_argument("--tasks", nargs="+", metavar="TASKS", help="task combinations instead of the preset's, e.g. T1+T2 T1+T2+T3")
    ap.add_argument("--p", nargs="+", type=float, metavar="P", help="training fractions (%%) instead of the preset's, e.g. 15 30 70")
    ap.add_argument("--seeds", nargs="+", type=int, metavar="SEED", help="training seeds instead of the preset's, e.g. 0 1 2")
    ap.add_argument("--only-stage", nargs="+", action="extend", choices=STAGES, metavar="STAGE",
                    help=f"run only these stages ({', '.join(STAGES)}); their needs in other stages are not checked")
    ap.add_argument("--retry-failed", action="store_true", help="run failed cells again (default: keep them failed)")
    ap.add_argument("--dry-run", action="store_true", help="print the grid and each cell's status, run nothing")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="Config field for 02 and 03 (JSON value), e.g. --set epochs=3 --set pretrained=imagenet")
    ap.add_argument("--source", help="01_data_prep: source (default: the notebook's)")
    ap.add_argument("--source-path", help="01_data_prep: source_path")
    ap.add_argument("--source-options", type=json.loads, help="01_data_prep: source_options as JSON")
    ap.add_argument("--kernel", default=KERNEL_NAME,
                    help=f"Jupyter kernel (default {KERNEL_NAME}, registered if absent)")
    return ap


def _data_parameters(args: argparse.Namespace) -> dict[str, Any]:
    given = {"source": args.source, "source_path": args.source_path, "source_options": args.source_options}
    return {k: v for k, v in given.items() if v is not None}


def main(argv: list[str] | None = None, notebooks: dict[str, str] | None = None) -> int:
    """The command line; returns the exit status (1 if any cell failed or was skipped)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_command_line(args, default_experiment_dir(args.preset))
        grid = expand_grid(args.preset, args.experiment_dir, notebooks=notebooks, overrides=parse_overrides(args.overrides),
                           data_parameters=_data_parameters(args), dims=dict(tasks=args.tasks, p=args.p, seeds=args.seeds))
        check_finished_parameters(grid)
    except ValueError as err:
        parser.error(str(err))   # exits 2 with the message, no traceback
    cells = select_stages(grid, args.only_stage)
    with pd.option_context("display.max_colwidth", 120, "display.width", 250):
        if args.dry_run:
            print(describe_grid(cells).to_string(index=False))
            return 0
        if args.kernel == KERNEL_NAME:
            ensure_kernel(KERNEL_NAME)
        try:
            table = run_grid(cells, kernel_name=args.kernel, retry_failed=args.retry_failed)
        except KeyboardInterrupt:
            # the cell in progress stays 'running' in its cell.json: it runs again next time
            print("\ninterrupted: re-run the same command to resume", file=sys.stderr)
            print(summary(cells).drop(columns="run_dir").to_string(index=False))
            return 130
        # the whole grid's state, whatever --only-stage ran this time
        write_csv(summary(grid), Path(grid[0].parameters["experiment_dir"]) / "runs" / "summary.csv")
        print(table.drop(columns="run_dir").to_string(index=False))
    bad = table.status.isin([FAILED, SKIPPED])
    if bad.any():
        print(f"\n{int(bad.sum())} cell(s) failed or skipped: see their cell.json and log.txt", file=sys.stderr)
    return int(bad.any())


if __name__ == "__main__":
    sys.exit(main())
