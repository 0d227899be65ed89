"""Issue 33.5: damaged files in a finished experiment are repaired by the same batch command, and by the command
a damaged file's message prints, followed literally."""
import json
import re
import subprocess
from pathlib import Path

import nbformat
import pytest

from mtkd_utils.config import parse_tasks
from mtkd_utils.data import prep
from mtkd_utils.grid import batch
from mtkd_utils.grid.repair import damaged_files, repair
from mtkd_utils.io import DamagedFileError, read_json, verify_file, write_json
from mtkd_utils.presets import config as preset
from mtkd_utils.runs import RunKey, soft_targets_path, student_dir, teacher_dir

# A stand-in for the notebooks that writes and reads checksummed files where the real ones do: data/dataset.json
# (01), a teacher's "checkpoint" (02), each student's metrics after reading its teachers' (03), nothing (04-06).
BODY = '''
import json, pathlib
from mtkd_utils import runs as layout
from mtkd_utils.config import parse_tasks, task_subsets
from mtkd_utils.io import read_json, write_json
exp = pathlib.Path(experiment_dir)
exp.mkdir(parents=True, exist_ok=True)
with open(exp / "executions.txt", "a") as f:
    f.write(json.dumps({"tasks": tasks, "models": models, "group": group}) + "\\n")
if tasks is None and source != "none":
    write_json({"manifest": "none"}, layout.data_dir(exp) / "dataset.json")
elif models is None and tasks is not None:
    key = layout.RunKey(parse_tasks(tasks), p, seed)
    write_json({"trained": tasks}, layout.teacher_dir(exp, key) / "checkpoint.json", checksum=True)
elif models:
    key = layout.RunKey(parse_tasks(tasks), p, seed)
    for model in models:
        subsets = task_subsets(parse_tasks(tasks)) if model == "M3" else [parse_tasks(tasks)]
        read = [read_json(layout.teacher_dir(exp, layout.RunKey(t, p, seed)) / "checkpoint.json") for t in subsets]
        write_json({"teachers": read}, layout.student_dir(exp, key.with_model(model)) / "metrics.json", checksum=True)
'''
RUNS = 11   # data, teachers T1+T2, T1 and T2, students M1, M2, M3, M1b of T1+T2, three analyses


def notebook(path: Path) -> Path:
    params = nbformat.v4.new_code_cell("experiment_dir = ''\npreset = ''\ntasks = None\np = None\nseed = None\n"
                                       "models = None\ngroup = None\noverrides = None\nsource = None\nsource_path = None")
    params.metadata["tags"] = ["parameters"]
    nbformat.write(nbformat.v4.new_notebook(cells=[params, nbformat.v4.new_code_cell(BODY)]), path)
    return path


def executions(exp: Path) -> list[dict]:
    return [json.loads(line) for line in (exp / "executions.txt").read_text().splitlines()]


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def test_damage_then_the_same_command_or_the_printed_fix_repairs_it_rerunning_only_what_follows(tmp_path, capsys):
    nb, exp = notebook(tmp_path / "stand_in.ipynb"), tmp_path / "exp"
    argv = ["--preset", "smoke", "--experiment-dir", str(exp), "--kernel", "python3", "--p", "15", "--tasks", "T1+T2",
            "--scheduler", "sync", *[f"--notebook={stage}={nb}" for stage in batch.STAGES]]
    assert batch.main(argv) == 0 and len(executions(exp)) == RUNS

    # 1. damage, then the same command: the damaged teacher and what reads it run again, nothing else
    checkpoint = teacher_dir(exp, RunKey(("T1",), 15, 0)) / "checkpoint.json"   # only M3 reads this teacher
    truncate(checkpoint)
    with pytest.raises(DamagedFileError):
        verify_file(checkpoint)
    capsys.readouterr()
    assert batch.main(argv) == 0
    assert f"teachers/p15_s0/T1: {checkpoint} is damaged" in capsys.readouterr().err
    assert verify_file(checkpoint) and read_json(checkpoint) == {"trained": "T1"}
    rerun = [str((e["tasks"], e["models"])) for e in executions(exp)[RUNS:]]
    assert sorted(rerun) == sorted(str(x) for x in [("T1", None), ("T1+T2", ["M3"]), ("T1+T2", ["M1b"]),
                                                    (None, None), (None, None), (None, None)])   # + 3 analyses
    kept = list((exp / "damaged").glob("*/teachers/p15_s0/T1/checkpoint.json"))
    assert len(kept) == 1 and len(kept[0].read_bytes()) < len(checkpoint.read_bytes())    # set aside, not deleted
    assert batch.main(argv) == 0 and len(executions(exp)) == RUNS + 6                        # nothing left to do

    # 2. damage, then the command the message prints, followed literally in a shell
    checkpoint = teacher_dir(exp, RunKey(("T2",), 15, 0)) / "checkpoint.json"
    truncate(checkpoint)
    with pytest.raises(DamagedFileError) as err:   # what a notebook reading it shows
        read_json(checkpoint)
    command = re.search(r"To repair it, run: (.+?)   \(the batch command", str(err.value))[1]
    assert command.endswith("--retry-failed") and "--notebook=data=" in command
    done = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert read_json(checkpoint) == {"trained": "T2"}
    assert len(executions(exp)) == RUNS + 6 + 6                 # T2, M3, M1b and the analyses
    assert read_json(student_dir(exp, RunKey(parse_tasks("T1+T2"), 15, 0, "M3")) / "metrics.json")


def test_a_damaged_image_cache_is_rebuilt_in_place_and_nothing_runs_again(tmp_path, capsys):
    exp = tmp_path / "exp"
    prep.prepare_data(exp, preset("smoke"))
    data_run = batch.expand_grid("smoke", exp)[0]
    write_json(batch.new_record(data_run, batch.DONE), data_run.record_path)
    cache = exp / "data" / "cache" / "images_32.npy"
    before = cache.read_bytes()
    truncate(cache)
    assert repair([data_run]) == []
    assert cache.read_bytes() == before and verify_file(cache)
    assert batch.recorded_status(data_run) == batch.DONE and not (exp / "damaged").exists()
    assert f"{cache}: a cache, rebuilt" in capsys.readouterr().err


def test_a_damaged_soft_target_cache_is_removed_not_rerun(tmp_path):
    exp = tmp_path / "exp"
    cell = next(c for c in batch.expand_grid("smoke", exp) if c.name == "students/T1+T2+T3/p15_s0/M2")
    run = student_dir(exp, RunKey(parse_tasks("T1+T2+T3"), 15, 0, "M2"))
    write_json({"ok": 1}, run / "metrics.json", checksum=True)
    cache = soft_targets_path(run)
    cache.write_bytes(b"x" * 100)
    cache.with_name("soft_targets.pt.sha256").write_text("0" * 64 + "  soft_targets.pt\n")   # does not match
    write_json(batch.new_record(cell, batch.DONE), cell.record_path)
    assert repair([cell]) == [] and not cache.exists() and (run / "metrics.json").exists()


def test_a_missing_checkpoint_is_damage_a_removed_resume_point_is_not(tmp_path):
    write_json({"a": 1}, tmp_path / "checkpoint.pt", checksum=True)
    write_json({"a": 1}, tmp_path / "last.pt", checksum=True)
    (tmp_path / "last.pt").unlink()        # as training left it before issue 33: its checksum stayed
    assert damaged_files(tmp_path) == []
    (tmp_path / "checkpoint.pt").unlink()
    assert [e.path.name for e in damaged_files(tmp_path)] == ["checkpoint.pt"]
