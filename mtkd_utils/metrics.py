"""Test metrics from a predictions table: accuracy, top-k, macro F1, BLEU, per disease, confusion."""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score

from .text import corpus_bleu4, tokenize

PRIMARY = {"T1": "T1_acc", "T2": "T2_acc", "T3": "T3_bleu4"}   # what the paper reports per task


def _has(preds: pd.DataFrame, col: str) -> bool:
    return col in preds and (preds[col] != "").any()


def _bleu(preds: pd.DataFrame, n: int) -> float:
    refs = [tokenize(t) for t in preds.text_true]
    hyps = [tokenize(t) for t in preds.text_pred]
    return corpus_bleu4(refs, hyps, n=n)


def task_metrics(preds: pd.DataFrame, labels) -> dict[str, float]:
    """All metrics for the tasks present in `preds` (one row per evaluated image)."""
    m: dict[str, float] = {"n": int(len(preds))}
    if _has(preds, "coarse_pred"):
        m["T1_acc"] = float((preds.coarse_pred == preds.coarse_true).mean())
        m["T1_macro_f1"] = float(f1_score(preds.coarse_true, preds.coarse_pred, labels=labels.coarse, average="macro", zero_division=0))
    if _has(preds, "fine_pred"):
        top5 = preds.fine_top5.str.split("|")
        for k in range(1, 6):
            m[f"T2_top{k}"] = float(np.mean([t in tk[:k] for t, tk in zip(preds.fine_true, top5)]))
        m["T2_acc"] = float((preds.fine_pred == preds.fine_true).mean())
        m["T2_macro_f1"] = float(f1_score(preds.fine_true, preds.fine_pred, labels=sorted(set(preds.fine_true)), average="macro", zero_division=0))
    if _has(preds, "text_pred") or _has(preds, "bleu"):  # bleu is filled whenever T3 was decoded, even to ""
        for n in (1, 2, 3, 4):
            m[f"T3_bleu{n}"] = _bleu(preds, n)
        m["T3_sentence_bleu"] = float(preds.bleu.astype(float).mean())
    return m


def per_disease(preds: pd.DataFrame, labels) -> dict[str, dict[str, float]]:
    """The same metrics within each true coarse class."""
    return {c: task_metrics(g, labels) for c, g in preds.groupby("coarse_true") if c}


def confusion(preds: pd.DataFrame, labels) -> pd.DataFrame:
    """T1 confusion matrix: rows true, columns predicted, every class of the label map."""
    return pd.crosstab(pd.Categorical(preds.coarse_true, labels.coarse), pd.Categorical(preds.coarse_pred, labels.coarse),
                       rownames=["true"], colnames=["predicted"], dropna=False)


def val_score(metrics: dict[str, float], tasks: tuple[str, ...]) -> float:
    """Model selection score on validation: mean of the tasks' primary metrics (accuracy, BLEU-4)."""
    return float(np.mean([metrics[PRIMARY[t]] for t in tasks]))
