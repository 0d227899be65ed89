"""The grid as a DAG of notebook runs: which notebooks run with which parameters, what each needs, what is done.

Each notebook run leaves experiment_dir/runs/<stage>/<key>/ with the executed notebook (kept also when it
fails: papermill writes the traceback into it), log.txt (the notebook's stdout/stderr, live) and cell.json
(parameters, status, timing, error). The executors (mtkd_utils.grid.executor) decide where the runs execute;
everything they share is in the experiment folder.
"""
from __future__ import annotations

import json
import os
import socket
import time
import traceback
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from ..config import MODELS, Config, check_fraction, parse_tasks, task_key, task_subsets
from ..io import REPO_ROOT, git_commit, read_json, write_json
from ..presets import PRESETS

KERNEL_NAME = "mtkd"   # the workbook's Jupyter kernel: this venv's python (see batch.ensure_kernel)

NOTEBOOKS = {   # stage -> notebook (relative to the repo root), in run order
    "data": "notebooks/01_data_prep.ipynb",
    "teachers": "notebooks/02_teachers.ipynb",
    "students": "notebooks/03_student_mtl_kd.ipynb",
    "error_analysis": "notebooks/04_error_analysis.ipynb",
    "gradcam": "notebooks/05_gradcam.ipynb",
    "results": "notebooks/06_results.ipynb",
}
STAGES = tuple(NOTEBOOKS)
ANALYSES = ("error_analysis", "gradcam", "results")   # read whatever runs exist: one run each
# the notebooks that build a Config from the preset: every --set reaches each of them (the analyses rebuild
# each model from its run's own config.json)
CONFIG_STAGES = ("data", "teachers", "students")
GPU_STAGES = ("teachers", "students", "gradcam")      # the ones that run models: they ask for a GPU when there are GPUs

DONE, FAILED, SKIPPED, RUNNING = "done", "failed", "skipped", "running"


@dataclass
class NotebookRun:
    """One point of the grid: a notebook executed with one set of parameters, in its own folder."""
    stage: str                    # one of STAGES
    key: str                      # unique within the stage, e.g. "p15_s0" or "T1+T2/p15_s0"
    notebook: str                 # input notebook, relative to the repo root (or absolute)
    parameters: dict[str, Any]    # papermill parameters
    run_dir: Path                 # experiment_dir/runs/<stage>/<key>/
    deps: tuple[str, ...] = ()    # names of the runs it needs

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
    """The preset's grid with any of its tasks / p / seeds / kd_p / models replaced by `dims`; ValueError on a bad
    value.

    kd_p: the fractions that get KD students (M2, M3, M1b) and M3's teachers; the others train M1 only.
    """
    if preset not in PRESETS:
        raise ValueError(f"preset={preset!r}: choose one of {sorted(PRESETS)}")
    dims = {k: list(v) for k, v in (dims or {}).items() if v is not None}
    unknown = sorted(set(dims) - {"tasks", "p", "seeds", "kd_p", "models"})
    if unknown:
        raise ValueError(f"grid: {unknown} cannot be set; set tasks, p, seeds, kd_p or models")
    bad = [m for m in dims.get("models", []) if m not in MODELS]
    if bad or (dims.get("models") and "M1" not in dims["models"]):
        raise ValueError(f"models={dims['models']!r}: choose from {MODELS}, M1 included (every other model is "
                         "compared with it)")
    for t in dims.get("tasks", []):
        parse_tasks(t)
    for name in ("p", "kd_p"):   # 15.0 and 15 are the same run: whole percentages stay ints, as in the presets
        if name in dims:
            dims[name] = [int(f) if f.is_integer() else f for f in map(check_fraction, dims[name])]
    if any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in dims.get("seeds", [])):
        raise ValueError(f"seeds={dims['seeds']!r}: training seeds are integers >= 0")
    if "p" in dims and "kd_p" not in dims:
        dims["kd_p"] = dims["p"]          # fractions asked for by name get the whole method
    grid = {**PRESETS[preset].grid, **dims}
    grid["kd_p"] = [p for p in grid.get("kd_p", grid["p"]) if p in grid["p"]]
    empty = [k for k, v in grid.items() if not v and k != "kd_p"]
    if empty:
        raise ValueError(f"grid: {empty} is empty; give at least one value")
    return grid


def check_overrides(preset: str, overrides: dict[str, Any]) -> None:
    """Fail now, not after hours of running, on an unknown or bad Config field."""
    Config.from_dict({**PRESETS[preset].config, **overrides})


def declared_parameters(notebook: str | Path) -> set[str]:
    """The names assigned in a notebook's `parameters` cell (what papermill's parameters replace)."""
    import ast

    import nbformat  # lazy: only when a --set must be checked

    nb = nbformat.read(str(notebook), as_version=4)
    cell = next((c for c in nb.cells if "parameters" in c.metadata.get("tags", [])), None)
    body = ast.parse(cell.source).body if cell is not None else []
    targets = [t for node in body if isinstance(node, ast.Assign) for t in node.targets]
    targets += [node.target for node in body if isinstance(node, ast.AnnAssign)]
    return {t.id for t in targets if isinstance(t, ast.Name)}


def check_notebooks_take_overrides(paths: dict[str, str], overrides: dict[str, Any]) -> None:
    """Refuse a --set that a Config-building notebook would silently ignore (it declares no `overrides`)."""
    for stage in CONFIG_STAGES if overrides else ():
        path = Path(paths[stage]) if Path(paths[stage]).is_absolute() else REPO_ROOT / paths[stage]
        if "overrides" not in declared_parameters(path):
            raise ValueError(f"--set {', '.join(sorted(overrides))}: {path} ({stage}) takes no `overrides` parameter, "
                             "so it would run without them; add `overrides = {}` to its parameters cell")


def expand_grid(preset: str, experiment_dir: str | Path | None = None, *, notebooks: dict[str, str] | None = None,
                overrides: dict[str, Any] | None = None, data_parameters: dict[str, Any] | None = None,
                dims: dict[str, list] | None = None) -> list[NotebookRun]:
    """The preset's runs in a valid order: data prep, teachers per (p, seed), students per (tasks, p, seed), analyses.

    `dims` replaces the preset's tasks / p / seeds lists (the command line's --tasks, --p, --seeds). The
    overrides (--set) go to every notebook that builds a Config (CONFIG_STAGES), data prep included.
    """
    grid = check_preset(preset, dims)
    overrides = dict(overrides or {})
    check_overrides(preset, overrides)
    unknown = set(notebooks or {}) - set(STAGES)
    if unknown:
        raise ValueError(f"notebooks: unknown stage(s) {sorted(unknown)}; stages are {list(STAGES)}")
    paths = {**NOTEBOOKS, **(notebooks or {})}
    check_notebooks_take_overrides(paths, overrides)
    exp = Path(experiment_dir or default_experiment_dir(preset)).resolve()
    base = {"experiment_dir": str(exp), "preset": preset}

    def run(stage: str, key: str, params: dict[str, Any], deps: list[str]) -> NotebookRun:
        config = {"overrides": dict(overrides)} if overrides and stage in CONFIG_STAGES else {}
        return NotebookRun(stage, key, str(paths[stage]), {**base, **params, **config}, exp / "runs" / stage / key,
                           tuple(deps))

    combos = [task_key(parse_tasks(t)) for t in grid["tasks"]]
    # one 02 run per teacher, so that as many train side by side as there are workers: at a p with KD students
    # every subset of the combinations' union (M1 and M3's ensemble), elsewhere each combination's M1 alone
    union = parse_tasks(sorted({t for c in combos for t in parse_tasks(c)}))
    points = [(p, s) for s in grid["seeds"] for p in grid["p"]]   # seed-major: seed 0 completes first
    kd_p = grid["kd_p"]
    data = run("data", "all", dict(data_parameters or {}), [])
    teachers, students = {}, []
    for p, s in points:
        point = dict(p=p, seed=s, overrides=dict(overrides))
        kd = p in kd_p
        # the largest first: M1 unlocks M2 soonest, and the longest runs start before the short ones
        for name in [task_key(t) for t in sorted(task_subsets(union), key=len, reverse=True)] if kd else combos:
            teachers[p, s, name] = run("teachers", f"p{p:g}_s{s}/{name}", dict(tasks=name, group="full", **point),
                                       [data.name])

        def teacher_runs(subsets: list[tuple[str, ...]]) -> list[str]:
            return [teachers[p, s, task_key(t)].name for t in subsets]

        models = [m for m in grid["models"] if kd or m == "M1"]
        for combo in combos:
            done: dict[str, str] = {}
            for model in models:
                needs = task_subsets(parse_tasks(combo)) if model == "M3" else [parse_tasks(combo)]
                deps = [data.name, *teacher_runs(needs), *([done[m] for m in ("M2", "M3") if m in done]
                                                         if model == "M1b" else [])]
                cell = run("students", f"{combo}/p{p:g}_s{s}/{model}",
                           dict(tasks=combo, models=[model], **point), deps)
                done[model] = cell.name
                students.append(cell)
    training = [data, *teachers.values(), *students]
    analyses = [run(stage, "all", {}, [r.name for r in training]) for stage in ANALYSES]
    return training + analyses


def select_stages(runs: list[NotebookRun], stages: list[str] | None) -> list[NotebookRun]:
    """The runs of the named stages (all when None)."""
    if not stages:
        return list(runs)
    bad = set(stages) - set(STAGES)
    if bad:
        raise ValueError(f"stages: unknown {sorted(bad)}; choose among {list(STAGES)}")
    return [r for r in runs if r.stage in stages]


# ---------------------------------------------------------------- records

def read_record(run: NotebookRun) -> dict[str, Any] | None:
    """The run's cell.json, or None if it never started."""
    return read_json(run.record_path) if run.record_path.exists() else None


def recorded_status(run: NotebookRun) -> str | None:
    """done / failed / skipped / running (a run that was killed), or None."""
    record = read_record(run)
    return record["status"] if record else None


def _comparable(params: dict[str, Any]) -> dict[str, Any]:
    # the folder may have been moved or named by another relative path: that changes no result
    return {k: v for k, v in params.items() if k != "experiment_dir"}


def check_finished_parameters(runs: list[NotebookRun]) -> None:
    """Refuse to mix results: a finished run must have been run with the parameters asked now."""
    for run in runs:
        record = read_record(run)
        if record and record["status"] == DONE and _comparable(record["parameters"]) != _comparable(run.parameters):
            raise ValueError(
                f"{run.name} finished earlier with parameters {_comparable(record['parameters'])}, "
                f"now asked with {_comparable(run.parameters)}: use another --experiment-dir, "
                f"or delete {run.run_dir} to run it again")


def _now() -> str:
    return datetime.now().isoformat(timespec="seconds")


def new_record(run: NotebookRun, status: str, **fields: Any) -> dict[str, Any]:
    """What cell.json holds: enough to rerun the notebook by hand and to see why it failed."""
    return {"name": run.name, "stage": run.stage, "key": run.key, "notebook": run.notebook,
            "parameters": run.parameters, "deps": list(run.deps), "status": status,
            "output_notebook": str(run.output_notebook), "log": str(run.log_path), **fields}


def error_info(err: BaseException, run: NotebookRun) -> dict[str, Any]:
    """Exception type and message (the notebook's own, when a notebook cell raised) and the executed copy."""
    # PapermillExecutionError carries the notebook's exception as ename / evalue
    kind, message = getattr(err, "ename", None), getattr(err, "evalue", None)
    return {"type": kind or type(err).__name__, "message": message if message is not None else str(err),
            "notebook": str(run.output_notebook) if run.output_notebook.exists() else None,
            "notebook_cell": getattr(err, "exec_count", None)}


# ---------------------------------------------------------------- one run

# papermill gives a kernel 60 s to start; on a loaded 2-core machine (two workers' kernels importing torch beside
# the test suite) one start took longer and its run failed with no cell run (CI, 2026-12-07)
KERNEL_START_TIMEOUT = 600

def execute(run: NotebookRun, kernel_name: str = KERNEL_NAME, cwd: str | Path = REPO_ROOT) -> str:
    """Execute one run's notebook with papermill, wherever this is called; record status, timing and error."""
    import papermill as pm  # lazy: `--dry-run` and the results module need no kernel machinery

    run.run_dir.mkdir(parents=True, exist_ok=True)
    started, t0 = _now(), time.monotonic()
    # 'running' on disk until the end: a kill leaves it, and the next runner treats the run as not done
    record = new_record(run, RUNNING, kernel=kernel_name, started=started, git_commit=git_commit(),
                        host=socket.gethostname(), pid=os.getpid(), gpu=os.environ.get("CUDA_VISIBLE_DEVICES"))
    write_json(record, run.record_path)
    with open(run.log_path, "a", buffering=1) as log:
        log.write(f"=== {run.name} started {started} (kernel {kernel_name})\n{json.dumps(run.parameters)}\n")
        try:
            # the notebook's stdout/stderr go to log.txt as they come (tail -f it), not to the console
            pm.execute_notebook(Path(cwd) / run.notebook, run.output_notebook, parameters=run.parameters,
                                kernel_name=kernel_name, language="python", cwd=str(cwd), progress_bar=False,
                                log_output=False, stdout_file=log, stderr_file=log,
                                start_timeout=KERNEL_START_TIMEOUT)
            record.update(status=DONE, error=None)
        except Exception as err:  # noqa: BLE001  one failed run must not stop the grid
            record.update(status=FAILED, error=error_info(err, run))
            log.write("".join(traceback.format_exception(err)))
        record.update(finished=_now(), seconds=round(time.monotonic() - t0, 1))
        log.write(f"=== {record['status']} after {record['seconds']} s\n")
    write_json(record, run.record_path)
    return record["status"]


def skip(run: NotebookRun, blocker: str) -> str:
    """Record that the run did not execute because a run it needs failed."""
    write_json(new_record(run, SKIPPED, reason=f"dependency failed: {blocker}", finished=_now()), run.record_path)
    return SKIPPED


def record_crash(run: NotebookRun, err: BaseException) -> str:
    """A run whose worker died (killed, out of memory): recorded as failed, like a failing notebook."""
    write_json(new_record(run, FAILED, error=error_info(err, run), finished=_now()), run.record_path)
    return FAILED


def failed_dependency(run: NotebookRun, status: dict[str, str | None]) -> str | None:
    """The first dependency (among the selected runs) that failed or was skipped, or None."""
    # dependencies outside the selection (--only-stage) are not checked: the notebooks read what exists
    return next((d for d in run.deps if status.get(d, DONE) in (FAILED, SKIPPED)), None)


def run_or_skip(run: NotebookRun, dep_status: dict[str, str | None], kernel_name: str = KERNEL_NAME,
                cwd: str | Path = REPO_ROOT) -> str:
    """Skip the run if a run it needs failed or was skipped, else execute it: one task of either executor."""
    blocker = failed_dependency(run, dep_status)
    return skip(run, blocker) if blocker else execute(run, kernel_name, cwd)


# ---------------------------------------------------------------- what runs this time

def needs_run(state: str | None, retry_failed: bool) -> bool:
    """Not done yet: never started, killed while running, skipped, or failed when retrying failures."""
    return state not in (DONE, FAILED) or (state == FAILED and retry_failed)


def is_stale(run: NotebookRun, runs: dict[str, NotebookRun]) -> bool:
    """Done, but its inputs changed since, as make sees it: it needs other runs now (a grid grown by a
    seed), or one it needs finished after it (a failed teacher retried). Its notebook then runs again;
    the training notebooks skip every model already finished, so only summaries are recomputed."""
    record = read_record(run)
    if not record or record["status"] != DONE:
        return False
    if list(record["deps"]) != list(run.deps):
        return True
    finished = [(read_record(runs[d]) or {}).get("finished", "") for d in run.deps if d in runs]
    return any(f > record.get("finished", "") for f in finished)


def plan(runs: list[NotebookRun], retry_failed: bool = False) -> dict[str, str | None]:
    """Each run's recorded status, or None when it executes this time: not done yet, or done but stale, or
    needing a run that executes."""
    by_name, status = {r.name: r for r in runs}, {}
    for run in runs:
        state = recorded_status(run)
        if state == DONE and (is_stale(run, by_name) or any(status.get(d, DONE) is None for d in run.deps)):
            state = None                                 # a run it needs executes (again) first
        status[run.name] = None if needs_run(state, retry_failed) else state
    return status


def counts(status: dict[str, str | None]) -> str:
    """done=.. failed=.. skipped=.. left=.. for the progress bar."""
    values = list(status.values())
    left = sum(v not in (DONE, FAILED, SKIPPED) for v in values)
    return f"done={values.count(DONE)} failed={values.count(FAILED)} skipped={values.count(SKIPPED)} left={left}"


def summary(runs: list[NotebookRun]) -> pd.DataFrame:
    """One row per run from its cell.json: status, seconds, and the error or the reason for a skip."""
    rows = []
    for run in runs:
        r = read_record(run) or {}
        err = r.get("error") or {}
        note = f"{err['type']}: {err['message']}" if err else r.get("reason", "")
        rows.append({"cell": run.name, "status": r.get("status", "not run"), "seconds": r.get("seconds"),
                     "note": " ".join(str(note).split())[:100], "started": r.get("started"),
                     "finished": r.get("finished"), "run_dir": str(run.run_dir)})
    return pd.DataFrame(rows)


def _planned_status(recorded: str | None, planned: str | None) -> str:
    return "done, inputs changed: runs again" if recorded == DONE and planned is None else recorded or "not run"


def describe_grid(runs: list[NotebookRun]) -> pd.DataFrame:
    """The grid as a table (for --dry-run): run, notebook, recorded status, dependencies, parameters."""
    rows, planned = [], plan(runs)
    for run in runs:
        shown = {k: v for k, v in run.parameters.items() if k not in ("experiment_dir", "preset")}
        deps = ", ".join(run.deps) if len(run.deps) <= 2 else f"{len(run.deps)} runs"
        rows.append({"cell": run.name, "notebook": Path(run.notebook).name,
                     "status": _planned_status(recorded_status(run), planned[run.name]), "needs": deps,
                     "parameters": json.dumps(shown)})
    return pd.DataFrame(rows)
