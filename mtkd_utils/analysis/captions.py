"""T3 judged as report-generation work judges it: caption metrics, clinical correctness and the paper's BLEU.

- BLEU-1..4, ROUGE-L and CIDEr-D from pycocoevalcap (R2Gen and the DeepEyeNet papers report these); METEOR from
  pycocoevalcap where a Java runtime is found, else NaN with a note ("not computed"), never 0. T3_meteor is the
  mean of the sentence scores (so that it has a bootstrap CI); pycocoevalcap's own corpus figure pools METEOR's
  statistics over sentences instead and differs slightly. CIDEr-D's CI holds the document frequencies at the full
  test split's.
- The corpus BLEU-n that metrics.json reports (nltk, no smoothing) equals pycocoevalcap's Bleu on the same tokens
  to 1e-6 (tests/test_captions.py), so T3_bleu1..4 keep their names and their bootstrap (bootstrap._bleu_stats).
- pycocoevalcap's ROUGE-L (T3_coco_rougeL) weighs recall by β = 1.2; T3_rougeL (rouge-score) is the plain F1.
- T3_paper_bleu: the paper's "BLEU" as the authors' code computes it (SahilC/mtl-kd-disease-recognition,
  utils.compute_bleu): the mean over sentences of nltk sentence_bleu without smoothing, uniform weights over the
  1..len n-gram orders for outputs of 1-3 tokens (BLEU-4 weights otherwise). Their code averages it per batch; with
  equal batches that is this mean. Not BLEU-4: reported ×100 in the paper (~48), on the 0-1 scale here.
- Clinical correctness (findings.py): finding precision / recall / F1 (micro, and macro over findings), and
  T3_fine_acc, the share of sentences that name the image's true fine class and no other.

Tokens: every metric sees the workbook's tokens (data/text.py tokenize: lower case, words and runs of punctuation,
'<unk>' whole) joined by single spaces. pycocoevalcap's PTBTokenizer (Stanford CoreNLP, Java) is not used: it
would tokenize differently from the nltk BLEU the workbook reports and would make Java a requirement.
"""
from __future__ import annotations

import atexit
import shutil
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from ..data.text import tokenize
from ..data import findings as fnd

FINDING_METRICS = ("T3_findings_precision", "T3_findings_recall", "T3_findings_f1", "T3_findings_f1_macro",
                   "T3_fine_acc")
CAPTION_METRICS = ("T3_ciderD", "T3_coco_rougeL", "T3_meteor", "T3_paper_bleu") + FINDING_METRICS
T3_REPORT_METRICS = ("T3_bleu1", "T3_bleu2", "T3_bleu3", "T3_bleu4", "T3_meteor", "T3_rougeL", "T3_coco_rougeL",
                     "T3_ciderD", "T3_paper_bleu", "T3_findings_precision", "T3_findings_recall", "T3_findings_f1",
                     "T3_findings_f1_macro", "T3_fine_acc", "T3_eye_acc")   # notebook 06's T3 table, in this order
METEOR_NOTE = "T3_meteor not computed: no Java runtime found (pycocoevalcap's METEOR runs java); install one for it"


def coco_inputs(references: Sequence[str], hypotheses: Sequence[str]) -> tuple[dict, dict]:
    """pycocoevalcap's (gts, res): {i: [the workbook's tokens joined by spaces]}, one reference per image."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses: give one of each per image")
    words = lambda t: " ".join(tokenize(t))   # noqa: E731
    return ({i: [words(r)] for i, r in enumerate(references)}, {i: [words(h)] for i, h in enumerate(hypotheses)})


def coco_bleu(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU-1..4 of pycocoevalcap (equal to the nltk corpus BLEU of metrics.text_metrics)."""
    from pycocoevalcap.bleu.bleu import Bleu

    scores, _ = Bleu(4).compute_score(*coco_inputs(references, hypotheses), verbose=0)
    return {f"T3_bleu{n}": float(s) for n, s in enumerate(scores, 1)}


def cider_d(references: Sequence[str], hypotheses: Sequence[str]) -> np.ndarray:
    """Per-sentence CIDEr-D (pycocoevalcap Cider: σ = 6 length penalty, clipped counts, ×10); the corpus score is
    their mean. Document frequencies come from the references given: a CI holds them at the full test split's."""
    from pycocoevalcap.cider.cider import Cider

    if not len(references):
        return np.zeros(0)
    _, scores = Cider().compute_score(*coco_inputs(references, hypotheses))
    return np.asarray(scores, dtype=float)


def coco_rouge_l(references: Sequence[str], hypotheses: Sequence[str]) -> np.ndarray:
    """Per-sentence ROUGE-L of pycocoevalcap (LCS F-measure with β = 1.2); the corpus score is their mean."""
    from pycocoevalcap.rouge.rouge import Rouge

    gts, res = coco_inputs(references, hypotheses)
    scorer = Rouge()
    return np.array([scorer.calc_score(res[i], gts[i]) if res[i][0] else 0.0 for i in gts], dtype=float)


_METEOR = {}


def _meteor_scorer():
    """One METEOR Java process per session (it takes ~10 s to load its paraphrase tables), closed at exit."""
    if "scorer" not in _METEOR:
        from pycocoevalcap.meteor.meteor import Meteor
        _METEOR["scorer"] = Meteor()
        atexit.register(_METEOR.clear)
    return _METEOR["scorer"]


def meteor(references: Sequence[str], hypotheses: Sequence[str]) -> np.ndarray:
    """Per-sentence METEOR 1.5 (pycocoevalcap); all NaN where no `java` is found (METEOR_NOTE), never 0."""
    if shutil.which("java") is None:
        return np.full(len(references), np.nan)
    if not len(references):
        return np.zeros(0)
    _, scores = _meteor_scorer().compute_score(*coco_inputs(references, hypotheses))
    return np.asarray(scores, dtype=float)


def paper_sentence_bleu(reference: Sequence[str], hypothesis: Sequence[str]) -> float:
    """One sentence's BLEU as the authors' code computes it: nltk sentence_bleu, no smoothing, weights 1/len over
    the 1..len orders for a 1-3 token output, (¼, ¼, ¼, ¼) otherwise (an empty output scores 0)."""
    from nltk.translate.bleu_score import sentence_bleu

    weights = (1 / len(hypothesis),) * len(hypothesis) if 0 < len(hypothesis) < 4 else (0.25,) * 4
    with warnings.catch_warnings():   # nltk warns on every order without a match: its ~0 is the authors' number
        warnings.simplefilter("ignore", UserWarning)
        return float(sentence_bleu([list(reference)], list(hypothesis), weights=weights))


def paper_bleu(references: Sequence[str], hypotheses: Sequence[str]) -> np.ndarray:
    """Per-sentence paper BLEU (paper_sentence_bleu on the workbook's tokens); the paper's figure is their mean."""
    return np.array([paper_sentence_bleu(tokenize(r), tokenize(h)) for r, h in zip(references, hypotheses)], float)


# ---------------------------------------------------------------- findings

def finding_columns(preds: pd.DataFrame, extractor: fnd.Extractor) -> pd.DataFrame:
    """preds with findings_true / findings_pred: the findings of text_true / text_pred, '|'-joined and sorted."""
    joined = lambda texts: ["|".join(sorted(extractor(t))) for t in texts]   # noqa: E731
    return preds.assign(findings_true=joined(preds.text_true), findings_pred=joined(preds.text_pred),
                        fine_named=[extractor.fine_class(t) for t in preds.text_pred])


def _finding_frame(preds: pd.DataFrame, labels) -> pd.DataFrame:
    """preds with the finding columns: as given (finding_columns with the user's synonyms), else from labels."""
    if {"findings_true", "findings_pred", "fine_named"} <= set(preds):
        return preds
    if labels is None:
        raise ValueError("T3 findings metrics: pass labels= (the experiment's label map: results.load_labels), or "
                         "predictions with finding columns (captions.finding_columns)")
    return finding_columns(preds, fnd.extractor_for(labels))


def _sets(column: pd.Series) -> list[frozenset]:
    return [frozenset(s.split("|")) - {""} for s in column]


def finding_metrics(preds: pd.DataFrame, labels=None) -> dict[str, float]:
    """Finding precision / recall / F1 (micro), macro F1, and the share of sentences naming the true fine class."""
    frame = _finding_frame(preds, labels)
    scores = fnd.finding_scores(_sets(frame.findings_true), _sets(frame.findings_pred))
    out = {f"T3_findings_{k.removesuffix('_micro')}": v for k, v in scores.items()}
    return {**out, "T3_fine_acc": float(np.mean(frame.fine_named.to_numpy() == frame.fine_true.to_numpy()))}


# ---------------------------------------------------------------- per-image statistics for the bootstrap

def _ratio(s: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return s[..., 0] / s[..., 1]


def _means(values: np.ndarray) -> tuple[np.ndarray, Callable]:
    return np.column_stack([values, np.ones(len(values))]), _ratio


def _finding_stats(preds: pd.DataFrame, metric: str, labels) -> tuple[np.ndarray, Callable]:
    frame = _finding_frame(preds, labels)
    if metric == "T3_fine_acc":
        return _means((frame.fine_named.to_numpy() == frame.fine_true.to_numpy()).astype(float))
    ref, hyp = _sets(frame.findings_true), _sets(frame.findings_pred)
    if metric == "T3_findings_f1_macro":   # per finding: (both, in reference, in hypothesis) -> mean F1 over present
        names = sorted(set().union(*ref))
        stats = np.array([[f in r and f in h for f in names] + [f in r for f in names] + [f in h for f in names]
                          for r, h in zip(ref, hyp)], dtype=float).reshape(len(ref), 3 * len(names))
        k = len(names)

        def macro(s: np.ndarray) -> np.ndarray:
            tp, n_ref, n_hyp = s[..., :k], s[..., k:2 * k], s[..., 2 * k:]
            with np.errstate(divide="ignore", invalid="ignore"):
                f1 = np.where(n_ref > 0, 2 * tp / (n_ref + n_hyp), np.nan)
                return np.nanmean(f1, axis=-1) if k else np.full(s.shape[:-1], np.nan)
        return stats, macro
    stats = np.array([[len(r & h), len(h), len(r)] for r, h in zip(ref, hyp)], dtype=float).reshape(len(ref), 3)
    pick = {"T3_findings_precision": lambda s: (s[..., 0], s[..., 1]),        # in common / said
            "T3_findings_recall": lambda s: (s[..., 0], s[..., 2]),           # in common / in the reference
            "T3_findings_f1": lambda s: (2 * s[..., 0], s[..., 1] + s[..., 2])}[metric]

    def micro(s: np.ndarray) -> np.ndarray:
        num, den = pick(s)
        with np.errstate(divide="ignore", invalid="ignore"):
            return num / den
    return stats, micro


def image_stats(preds: pd.DataFrame, metric: str, labels=None) -> tuple[np.ndarray, Callable]:
    """(N, k) per-image statistics of a CAPTION_METRICS metric and the function of their sums that gives it."""
    if metric in FINDING_METRICS:
        return _finding_stats(preds, metric, labels)
    score = {"T3_ciderD": cider_d, "T3_coco_rougeL": coco_rouge_l, "T3_meteor": meteor, "T3_paper_bleu": paper_bleu}
    if metric not in score:
        raise ValueError(f"metric={metric!r}: choose one of {CAPTION_METRICS}")
    return _means(score[metric](list(preds.text_true), list(preds.text_pred)))


def caption_metrics(preds: pd.DataFrame, labels=None) -> dict[str, float]:
    """Every T3 metric of T3_REPORT_METRICS for one predictions table (text_true, text_pred, fine_true)."""
    from ..train.metrics import text_metrics

    refs, hyps = list(preds.text_true), list(preds.text_pred)
    out = text_metrics(refs, hyps)
    out.update(T3_ciderD=float(cider_d(refs, hyps).mean()), T3_coco_rougeL=float(coco_rouge_l(refs, hyps).mean()),
               T3_meteor=float(meteor(refs, hyps).mean()), T3_paper_bleu=float(paper_bleu(refs, hyps).mean()))
    out.update(finding_metrics(preds, labels))
    return {m: out.get(m, np.nan) for m in T3_REPORT_METRICS}
