"""Patient-level, stratified, seeded splits; nested training fractions; the leakage check."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import check_fraction
from ..io import write_csv

SPLITS = ("train", "val", "test")
HELD_OUT = {"val": 0.15, "test": 0.15}   # fixed for every run; the rest is the train pool
# Beside a manifest: patients a source sets aside for testing only (the synthetic demo's extra test patients)
EVALUATION_ONLY = "evaluation_only.csv"


class LeakageError(ValueError):
    """A patient or an image that would be seen by more than one split."""


def _patient_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """One row per patient with labeled images: its image counts per coarse class and, where known, per fine class."""
    lab = manifest[manifest.labeled == 1]
    tables = [pd.crosstab(lab.patient_id, lab.coarse)]
    if "fine" in lab and (lab.fine != "").any():
        tables.append(pd.crosstab(lab.patient_id, "fine:" + lab.fine))
    return pd.concat(tables, axis=1)


def _assign_held_out(counts: pd.DataFrame, rng: np.random.Generator) -> pd.Series:
    """Greedy iterative stratification: each patient goes where its classes are most wanted."""
    names = ["test", "val", "train"]
    share = np.array([HELD_OUT["test"], HELD_OUT["val"], 1 - sum(HELD_OUT.values())])
    totals = counts.sum().to_numpy(float)
    target = np.outer(share, totals)                     # (3 splits, C classes) images each split should get
    want = target.copy()                                 # images still wanted
    # Rare classes first (their patients have the fewest places to go), random within a class.
    rarity = (counts.to_numpy() > 0) @ (1.0 / np.maximum(totals, 1))
    order = np.lexsort((rng.random(len(counts)), -rarity))
    out = np.empty(len(counts), dtype=object)
    for i in order:
        c = counts.to_numpy()[i].astype(float)
        # the split that most wants one of this patient's classes, relative to what it should get: with many
        # classes (coarse and fine) a sum of absolute wants favours the big train pool
        need = np.where(c > 0, want / np.maximum(target, 1), -np.inf).max(axis=1)
        s = int(np.argmax(need + 1e-9 * rng.random(3)))
        want[s] -= c
        out[i] = names[s]
    return pd.Series(out, index=counts.index)


def has_shipped_splits(manifest: pd.DataFrame) -> bool:
    """Whether the manifest carries the source's own splits (a `split` column with a value)."""
    return "split" in manifest and bool((manifest.split != "").any())


def _shipped_held_out(manifest: pd.DataFrame, evaluation_only: set[str] | frozenset[str]) -> pd.Series:
    """The source's split of every labeled patient (evaluation-only ones left out); refuses a patient in two."""
    lab = manifest[(manifest.labeled == 1) & ~manifest.patient_id.isin(evaluation_only)]
    per_patient = lab.groupby("patient_id").split.unique()
    spans = per_patient[per_patient.map(len) > 1]
    if len(spans):
        shown = "; ".join(f"{pid}: {sorted(s)}" for pid, s in spans.head(10).items())
        raise LeakageError(f"{len(spans)} patient(s) have images in more than one shipped split ({shown}); splits "
                           "must be by patient: correct the manifest's split column or the patient ids")
    empty = [s for s in SPLITS if not (lab.split == s).any()]
    if empty:
        raise ValueError(f"the manifest's split column gives no labeled image to {empty}; every one of {SPLITS} "
                         "needs labeled images (correct the split column, or drop it to split by seed)")
    trained = sorted(set(evaluation_only) & set(manifest.patient_id[manifest.split.isin(["train", "val"])]))
    if trained:
        raise LeakageError(f"evaluation-only patient(s) {trained[:10]} are in the shipped train or val split; "
                           f"they may only be tested")
    return per_patient.map(lambda s: s[0])


def _train_order(counts: pd.DataFrame, patients: pd.Index, rng: np.random.Generator) -> pd.Series:
    """Rank train-pool patients so that every prefix is stratified: prefixes give nested fractions.

    A patient's stratum is its rarest label (fine where known): rare classes, which decide whether
    a small fraction holds enough of each, are then spread evenly along the ranking.
    """
    fine = [c for c in counts.columns if str(c).startswith("fine:")]
    table = counts.loc[patients, fine or list(counts.columns)]
    totals = table.sum()
    stratum = table.gt(0).mul(1.0 / totals.replace(0, np.nan)).idxmax(axis=1)   # the patient's rarest label
    pos = pd.Series(0.0, index=patients)
    for _, members in stratum.groupby(stratum):
        idx = rng.permutation(len(members))
        pos[members.index] = (idx + rng.random(len(members))) / len(members)
    return pos.rank(method="first").astype(int) - 1


def _check_evaluation_only(manifest: pd.DataFrame, evaluation_only: set[str]) -> None:
    """Every evaluation-only patient must exist and have labeled images (they can only be tested)."""
    labeled = set(manifest.patient_id[manifest.labeled == 1])
    unknown = sorted(set(evaluation_only) - labeled)
    if unknown:
        raise ValueError(f"evaluation-only patient(s) {unknown[:10]} have no labeled image in the manifest; "
                         f"fix {EVALUATION_ONLY} beside the manifest (one labeled patient_id per line)")


def make_splits(manifest: pd.DataFrame, seed: int = 0, evaluation_only: set[str] | frozenset[str] = frozenset()
                ) -> pd.DataFrame:
    """Assign every image to train/val/test/unlabeled (or 'excluded'); a pure function of the seed.

    Columns: image_id, patient_id, labeled, coarse, split, train_rank (patient rank in the train
    pool, -1 elsewhere), evaluation_only (1 for the patients in `evaluation_only`: always test,
    never trained on, and not counted in the labeled data that the fractions p are taken of).
    Never-labeled images of a val/test patient are 'excluded' so that no patient reaches
    training through the unlabeled pool. A manifest with a `split` column keeps the source's splits
    (has_shipped_splits): its val and test are kept as they are, and only the train pool is ranked.
    """
    _check_evaluation_only(manifest, evaluation_only)
    rng = np.random.default_rng(seed)
    counts = _patient_table(manifest)
    shipped = has_shipped_splits(manifest)
    held = (_shipped_held_out(manifest, evaluation_only) if shipped else
            _assign_held_out(counts[~counts.index.isin(evaluation_only)], rng))
    rank = _train_order(counts, held.index[held == "train"], rng)
    held = pd.concat([held, pd.Series("test", index=sorted(evaluation_only), dtype=object)])
    out = manifest[["image_id", "patient_id", "labeled", "coarse"]].copy()
    patient_split = out.patient_id.map(held)
    out["split"] = np.where(out.labeled == 1, patient_split, "unlabeled")
    out.loc[(out.labeled == 0) & patient_split.isin(["val", "test"]), "split"] = "excluded"
    if shipped:   # an unlabeled image the source put in val or test is never trained on either
        out.loc[(out.labeled == 0) & manifest.split.isin(["val", "test"]).to_numpy(), "split"] = "excluded"
    out["train_rank"] = out.patient_id.map(rank).where(out.split == "train", -1).fillna(-1).astype(int)
    out["evaluation_only"] = out.patient_id.isin(evaluation_only).astype(int)
    return out.reset_index(drop=True)


def warn_single_image_classes(manifest: pd.DataFrame) -> list[str]:
    """Warn, by name, about coarse or fine classes with one labeled image: it lands in one split, so the class
    is either trained on or scored, never both (and at small p it may be neither). Returns 'kind name (id)'."""
    labeled = manifest[manifest.labeled.astype(int) == 1]
    lonely = [f"{kind} {name!r} ({g.image_id.iat[0]})" for kind in ("coarse", "fine")
              for name, g in labeled.groupby(kind) if len(g) == 1]
    if lonely:
        warnings.warn(f"{len(lonely)} class(es) with a single labeled image, never both trained on and scored: "
                      f"{', '.join(lonely[:10])}{' ...' if len(lonely) > 10 else ''}. Add images of them or merge "
                      "them into a related class.", stacklevel=2)
    return lonely


def load_evaluation_only(manifest_path: str | Path) -> set[str]:
    """The evaluation-only patients a source lists beside its manifest (EVALUATION_ONLY); none if it has no list."""
    path = Path(manifest_path).parent / EVALUATION_ONLY
    if not path.is_file():
        return set()
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    if list(table.columns) != ["patient_id"]:
        raise ValueError(f"{path}: columns {list(table.columns)}; an evaluation-only list has one column, patient_id")
    return set(table.patient_id)


def select_fraction(splits: pd.DataFrame, p: float) -> pd.DataFrame:
    """Add a `role` column for training fraction p: train / val / test / unlabeled / excluded.

    The smallest prefix of the ranked train pool holding p % of the labeled images is 'train' (the
    evaluation-only ones do not count); the rest of the pool joins 'unlabeled' with its labels
    hidden. Prefixes make fractions nested.
    """
    p = check_fraction(p)
    development = splits.labeled == 1
    if "evaluation_only" in splits:
        development &= splits.evaluation_only != 1
    n_target = p / 100 * development.sum()
    pool = splits[splits.split == "train"]
    per_patient = pool.groupby("train_rank").size().sort_index().cumsum()
    k = int(np.searchsorted(per_patient.to_numpy(), n_target - 1e-9)) if p < 70 else len(per_patient)
    if len(pool) < 0.95 * n_target - 0.5:   # shipped splits: the train pool may hold well under 70 % of the images
        warnings.warn(f"p={p:g}: the train split holds {len(pool)} of the {int(development.sum())} labeled images "
                      f"({100 * len(pool) / development.sum():.1f} %), fewer than p % of them: p={p:g} trains on "
                      "the whole train split", stacklevel=2)
    chosen = set(per_patient.index[: k + 1])
    roles = splits.split.copy()
    in_pool = splits.split == "train"
    roles[in_pool & ~splits.train_rank.isin(chosen)] = "unlabeled"
    out = splits.assign(role=roles)
    check_leakage(out)
    return out


def check_leakage(roles: pd.DataFrame) -> None:
    """Raise LeakageError if a patient spans train/val/test or a held-out image is in the pool."""
    col = "role" if "role" in roles else "split"
    used = roles[roles[col].isin(["train", "val", "test", "unlabeled"])]
    # 'unlabeled' counts as training: it reaches the student through the teachers' soft targets.
    side = used[col].replace({"unlabeled": "train"})
    spans = side.groupby(used.patient_id).nunique()
    bad = spans[spans > 1].index.tolist()
    if bad:
        raise LeakageError(f"{len(bad)} patient(s) appear in more than one of train/val/test "
                           f"(the unlabeled pool counts as train): {bad[:10]}. Splits must be by patient; "
                           "fix the split file or regenerate the splits.")
    if "evaluation_only" in roles:
        trained = roles[(roles.evaluation_only == 1) & ~roles[col].isin(["test", "excluded"])]
        if len(trained):
            first = trained.iloc[0]
            raise LeakageError(f"{trained.patient_id.nunique()} evaluation-only patient(s) outside the test split, "
                               f"e.g. {first.patient_id} in {first[col]!r}: they may only be tested")
    dup = roles.image_id[roles.image_id.duplicated()].tolist()
    if dup:
        raise LeakageError(f"images listed twice in the splits: {dup[:10]}")


def load_user_splits(path: str | Path, manifest: pd.DataFrame) -> pd.DataFrame:
    """Read a user's split file (image_id, split) and check it before anything trains."""
    path = Path(path)
    user = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = {"image_id", "split"} - set(user.columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {sorted(missing)}; a split file has image_id and split")
    bad = user[~user.split.isin(SPLITS + ("unlabeled",))]
    if len(bad):
        raise ValueError(f"{path}: line {bad.index[0] + 2}: split {bad.split.iloc[0]!r}; "
                         "use train, val, test or unlabeled")
    unknown = set(user.image_id) - set(manifest.image_id)
    if unknown:
        raise ValueError(f"{path}: {len(unknown)} image_id(s) not in the manifest, e.g. {sorted(unknown)[:5]}")
    out = manifest[["image_id", "patient_id", "labeled", "coarse"]].merge(user[["image_id", "split"]], on="image_id",
                                                                          how="left")
    if out.split.isna().any():
        raise ValueError(f"{path}: {out.split.isna().sum()} manifest image(s) have no split, "
                         f"e.g. {out.image_id[out.split.isna()].tolist()[:5]}")
    check_leakage(out)
    rank = out[out.split == "train"].patient_id.drop_duplicates().reset_index(drop=True)
    rank_of = pd.Series(rank.index, index=rank.values)
    out["train_rank"] = out.patient_id.map(rank_of).where(out.split == "train", -1).fillna(-1).astype(int)
    return out


def role_summary(roles: pd.DataFrame, col: str = "role") -> pd.DataFrame:
    """Images per split and coarse class, for the data-prep notebook."""
    t = pd.crosstab(roles[col], roles.coarse.replace("", "(no label)"), margins=True, margins_name="total")
    return t


def save_splits(splits: pd.DataFrame, path: str | Path) -> Path:
    return write_csv(splits, path)


def load_splits(path: str | Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"image_id": str, "patient_id": str, "coarse": str}, keep_default_na=False)
