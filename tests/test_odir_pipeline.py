"""A small run of the whole pipeline on an ODIR-5K-format fixture, through the notebooks (issue 6)."""
import json

import pandas as pd
from conftest import ODIR_HEADER, ODIR_ROWS
from conftest import odir_jpeg as _jpeg
from conftest import run_notebook as run

from mtkd_utils.runs import manifest_path


def odir_folder(root, n_patients: int = 36):
    """An ODIR-5K folder with n patients cycling through real keyword rows (unusable images included)."""
    images = root / "ODIR-5K_Training_Dataset"
    records = []
    for i in range(n_patients):
        _, age, sex, left, right, flags = ODIR_ROWS[i % len(ODIR_ROWS)]
        records.append([i, age, sex, f"{i}_left.jpg", f"{i}_right.jpg", left, right, *flags])
        for eye in ("left", "right"):
            _jpeg(images / f"{i}_{eye}.jpg", seed=i * 7 + (eye == "left"), size=(64, 72))
    pd.DataFrame(records, columns=ODIR_HEADER).to_excel(root / "ODIR-5K_Training_Annotations(Updated)_V2.xlsx", index=False)
    return root


def test_odir_fixture_runs_through_the_notebooks(tmp_path):
    """01-06 end to end on data without lesion masks: 05 draws the CAM figure and says it cannot score them."""
    source = odir_folder(tmp_path / "ODIR-5K")
    exp = tmp_path / "exp"
    run("01_data_prep.ipynb", exp, source="odir", source_path=str(source))
    info = json.loads((exp / "data" / "dataset.json").read_text())
    manifest = pd.read_csv(manifest_path(exp), dtype=str, keep_default_na=False)
    # the 6 eyes with only 'low image quality' are left out; the 6 with lens dust beside 'normal fundus' are kept
    assert info["source"] == "odir" and len(manifest) == 72 - 6
    # all three tasks: 04's error analysis crosses coarse x fine x BLEU
    run("02_teachers.ipynb", exp, p=45, tasks="T1+T2+T3")
    run("03_student_mtl_kd.ipynb", exp, p=45, tasks="T1+T2+T3", models=["M1", "M3"])
    metrics = json.loads((exp / "students" / "T1+T2+T3" / "p45_s0" / "M3" / "metrics.json").read_text())
    assert set(metrics["test"]) >= {"T1_acc", "T2_acc", "T3_bleu4"}
    assert set(metrics["test"]) >= {"T1_auroc", "T1_ece", "T1_odir_score", "T3_rougeL"}   # the ODIR label set
    run("04_error_analysis.ipynb", exp, focus="M3")
    gradcam = run("05_gradcam.ipynb", exp, n_per_disease=1).read_text()
    assert "localisation cannot be scored" in gradcam
    assert (exp / "gradcam" / "gradcam_M3.png").exists()                 # the figure, without annotations
    loc = pd.read_csv(exp / "gradcam" / "localisation.csv")
    assert {"M1 p=45", "M3 p=45", "randomised M3 p=45"} <= set(loc.run) and (loc.n_scored == 0).all()
    run("06_results.ipynb", exp, metrics=["T1_acc", "T2_acc", "T3_bleu4"], n_boot=100)
    assert (exp / "results" / "table1.csv").exists()
