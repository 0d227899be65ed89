"""Metrics against scikit-learn / nltk / rouge-score on fixed examples, and hand-computed cases."""
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from nltk.translate.bleu_score import corpus_bleu
from rouge_score.rouge_scorer import RougeScorer
from sklearn.metrics import (
    average_precision_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    f1_score,
    log_loss,
    roc_auc_score,
)
from sklearn.preprocessing import label_binarize

from mtkd_utils.analysis import bootstrap
from mtkd_utils.data.manifest import LabelMap
from mtkd_utils.data.text import tokenize
from mtkd_utils.train import metrics

LABELS = LabelMap.from_pairs(["normal", "dr", "amd"], [("normal", "normal"), ("dr_mild", "dr"), ("dr_severe", "dr"),
                                                        ("amd_dry", "amd")])


def random_case(n=300, c=4, seed=0):
    """Truth, softmax probabilities that lean towards the truth, and their argmax."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c)) + 1.5 * np.eye(c)[y]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, probs, probs.argmax(1)


def test_classification_metrics_match_sklearn():
    y, probs, pred = random_case()
    m = metrics.classification_metrics(y, pred, 4, probs=probs)
    assert m["acc"] == pytest.approx(np.mean(y == pred))
    assert m["balanced_acc"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["kappa"] == pytest.approx(cohen_kappa_score(y, pred))
    assert m["auroc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    assert m["aupr"] == pytest.approx(average_precision_score(label_binarize(y, classes=range(4)), probs,
                                                              average="macro"))
    assert m["nll"] == pytest.approx(log_loss(y, probs))
    ordered = metrics.classification_metrics(y, pred, 4, ordered=True)
    assert ordered["kappa"] == pytest.approx(cohen_kappa_score(y, pred, weights="quadratic"))
    assert "auroc" not in ordered   # no probabilities, no probability metrics


def test_auroc_kappa_ece_by_hand():
    # AUROC: positives score 0.35 and 0.8, negatives 0.1 and 0.4: 3 of the 4 pairs are ordered -> 0.75
    y = np.array([0, 0, 1, 1])
    p1 = np.array([0.1, 0.4, 0.35, 0.8])
    probs = np.column_stack([1 - p1, p1])
    assert metrics.probability_metrics(y, probs)["auroc"] == pytest.approx(0.75)
    # plain kappa: agreement 0.75, chance 0.5·0.25 + 0.5·0.75 = 0.5 -> (0.75 − 0.5) / 0.5 = 0.5
    assert metrics.classification_metrics(y, np.array([0, 1, 1, 1]), 2)["kappa"] == pytest.approx(0.5)
    # quadratic kappa, 3 grades, truth 0,1,2 said 0,2,2: observed weighted disagreement 1/12, chance 5/12 -> 0.8
    assert metrics.classification_metrics(np.array([0, 1, 2]), np.array([0, 2, 2]), 3, ordered=True)["kappa"] == \
        pytest.approx(0.8)
    # ECE: two images at confidence 0.9 (one right), two at 0.65 (both right): 0.5·0.4 + 0.5·0.35 = 0.375
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.35, 0.65], [0.35, 0.65]])
    assert metrics.expected_calibration_error(np.array([0, 1, 1, 1]), probs) == pytest.approx(0.375)
    bins = metrics.reliability_bins(np.array([0, 1, 1, 1]), probs)
    assert len(bins) == 15 and bins["count"].sum() == 4 and bins["count"].max() == 2


def test_odir_score_on_a_hand_made_three_class_example():
    y = np.array([0, 1, 2])
    probs = np.array([[0.7, 0.2, 0.1], [0.3, 0.4, 0.3], [0.1, 0.3, 0.6]])
    # 9 cells: 3 positives; > 0.5 finds 2 of them and no false one -> 8 of 9 cells right
    # kappa: p_o = 8/9, p_e = (3/9)(2/9) + (6/9)(7/9) = 48/81 -> 24/33; F1 (micro over 0/1) = 8/9;
    # AUC: every positive (0.7, 0.4, 0.6) above every negative (≤ 0.3) -> 1
    got = metrics.odir_score(y, probs)
    assert got["kappa"] == pytest.approx(24 / 33) and got["f1"] == pytest.approx(8 / 9) and got["auc"] == 1.0
    assert got["score"] == pytest.approx((24 / 33 + 8 / 9 + 1) / 3)


def preds_frame(coarse_true, coarse_pred):
    n = len(coarse_true)
    return pd.DataFrame({"image_id": [f"i{i}" for i in range(n)], "coarse_true": coarse_true,
                         "coarse_pred": coarse_pred, "fine_true": "", "fine_pred": "", "fine_top5": "",
                         "text_true": "", "text_pred": "", "bleu": ""})


def test_task_metrics_with_probabilities_and_the_odir_label_set():
    y, probs, pred = random_case(c=3, seed=1)
    preds = preds_frame([LABELS.coarse[i] for i in y], [LABELS.coarse[i] for i in pred])
    m = metrics.task_metrics(preds, LABELS, {"T1": probs})
    assert m["T1_auroc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr"))
    assert {"T1_ece", "T1_nll", "T1_kappa", "T1_balanced_acc"} <= set(m) and "T1_odir_score" not in m
    odir = LabelMap(LABELS.coarse, LABELS.fine, LABELS.fine_parent, benchmark=metrics.ODIR2019)
    assert metrics.task_metrics(preds, odir, {"T1": probs})["T1_odir_score"] == \
        pytest.approx(metrics.odir_score(y, probs)["score"])
    per_class = metrics.per_class_auroc(preds, LABELS, {"T1": probs})["T1"]
    assert per_class["dr"] == pytest.approx(roc_auc_score(y == 1, probs[:, 1]))
    with pytest.raises(ValueError, match="not in the label map"):
        metrics.task_metrics(preds.assign(coarse_pred="glaucoma"), LABELS)


def test_disease_vs_normal_by_hand():
    true = ["normal"] * 4 + ["dr"] * 4 + ["amd"] * 2
    pred = ["normal", "normal", "normal", "dr"] + ["dr", "dr", "dr", "normal"] + ["dr", "amd"]
    got = metrics.disease_vs_normal(preds_frame(true, pred), LABELS)
    assert got["dr"]["sensitivity"] == pytest.approx(3 / 4) and got["dr"]["specificity"] == pytest.approx(3 / 4)
    assert got["amd"]["sensitivity"] == pytest.approx(1 / 2) and got["amd"]["specificity"] == 1.0
    # any disease: 5 of 6 abnormal images called abnormal; 3 of 4 normal called normal
    assert got["any disease"]["sensitivity"] == pytest.approx(5 / 6)
    assert got["any disease"]["specificity"] == pytest.approx(3 / 4)


def test_text_metrics_match_nltk_and_rouge_score():
    refs = ["left eye mild diabetic retinopathy with microaneurysms", "right eye normal fundus",
            "left eye large drusen at the macula"]
    hyps = ["left eye mild diabetic retinopathy", "right eye normal fundus with no lesions", "left eye drusen"]
    m = metrics.text_metrics(refs, hyps)
    toks = lambda ts: [t.split() for t in ts]  # noqa: E731  (no punctuation: both tokenizers agree)
    assert m["T3_bleu2"] == pytest.approx(corpus_bleu([[r] for r in toks(refs)], toks(hyps), weights=(0.5, 0.5)))
    scorer = RougeScorer(["rougeL"])
    assert m["T3_rougeL"] == pytest.approx(np.mean([scorer.score(r, h)["rougeL"].fmeasure for r, h in zip(refs, hyps)]))
    # '<unk>' is one word: one miss out of four
    assert metrics.rouge_l(["left eye drusen ."], ["left eye <unk> ."])[0] == pytest.approx(0.75)


def test_unk_is_one_token():
    assert tokenize("left eye: <unk> drusen.") == ["left", "eye", ":", "<unk>", "drusen", "."]
    assert tokenize("a <b> c") == ["a", "<", "b", ">", "c"]   # only the vocabulary's specials stay whole


NORMAL_L, DR_L = "left eye : no retinopathy .", "left eye : mild diabetic retinopathy ."
NORMAL_R, DR_R = "right eye : no retinopathy .", "right eye : mild diabetic retinopathy ."


def test_text_baselines_on_a_hand_made_example():
    train = pd.DataFrame({"eye": ["left"] * 4 + ["right"] * 3,
                          "coarse": ["normal"] * 3 + ["dr", "normal", "normal", "dr"],
                          "text": [NORMAL_L] * 3 + [DR_L, NORMAL_R, NORMAL_R, DR_R]})
    test = pd.DataFrame({"eye": ["left", "right", "right"], "coarse": ["dr", "normal", "dr"],
                         "text": [DR_L, NORMAL_R, DR_R]})
    # NORMAL_L matches 3 references exactly and shares '... : no retinopathy .' with 2 more
    assert metrics.constant_sentence(train.text) == NORMAL_L
    assert metrics.constant_sentences(train, ["eye"]) == {("left",): NORMAL_L, ("right",): NORMAL_R}
    table = metrics.text_baselines(train, test)
    assert list(table.index) == ["constant sentence", "constant per eye", "constant per (eye, coarse)"]
    assert table.loc["constant per (eye, coarse)", "T3_bleu4"] == pytest.approx(1.0)   # each test sentence seen
    assert table.loc["constant per (eye, coarse)", "sentences"] == 4
    said = [NORMAL_L, NORMAL_R, NORMAL_R]
    assert table.loc["constant per eye", "T3_rougeL"] == pytest.approx(metrics.rouge_l(test.text, said).mean())
    assert table.loc["constant per eye", "T3_bleu4"] == pytest.approx(metrics.text_metrics(test.text, said)["T3_bleu4"])
    assert table["T3_bleu4"].is_monotonic_increasing


def test_val_score_weighs_skill_above_the_baselines():
    val = {"T1_acc": 0.7, "T2_acc": 0.4, "T3_bleu4": 0.3}
    base = {"T1": 0.4, "T2": 0.2, "T3": 0.1}
    # (0.7−0.4)/0.6 = 0.5, (0.4−0.2)/0.8 = 0.25, (0.3−0.1)/0.9 = 2/9
    assert metrics.val_score(val, ("T1", "T2", "T3"), base) == pytest.approx((0.5 + 0.25 + 2 / 9) / 3)
    assert metrics.val_score(val, ("T1", "T3")) == pytest.approx(0.5)   # no baselines: the plain mean
    assert metrics.val_score({"T1_acc": 0.3}, ("T1",), base) < 0          # below the commonest class
    # one class in training: no room for skill, no division by zero either
    assert metrics.val_score(val, ("T1",), {"T1": 1.0}) == pytest.approx(0.7 - 1.0)


def test_train_baselines_read_the_training_rows_once():
    manifest = pd.DataFrame({"labeled": [1, 1, 1, 1, 1], "coarse": ["normal", "normal", "dr", "dr", "normal"],
                             "fine": ["n", "n", "d1", "d2", "n"],
                             "text": [NORMAL_L, NORMAL_L, DR_L, DR_L, NORMAL_R]})
    role = np.array(["train", "train", "train", "train", "test"])
    data = SimpleNamespace(manifest=manifest, rows=lambda r: np.flatnonzero(role == r))
    base = metrics.train_baselines(data)
    assert base["T1"] == 0.5 and base["T2"] == 0.5
    # the better of the two training sentences, each scored against the 4 training references
    refs = [[tokenize(t)] for t in [NORMAL_L, NORMAL_L, DR_L, DR_L]]
    scores = [corpus_bleu(refs, [tokenize(c)] * 4) for c in (NORMAL_L, DR_L)]
    assert base["T3"] == pytest.approx(max(scores)) and scores[0] != scores[1]
    data.manifest = None
    assert metrics.train_baselines(data) is base   # cached on the data object: every tau of the split shares it


def test_metric_figures_exist_and_are_not_empty(tmp_path):
    import matplotlib.pyplot as plt
    from PIL import Image

    from mtkd_utils.analysis import plots

    runs, calib = {}, {}
    for seed, name in enumerate(["M1 p=15", "M3 p=15", "M1 p=70", "M3 p=70"]):
        y, probs, pred = random_case(n=200, c=3, seed=seed)
        runs[name] = (preds_frame([LABELS.coarse[i] for i in y], [LABELS.coarse[i] for i in pred]), probs)
        calib[name] = (y, probs)
    figs = [plots.roc_curves(runs, LABELS, tmp_path / "roc_T1"),
            plots.reliability_diagram(calib, tmp_path / "reliability_T1"),
            plots.confusion_heatmap(metrics.confusion(runs["M1 p=15"][0], LABELS), "T1", tmp_path / "confusion_T1")]
    fine = pd.DataFrame({"fine_true": ["normal", "dr_mild", "dr_severe", "amd_dry"] * 5,
                         "fine_pred": ["normal", "dr_severe", "dr_severe", "normal"] * 5})
    figs.append(plots.confusion_heatmap(metrics.confusion(fine, LABELS, "fine"), "T2", tmp_path / "confusion_T2",
                                        groups=LABELS.fine_parent))
    assert len(figs[0].axes) == 2   # dr and amd: 'normal' is the reference, not a panel
    assert len(figs[0].axes[0].lines) == 5   # four runs and the chance diagonal
    for stem in ("roc_T1", "reliability_T1", "confusion_T1", "confusion_T2"):
        png, pdf = tmp_path / f"{stem}.png", tmp_path / f"{stem}.pdf"
        assert pdf.stat().st_size > 1000
        with Image.open(png) as im:
            assert round(im.info["dpi"][0]) == 300 and im.getextrema() != ((255, 255),) * 4   # not blank
    for fig in figs:
        plt.close(fig)


def test_eye_named_right_on_hand_made_sentences():
    refs = ["left eye : no retinopathy .", "drusen in the right eye .", "right fundus : naevus .", "normal fundus ."]
    hyps = ["left eye : drusen .", "left eye : drusen .", "right or left eye ?", "right eye : normal ."]
    assert [metrics.named_eye(t) for t in refs] == ["left", "right", "right", ""]
    assert metrics.named_eye("Right eye: <unk>.") == "right" and metrics.named_eye(hyps[2]) == ""
    # three references name an eye; the first hypothesis names it, the second the other, the third both
    assert metrics.text_metrics(refs, hyps)["T3_eye_acc"] == pytest.approx(1 / 3)
    assert "T3_eye_acc" not in metrics.text_metrics(refs[3:], hyps[3:])      # no reference names an eye
    preds = pd.DataFrame({"text_true": refs, "text_pred": hyps})
    ci = bootstrap.bootstrap_ci(preds, "T3_eye_acc", n_boot=200)
    assert ci["value"] == pytest.approx(1 / 3) and 0 <= ci["lo"] <= 1 / 3 <= ci["hi"] <= 1
    # the constant per eye is right by construction; the eye-blind constant sentence on one eye only
    train = pd.DataFrame({"eye": ["left", "right"], "coarse": ["normal"] * 2, "text": [NORMAL_L, NORMAL_R]})
    test = pd.DataFrame({"eye": ["left", "right"], "coarse": ["normal"] * 2, "text": [NORMAL_L, NORMAL_R]})
    table = metrics.text_baselines(train, test)
    assert table.loc["constant per eye", "T3_eye_acc"] == 1.0
    assert table.loc["constant sentence", "T3_eye_acc"] == 0.5
