"""Notebook 07, when KD pays: the study's variants as Config overrides, their runs, the table, the figure, the verdict.

Every variant is a small experiment folder under <experiment>/study/<variant>/ (runs.study_dir) whose data/ and,
when the variant leaves the teachers' settings alone, teachers/ are links to the main experiment's: a variant
trains only its own student, and a finished run (metrics.json) is never trained again. M1, M1b, M2 and M3 with
the recipe are the main grid's own runs (students/ of the experiment).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .. import runs
from ..config import TEACHER_HEAD_DROPOUT, Config
from ..data.dataset import FundusData, load_data
from ..io import read_json, save_figure, write_csv
from ..runs import RunKey
from ..train import steps
from .bootstrap import paired_bootstrap, seed_level_bootstrap
from .captions import FINDING_METRICS
from .results import load_labels, read_predictions
from .study_rows import hard_pseudo_labels, teacher_ensemble_run

METRICS = ("T1_acc", "T2_acc", "T3_bleu4", "T3_ciderD", "T3_findings_f1")   # T3 also as report generation judges it


@dataclass(frozen=True)
class Variant:
    """One row of the study: a model trained with Config overrides (the recipe's choices where empty)."""
    label: str
    model: str                                   # M1, M1b, M2, M3; "ensemble": the teachers' mean probabilities
    overrides: dict = field(default_factory=dict)
    ingredient: str | None = None                # the recipe ingredient this ablation removes (M3 with vs without)
    hard_targets: bool = False                   # self-training: the teacher's argmax as labels
    schedule: float = 1.0                        # M1's schedule (epochs, min_steps, patience) times this


VARIANTS = {
    "M1": Variant("M1 (its measured schedule)", "M1"),
    "M1b": Variant("M1 at the student's budget", "M1b"),
    "M1_long": Variant("M1, twice its schedule", "M1", schedule=2.0),   # is M1 at its plateau?
    "self_training": Variant("M1 + pool, hard pseudo-labels", "M2", {"t3_kd": "topk", "tau_grid": (1.0,)},
                             hard_targets=True),
    "M2": Variant("M2 (one teacher)", "M2"),
    "M3": Variant("M3 (ensemble)", "M3"),
    "ensemble": Variant("teacher ensemble itself", "ensemble"),
    "same_seed": Variant("M3, same-seed teachers", "M3", {"diverse_seeds": False}, "diverse teachers"),
    "no_noise": Variant("M3, no student noise", "M3", {"student_augment": False, "head_dropout": TEACHER_HEAD_DROPOUT},
                        "student noise"),
    "natural_share": Variant("M3, natural labeled share", "M3", {"labeled_share": 0.0}, "labeled share"),
    "topk_t3": Variant("M3, top-k T3 KD", "M3", {"t3_kd": "topk"}, "exact T3 KD"),
    # the authors' loss weights (their code: 0.95 tau^2 KL + 0.05 CE, tau = 10 at p = 15), this workbook's batches
    "paper_recipe": Variant("M3, the paper's weights (α 0.95, τ 10)", "M3", {"tau_grid": (10.0,), "alpha_grid": (0.95,)}),
}
MAIN = ("M1", "M2", "M3", "M1b")     # the main grid's runs, in training order (M1b takes the students' budget)
TEACHER_FREE = set(runs.DISTILL_FIELDS + runs.SENTENCE_FIELDS + runs.RUNTIME_FIELDS)   # overrides that leave the teachers as they are


def check_variants(names) -> list[str]:
    """The named variants in table order; ValueError listing the known ones."""
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        raise ValueError(f"variants {unknown}: choose among {list(VARIANTS)}")
    if not {"M1", "M3"} <= set(names):
        raise ValueError(f"variants {list(names)}: include M1 and M3, the baseline and the recipe every row is "
                         "compared with")
    return [n for n in VARIANTS if n in names]


# ---------------------------------------------------------------- variant folders
def variant_experiment(experiment_dir: Path, name: str) -> Path:
    """The variant's experiment folder: the main one for the main grid's runs, else study/<name>/ with the main
    data/ (and teachers/, when the variant does not change them) linked in."""
    if name in MAIN:
        return Path(experiment_dir)
    variant = VARIANTS[name]
    shares_teachers = set(variant.overrides) <= TEACHER_FREE and variant.schedule == 1
    return linked_folder(experiment_dir, name, ("data", "teachers") if shares_teachers else ("data",))


def linked_folder(experiment_dir: Path, name: str, shared: tuple[str, ...]) -> Path:
    """study/<name>/ with the main experiment's `shared` sub-folders linked in (relative links: the experiment
    folder can move)."""
    folder = runs.study_dir(experiment_dir, name)
    folder.mkdir(parents=True, exist_ok=True)
    for sub in shared:
        if not (folder / sub).exists():
            (folder / sub).symlink_to(Path("..") / ".." / sub, target_is_directory=True)
    return folder


def chosen_setting(experiment_dir: Path, key: RunKey) -> dict:
    """The (tau, alpha) validation chose for the recipe's M3 at this key: the ablations keep it fixed."""
    chosen = read_json(runs.student_dir(experiment_dir, key.with_model("M3")) / "metrics.json")
    return {"tau_grid": (float(chosen["tau"]),), "alpha_grid": (float(chosen["alpha"]),)}


def variant_config(experiment_dir: Path, name: str, key: RunKey, cfg: Config) -> Config:
    """The variant's Config: the recipe, its overrides, and for ablations the recipe's chosen (tau, alpha)."""
    variant = VARIANTS[name]
    pinned = chosen_setting(experiment_dir, key) if variant.ingredient else {}
    longer = ({f: round(getattr(cfg, f) * variant.schedule) for f in ("epochs", "min_steps", "patience")}
              if variant.schedule != 1 else {})
    return cfg.updated(**{**pinned, **variant.overrides, **longer})   # later keys win, as before


def run_variant(experiment_dir: Path, name: str, key: RunKey, cfg: Config, data: FundusData) -> Path:
    """Train (unless finished) and test one variant at key; returns its run folder holding predictions.csv."""
    variant = VARIANTS[name]
    if variant.model == "ensemble":
        return teacher_ensemble_run(experiment_dir, key, data)
    exp = variant_experiment(experiment_dir, name)
    vcfg = variant_config(experiment_dir, name, key, cfg)
    if name not in MAIN and not (exp / "teachers").is_symlink():     # an M1 variant needs only the full-set teacher
        steps.train_teachers(exp, key, vcfg, "full" if variant.model == "M1" else "all")
    if variant.hard_targets:
        hard_pseudo_labels(exp, key.with_model(variant.model), vcfg, data)
    steps.run_student(exp, key.with_model(variant.model), vcfg, data)
    return runs.student_dir(exp, key.with_model(variant.model))


def run_main(experiment_dir: Path, key: RunKey, cfg: Config, data: FundusData, models=MAIN) -> None:
    """The main grid's teachers and students at key (02 and 03), each skipped when finished."""
    steps.train_teachers(experiment_dir, key, cfg)
    for model in models:
        steps.run_student(experiment_dir, key.with_model(model), cfg, data)


def run_study(experiment_dir, tasks, p: float, seeds, cfg: Config, names) -> dict[tuple[str, int], Path]:
    """Every variant at (tasks, p) for every seed: {(variant, seed): run folder}."""
    experiment_dir, folders = Path(experiment_dir), {}
    data = load_data(experiment_dir, p, cfg)
    for seed in seeds:
        key = RunKey(tasks, p, seed)
        run_main(experiment_dir, key, cfg, data)
        for name in check_variants(names):
            folders[name, seed] = run_variant(experiment_dir, name, key, cfg, data)
    return folders


# ---------------------------------------------------------------- the table
def pooled_predictions(folders: dict[tuple[str, int], Path], name: str, seeds) -> pd.DataFrame:
    """One variant's test predictions over every seed, image ids made unique per seed (a pooled bootstrap
    resamples (seed, image) pairs, paired across variants)."""
    frames = [read_predictions(folders[name, seed] / "predictions.csv") for seed in seeds]
    frames = [f.assign(image_id=f"s{seed}:" + f.image_id) for f, seed in zip(frames, seeds)]
    return pd.concat(frames, ignore_index=True)


def _has(preds: pd.DataFrame, metric: str) -> bool:
    col = {"T1": "coarse_pred", "T2": "fine_pred", "T3": "text_pred"}[metric[:2]]
    return bool((preds[col] != "").any())


def compare(a: pd.DataFrame, b: pd.DataFrame, metric: str, n_boot: int, labels=None) -> dict:
    """b − a, pooled paired bootstrap; NaNs when either lacks the task (labels: for the T3 findings metrics)."""
    if not (_has(a, metric) and _has(b, metric)):
        return {"a": np.nan, "b": np.nan, "diff": np.nan, "lo": np.nan, "hi": np.nan, "p_value": np.nan}
    return paired_bootstrap(a, b, metric, n_boot=n_boot, labels=labels)


def seed_compare(folders: dict[tuple[str, int], Path], a: str, b: str, seeds, metric: str, n_boot: int,
                 labels=None) -> dict:
    """b − a at the seed level (seeds, then test images: bootstrap.seed_level_bootstrap); NaNs with one seed or
    where either lacks the task (labels: for the T3 findings metrics)."""
    pairs = [(read_predictions(folders[a, s] / "predictions.csv"), read_predictions(folders[b, s] / "predictions.csv"),
              None, None) for s in seeds]
    if len(pairs) < 2 or not all(_has(x, metric) and _has(y, metric) for x, y, *_ in pairs):
        return {"lo": np.nan, "hi": np.nan, "per_seed": ""}
    res = seed_level_bootstrap(pairs, metric, n_boot=n_boot, labels=labels)
    return {"lo": res["lo"], "hi": res["hi"], "per_seed": ", ".join(f"{d:+.3f}" for d in res["per_seed"])}


def study_table(folders: dict[tuple[str, int], Path], names, seeds, n_boot: int = 2000, p: float | None = None,
                labels=None) -> pd.DataFrame:
    """One row per (variant, metric) at fraction p: its score, it minus M1 with CI, and M3 minus it with CI (for an
    ablation: what the ingredient it removes is worth); each difference with its image-level CI (lo, hi: pooled over
    the seeds' test images) and its seed-level one (seed_lo, seed_hi: seeds, then images) and per-seed values.
    labels (results.load_labels): the T3 findings metrics need it (without it they are left out)."""
    preds = {n: pooled_predictions(folders, n, seeds) for n in names}
    rows = []
    for name in names:
        variant = VARIANTS[name]
        for metric in [m for m in METRICS if labels is not None or m not in FINDING_METRICS]:
            vs_m1 = compare(preds["M1"], preds[name], metric, n_boot, labels)
            level = seed_compare(folders, "M1", name, seeds, metric, n_boot, labels)
            row = {"variant": name, "label": variant.label, "p": p, "metric": metric, "score": vs_m1["b"],
                   "minus_M1": vs_m1["diff"], "lo": vs_m1["lo"], "hi": vs_m1["hi"], "p_value": vs_m1["p_value"],
                   "seed_lo": level["lo"], "seed_hi": level["hi"], "per_seed": level["per_seed"],
                   "ingredient": variant.ingredient, "n_seeds": len(seeds), "n": len(preds[name]),
                   "M3_minus": np.nan, "M3_lo": np.nan, "M3_hi": np.nan, "M3_seed_lo": np.nan, "M3_seed_hi": np.nan,
                   "M3_per_seed": ""}
            if name != "M3":
                gain = compare(preds[name], preds["M3"], metric, n_boot, labels)
                level = seed_compare(folders, name, "M3", seeds, metric, n_boot, labels)
                row.update(M3_minus=gain["diff"], M3_lo=gain["lo"], M3_hi=gain["hi"], M3_seed_lo=level["lo"],
                           M3_seed_hi=level["hi"], M3_per_seed=level["per_seed"])
            rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- passes over the pool, the gain against p
def passes_curve(experiment_dir, key: RunKey, cfg: Config, data: FundusData, passes: float) -> pd.DataFrame:
    """Validation score of the recipe's M3 (its chosen tau, alpha) after each epoch of one run `passes` passes over
    the unlabeled pool long (study/passes_<n>/; validation only). One long cosine schedule stands in for several
    runs of different lengths: it shows where the score stops rising, not each budget's end point."""
    experiment_dir = Path(experiment_dir)
    chosen = chosen_setting(experiment_dir, key)
    folder = linked_folder(experiment_dir, f"passes_{passes:g}", ("data", "teachers"))
    tau, alpha = chosen["tau_grid"][0], chosen["alpha_grid"][0]
    ccfg = cfg.updated(student_passes=float(passes), **chosen)
    steps.train_student(folder, key.with_model("M3"), tau, alpha, ccfg, data)
    run = runs.setting_dir(runs.student_dir(folder, key.with_model("M3")), tau, alpha)
    history = pd.read_csv(run / "history.csv")
    return history.assign(passes=history.epoch * ccfg.unlabeled_per_epoch)[["passes", "updates", "val_score"]]


def gain_against_p(experiment_dir, tasks, ps, seeds, cfg: Config, n_boot: int = 2000) -> pd.DataFrame:
    """M3 − M1 per p and metric over the seeds (pooled paired bootstrap); trains what is missing (M1, M3 only)."""
    experiment_dir, rows, labels = Path(experiment_dir), [], load_labels(experiment_dir)
    for p in ps:
        data = load_data(experiment_dir, p, cfg)
        folders = {}
        for seed in seeds:
            key = RunKey(tasks, p, seed)
            run_main(experiment_dir, key, cfg, data, models=("M1", "M3"))
            folders.update({(m, seed): runs.student_dir(experiment_dir, key.with_model(m)) for m in ("M1", "M3")})
        m1, m3 = pooled_predictions(folders, "M1", seeds), pooled_predictions(folders, "M3", seeds)
        rows += [{"p": p, "metric": metric, **compare(m1, m3, metric, n_boot, labels)} for metric in METRICS]
    return pd.DataFrame(rows).rename(columns={"a": "M1", "b": "M3", "diff": "M3_minus_M1"})


# ---------------------------------------------------------------- the figure and the verdict
def study_figure(table: pd.DataFrame, gains: pd.DataFrame, curve: pd.DataFrame, stem: Path, metric: str = "T1_acc"):
    """Three panels: each variant minus M1 with its CI; M3 − M1 against p; validation score against passes."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), gridspec_kw={"width_ratios": [1.4, 1, 1]})
    rows = table[(table.metric == metric) & (table.variant != "M1")].dropna(subset=["minus_M1"])
    y = np.arange(len(rows))
    axes[0].errorbar(rows.minus_M1, y, xerr=[rows.minus_M1 - rows.lo, rows.hi - rows.minus_M1], fmt="o", capsize=3)
    axes[0].axvline(0, color="grey", lw=1)
    axes[0].set(yticks=y, yticklabels=rows.label, xlabel=f"{metric} minus M1 (95 % paired bootstrap CI)")
    axes[0].invert_yaxis()
    g = gains[gains.metric == metric]
    axes[1].errorbar(g.p, g.M3_minus_M1, yerr=[g.M3_minus_M1 - g.lo, g.hi - g.M3_minus_M1], fmt="o-", capsize=3)
    axes[1].axhline(0, color="grey", lw=1)
    axes[1].set(xlabel="labeled fraction p (%)", ylabel=f"M3 − M1, {metric}", xticks=list(g.p))
    axes[2].plot(curve.passes, curve.val_score, "o-")
    axes[2].set(xlabel="passes over the unlabeled pool", ylabel="validation score (M3)")
    fig.tight_layout()
    save_figure(fig, stem)
    return fig


def _seeds_text(lo: float, hi: float) -> str:
    """'; seeds [lo, hi]' in points, or nothing without a seed-level interval."""
    return "" if pd.isna(lo) else f"; seeds [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def _ci(value: float, lo: float, hi: float) -> str:
    return f"{100 * value:+.1f} points [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def conclusion(table: pd.DataFrame, metric: str = "T1_acc") -> str:
    """What the numbers say, in sentences: does M3 beat M1 (and M1b, and its teachers), which ingredients carry it."""
    rows = table[table.metric == metric].set_index("variant")
    lines = []
    if "M3" in rows.index:
        m3 = rows.loc["M3"]
        pays = m3.lo > 0
        converged = not (_beats_m1(rows, "M1b") or _beats_m1(rows, "M1_long"))
        against = "M1 trained to convergence" if converged else "M1 on its schedule (not yet converged)"
        lines.append(f"M3 − M1 on {metric}: {_ci(m3.minus_M1, m3.lo, m3.hi)}, n = {int(m3.n)} (seed, image) pairs: "
                     + (f"KD pays against {against}." if pays else
                        "the CI does not exclude 0 (or lies below it): KD does not pay here against M1."))
        if not pd.isna(m3.get("seed_lo", np.nan)):
            lines.append(f"Seed-level (seeds resampled, then test images; {int(m3.n_seeds)} seeds: "
                         f"{m3.per_seed}): [{100 * m3.seed_lo:+.1f}, {100 * m3.seed_hi:+.1f}]: "
                         + ("the recipe's gain survives a new training draw." if m3.seed_lo > 0 else
                            "the recipe's gain is not established once training randomness is counted."))
        for other, what in (("M1b", "M1 at the student's budget"), ("M1_long", "M1 trained twice as long"),
                            ("ensemble", "its teacher ensemble")):
            if other in rows.index and not np.isnan(rows.loc[other].M3_minus):
                r = rows.loc[other]
                verdict = "beats" if r.M3_lo > 0 else "does not beat" if r.M3_hi >= 0 else "is worse than"
                lines.append(f"M3 minus {what}: {_ci(r.M3_minus, r.M3_lo, r.M3_hi)}: M3 {verdict} {what}.")
    lines += _why(rows)
    ablations = rows[rows.ingredient.notna()]
    carrying = [r.ingredient for r in ablations.itertuples() if r.M3_lo > 0]
    for r in ablations.itertuples():
        gain = _ci(r.M3_minus, r.M3_lo, r.M3_hi)
        lines.append(f"{r.ingredient}: M3 with it minus without {gain}.")
    if len(ablations):
        lines.append("Ingredients whose removal costs M3 significantly: " + (", ".join(carrying) if carrying else
                     "none: no single ingredient's contribution is resolved by this test split and these seeds."))
    return "\n".join(lines)


def _why(rows: pd.DataFrame) -> list[str]:
    """The baselines that explain a missing gain: teachers no better than M1, or an M1 short of convergence."""
    lines = []
    if "ensemble" in rows.index and not np.isnan(rows.loc["ensemble"].minus_M1):
        ens = rows.loc["ensemble"]
        lines.append(f"The teacher ensemble itself minus M1: {_ci(ens.minus_M1, ens.lo, ens.hi)}"
                     + ("." if ens.lo > 0 else ": the teachers know no more than M1, so there is little to distil."))
    if _beats_m1(rows, "M1b"):
        m1b = rows.loc["M1b"]
        lines.append(f"M1 given the student's updates beats M1 ({_ci(m1b.minus_M1, m1b.lo, m1b.hi)}): M1 was not "
                     "trained to convergence, and a gain over M1 alone would credit the extra steps.")
    if "M1_long" in rows.index and not np.isnan(rows.loc["M1_long"].minus_M1):
        long = rows.loc["M1_long"]
        lines.append(f"M1 trained twice as long minus M1: {_ci(long.minus_M1, long.lo, long.hi)}: "
                     + ("M1's schedule stops short of its plateau; the longer M1 is the fair baseline."
                        if long.lo > 0 else "M1's schedule is at its plateau (within this test split's resolution)."))
    return lines


def _beats_m1(rows: pd.DataFrame, name: str) -> bool:
    """Whether a longer-trained M1 beats M1 with its CI above 0."""
    return name in rows.index and bool(rows.loc[name].lo > 0)


def save_outputs(experiment_dir, table: pd.DataFrame, gains: pd.DataFrame, curve: pd.DataFrame) -> Path:
    """study/study.csv, gain_vs_p.csv, passes_curve.csv; returns the folder."""
    folder = runs.study_dir(experiment_dir)
    write_csv(table, folder / "study.csv")
    write_csv(gains, folder / "gain_vs_p.csv")
    write_csv(curve, folder / "passes_curve.csv")
    return folder


def readable_table(table: pd.DataFrame) -> pd.DataFrame:
    """One row per variant, one column per metric: 'score (minus M1 [CI]; seeds [CI]); M3 − it [CI]; seeds [CI]',
    differences in points, image-level CI then seed-level."""
    def cell(r) -> str:
        if np.isnan(r.score):
            return "–"
        text = f"{r.score:.3f} ({100 * r.minus_M1:+.1f} [{100 * r.lo:+.1f}, {100 * r.hi:+.1f}]"
        text += _seeds_text(getattr(r, "seed_lo", np.nan), getattr(r, "seed_hi", np.nan)) + ")"
        if not np.isnan(r.M3_minus):
            text += (f"; M3 − it {100 * r.M3_minus:+.1f} [{100 * r.M3_lo:+.1f}, {100 * r.M3_hi:+.1f}]"
                     + _seeds_text(getattr(r, "M3_seed_lo", np.nan), getattr(r, "M3_seed_hi", np.nan)))
        return text
    cells = table.assign(cell=[cell(r) for r in table.itertuples()])
    out = cells.pivot(index="label", columns="metric", values="cell")
    return out.loc[list(dict.fromkeys(table.label)), [m for m in METRICS if m in out.columns]]
