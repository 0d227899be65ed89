"""Test metrics from a predictions table and the predicted probabilities (scikit-learn, nltk, rouge-score).

Per task: accuracy, balanced accuracy, macro-F1, Cohen's kappa, one-vs-rest AUROC and AUPR, expected
calibration error, NLL (T1, T2); BLEU-1..4 and ROUGE-L (T3). Also: disease vs normal sensitivity and
specificity, the ODIR-2019 challenge score, constant baselines, and the validation score that weighs
every task by its skill above its baseline. docs/METHOD.md ("Metrics") says how to read each one.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import (
    average_precision_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    f1_score,
    log_loss,
    recall_score,
    roc_auc_score,
)

from ..data.odir import ODIR2019
from ..data.text import corpus_bleu4, named_eye, tokenize

PRIMARY = {"T1": "T1_acc", "T2": "T2_acc", "T3": "T3_bleu4"}   # what the paper reports per task
LEVEL = {"T1": "coarse", "T2": "fine"}                        # the label-map level of each classification task
ECE_BINS = 15                                                 # equal-width confidence bins (Guo et al. 2017)
ODIR_THRESHOLD = 0.5                                          # the challenge's decision threshold
NORMAL = "normal"                                             # the class "disease vs normal" compares against
BASELINE_CANDIDATES = 60    # constant-sentence candidates: the commonest distinct training sentences ...
BASELINE_REFERENCES = 600   # ... each scored by corpus BLEU-4 against up to this many training sentences


def _has(preds: pd.DataFrame, col: str) -> bool:
    return col in preds and (preds[col] != "").any()


def has_text(preds: pd.DataFrame) -> bool:
    """T3 was decoded: bleu is filled whenever it was, even where a sentence came out empty."""
    return _has(preds, "text_pred") or _has(preds, "bleu")


def class_indices(names: pd.Series | Sequence[str], classes: Sequence[str], where: str) -> np.ndarray:
    """Class names -> indices in the label map's order; an unknown name is an error naming it."""
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({n for n in names if n not in index})
    if unknown:
        raise ValueError(f"{where}: class names {unknown[:10]} are not in the label map {list(classes)[:10]}...; "
                         "the predictions and label_map.json must come from the same experiment")
    return np.array([index[n] for n in names], dtype=int)


# ---------------------------------------------------------------- classification (T1, T2)

def reliability_bins(y_true: np.ndarray, probs: np.ndarray, n_bins: int = ECE_BINS) -> pd.DataFrame:
    """Per confidence bin (lo, hi]: mean confidence of the top class, its accuracy, the number of images."""
    conf, correct = probs.max(1), probs.argmax(1) == y_true
    edges = np.linspace(0, 1, n_bins + 1)
    bins = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)   # (lo, hi]; 0 joins bin 0
    count = np.bincount(bins, minlength=n_bins)
    with np.errstate(divide="ignore", invalid="ignore"):   # empty bins: nan
        confidence = np.bincount(bins, conf, minlength=n_bins) / count
        accuracy = np.bincount(bins, correct, minlength=n_bins) / count
    return pd.DataFrame({"lo": edges[:-1], "hi": edges[1:], "confidence": confidence, "accuracy": accuracy,
                         "count": count})


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Σ_bins (share of images) · |accuracy − mean confidence| of the top class."""
    b = reliability_bins(y_true, probs, n_bins).dropna()
    return float((b["count"] / b["count"].sum() * (b.accuracy - b.confidence).abs()).sum())


def one_vs_rest(y_true: np.ndarray, probs: np.ndarray, score) -> dict[int, float]:
    """score(is class k, p(k)) for each class k with both positives and negatives among the images."""
    out = {}
    for k in range(probs.shape[1]):
        positive = y_true == k
        if 0 < positive.sum() < len(y_true):
            out[k] = float(score(positive, probs[:, k]))
    return out


def probability_metrics(y_true: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Macro one-vs-rest AUROC and AUPR (over classes present), ECE (15 bins) and NLL."""
    probs = probs.astype(np.float64)
    probs = probs / probs.sum(1, keepdims=True)     # float32/bf16 softmax rows sum to 1 only up to rounding
    auroc, aupr = one_vs_rest(y_true, probs, roc_auc_score), one_vs_rest(y_true, probs, average_precision_score)
    return {"auroc": float(np.mean(list(auroc.values()))) if auroc else float("nan"),
            "aupr": float(np.mean(list(aupr.values()))) if aupr else float("nan"),
            "ece": expected_calibration_error(y_true, probs),
            "nll": float(log_loss(y_true, probs, labels=np.arange(probs.shape[1])))}


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int, ordered: bool = False,
                           probs: np.ndarray | None = None) -> dict[str, float]:
    """Label metrics of one task from class indices; with probabilities (N, C) also AUROC, AUPR, ECE, NLL.

    Macro-F1 averages the classes present in the truth (a class absent from the test split has no recall).
    Kappa is quadratic-weighted when the classes are ordered grades, plain (unweighted) otherwise.
    """
    present = np.unique(y_true)
    with np.errstate(divide="ignore", invalid="ignore"):   # one class only: kappa is undefined (nan)
        kappa = cohen_kappa_score(y_true, y_pred, labels=np.arange(n_classes), weights="quadratic" if ordered else None)
    with warnings.catch_warnings():   # a model may predict classes absent from the truth: recall ignores them
        warnings.filterwarnings("ignore", "y_pred contains classes not in y_true")
        balanced = balanced_accuracy_score(y_true, y_pred)
    out = {"acc": float(np.mean(y_true == y_pred)), "balanced_acc": float(balanced),
           "macro_f1": float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
           "kappa": float(kappa)}
    return {**out, **(probability_metrics(y_true, probs) if probs is not None else {})}


def odir_score(y_true: np.ndarray, probs: np.ndarray, threshold: float = ODIR_THRESHOLD) -> dict[str, float]:
    """ODIR-2019 challenge score: (kappa + F1 + AUC) / 3 on the flattened (N, C) 0/1 truth and probabilities.

    As the challenge's ODIR_evaluation.py computes it: kappa and F1 (average='micro') of probability > 0.5,
    AUC of the probabilities, each over all (image, class) cells at once.
    """
    truth = np.eye(probs.shape[1], dtype=int)[y_true].ravel()
    flat = probs.ravel()
    kappa = cohen_kappa_score(truth, flat > threshold)
    f1 = f1_score(truth, flat > threshold, average="micro")
    auc = roc_auc_score(truth, flat)
    return {"kappa": float(kappa), "f1": float(f1), "auc": float(auc), "score": float((kappa + f1 + auc) / 3)}


def top_k(fine_true: pd.Series, fine_top5: pd.Series) -> dict[str, float]:
    top5 = fine_top5.str.split("|")
    return {f"top{k}": float(np.mean([t in tk[:k] for t, tk in zip(fine_true, top5)])) for k in range(1, 6)}


def _task_labels(preds: pd.DataFrame, labels, task: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    level = LEVEL[task]
    classes = getattr(labels, level)
    return (class_indices(preds[f"{level}_true"], classes, f"{task} {level}_true"),
            class_indices(preds[f"{level}_pred"], classes, f"{task} {level}_pred"), classes)


def classification_task(preds: pd.DataFrame, labels, task: str, probs: np.ndarray | None = None) -> dict[str, float]:
    """Every metric of T1 or T2, keys prefixed ('T1_auroc'); T2 adds top-k, an ODIR label map the ODIR score."""
    y_true, y_pred, classes = _task_labels(preds, labels, task)
    m = classification_metrics(y_true, y_pred, len(classes), LEVEL[task] in labels.ordered, probs)
    if task == "T2":
        m.update(top_k(preds.fine_true, preds.fine_top5))
    if task == "T1" and probs is not None and getattr(labels, "benchmark", "") == ODIR2019:
        m.update({f"odir_{k}": v for k, v in odir_score(y_true, probs).items()})
    return {f"{task}_{k}": v for k, v in m.items()}


# ---------------------------------------------------------------- text (T3)

class _Tokenizer:
    """rouge-score's tokenizer interface over the workbook's tokenizer: BLEU and ROUGE see the same tokens."""

    def tokenize(self, text: str) -> list[str]:
        return tokenize(text)


def rouge_l(references: Sequence[str], hypotheses: Sequence[str]) -> np.ndarray:
    """Per-sentence ROUGE-L F-measure (rouge-score; longest common subsequence of tokens)."""
    from rouge_score.rouge_scorer import RougeScorer

    scorer = RougeScorer(["rougeL"], tokenizer=_Tokenizer())
    return np.array([scorer.score(r, h)["rougeL"].fmeasure for r, h in zip(references, hypotheses)], dtype=float)


def eye_hits(references: Sequence[str], hypotheses: Sequence[str]) -> np.ndarray:
    """(N, 2): per sentence, [the hypothesis names the reference's eye, the reference names one eye]."""
    truth = np.array([named_eye(t) for t in references])
    said = np.array([named_eye(t) for t in hypotheses])
    return np.column_stack([(said == truth) & (truth != ""), truth != ""]).astype(float)


def text_metrics(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU-1..4 (nltk, no smoothing), mean sentence ROUGE-L F and, where the references name the eye,
    T3_eye_acc: the share of sentences that name the right one (laterality, which BLEU barely weighs)."""
    refs, hyps = [tokenize(t) for t in references], [tokenize(t) for t in hypotheses]
    out = {f"T3_bleu{n}": corpus_bleu4(refs, hyps, n=n) for n in (1, 2, 3, 4)}
    out["T3_rougeL"] = float(rouge_l(references, hypotheses).mean())
    hits, named = eye_hits(references, hypotheses).sum(0)
    if named:
        out["T3_eye_acc"] = float(hits / named)
    return out


# ---------------------------------------------------------------- one predictions table

def task_metrics(preds: pd.DataFrame, labels, probs: Mapping[str, np.ndarray] | None = None) -> dict[str, float]:
    """All metrics for the tasks present in `preds` (one row per image); `probs`: {'T1': (N, C), 'T2': ...}."""
    probs = probs or {}
    m: dict[str, float] = {"n": int(len(preds))}
    for task, col in (("T1", "coarse_pred"), ("T2", "fine_pred")):
        if _has(preds, col):
            m.update(classification_task(preds, labels, task, probs.get(task)))
    if has_text(preds):
        m.update(text_metrics(preds.text_true, preds.text_pred))
        m["T3_sentence_bleu"] = float(preds.bleu.astype(float).mean())
    return m


def per_disease(preds: pd.DataFrame, labels) -> dict[str, dict[str, float]]:
    """Accuracy and text metrics within each true coarse class (kappa, AUROC... need both classes: not here)."""
    out = {}
    for c, g in preds.groupby("coarse_true"):
        if c:
            m = {"n": len(g)}
            for task, level in (("T1", "coarse"), ("T2", "fine")):
                if _has(g, f"{level}_pred"):
                    m[f"{task}_acc"] = float((g[f"{level}_pred"] == g[f"{level}_true"]).mean())
            if has_text(g):
                m.update(text_metrics(g.text_true, g.text_pred))
            out[c] = m
    return out


def per_class_auroc(preds: pd.DataFrame, labels, probs: Mapping[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """One-vs-rest AUROC of every class present (with negatives), per task with probabilities."""
    out = {}
    for task, p in probs.items():
        if task in LEVEL and _has(preds, f"{LEVEL[task]}_pred"):
            y_true, _, classes = _task_labels(preds, labels, task)
            out[task] = {classes[k]: v for k, v in one_vs_rest(y_true, p, roc_auc_score).items()}
    return out


def disease_vs_normal(preds: pd.DataFrame, labels, normal: str = NORMAL) -> dict[str, dict[str, float]]:
    """T1 screening view. Per disease d: sensitivity = share of d images called d, specificity = share of
    normal images not called d; 'any disease': abnormal called abnormal, normal called normal. {} without
    a normal class or T1."""
    if not _has(preds, "coarse_pred") or normal not in labels.coarse:
        return {}
    true, pred = preds.coarse_true.to_numpy(), preds.coarse_pred.to_numpy()
    out = {}
    for disease in [c for c in labels.coarse if c != normal] + ["any disease"]:
        is_d = (true != normal) if disease == "any disease" else (true == disease)
        keep = is_d | (true == normal)
        if not (is_d.any() and (true == normal).any()):
            continue   # no images of d, or no normal images, in this split: undefined
        called = (pred != normal) if disease == "any disease" else (pred == disease)
        out[disease] = {"sensitivity": float(recall_score(is_d[keep], called[keep])),
                        "specificity": float(recall_score(~is_d[keep], ~called[keep])),
                        "n_disease": int(is_d.sum()), "n_normal": int((true == normal).sum())}
    return out


def confusion(preds: pd.DataFrame, labels, level: str = "coarse") -> pd.DataFrame:
    """Confusion matrix of T1 (level='coarse') or T2 ('fine'): rows true, columns predicted, every class."""
    classes = getattr(labels, level)
    return pd.crosstab(pd.Categorical(preds[f"{level}_true"], classes), pd.Categorical(preds[f"{level}_pred"], classes),
                       rownames=["true"], colnames=["predicted"], dropna=False)


# ---------------------------------------------------------------- baselines

def commonest_share(values: pd.Series) -> float:
    """Accuracy of always answering the commonest value."""
    return float(values.value_counts(normalize=True).iloc[0])


def constant_sentence(texts: Sequence[str], seed: int = 0) -> str:
    """The training sentence with the highest corpus BLEU-4 against the training sentences, said for every image.

    Candidates: the BASELINE_CANDIDATES commonest distinct sentences; references: all sentences, or a
    seeded draw of BASELINE_REFERENCES when there are more (keeps the search to about a second).
    """
    texts = list(texts)
    if not texts:
        raise ValueError("constant_sentence: no training sentences (T3 needs labeled training rows with text)")
    candidates = pd.Series(texts).value_counts().index[:BASELINE_CANDIDATES]
    rng = np.random.default_rng(seed)
    refs = texts if len(texts) <= BASELINE_REFERENCES else list(rng.choice(texts, BASELINE_REFERENCES, replace=False))
    tokens = [tokenize(t) for t in refs]
    scores = [corpus_bleu4(tokens, [tokenize(c)] * len(tokens)) for c in candidates]
    return str(candidates[int(np.argmax(scores))])   # ties: the commoner sentence


def constant_sentences(train: pd.DataFrame, by: Sequence[str] = ()) -> dict[tuple, str]:
    """The constant sentence of each group of training rows (columns text and `by`); key () for no grouping."""
    if not by:
        return {(): constant_sentence(train.text)}
    return {key if isinstance(key, tuple) else (key,): constant_sentence(g.text)
            for key, g in train.groupby(list(by), sort=True)}


T3_BASELINES = {"constant sentence": (), "constant per eye": ("eye",), "constant per (eye, coarse)": ("eye", "coarse")}


def text_baselines(train: pd.DataFrame, test: pd.DataFrame) -> pd.DataFrame:
    """T3 of constant sentences chosen on `train` (columns text, eye, coarse), scored on `test` (same columns).

    Rows: one sentence for all, one per eye, one per (eye, coarse class) — the last is what a model that
    knows only the eye and the coarse label could say. A test group unseen in training gets the global one.
    """
    overall = constant_sentence(train.text)
    rows = []
    for name, by in T3_BASELINES.items():
        chosen = constant_sentences(train, by)
        said = [chosen.get(tuple(r), overall) for r in test[list(by)].itertuples(index=False)] if by else \
            [overall] * len(test)
        rows.append({"baseline": name, **text_metrics(test.text, said), "sentences": len(chosen)})
    return pd.DataFrame(rows).set_index("baseline")


def train_baselines(data) -> dict[str, float]:
    """Per task, the primary metric of a constant answer chosen and scored on the training split.

    T1/T2: the commonest training class (its share); T3: BLEU-4 of the constant training sentence.
    Computed once per data split (stored on the data object: every tau and teacher of a split shares it).
    """
    cached = getattr(data, "_train_baselines", None)
    if cached is None:
        train = data.manifest.iloc[data.rows("train")]
        train = train[train.labeled.astype(int) == 1]
        tokens = [tokenize(t) for t in train.text]
        sentence = tokenize(constant_sentence(train.text))
        cached = {"T1": commonest_share(train.coarse), "T2": commonest_share(train.fine),
                  "T3": corpus_bleu4(tokens, [sentence] * len(tokens))}
        data._train_baselines = cached
    return cached


def skill(value: float, baseline: float) -> float:
    """(metric − baseline) / (1 − baseline): 0 at the baseline, 1 when perfect, negative below the baseline.

    A baseline of 1 (one class, or one sentence, in a tiny training split) leaves no room for skill: the
    score is then value − 1 (0 when perfect), so training still runs and no task divides by zero.
    """
    return value - baseline if baseline >= 1 else (value - baseline) / (1 - baseline)


def val_score(metrics: dict[str, float], tasks: tuple[str, ...], baselines: Mapping[str, float] | None = None) -> float:
    """Model selection score on validation: mean over tasks of the primary metric's skill above its baseline.

    Without baselines (all 0) this is the plain mean of accuracies and BLEU-4.
    """
    baselines = baselines or {}
    return float(np.mean([skill(metrics[PRIMARY[t]], baselines.get(t, 0.0)) for t in tasks]))
