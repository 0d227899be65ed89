"""Who is in the dataset: patients, their two eyes' fine labels and their role, decided before anything is drawn.

The plan is a table (one row per image), so class counts per split can be checked without
drawing a pixel. Labels are exact image quotas of the taxonomy's shares, then paired into
patients: a disease is in both eyes of BILATERAL[c] of its patients (fellow eyes mostly at the
same stage), and the fellow eye of a one-eyed disease is normal.

Three groups come from the same process with their own random streams:
- development: labeled; `splits.make_splits` divides them into train pool, validation and test;
- evaluation-only: labeled, always test (never trained on): a larger test split at no training cost;
- unlabeled: the pool the students distil from (labels kept here only to draw the images).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .taxonomy import BILATERAL, COARSE, FINE, FINE_PARENT

GROUPS = ("development", "evaluation", "unlabeled")


def quota(n: int, shares: dict[str, float]) -> list[str]:
    """Exactly proportional counts of n (largest remainder), every name at least once when n allows."""
    names, p = list(shares), np.array(list(shares.values()), dtype=float)
    raw = p / p.sum() * n
    counts = np.floor(raw).astype(int)
    if n >= len(names):
        counts = np.maximum(counts, 1)
    for i in np.argsort(-(raw - counts), kind="stable"):
        if counts.sum() >= n:
            break
        counts[i] += 1
    while counts.sum() > n:
        counts[np.argmax(counts)] -= 1
    return [name for name, c in zip(names, counts) for _ in range(c)]


def _split_by_laterality(eyes: list[str], bilateral: float, rng: np.random.Generator) -> tuple[list, list]:
    """(pairs of fellow eyes, one-eyed eyes) of one disease; fellow eyes share a stage unless counts are odd."""
    eyes = [eyes[i] for i in rng.permutation(len(eyes))]
    n = len(eyes)
    one_eyed = min(n, round(n * (1 - bilateral) / (1 + bilateral)))  # n = 2 * both + one
    one_eyed += (n - one_eyed) % 2
    single, both = eyes[:one_eyed], sorted(eyes[one_eyed:])
    return [(both[i], both[i + 1]) for i in range(0, len(both), 2)], single


def pair_eyes(fines: list[str], rng: np.random.Generator) -> list[tuple[str, str]]:
    """Group an even number of eye-level fine labels into patients (first eye, fellow eye)."""
    normals = [f for f in fines if FINE_PARENT[f] == "normal"]
    normals = [normals[i] for i in rng.permutation(len(normals))]
    patients, leftover = [], []
    for coarse in COARSE[1:]:
        pairs, single = _split_by_laterality([f for f in fines if FINE_PARENT[f] == coarse], BILATERAL[coarse], rng)
        patients += pairs
        for eye in single:
            if normals:
                patients.append((eye, normals.pop()))
            else:
                leftover.append(eye)  # tiny datasets: not enough normal fellow eyes
    leftover += normals
    patients += [(leftover[i], leftover[i + 1]) for i in range(0, len(leftover), 2)]
    return [patients[i] for i in rng.permutation(len(patients))]


def _group(n_patients: int, rng: np.random.Generator) -> list[dict[str, str]]:
    """n patients of one group: {eye: fine label}, each image's label by the exact quotas."""
    fines = quota(2 * n_patients, {name: share for name, _, share in FINE})
    out = []
    for first, fellow in pair_eyes(fines, rng):
        eyes = ("left", "right") if rng.random() < 0.5 else ("right", "left")
        out.append({eyes[0]: first, eyes[1]: fellow})
    return out


def plan_cohort(n_patients: int, n_eval_patients: int, n_unlabeled_patients: int, seed: int) -> pd.DataFrame:
    """One row per image: image_id, patient_id, eye, group, labeled, evaluation_only, coarse, fine, index.

    `index` numbers the patients (it seeds their drawing); coarse and fine are the truth for every
    row, unlabeled ones included (the manifest hides those).
    """
    rows = []
    index = 0
    for k, (group, n) in enumerate(zip(GROUPS, (n_patients, n_eval_patients, n_unlabeled_patients))):
        for eyes in _group(n, np.random.default_rng([seed, 10 + k])):
            pid = f"p{index:05d}"
            for eye in ("left", "right"):
                rows.append(dict(image_id=f"{pid}_{eye[0].upper()}", patient_id=pid, eye=eye, group=group,
                                 labeled=int(group != "unlabeled"), evaluation_only=int(group == "evaluation"),
                                 coarse=FINE_PARENT[eyes[eye]], fine=eyes[eye], index=index))
            index += 1
    return pd.DataFrame(rows)
