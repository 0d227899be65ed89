"""Notebook 07 (when KD pays): its pieces on hand-built inputs, and the notebook end to end on the smoke preset."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import run_notebook

from mtkd_utils import presets
from mtkd_utils.analysis import study
from mtkd_utils.analysis.study_rows import harden
from mtkd_utils.runs import RunKey


def test_harden_puts_all_mass_on_the_teachers_argmax():
    store = {"T1": torch.tensor([[[0.1, 2.0, -1.0]]]).half(), "T3_val": torch.tensor([[[[3.0, 1.0]]]]).half(),
             "T3_rest": torch.zeros(1, 1, 1, 2), "T3_idx": torch.tensor([[[[4, 7]]]]), "meta": {"x": 1}}
    hard = harden(store)
    assert torch.equal(hard["T1"].float().softmax(-1).round(), torch.tensor([[[0.0, 1.0, 0.0]]]))
    assert torch.equal(hard["T3_val"].float().softmax(-1).round(), torch.tensor([[[[1.0, 0.0]]]]))
    assert "T3_rest" not in hard and hard["hard"] and hard["meta"] == {"x": 1}     # meta kept: the cache is reused
    assert torch.equal(hard["T3_idx"], store["T3_idx"])


def test_variants_need_the_baseline_and_the_recipe():
    with pytest.raises(ValueError, match="include M1 and M3"):
        study.check_variants(["M1", "M2"])
    with pytest.raises(ValueError, match="choose among"):
        study.check_variants(["M1", "M3", "dropout"])
    assert study.check_variants(["topk_t3", "M3", "M1"]) == ["M1", "M3", "topk_t3"]     # table order


def test_only_the_same_seed_ablation_and_the_longer_m1_train_their_own_teachers(tmp_path):
    for name in ("same_seed", "M1_long", "no_noise", "topk_t3", "natural_share", "self_training", "paper_recipe"):
        folder = study.variant_experiment(tmp_path, name)
        own = name in ("same_seed", "M1_long")
        assert (folder / "data").is_symlink() and (folder / "teachers").is_symlink() == (not own)
    assert study.variant_experiment(tmp_path, "M3") == tmp_path
    paper = study.variant_config(tmp_path, "paper_recipe", RunKey("T1+T2+T3", 15, 0), presets.config("demo"))
    assert (paper.tau_grid, paper.alpha_grid) == ((10.0,), (0.95,))        # not pinned to the recipe's choice


def test_the_longer_m1_doubles_every_part_of_its_schedule(tmp_path):
    cfg = presets.config("demo")
    long = study.variant_config(tmp_path, "M1_long", RunKey("T1+T2+T3", 15, 0), cfg)
    assert (long.epochs, long.min_steps, long.patience) == (80, 1200, 80)
    assert long.updated(epochs=cfg.epochs, min_steps=cfg.min_steps, patience=cfg.patience) == cfg   # nothing else


def _row(variant, diff, lo, hi, ingredient=None, gain=np.nan, glo=np.nan, ghi=np.nan):
    return dict(variant=variant, label=variant, metric="T1_acc", score=0.5 + diff, minus_M1=diff, lo=lo, hi=hi,
                p_value=0.01, ingredient=ingredient, n_seeds=3, n=300, M3_minus=gain, M3_lo=glo, M3_hi=ghi)


def test_the_conclusion_follows_the_numbers():
    pays = pd.DataFrame([_row("M1", 0, 0, 0), _row("M3", 0.05, 0.02, 0.08),
                         _row("ensemble", 0.06, 0.03, 0.09, gain=-0.01, glo=-0.03, ghi=0.01),
                         _row("no_noise", 0.01, -0.02, 0.04, "student noise", 0.04, 0.01, 0.07),
                         _row("topk_t3", 0.05, 0.02, 0.08, "exact T3 KD", 0.0, -0.02, 0.02)])
    text = study.conclusion(pays)
    assert "+5.0 points [+2.0, +8.0]" in text and "KD pays" in text
    assert "M3 does not beat its teacher ensemble" in text and "little to distil" not in text
    assert text.endswith("significantly: student noise")
    fails = pays.assign(lo=pays.lo - 0.1, M3_lo=pays.M3_lo - 0.1)
    assert "does not pay" in study.conclusion(fails) and "none" in study.conclusion(fails)
    assert "little to distil" in study.conclusion(fails)
    short = pd.concat([pays, pd.DataFrame([_row("M1_long", 0.03, 0.01, 0.05, gain=0.02, glo=-0.01, ghi=0.05)])])
    text = study.conclusion(short)
    assert "M3 does not beat M1 trained twice as long" in text and "stops short of its plateau" in text
    assert "not yet converged" in text and "trained to convergence" not in text
    plateau = short.assign(lo=short.lo.where(short.variant != "M1_long", -0.01))
    assert "M1's schedule is at its plateau" in study.conclusion(plateau)


def test_notebook_07_runs_on_smoke(tmp_path):
    run_notebook("07_when_kd_pays.ipynb", tmp_path, p=15, seeds=[0], ps=[15], curve_passes=2.0, n_boot=200)
    table = pd.read_csv(tmp_path / "study" / "study.csv")
    assert list(dict.fromkeys(table.variant)) == list(study.VARIANTS) and len(table) == len(study.METRICS) * len(study.VARIANTS)
    m3 = json.loads((tmp_path / "students" / "T1+T2+T3" / "p15_s0" / "M3" / "metrics.json").read_text())
    row = table[(table.variant == "M3") & (table.metric == "T1_acc")].iloc[0]
    assert row.score == pytest.approx(m3["test"]["T1_acc"]) and row.n == m3["test"]["n"]
    assert table[table.variant == "M1"].minus_M1.abs().max() == 0
    assert table[table.ingredient.notna()].M3_minus.notna().all() and table[table.variant == "M3"].M3_minus.isna().all()
    ablation = json.loads((tmp_path / "study" / "no_noise" / "students" / "T1+T2+T3" / "p15_s0" / "M3"
                           / "config.json").read_text())["config"]
    assert not ablation["student_augment"] and ablation["tau_grid"] == [m3["tau"]]   # the recipe's choice, pinned
    curve = pd.read_csv(tmp_path / "study" / "passes_curve.csv")
    assert curve.passes.iloc[-1] <= 2.0 and (tmp_path / "study" / "study.png").exists()
    assert len(pd.read_csv(tmp_path / "study" / "gain_vs_p.csv")) == len(study.METRICS)
    assert {"T3_ciderD", "T3_findings_f1"} <= set(table.metric)       # T3 judged on more than BLEU
    executed = (tmp_path / "executed" / "07_when_kd_pays.ipynb").read_text()
    assert "M3 − M1 on T1_acc" in executed
