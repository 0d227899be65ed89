"""Where the grid runs: Dask workers pinned to (fake) GPUs, batch-queue job scripts, racing claims of a run."""
import json
import multiprocessing as mp

import pytest
from test_batch import TEST_KERNEL, write_dummy_notebook

from mtkd_utils.grid import batch, dag, executor
from mtkd_utils.presets import config as preset

GPU_BODY = '''
import json, os, pathlib
with open(pathlib.Path(experiment_dir) / "gpus.txt", "a") as f:   # which GPU each notebook was given
    f.write(json.dumps({"tasks": tasks, "p": p, "gpu": os.environ.get("CUDA_VISIBLE_DEVICES"),
                        "malloc_trim": os.environ.get("MALLOC_TRIM_THRESHOLD_")}) + "\\n")
'''


def test_gpu_workers_are_pinned_and_training_asks_for_a_gpu(tmp_path):
    from distributed import Client

    nb = write_dummy_notebook(tmp_path / "dummy.ipynb", body=GPU_BODY)
    runs = dag.expand_grid("smoke", tmp_path / "exp", notebooks={s: str(nb) for s in dag.STAGES})
    # two fake GPUs: nothing touches CUDA, the workers only carry the pinning and the resource
    with Client(executor.local_cluster(gpus=["0", "1"])) as client:
        client.wait_for_workers(2, timeout=120)   # a loaded machine starts them one by one
        pinned = client.run(lambda: __import__("os").environ["CUDA_VISIBLE_DEVICES"])
        assert sorted(pinned.values()) == ["0", "1"]
        info = client.scheduler_info()["workers"].values()
        assert [w["resources"] for w in info] == [{"GPU": 1}, {"GPU": 1}]
        assert "stealing" not in client.cluster.scheduler.extensions   # a task never runs on two workers at once
        futures = {executor.submit_run(client, r, {}, TEST_KERNEL, str(dag.REPO_ROOT), True, 0, "t"): r
                   for r in runs}   # each alone: the dummy notebook needs nothing
        client.gather(list(futures))   # the futures held: the scheduler still knows their tasks
        asked = {r.stage: client.cluster.scheduler.tasks[f.key].resource_restrictions for f, r in futures.items()}
        # let go of the results before the workers stop: a worker that leaves holding finished tasks makes the
        # scheduler recompute them on the one still closing (a notebook run twice; run_dask drops each as it ends)
        client.cancel(list(futures))
        del futures
        client.cluster.close()
    assert asked["teachers"] == asked["students"] == asked["gradcam"] == {"GPU": 1}
    assert asked["data"] is None and asked["results"] is None
    records = {r.name: dag.read_record(r) for r in runs}
    assert {name: (rec["status"], rec.get("error")) for name, rec in records.items() if rec["status"] != "done"} == {}
    seen = [json.loads(line) for line in (tmp_path / "exp" / "gpus.txt").read_text().splitlines()]
    assert len(seen) == len(runs) and {s["gpu"] for s in seen} <= {"0", "1"}
    # the nanny's malloc setting (1.8x slower training) stays in the worker; the notebooks run on glibc's defaults
    assert {s["malloc_trim"] for s in seen} == {None}
    assert records["teachers/p15_s0/T1+T3"]["gpu"] in ("0", "1")


def test_slurm_job_script_has_the_requested_options():
    options = {"queue": "gpu", "walltime": "04:00:00", "memory": "16GB", "cores": 4, "gpus": 1,
               "account": "eyes", "job_script_prologue": ["module load cuda/12.4", "source .venv/bin/activate"]}
    cluster = executor.jobqueue_cluster("slurm", options)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    for line in ("#SBATCH -p gpu", "#SBATCH -t 04:00:00", "#SBATCH --cpus-per-task=4", "#SBATCH -A eyes",
                 "#SBATCH --gres=gpu:1", "module load cuda/12.4", "source .venv/bin/activate"):
        assert line in script, line
    assert "--mem=15G" in script or "--mem=16G" in script
    assert "--resources GPU=1" in script and "--nworkers" not in script   # one worker per job: per GPU


def test_cpu_jobs_run_one_single_threaded_worker_per_core():
    cluster = executor.jobqueue_cluster("pbs", {"queue": "cpu", "cores": 8, "walltime": "01:00:00"})
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert "#PBS -q cpu" in script and "--nworkers 8" in script and "--nthreads 1" in script
    assert "GPU" not in script


@pytest.mark.parametrize("kind, options, message", [
    ("condor", {}, "choose one of"), ("slurm", {"gpus": 2}, "0 or 1 GPU per job"),
    ("slurm", {"queue": "gpu", "colour": "red"}, "cluster-options")])
def test_bad_cluster_options_are_refused(kind, options, message):
    with pytest.raises(ValueError, match=message):
        executor.jobqueue_cluster(kind, options)


def test_bad_places_are_refused_before_anything_runs(tmp_path, capsys):
    base = ["--preset", "smoke", "--experiment-dir", str(tmp_path / "exp")]
    for extra, message in ((["--cluster", "slurm", "--cluster-options", "{bad"], "not JSON"), (["--cluster-options", "{}"], "needs --cluster"),
                           (["--scheduler", "sync", "--cluster", "slurm"], "runs here"), (["--workers", "0"], "at least 1"),
                           (["--gpus", "0,1", "--workers", "2"], "one worker per GPU")):
        with pytest.raises(SystemExit):
            batch.main(base + extra)
        assert message in capsys.readouterr().err
    assert not (tmp_path / "exp").exists()


# ---------------------------------------------------------------- claiming a run folder

def _claim(folder: str, epochs: int, n: int, start, results) -> None:
    from pathlib import Path

    from mtkd_utils.runs import claim_run
    cfg = preset("smoke", epochs=epochs)
    for i in range(n):
        start.wait()                      # both processes claim folder i at the same moment
        try:
            claim_run(Path(folder) / str(i), cfg, role="teacher", tasks=["T1"], p=15.0, seed=0)
            results.put((i, epochs))
        except FileExistsError:
            results.put((i, None))


def test_two_workers_racing_on_one_run_folder_cannot_both_claim_it(tmp_path):
    n, ctx = 3, mp.get_context("spawn")
    start, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_claim, args=(str(tmp_path), epochs, n, start, results)) for epochs in (2, 3)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120) for _ in range(2 * n)]
    for p in procs:
        p.join()
    for i in range(n):
        winners = [e for j, e in outcomes if j == i and e is not None]
        assert len(winners) == 1, f"folder {i}: claimed by {winners}"
        # the folder records the settings of the one that claimed it
        assert json.loads((tmp_path / str(i) / "config.json").read_text())["config"]["epochs"] == winners[0]
    assert not list(tmp_path.glob("*/.config.json.*.tmp"))


def test_the_costliest_paths_start_first(tmp_path):
    runs = dag.expand_grid("demo", tmp_path, dims=dict(models=["M1", "M2", "M3", "M1b", "M1L"]))   # as make kd-seeds
    path = executor.critical_paths(runs)
    cost = executor.RELATIVE_COST
    # data -> p=5 teachers -> M3 -> M1b -> results: the p=5 teachers outrank p=70's longer teacher, and M2 / M3
    # (a student's long KD run ahead of M1b) outrank it too: counting runs had put p=70's teacher before M3
    after_m3 = cost["M3"] + cost["M1b"] + cost["results"]
    assert path["students/T1+T2+T3/p5_s0/M3"] == pytest.approx(after_m3)
    assert path["teachers/p5_s0/T1+T3"] == pytest.approx(1 + after_m3)
    # M1L (M1 retrained at 2 and 4 x its updates) hangs off the full teacher alone: the grid's longest path
    assert path["teachers/p5_s0/T1+T2+T3"] == pytest.approx(1 + max(after_m3, cost["M1L"] + cost["results"]))
    assert path["data/all"] == pytest.approx(cost["data"] + path["teachers/p5_s0/T1+T2+T3"])
    p70 = path["teachers/p70_s0/T1+T2+T3"]
    assert p70 == pytest.approx(70 / 30 + cost["M1"] + cost["results"]) and p70 < after_m3
    assert path["teachers/p15_s0/T1+T2+T3"] < p70           # a teacher's cost grows with p past the min_steps stretch
    assert {path[r.name] for r in runs if r.stage in dag.ANALYSES} == {cost[s] for s in dag.ANALYSES}
