"""The notebooks executed end to end by papermill on the smoke preset (a real, tiny experiment)."""
import json
import shutil
from pathlib import Path

import pandas as pd
import papermill as pm
import pytest
from test_progress import widget_debris

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("exp")


def run(name: str, out_dir: Path, **params) -> Path:
    out = out_dir / "executed" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    pm.execute_notebook(NOTEBOOKS / name, out, parameters=dict(experiment_dir=str(out_dir), preset="smoke", **params),
                        kernel_name="mtkd", cwd=str(REPO), progress_bar=False)
    assert widget_debris(out) == [], f"{name}: progress bars left widgets or 0% lines in the executed copy"
    return out


def test_notebooks_run_in_order(experiment):
    run("01_data_prep.ipynb", experiment)
    assert (experiment / "data" / "splits.csv").exists() and (experiment / "data" / "figures" / "samples.png").exists()
    run("02_teachers.ipynb", experiment, p=15)
    assert len(list((experiment / "teachers" / "p15_s0").glob("*/checkpoint.pt"))) == 7
    run("03_student_mtl_kd.ipynb", experiment, p=15)
    for model in ("M1", "M2", "M3"):
        run_dir = experiment / "students" / "T1+T2+T3" / "p15_s0" / model
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert 0 <= metrics["test"]["T1_acc"] <= 1 and metrics["model"] == model
        assert (run_dir / "predictions.csv").exists() and (run_dir / "config.json").exists() and (run_dir / "split.csv").exists()
        if model != "M1":
            assert metrics["tau"] in (2.0, 5.0)                # chosen from the smoke grid on validation
            assert (run_dir / "soft_targets.pt").exists()      # the teachers ran once, for every tau
    run("04_error_analysis.ipynb", experiment)
    counts = pd.read_csv(experiment / "analysis" / "supplement_counts.csv", index_col=0)
    assert {"M1 p=15", "M2 p=15", "M3 p=15"} <= set(counts.columns) and (experiment / "analysis" / "examples.png").exists()
    run("05_gradcam.ipynb", experiment, n_per_disease=1)
    loc = pd.read_csv(experiment / "gradcam" / "localisation.csv")
    assert {"M3 p=15", "randomised M3 p=15"} <= set(loc.run) and (experiment / "gradcam" / "gradcam_M3.pdf").exists()
    run("06_results.ipynb", experiment, n_boot=200)
    table = pd.read_csv(experiment / "results" / "table1.csv")
    assert len(table) == 3 and (experiment / "results" / "metrics_vs_p.png").exists()
    assert len(pd.read_csv(experiment / "results" / "m3_vs_m1.csv")) == 3   # one row per metric


def test_a_bad_parameter_fails_before_training(experiment, tmp_path):
    with pytest.raises(pm.PapermillExecutionError, match="training fraction"):
        run("02_teachers.ipynb", tmp_path, p=90)
    with pytest.raises(pm.PapermillExecutionError, match="tasks="):
        run("02_teachers.ipynb", tmp_path, tasks="T1+T4")


def test_a_moved_experiment_reruns_04_to_06(experiment, tmp_path):
    """Every path stored in an experiment is relative to it: moved away (the original gone), 04-06 run again on it."""
    if not (experiment / "results" / "table1.csv").exists():
        pytest.skip("needs the experiment of test_notebooks_run_in_order")
    moved = Path(shutil.move(experiment, tmp_path / "archive" / "experiment"))
    for folder in ("analysis", "gradcam", "results"):      # what 04-06 wrote: the re-run must write it again
        shutil.rmtree(moved / folder)
    run("04_error_analysis.ipynb", moved)
    run("05_gradcam.ipynb", moved, n_per_disease=1)
    run("06_results.ipynb", moved, n_boot=200)
    assert (moved / "analysis" / "examples.png").exists() and (moved / "gradcam" / "localisation.csv").exists()
    assert len(pd.read_csv(moved / "results" / "table1.csv")) == 3
