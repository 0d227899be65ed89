"""The notebooks executed end to end by papermill on the smoke preset (a real, tiny experiment)."""
import json
from pathlib import Path

import pandas as pd
import papermill as pm
import pytest

from conftest import REPO, run_notebook as run

from mtkd_utils import batch


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("exp")


def test_notebooks_run_in_order(experiment):
    run("01_data_prep.ipynb", experiment)
    assert (experiment / "data" / "splits.csv").exists() and (experiment / "data" / "figures" / "samples.png").exists()
    run("02_teachers.ipynb", experiment, p=15)
    assert len(list((experiment / "teachers" / "p15_s0").glob("*/checkpoint.pt"))) == 7
    run("03_student_mtl_kd.ipynb", experiment, p=15)
    for model in ("M1", "M2", "M3"):
        run_dir = experiment / "students" / "T1+T2+T3" / "p15_s0" / model
        metrics = json.loads((run_dir / "metrics.json").read_text())
        preds = pd.read_csv(run_dir / "predictions.csv", dtype=str, keep_default_na=False)
        assert metrics["test"]["T1_acc"] == pytest.approx((preds.coarse_pred == preds.coarse_true).mean())
        assert metrics["model"] == model and len(preds) == metrics["test"]["n"]
        assert all((run_dir / name).exists() for name in ("predictions.csv", "config.json", "split.csv"))
        if model != "M1":
            assert metrics["tau"] in (2.0, 5.0)                # chosen from the smoke grid on validation
            assert (run_dir / "soft_targets.pt").exists()      # the teachers ran once, for every tau
    run("04_error_analysis.ipynb", experiment)
    counts = pd.read_csv(experiment / "analysis" / "supplement_counts.csv", index_col=0)
    assert {"M1 p=15", "M2 p=15", "M3 p=15"} <= set(counts.columns)
    assert (experiment / "analysis" / "examples.png").exists()
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


def test_architecture_overrides_reach_every_notebook(tmp_path):
    """--set image_size / backbone / head_hidden train, and 04-06 rebuild the models from each run's config.json."""
    exp = tmp_path / "exp"
    overrides = ["--set", "image_size=48", "--set", "backbone=resnet18", "--set", "head_hidden=16"]
    assert batch.main(["--preset", "smoke", "--experiment-dir", str(exp), "--p", "15", *overrides]) == 0
    m3 = exp / "students" / "T1+T2+T3" / "p15_s0" / "M3"
    trained = json.loads((m3 / "config.json").read_text())["config"]
    assert (trained["image_size"], trained["backbone"], trained["head_hidden"]) == (48, "resnet18", 16)
    gradcam = (exp / "runs" / "gradcam" / "all" / "05_gradcam.ipynb").read_text()
    assert "CAMs at 48 px" in gradcam                          # not the preset's 32 px
    loc = pd.read_csv(exp / "gradcam" / "localisation.csv")
    assert {"M1 p=15", "M3 p=15", "randomised M3 p=15"} <= set(loc.run)
    tau = json.loads((m3 / "metrics.json").read_text())["tau"]
    values = {"<P>": "15", "<seed>": "0", "<tasks>": "T1+T2+T3", "<model>": "M3", "<τ>": f"{tau:g}", "<size>": "48",
              "<stage>": "teachers", "<key>": "p15_s0"}
    missing = [path for path in architecture_paths(values) if not (exp / path).exists()]
    assert not missing, f"docs/ARCHITECTURE.md names paths the code did not write: {missing}"


def architecture_paths(values: dict[str, str]) -> list[str]:
    """The experiment-folder paths docs/ARCHITECTURE.md lists, with its placeholders filled in."""
    text = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    block = text.split("## Experiment folder", 1)[1].split("```", 2)[1]
    paths = [line.split()[0] for line in block.splitlines() if line.strip()]
    for placeholder, value in values.items():
        paths = [p.replace(placeholder, value) for p in paths]
    assert paths and not [p for p in paths if "<" in p], paths   # every placeholder known
    return paths
