"""T3 beside the baselines report-generation work uses, every caption metric with a 95 % bootstrap CI.

Baselines, each scored with every metric of captions.T3_REPORT_METRICS on the same test images:
- constant per (eye, coarse): the consensus training sentence (metrics.constant_sentence: the highest corpus BLEU-4
  against the group's training sentences) of the image's true eye and coarse class;
- 1-NN retrieval: the sentence of the nearest labeled training image in the evaluated model's encoder space
  (train/retrieval.py, written by the test read as retrieval.csv);
- classify-then-describe: the consensus training sentence of the (eye, fine class) the model itself predicts: its
  T2 head's fine class and the eye its own sentence names (the model has no eye head). A decoder that loses to
  this adds nothing to the heads.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ..config import MODELS
from ..data import findings
from ..data.text import named_eye, sentence_bleu4, tokenize
from ..runs import RunKey, manifest_path
from ..train.metrics import constant_sentence, constant_sentences, has_text
from ..train.retrieval import RETRIEVAL_FILE, ensure_retrieval
from . import captions
from .bootstrap import bootstrap_table
from .results import collect_metrics, interval_table, load_labels, read_predictions

DECODER = "decoder"
BASELINES = ("constant per (eye, coarse)", "1-NN retrieval", "classify-then-describe")


def training_rows(experiment_dir: str | Path, run_dir: str | Path) -> pd.DataFrame:
    """The run's labeled training rows with a sentence (its split.csv): the manifest's image_id, eye, coarse, fine,
    text."""
    from ..data.manifest import read_manifest

    split = pd.read_csv(Path(run_dir) / "split.csv", dtype=str, keep_default_na=False)
    manifest = read_manifest(manifest_path(experiment_dir))
    train = manifest[manifest.image_id.isin(split.image_id[split.role == "train"]) & (manifest.labeled == "1")]
    return train[train.text != ""]


def consensus_sentences(train: pd.DataFrame) -> dict:
    """The consensus training sentences (metrics.constant_sentence) per (eye, coarse), (eye, fine), fine and overall:
    ~20 s for 2,000 training sentences, so t3_table computes them once per (p, seed)."""
    return {by: constant_sentences(train, by) for by in (("eye", "coarse"), ("eye", "fine"), ("fine",))} | {
        "overall": constant_sentence(train.text)}


def classify_then_describe(train: pd.DataFrame, fine: Sequence[str], eye: Sequence[str],
                           sentences: dict | None = None) -> list[str]:
    """Per image, the consensus training sentence of its (eye, fine class); where that pair has no training sentence
    or no eye is given (''), the fine class's over both eyes; for a fine class without any, the overall one.
    `sentences`: consensus_sentences(train), when already computed."""
    s = sentences or consensus_sentences(train)
    return [s[("eye", "fine")].get((e, f)) or s[("fine",)].get((f,)) or s["overall"] for e, f in zip(eye, fine)]


def said(preds: pd.DataFrame, sentences: Sequence[str]) -> pd.DataFrame:
    """A predictions table whose sentences are `sentences` (truths kept; sentence BLEU recomputed)."""
    out = preds[["image_id", "coarse_true", "fine_true", "text_true"]].copy()
    out["text_pred"] = list(sentences)
    out["bleu"] = [sentence_bleu4(tokenize(r), tokenize(h)) for r, h in zip(out.text_true, out.text_pred)]
    return out


def baseline_predictions(experiment_dir: str | Path, run_dir: str | Path,
                         sentences: dict | None = None) -> dict[str, pd.DataFrame]:
    """The baselines' sentences for the test images of one run, as predictions tables (BASELINES; 1-NN only where
    the run wrote retrieval.csv, classify-then-describe only for a model with T2 and T3). `sentences`:
    consensus_sentences of the run's training rows, when already computed (every model of a (p, seed) shares them)."""
    from ..data.manifest import read_manifest

    run_dir = Path(run_dir)
    preds, train = read_predictions(run_dir / "predictions.csv"), training_rows(experiment_dir, run_dir)
    test = read_manifest(manifest_path(experiment_dir)).set_index("image_id").loc[preds.image_id]
    s = sentences or consensus_sentences(train)
    out = {BASELINES[0]: said(preds, [s[("eye", "coarse")].get(k, s["overall"]) for k in zip(test.eye, test.coarse)])}
    if (run_dir / RETRIEVAL_FILE).exists():
        retrieved = read_predictions(run_dir / RETRIEVAL_FILE).set_index("image_id").text_retrieved
        out[BASELINES[1]] = said(preds, retrieved.loc[preds.image_id])
    if has_text(preds) and (preds.fine_pred != "").all():
        out[BASELINES[2]] = said(preds, classify_then_describe(train, preds.fine_pred,
                                                               [named_eye(t) for t in preds.text_pred], s))
    return out


def t3_table(experiment_dir: str | Path, seeds: Sequence[int] | None = None, tasks: str | None = None,
             metrics: Sequence[str] = captions.T3_REPORT_METRICS, n_boot: int = 500,
             models: Sequence[str] = MODELS, retrieve: bool = True) -> pd.DataFrame:
    """Long table (p, seed, model, sentences, metric, value, lo, hi, n): each model's decoder and its baselines on
    the test split, for the given seeds (None: every seed) and one task combination (default: the largest with
    T3); 95 % bootstrap CIs over the test images. Findings use the experiment's vocabulary and the user's synonyms (load_labels).

    The constant baseline is the same for every model of a (p, seed): it is listed once, with model ''. Empty when
    no run of these seeds has T3. `retrieve`: runs whose test read predates retrieval.csv get it from their saved
    weights (retrieval.ensure_retrieval: an encoder pass, no training); False leaves their 1-NN row out.
    """
    cols = ["p", "seed", "model", "sentences", "metric", "value", "lo", "hi", "n"]
    labels, runs = load_labels(experiment_dir), collect_metrics(experiment_dir)
    runs = runs[(runs.seed.isin(list(seeds)) if seeds is not None else True) & runs.model.isin(models)
                & runs.tasks.str.contains("T3")]
    if runs.empty:   # an experiment without T3 (or without these seeds): nothing to judge
        return pd.DataFrame(columns=cols)
    tasks = tasks or sorted(runs.tasks.unique(), key=lambda t: t.count("+"))[-1]
    extractor = findings.extractor_for(labels)
    frames, sentences = [], {}
    for run in runs[runs.tasks == tasks].sort_values(["p", "seed", "model"], key=_model_order).itertuples():
        if retrieve:
            ensure_retrieval(experiment_dir, RunKey(run.tasks, run.p, run.seed, run.model))
        first = (run.p, run.seed) not in sentences
        if first:
            sentences[run.p, run.seed] = consensus_sentences(training_rows(experiment_dir, run.run_dir))
        named = {DECODER: read_predictions(Path(run.run_dir) / "predictions.csv"),
                 **baseline_predictions(experiment_dir, run.run_dir, sentences[run.p, run.seed])}
        if not first:
            named.pop(BASELINES[0])
        for name, preds in named.items():
            ci = bootstrap_table(captions.finding_columns(preds, extractor), metrics, labels, n_boot=n_boot)
            frames.append(ci.assign(p=run.p, seed=run.seed, model="" if name == BASELINES[0] else run.model,
                                    sentences=name))
    return pd.concat(frames, ignore_index=True)[cols]


def _model_order(col: pd.Series) -> pd.Series:
    return col.map(MODELS.index) if col.name == "model" else col


def t3_wide(long: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """t3_table as rows (p, seed, model, sentences), columns metric: 'value [lo, hi]' ('' where not computed)."""
    return interval_table(long, "value", ["p", "seed", "model", "sentences"], digits)


def t3_summary(long: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """t3_table over its seeds: one row per (p, model, sentences), one column per metric: 'mean ± std' over the
    seeds, or the one seed's 'value [lo, hi]' where only one ran; `seeds` says how many. Metrics not computed
    (METEOR without Java) are left out."""
    long = long.dropna(subset=["value"])
    rows = []
    for (p, model, sentences), g in long.groupby(["p", "model", "sentences"], sort=False):
        row = {"p": p, "model": model, "sentences": sentences, "seeds": g.seed.nunique()}
        for metric, m in g.groupby("metric", sort=False):
            row[metric] = (f"{m.value.mean():.{digits}f} ± {m.value.std():.{digits}f}" if len(m) > 1 else
                           f"{m.value.iloc[0]:.{digits}f} [{m.lo.iloc[0]:.{digits}f}, {m.hi.iloc[0]:.{digits}f}]")
        rows.append(row)
    return pd.DataFrame(rows).set_index(["p", "model", "sentences"]).fillna("") if rows else pd.DataFrame()


def baseline_curves(long: pd.DataFrame, model: str = "M1") -> pd.DataFrame:
    """The baselines of `model` (and the constant) per p, mean over the seeds, for results.plot_vs_p's `curves`:
    name ('1-NN retrieval (M1)'), metric, p, value."""
    pick = long[(long.sentences != DECODER) & long.model.isin([model, ""])]
    name = pick.sentences.where(pick.model == "", pick.sentences + f" ({model})")
    curves = pick.assign(name=name).groupby(["name", "metric", "p"], sort=False).value.mean()
    return curves.reset_index()
