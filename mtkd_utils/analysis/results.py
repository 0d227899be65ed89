"""Results: gather every student run, Table 1 (mean ± std over seeds, with τ), figures against p, paired bootstrap.

The paper reports single numbers; here every cell says how many seeds it averages, and
`compare_models` / `compare_m3_m1` give paired bootstrap CIs over the test images (not in the paper).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import MODELS, task_key
from ..io import atomic_path, read_json, repair_hint, save_figure, verify_file
from ..runs import data_dir, manifest_path, student_runs
from ..train.metrics import LEVEL
from .bootstrap import BOOTSTRAP_METRICS, bootstrap_ci, bootstrap_table, has_task

TABLE1_METRICS = ("T1_acc", "T2_acc", "T3_bleu4")   # what the paper's Table 1 reports per task
KD_MODELS = ("M2", "M3")                            # the models with a temperature τ chosen on validation
HEADLINE_METRICS = ("T1_acc", "T1_balanced_acc", "T1_macro_f1", "T1_kappa", "T1_auroc", "T1_aupr", "T1_ece", "T1_nll",
                    "T2_acc", "T2_balanced_acc", "T2_macro_f1", "T2_top5", "T2_kappa", "T2_auroc", "T2_ece",
                    "T3_bleu4", "T3_rougeL", "T3_eye_acc")   # what 06 reports with CIs (docs/METHOD.md, "Metrics")
STD_DDOF = 1                                        # sample standard deviation over seeds
POOLED = "pooled"   # the seed of a comparison over every seed's test images at once (comparisons.compare_models)


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
    return df.sort_values(["tasks", "model", "p", "seed"], key=sort_key).reset_index(drop=True)


def _combo_rank(tasks: str) -> str:
    # task combinations as the paper orders them: pairs before the triple
    return f"{tasks.count('+')}{tasks}"


def sort_key(col: pd.Series) -> pd.Series:
    if col.name == "seed":   # the pooled comparison after the seeds
        return col.map(lambda s: math.inf if s == POOLED else float(s))
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
    """Accuracy, balanced accuracy and macro-F1 (T1, T2) of always answering the test split's commonest class.

    The bar a classifier must clear (balanced accuracy 1/classes, macro-F1 near 0 show what accuracy hides).
    Read from any run's predictions.csv (every run shares the test split). Empty without runs.
    """
    baseline = {}
    for _, run in student_runs(experiment_dir, "predictions.csv"):
        preds = read_predictions(run / "predictions.csv")
        for task, col in (("T1", "coarse_true"), ("T2", "fine_true")):
            if f"{task}_acc" not in baseline and (preds[col] != "").any():
                baseline.update(_constant_scores(preds[col], task))
        if "T1_acc" in baseline and "T2_acc" in baseline:
            break
    return pd.Series(baseline, name="commonest class", dtype=float)


def _constant_scores(truth: pd.Series, task: str) -> dict[str, float]:
    from sklearn.metrics import balanced_accuracy_score, f1_score
    said = np.full(len(truth), truth.value_counts().index[0], dtype=object)
    return {f"{task}_acc": float(np.mean(said == truth.to_numpy())),
            f"{task}_balanced_acc": float(balanced_accuracy_score(truth, said)),
            f"{task}_macro_f1": float(f1_score(truth, said, labels=sorted(set(truth)), average="macro",
                                               zero_division=0))}


def read_probs(run_dir: str | Path) -> dict[str, np.ndarray]:
    """probs_T1.npy / probs_T2.npy of a run folder (rows as predictions.csv); {} for runs without them."""
    return {task: np.load(verify_file(path, repair_hint(path)))
            for task in LEVEL if (path := Path(run_dir) / f"probs_{task}.npy").exists()}


def load_labels(experiment_dir: str | Path):
    """The experiment's label map (data/label_map.json, written by 01_data_prep), carrying the user's T3 findings
    synonyms (data/findings_synonyms.json, findings.read_synonyms) for the findings metrics."""
    from ..data.manifest import LabelMap
    from ..data.findings import read_synonyms
    labels = LabelMap.load(data_dir(experiment_dir) / "label_map.json")
    labels.findings_synonyms = read_synonyms(data_dir(experiment_dir))
    return labels


def run_cis(experiment_dir: str | Path, metrics: Sequence[str] = HEADLINE_METRICS, n_boot: int = 1000,
            seed: int = 0) -> pd.DataFrame:
    """Every finished run: each metric with its 95 % bootstrap CI over the test images (one row per run, metric)."""
    labels, frames = load_labels(experiment_dir), []
    for run in collect_metrics(experiment_dir).itertuples():
        ci = bootstrap_table(read_predictions(Path(run.run_dir) / "predictions.csv"), metrics, labels,
                             read_probs(run.run_dir), n_boot=n_boot, seed=seed)
        frames.append(ci.assign(tasks=run.tasks, model=run.model, p=run.p, seed=run.seed))
    cols = ["tasks", "model", "p", "seed", "metric", "value", "lo", "hi", "n"]
    return pd.concat(frames, ignore_index=True)[cols] if frames else pd.DataFrame(columns=cols)


def interval_text(values, lo, hi, digits: int = 3, sign: str = "") -> list[str]:
    """'value [lo, hi]' per row ('+' in `sign`: signed differences); empty where there is no value."""
    form = f"{sign}.{digits}f"
    return [f"{v:{form}} [{a:{form}}, {b:{form}}]" if pd.notna(v) else "" for v, a, b in zip(values, lo, hi)]


def interval_table(df: pd.DataFrame, value: str, index: list[str], digits: int, sign: str = "") -> pd.DataFrame:
    """Rows `index`, one column per metric (in their first order): 'value [lo, hi]'."""
    text = df.assign(text=interval_text(df[value], df.lo, df.hi, digits, sign))
    table = text.pivot(index=index, columns="metric", values="text")
    return table.reindex(columns=list(dict.fromkeys(df.metric))).fillna("")


def ci_table(cis: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """run_cis as rows (tasks, model, p, seed), columns metric: 'value [lo, hi]'."""
    return interval_table(cis, "value", ["tasks", "model", "p", "seed"], digits)


def t3_baselines(experiment_dir: str | Path, p: float) -> pd.DataFrame:
    """T3 constant-sentence baselines (metrics.text_baselines): chosen on the training sentences of fraction p,
    scored on the test split."""
    from ..data.manifest import read_manifest
    from ..data.splits import load_splits, select_fraction
    from ..train.metrics import text_baselines

    manifest = read_manifest(manifest_path(experiment_dir))
    roles = select_fraction(load_splits(data_dir(experiment_dir) / "splits.csv"), float(p)).set_index("image_id").role
    labeled = manifest[(manifest.labeled == "1") & (manifest.text != "")]
    role = labeled.image_id.map(roles)
    return text_baselines(labeled[role == "train"], labeled[role == "test"])


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
              tasks: str | None = None, n_boot: int = 1000, baseline: pd.Series | None = None,
              curves: pd.DataFrame | None = None):
    """Metric against p for M1, M2, M3, one panel per metric, with error bars; saved as PNG (300 dpi) and PDF.

    Error bars: ± std over seeds when a point has several seeds, else the 95 % bootstrap CI over
    the test images of its one run. `tasks`: the task combination (default: the largest one present).
    `baseline` (constant_baseline): a dashed line per metric it has, the level of no skill. `curves` (columns name,
    metric, p, value; t3.baseline_curves): a dotted line against p per name, in its metric's panel.
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
        for name, line in ([] if curves is None else curves[curves.metric == m].groupby("name", sort=False)):
            line = line.sort_values("p")
            ax.plot(line.p.astype(float), line.value, linestyle=":", marker="x", linewidth=1, label=name)
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


# ---------------------------------------------------------------- metric figures and tables (06)

def named_runs(experiment_dir: str | Path, tasks: str | None = None, seed: int = 0, models: Sequence[str] = MODELS,
               ps: Sequence[float] | None = None) -> dict[str, tuple[pd.DataFrame, dict[str, np.ndarray]]]:
    """{'M1 p=15': (predictions, probabilities)} of one task combination (default: the largest) and seed."""
    df = collect_metrics(experiment_dir)
    _check_metrics(df, [])
    tasks = tasks or _combo_order(df["tasks"])[-1]
    pick = (df["tasks"] == tasks) & (df["seed"] == seed) & df["model"].isin(models)
    if ps is not None:
        pick &= df["p"].astype(float).isin([float(p) for p in ps])
    return {f"{r.model} p={r.p:g}": (read_predictions(Path(r.run_dir) / "predictions.csv"), read_probs(r.run_dir))
            for r in df[pick].sort_values(["p", "model"]).itertuples()}


def metric_figures(experiment_dir: str | Path, out_dir: str | Path, ps: Sequence[float] | None = None, seed: int = 0,
                   calibration_models: Sequence[str] = ("M1", "M3")) -> list:
    """ROC curves per disease (M1/M2/M3 at each p), the reliability diagram (M1 vs M3) and confusion heatmaps
    (T1, and T2 grouped by coarse class, for each model at the largest p); PNG (300 dpi) + PDF under out_dir.

    ps: default the smallest and the largest p of the experiment; values absent from it are skipped (all present
    p when none of `ps` is). Runs saved before probabilities were (no probs_T1.npy) get confusion heatmaps only.
    """
    from ..train.metrics import class_indices, confusion
    from . import plots

    present = sorted({float(p) for p in collect_metrics(experiment_dir)["p"]})
    ps = [float(p) for p in (ps or (present[0], present[-1])) if float(p) in present] or present
    labels, runs, figs = load_labels(experiment_dir), named_runs(experiment_dir, seed=seed, ps=ps), []
    t1 = {name: (preds, probs["T1"]) for name, (preds, probs) in runs.items() if "T1" in probs}
    if t1:
        figs.append(plots.roc_curves(t1, labels, Path(out_dir) / "roc_T1"))
        calib = {name: (class_indices(preds["coarse_true"], labels.coarse, name), probs)
                 for name, (preds, probs) in t1.items() if name.split()[0] in calibration_models}
        figs.append(plots.reliability_diagram(calib, Path(out_dir) / "reliability_T1"))
    for name, (preds, _) in runs.items():
        if not name.endswith(f"p={max(ps):g}"):
            continue
        model = name.split()[0]
        if has_task(preds, "T1"):
            figs.append(plots.confusion_heatmap(confusion(preds, labels), f"T1, {name}",
                                                Path(out_dir) / f"confusion_T1_{model}"))
        if has_task(preds, "T2"):
            figs.append(plots.confusion_heatmap(confusion(preds, labels, "fine"), f"T2, {name}",
                                                Path(out_dir) / f"confusion_T2_{model}", groups=labels.fine_parent))
    return figs


def screening_table(experiment_dir: str | Path) -> pd.DataFrame:
    """T1 disease vs normal (metrics.json 'disease_vs_normal') of every run: sensitivity, specificity, n."""
    rows = []
    for run in collect_metrics(experiment_dir).itertuples():
        found = read_json(Path(run.run_dir) / "metrics.json").get("disease_vs_normal", {})
        rows += [{"tasks": run.tasks, "model": run.model, "p": run.p, "seed": run.seed, "disease": d, **v}
                 for d, v in found.items()]
    cols = ["tasks", "model", "p", "seed", "disease", "sensitivity", "specificity", "n_disease", "n_normal"]
    return pd.DataFrame(rows, columns=cols)
