"""Batch runs: a preset's grid of notebooks executed with papermill as a Dask task graph, resumable.

    python -m mtkd_utils.batch --preset demo              # the whole grid on this machine's cores (Dask)
    python -m mtkd_utils.batch --preset demo --scheduler sync   # one run after another in this process
    python -m mtkd_utils.batch --preset paper --dry-run   # print the grid and what is already done
    python -m mtkd_utils.batch --preset paper --cluster slurm --workers 8 \\
        --cluster-options '{"queue": "gpu", "walltime": "08:00:00", "memory": "32GB", "cores": 8, "gpus": 1}'

The grid and its records: mtkd_utils.grid.dag; where it runs: mtkd_utils.grid.executor; one runner per experiment:
mtkd_utils.grid.lock. Each run leaves experiment_dir/runs/<stage>/<key>/ with the executed notebook, log.txt
and cell.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from ..io import REPO_ROOT, write_csv, write_json
from ..config import MODELS
from ..presets import PRESETS
from ..presets import config as preset_config
from .dag import (
    ANALYSES,
    CONFIG_STAGES,
    DONE,
    FAILED,
    KERNEL_NAME,
    NOTEBOOKS,
    RUNNING,
    SKIPPED,
    STAGES,
    NotebookRun,
    check_finished_parameters,
    default_experiment_dir,
    describe_grid,
    expand_grid,
    new_record,
    plan,
    read_record,
    recorded_status,
    select_stages,
    summary,
)
from .executor import JOBQUEUES, SCHEDULERS, close, connect, parse_cluster_options, run_grid, visible_gpus
from .lock import ExperimentBusy, acquire, release
from .plan_checks import check_command_line, check_image_size
from .repair import record_command, repair

# the grid's names stay importable from here, where they lived before the split
__all__ = ["ANALYSES", "CONFIG_STAGES", "DONE", "FAILED", "NOTEBOOKS", "RUNNING", "SKIPPED", "STAGES",
           "NotebookRun", "describe_grid", "expand_grid", "new_record", "plan", "read_record", "recorded_status",
           "run_grid", "select_stages", "summary", "write_json", "ensure_kernel", "main"]


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


def parse_gpus(text: str) -> list[str] | None:
    """--gpus: 'auto' (None: every visible GPU), 'none' (CPU workers), or a list like '0,1'."""
    if text == "auto":
        return None
    return [] if text == "none" else [g.strip() for g in text.split(",") if g.strip()]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m mtkd_utils.batch", description=__doc__.split("\n")[0])
    ap.add_argument("--preset", required=True, choices=sorted(PRESETS), help="grid and Config preset")
    ap.add_argument("--experiment-dir", help="default: outputs/<preset>")
    ap.add_argument("--tasks", nargs="+", metavar="TASKS", help="task combinations instead of the preset's, e.g. T1+T2 T1+T2+T3")
    ap.add_argument("--p", nargs="+", type=float, metavar="P", help="training fractions (%%) instead of the preset's, e.g. 15 30 70")
    ap.add_argument("--seeds", nargs="+", type=int, metavar="SEED", help="training seeds instead of the preset's, e.g. 0 1 2")
    ap.add_argument("--kd-p", nargs="+", type=float, metavar="P",
                    help="fractions with KD students (M2, M3, M1b) and M3's teachers; the others train M1 only "
                         "(default: the preset's; every fraction when --p is given)")
    ap.add_argument("--models", nargs="+", choices=MODELS, metavar="MODEL",
                    help=f"the models of 03 instead of the preset's, M1 included ({', '.join(MODELS)}; M1L: M1 at its "
                         "validation plateau, e.g. --models M1 M2 M3 M1b M1L)")
    ap.add_argument("--only-stage", nargs="+", action="extend", choices=STAGES, metavar="STAGE",
                    help=f"run only these stages ({', '.join(STAGES)}); their needs in other stages are not checked")
    ap.add_argument("--retry-failed", action="store_true", help="run failed notebooks again (default: keep them failed)")
    ap.add_argument("--dry-run", action="store_true", help="print the grid and each run's status, run nothing")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="Config field for every notebook that builds a Config, data prep included (JSON value), "
                         "e.g. --set epochs=3 --set split_seed=1")
    ap.add_argument("--source", help="01_data_prep: source (default: the notebook's)")
    ap.add_argument("--source-path", help="01_data_prep: source_path")
    ap.add_argument("--source-options", type=json.loads, help="01_data_prep: source_options as JSON")
    ap.add_argument("--notebook", dest="notebooks", action="append", default=[], metavar="STAGE=PATH",
                    help="run this notebook for a stage instead of the workbook's, e.g. --notebook gradcam=my_05.ipynb")
    ap.add_argument("--kernel", default=KERNEL_NAME,
                    help=f"Jupyter kernel (default {KERNEL_NAME}, registered if absent)")
    where = ap.add_argument_group("where it runs")
    where.add_argument("--scheduler", default="dask", choices=SCHEDULERS,
                       help="dask (default): a task graph on Dask workers; sync: one run after another, here")
    where.add_argument("--workers", type=int, help="local CPU worker processes (default: one per core); "
                       "with --cluster, the number of batch jobs")
    where.add_argument("--gpus", default="auto", type=parse_gpus, metavar="auto|none|0,1",
                       help="local GPU workers, one per GPU (default: every visible GPU; none: CPU workers)")
    where.add_argument("--scheduler-address", metavar="tcp://HOST:8786", help="use a running Dask scheduler")
    where.add_argument("--cluster", choices=sorted(JOBQUEUES), help="start workers as batch jobs (dask-jobqueue)")
    where.add_argument("--cluster-options", metavar="JSON",
                       help='dask-jobqueue options, e.g. \'{"queue": "gpu", "walltime": "04:00:00", "memory": '
                            '"16GB", "cores": 4, "gpus": 1, "job_script_prologue": ["module load cuda"]}\'')
    return ap


def parse_notebooks(items: list[str]) -> dict[str, str]:
    """['gradcam=my_05.ipynb'] -> {'gradcam': '/abs/my_05.ipynb'}; the file must exist."""
    out = {}
    for item in items:
        stage, sep, path = item.partition("=")
        if not sep or stage not in STAGES:
            raise ValueError(f"--notebook {item!r}: write STAGE=PATH with STAGE one of {list(STAGES)}")
        if not Path(path).is_file():
            raise ValueError(f"--notebook {item!r}: no notebook at {path}")
        out[stage] = str(Path(path).resolve())
    return out


def _data_parameters(args: argparse.Namespace) -> dict[str, Any]:
    given = {"source": args.source, "source_path": args.source_path, "source_options": args.source_options}
    real_data = PRESETS[args.preset].synthetic is None   # a preset for real data (deepeyenet) has no synthetic set
    if real_data and args.source in (None, "synthetic") and "data" in (args.only_stage or ["data"]):
        raise ValueError(f"--preset {args.preset} is for real data: give its --source and --source-path, e.g. "
                         f"--source {args.preset} --source-path FOLDER (data/README.md)")
    return {k: v for k, v in given.items() if v is not None}


def _notebook_path(grid: list[NotebookRun], stage: str) -> Path | None:
    """The notebook a stage of the grid runs (relative paths are from the repository root), or None."""
    notebook = next((Path(r.notebook) for r in grid if r.stage == stage), None)
    return notebook if notebook is None or notebook.is_absolute() else REPO_ROOT / notebook


def _check_place(args: argparse.Namespace) -> dict[str, Any]:
    """The executor's arguments, checked before anything starts."""
    if args.scheduler == "sync" and (args.cluster or args.scheduler_address):
        raise ValueError("--scheduler sync runs here: drop --cluster / --scheduler-address, or use --scheduler dask")
    if args.cluster and args.scheduler_address:
        raise ValueError("--cluster starts its own scheduler: give either --cluster or --scheduler-address")
    if args.cluster_options and not args.cluster:
        raise ValueError("--cluster-options needs --cluster slurm|pbs|sge|lsf")
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers {args.workers}: give at least 1")
    local = args.scheduler == "dask" and not (args.cluster or args.scheduler_address)
    gpus = (visible_gpus() if args.gpus is None else args.gpus) if local else []
    if gpus and args.workers:
        raise ValueError(f"--workers {args.workers}: with GPUs there is one worker per GPU ({', '.join(gpus)}); "
                         "give --gpus none for CPU workers, or --gpus 0,1 to choose GPUs")
    return dict(workers=args.workers, gpus=gpus, scheduler_address=args.scheduler_address,
                cluster=args.cluster, cluster_options=parse_cluster_options(args.cluster_options))


def _execute(args: argparse.Namespace, grid: list[NotebookRun], runs: list[NotebookRun],
             place: dict[str, Any]) -> pd.DataFrame | None:
    """Run the selected runs where asked; None when interrupted (the runs in progress run again next time)."""
    client, gpu = connect(args.scheduler, **place)
    try:
        return run_grid(runs, client=client, gpu=gpu, kernel_name=args.kernel, retry_failed=args.retry_failed)
    except KeyboardInterrupt:
        print("\ninterrupted: re-run the same command to resume", file=sys.stderr)
        print(summary(runs).drop(columns=["run_dir", "started", "finished"]).to_string(index=False))
        return None
    finally:
        close(client)
        # the whole grid's state, whatever --only-stage ran this time
        write_csv(summary(grid), Path(grid[0].parameters["experiment_dir"]) / "runs" / "summary.csv")


def main(argv: list[str] | None = None, notebooks: dict[str, str] | None = None) -> int:
    """The command line; returns the exit status (1 if any run failed or was skipped, 3 if the experiment is busy)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_command_line(args, default_experiment_dir(args.preset))
        overrides = parse_overrides(args.overrides)
        notebooks = {**(notebooks or {}), **parse_notebooks(args.notebooks)}
        grid = expand_grid(args.preset, args.experiment_dir, notebooks=notebooks, overrides=overrides,
                           data_parameters=_data_parameters(args), dims=dict(tasks=args.tasks, p=args.p, seeds=args.seeds, models=args.models,
                                                                 kd_p=args.kd_p))
        check_image_size(preset_config(args.preset, **overrides), _notebook_path(grid, "gradcam"))
        check_finished_parameters(grid)
        place = _check_place(args)
    except ValueError as err:
        parser.error(str(err))   # exits 2 with the message, no traceback
    runs, exp = select_stages(grid, args.only_stage), Path(grid[0].parameters["experiment_dir"])
    with pd.option_context("display.max_colwidth", 120, "display.width", 250):
        if args.dry_run:
            again = repair(runs, dry_run=True)
            print(describe_grid(runs).to_string(index=False))
            if again:
                print(f"\ndamaged, they run again (with everything after them): {', '.join(again)}")
            return 0
        if args.kernel == KERNEL_NAME:
            ensure_kernel(KERNEL_NAME)
        try:
            lock = acquire(exp)
        except ExperimentBusy as err:
            print(f"error: {err}", file=sys.stderr)
            return 3
        except OSError as err:   # the experiment folder is a file, or not writable
            parser.error(f"--experiment-dir {exp}: {err}")
        try:
            record_command(exp, sys.argv[1:] if argv is None else argv)
            repair(runs)             # under the lock: a damaged finished run is set aside and runs again
            table = _execute(args, grid, runs, place)
        except ValueError as err:   # a cluster that cannot be started as asked (dask-jobqueue's options)
            parser.error(str(err))
        finally:
            release(lock)
        if table is None:
            return 130
        print(table.drop(columns=["run_dir", "started", "finished"]).to_string(index=False))
    bad = table.status.isin([FAILED, SKIPPED])
    if bad.any():
        print(f"\n{int(bad.sum())} run(s) failed or skipped: see their cell.json and log.txt", file=sys.stderr)
    return int(bad.any())


if __name__ == "__main__":
    sys.exit(main())
