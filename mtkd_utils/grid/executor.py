"""Where the grid runs: in this process one run after another (`sync`), or as a Dask task graph on the cores
of this machine, its GPUs, a running Dask scheduler or a batch-queue cluster (Slurm, PBS, SGE, LSF).

Each notebook run is one Dask task, submitted once the runs it needs have finished and a worker thread is free
for it, the run with the costliest expected path after it first; a failed run skips only its descendants. The tasks
share nothing but the experiment folder (records, run folders), so every worker must see it at the same path.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import pandas as pd

from .dag import (
    DONE,
    GPU_STAGES,
    KERNEL_NAME,
    REPO_ROOT,
    NotebookRun,
    check_finished_parameters,
    counts,
    failed_dependency,
    plan,
    record_crash,
    run_or_skip,
    skip,
    summary,
)

SCHEDULERS = ("dask", "sync")
JOBQUEUES = {   # --cluster -> dask-jobqueue class and the job directive that asks for n GPUs
    "slurm": ("SLURMCluster", "--gres=gpu:{n}"),
    "pbs": ("PBSCluster", "-l ngpus={n}"),
    "sge": ("SGECluster", "-l gpu={n}"),
    "lsf": ("LSFCluster", '-gpu "num={n}"'),
}


# ---------------------------------------------------------------- clusters

def usable_cores() -> int:
    """Cores this process may run on (the affinity mask, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def visible_gpus() -> list[str]:
    """The GPUs this process sees, as CUDA_VISIBLE_DEVICES entries."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g.strip() for g in listed.split(",") if g.strip() and g.strip() != "-1"]
    import torch  # lazy: only to count devices
    return [str(i) for i in range(torch.cuda.device_count())]


def thread_env(threads: int) -> dict[str, str]:
    """The BLAS/OpenMP thread count of a worker's kernels (torch's default when Config.threads is 0)."""
    return {name: str(threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}


def local_cluster(workers: int | None = None, gpus: list[str] | None = None):
    """One single-threaded worker process per core; with GPUs, one per GPU, pinned with CUDA_VISIBLE_DEVICES
    and offering the resource GPU=1 (a run that needs a GPU asks for it)."""
    import dask
    from distributed import LocalCluster, Nanny, Scheduler, SpecCluster

    quiet = dict(silence_logs=logging.ERROR)
    # No work stealing: run_dask hands out only as many runs as there are free workers, so there is nothing to
    # balance, and on a loaded machine a stolen task can start on both workers (a notebook executed twice).
    with dask.config.set({"distributed.scheduler.work-stealing": False}):
        if gpus:
            threads = max(1, usable_cores() // len(gpus))
            spec = {f"gpu{g}": {"cls": Nanny, "options": dict(nthreads=1, memory_limit=0, resources={"GPU": 1},
                                                             env={**thread_env(threads), "CUDA_VISIBLE_DEVICES": g})}
                    for g in gpus}
            return SpecCluster(workers=spec, scheduler={"cls": Scheduler, "options": {"dashboard_address": ":0"}},
                               **quiet)
        workers = workers or usable_cores()
        if workers < 1:
            raise ValueError(f"--workers {workers}: give at least 1")
        # the notebooks run in kernels (subprocesses): the worker's own memory stays small, no limit needed
        return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, memory_limit=0,
                            dashboard_address=":0", env=thread_env(max(1, usable_cores() // workers)), **quiet)


def jobqueue_cluster(kind: str, options: dict[str, Any] | None = None):
    """A dask-jobqueue cluster: each batch job runs Dask workers; `gpus` (0 or 1 per job) adds the queue's GPU
    directive and the worker resource GPU=1. Other options go to the class (queue, walltime, memory, cores,
    processes, account, job_script_prologue, job_extra_directives, log_directory, ...)."""
    import dask_jobqueue

    if kind not in JOBQUEUES:
        raise ValueError(f"--cluster {kind!r}: choose one of {sorted(JOBQUEUES)}")
    cls_name, directive = JOBQUEUES[kind]
    opts = dict(options or {})
    gpus = opts.pop("gpus", 0)
    if gpus not in (0, 1):
        raise ValueError(f"--cluster-options gpus={gpus!r}: 0 or 1 GPU per job (one worker per GPU); "
                         "ask for more jobs with --workers")
    opts.setdefault("cores", 1)
    opts.setdefault("memory", "8GB")
    if gpus:
        opts["processes"] = 1
        opts["job_extra_directives"] = [*opts.get("job_extra_directives", []), directive.format(n=gpus)]
        opts["worker_extra_args"] = [*opts.get("worker_extra_args", []), "--resources", "GPU=1"]
    else:
        opts.setdefault("processes", opts["cores"])   # one single-threaded worker per core, as on this machine
    try:
        return getattr(dask_jobqueue, cls_name)(**opts)
    except (TypeError, ValueError) as err:   # dask-jobqueue names the unknown option
        raise ValueError(f"--cluster-options {sorted(opts)}: {err}; see dask-jobqueue's {cls_name}") from err


def connect(scheduler: str = "dask", *, workers: int | None = None, gpus: list[str] | None = None,
            scheduler_address: str | None = None, cluster: str | None = None,
            cluster_options: dict[str, Any] | None = None):
    """A Dask client for the chosen place, and whether runs should ask for a GPU; (None, False) for sync."""
    if scheduler not in SCHEDULERS:
        raise ValueError(f"--scheduler {scheduler!r}: choose one of {SCHEDULERS}")
    if scheduler == "sync":
        return None, False
    from distributed import Client

    if scheduler_address:
        client = Client(scheduler_address)
        info = client.scheduler_info()["workers"].values()
        return client, any("GPU" in w.get("resources", {}) for w in info)
    if cluster:
        jobs = jobqueue_cluster(cluster, cluster_options)
        jobs.scale(jobs=workers or 1)
        return Client(jobs), bool((cluster_options or {}).get("gpus"))
    gpus = visible_gpus() if gpus is None else gpus   # None: every visible GPU
    return Client(local_cluster(workers, gpus)), bool(gpus)


def close(client) -> None:
    """Close the client and the cluster it started (not a scheduler given by address)."""
    if client is None:
        return
    cluster = client.cluster
    client.close()
    if cluster is not None:
        cluster.close()


# ---------------------------------------------------------------- running the graph

# Dask's nanny starts every worker with MALLOC_TRIM_THRESHOLD_=65536 (distributed.nanny.pre-spawn-environ), and
# a notebook kernel inherits it: glibc then maps and unmaps every buffer above 128 KiB, a KD student made 76 M page
# faults instead of 0.3 M and trained 1.8x slower (docs/PERFORMANCE.md). Kernels get glibc's defaults back.
DASK_ONLY_ENV = ("MALLOC_TRIM_THRESHOLD_",)


def _task(run: NotebookRun, kernel_name: str, cwd: str, parents: dict[str, str | None]) -> tuple[str, str]:
    """A Dask task: one notebook run, given the final status of the runs it needs."""
    for name in DASK_ONLY_ENV:
        os.environ.pop(name, None)      # the worker's own process keeps its setting; the kernel starts without it
    return run.name, run_or_skip(run, parents, kernel_name, cwd)


# What a run costs, roughly, relative to a teacher at a small p (measured on the demo here: docs/PERFORMANCE.md).
# Only the order in which ready runs start depends on it; counting runs instead started M3, the demo's longest
# path, after p = 70's teacher and M2 (1,715 s instead of ~1,500).
RELATIVE_COST = {"data": 0.3, "M1": 0.1, "M1b": 1.4, "M1L": 6.0, "M2": 3.0, "M3": 3.0, "error_analysis": 0.2,
                 "gradcam": 0.3, "results": 0.4}   # M1L: M1 retrained at 2 and 4 x its updates


def expected_cost(run: NotebookRun) -> float:
    """RELATIVE_COST of the run; a teacher's grows with p once its epochs outlast the min_steps stretch."""
    if run.stage == "teachers":
        return max(1.0, float(run.parameters["p"]) / 30)
    if run.stage == "students":
        return RELATIVE_COST[run.parameters["models"][0]]
    return RELATIVE_COST[run.stage]


def critical_paths(runs: list[NotebookRun]) -> dict[str, float]:
    """Per run, the expected cost of the costliest path from its start to the end of the grid (itself included)."""
    path: dict[str, float] = {}
    for run in reversed(runs):                      # grid order is topological: children come later
        children = [path[r.name] for r in runs if run.name in r.deps]
        path[run.name] = expected_cost(run) + max(children, default=0.0)
    return path


def submit_run(client, run: NotebookRun, parents: dict[str, str | None], kernel_name: str, cwd: str, gpu: bool,
               priority: int, token: str):
    """One run as a Dask task (asking for a GPU where the stage trains or explains a model)."""
    return client.submit(_task, run, kernel_name, cwd, parents, key=f"mtkd-{run.name}-{token}", pure=False,
                         priority=priority, resources={"GPU": 1} if gpu and run.stage in GPU_STAGES else None)


def run_dask(runs: list[NotebookRun], status: dict[str, str | None], client, *, kernel_name: str, cwd: str,
             gpu: bool, bar) -> None:
    """Each run becomes a Dask task once every run it needs has finished, and only when a worker thread is free
    for it: then the ready run with the costliest expected path after it goes first (ties: grid order). Dask places
    any task it is given at once (a lone task is no 'root-ish' task it would queue), so holding the rest back
    here is what lets the critical path start first. Updates `status`."""
    from distributed import as_completed

    path, token = critical_paths(runs), uuid.uuid4().hex[:8]   # a fresh key per runner: schedulers remember keys
    waiting = sorted((r for r in runs if status[r.name] is None), key=lambda r: (-path[r.name], runs.index(r)))
    priority = {r.name: len(waiting) - i for i, r in enumerate(waiting)}
    bar.update(len(runs) - len(waiting))
    futures, running = {}, as_completed()

    def start_ready() -> None:
        while blocked := [r for r in waiting if failed_dependency(r, status)]:   # a skip blocks its children in turn
            for run in blocked:                          # no worker needed to say so
                waiting.remove(run)
                status[run.name] = skip(run, failed_dependency(run, status))
                bar.update(1)
        free = max(1, sum(client.nthreads().values())) - len(futures)   # one scheduler call, not one per run
        for run in [r for r in waiting if all(status.get(d, DONE) is not None for d in r.deps)][:max(0, free)]:
            waiting.remove(run)
            future = submit_run(client, run, {d: status.get(d, DONE) for d in run.deps}, kernel_name, cwd, gpu,
                                priority[run.name], token)
            futures[future] = run
            running.add(future)
        bar.set_postfix_str(counts(status))

    start_ready()
    for future in running:
        run = futures.pop(future)
        # a task that raised: its worker died (killed, out of memory); the notebook's own errors are recorded
        status[run.name] = future.result()[1] if future.status == "finished" else record_crash(run, _task_error(future))
        bar.set_description(run.name)
        bar.update(1)
        start_ready()


def _task_error(future) -> BaseException:
    """Why a task did not finish: the exception a dead worker left, or the state it ended in."""
    return future.exception() if future.status == "error" else RuntimeError(f"Dask task {future.status}")


def run_sync(runs: list[NotebookRun], status: dict[str, str | None], *, kernel_name: str, cwd: str, bar) -> None:
    """The runs one after another in this process, in grid order (for debugging: tracebacks stay local)."""
    for run in runs:
        if status[run.name] is None:
            bar.set_description(run.name)
            status[run.name] = run_or_skip(run, status, kernel_name, cwd)
        bar.set_postfix_str(counts(status))
        bar.update(1)


def run_grid(runs: list[NotebookRun], *, client=None, gpu: bool = False, kernel_name: str = KERNEL_NAME,
             retry_failed: bool = False, cwd: str | Path = REPO_ROOT, progress: bool = True) -> pd.DataFrame:
    """Run every run not yet done (on `client`'s Dask cluster, or here one by one when None), on to the end
    whatever fails; return the summary table."""
    from tqdm import tqdm

    check_finished_parameters(runs)
    status = plan(runs, retry_failed)                    # None: runs this time, counted as left
    with tqdm(total=len(runs), unit="run", disable=not progress, file=sys.stderr) as bar:
        if client is None:
            run_sync(runs, status, kernel_name=kernel_name, cwd=str(cwd), bar=bar)
        else:
            run_dask(runs, status, client, kernel_name=kernel_name, cwd=str(cwd), gpu=gpu, bar=bar)
    return summary(runs)


def parse_cluster_options(text: str | None) -> dict[str, Any]:
    """--cluster-options as a JSON object; ValueError saying what to write otherwise."""
    if not text:
        return {}
    try:
        options = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"--cluster-options {text!r}: not JSON ({err}); write e.g. "
                         '\'{"queue": "gpu", "walltime": "04:00:00", "memory": "16GB", "gpus": 1}\'') from err
    if not isinstance(options, dict):
        raise ValueError(f"--cluster-options {text!r}: give a JSON object of dask-jobqueue options")
    return options
