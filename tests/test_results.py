"""Results: collecting metrics, Table 1 (mean ± std, τ marks, blanks), saving, figures, paired bootstrap."""
import json
import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from mtkd_utils.analysis import bootstrap, comparisons, convergence, results
from mtkd_utils.data.text import corpus_bleu4, tokenize
from mtkd_utils.io import write_csv, write_json


def write_run(exp, tasks, p, seed, model, tau, **test):
    """A hand-made students/<tasks>/p<P>_s<seed>/<model>/metrics.json as 03_student_mtl_kd writes it."""
    path = exp / "students" / tasks / f"p{p}_s{seed}" / model / "metrics.json"
    write_json({"model": model, "tasks": tasks.split("+"), "p": float(p), "seed": seed, "tau": tau,  # a float, as 03
                "val": {}, "test": test, "per_disease": {}}, path)


@pytest.fixture
def experiment(tmp_path):
    exp = tmp_path / "exp"
    # T1+T2+T3 at p = 15, two seeds; M3's seeds chose different temperatures
    for seed, (a1, a2, b4) in enumerate([(0.70, 0.30, 0.20), (0.74, 0.34, 0.24)]):
        write_run(exp, "T1+T2+T3", 15, seed, "M1", None, T1_acc=a1, T2_acc=a2, T3_bleu4=b4, T1_macro_f1=0.5)
        write_run(exp, "T1+T2+T3", 15, seed, "M2", 5.0, T1_acc=a1 + 0.02, T2_acc=a2, T3_bleu4=b4, T1_macro_f1=0.5)
        write_run(exp, "T1+T2+T3", 15, seed, "M3", [2.0, 5.0][seed], T1_acc=a1 + 0.04, T2_acc=a2, T3_bleu4=b4,
                  T1_macro_f1=0.5)
    # T1+T2 at p = 70, one seed, M2 only: no T3 column at all
    write_run(exp, "T1+T2", 70, 0, "M2", 2.0, T1_acc=0.8, T2_acc=0.45, T1_macro_f1=0.6)
    return exp


def test_collect_metrics(experiment):
    df = results.collect_metrics(experiment)
    assert len(df) == 7
    assert df.p.dtype.kind == "i"   # 15.0 in the files, 15 in tables
    assert list(df.tasks.unique()) == ["T1+T2", "T1+T2+T3"]   # pairs before the triple, as in the paper
    row = df[(df.model == "M3") & (df.seed == 1)].iloc[0]
    assert (row.tasks, row.p, row.tau, row.T1_acc) == ("T1+T2+T3", 15, 5.0, pytest.approx(0.78))
    assert math.isnan(df[df.tasks == "T1+T2"].iloc[0].T3_bleu4)


def test_table1_mean_std_tau_and_blanks(experiment):
    df = results.collect_metrics(experiment)
    table = results.table1(df)
    assert list(table.index) == [("T1+T2", "M2"), ("T1+T2+T3", "M1"), ("T1+T2+T3", "M2"), ("T1+T2+T3", "M3")]
    assert list(table.columns) == [(m, p) for m in ("T1_acc", "T2_acc", "T3_bleu4") for p in (15, 70)]
    # seeds 0.70 and 0.74: mean 0.720, sample std 0.02·√2 = 0.028
    assert table.loc[("T1+T2+T3", "M1"), ("T1_acc", 15)] == "0.720 ± 0.028"          # M1: no τ
    assert table.loc[("T1+T2+T3", "M2"), ("T1_acc", 15)] == "0.740 ± 0.028 (τ=5)"
    assert table.loc[("T1+T2+T3", "M3"), ("T1_acc", 15)] == "0.760 ± 0.028 (τ=2,5)"  # seeds disagree
    assert table.loc[("T1+T2+T3", "M3"), ("T3_bleu4", 15)] == "0.220 ± 0.028 (τ=2,5)"
    assert table.loc[("T1+T2", "M2"), ("T2_acc", 70)] == "0.450 (τ=2)"               # one seed: no ±
    assert table.loc[("T1+T2", "M2"), ("T3_bleu4", 70)] == ""                        # the combination lacks T3
    assert table.loc[("T1+T2+T3", "M1"), ("T1_acc", 70)] == ""                       # not run at p = 70

    stats = results.table1_stats(df).set_index(["tasks", "model", "metric", "p"])
    s = stats.loc[("T1+T2+T3", "M3", "T1_acc", 15)]
    assert s["mean"] == pytest.approx(0.76) and s["std"] == pytest.approx(0.02 * math.sqrt(2))
    assert s["n_seeds"] == 2 and s["taus"] == "2,5"
    with pytest.raises(ValueError, match="T9_acc"):
        results.table1(df, metrics=("T9_acc",))


def test_save_table(experiment, tmp_path):
    table = results.table1(results.collect_metrics(experiment))
    paths = results.save_table(table, tmp_path / "out" / "table1")
    assert [p.name for p in paths] == ["table1.csv", "table1.md", "table1.tex"]
    csv = pd.read_csv(paths[0], keep_default_na=False)
    assert list(csv.columns[:3]) == ["tasks", "model", "T1_acc p=15"]
    assert csv.loc[3, "T1_acc p=15"] == "0.760 ± 0.028 (τ=2,5)"
    md = paths[1].read_text().splitlines()
    assert len(md) == 2 + 4 and md[0].startswith("| tasks | model | T1_acc p=15 |")
    assert all(line.count("|") == md[0].count("|") for line in md)
    tex = paths[2].read_text()
    assert r"\toprule" in tex and r"T1\_acc" in tex and r"0.760 $\pm$ 0.028 ($\tau$=2,5)" in tex
    assert "±" not in tex and "τ" not in tex


def test_plot_vs_p(experiment, tmp_path):
    df = results.collect_metrics(experiment)
    fig = results.plot_vs_p(df, ["T1_acc", "T3_bleu4"], tmp_path / "fig" / "vs_p")
    assert len(fig.axes) == 2 and (tmp_path / "fig" / "vs_p.png").stat().st_size > 0
    assert (tmp_path / "fig" / "vs_p.pdf").exists()
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["M1", "M2", "M3"]
    assert "std over seeds" in fig.texts[0].get_text()
    plt.close(fig)
    fig = results.plot_vs_p(df, ["T1_acc", "T3_bleu4"], baseline=pd.Series({"T1_acc": 0.4}))
    t1, t3 = ([t.get_text() for t in ax.get_legend().get_texts()] for ax in fig.axes)
    assert "commonest class" in t1 and "commonest class" not in t3
    fig.canvas.draw()
    for ax in fig.axes:                                     # legends outside the data, below each panel
        assert ax.get_legend().get_window_extent().y1 < ax.get_window_extent().y0
    assert 0.4 in [line.get_ydata()[0] for line in fig.axes[0].get_lines() if line.get_linestyle() == "--"]
    plt.close(fig)


def test_plot_single_seed_uses_bootstrap_ci(tmp_path):
    exp = tmp_path / "exp"
    n = 300
    for model, right in (("M1", 150), ("M2", 180), ("M3", 210)):
        for p in (15, 70):
            write_run(exp, "T1+T2+T3", p, 0, model, None if model == "M1" else 2.0, T1_acc=right / n)
            write_csv(make_preds(n, np.arange(n) < right), exp / f"students/T1+T2+T3/p{p}_s0/{model}/predictions.csv")
    fig = results.plot_vs_p(results.collect_metrics(exp), "T1_acc", tmp_path / "single")
    assert "bootstrap CI" in fig.texts[0].get_text()
    # the error bar of M1 at p = 15 spans the 95 % CI of 150/300 right: about ± 0.057
    bars = fig.axes[0].containers[0][2][0].get_segments()
    low, high = bars[0][:, 1]
    assert 0.5 - 0.075 < low < 0.5 - 0.04 and 0.5 + 0.04 < high < 0.5 + 0.075
    plt.close(fig)


def test_plot_single_seed_ci_missing_the_estimate(tmp_path):
    # seen on the smoke preset: a corpus BLEU-4 of ~1e-230 (no 4-gram match) stored a hair off what
    # the bootstrap recomputes: the error bar must not go negative
    exp = tmp_path / "exp"
    preds = make_preds(20, [True] * 20, text_pred=["amd"] * 20)
    write_run(exp, "T1+T2+T3", 15, 0, "M1", None, T1_acc=1.0, T3_bleu4=1e-80)
    write_csv(preds, exp / "students/T1+T2+T3/p15_s0/M1/predictions.csv")
    fig = results.plot_vs_p(results.collect_metrics(exp), "T3_bleu4")
    assert "bootstrap CI" in fig.texts[0].get_text()
    plt.close(fig)


# ---------------------------------------------------------------- bootstrap

def make_preds(n, coarse_correct, text_pred=None, bleu=None):
    """Hand-made predictions: image i's coarse label is right where coarse_correct[i]."""
    ids = [f"img{i:04d}" for i in range(n)]
    true = ["dr" if i % 2 else "amd" for i in range(n)]
    pred = [t if ok else "glaucoma" for t, ok in zip(true, coarse_correct)]
    texts = [f"{t} with small lesions near the disc" for t in true]
    return pd.DataFrame({"image_id": ids, "coarse_true": true, "coarse_pred": pred, "fine_true": "", "fine_pred": "",
                         "fine_top5": "", "text_true": texts, "text_pred": text_pred or texts,
                         "bleu": bleu if bleu is not None else [1.0] * n})


def test_identical_predictions_give_zero():
    rng = np.random.default_rng(1)
    preds = make_preds(200, rng.random(200) < 0.6, bleu=list(rng.random(200)))
    for metric in ("T1_acc", "T3_bleu", "T3_bleu4"):
        res = bootstrap.paired_bootstrap(preds, preds.copy(), metric, n_boot=500)
        assert (res["diff"], res["lo"], res["hi"], res["p_value"]) == (0.0, 0.0, 0.0, 1.0)


def test_known_difference_lies_in_a_narrow_paired_ci():
    n = 1000
    a_ok = np.arange(n) < 600          # a: 60 % right
    b_ok = np.arange(n) < 700          # b: the same 600 right, and 100 more: +0.10
    a, b = make_preds(n, a_ok), make_preds(n, b_ok)
    res = bootstrap.paired_bootstrap(a, b.sample(frac=1.0, random_state=0), "T1_acc")   # b's row order must not matter
    assert res["a"] == pytest.approx(0.6) and res["b"] == pytest.approx(0.7)
    assert res["diff"] == pytest.approx(0.1)
    assert res["lo"] < 0.1 < res["hi"] and res["lo"] > 0
    # paired: only the 100 changed images vary, sd √(0.1·0.9/1000) ≈ 0.0095, so the CI is ≈ ±0.019
    assert res["hi"] - res["lo"] < 0.05
    assert res["p_value"] < 0.01
    with pytest.raises(ValueError, match="same test images"):
        bootstrap.paired_bootstrap(a, b.iloc[:-1], "T1_acc")
    with pytest.raises(ValueError, match="metric='T4_acc'"):
        bootstrap.paired_bootstrap(a, b, "T4_acc")


def test_corpus_bleu_statistic_matches_nltk():
    refs = ["mild diabetic retinopathy with a few microaneurysms", "normal fundus", "large drusen at the macula",
            "cupped optic disc with thin rim", "pigmented lesion near the arcade"]
    hyps = ["mild diabetic retinopathy with microaneurysms", "normal fundus with no lesions", "drusen at the macula",
            "cupped optic disc with a thin rim", "a pigmented lesion near the inferior arcade"]
    preds = make_preds(5, [True] * 5, text_pred=hyps)
    preds["text_true"] = refs
    expected = corpus_bleu4([tokenize(r) for r in refs], [tokenize(h) for h in hyps])
    ci = bootstrap.bootstrap_ci(preds, "T3_bleu4", n_boot=200)
    assert ci["value"] == pytest.approx(expected, rel=1e-12)
    # no 4-gram match anywhere: nltk's floor value, not 0; no unigram match: 0
    preds["text_pred"] = ["normal fundus"] * 5
    floor = corpus_bleu4([tokenize(r) for r in refs], [["normal", "fundus"]] * 5)
    assert 0 < floor < 1e-100
    assert bootstrap.bootstrap_ci(preds, "T3_bleu4", n_boot=50)["value"] == pytest.approx(floor, rel=1e-9, abs=0)
    preds["text_pred"] = ["xyz"] * 5
    assert bootstrap.bootstrap_ci(preds, "T3_bleu4", n_boot=50)["value"] == 0.0
    assert ci["lo"] <= ci["value"] <= ci["hi"]


def test_compare_m3_m1_reads_predictions(tmp_path):
    exp = tmp_path / "exp"
    n = 400
    for seed in (0, 1):
        run = exp / "students" / "T1+T3" / f"p15_s{seed}"
        write_csv(make_preds(n, np.arange(n) < 200), run / "M1" / "predictions.csv")
        write_csv(make_preds(n, np.arange(n) < 260), run / "M3" / "predictions.csv")
    write_csv(make_preds(n, np.arange(n) < 200), exp / "students" / "T1+T3" / "p70_s0" / "M1" / "predictions.csv")
    table = comparisons.compare_m3_m1(exp, n_boot=300)
    # T2 is absent from these predictions; p70 has no M3 yet; the two seeds also pooled and seed-level, after them
    assert set(zip(table.metric, table.seed)) == {(m, s) for m in ("T1_acc", "T3_bleu4")
                                                  for s in (0, 1, "pooled", "seed-level")}
    t1 = table[table.metric == "T1_acc"]
    assert list(t1.seed) == [0, 1, "pooled", "seed-level"] and list(t1.n) == [n, n, 2 * n, 2 * n]
    assert list(t1["M3-M1"]) == pytest.approx([0.15, 0.15, 0.15, 0.15])
    one_seed = bootstrap.paired_bootstrap(make_preds(n, np.arange(n) < 200), make_preds(n, np.arange(n) < 260),
                                          "T1_acc", n_boot=300)
    pooled = t1.iloc[2]
    assert pooled.hi - pooled.lo < one_seed["hi"] - one_seed["lo"]   # twice the images: a narrower interval
    assert (t1.lo < 0.15).all() and (t1.hi > 0.15).all() and set(t1.p) == {15} and set(t1.tasks) == {"T1+T3"}
    assert list(table[table.metric == "T3_bleu4"]["M3-M1"]) == [0.0] * 4   # the same sentences


def test_constant_baseline_is_the_commonest_test_class(tmp_path):
    exp = tmp_path / "exp"
    preds = pd.DataFrame({"coarse_true": ["a", "a", "a", "b"], "fine_true": ["x", "y", "z", "z"]})
    write_csv(preds, exp / "students" / "T1+T2" / "p15_s0" / "M1" / "predictions.csv")
    base = results.constant_baseline(exp)
    # T1 always 'a': F1 of a = 2·0.75·1/1.75, of b = 0; T2 always 'z': F1 of z = 2/3, of x and y = 0
    assert base.to_dict() == pytest.approx({"T1_acc": 0.75, "T1_balanced_acc": 0.5, "T1_macro_f1": 3 / 7,
                                            "T2_acc": 0.5, "T2_balanced_acc": 1 / 3, "T2_macro_f1": 2 / 9})
    assert "T1_acc 0.750" in results.baseline_note(base) and "T2_acc 0.500" in results.baseline_note(base)
    assert results.constant_baseline(tmp_path / "empty").empty
    assert results.baseline_note(results.constant_baseline(tmp_path)) == ""


def test_bootstrap_any_metric_covers_the_estimate():
    from mtkd_utils.data.manifest import LabelMap
    from mtkd_utils.train.metrics import task_metrics

    labels = LabelMap.from_pairs(["amd", "dr", "glaucoma"], [("amd", "amd"), ("dr", "dr"), ("glaucoma", "glaucoma")])
    rng = np.random.default_rng(3)
    n = 300
    preds = make_preds(n, rng.random(n) < 0.7, bleu=list(rng.random(n)))
    preds["text_pred"] = [t if ok else "normal fundus" for t, ok in zip(preds.text_true, rng.random(n) < 0.5)]
    y = preds.coarse_true.map({c: i for i, c in enumerate(labels.coarse)}).to_numpy()
    logits = rng.normal(size=(n, 3)) + 2 * np.eye(3)[y]
    probs = {"T1": np.exp(logits) / np.exp(logits).sum(1, keepdims=True)}
    point = task_metrics(preds, labels, probs)
    asked = ["T1_balanced_acc", "T1_macro_f1", "T1_kappa", "T1_auroc", "T1_aupr", "T1_ece", "T1_nll", "T3_rougeL"]
    table = bootstrap.bootstrap_table(preds, asked + ["T2_acc"], labels, probs, n_boot=200)
    assert list(table.metric) == asked   # no T2 in these predictions
    for row in table.itertuples():
        assert row.value == pytest.approx(point[row.metric]) and row.lo <= row.value <= row.hi, row.metric
        assert row.hi - row.lo > 0
    with pytest.raises(ValueError, match="need probs="):
        bootstrap.bootstrap_ci(preds, "T1_auroc", n_boot=10, labels=labels)
    with pytest.raises(ValueError, match="pass labels="):
        bootstrap.bootstrap_ci(preds, "T1_kappa", n_boot=10)
    # paired, any metric: b is a with its probabilities sharpened (same argmax), so the same kappa, lower NLL
    sharp = {"T1": probs["T1"] ** 3 / (probs["T1"] ** 3).sum(1, keepdims=True)}
    same = bootstrap.paired_bootstrap(preds, preds, "T1_kappa", n_boot=100, labels=labels, probs_a=probs, probs_b=sharp)
    assert (same["diff"], same["lo"], same["hi"]) == (0.0, 0.0, 0.0)
    shuffled = preds.sample(frac=1.0, random_state=1)
    nll = bootstrap.paired_bootstrap(preds, shuffled, "T1_nll", n_boot=100, labels=labels, probs_a=probs,
                                   probs_b={"T1": sharp["T1"][shuffled.index.to_numpy()]})
    assert nll["a"] == pytest.approx(point["T1_nll"]) and nll["lo"] <= nll["diff"] <= nll["hi"]


def test_bootstrap_sums_give_scikit_learns_values():
    """Balanced accuracy, macro-F1, kappa (plain and quadratic), top-k, ECE, NLL from per-image sums, as sklearn."""
    from mtkd_utils.data.manifest import LabelMap
    from mtkd_utils.train.metrics import task_metrics

    fine = [f"g{i}" for i in range(6)]
    labels = LabelMap.from_pairs(["normal", "dr"], [(f, "normal" if i < 2 else "dr") for i, f in enumerate(fine)],
                                 ordered=["fine"])
    rng = np.random.default_rng(5)
    n = 250
    y = rng.integers(0, 6, n)
    logits = rng.normal(size=(n, 6)) + 1.2 * np.eye(6)[y]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    top = np.argsort(-probs, 1)[:, :5]
    preds = pd.DataFrame({"image_id": range(n), "coarse_true": "", "coarse_pred": "",
                          "fine_true": [fine[i] for i in y], "fine_pred": [fine[t[0]] for t in top],
                          "fine_top5": ["|".join(fine[i] for i in t) for t in top], "text_true": "", "text_pred": ""})
    point = task_metrics(preds, labels, {"T2": probs})
    for metric in ("T2_balanced_acc", "T2_macro_f1", "T2_kappa", "T2_top2", "T2_ece", "T2_nll"):
        ci = bootstrap.bootstrap_ci(preds, metric, n_boot=50, labels=labels, probs={"T2": probs})
        assert ci["value"] == pytest.approx(point[metric], rel=1e-9), metric


def test_weighted_auroc_and_average_precision_match_scikit_learn_with_ties():
    from sklearn.metrics import average_precision_score, roc_auc_score

    rng = np.random.default_rng(2)
    positive = rng.random(300) < 0.3
    score = np.round(np.clip(0.3 * positive + rng.random(300) * 0.7, 0, 1), 1)   # rounded: many tied scores
    w = rng.multinomial(300, np.full(300, 1 / 300), size=4).astype(float)        # bootstrap counts, zeros included
    auroc, ap = bootstrap._ranked_scores(positive, score, w)
    assert auroc == pytest.approx([roc_auc_score(positive, score, sample_weight=wi) for wi in w])
    assert ap == pytest.approx([average_precision_score(positive, score, sample_weight=wi) for wi in w])


def test_cis_figures_and_screening_of_an_experiment(tmp_path):
    """run_cis / ci_table / metric_figures / screening_table / the README block on hand-made run folders."""
    from mtkd_utils.data.manifest import LabelMap
    from mtkd_utils.tools import readme
    from mtkd_utils.train.metrics import disease_vs_normal

    labels = LabelMap.from_pairs(["normal", "amd", "dr"], [("normal", "normal"), ("amd", "amd"), ("dr", "dr")])
    exp = tmp_path / "exp"
    labels.save(exp / "data" / "label_map.json")
    rng = np.random.default_rng(0)
    n = 120
    y = rng.integers(0, 3, n)
    for p in (15, 70):
        for model in ("M1", "M2", "M3"):
            logits = rng.normal(size=(n, 3)) + (1 + p / 50) * np.eye(3)[y]
            probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
            names = [labels.coarse[i] for i in y]
            preds = make_preds(n, [True] * n).assign(coarse_true=names,
                                                     coarse_pred=[labels.coarse[i] for i in probs.argmax(1)],
                                                     fine_true=names, fine_pred="")
            run = exp / "students" / "T1+T3" / f"p{p}_s0" / model
            write_csv(preds, run / "predictions.csv")
            np.save(run / "probs_T1.npy", probs.astype(np.float32))
            write_json({"model": model, "tasks": ["T1", "T3"], "p": float(p), "seed": 0, "tau": None, "val": {},
                        "test": {"T1_acc": float((probs.argmax(1) == y).mean())},
                        "disease_vs_normal": disease_vs_normal(preds, labels)}, run / "metrics.json")
    cis = results.run_cis(exp, ["T1_acc", "T1_auroc", "T1_ece", "T2_acc", "T3_rougeL"], n_boot=100)
    assert len(cis) == 6 * 4 and set(cis.metric) == {"T1_acc", "T1_auroc", "T1_ece", "T3_rougeL"}   # no T2 here
    assert ((cis.lo <= cis.value) & (cis.value <= cis.hi)).all()
    table = results.ci_table(cis)
    assert table.shape[0] == 6 and table.iloc[0]["T1_auroc"].count("[") == 1
    figs = results.metric_figures(exp, exp / "results", ps=(15, 70, 45))
    for stem in ("roc_T1", "reliability_T1", "confusion_T1_M1", "confusion_T1_M3"):
        assert (exp / "results" / f"{stem}.png").stat().st_size > 0 and (exp / "results" / f"{stem}.pdf").exists()
    assert len(figs[1].axes[0].lines) == 1 + 4   # the diagonal, M1 and M3 at two p
    for fig in figs:
        plt.close(fig)
    screening = results.screening_table(exp)
    assert set(screening.disease) == {"amd", "dr", "any disease"} and len(screening) == 6 * 3
    cis.to_csv(exp / "results" / "metric_cis.csv", index=False)
    block = "\n".join(readme._metric_cis(exp, Path("docs/figures")))
    assert "T1_auroc" in block and "![roc_T1](docs/figures/roc_T1.png)" in block
    assert "([Metrics](METHOD.md#metrics);" in block            # written into docs/RESULTS.md, beside METHOD.md


def test_t3_decoded_to_empty_sentences_is_scored_zero_not_refused():
    preds = make_preds(20, [True] * 20, text_pred=[""] * 20, bleu=[0.0] * 20)
    assert bootstrap.bootstrap_ci(preds, "T3_bleu4", n_boot=20)["value"] == 0.0
    assert bootstrap.bootstrap_ci(preds, "T3_rougeL", n_boot=20)["value"] == 0.0


# ---------------------------------------------------------------- the README's report: plateau, targets, KD pairs

def write_history(path, scores, per_epoch=10):
    write_csv(pd.DataFrame({"epoch": range(1, len(scores) + 1), "updates": [per_epoch * (i + 1) for i in
                                                                          range(len(scores))],
                            "train_loss": 1.0, "val_score": scores}), path)


def test_last_quarter_gain_says_whether_validation_still_improves():
    # 8 epochs: the last quarter is epochs 7-8; best before 0.5, best in it 0.6
    assert convergence.last_quarter_gain(pd.Series([0.1, 0.2, 0.3, 0.5, 0.4, 0.45, 0.55, 0.6])) == pytest.approx(0.1)
    assert convergence.last_quarter_gain(pd.Series([0.1, 0.5, 0.5, 0.4, 0.3])) == pytest.approx(-0.1)   # tail: 2 epochs
    assert math.isnan(convergence.last_quarter_gain(pd.Series([0.3])))


def test_training_progress_of_every_trained_model(tmp_path):
    exp = tmp_path / "exp"
    for seed, last in ((0, 0.6), (1, 0.8)):
        write_history(exp / f"teachers/p70_s{seed}/T1+T2+T3/history.csv", [0.2, 0.4, 0.5, last])   # M1: improving
        write_history(exp / f"teachers/p70_s{seed}/T1/history.csv", [0.5, 0.7, 0.7, 0.6])          # plateaued
    run = exp / "students/T1+T2+T3/p70_s0"
    write_json({"tau": 2.0, "alpha": 0.5, "test": {}}, run / "M3" / "metrics.json")
    write_history(run / "M3" / "tau_2_alpha_0.5" / "history.csv", [0.3, 0.5], per_epoch=50)    # the chosen setting
    write_history(run / "M3" / "tau_4_alpha_0.5" / "history.csv", [0.9, 0.9])                   # not chosen
    write_json({"test": {}}, run / "M1" / "metrics.json")                                        # M1: its teacher
    write_json({"test": {}}, run / "M1b" / "metrics.json")
    write_history(run / "M1b" / "history.csv", [0.4, 0.45, 0.5, 0.5, 0.5])
    progress = convergence.training_progress(exp).set_index(["model", "tasks"])
    assert list(progress.index) == [("M1", "T1+T2+T3"), ("M1b", "T1+T2+T3"), ("M3", "T1+T2+T3"), ("teacher", "T1")]
    m1 = progress.loc[("M1", "T1+T2+T3")]
    assert (m1.p, m1.n_seeds, m1.updates, m1.best_epoch, m1.epochs) == (70, 2, 40, 4, 4)
    assert m1.val_score == pytest.approx(0.7) and m1.last_quarter_gain == pytest.approx(0.2)   # (0.1 + 0.3) / 2
    assert progress.loc[("teacher", "T1"), "last_quarter_gain"] == pytest.approx(-0.1)
    assert progress.loc[("M3", "T1+T2+T3"), "updates"] == 100 and progress.loc[("M3", "T1+T2+T3"), "val_score"] == 0.5
    assert progress.loc[("M1b", "T1+T2+T3"), "best_epoch"] == 3
    assert convergence.training_progress(tmp_path / "empty").empty


def fake_target_experiment(exp, t1_at_15=0.70):
    """M1 on every task at p = 70 (two seeds) and p = 15, with what the targets read beside them."""
    for seed, t1 in enumerate((0.86, 0.90)):
        write_run(exp, "T1+T2+T3", 70, seed, "M1", None, T1_acc=t1, T2_acc=0.55, T3_bleu4=0.30)
    write_run(exp, "T1+T2+T3", 15, 0, "M1", None, T1_acc=t1_at_15, T2_acc=0.3, T3_bleu4=0.2)
    preds = pd.DataFrame({"coarse_true": ["a"] * 3 + ["b"], "fine_true": ["x", "y", "z", "z"]})   # T2 commonest: 0.5
    write_csv(preds, exp / "students/T1+T2+T3/p70_s0/M1/predictions.csv")
    write_csv(pd.DataFrame({"p": ["p=70", "p=70"], "baseline": ["constant per eye", "constant per (eye, coarse)"],
                            "T3_bleu4": [0.2, 0.32]}), exp / "results" / "t3_baselines.csv")
    write_csv(pd.DataFrame({"image_id": ["a", "b", "c"], "split": ["train", "test", "test"]}), exp / "data/splits.csv")
    write_csv(pd.DataFrame({"run": ["M1 p=70", "M1 p=70", "M3 p=70", "randomised M3 p=70"],
                            "disease": ["dr", "all", "all", "all"], "pointing": [0.9, 0.6, 0.7, 0.25]}),
              exp / "gradcam" / "localisation.csv")


def test_targets_are_checked_on_the_experiments_files(tmp_path):
    from mtkd_utils.tools import readme, readme_targets
    from mtkd_utils.train import metrics

    assert readme_targets.T3_ORACLE in metrics.T3_BASELINES
    exp = tmp_path / "exp"
    fake_target_experiment(exp)
    t = readme.targets(exp).set_index("target")
    rows = list(t.index)
    assert t.status.tolist() == ["met", "missed", "missed", "met", "missed", "met", "met"]
    assert t.loc[rows[0], "value"] == pytest.approx(0.88) and t.loc[rows[0], "n_seeds"] == 2
    assert t.loc[rows[1], "threshold"] == pytest.approx(1.25)                 # 2.5 × the commonest class's 0.5
    assert t.loc[rows[2], "threshold"] == pytest.approx(0.32)                 # per (eye, coarse), not per eye
    assert t.loc[rows[3], "value"] == pytest.approx(0.18) and t.loc[rows[3], "n_seeds"] == 1
    assert t.loc[rows[4], "value"] == 2 and pd.isna(t.loc[rows[4], "n_seeds"])
    assert t.loc[rows[6], "threshold"] == pytest.approx(0.5) and "randomised M3 p=70" in rows[6]
    block = "\n".join(readme._targets(exp))
    assert "| M1 p=70 T1 accuracy ≥ 0.85 | 0.88 | 0.85 | 2 | met |" in block


def test_targets_without_their_inputs_say_not_run(tmp_path):
    from mtkd_utils.tools import readme

    assert set(readme.targets(tmp_path / "empty").status) == {"not run"}
    exp = tmp_path / "exp"
    write_run(exp, "T1+T2+T3", 15, 0, "M1", None, T1_acc=0.7)            # no M1 at p = 70: nothing to check
    assert set(readme.targets(exp).status) == {"not run"}
    exp = tmp_path / "zero"
    fake_target_experiment(exp)
    write_csv(pd.DataFrame({"run": ["M1 p=70", "randomised M1 p=70", "randomised M3 p=70"], "disease": "all",
                            "pointing": [0.0, 0.0, 0.5]}), exp / "gradcam" / "localisation.csv")
    cam = readme.targets(exp).iloc[-1]
    assert "randomised M1 p=70" in cam.target and cam.status == "missed"      # M1's own copy; 0 is not 2 × 0


def test_kd_comparisons_only_where_both_runs_exist(tmp_path):
    from mtkd_utils.tools import readme

    exp = tmp_path / "exp"
    n = 400
    run = exp / "students" / "T1+T3" / "p15_s0"
    for model, right in (("M1", 200), ("M1b", 240), ("M3", 260)):             # no M2 here
        write_csv(make_preds(n, np.arange(n) < right), run / model / "predictions.csv")
    kd = comparisons.kd_comparisons(exp, ["T1_acc"], n_boot=200)
    assert kd.comparison.tolist() == ["M3 − M1", "M3 − M1b"]
    assert kd["diff"].tolist() == pytest.approx([0.15, 0.05])
    table = comparisons.comparison_table(kd)
    assert table.loc[("T1+T3", 15, 0, "M3 − M1b"), "T1_acc"].startswith("+0.050 [")
    (exp / "results").mkdir()
    kd.to_csv(exp / "results" / "kd_comparisons.csv", index=False)
    assert "| T1+T3 | 15 | M3 − M1b | T1_acc | 0 | +0.050 |  |  |" in "\n".join(readme._comparisons(exp))   # one seed
    assert comparisons.kd_comparisons(tmp_path / "none", ["T1_acc"]).empty


def test_the_readme_shows_the_study_when_07_ran(tmp_path):
    from mtkd_utils.tools import readme

    assert readme._study(tmp_path, Path("docs/figures")) == []           # no study: nothing
    rows = [dict(variant="M1", label="M1 (to convergence)", metric="T1_acc", score=0.68, minus_M1=0.0, lo=0.0, hi=0.0,
                 M3_minus=float("nan"), M3_lo=float("nan"), M3_hi=float("nan"), n_seeds=1),
            dict(variant="no_noise", label="M3, no student noise", metric="T1_acc", score=0.70, minus_M1=0.02,
                 lo=-0.01, hi=0.05, M3_minus=0.021, M3_lo=0.004, M3_hi=0.038, n_seeds=1),
            dict(variant="no_noise", label="M3, no student noise", metric="T2_acc", score=0.4, minus_M1=0.0, lo=0.0,
                 hi=0.0, M3_minus=0.0, M3_lo=0.0, M3_hi=0.0, n_seeds=1)]
    write_csv(pd.DataFrame(rows), tmp_path / "study" / "study.csv")
    text = "\n".join(readme._study(tmp_path, Path("docs/figures")))
    assert "| M3, no student noise | 0.7 | +0.020 [-0.010, +0.050] | +0.021 [+0.004, +0.038] | 1 |" in text
    assert "T2_acc" not in text and "![the study](docs/figures/study.png)" in text and "at p =" not in text
    write_csv(pd.DataFrame(rows).assign(p=15.0), tmp_path / "study" / "study.csv")     # 07 now records its p
    assert "**Notebook 07, when KD pays at p = 15**" in "\n".join(readme._study(tmp_path, Path("docs/figures")))


def fake_demo_experiment(exp):
    """T1+T2+T3 at p = 5 (M1, M3, M1b over two seeds; M2 on one) and p = 70 (M1), with what 06 writes beside them."""
    from PIL import Image

    for seed in (0, 1):
        d = 0.02 * seed
        write_run(exp, "T1+T2+T3", 5, seed, "M1", None, T1_acc=0.66 + d, T2_acc=0.40 + d, T3_bleu4=0.15 + d)
        write_run(exp, "T1+T2+T3", 5, seed, "M3", 2.0, T1_acc=0.74 + d, T2_acc=0.50 + d, T3_bleu4=0.17 + d)
        write_run(exp, "T1+T2+T3", 5, seed, "M1b", None, T1_acc=0.70, T2_acc=0.44, T3_bleu4=0.16)
        write_run(exp, "T1+T2+T3", 70, seed, "M1", None, T1_acc=0.90 + d, T2_acc=0.60 + d, T3_bleu4=0.20 + d)
        for p in (5, 70):
            write_json({"environment": {"torch": "2.x", "device": "cpu", "git_commit": "abc"}},
                       exp / f"students/T1+T2+T3/p{p}_s{seed}/M1/config.json")
    write_run(exp, "T1+T2+T3", 5, 0, "M2", 5.0, T1_acc=0.72, T2_acc=0.45, T3_bleu4=0.16)
    write_run(exp, "T1+T2", 5, 0, "M1", None, T1_acc=0.5, T2_acc=0.3)             # another combination: not shown
    write_json({"environment": {}}, exp / "students/T1+T2/p5_s0/M1/config.json")
    for path in exp.glob("students/*/*/M[23]/metrics.json"):                     # 03 records the chosen α too
        write_json({**json.loads(path.read_text()), "alpha": 0.5}, path)
    preds = pd.DataFrame({"coarse_true": ["a"] * 3 + ["b"], "fine_true": ["x", "y", "z", "z"]})   # 0.75, 0.5
    write_csv(preds, exp / "students/T1+T2+T3/p70_s0/M1/predictions.csv")
    write_csv(pd.DataFrame({"p": ["p=70"], "baseline": ["constant per (eye, coarse)"], "T3_bleu4": [0.32]}),
              exp / "results" / "t3_baselines.csv")
    write_csv(pd.DataFrame({"image_id": list("abcd"), "split": ["train", "test", "test", "test"]}),
              exp / "data/splits.csv")
    kd = [("T1+T2+T3", 5, seed, f"M3 − {a}", "T1_acc", diff, diff - 0.03, diff + 0.03, 3)
          for a, diff in (("M1", 0.08), ("M1b", 0.05)) for seed in ("0", "1")]
    kd += [("T1+T2+T3", 5, "pooled", "M3 − M1", "T1_acc", 0.08, 0.06, 0.10, 6),
           ("T1+T2+T3", 5, "pooled", "M3 − M1", "T2_acc", 0.10, 0.07, 0.13, 6),            # T2: not in the summary
           ("T1+T2+T3", 5, "pooled", "M3 − M1b", "T1_acc", 0.05, 0.02, 0.08, 6),
           ("T1+T2+T3", 5, "0", "M2 − M1", "T1_acc", 0.06, 0.01, 0.11, 3),                 # one seed: its own row
           ("T1+T2", 5, "pooled", "M3 − M1", "T1_acc", 0.9, 0.8, 1.0, 6)]                  # another combination
    write_csv(pd.DataFrame(kd, columns=["tasks", "p", "seed", "comparison", "metric", "diff", "lo", "hi", "n"]),
              exp / "results" / "kd_comparisons.csv")
    Image.new("RGB", (40, 20), "white").save(exp / "results" / "metrics_vs_p.png")


def test_the_results_page_shows_t3_beside_its_baselines_and_what_kd_does_to_it(tmp_path):
    from mtkd_utils.tools import readme

    assert readme._t3(tmp_path) == []                                       # 06 not run: nothing
    out = tmp_path / "results"
    out.mkdir()
    rows = [(70, 0, "", "constant per (eye, coarse)", "T3_bleu4", 0.264, 0.251, 0.277),
            (70, 0, "M1", "decoder", "T3_bleu4", 0.220, 0.206, 0.235),
            (70, 1, "M1", "decoder", "T3_bleu4", 0.240, 0.225, 0.255),                # two seeds: mean ± std
            (70, 0, "M1", "decoder", "T3_meteor", float("nan"), float("nan"), float("nan")),   # no Java
            (70, 0, "M1", "decoder", "T3_bleu2", 0.3, 0.2, 0.4)]              # not among the page's columns
    pd.DataFrame(rows, columns=["p", "seed", "model", "sentences", "metric", "value", "lo", "hi"]).assign(
        n=1056).to_csv(out / "t3_table.csv", index=False)
    text = "\n".join(readme._t3(tmp_path))
    assert "n = 1,056 images per seed" in text
    assert "| 70 |  | constant per (eye, coarse) | 1 | 0.264 [0.251, 0.277] |" in text     # one seed: its CI
    assert "| 70 | M1 | decoder | 2 | 0.230 ± 0.014 |" in text
    assert "T3_meteor" not in text and "T3_bleu2" not in text
    assert "What KD does to T3" not in text
    pd.DataFrame([dict(tasks="T1+T2+T3", p=5, seed=s, comparison="M3 − M1", metric="T3_ciderD", a=0.9, b=1.0,
                       diff=d, lo=lo, hi=hi, n=1056) for s, d, lo, hi in
                  [("0", 0.124, 0.019, 0.222), ("1", 0.05, -0.03, 0.13), ("pooled", 0.087, 0.03, 0.15),
                   ("seed-level", 0.087, -0.2, 0.37)]]).to_csv(out / "kd_comparisons_t3.csv", index=False)
    text = "\n".join(readme._t3(tmp_path))
    assert "| T1+T2+T3 | 5 | M3 − M1 | T3_ciderD | 0, 1 | +0.124, +0.050 | +0.087 [+0.030, +0.150] | " \
           "+0.087 [-0.200, +0.370] |" in text


def test_make_readme_writes_the_results_page_and_the_readmes_summary(tmp_path):
    """`make readme`: the whole generated section into docs/RESULTS.md, Table 1 with n, CIs and the baselines (and the
    figure) into the README, each between its markers; nothing else in either page changes."""
    from mtkd_utils.tools import readme

    exp, site = tmp_path / "exp", tmp_path / "site"
    fake_demo_experiment(exp)
    page_readme, page_results = site / "README.md", site / "docs" / "RESULTS.md"
    page_results.parent.mkdir(parents=True)
    page_readme.write_text(f"# intro\n{readme.SUMMARY_BEGIN}\nold table\n{readme.SUMMARY_END}\n## after\n")
    page_results.write_text(f"# results\n{readme.BEGIN}\nold section\n{readme.END}\n## what it says\n")
    pages = readme.update_docs(exp, readme=page_readme, results=page_results, figures_dir=site / "docs" / "figures")
    assert pages == [page_results, page_readme]
    assert (site / "docs" / "figures" / "metrics_vs_p.png").exists()

    text = page_readme.read_text()
    assert text.startswith(f"# intro\n{readme.SUMMARY_BEGIN}\n**Table 1")
    assert text.endswith(f"{readme.SUMMARY_END}\n## after\n")
    assert "old table" not in text and "targets" not in text                      # the summary only
    assert "n = 3 images per seed" in text and "n = 6 (seed, image) pairs" in text
    assert "| p | model | seeds | T1 accuracy | T2 accuracy | T3 BLEU-4 | T1 − M1 [95 % CI] | T1 − M1b [95 % CI] |" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert rows == [   # p, then M1, M2, M3, M1b; sample std of two seeds 0.02 apart: 0.014
        "| 5 | M1 | 2 | 0.670 ± 0.014 | 0.410 ± 0.014 | 0.160 ± 0.014 |  |  |",
        "| 5 | M2 (τ=5) | 1 | 0.720 | 0.450 | 0.160 | +0.060 [+0.010, +0.110] |  |",
        "| 5 | M3 (τ=2) | 2 | 0.750 ± 0.014 | 0.510 ± 0.014 | 0.180 ± 0.014 | +0.080 [+0.060, +0.100] | +0.050 [+0.020, +0.080] |",
        "| 5 | M1b | 2 | 0.700 ± 0.000 | 0.440 ± 0.000 | 0.160 ± 0.000 |  |  |",
        "| 70 | M1 | 2 | 0.910 ± 0.014 | 0.610 ± 0.014 | 0.210 ± 0.014 |  |  |",
        "| any | the test split's commonest class |  | 0.750 | 0.500 |  |  |  |",
        "| 70 | a constant sentence per (eye, coarse class) |  |  |  | 0.320 |  |  |"]
    assert "![metrics against p](docs/figures/metrics_vs_p.png)" in text      # linked from the repository root

    results_text = page_results.read_text()
    assert results_text.startswith(f"# results\n{readme.BEGIN}\n_Generated by")
    assert results_text.endswith(f"{readme.END}\n## what it says\n") and "old section" not in results_text
    assert "**The demo's targets" in results_text and "**Table 1 on the synthetic demo**" in results_text
    assert "![metrics against p](figures/metrics_vs_p.png)" in results_text      # linked from docs/

    readme.update_docs(exp, readme=page_readme, results=page_results, figures_dir=site / "docs" / "figures")
    assert page_readme.read_text() == text and page_results.read_text() == results_text   # run twice: the same


def test_make_readme_refuses_a_page_without_its_markers_and_writes_nothing(tmp_path):
    from mtkd_utils.tools import readme

    exp = tmp_path / "exp"
    fake_demo_experiment(exp)
    page_readme, page_results = tmp_path / "README.md", tmp_path / "RESULTS.md"
    page_readme.write_text("# a README whose results section was deleted\n")
    page_results.write_text(f"{readme.BEGIN}\nkept\n{readme.END}\n")
    with pytest.raises(ValueError, match="demo-summary:begin"):
        readme.update_docs(exp, readme=page_readme, results=page_results, figures_dir=tmp_path / "figures")
    assert page_results.read_text() == f"{readme.BEGIN}\nkept\n{readme.END}\n"
    page_readme.write_text(f"{readme.SUMMARY_BEGIN}\nkept\n{readme.SUMMARY_END}\n")
    with pytest.raises(ValueError, match="no finished runs"):             # a mistyped experiment folder
        readme.update_docs(tmp_path / "empty", readme=page_readme, results=page_results, figures_dir=tmp_path / "f")
    assert "kept" in page_readme.read_text() and "kept" in page_results.read_text()
    assert readme.summary_table(tmp_path / "empty").empty


def test_ece_interval_is_moved_by_the_bootstrap_bias_and_contains_the_estimate():
    """Calibrated probabilities: ECE's resampled draws sit above the plug-in value (|Σ| of noisier sums), so the
    plain percentile interval can miss it; the reported interval keeps the draws' spread around the estimate."""
    from mtkd_utils.data.manifest import LabelMap

    labels = LabelMap.from_pairs(["a", "b"], [("a", "a"), ("b", "b")])
    rng = np.random.default_rng(0)
    n = 1000
    p_b = rng.uniform(0.05, 0.95, n)
    y = (rng.random(n) < p_b).astype(int)                      # calibrated: the truth drawn from the probabilities
    probs = {"T1": np.column_stack([1 - p_b, p_b])}
    preds = make_preds(n, np.ones(n, bool))
    preds["coarse_true"] = np.array(["a", "b"])[y]
    preds["coarse_pred"] = np.array(["a", "b"])[(p_b > 0.5).astype(int)]
    value, raw = bootstrap._metric_draws(preds, "T1_ece", bootstrap._resample_weights(n, 500, 0), labels, probs)
    bias = np.median(raw) - value
    assert bias > 0                                            # the draws sit above the estimate
    ci = bootstrap.bootstrap_ci(preds, "T1_ece", n_boot=500, labels=labels, probs=probs)
    lo, hi = bootstrap._interval(raw, 0.95)
    assert ci["lo"] == pytest.approx(lo - bias) and ci["hi"] == pytest.approx(hi - bias)
    assert ci["value"] == pytest.approx(value) and ci["lo"] <= ci["value"] <= ci["hi"]
    acc = bootstrap.bootstrap_ci(preds, "T1_acc", n_boot=500)     # other metrics: the plain percentile interval
    _, draws = bootstrap._metric_draws(preds, "T1_acc", bootstrap._resample_weights(n, 500, 0))
    assert (acc["lo"], acc["hi"]) == pytest.approx(bootstrap._interval(draws, 0.95))
