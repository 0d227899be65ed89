"""Seed-level (two-level bootstrap) comparisons beside the image-level ones: coverage, hand-computed values, tables."""
import numpy as np
import pandas as pd
import pytest

from mtkd_utils.analysis import bootstrap, comparisons
from mtkd_utils.io import write_csv


def preds_from(right: np.ndarray, prefix: str = "img") -> pd.DataFrame:
    """Predictions on len(right) test images: image i's coarse label is right where right[i]."""
    n = len(right)
    true = np.where(np.arange(n) % 2, "dr", "amd")
    return pd.DataFrame({"image_id": [f"{prefix}{i:04d}" for i in range(n)], "coarse_true": true,
                         "coarse_pred": np.where(right, true, "glaucoma"), "fine_true": "", "fine_pred": "",
                         "fine_top5": "", "text_true": "", "text_pred": "", "bleu": 0.0})


def draw_experiment(rng, n_seeds: int, n: int, delta: float, seed_sd: float) -> list[tuple]:
    """One experiment's (M1, M3) predictions per seed on one test split of n images. The recipe's true mean
    difference is delta; each training run moves M3 by its own N(0, seed_sd) (training randomness), and each test
    image carries an M3-advantage of ±0.1 that every seed shares (the test split is drawn once)."""
    shared = rng.choice([-0.1, 0.1], size=n)
    pairs = []
    for _ in range(n_seeds):
        a = rng.random(n) < 0.7
        b = rng.random(n) < 0.7 + delta + rng.normal(0, seed_sd) + shared
        pairs.append((preds_from(a), preds_from(b), None, None))
    return pairs


def test_seed_level_interval_covers_the_true_difference_where_seed_variance_dominates():
    rng = np.random.default_rng(0)
    delta, reps, n_seeds = 0.05, 200, 5
    covered, covered_pooled, ratios = 0, 0, []
    for rep in range(reps):
        pairs = draw_experiment(rng, n_seeds, n=400, delta=delta, seed_sd=0.06)
        res = bootstrap.seed_level_bootstrap(pairs, "T1_acc", n_boot=200, seed=rep)
        pooled = [pd.concat([p[side].assign(image_id=f"s{s}:" + p[side].image_id) for s, p in enumerate(pairs)])
                  for side in (0, 1)]
        image = bootstrap.paired_bootstrap(*pooled, "T1_acc", n_boot=200, seed=rep)
        assert res["diff"] == pytest.approx(np.mean(res["per_seed"])) == pytest.approx(image["diff"])
        covered += res["lo"] <= delta <= res["hi"]
        covered_pooled += image["lo"] <= delta <= image["hi"]
        ratios.append((res["hi"] - res["lo"]) / (image["hi"] - image["lo"]))
    # 200 draws: a true 95 % rate lands in [0.92, 0.98] with probability ~0.95 (the t quantile on 4 degrees of
    # freedom errs a little wide: ~0.965); the image-level interval treats each trained model as fixed and misses
    # the training randomness
    assert 0.92 <= covered / reps <= 0.995
    assert covered_pooled / reps < 0.8                                      # 0.655 on these draws
    assert np.median(ratios) > 2 and np.mean(np.array(ratios) > 1) > 0.95   # wider, but for a rare draw whose
    # five seeds happen to agree


def test_seed_level_values_by_hand():
    n = 200
    a = preds_from(np.arange(n) < 100)                                    # M1: 0.5 on every seed
    gains = (0.1, 0.2, 0.3)
    pairs = [(a, preds_from(np.arange(n) < 100 + round(g * n)).sample(frac=1.0, random_state=0), None, None)
             for g in gains]                                               # b's row order must not matter
    res = bootstrap.seed_level_bootstrap(pairs, "T1_acc", n_boot=2000)
    assert res["per_seed"] == pytest.approx(list(gains)) and res["diff"] == pytest.approx(0.2)
    assert (res["a"], res["b"], res["n_seeds"], res["n"]) == (pytest.approx(0.5), pytest.approx(0.7), 3, 3 * n)
    # the seeds' spread alone: sd 0.1 over 3 seeds, standard error 0.1/√3 ≈ 0.058; t(2) 97.5 % = 4.303
    seeds_only = 4.303 * 0.1 / np.sqrt(3)
    assert res["lo"] < 0.2 - seeds_only and res["hi"] > 0.2 + seeds_only
    assert res["hi"] - 0.2 == pytest.approx(0.2 - res["lo"])
    assert res["hi"] - res["lo"] < 2 * 4.303 * 0.075                      # images add a little, not a lot
    identical = bootstrap.seed_level_bootstrap([(a, a.copy(), None, None)] * 3, "T1_acc", n_boot=200)
    assert (identical["diff"], identical["lo"], identical["hi"], identical["p_value"]) == (0, 0, 0, 1.0)


def test_seed_level_refuses_one_seed_and_different_test_splits():
    a = preds_from(np.ones(10, bool))
    with pytest.raises(ValueError, match="needs at least 2"):
        bootstrap.seed_level_bootstrap([(a, a, None, None)], "T1_acc")
    other = preds_from(np.ones(10, bool), prefix="other")
    with pytest.raises(ValueError, match="different test images"):
        bootstrap.seed_level_bootstrap([(a, a, None, None), (other, other, None, None)], "T1_acc")


def test_kd_comparisons_give_per_seed_pooled_and_seed_level_rows(tmp_path):
    from mtkd_utils.tools import readme

    exp, n = tmp_path / "exp", 400
    rights = {"M1": (200, 210, 190), "M1b": (220, 230, 210), "M3": (260, 230, 250)}
    for model, per_seed in rights.items():
        for seed, right in enumerate(per_seed):
            run = exp / "students" / "T1+T2+T3" / f"p5_s{seed}" / model
            write_csv(preds_from(np.arange(n) < right), run / "predictions.csv")
    kd = comparisons.kd_comparisons(exp, ["T1_acc"], n_boot=300)
    m3_m1 = kd[kd.comparison == "M3 − M1"]
    assert list(m3_m1.seed) == [0, 1, 2, "pooled", "seed-level"]
    assert m3_m1["diff"].tolist() == pytest.approx([0.15, 0.05, 0.15, 0.35 / 3, 0.35 / 3])
    level = m3_m1.set_index("seed").loc["seed-level"]
    pooled = m3_m1.set_index("seed").loc["pooled"]
    assert level.hi - level.lo > pooled.hi - pooled.lo                      # seeds disagree: +0.15, +0.05, +0.15
    table = comparisons.claims_table(kd)
    row = table.loc[("T1+T2+T3", 5, "M3 − M1", "T1_acc")]
    assert row["seeds"] == "0, 1, 2" and row["per seed"] == "+0.150, +0.050, +0.150"
    assert row["image-level (pooled) [95 % CI]"].startswith("+0.117 [")
    assert row["seed-level [95 % CI]"].startswith("+0.117 [")
    (exp / "results").mkdir()
    kd.to_csv(exp / "results" / "kd_comparisons.csv", index=False)        # the README reads it back as text
    text = "\n".join(readme._comparisons(exp))
    assert "| T1+T2+T3 | 5 | M3 − M1 | T1_acc | 0, 1, 2 | +0.150, +0.050, +0.150 | +0.117 [" in text
    gain = readme._gains(exp).set_index("comparison").loc["M3 − M1"]       # the README's front table: both CIs
    assert gain.seed == "pooled" and readme._gain_text(gain) == \
        f"+0.117 [{pooled.lo:+.3f}, {pooled.hi:+.3f}]; seeds [{level.lo:+.3f}, {level.hi:+.3f}]"


def test_the_study_table_gives_seed_level_intervals_beside_the_pooled_ones(tmp_path):
    from mtkd_utils.analysis import study
    from mtkd_utils.tools import readme

    n, folders = 400, {}
    for name, per_seed in {"M1": (200, 210, 190), "M3": (260, 230, 250)}.items():
        for seed, right in enumerate(per_seed):
            folders[name, seed] = tmp_path / name / str(seed)
            write_csv(preds_from(np.arange(n) < right), folders[name, seed] / "predictions.csv")
    table = study.study_table(folders, ["M1", "M3"], [0, 1, 2], n_boot=300, p=5)
    m3 = table[(table.variant == "M3") & (table.metric == "T1_acc")].iloc[0]
    assert m3.per_seed == "+0.150, +0.050, +0.150" and m3.minus_M1 == pytest.approx(0.35 / 3)
    assert m3.seed_lo < m3.lo < m3.minus_M1 < m3.hi < m3.seed_hi             # the seeds disagree: wider
    assert np.isnan(table[table.metric == "T2_acc"].seed_lo).all()            # no T2 in these predictions
    assert "; seeds [" in study.readable_table(table).loc["M3 (ensemble)", "T1_acc"]
    assert "Seed-level" in study.conclusion(table) and "3 seeds: +0.150, +0.050, +0.150" in study.conclusion(table)
    (tmp_path / "study").mkdir()
    table.to_csv(tmp_path / "study" / "study.csv", index=False)
    text = "\n".join(readme._study(tmp_path, tmp_path))
    assert "| − M1, seed-level |" in text and f"| +0.117 [{m3.seed_lo:+.3f}, {m3.seed_hi:+.3f}] |" in text


def test_m1_at_its_plateau_keeps_the_schedule_validation_prefers(tmp_path):
    from mtkd_utils import presets, runs
    from mtkd_utils.data import prep
    from mtkd_utils.data.dataset import load_data
    from mtkd_utils.io import read_json, write_json
    from mtkd_utils.runs import RunKey
    from mtkd_utils.train import reload, steps

    exp, cfg = tmp_path / "exp", presets.config("smoke")
    prep.prepare_data(exp, cfg)
    data, key = load_data(exp, 15, cfg), RunKey(("T1",), 15, 0, "M1L")
    with pytest.raises(FileNotFoundError, match="02_teachers"):
        steps.run_student(exp, key, cfg, data)
    steps.train_teacher(exp, key, cfg, data)
    m1l = steps.run_student(exp, key, cfg, data)
    search = pd.read_csv(runs.student_dir(exp, key) / "schedule_search.csv")
    m1 = read_json(runs.teacher_dir(exp, key.with_model(None)) / "metrics.json")
    assert list(search.schedule) == [1, 2, 4] and list(search.updates) == [m1["updates"] * k for k in (1, 2, 4)]
    best = search.loc[search.val_score.idxmax()]
    assert (m1l["schedule"], m1l["updates"], m1l["checkpoint_dir"]) == (best.schedule, best.updates, best.folder)
    assert m1l["longest_chosen"] == (best.schedule == 4) and search.folder[0] == "teachers/p15_s0/T1"
    assert m1l["test"]["T1_acc"] >= 0 and read_json(runs.student_dir(exp, key) / "metrics.json") == m1l
    model, _ = reload.load_student(exp, key)                               # 04 and 05 find its weights
    assert model.tasks == ("T1",)
    metrics_path = runs.student_dir(exp, key) / "metrics.json"
    for folder in search.folder:             # whichever schedule validation chose (a schedule folder has no config)
        write_json({**m1l, "checkpoint_dir": folder}, metrics_path, checksum=True)
        model, _ = reload.load_student(exp, key)
        assert runs.trained_model_dir(exp, key) == exp / folder and model.tasks == ("T1",)
    write_json(m1l, metrics_path, checksum=True)
    assert steps.run_student(exp, key, cfg, data) == m1l                    # finished: not trained again
