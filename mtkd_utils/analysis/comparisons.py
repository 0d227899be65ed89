"""Model against model on the same test images: paired bootstrap differences per seed, pooled over the seeds' test
images (image-level: these trained models), and over seeds then images (seed-level: these recipes)."""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import task_key
from ..runs import student_dir, student_runs
from .bootstrap import SUM_METRICS, has_task, needs_probs, paired_bootstrap, seed_level_bootstrap
from .results import (
    POOLED,
    TABLE1_METRICS,
    interval_table,
    interval_text,
    load_labels,
    read_predictions,
    read_probs,
    sort_key,
)

SEED_LEVEL = "seed-level"   # the seed of a comparison's two-level bootstrap: seeds resampled, then test images

# (a, b): the paired comparisons b − a of the students against M1, against M1b (M1 given the student's updates) and
# against M1L (M1 at its validation plateau: the strongest plain baseline)
KD_PAIRS = (("M1", "M3"), ("M1b", "M3"), ("M1L", "M3"), ("M1", "M2"), ("M1b", "M2"), ("M1L", "M2"))


def compare_models(experiment_dir: str | Path, a: str = "M1", b: str = "M3", metrics: Sequence[str] = TABLE1_METRICS,
                   n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per (tasks, p, seed, metric): model b − model a on the same test images, with a 95 % paired bootstrap CI;
    where several seeds have both runs, also a row with seed POOLED (every seed's test images at once: is this
    model better than that one?) and one with seed SEED_LEVEL (seeds resampled, then test images: is this recipe
    better than that one, training randomness included; bootstrap.seed_level_bootstrap)."""
    rows, points = [], {}
    for key, run_b in student_runs(experiment_dir, "predictions.csv"):
        path_a = student_dir(experiment_dir, key.with_model(a)) / "predictions.csv"
        if key.model != b or not path_a.exists():
            continue   # the grid is not finished there yet
        pair = [(read_predictions(path_a), read_probs(path_a.parent)),
                (read_predictions(run_b / "predictions.csv"), read_probs(run_b))]
        point = dict(tasks=task_key(key.tasks), p=key.p_label)
        points.setdefault(tuple(point.values()), {})[key.seed] = pair
        rows += _compared(pair, metrics, experiment_dir, n_boot, seed, **point, seed_label=key.seed)
    for (tasks, p), pairs in points.items():
        if len(pairs) > 1:
            rows += _compared(_pooled(pairs), metrics, experiment_dir, n_boot, seed, tasks=tasks, p=p,
                              seed_label=POOLED)
            rows += _seed_level(list(pairs.values()), metrics, experiment_dir, n_boot, seed, tasks=tasks, p=p)
    cols = ["tasks", "p", "seed", "metric", "a", "b", "diff", "lo", "hi", "p_value", "n", "n_boot"]
    out = pd.DataFrame(rows, columns=cols).rename(columns={"a": a, "b": b, "diff": f"{b}-{a}"})
    return out.sort_values(["tasks", "metric", "p", "seed"], key=_order).reset_index(drop=True)


def _order(col: pd.Series) -> pd.Series:
    """results.sort_key, with the pooled row and then the seed-level row after the seeds."""
    if col.name == "seed":
        return col.map(lambda s: {POOLED: 1e18, SEED_LEVEL: math.inf}.get(s, s)).astype(float)
    return sort_key(col)


def _usable(pair: list, metric: str) -> bool:
    """Whether both runs of a (predictions, probabilities) pair can give the metric."""
    (preds_a, probs_a), (preds_b, probs_b) = pair
    if not (has_task(preds_a, metric) and has_task(preds_b, metric)):
        return False
    return not needs_probs(metric) or (metric[:2] in probs_a and metric[:2] in probs_b)   # older runs lack probs


def _compared(pair: list, metrics: Sequence[str], experiment_dir, n_boot: int, seed: int, **where) -> list[dict]:
    """The paired bootstrap rows of one (predictions, probabilities) pair, a then b, for each metric both have."""
    (preds_a, probs_a), (preds_b, probs_b) = pair
    rows = []
    for metric in filter(lambda m: _usable(pair, m), metrics):
        labels = None if metric in SUM_METRICS else load_labels(experiment_dir)
        res = paired_bootstrap(preds_a, preds_b, metric, n_boot=n_boot, seed=seed, probs_a=probs_a,
                               probs_b=probs_b, labels=labels)
        rows.append({"tasks": where["tasks"], "p": where["p"], "seed": where["seed_label"], **res})
    return rows


def _seed_level(pairs: list[list], metrics: Sequence[str], experiment_dir, n_boot: int, seed: int, **where
                ) -> list[dict]:
    """The seed-level rows: each metric that every seed's pair can give, by the two-level bootstrap."""
    rows = []
    for metric in [m for m in metrics if all(_usable(pair, m) for pair in pairs)]:
        labels = None if metric in SUM_METRICS else load_labels(experiment_dir)
        res = seed_level_bootstrap([(a[0], b[0], a[1], b[1]) for a, b in pairs], metric, n_boot, seed,
                                   labels=labels)
        rows.append({**where, "seed": SEED_LEVEL, **res})
    return rows


def _pooled(pairs: dict[int, list]) -> list:
    """Every seed's pair as one: image ids made unique per seed, so that the bootstrap resamples (seed, image)
    pairs, and each model's probabilities stacked in the same order (tasks every seed saved)."""
    pooled = []
    for side in (0, 1):
        frames = [pair[side][0].assign(image_id=f"s{s}:" + pair[side][0].image_id) for s, pair in pairs.items()]
        tasks = set.intersection(*(set(pair[side][1]) for pair in pairs.values()))
        probs = {t: np.concatenate([pair[side][1][t] for pair in pairs.values()]) for t in sorted(tasks)}
        pooled.append((pd.concat(frames, ignore_index=True), probs))
    return pooled


def kd_comparisons(experiment_dir: str | Path, metrics: Sequence[str] = TABLE1_METRICS, n_boot: int = 2000,
                   seed: int = 0) -> pd.DataFrame:
    """Every KD_PAIRS comparison b − a whose two runs exist, in one long table ('comparison': 'M3 − M1b')."""
    cols = ["tasks", "p", "seed", "comparison", "metric", "a", "b", "diff", "lo", "hi", "p_value", "n"]
    frames = [compare_models(experiment_dir, a, b, metrics, n_boot, seed)
              .rename(columns={a: "a", b: "b", f"{b}-{a}": "diff"}).assign(comparison=f"{b} − {a}")
              for a, b in KD_PAIRS]
    return pd.concat(frames, ignore_index=True)[cols]


def comparison_table(comparisons: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """kd_comparisons as rows (tasks, p, seed, comparison), columns metric: 'difference [95 % CI]'."""
    return interval_table(comparisons, "diff", ["tasks", "p", "seed", "comparison"], digits, "+")


def claims_table(comparisons: pd.DataFrame, metrics: Sequence[str] | None = None, digits: int = 3) -> pd.DataFrame:
    """kd_comparisons (or compare_models, columns renamed) as one row per (tasks, p, comparison, metric): the seeds,
    each seed's difference, the image-level interval pooled over the seeds' test images and the seed-level one."""
    df = comparisons if metrics is None else comparisons[comparisons.metric.isin(metrics)]
    df = df.assign(seed=df.seed.astype(str))
    rows = []
    for (tasks, p, comparison, metric), g in df.groupby(["tasks", "p", "comparison", "metric"], sort=False):
        seeds = g[~g.seed.isin([POOLED, SEED_LEVEL])].sort_values("seed", key=lambda c: c.astype(int))
        text = {k: interval_text(r["diff"], r.lo, r.hi, digits, "+")[0] if len(r) else ""
                for k, r in ((POOLED, g[g.seed == POOLED]), (SEED_LEVEL, g[g.seed == SEED_LEVEL]))}
        rows.append({"tasks": tasks, "p": p, "comparison": comparison, "metric": metric,
                     "seeds": ", ".join(seeds.seed), "per seed": ", ".join(f"{d:+.{digits}f}" for d in seeds["diff"]),
                     "image-level (pooled) [95 % CI]": text[POOLED], "seed-level [95 % CI]": text[SEED_LEVEL]})
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    order = list(dict.fromkeys(df.metric))
    out = out.sort_values(["tasks", "p", "comparison", "metric"], key=lambda c: c.map(order.index) if c.name ==
                          "metric" else sort_key(c), kind="stable")
    return out.set_index(["tasks", "p", "comparison", "metric"])


def compare_m3_m1(experiment_dir: str | Path, metrics: Sequence[str] = TABLE1_METRICS, n_boot: int = 2000,
                  seed: int = 0) -> pd.DataFrame:
    """M3 − M1 per (tasks, p, seed, metric) with paired bootstrap CIs: does the teacher ensemble help?"""
    return compare_models(experiment_dir, "M1", "M3", metrics, n_boot=n_boot, seed=seed)
