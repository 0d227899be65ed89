"""tools/profile: a finished run's seconds split by phase, from cell.json, papermill's cell times and timing.json."""
import json

import pytest

from mtkd_utils.io import add_seconds, write_json
from mtkd_utils.tools.profile import PHASES, by_kind, profile


def notebook(path, durations_and_tags):
    cells = [{"cell_type": "code", "source": "", "outputs": [],
              "metadata": {"tags": tags, "papermill": {"duration": seconds}}} for seconds, tags in durations_and_tags]
    path.write_text(json.dumps({"cells": cells, "metadata": {}}))
    return path


def finished_run(exp, name, seconds, cells):
    folder = exp / "runs" / name
    folder.mkdir(parents=True)
    write_json({"name": name, "status": "done", "seconds": seconds,
                "output_notebook": str(notebook(folder / "run.ipynb", cells))}, folder / "cell.json")


def test_phases_add_up_to_the_run_and_come_from_their_files(tmp_path):
    # a teacher run of 100 s: parameters 0.1 s, set-up 6 s, the training cell 80 s, a figure 3 s -> kernel 10.9 s
    finished_run(tmp_path, "teachers/p5_s0/T1", 100.0, [(0.1, ["parameters"]), (6.0, []), (80.0, []), (3.0, [])])
    add_seconds(tmp_path / "teachers/p5_s0/T1/timing.json", train_seconds=50.0, val_seconds=10.0)
    add_seconds(tmp_path / "teachers/p5_s0/T1/timing.json", train_seconds=10.0)          # a resumed run adds up
    # an M3 run: soft targets in its folder, training in a setting folder below it
    finished_run(tmp_path, "students/T1/p5_s0/M3", 40.0, [(5.0, []), (30.0, [])])
    add_seconds(tmp_path / "students/T1/p5_s0/M3/timing.json", soft_targets_seconds=4.0, test_seconds=2.0)
    add_seconds(tmp_path / "students/T1/p5_s0/M3/tau_2_alpha_0.5/timing.json", train_seconds=20.0, val_seconds=1.0)
    finished_run(tmp_path, "results/all", 12.0, [(2.0, []), (5.0, [])])
    runs = profile(tmp_path).set_index("run")
    teacher = runs.loc["teachers/p5_s0/T1"]
    assert teacher.kind == "teacher"
    assert teacher["start-up"] == pytest.approx(100 - 89.1 + 6.0)
    assert (teacher["training steps"], teacher["validation"]) == (60.0, 10.0)
    assert teacher["other cells"] == pytest.approx(100 - 16.9 - 70)
    m3 = runs.loc["students/T1/p5_s0/M3"]
    assert (m3.kind, m3["soft targets"], m3["test read"], m3["training steps"]) == ("M3", 4.0, 2.0, 20.0)
    assert runs[PHASES].sum(axis=1).to_numpy() == pytest.approx(runs.seconds.to_numpy())   # nothing lost or counted twice
    table = by_kind(runs.reset_index())
    assert table.loc["all", "seconds"] == 152.0 and table.loc["all", "runs"] == 3
    assert table.loc["teacher", "biggest phase"] == "training steps (60%)"


def test_an_experiment_without_finished_runs_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the grid first"):
        profile(tmp_path)
