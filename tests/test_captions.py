"""T3 as report generation judges it: caption metrics against pycocoevalcap / nltk, the paper's BLEU, the bootstrap,
1-NN retrieval and classify-then-describe."""
import math
import shutil

import numpy as np
import pandas as pd
import pytest

from mtkd_utils.analysis import bootstrap, captions, t3
from mtkd_utils.data.synthetic.taxonomy import label_map
from mtkd_utils.train.metrics import text_metrics
from mtkd_utils.train.retrieval import nearest_neighbours

REFS = ["left eye: moderate npdr with scattered exudates.",
        "glaucoma suspect in the right eye with cup disc ratio 0.6.",
        "right eye: normal fundus.", "left eye: wet amd with subretinal haemorrhage."]
HYPS = ["left eye: moderate npdr with hard exudates.", "glaucoma suspect in the left eye with cup disc ratio 0.6.",
        "right eye: normal fundus.", "left eye: wet amd"]


def test_bleu_equals_pycocoevalcap_on_the_same_tokens():
    ours = text_metrics(REFS, HYPS)          # nltk corpus BLEU: metrics.json and the bootstrap
    coco = captions.coco_bleu(REFS, HYPS)
    for n in (1, 2, 3, 4):
        assert ours[f"T3_bleu{n}"] == pytest.approx(coco[f"T3_bleu{n}"], abs=1e-6)
    assert 0 < coco["T3_bleu4"] < coco["T3_bleu1"] < 1


def test_cider_d_on_a_hand_checked_three_sentence_corpus():
    # N = 3 references, idf(g) = log 3 − log df(g): 'a' is in two references, every other n-gram in one.
    # Image 1 and 3 say their reference exactly: cosine 1 for unigrams and bigrams, 0 for the absent 3-, 4-grams
    # (zero vectors), no length penalty: 10 · (1 + 1 + 0 + 0) / 4 = 5.
    # Image 2 says 'a b' for 'a c': unigram cosine w_a² / (w_a² + log²3) with w_a = log 1.5, no bigram in common.
    w_a, w = math.log(1.5), math.log(3)
    middle = 10 * (w_a ** 2 / (w_a ** 2 + w ** 2)) / 4
    scores = captions.cider_d(["a b", "a c", "d e"], ["a b", "a b", "d e"])
    assert scores == pytest.approx([5.0, middle, 5.0])
    assert middle == pytest.approx(0.29971, abs=1e-5)
    # a length gap is penalised (σ = 6): one extra word costs exp(−1/72) of the match
    longer = captions.cider_d(["a b", "a c", "d e"], ["a b b", "a c", "d e"])
    assert longer[0] < 5.0 and longer[1] == pytest.approx(5.0)


def test_coco_rouge_l_weighs_recall_and_scores_an_empty_sentence_zero():
    # 'left eye' against 'left eye : normal': LCS 2, P = 1, R = 2/4; F with β = 1.2: (1+β²)PR / (R + β²P)
    beta = 1.2
    expected = (1 + beta ** 2) * 1 * 0.5 / (0.5 + beta ** 2 * 1)
    assert captions.coco_rouge_l(["left eye: normal"], ["left eye"]) == pytest.approx([expected])
    assert captions.coco_rouge_l(["left eye: normal"], [""]) == pytest.approx([0.0])


def test_paper_bleu_by_hand_with_a_two_token_output():
    ref = "left eye : normal fundus ."
    # 2 tokens: weights (½, ½); p1 = 2/2, p2 = 1/1; brevity exp(1 − 6/2) = e^-2
    assert captions.paper_sentence_bleu(ref.split(), ["left", "eye"]) == pytest.approx(math.exp(-2))
    # with BLEU-4's weights the same output would score ~0: not the authors' number
    assert captions.paper_sentence_bleu(ref.split(), ["eye", "left"]) < 1e-100   # no bigram match, no smoothing
    assert captions.paper_sentence_bleu(ref.split(), []) == 0.0
    per = captions.paper_bleu([ref, ref, ref], ["left eye", ref, ""])
    assert per == pytest.approx([math.exp(-2), 1.0, 0.0])
    assert per.mean() == pytest.approx((math.exp(-2) + 1) / 3)


def test_meteor_is_computed_with_java_and_nan_without(monkeypatch):
    monkeypatch.setattr(captions.shutil, "which", lambda name: None)
    assert np.isnan(captions.meteor(REFS, HYPS)).all()
    monkeypatch.undo()
    if shutil.which("java") is None:
        pytest.skip("no Java runtime: METEOR is not computed here")
    scores = captions.meteor(["left eye : normal fundus .", "a b c"], ["left eye : normal fundus .", ""])
    assert scores[0] == pytest.approx(1.0, abs=0.01) and scores[1] == 0.0


def _preds(refs, hyps, fine_true):
    return pd.DataFrame({"image_id": [f"i{k}" for k in range(len(refs))], "coarse_true": "", "fine_true": fine_true,
                         "text_true": refs, "text_pred": hyps, "bleu": "0"})


def test_caption_metrics_and_their_bootstrap_agree():
    fine = ["dr_moderate_npdr", "glaucoma_cdr06", "normal", "amd_neovascular"]
    preds = _preds(REFS, HYPS, fine)
    labels = label_map()
    m = captions.caption_metrics(preds, labels)
    # findings (eye, coarse, fine + class-defining): references 3 + 4 (cdr) + 3 + 4 (haemorrhage) = 14;
    # hypotheses 3 + 4 (the wrong eye) + 3 + 3 (no haemorrhage) = 13; in common 3 + 3 + 3 + 3 = 12
    assert m["T3_fine_acc"] == 1.0
    assert m["T3_findings_precision"] == pytest.approx(12 / 13)
    assert m["T3_findings_recall"] == pytest.approx(12 / 14)
    assert m["T3_findings_f1"] == pytest.approx(24 / 27)
    assert m["T3_eye_acc"] == pytest.approx(3 / 4)
    for metric in ("T3_ciderD", "T3_paper_bleu", "T3_findings_f1", "T3_findings_f1_macro", "T3_fine_acc",
                   "T3_coco_rougeL", "T3_bleu4"):
        ci = bootstrap.bootstrap_ci(preds, metric, n_boot=200, labels=labels)
        assert ci["value"] == pytest.approx(m[metric]), metric
        assert ci["lo"] <= ci["value"] + 1e-9 and ci["hi"] >= ci["value"] - 1e-9, metric
    with pytest.raises(ValueError, match="pass labels="):
        bootstrap.bootstrap_ci(preds, "T3_findings_f1", n_boot=10)


def test_retrieval_finds_the_known_nearest_neighbour():
    keys = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    queries = np.array([[10.0, 0.5], [0.1, 3.0], [2.0, 2.1], [-1.0, -1.0]])
    best, sim = nearest_neighbours(queries, keys)
    assert best.tolist() == [0, 1, 2, 0]    # cosine: the scale of a feature vector does not matter; ties: first
    assert sim[2] == pytest.approx((2 + 2.1) / (math.sqrt(2) * math.hypot(2, 2.1)))
    with pytest.raises(ValueError, match="no keys"):
        nearest_neighbours(queries, keys[:0])


def test_classify_then_describe_on_a_hand_made_table():
    train = pd.DataFrame({"eye": ["left", "left", "left", "right", "right"],
                          "fine": ["a", "a", "a", "a", "b"],
                          "coarse": ["x", "x", "x", "x", "y"],
                          "text": ["left eye: a.", "left eye: a.", "left eye: a, b.", "right eye: a.", "right b."]})
    said = t3.classify_then_describe(train, ["a", "a", "b", "b", "c"], ["left", "right", "right", "left", ""])
    assert said[0] == "left eye: a."          # the commoner of the left-eye a sentences (highest BLEU among them)
    assert said[1] == "right eye: a."
    assert said[2] == "right b."
    assert said[3] == "right b."              # no (left, b) sentence: b's over both eyes
    assert said[4] in set(train.text)         # an unknown class: the overall consensus sentence


def test_baseline_curves_average_the_seeds_and_name_the_model():
    long = pd.DataFrame({"p": [15, 15, 15, 15, 15], "seed": [0, 1, 0, 1, 0],
                         "model": ["M1", "M1", "", "", "M3"],
                         "sentences": ["1-NN retrieval", "1-NN retrieval", "constant per (eye, coarse)",
                                       "constant per (eye, coarse)", "1-NN retrieval"],
                         "metric": "T3_bleu4", "value": [0.2, 0.3, 0.1, 0.2, 0.9]})
    curves = t3.baseline_curves(long).set_index("name").value
    assert curves.to_dict() == pytest.approx({"1-NN retrieval (M1)": 0.25, "constant per (eye, coarse)": 0.15})
