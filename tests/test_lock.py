"""One runner per experiment: the lock names its holder, refuses a second runner, takes over a stale one."""
import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys

import pytest
from test_batch import TEST_KERNEL, executions, write_dummy_notebook

from mtkd_utils.grid import batch, lock


def write_lock(exp, pid, host=None):
    exp.mkdir(parents=True, exist_ok=True)
    (exp / lock.LOCK_NAME).write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(),
                                                 "started": "2026-01-01T00:00:00", "command": "batch --preset x"}))


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_live_holder_is_named_and_refused(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_lock(tmp_path, sleeper.pid)
        with pytest.raises(lock.ExperimentBusy, match=f"pid {sleeper.pid} on host {socket.gethostname()}, "
                                                      "started 2026-01-01T00:00:00"):
            lock.acquire(tmp_path)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_holder_on_another_host_is_refused(tmp_path):
    write_lock(tmp_path, os.getpid(), host="elsewhere")
    with pytest.raises(lock.ExperimentBusy, match="host elsewhere.*cannot be checked"):
        lock.acquire(tmp_path)


def test_a_stale_lock_is_taken_over_and_released(tmp_path, capsys):
    write_lock(tmp_path, dead_pid())
    with lock.experiment_lock(tmp_path) as path:
        holder = json.loads(path.read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(lock.ExperimentBusy):   # now held, by a live process (this one)
            lock.acquire(tmp_path)
    assert "taking over a stale lock" in capsys.readouterr().err
    assert not path.exists()


def test_a_busy_experiment_refuses_the_runner(tmp_path, capsys):
    exp = tmp_path / "exp"
    nb = {stage: str(write_dummy_notebook(tmp_path / "dummy.ipynb")) for stage in batch.STAGES}
    write_lock(exp, os.getppid())   # a live process that is not this runner
    argv = ["--preset", "smoke", "--experiment-dir", str(exp), "--kernel", TEST_KERNEL, "--scheduler", "sync"]
    assert batch.main(argv, nb) == 3
    assert f"pid {os.getppid()}" in capsys.readouterr().err
    assert executions(exp) == 0 and not (exp / "runs").exists()


def _runner(exp: str, nb: str, start, results) -> None:
    notebooks = {stage: nb for stage in batch.STAGES}
    start.wait()
    results.put(batch.main(["--preset", "smoke", "--experiment-dir", exp, "--kernel", TEST_KERNEL, "--p", "15",
                            "--scheduler", "sync"], notebooks))


def test_two_runners_started_together_run_each_notebook_once(tmp_path):
    exp, nb = tmp_path / "exp", write_dummy_notebook(tmp_path / "dummy.ipynb")
    ctx = mp.get_context("spawn")
    start, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_runner, args=(str(exp), str(nb), start, results)) for _ in range(2)]
    for p in procs:
        p.start()
    codes = sorted(results.get(timeout=300) for _ in procs)
    for p in procs:
        p.join()
    assert codes == [0, 3]                      # one ran the grid, the other was refused
    assert executions(exp) == 15                # data, seven teacher runs, four students, three analyses: each once
    assert not (exp / lock.LOCK_NAME).exists()
    for record in (exp / "runs").glob("**/cell.json"):
        assert json.loads(record.read_text())["status"] == "done"
