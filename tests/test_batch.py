"""The batch runner: grid expansion, failure isolation, resume, retry, the kernel."""
import json
import sys
from collections import Counter
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from conftest import architecture_paths

from mtkd_utils.grid import batch
from mtkd_utils.presets import PRESETS

SMOKE_MODELS = PRESETS["smoke"].grid["models"]   # M1, M2, M3, M1b: the smoke grid leaves M1L out (time)

TEST_KERNEL = "python3"   # ipykernel's own kernel in the venv: tests leave the 'mtkd' registration alone

DUMMY_BODY = '''
import json, pathlib
exp = pathlib.Path(experiment_dir)
exp.mkdir(parents=True, exist_ok=True)
with open(exp / "executions.txt", "a") as f:   # one line per execution: the tests count them
    f.write(json.dumps({"tasks": tasks, "p": p, "seed": seed, "models": models, "overrides": overrides}) + "\\n")
if p == 70 and (exp / "FAIL").exists():
    raise RuntimeError(f"planted failure at p={p}")
'''


def write_dummy_notebook(path: Path, body: str = DUMMY_BODY) -> Path:
    """A notebook with a `parameters` cell taking every parameter the real notebooks take."""
    params = nbformat.v4.new_code_cell("experiment_dir = ''\npreset = ''\ntasks = None\np = None\nseed = None\n"
                                       "models = None\ngroup = None\noverrides = None\nsource = None\nsource_path = None")
    params.metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook(cells=[params, nbformat.v4.new_code_cell(body)])
    nbformat.write(nb, path)
    return path


@pytest.fixture
def dummy(tmp_path):
    nb = write_dummy_notebook(tmp_path / "dummy.ipynb")
    return {stage: str(nb) for stage in batch.STAGES}


def executions(exp: Path) -> int:
    path = exp / "executions.txt"
    return len(path.read_text().splitlines()) if path.exists() else 0


def statuses(cells) -> dict[str, str]:
    return {c.name: batch.recorded_status(c) for c in cells}


# ---------------------------------------------------------------- the grid

# smoke: p=15 trains its 7 teachers (one run each) and M1, M2, M3, M1b; p=70 M1 alone (kd_p); the demo the same
# at p=5 (M1L only when asked: make kd-seeds), and M1 alone at p=15 and 70; paper: 15 (p, seed) points x 7 teacher
# runs, x 4 combinations x 5 models
@pytest.mark.parametrize("preset, n_teachers, n_students", [("smoke", 8, 5), ("demo", 9, 6), ("paper", 105, 300)])
def test_grid_counts(preset, n_teachers, n_students, tmp_path):
    cells = batch.expand_grid(preset, tmp_path)
    stages = Counter(c.stage for c in cells)
    assert stages == {"data": 1, "teachers": n_teachers, "students": n_students,
                      "error_analysis": 1, "gradcam": 1, "results": 1}
    assert [c.stage for c in cells] == sorted((c.stage for c in cells), key=batch.STAGES.index)
    assert len({c.name for c in cells}) == len(cells)
    assert len({c.run_dir for c in cells}) == len(cells)


def test_paper_grid_shares_teachers(tmp_path):
    cells = batch.expand_grid("paper", tmp_path)
    teachers = [c for c in cells if c.stage == "teachers"]
    students = {c.name: c for c in cells if c.stage == "students"}
    # one 02 run per teacher and (p, seed): every subset of the combinations' union, shared by the combinations
    subsets = {"T1", "T2", "T3", "T1+T2", "T1+T3", "T2+T3", "T1+T2+T3"}
    assert {c.parameters["tasks"] for c in teachers} == subsets
    assert Counter((c.parameters["p"], c.parameters["seed"]) for c in teachers) == \
        {(p, s): 7 for p in (15, 30, 45, 60, 70) for s in (0, 1, 2)}
    assert {c.parameters["group"] for c in teachers} == {"full"}
    assert {c.parameters["tasks"] for c in students.values()} == {"T1+T2", "T1+T3", "T2+T3", "T1+T2+T3"}
    full = "teachers/p30_s1/T1+T2+T3"
    need = {m: set(students[f"students/T1+T2+T3/p30_s1/{m}"].deps) for m in ("M1", "M2", "M3", "M1b")}
    assert need["M1"] == need["M2"] == {"data/all", full}
    assert need["M3"] == {"data/all", *(f"teachers/p30_s1/{t}" for t in subsets)}
    # M1b matches the budget of the students: it waits for them
    assert need["M1b"] == {"data/all", full, "students/T1+T2+T3/p30_s1/M2", "students/T1+T2+T3/p30_s1/M3"}
    assert set(students["students/T1+T2/p30_s1/M3"].deps) == {"data/all", *(f"teachers/p30_s1/{t}"
                                                                           for t in ("T1", "T2", "T1+T2"))}
    assert all(c.parameters["models"] == [c.key.rsplit("/", 1)[1]] for c in students.values())


def test_fractions_outside_kd_p_train_m1_alone(tmp_path):
    cells = {c.name: c for c in batch.expand_grid("demo", tmp_path)}
    assert {n for n in cells if "p70" in n} == {"teachers/p70_s0/T1+T2+T3", "students/T1+T2+T3/p70_s0/M1"}
    assert {n for n in cells if "p5_" in n} >= {"teachers/p5_s0/T1+T3", "students/T1+T2+T3/p5_s0/M1b"}
    assert cells["teachers/p70_s0/T1+T2+T3"].parameters["group"] == "full"
    # --p names fractions: each gets the whole method unless --kd-p says otherwise
    named = batch.expand_grid("demo", tmp_path, dims=dict(p=[30, 70]))
    assert {c.key for c in named if c.stage == "students"} >= {"T1+T2+T3/p70_s0/M3", "T1+T2+T3/p30_s0/M3"}
    only = batch.expand_grid("demo", tmp_path, dims=dict(p=[30, 70], kd_p=[30]))
    assert [c.key for c in only if c.stage == "students" and "p70" in c.key] == ["T1+T2+T3/p70_s0/M1"]


def test_dependencies_come_first_and_analyses_need_all_training(tmp_path):
    cells = batch.expand_grid("paper", tmp_path)
    position = {c.name: i for i, c in enumerate(cells)}
    assert all(position[d] < position[c.name] for c in cells for d in c.deps)
    training = {c.name for c in cells if c.stage in ("data", "teachers", "students")}
    for c in cells[-3:]:
        assert c.stage in batch.ANALYSES and set(c.deps) == training


def test_cell_parameters_and_folders(tmp_path):
    cells = {c.name: c for c in batch.expand_grid("demo", tmp_path, overrides={"epochs": 3})}
    exp = str(tmp_path.resolve())
    # --set reaches every notebook that builds a Config, data prep included (issue 18.1); the analyses rebuild
    # each model from its run's config.json
    assert cells["data/all"].parameters == {"experiment_dir": exp, "preset": "demo", "overrides": {"epochs": 3}}
    assert "overrides" not in cells["gradcam/all"].parameters
    assert cells["teachers/p5_s0/T1+T3"].parameters == {"experiment_dir": exp, "preset": "demo",
                                                        "tasks": "T1+T3", "group": "full", "p": 5,
                                                        "seed": 0, "overrides": {"epochs": 3}}
    student = cells["students/T1+T2+T3/p5_s0/M3"]
    assert student.parameters == {"experiment_dir": exp, "preset": "demo", "tasks": "T1+T2+T3", "p": 5, "seed": 0,
                                  "models": ["M3"], "overrides": {"epochs": 3}}
    assert student.notebook == "notebooks/03_student_mtl_kd.ipynb"
    assert student.run_dir == tmp_path.resolve() / "runs" / "students" / "T1+T2+T3" / "p5_s0" / "M3"
    assert student.output_notebook.name == "03_student_mtl_kd.ipynb"
    assert cells["results/all"].parameters == {"experiment_dir": exp, "preset": "demo"}


def test_no_overrides_leave_the_data_parameters_as_before(tmp_path):
    # experiments prepared before --set reached data prep keep their records valid
    cells = {c.name: c for c in batch.expand_grid("demo", tmp_path)}
    assert "overrides" not in cells["data/all"].parameters and "overrides" not in cells["results/all"].parameters


def test_a_notebook_that_would_ignore_a_set_is_refused(tmp_path):
    params = nbformat.v4.new_code_cell("experiment_dir = ''\npreset = ''")
    params.metadata["tags"] = ["parameters"]
    nbformat.write(nbformat.v4.new_notebook(cells=[params]), tmp_path / "no_overrides.ipynb")
    notebooks = {"data": str(tmp_path / "no_overrides.ipynb")}
    with pytest.raises(ValueError, match="split_seed.*no_overrides.ipynb \\(data\\) takes no `overrides`"):
        batch.expand_grid("smoke", tmp_path, notebooks=notebooks, overrides={"split_seed": 1})
    batch.expand_grid("smoke", tmp_path, notebooks=notebooks)   # nothing to pass: fine


def test_tasks_p_and_seeds_replace_the_presets(tmp_path):
    cells = batch.expand_grid("demo", tmp_path, dims=dict(p=[15.0, 30], seeds=[0, 1], tasks=None))
    assert {c.key for c in cells if c.stage == "teachers"} == \
        {f"p{p}_s{s}/{t}" for p in (15, 30) for s in (0, 1)
         for t in ("T1+T2+T3", "T1+T2", "T1+T3", "T2+T3", "T1", "T2", "T3")}
    assert {c.parameters["p"] for c in cells if c.stage == "teachers"} == {15, 30}   # 15.0 is the cell p15
    cells = batch.expand_grid("demo", tmp_path, dims=dict(tasks=["T1+T2", "T3"]))
    assert {c.parameters["tasks"] for c in cells if c.stage == "students"} == {"T1+T2", "T3"}
    for dims, message in ((dict(p=[80]), "p=80"), (dict(seeds=[-1]), "seeds"), (dict(tasks=["T4"]), "T4"),
                          (dict(seeds=[]), "empty"), (dict(models=["M9"]), "choose from"),
                          (dict(colour=["red"]), "cannot be set"), (dict(kd_p=[90]), "p=90")):
        with pytest.raises(ValueError, match=message):
            batch.expand_grid("demo", tmp_path, dims=dims)


def test_bad_arguments_name_the_allowed_values(tmp_path):
    with pytest.raises(ValueError, match="preset='tiny'.*demo.*paper.*smoke"):
        batch.expand_grid("tiny", tmp_path)
    with pytest.raises(ValueError, match="unknown config field.*epoch"):
        batch.expand_grid("demo", tmp_path, overrides={"epoch": 3})
    with pytest.raises(ValueError, match="stages"):
        batch.select_stages(batch.expand_grid("demo", tmp_path), ["teacher"])
    with pytest.raises(ValueError, match="KEY=VALUE"):
        batch.parse_overrides(["epochs"])
    assert batch.parse_overrides(["epochs=3", "pretrained=imagenet", "tau_grid=[2, 5]"]) == \
        {"epochs": 3, "pretrained": "imagenet", "tau_grid": [2, 5]}


def test_only_stage_selects(tmp_path):
    cells = batch.select_stages(batch.expand_grid("paper", tmp_path), ["teachers", "results"])
    assert Counter(c.stage for c in cells) == {"teachers": 105, "results": 1}


def test_dry_run_runs_nothing(tmp_path, dummy, capsys):
    assert batch.main(["--preset", "smoke", "--experiment-dir", str(tmp_path / "exp"), "--dry-run"], dummy) == 0
    out = capsys.readouterr().out
    assert "teachers/p70_s0/T1+T2+T3" in out and "students/T1+T2+T3/p15_s0/M3" in out and "not run" in out
    assert not (tmp_path / "exp").exists()


# ---------------------------------------------------------------- running (real papermill, dummy notebooks)

def test_failure_is_isolated_then_resume_and_retry(tmp_path, dummy, capsys):
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "FAIL").touch()    # the dummy notebook raises at p = 70 while this file exists
    argv = ["--preset", "smoke", "--experiment-dir", str(exp), "--kernel", TEST_KERNEL, "--workers", "2"]   # Dask
    cells = batch.expand_grid("smoke", exp, notebooks=dummy)

    assert batch.main(argv, dummy) == 1
    out = capsys.readouterr().out
    assert statuses(cells) == {
        "data/all": "done", **{f"teachers/p15_s0/{t}": "done" for t in ("T1+T2+T3", "T1+T2", "T1+T3", "T2+T3",
                                                                        "T1", "T2", "T3")},
        "teachers/p70_s0/T1+T2+T3": "failed", **{f"students/T1+T2+T3/p15_s0/{m}": "done" for m in SMOKE_MODELS},
        "students/T1+T2+T3/p70_s0/M1": "skipped",
        "error_analysis/all": "skipped", "gradcam/all": "skipped", "results/all": "skipped"}
    assert executions(exp) == 13   # data, eight teacher runs (p70's failing), the four p15 students
    failed = json.loads((exp / "runs/teachers/p70_s0/T1+T2+T3/cell.json").read_text())
    assert failed["error"]["type"] == "RuntimeError"
    assert failed["error"]["message"] == "planted failure at p=70"
    # papermill keeps the traceback in the executed copy, kept in the run folder
    assert "planted failure" in Path(failed["error"]["notebook"]).read_text()
    assert "planted failure" in (exp / "runs/teachers/p70_s0/T1+T2+T3/log.txt").read_text()
    skipped = json.loads((exp / "runs/students/T1+T2+T3/p70_s0/M1/cell.json").read_text())
    assert skipped["reason"] == "dependency failed: teachers/p70_s0/T1+T2+T3"
    assert "RuntimeError: planted failure" in out and "dependency failed" in out
    assert (exp / "runs" / "summary.csv").exists()
    # on Dask workers too, a run starts only once every run it needs has finished (data prep first)
    records = {c.name: batch.read_record(c) for c in cells}
    for name, record in records.items():
        if record["status"] == "done":
            assert all(record["started"] >= records[d]["finished"] for d in record["deps"]), name

    # a plain re-run runs nothing: finished cells are kept, the failed one is not retried
    assert batch.main(argv, dummy) == 1
    assert executions(exp) == 13

    # --retry-failed, with the cause gone: the failed cell and everything it blocked run, nothing else
    (exp / "FAIL").unlink()
    assert batch.main(argv + ["--retry-failed"], dummy) == 0
    assert executions(exp) == 13 + 5
    assert set(statuses(cells).values()) == {"done"}
    assert batch.main(argv, dummy) == 0
    assert executions(exp) == 18
    documented = architecture_paths({"<stage>": "teachers", "<key>": "p70_s0/T1+T2+T3"}, under="runs/")
    assert [path for path in documented if not (exp / path).exists()] == []   # docs/ARCHITECTURE.md's runs/ paths


def test_a_grown_grid_reruns_the_summaries_only(tmp_path, dummy, capsys):
    exp = tmp_path / "exp"
    argv = ["--preset", "smoke", "--experiment-dir", str(exp), "--kernel", TEST_KERNEL, "--p", "15",
            "--scheduler", "sync"]   # the same plan as on Dask (test above), without starting a cluster each time
    assert batch.main(argv, dummy) == 0
    assert executions(exp) == 15              # data, seven teacher runs, four students, three analyses
    assert batch.main(argv, dummy) == 0
    assert executions(exp) == 15              # nothing changed: nothing runs
    capsys.readouterr()
    assert batch.main(argv + ["--seeds", "0", "1", "--dry-run"], dummy) == 0
    assert capsys.readouterr().out.count("inputs changed: runs again") == 3   # the three analyses
    assert batch.main(argv + ["--seeds", "0", "1"], dummy) == 0
    # the new seed's teachers and students, then the analyses, which now need them: 11 + 3
    assert executions(exp) == 29
    ran = [json.loads(line) for line in (exp / "executions.txt").read_text().splitlines()[15:]]
    assert [r["seed"] for r in ran] == [1] * 11 + [None] * 3


def test_a_killed_cell_runs_again(tmp_path, dummy):
    exp = tmp_path / "exp"
    cells = batch.expand_grid("smoke", exp, notebooks=dummy)[:2]   # data/all, teachers/p15_s0/T1+T2+T3
    for cell in cells:   # as a kill leaves them: data finished, the teacher cell still 'running'
        status = "done" if cell.stage == "data" else "running"
        batch.write_json(batch.new_record(cell, status), cell.record_path)
    table = batch.run_grid(cells, kernel_name=TEST_KERNEL, progress=False)
    assert executions(exp) == 1
    assert list(table.status) == ["done", "done"]
    record = batch.read_record(cells[1])
    assert record["seconds"] > 0 and record["error"] is None and Path(record["output_notebook"]).exists()


def test_changed_parameters_are_refused(tmp_path, dummy):
    exp = tmp_path / "exp"
    cell = batch.expand_grid("smoke", exp, notebooks=dummy)[1]
    batch.write_json(batch.new_record(cell, "done"), cell.record_path)
    batch.check_finished_parameters([cell])   # same parameters: fine
    changed = batch.expand_grid("smoke", exp, notebooks=dummy, overrides={"epochs": 3})[1]
    with pytest.raises(ValueError, match="another --experiment-dir"):
        batch.check_finished_parameters([changed])


# ---------------------------------------------------------------- the kernel

def test_ensure_kernel_registers_this_python_once(tmp_path):
    folder = batch.ensure_kernel("mtkd-test", prefix=tmp_path)
    assert folder == tmp_path / "share" / "jupyter" / "kernels" / "mtkd-test"
    spec = json.loads((folder / "kernel.json").read_text())
    assert spec["argv"][0] == sys.executable and spec["display_name"] == "mtkd-test (.venv)"
    mtime = (folder / "kernel.json").stat().st_mtime_ns
    assert batch.ensure_kernel("mtkd-test", prefix=tmp_path) == folder
    assert (folder / "kernel.json").stat().st_mtime_ns == mtime   # present: not installed again


def test_the_readme_reports_the_time_any_run_was_running(tmp_path):
    from mtkd_utils.tools.readme import _timings

    runs = tmp_path / "runs"
    runs.mkdir()
    # two runs side by side on two workers, 60 s each, then one of 30 s; a day later the grid is extended by a
    # 30 s run: 2 min of wall time (the day between is no grid time), 3 min of notebook time
    pd.DataFrame({"cell": ["a", "b", "c", "d"], "status": "done", "seconds": [60, 60, 30, 30],
                  "started": ["2026-01-01T10:00:00", "2026-01-01T10:00:00", "2026-01-01T10:01:00",
                              "2026-01-02T10:00:00"],
                  "finished": ["2026-01-01T10:01:00", "2026-01-01T10:01:00", "2026-01-01T10:01:30",
                               "2026-01-02T10:00:30"]}).to_csv(runs / "summary.csv", index=False)
    assert _timings(tmp_path) == ("Wall time of the grid, counting the time any notebook ran: 2.0 min "
                                  "(4 notebook runs, 3.0 min of notebook time).")


def test_a_free_worker_takes_the_costliest_path_first(tmp_path, dummy):
    exp = tmp_path / "exp"
    # p=70 comes first in the grid, but p=15's teachers head the costlier paths (M2, M3, then M1b), and M2 and M3,
    # long KD runs with M1b after them, go before p=70's teacher; M1b (shorter) after it
    argv = ["--preset", "smoke", "--experiment-dir", str(exp), "--kernel", TEST_KERNEL, "--workers", "1",
            "--p", "70", "15", "--kd-p", "15"]
    assert batch.main(argv, dummy) == 0
    ran = [json.loads(line) for line in (exp / "executions.txt").read_text().splitlines()]
    assert [(r["p"], r["models"]) for r in ran[:12]] == [(None, None), *[(15, None)] * 7, (15, ["M2"]),
                                                          (15, ["M3"]), (70, None), (15, ["M1b"])]


def test_models_on_the_command_line_replace_the_preset_s(tmp_path):
    from mtkd_utils.grid import dag
    names = {r.name.rsplit("/", 1)[-1] for r in dag.expand_grid("demo", tmp_path, dims=dict(models=["M1", "M1L"]))
             if r.stage == "students"}
    assert names == {"M1", "M1L"}
    with pytest.raises(ValueError, match="M1 included"):
        dag.expand_grid("demo", tmp_path, dims=dict(models=["M2", "M3"]))
