"""Results: gather every student run, Table 1 (mean ± std over seeds, with τ), figures against p, paired bootstrap.

The paper reports single numbers; here every cell says how many seeds it averages, and
`compare_models` / `compare_m3_m1` give paired bootstrap CIs over the test images (not in the paper).
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .config import MODELS, task_key
from .io import atomic_path, read_json, save_figure, verify_file
from .runs import student_dir, student_runs

TABLE1_METRICS = ("T1_acc", "T2_acc", "T3_bleu4")   # what the paper's Table 1 reports per task
KD_MODELS = ("M2", "M3")                            # the models with a temperature τ chosen on validation
BOOTSTRAP_METRICS = ("T1_acc", "T2_acc", "T3_bleu", "T3_bleu4")   # T3_bleu: mean sentence BLEU; T3_bleu4: corpus
STD_DDOF = 1                                        # sample standard deviation over seeds


# ---------------------------------------------------------------- gathering runs

def collect_metrics(experiment_dir: str | Path) -> pd.DataFrame:
    """One row per students/<tasks>/p<P>_s<seed>/<model>/metrics.json: model, tasks, p, seed, tau, test metrics."""
    rows = []
    for key, run in student_runs(experiment_dir):
        m = read_json(run / "metrics.json")
        rows.append({"model": key.model, "tasks": task_key(key.tasks), "p": key.p_label,
                     "seed": key.seed, "tau": m.get("tau"), **m["test"], "run_dir": str(run)})
    cols = ["model", "tasks", "p", "seed", "tau"]
    df = pd.DataFrame(rows, columns=None if rows else cols + ["run_dir"])
    return df.sort_values(["tasks", "model", "p", "seed"], key=_sort_key).reset_index(drop=True)


def _combo_rank(tasks: str) -> str:
    # task combinations as the paper orders them: pairs before the triple
    return f"{tasks.count('+')}{tasks}"


def _sort_key(col: pd.Series) -> pd.Series:
    return col.map(_combo_rank) if col.name == "tasks" else col


def _combo_order(tasks: Sequence[str]) -> list[str]:
    return sorted(set(tasks), key=_combo_rank)


def _check_metrics(df: pd.DataFrame, metrics: Sequence[str]) -> None:
    if df.empty:
        raise ValueError("no runs: no students/<tasks>/p<P>_s<seed>/<model>/metrics.json in the experiment folder")
    missing = [m for m in metrics if m not in df]
    if missing:
        raise ValueError(f"metrics: {missing} not among the collected columns {sorted(df.columns)}")


# ---------------------------------------------------------------- Table 1

def _taus(values: pd.Series) -> str:
    """'5' when seeds agree, '2,5' when they do not, '' when there is no τ."""
    taus = sorted({float(v) for v in values.dropna()})
    return ",".join(f"{t:g}" for t in taus)


def table1_stats(df: pd.DataFrame, metrics: Sequence[str] = TABLE1_METRICS) -> pd.DataFrame:
    """Long numeric table: tasks, model, metric, p -> mean, std (over seeds, ddof=1), n_seeds, taus."""
    _check_metrics(df, metrics)
    long = df.melt(id_vars=["tasks", "model", "p", "seed", "tau"], value_vars=list(metrics), var_name="metric")
    long = long.dropna(subset=["value"])   # a task the combination does not have leaves no value
    groups = long.groupby(["tasks", "model", "metric", "p"], sort=False)
    stats = groups["value"].agg(mean="mean", std=lambda v: v.std(ddof=STD_DDOF), n_seeds="count")
    stats["taus"] = groups["tau"].agg(_taus)
    return stats.reset_index()


def _format_cell(row: pd.Series, digits: int) -> str:
    """'0.762 ± 0.010 (τ=5)'; a single seed has no ± part; M1 has no τ."""
    text = f"{row['mean']:.{digits}f}"
    if row["n_seeds"] > 1:
        text += f" ± {row['std']:.{digits}f}"
    if row["model"] in KD_MODELS and row["taus"]:
        text += f" (τ={row['taus']})"
    return text


def table1(df: pd.DataFrame, metrics: Sequence[str] = TABLE1_METRICS, digits: int = 3) -> pd.DataFrame:
    """Rows (tasks, model), columns (metric, p): 'mean ± std (τ=…)' strings; blank where a task is missing.

    The numbers behind it: `table1_stats(df, metrics)` (or pivot it: `.pivot_table(index=["tasks", "model"],
    columns=["metric", "p"], values="mean")`).
    """
    stats = table1_stats(df, metrics)
    stats["text"] = stats.apply(_format_cell, axis=1, digits=digits)
    table = stats.pivot(index=["tasks", "model"], columns=["metric", "p"], values="text")
    rows = pd.MultiIndex.from_tuples([(t, m) for t in _combo_order(df["tasks"]) for m in MODELS
                                      if ((df["tasks"] == t) & (df["model"] == m)).any()], names=["tasks", "model"])
    cols = pd.MultiIndex.from_tuples([(m, p) for m in metrics for p in sorted(df["p"].unique())], names=["metric", "p"])
    return table.reindex(index=rows, columns=cols).astype(object).fillna("")


def constant_baseline(experiment_dir: str | Path) -> pd.Series:
    """T1_acc / T2_acc of always answering the test split's commonest class: the bar a classifier must clear.

    Read from any run's predictions.csv (every run shares the test split). Empty without runs.
    """
    baseline = {}
    for _, run in student_runs(experiment_dir, "predictions.csv"):
        preds = read_predictions(run / "predictions.csv")
        for metric, col in (("T1_acc", "coarse_true"), ("T2_acc", "fine_true")):
            if metric not in baseline and (preds[col] != "").any():
                baseline[metric] = float(preds[col].value_counts(normalize=True).iloc[0])
        if len(baseline) == 2:
            break
    return pd.Series(baseline, name="commonest class", dtype=float)


def baseline_note(baseline: pd.Series) -> str:
    """One sentence for under Table 1."""
    if baseline.empty:
        return ""
    shown = ", ".join(f"{k} {v:.3f}" for k, v in baseline.items())
    return f"Always answering the test split's commonest class scores {shown}: accuracies near these are no skill."


# ---------------------------------------------------------------- saving tables

def _flat(table: pd.DataFrame) -> pd.DataFrame:
    """Index as columns, MultiIndex columns joined ('T1_acc p=15'): for CSV and Markdown."""
    flat = table.copy()
    if isinstance(flat.columns, pd.MultiIndex):
        names = flat.columns.names
        flat.columns = [" ".join(f"{n}={v}" if n == "p" else str(v) for n, v in zip(names, col))
                        for col in flat.columns]
    has_index = any(n is not None for n in flat.index.names)
    return flat.reset_index() if has_index else flat


def _md_row(values) -> str:
    # a '|' inside a cell would split it
    return "| " + " | ".join(str(v).replace("|", "\\|") for v in values) + " |"


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub Markdown table (pandas' to_markdown needs `tabulate`, which the workbook does not install)."""
    flat = _flat(table).astype(object).where(lambda d: d.notna(), "")
    lines = [_md_row(flat.columns), _md_row("---" for _ in flat.columns)]
    lines += [_md_row(row) for row in flat.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def to_latex(table: pd.DataFrame, caption: str | None = None) -> str:
    """A booktabs LaTeX table (pandas Styler), with ± and τ as math so pdflatex takes it."""
    styler = table.style.format(escape="latex", na_rep="").format_index(escape="latex", axis=0)
    styler = styler.format_index(escape="latex", axis=1)
    tex = styler.to_latex(hrules=True, multicol_align="c", multirow_align="t", caption=caption)
    return tex.replace("±", r"$\pm$").replace("τ", r"$\tau$")


def save_table(table: pd.DataFrame, stem: str | Path) -> list[Path]:
    """Write <stem>.csv, <stem>.md and <stem>.tex; return the paths."""
    stem = Path(stem)
    texts = {".csv": _flat(table).to_csv(index=False), ".md": to_markdown(table), ".tex": to_latex(table)}
    paths = []
    for suffix, text in texts.items():
        path = stem.with_name(stem.name + suffix)
        with atomic_path(path) as tmp:
            tmp.write_text(text)
        paths.append(path)
    return paths


# ---------------------------------------------------------------- bootstrap over test images

def read_predictions(path: str | Path) -> pd.DataFrame:
    """predictions.csv with empty cells kept as '' (a task the model does not have)."""
    return pd.read_csv(verify_file(path), dtype=str, keep_default_na=False)


def _mean_stats(values: np.ndarray) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """Per-image sufficient statistics (value, 1) and the statistic from their sums: the mean."""
    return np.column_stack([values, np.ones(len(values))]), lambda s: s[..., 0] / s[..., 1]


def _bleu_stats(preds: pd.DataFrame, n: int = 4) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """Per-image clipped n-gram matches, n-gram counts, lengths; corpus BLEU-n from their sums (as nltk computes it)."""
    from nltk.translate.bleu_score import modified_precision
    from .text import tokenize

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


def image_stats(preds: pd.DataFrame, metric: str) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """(N, k) per-image statistics and the function of their column sums that gives `metric`."""
    if metric in ("T1_acc", "T2_acc"):
        col = "coarse" if metric == "T1_acc" else "fine"
        if not (preds[f"{col}_pred"] != "").any():
            raise ValueError(f"metric={metric!r}: these predictions have no {col}_pred (the model lacks the task)")
        return _mean_stats((preds[f"{col}_pred"] == preds[f"{col}_true"]).to_numpy(float))
    if metric not in ("T3_bleu", "T3_sentence_bleu", "T3_bleu4"):
        raise ValueError(f"metric={metric!r}: choose one of {BOOTSTRAP_METRICS}")
    if not (preds["text_pred"] != "").any():
        raise ValueError(f"metric={metric!r}: these predictions have no text_pred (the model lacks T3)")
    if metric == "T3_bleu4":
        return _bleu_stats(preds)
    return _mean_stats(preds["bleu"].astype(float).to_numpy())


def _resample_weights(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) counts of each image in each bootstrap sample (resampling images with replacement)."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(float)


def bootstrap_ci(preds: pd.DataFrame, metric: str, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """The metric and its percentile bootstrap CI over test images: dict(value, lo, hi, n)."""
    stats, fn = image_stats(preds, metric)
    boot = fn(_resample_weights(len(stats), n_boot, seed) @ stats)
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return {"value": float(fn(stats.sum(axis=0))), "lo": float(lo), "hi": float(hi), "n": len(stats)}


def paired_bootstrap(preds_a: pd.DataFrame, preds_b: pd.DataFrame, metric: str, n_boot: int = 2000,
                     seed: int = 0, level: float = 0.95) -> dict:
    """b − a on the same test images: the difference, its percentile bootstrap CI and a two-sided p-value.

    Both models are scored on the same resampled images in each replicate (a paired bootstrap), so
    the image-to-image variation they share cancels. p_value: twice the smaller share of replicates
    on either side of 0 (add-one smoothed), i.e. the smallest level at which the CI excludes 0.
    """
    ids_a, ids_b = set(preds_a["image_id"]), set(preds_b["image_id"])
    if ids_a != ids_b:
        raise ValueError(f"preds_a and preds_b must cover the same test images: {len(ids_a - ids_b)} only in a, "
                         f"{len(ids_b - ids_a)} only in b")
    a = preds_a.set_index("image_id").sort_index()
    b = preds_b.set_index("image_id").loc[a.index]   # align b's rows on a's images
    (stats_a, fn), (stats_b, _) = image_stats(a, metric), image_stats(b, metric)
    w = _resample_weights(len(a), n_boot, seed)
    boot = fn(w @ stats_b) - fn(w @ stats_a)
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    value_a, value_b = float(fn(stats_a.sum(axis=0))), float(fn(stats_b.sum(axis=0)))
    tail = min((boot <= 0).sum(), (boot >= 0).sum())
    return {"metric": metric, "a": value_a, "b": value_b, "diff": value_b - value_a, "lo": float(lo),
            "hi": float(hi), "p_value": float(min(1.0, 2 * (tail + 1) / (n_boot + 1))), "n": len(a),
            "n_boot": n_boot}


def _has_task(preds: pd.DataFrame, metric: str) -> bool:
    col = {"T1": "coarse_pred", "T2": "fine_pred", "T3": "text_pred"}[metric[:2]]
    return col in preds and (preds[col] != "").any()


def compare_models(experiment_dir: str | Path, a: str = "M1", b: str = "M3", metrics: Sequence[str] = TABLE1_METRICS,
                   n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per (tasks, p, seed, metric): model b − model a on the same test images, with a 95 % paired bootstrap CI."""
    rows = []
    for key, run_b in student_runs(experiment_dir, "predictions.csv"):
        path_a = student_dir(experiment_dir, key.with_model(a)) / "predictions.csv"
        if key.model != b or not path_a.exists():
            continue   # the grid is not finished there yet
        preds_a, preds_b = read_predictions(path_a), read_predictions(run_b / "predictions.csv")
        for metric in metrics:
            if _has_task(preds_a, metric) and _has_task(preds_b, metric):
                res = paired_bootstrap(preds_a, preds_b, metric, n_boot=n_boot, seed=seed)
                rows.append({"tasks": task_key(key.tasks), "p": key.p_label, "seed": key.seed, **res})
    cols = ["tasks", "p", "seed", "metric", "a", "b", "diff", "lo", "hi", "p_value", "n", "n_boot"]
    out = pd.DataFrame(rows, columns=cols).rename(columns={"a": a, "b": b, "diff": f"{b}-{a}"})
    return out.sort_values(["tasks", "metric", "p", "seed"], key=_sort_key).reset_index(drop=True)


def compare_m3_m1(experiment_dir: str | Path, metrics: Sequence[str] = TABLE1_METRICS, n_boot: int = 2000,
                  seed: int = 0) -> pd.DataFrame:
    """M3 − M1 per (tasks, p, seed, metric) with paired bootstrap CIs: does the teacher ensemble help?"""
    return compare_models(experiment_dir, "M1", "M3", metrics, n_boot=n_boot, seed=seed)


# ---------------------------------------------------------------- figures

def _error_bar(runs: pd.DataFrame, metric: str, n_boot: int) -> tuple[float, float, str]:
    """(below, above) the mean: std over seeds, or the bootstrap CI of a single seed's predictions."""
    mean = runs[metric].mean()
    if len(runs) > 1:
        std = runs[metric].std(ddof=STD_DDOF)
        return std, std, "std"
    preds = Path(runs["run_dir"].iloc[0]) / "predictions.csv" if "run_dir" in runs else None
    if metric not in BOOTSTRAP_METRICS or preds is None or not preds.exists():
        return 0.0, 0.0, "none"
    ci = bootstrap_ci(read_predictions(preds), metric, n_boot=n_boot)
    # clipped at 0: rounding, or a percentile CI of a non-linear metric (BLEU) that misses the estimate
    return max(mean - ci["lo"], 0.0), max(ci["hi"] - mean, 0.0), "ci"


def plot_vs_p(df: pd.DataFrame, metric: str | Sequence[str], path_stem: str | Path | None = None,
              tasks: str | None = None, n_boot: int = 1000, baseline: pd.Series | None = None):
    """Metric against p for M1, M2, M3, one panel per metric, with error bars; saved as PNG (300 dpi) and PDF.

    Error bars: ± std over seeds when a point has several seeds, else the 95 % bootstrap CI over
    the test images of its one run. `tasks`: the task combination (default: the largest one present).
    `baseline` (constant_baseline): a dashed line per metric it has, the level of no skill.
    """
    import matplotlib.pyplot as plt

    metrics = [metric] if isinstance(metric, str) else list(metric)
    _check_metrics(df, metrics)
    tasks = tasks or _combo_order(df["tasks"])[-1]
    sub = df[df["tasks"] == tasks]
    if sub.empty:
        raise ValueError(f"tasks={tasks!r}: no runs; present are {_combo_order(df['tasks'])}")
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    kinds = set()
    for ax, m in zip(axes[0], metrics):
        for offset, model in zip((-0.6, 0.0, 0.6), MODELS):   # small x offsets keep the bars apart
            runs = sub[(sub["model"] == model) & sub[m].notna()]
            if runs.empty:
                continue
            ps = sorted(runs["p"].unique())
            bars = [_error_bar(runs[runs["p"] == p], m, n_boot) for p in ps]
            kinds |= {k for *_, k in bars}
            ax.errorbar(np.array(ps) + offset, [runs.loc[runs["p"] == p, m].mean() for p in ps],
                        yerr=np.array([b[:2] for b in bars]).T, marker="o", capsize=3, label=model)
        if baseline is not None and m in baseline:
            ax.axhline(baseline[m], color="0.5", linestyle="--", linewidth=1, label="commonest class")
        ax.set(xlabel="p (% of the labeled data used for training)", ylabel=m, title=f"{m} — {tasks}")
        ax.set_xticks(sorted(sub["p"].unique()))
        ax.set_xlim(sub["p"].min() - 5, sub["p"].max() + 5)   # room for the offsets, also with one p
        ax.grid(alpha=0.3)
        # below the panel, under its x label: a legend inside would sit on the lines and error bars
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=4, fontsize=7, frameon=False)
    fig.text(0.01, 0.01, "error bars: " + _bar_note(kinds), fontsize=7, color="0.4")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    if path_stem is not None:
        save_figure(fig, path_stem)
    return fig


def _bar_note(kinds: set[str]) -> str:
    notes = {"std": "± std over seeds", "ci": "95 % bootstrap CI over test images (one seed)",
             "none": "none (one seed, no predictions)"}
    return "; ".join(notes[k] for k in ("std", "ci", "none") if k in kinds) or "none"
