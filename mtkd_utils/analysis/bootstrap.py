"""Bootstrap confidence intervals over test images for any metric, and the paired comparison of two models.

Label metrics resample per-image sums (or confusion matrices); AUROC/AUPR use weighted ranks equal to
scikit-learn's `sample_weight` results, so 1,000 resamples take about a second (docs/METHOD.md, "Metrics").
"""
from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from ..train.metrics import LEVEL, class_indices, eye_hits, has_text, rouge_l
from . import captions

BOOTSTRAP_METRICS = ("T1_acc", "T2_acc", "T3_bleu", "T3_bleu4")   # T3_bleu: mean sentence BLEU; T3_bleu4: corpus
# Fast bootstrap (sums of per-image statistics); every other T1_/T2_ metric of metrics.classification_task is
# recomputed by scikit-learn on each resample
SUM_METRICS = BOOTSTRAP_METRICS + ("T3_sentence_bleu", "T3_bleu1", "T3_bleu2", "T3_bleu3", "T3_rougeL", "T3_eye_acc")


def _ratio(s: np.ndarray) -> np.ndarray:
    """Σ first column / Σ second (NaN where a resample has nothing in the second)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return s[..., 0] / s[..., 1]


def _mean_stats(values: np.ndarray) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """Per-image sufficient statistics (value, 1) and the statistic from their sums: the mean."""
    return np.column_stack([values, np.ones(len(values))]), _ratio


def _bleu_stats(preds: pd.DataFrame, n: int = 4) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """Per-image clipped n-gram matches, n-gram counts, lengths; corpus BLEU-n from their sums (as nltk computes it)."""
    from nltk.translate.bleu_score import modified_precision

    from ..data.text import tokenize

    rows = []
    for ref_text, hyp_text in zip(preds["text_true"], preds["text_pred"]):
        ref, hyp = tokenize(ref_text), tokenize(hyp_text)
        prec = [modified_precision([ref], hyp, k) for k in range(1, n + 1)]
        rows.append([p.numerator for p in prec] + [p.denominator for p in prec] + [len(hyp), len(ref)])
    # Fractions are built unnormalised by nltk, so numerator/denominator are the raw counts it sums

    def corpus(s: np.ndarray) -> np.ndarray:
        matches, counts, hyp_len, ref_len = s[..., :n], s[..., n:2 * n], s[..., 2 * n], s[..., 2 * n + 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            # nltk without smoothing: an order with no match counts as the smallest float (a warning
            # and a score of ~1e-230), no unigram match at all scores 0
            p_n = np.where(matches > 0, matches / counts, sys.float_info.min)
            bp = np.where(hyp_len > ref_len, 1.0, np.exp(1 - ref_len / hyp_len))
            bleu = bp * np.exp(np.log(p_n).mean(axis=-1))
        return np.where((matches[..., 0] > 0) & (hyp_len > 0), bleu, 0.0)

    return np.asarray(rows, dtype=float), corpus


def has_task(preds: pd.DataFrame, metric: str) -> bool:
    if metric[:2] == "T3":   # decoded, even where every sentence came out empty (metrics.has_text)
        return has_text(preds)
    col = {"T1": "coarse_pred", "T2": "fine_pred"}[metric[:2]]
    return col in preds and (preds[col] != "").any()


def image_stats(preds: pd.DataFrame, metric: str) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """(N, k) per-image statistics and the function of their column sums that gives `metric`."""
    if metric in ("T1_acc", "T2_acc"):
        col = "coarse" if metric == "T1_acc" else "fine"
        if not (preds[f"{col}_pred"] != "").any():
            raise ValueError(f"metric={metric!r}: these predictions have no {col}_pred (the model lacks the task)")
        return _mean_stats((preds[f"{col}_pred"] == preds[f"{col}_true"]).to_numpy(float))
    if metric not in SUM_METRICS:
        raise ValueError(f"metric={metric!r}: choose one of {SUM_METRICS}, or a T1_/T2_ metric of "
                         "metrics.task_metrics (pass labels=, and probs= for AUROC, AUPR, ECE, NLL)")
    if not has_task(preds, metric):
        raise ValueError(f"metric={metric!r}: these predictions have no text_pred (the model lacks T3)")
    if metric.startswith("T3_bleu") and metric[-1].isdigit():
        return _bleu_stats(preds, int(metric[-1]))
    if metric == "T3_eye_acc":   # right eye named / eye named in the reference: NaN where no reference names one
        return eye_hits(preds["text_true"], preds["text_pred"]), _ratio
    if metric == "T3_rougeL":
        col = preds["rougeL"] if "rougeL" in preds and (preds["rougeL"] != "").all() else \
            rouge_l(preds["text_true"], preds["text_pred"])   # predictions.csv written before ROUGE-L was
        return _mean_stats(np.asarray(col, dtype=float))
    return _mean_stats(preds["bleu"].astype(float).to_numpy())


def _resample_weights(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) counts of each image in each bootstrap sample (resampling images with replacement)."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(float)


# Label metrics as functions of per-image sums (confusion counts, calibration residuals): the bootstrap then costs
# one matrix product for any number of resamples. Their values equal scikit-learn's (tests/test_results.py).
CONFUSION_METRICS = ("balanced_acc", "macro_f1", "kappa")
RESAMPLED_METRICS = ("auroc", "aupr", "odir_kappa", "odir_f1", "odir_auc", "odir_score")   # recomputed per resample


def _balanced_acc(cm: np.ndarray) -> np.ndarray:
    """Mean recall over the classes present, from (..., C, C) confusion counts (rows true)."""
    support = cm.sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.diagonal(cm, axis1=-2, axis2=-1) / support
    return np.nanmean(np.where(support > 0, recall, np.nan), axis=-1)


def _macro_f1(cm: np.ndarray) -> np.ndarray:
    """Mean F1 over the classes present in the truth (0 for a class never predicted right)."""
    tp, support, called = np.diagonal(cm, axis1=-2, axis2=-1), cm.sum(-1), cm.sum(-2)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(support + called > 0, 2 * tp / (support + called), 0.0)
    return (f1 * (support > 0)).sum(-1) / (support > 0).sum(-1)


def _kappa(cm: np.ndarray, quadratic: bool) -> np.ndarray:
    """Cohen's kappa, 1 − Σ w·observed / Σ w·expected, with 0/1 or squared-distance weights."""
    c = cm.shape[-1]
    i, j = np.indices((c, c))
    weights = (i - j) ** 2 if quadratic else (i != j).astype(float)
    expected = cm.sum(-1)[..., :, None] * cm.sum(-2)[..., None, :] / cm.sum((-2, -1))[..., None, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        return 1 - (weights * cm).sum((-2, -1)) / (weights * expected).sum((-2, -1))


def _label_stats(preds: pd.DataFrame, metric: str, labels, probs) -> tuple[np.ndarray, Callable] | None:
    """Per-image statistics of a T1_/T2_ metric and the function of their sums; None when it has none."""
    from ..train.metrics import ECE_BINS

    task, name = metric[:2], metric[3:]
    level = LEVEL[task]
    classes = getattr(labels, level)
    y = class_indices(preds[f"{level}_true"], classes, f"{level}_true")
    if name in CONFUSION_METRICS:
        pred = class_indices(preds[f"{level}_pred"], classes, f"{level}_pred")
        stats = np.zeros((len(y), len(classes) ** 2))
        stats[np.arange(len(y)), y * len(classes) + pred] = 1                   # one confusion cell per image
        score = {"balanced_acc": _balanced_acc, "macro_f1": _macro_f1,
                 "kappa": lambda cm: _kappa(cm, level in labels.ordered)}[name]
        return stats, lambda sums: score(sums.reshape(*sums.shape[:-1], len(classes), len(classes)))
    if name.startswith("top") and task == "T2":
        k = int(name[3:])
        return _mean_stats(np.array([t in tk.split("|")[:k] for t, tk in zip(preds.fine_true, preds.fine_top5)], float))
    p = probs[task].astype(np.float64)
    p = p / p.sum(1, keepdims=True)
    if name == "nll":
        return _mean_stats(-np.log(np.clip(p[np.arange(len(y)), y], 1e-15, None)))
    if name == "ece":   # Σ_bins |Σ (right − confidence)| / N
        conf = p.max(1)
        bins = np.clip(np.searchsorted(np.linspace(0, 1, ECE_BINS + 1), conf, side="left") - 1, 0, ECE_BINS - 1)
        stats = np.zeros((len(y), ECE_BINS + 1))
        stats[np.arange(len(y)), bins] = (p.argmax(1) == y) - conf
        stats[:, -1] = 1
        return stats, lambda sums: np.abs(sums[..., :-1]).sum(-1) / sums[..., -1]
    return None


def _ranked_scores(positive: np.ndarray, score: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One-vs-rest AUROC and average precision of one class under image weights w (B, n), ties as scikit-learn.

    AUROC: weighted share of (positive, negative) pairs ordered right, a tie counting one half; AP: Σ over
    score thresholds of (recall step) × precision. Equal to roc_auc_score / average_precision_score with
    sample_weight=w, for all B weightings in a few array operations.
    """
    order = np.argsort(-score, kind="stable")                      # descending: thresholds from the top
    s, pos = score[order], positive[order]
    wp, wn = w[:, order] * pos, w[:, order] * ~pos                 # (B, n)
    last = np.append(s[1:] != s[:-1], True)                        # the last image of each run of tied scores
    group = np.cumsum(np.append(True, last[:-1])) - 1              # each image's tie group, 0..G-1
    tp, fp = np.cumsum(wp, 1)[:, last], np.cumsum(wn, 1)[:, last]  # (B, G) at each threshold
    total_p, total_n = tp[:, -1:], fp[:, -1:]
    fp_before = np.concatenate([np.zeros_like(fp[:, :1]), fp[:, :-1]], 1)
    # a positive in group g outranks the negatives below g, ties with those in g
    below = total_n - fp[:, group] + 0.5 * (fp - fp_before)[:, group]
    with np.errstate(divide="ignore", invalid="ignore"):
        auroc = (wp * below).sum(1) / (total_p * total_n)[:, 0]
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)   # 0/0 only above every weighted image
        ap = (wp * precision[:, group]).sum(1) / total_p[:, 0]
    return auroc, ap


def _resampled(y: np.ndarray, probs: np.ndarray, name: str) -> tuple[np.ndarray, Callable] | Callable:
    """Macro one-vs-rest AUROC / AUPR as a function of the weights (in _rank_stats form), or the ODIR score term
    of the rows idx by scikit-learn."""
    if name.startswith("odir_"):
        from ..train.metrics import odir_score
        return lambda idx: odir_score(y[idx], probs[idx])[name[5:]]
    return _WeightedMacro(y, probs, 0 if name == "auroc" else 1)


class _WeightedMacro:
    """Macro over classes (with positives and negatives in the sample) of _ranked_scores[which], for weights w."""

    def __init__(self, y: np.ndarray, probs: np.ndarray, which: int):
        self.y, self.probs, self.which = y, probs, which

    def __call__(self, w: np.ndarray) -> np.ndarray:
        per_class = []
        for k in range(self.probs.shape[1]):
            positive = self.y == k
            if positive.any() and not positive.all():
                values = _ranked_scores(positive, self.probs[:, k], w)[self.which]
                present = ((w * positive).sum(1) > 0) & ((w * ~positive).sum(1) > 0)
                per_class.append(np.where(present, values, np.nan))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)   # a resample with no class left: nan
            return np.nanmean(per_class, axis=0) if per_class else np.full(len(w), np.nan)


def _label_metric(preds: pd.DataFrame, metric: str, labels, probs) -> tuple[np.ndarray, Callable] | Callable:
    """(stats, fn of sums) for a T1_/T2_ metric, or fn(rows) that scikit-learn recomputes on each resample."""
    task = metric[:2]
    if task not in LEVEL:
        raise ValueError(f"metric={metric!r}: choose one of {SUM_METRICS + captions.CAPTION_METRICS}, "
                         "or a T1_/T2_ metric of metrics.task_metrics")
    if not has_task(preds, metric):
        raise ValueError(f"metric={metric!r}: these predictions have no {LEVEL[task]}_pred (the model lacks {task})")
    if labels is None:
        raise ValueError(f"metric={metric!r}: pass labels= (the experiment's label map: results.load_labels)")
    if needs_probs(metric) and task not in (probs or {}):
        raise ValueError(f"metric={metric!r}: AUROC, AUPR, ECE, NLL and the ODIR score need probs= "
                         f"(probs_{task}.npy of the run: results.read_probs)")
    name = metric[3:]
    if name in RESAMPLED_METRICS:
        return _resampled(class_indices(preds[f"{LEVEL[task]}_true"], getattr(labels, LEVEL[task]), metric),
                          probs[task], name)
    found = _label_stats(preds, metric, labels, probs)
    if found is None:
        raise ValueError(f"metric={metric!r}: not a metric of metrics.classification_task")
    return found


def _indices(weights: np.ndarray) -> np.ndarray:
    """The image rows of one bootstrap sample from its counts (the same draws as the sums path)."""
    return np.repeat(np.arange(len(weights)), weights.astype(int))


def _metric_draws(preds: pd.DataFrame, metric: str, w: np.ndarray, labels=None, probs=None) -> tuple[float, np.ndarray]:
    """The metric on all images and on each of the bootstrap samples w (n_boot, n)."""
    if metric in SUM_METRICS:
        found = image_stats(preds, metric)
    elif metric in captions.CAPTION_METRICS:   # CIDEr-D, METEOR, the paper's BLEU, findings (analysis/captions.py)
        if not has_task(preds, metric):
            raise ValueError(f"metric={metric!r}: these predictions have no text_pred (the model lacks T3)")
        found = captions.image_stats(preds, metric, labels)
    else:
        found = _label_metric(preds, metric, labels, probs)
    if isinstance(found, _WeightedMacro):
        return float(found(np.ones((1, len(preds))))[0]), found(w)
    if isinstance(found, tuple):
        stats, fn = found
        return float(fn(stats.sum(axis=0))), fn(w @ stats)
    return float(found(np.arange(len(preds)))), np.array([found(_indices(row)) for row in w])


# Metrics whose resampled values are biased away from the estimate: the binned ECE sums |Σ (right − confidence)|
# per bin, and resampling adds noise inside each absolute value (Jensen), so its draws sit above the plug-in value
# (M1 at p = 70: ECE 0.017, percentile CI [0.022, 0.045]). Their CI is the percentile interval moved by the
# bootstrap's estimate of that bias (median draw − estimate): it keeps the spread and contains the estimate.
RECENTRED = ("ece",)


def _recentred(boot: np.ndarray, value: float, metric: str) -> np.ndarray:
    """The draws moved so that their median is `value`, for the metrics in RECENTRED; the others as they are."""
    if metric.split("_", 1)[-1] not in RECENTRED or np.isnan(boot).all():
        return boot
    return boot - (np.nanmedian(boot) - value)


def _interval(boot: np.ndarray, level: float) -> tuple[float, float]:
    if np.isnan(boot).all():   # a metric not computed (METEOR without Java): no interval either
        return float("nan"), float("nan")
    lo, hi = np.nanquantile(boot, [(1 - level) / 2, (1 + level) / 2])   # nan: a resample without a class's negatives
    return float(lo), float(hi)


def bootstrap_ci(preds: pd.DataFrame, metric: str, n_boot: int = 2000, seed: int = 0, level: float = 0.95,
                 labels=None, probs: dict[str, np.ndarray] | None = None) -> dict:
    """The metric and its percentile bootstrap CI over test images: dict(value, lo, hi, n); for ECE the interval
    is moved by the bootstrap's bias estimate (RECENTRED).

    Any metric of metrics.task_metrics: accuracy and T3 from per-image sums, the others (kappa, AUROC,
    ECE, ...) recomputed on each resample; those need `labels` (LabelMap) and, for the probability
    metrics, `probs` ({'T1': (N, C), ...} in the rows' order).
    """
    value, boot = _metric_draws(preds, metric, _resample_weights(len(preds), n_boot, seed), labels, probs)
    lo, hi = _interval(_recentred(boot, value, metric), level)
    return {"value": value, "lo": lo, "hi": hi, "n": len(preds)}


def bootstrap_table(preds: pd.DataFrame, metrics: Sequence[str], labels=None, probs=None, n_boot: int = 1000,
                    seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """bootstrap_ci of each metric the predictions can give (a task the model lacks is skipped).

    Columns: metric, value, lo, hi, n.
    """
    rows = [{"metric": m, **bootstrap_ci(preds, m, n_boot, seed, level, labels, probs)} for m in metrics
            if has_task(preds, m) and (m[:2] not in LEVEL or m[:2] in (probs or {}) or not needs_probs(m))]
    return pd.DataFrame(rows, columns=["metric", "value", "lo", "hi", "n"])


def needs_probs(metric: str) -> bool:
    return metric.split("_", 1)[1].split("_")[0] in ("auroc", "aupr", "ece", "nll", "odir")


def _aligned(preds_a: pd.DataFrame, preds_b: pd.DataFrame, probs_a, probs_b):
    """b's rows (and probabilities) in a's image order."""
    ids_a, ids_b = set(preds_a["image_id"]), set(preds_b["image_id"])
    if ids_a != ids_b:
        raise ValueError(f"preds_a and preds_b must cover the same test images: {len(ids_a - ids_b)} only in a, "
                         f"{len(ids_b - ids_a)} only in b")
    order_a = np.argsort(preds_a["image_id"].to_numpy(), kind="stable")
    pos_b = pd.Series(np.arange(len(preds_b)), index=preds_b["image_id"].to_numpy())
    order_b = pos_b.loc[preds_a["image_id"].to_numpy()[order_a]].to_numpy()
    take = lambda probs, order: {t: v[order] for t, v in (probs or {}).items()}  # noqa: E731
    return (preds_a.iloc[order_a].reset_index(drop=True), preds_b.iloc[order_b].reset_index(drop=True),
            take(probs_a, order_a), take(probs_b, order_b))


def paired_bootstrap(preds_a: pd.DataFrame, preds_b: pd.DataFrame, metric: str, n_boot: int = 2000,
                     seed: int = 0, level: float = 0.95, labels=None, probs_a=None, probs_b=None) -> dict:
    """b − a on the same test images: the difference, its percentile bootstrap CI and a two-sided p-value.

    Both models are scored on the same resampled images in each replicate (a paired bootstrap), so
    the image-to-image variation they share cancels. p_value: twice the smaller share of replicates
    on either side of 0 (add-one smoothed), i.e. the smallest level at which the CI excludes 0.
    Any metric of metrics.task_metrics (labels= and probs_a/probs_b= as bootstrap_ci needs them).
    """
    a, b, probs_a, probs_b = _aligned(preds_a, preds_b, probs_a, probs_b)
    w = _resample_weights(len(a), n_boot, seed)
    value_a, boot_a = _metric_draws(a, metric, w, labels, probs_a)
    value_b, boot_b = _metric_draws(b, metric, w, labels, probs_b)
    boot = _recentred(boot_b - boot_a, value_b - value_a, metric)
    lo, hi = _interval(boot, level)
    tail = min((boot <= 0).sum(), (boot >= 0).sum())
    return {"metric": metric, "a": value_a, "b": value_b, "diff": value_b - value_a, "lo": lo,
            "hi": hi, "p_value": float(min(1.0, 2 * (tail + 1) / (n_boot + 1))), "n": len(a),
            "n_boot": n_boot}


def seed_level_bootstrap(pairs: Sequence[tuple], metric: str, n_boot: int = 2000, seed: int = 0,
                         level: float = 0.95, labels=None) -> dict:
    """b − a averaged over training seeds, with an interval for the recipe: seeds and test images both resampled.

    pairs: one (preds_a, preds_b, probs_a, probs_b) per seed, all on one test split. The estimate's variance has
    the two levels' parts: the seeds' (the per-seed differences' variance over S: what resampling seeds measures,
    Bessel-corrected) and the test images' that every seed shares (its one test split: the covariance between
    seeds of their paired bootstrap draws, each replicate one resample of the images for every seed; the images'
    noise private to a seed is already in the seeds' spread). Interval: estimate ± t quantile on S − 1 degrees of
    freedom × standard error. A plain two-stage percentile bootstrap (seeds, then images within each) counts the
    private image noise twice and, on 5 seeds, covers ~85 % where it says 95 % (tests/test_comparisons.py).
    Returns a, b (means over seeds), diff (the mean per-seed difference), lo, hi, se, p_value (two-sided t),
    per_seed, n_seeds, n.
    """
    from scipy import stats

    if len(pairs) < 2:
        raise ValueError(f"seed_level_bootstrap: {len(pairs)} seed(s) given; a seed-level interval needs at least 2")
    aligned = [_aligned(*pair) for pair in pairs]
    ids = [tuple(a.image_id) for a, *_ in aligned]
    if any(i != ids[0] for i in ids):
        raise ValueError("seed_level_bootstrap: the seeds' predictions cover different test images; a seed-level "
                         "comparison needs one test split (one experiment folder)")
    w = _resample_weights(len(ids[0]), n_boot, seed)          # one image resample per replicate, for every seed
    values, per_seed, draws = [], [], []
    for a, b, probs_a, probs_b in aligned:
        value_a, boot_a = _metric_draws(a, metric, w, labels, probs_a)
        value_b, boot_b = _metric_draws(b, metric, w, labels, probs_b)
        values.append((value_a, value_b))
        per_seed.append(value_b - value_a)
        draws.append(_recentred(boot_b - boot_a, value_b - value_a, metric))
    s, diff = len(pairs), float(np.mean(per_seed))
    cov = np.ma.cov(np.ma.masked_invalid(np.stack(draws))).filled(0.0)      # (S, S) over the replicates
    shared = (cov.sum() - np.trace(cov)) / (s * (s - 1))                     # mean covariance between two seeds
    se = float(np.sqrt(np.var(per_seed, ddof=1) / s + max(shared, 0.0)))
    half = float(stats.t.ppf((1 + level) / 2, s - 1) * se)
    p_value = float(2 * stats.t.sf(abs(diff) / se, s - 1)) if se > 0 else (1.0 if diff == 0 else 0.0)
    mean_a, mean_b = np.mean(values, axis=0)
    return {"metric": metric, "a": float(mean_a), "b": float(mean_b), "diff": diff, "lo": diff - half,
            "hi": diff + half, "se": se, "p_value": p_value, "per_seed": [float(d) for d in per_seed],
            "n_seeds": s, "n": len(ids[0]) * s, "n_boot": n_boot}
