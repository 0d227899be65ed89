"""`make readme` (`python -m mtkd_utils.readme outputs/demo`): the demo's results, written from a finished experiment.

Copies the figures into docs/figures/, rewrites the whole results section of docs/RESULTS.md (between
`<!-- demo-results:begin -->` and `<!-- demo-results:end -->`) and the README's summary, Table 1 with n, CIs and the
baselines and the main figure (between `<!-- demo-summary:begin -->` and `<!-- demo-summary:end -->`); nothing
outside the markers is touched, so no number is typed by hand.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import pandas as pd
from PIL import Image

from ..analysis.comparisons import SEED_LEVEL, claims_table
from ..analysis.convergence import training_progress
from ..analysis.t3 import t3_summary
from ..analysis.results import (
    POOLED,
    baseline_note,
    ci_table,
    collect_metrics,
    constant_baseline,
    interval_text,
    table1,
    table1_stats,
    to_markdown,
)
from ..config import MODELS, TASKS, task_key
from ..io import REPO_ROOT, atomic_path, read_json
from ..runs import analysis_dir, student_runs, study_dir
from .readme_targets import TARGET_P, _t3_oracle, _test_images, targets

BEGIN, END = "<!-- demo-results:begin -->", "<!-- demo-results:end -->"                 # docs/RESULTS.md
SUMMARY_BEGIN, SUMMARY_END = "<!-- demo-summary:begin -->", "<!-- demo-summary:end -->"   # README.md
RESULTS_DOC = REPO_ROOT / "docs" / "RESULTS.md"
FIGURES = {  # experiment file -> name under docs/figures
    "data/figures/samples.png": "samples.jpg",          # photographs: JPEG keeps the docs light
    "results/metrics_vs_p.png": "metrics_vs_p.png",
    "gradcam/gradcam_M3.png": "gradcam_M3.jpg",
    "analysis/examples.png": "error_examples.jpg",
    "results/roc_T1.png": "roc_T1.png",
    "results/reliability_T1.png": "reliability_T1.png",
    "study/study.png": "study.png",
}
README_TABLE1 = ("T1_acc", "T2_acc", "T2_balanced_acc", "T2_macro_f1", "T3_bleu4")   # T2: what accuracy hides
README_CI_METRICS = ("T1_auroc", "T1_kappa", "T1_ece", "T2_balanced_acc", "T3_rougeL", "T3_eye_acc")   # beside Table 1, with CIs


def _web_copy(src: Path, dst: Path, width: int = 1000) -> None:
    """A README-sized copy of a 300-dpi figure (the full-resolution PNG and PDF stay in the experiment)."""
    with Image.open(src) as im:
        im = im.convert("RGB")
        if im.width > width:
            im = im.resize((width, round(im.height * width / im.width)), Image.Resampling.LANCZOS)
        with atomic_path(dst) as tmp:
            options = dict(format="JPEG", quality=85) if dst.suffix == ".jpg" else dict(format="PNG", optimize=True)
            im.save(tmp, **options)


def _md(df: pd.DataFrame, digits: int = 3) -> str:
    return to_markdown(df.round(digits).reset_index())


def _localisation(exp: Path) -> str:
    path = analysis_dir(exp, "gradcam") / "localisation.csv"
    if not path.exists():
        return "_(no Grad-CAM run yet)_"
    t = pd.read_csv(path)
    t = t[t.disease == "all"].set_index("run")[["n_scored", "pointing", "pointing_chance", "energy", "mask_share",
                                                "n_flat"]]
    return _md(t)


def _number(value: float) -> str:
    """0.85 -> '0.85', 1082.0 -> '1082', NaN -> ''."""
    return "" if pd.isna(value) else f"{value:.3f}".rstrip("0").rstrip(".")


def _targets(exp: Path) -> list[str]:
    shown = targets(exp).assign(value=lambda t: t.value.map(_number), threshold=lambda t: t.threshold.map(_number))
    return ["**The demo's targets, checked on the experiment's files** (M1 on every task, test split, mean over "
            "seeds; baselines: the commonest class and 06's constant sentences; the CAM: 05's localisation; "
            "\"not run\": the experiment lacks the runs):", "", to_markdown(shown.set_index("target"))]


def _progress(exp: Path) -> list[str]:
    progress = training_progress(exp)
    if progress.empty:
        return []
    return ["", "**How far each model is from its validation plateau** (every trained model's history.csv, mean over "
            "seeds; `last_quarter_gain`: the best validation score in the last quarter of the epochs minus the best "
            "before — about 0 or below: plateau reached; clearly above 0: still improving; M1 is the teacher on "
            "every task):", "", _md(progress.set_index(["model", "tasks", "p"]))]


def _comparisons(exp: Path) -> list[str]:
    path = analysis_dir(exp, "results") / "kd_comparisons.csv"
    comparisons = pd.read_csv(path) if path.exists() else pd.DataFrame()
    if comparisons.empty:
        return []
    return ["", "**The students against M1, M1b (M1 at the student's updates) and M1L (M1 at its validation plateau)"
            "**, b − a on the test split: each seed's difference, the image-level 95 % CI (every seed's test images: "
            "these trained models) and the seed-level one (seeds, then images: this recipe, the one a claim needs; "
            "docs/METHOD.md \"Metrics\"); per-seed CIs in `results/kd_comparisons.csv`:", "",
            to_markdown(claims_table(comparisons))]


# the T3 table's columns in the results page: the field's caption metrics, the paper's BLEU and clinical correctness
README_T3_METRICS = ("T3_bleu1", "T3_bleu4", "T3_meteor", "T3_rougeL", "T3_ciderD", "T3_paper_bleu",
                     "T3_findings_f1", "T3_fine_acc", "T3_eye_acc")


def _t3(exp: Path) -> list[str]:
    """Notebook 06's T3 table (each decoder beside its retrieval, classify-then-describe and constant baselines)
    and the students' effect on T3 (kd_comparisons_t3.csv), where 06 wrote them."""
    results = analysis_dir(exp, "results")
    parts = []
    if (results / "t3_table.csv").exists():
        long = pd.read_csv(results / "t3_table.csv", keep_default_na=False, na_values=[""])
        long = long[long.metric.isin(README_T3_METRICS)].dropna(subset=["value"])   # METEOR: NaN without Java
        if not long.empty:
            n = int(long.n.max())
            parts += ["", f"**T3, the sentences, judged as report generation is** (test split, n = {n:,} images per "
                      "seed; mean ± std over the seeds, or one seed's value and 95 % bootstrap CI over the images "
                      "(every seed's CIs: `results/t3_table.csv`); pycocoevalcap's CIDEr-D and METEOR, corpus BLEU, "
                      "`T3_paper_bleu` the paper's own sentence-mean BLEU, the findings F1 and the fine class / eye "
                      "that the sentence names, docs/METHOD.md \"Metrics\"; the baselines use the same model's heads "
                      "or encoder, the constant the true eye and coarse class):", "",
                      to_markdown(t3_summary(long.assign(model=long.model.fillna(""))))]
    path = results / "kd_comparisons_t3.csv"
    comparisons = pd.read_csv(path) if path.exists() else pd.DataFrame()
    if not comparisons.empty:
        parts += ["", "**What KD does to T3**, b − a on the test split, image- and seed-level 95 % CIs as above:", "",
                  to_markdown(claims_table(comparisons))]
    return parts


def busy_seconds(started: pd.Series, finished: pd.Series) -> float:
    """Seconds during which at least one run was running: overlapping runs (Dask workers) count once, and the
    idle gap between two invocations of the runner (a grid extended later) not at all."""
    total, end = 0.0, pd.Timestamp.min
    for start, stop in sorted(zip(pd.to_datetime(started), pd.to_datetime(finished))):
        total += max(0.0, (stop - max(start, end)).total_seconds())   # only the part not yet counted
        end = max(end, stop)
    return total


def _timings(exp: Path) -> str:
    summary = exp / "runs" / "summary.csv"
    if not summary.exists():
        return ""
    s = pd.read_csv(summary)
    col = next((c for c in ("seconds", "elapsed_s") if c in s), None)
    if not col:
        return ""
    if {"started", "finished"} <= set(s) and s.started.notna().all():
        busy = busy_seconds(s.started, s.finished) / 60
        return (f"Wall time of the grid, counting the time any notebook ran: {busy:.1f} min ({len(s)} notebook runs, "
                f"{s[col].sum() / 60:.1f} min of notebook time).")
    return f"Wall time of the whole grid: {s[col].sum() / 60:.1f} min ({len(s)} cells)."


def _metric_cis(exp: Path, rel: Path) -> list[str]:
    """AUROC, kappa, ECE ... with their bootstrap CIs (06's metric_cis.csv), and the ROC / reliability figures."""
    path = analysis_dir(exp, "results") / "metric_cis.csv"
    if not path.exists():
        return []
    cis = pd.read_csv(path)
    cis = cis[cis.metric.isin(README_CI_METRICS)]
    parts = ["", "**More metrics, with 95 % bootstrap CIs over the test images** ([Metrics](METHOD.md#metrics); "
             "`outputs/<experiment>/results/metric_cis.csv` has every metric):", "", to_markdown(ci_table(cis))]
    parts += [f"\n![{name}]({rel}/{name}.png)" for name in ("roc_T1", "reliability_T1")
              if (analysis_dir(exp, "results") / f"{name}.png").exists()]
    return parts


def _study(exp: Path, rel: Path) -> list[str]:
    """Notebook 07's table (T1, each variant against M1 and the ingredient's cost to M3) and figure, when it ran."""
    path = study_dir(exp) / "study.csv"
    if not path.exists():
        return []
    t = pd.read_csv(path)
    t = t[t.metric == "T1_acc"]
    table = pd.DataFrame({"variant": t.label, "T1_acc": t.score.round(3),
                          "− M1 [95 % CI]": interval_text(t.minus_M1, t.lo, t.hi, sign="+"),
                          "M3 − variant [95 % CI]": interval_text(t.M3_minus, t.M3_lo, t.M3_hi, sign="+"),
                          "seeds": t.n_seeds})
    if "seed_lo" in t:   # study.csv written since the seed-level intervals: beside the image-level ones
        table.insert(3, "− M1, seed-level", _seed_level_text(t.minus_M1, t.seed_lo, t.seed_hi))
        table.insert(5, "M3 − variant, seed-level", _seed_level_text(t.M3_minus, t.M3_seed_lo, t.M3_seed_hi))
    at = f" at p = {t.p.iloc[0]:g}" if "p" in t and t.p.notna().all() else ""
    return ["", f"**Notebook 07, when KD pays{at}** (`make study`; T1 on the test split, paired bootstrap pooled over "
            f"{int(t.n_seeds.max())} seed(s), and seed-level (seeds, then images) with several; the ablations "
            "remove one ingredient from M3; all metrics in "
            "`study/study.csv`):", "", to_markdown(table), "", f"![the study]({rel}/study.png)"]


def _seed_level_text(diff: pd.Series, lo: pd.Series, hi: pd.Series) -> list[str]:
    """'diff [lo, hi]', empty where there is no seed-level interval (one seed)."""
    return [text if pd.notna(low) else "" for text, low in zip(interval_text(diff, lo, hi, sign="+"), lo)]


def _copy_figures(exp: Path, figures_dir: Path) -> None:
    """Web-sized copies of the experiment's figures (those it has) under figures_dir."""
    figures_dir.mkdir(parents=True, exist_ok=True)
    for src, name in FIGURES.items():
        if (exp / src).exists():
            _web_copy(exp / src, figures_dir / name)


def _relative(figures_dir: Path, page_dir: Path) -> Path:
    """How a page in page_dir links to figures_dir (docs/RESULTS.md: figures; README.md: docs/figures)."""
    return Path(os.path.relpath(figures_dir, page_dir))


def section(exp: Path, figures_dir: Path, page_dir: Path = RESULTS_DOC.parent) -> str:
    """The markdown of docs/RESULTS.md's generated section, figures copied into figures_dir."""
    _copy_figures(exp, figures_dir)
    rel = _relative(figures_dir, page_dir)
    runs = collect_metrics(exp)
    m1_runs = [run for key, run in student_runs(exp) if key.model == "M1"]
    env = read_json(m1_runs[0] / "config.json")["environment"] if m1_runs else {}
    shown = exp.relative_to(REPO_ROOT) if exp.is_relative_to(REPO_ROOT) else exp
    parts = [f"_Generated by `python -m mtkd_utils.readme {shown}` "
             f"from the experiment's files (torch {env.get('torch', '?')}, {env.get('device', '?')}, "
             f"commit {str(env.get('git_commit', '?'))[:12]}). {_timings(exp)}_", "", *_targets(exp),
             "", "**Table 1 on the synthetic demo** (test split, mean over seeds; τ chosen on validation):", "",
             to_markdown(table1(runs, [m for m in README_TABLE1 if m in runs])) if runs.size
             else "_(no finished runs)_", "",
             baseline_note(constant_baseline(exp)), "",
             f"![metrics against p]({rel}/metrics_vs_p.png)", *_progress(exp), "",
             "**Grad-CAM localisation against the lesion masks** (the true class's CAM on every abnormal annotated "
             "test image, within the field of view; pointing game: the maximum within 15 px at 224 px of the mask, "
             "scaled to the image (Zhang et al. 2016), chance `pointing_chance`; energy inside the mask, chance "
             "`mask_share`; the randomised row is the sanity check):", "",
             _localisation(exp), "", f"![Grad-CAM figure]({rel}/gradcam_M3.jpg)"]
    parts += _metric_cis(exp, rel) + _comparisons(exp) + _t3(exp) + _study(exp, rel)
    return "\n".join(parts)


SUMMARY_METRICS = {"T1_acc": "T1 accuracy", "T2_acc": "T2 accuracy", "T3_bleu4": "T3 BLEU-4"}   # the paper's Table 1
# the students' T1 minus each: M1b erases extra-update gains; M1L, M1 at its plateau, shows once the grid has it
SUMMARY_AGAINST = ("M1", "M1b", "M1L")


def _gains(exp: Path) -> pd.DataFrame:
    """Each student's T1 accuracy minus M1's, M1b's and M1L's (06's kd_comparisons.csv) over every seed's test images
    at once (the pooled row, with the seed-level interval beside it as seed_lo, seed_hi), or over the one seed's where
    only one ran; empty before 06 ran."""
    path = analysis_dir(exp, "results") / "kd_comparisons.csv"
    columns = ["tasks", "p", "seed", "comparison", "metric", "diff", "lo", "hi", "n", "seed_lo", "seed_hi"]
    if not path.exists():
        return pd.DataFrame(columns=columns)
    c = pd.read_csv(path, dtype={"seed": str})
    c = c[c.metric == "T1_acc"]
    where = ["tasks", "p", "comparison"]
    level = c[c.seed == SEED_LEVEL][where + ["lo", "hi"]].rename(columns={"lo": "seed_lo", "hi": "seed_hi"})
    c = c[c.seed != SEED_LEVEL]
    seeds = c.groupby(where).seed.transform("size")
    return c[(c.seed == POOLED) | (seeds == 1)].merge(level, on=where, how="left")


def summary_table(exp: Path) -> pd.DataFrame:
    """The README's Table 1: each model on every task per p (mean ± std over its seeds, τ beside the students),
    the students' T1 gain over M1 and M1b with its 95 % CI, then the no-skill baselines; empty without runs."""
    runs = collect_metrics(exp)
    runs = runs[runs.tasks == task_key(TASKS)] if not runs.empty else runs
    metrics = [m for m in SUMMARY_METRICS if m in runs]
    if runs.empty or not metrics:
        return pd.DataFrame()
    stats = table1_stats(runs, metrics)
    gains = _gains(exp)
    gains = gains[gains.tasks == task_key(TASKS)]
    order = sorted(stats[["p", "model"]].drop_duplicates().itertuples(index=False),
                   key=lambda r: (float(r.p), MODELS.index(r.model) if r.model in MODELS else len(MODELS)))
    rows = []
    for p, model in order:
        cells = stats[(stats.p == p) & (stats.model == model)].set_index("metric")
        taus = cells.taus.iloc[0]
        row = {"p": p, "model": f"{model} (τ={taus})" if taus else model, "seeds": str(cells.n_seeds.max())}
        for metric, label in SUMMARY_METRICS.items():
            if metric in cells.index:
                c = cells.loc[metric]
                row[label] = f"{c['mean']:.3f}" + (f" ± {c['std']:.3f}" if c.n_seeds > 1 else "")
        for a in SUMMARY_AGAINST:
            g = gains[(gains.p.astype(float) == float(p)) & (gains.comparison == f"{model} − {a}")]
            row[f"T1 − {a} [95 % CI]"] = _gain_text(g.iloc[0]) if len(g) else ""
        rows.append(row)
    commonest = constant_baseline(exp)
    if not commonest.empty:
        rows.append({"p": "any", "model": "the test split's commonest class",
                     **{SUMMARY_METRICS[m]: f"{commonest[m]:.3f}" for m in ("T1_acc", "T2_acc")
                        if m in commonest and m in metrics}})
    t3 = _t3_oracle(exp)
    if pd.notna(t3) and "T3_bleu4" in metrics:
        rows.append({"p": TARGET_P, "model": "a constant sentence per (eye, coarse class)",
                     SUMMARY_METRICS["T3_bleu4"]: f"{t3:.3f}"})
    against = [a for a in SUMMARY_AGAINST if a != "M1L" or gains.comparison.str.endswith("− M1L").any()]
    columns = ["p", "model", "seeds", *(SUMMARY_METRICS[m] for m in metrics),
               *(f"T1 − {a} [95 % CI]" for a in against)]
    return pd.DataFrame(rows).reindex(columns=columns)


def _gain_text(g: pd.Series) -> str:
    """'diff [lo, hi]' (image-level), then '; seeds [lo, hi]' (seed-level) where there are several seeds."""
    text = interval_text([g["diff"]], [g.lo], [g.hi], sign="+")[0]
    return text + (f"; seeds [{g.seed_lo:+.3f}, {g.seed_hi:+.3f}]" if pd.notna(g.get("seed_lo")) else "")


def summary(exp: Path, figures_dir: Path, page_dir: Path = REPO_ROOT) -> str:
    """The README's results: Table 1 with n, CIs and the baselines, and the metrics-against-p figure."""
    table = summary_table(exp)
    if table.empty:
        return "_(no finished runs: `make demo`, then `make readme`)_"
    images = _test_images(exp)
    gains = _gains(exp)
    pairs = gains.loc[(gains.seed == POOLED) & (gains.tasks == task_key(TASKS)), "n"].max()
    n_images = f"n = {images:,.0f} images per seed; " if pd.notna(images) else ""
    over = (f"over every seed's test images, n = {pairs:,.0f} (seed, image) pairs" if pd.notna(pairs)
            else "over the test images")
    caption = (f"**Table 1 on the synthetic demo** (test split, {n_images}mean ± std over the seeds; τ chosen on "
               "validation; the last columns: the student's T1 accuracy minus M1's, M1b's (M1 at the student's "
               f"updates) and M1L's (M1 at its validation plateau), with the 95 % paired bootstrap CI {over}, then "
               "`seeds [..]`, the seed-level 95 % CI (seeds resampled, then test images: the interval a claim about "
               "the method needs; docs/METHOD.md \"Metrics\"); the last rows: no-skill baselines):")
    figure = f"![metrics against p]({_relative(figures_dir, page_dir)}/metrics_vs_p.png)"
    return "\n".join([caption, "", to_markdown(table), figure])


def _replace_between(page: Path, begin: str, end: str, text: str) -> None:
    """Replace the text between the page's markers, atomically; everything outside them stays as it is."""
    head, rest = page.read_text().split(begin, 1)
    _, tail = rest.split(end, 1)
    with atomic_path(page) as tmp:
        tmp.write_text(f"{head}{begin}\n{text}\n{end}{tail}")


def update_docs(exp: Path, readme: Path = REPO_ROOT / "README.md", results: Path = RESULTS_DOC,
                figures_dir: Path = REPO_ROOT / "docs" / "figures") -> list[Path]:
    """docs/RESULTS.md's generated section and the README's summary, from the experiment's files; refuses (writing
    nothing) an experiment without finished runs and a page without its markers."""
    if collect_metrics(exp).empty:
        raise ValueError(f"{exp}: no finished runs (students/<tasks>/p<P>_s<seed>/<model>/metrics.json); run `make "
                         "demo` (or the grid) first. The results pages are left as they are.")
    for page, begin, end in ((results, BEGIN, END), (readme, SUMMARY_BEGIN, SUMMARY_END)):
        text = page.read_text() if page.exists() else ""
        if begin not in text or end not in text:
            raise ValueError(f"{page}: no {begin} ... {end} markers; add them where the results should go")
    _replace_between(results, BEGIN, END, section(exp, figures_dir, results.parent))
    _replace_between(readme, SUMMARY_BEGIN, SUMMARY_END, summary(exp, figures_dir, readme.parent))
    return [results, readme]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("experiment", nargs="?", default="outputs/demo")
    args = ap.parse_args()
    exp = Path(args.experiment)
    for page in update_docs(exp if exp.is_absolute() else REPO_ROOT / exp):
        print(page)


if __name__ == "__main__":
    main()
