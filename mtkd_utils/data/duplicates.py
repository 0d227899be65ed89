"""One photograph under several names: found by the hash of its decoded pixels, reported by file, and by default
its patients put in one split group so that the copies can never straddle train and test.

Public fundus sets are known to hold such copies (an export done twice, a patient registered twice); patient ids
alone cannot see them.
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ..io import write_csv

# a photograph shipped in two splits stays in the first of these ('': no split, the unlabeled pool)
SHIPPED_ORDER = ("test", "val", "train", "")
POLICIES = ("group", "refuse")   # group: the copies' patients split as one; refuse: stop, listing every group
DUPLICATES_CSV = "duplicates.csv"


def check_policy(policy: str) -> str:
    if policy not in POLICIES:
        raise ValueError(f"source_options duplicates={policy!r}: choose one of {POLICIES} ('group': the patients of "
                         "identical photographs share one split, the default; 'refuse': stop and list them)")
    return policy


def duplicate_groups(manifest: pd.DataFrame, hashes: dict[str, str]) -> list[list[int]]:
    """Row positions of each set of two or more images with identical pixels, in manifest order."""
    keys = manifest.image.map(hashes)
    if keys.isna().any():
        missing = manifest.image[keys.isna()].tolist()
        raise ValueError(f"no pixel hash for {len(missing)} image(s), e.g. {missing[:3]}: validate with pixel_hashes")
    positions = pd.Series(range(len(manifest)), index=keys.to_numpy())
    return [list(g) for _, g in positions.groupby(level=0, sort=False) if len(g) > 1]


def split_groups(manifest: pd.DataFrame, groups: list[list[int]]) -> pd.Series:
    """Each row's split group: its patient_id, or for patients linked by a shared photograph (transitively) all
    their ids joined by '+', sorted (p1 and p7 share a photograph: both become 'p1+p7')."""
    parent: dict[str, str] = {}

    def root(p: str) -> str:
        while parent.get(p, p) != p:
            p = parent[p]
        return p

    for rows in groups:
        first, *rest = sorted(set(manifest.patient_id.iloc[rows]))
        for other in rest:
            a, b = sorted((root(first), root(other)))
            if a != b:
                parent[b] = a
    members: dict[str, list[str]] = {}
    for p in {*parent, *parent.values()}:
        members.setdefault(root(p), []).append(p)
    name = {p: "+".join(sorted(ms)) for ms in members.values() for p in ms}
    return manifest.patient_id.map(lambda p: name.get(p, p))


def group_table(manifest: pd.DataFrame, groups: list[list[int]], root: Path) -> pd.DataFrame:
    """One row per image of a duplicate group: group number, image_id, file (the image's path from `root`, the
    manifest's folder, made plain), patient_id, labeled, coarse."""
    rows = [manifest.iloc[g].assign(group=n) for n, g in enumerate(groups, 1)]
    rows = [r.assign(file=[os.path.normpath(Path(root) / rel) for rel in r.image]) for r in rows]
    cols = ["group", "image_id", "file", "patient_id", "labeled", "coarse"]
    return pd.concat(rows)[cols] if rows else pd.DataFrame(columns=cols)


def _describe(table: pd.DataFrame, limit: int = 20) -> str:
    lines = [f"group {n}: " + ", ".join(f"{r.file} (patient {r.patient_id})" for r in g.itertuples())
             for n, g in table.groupby("group")]
    more = f"\n  ... and {len(lines) - limit} more groups" if len(lines) > limit else ""
    return "\n  ".join(lines[:limit]) + more


def shipped_copies(manifest: pd.DataFrame, groups: list[list[int]]) -> tuple[list[list[int]], list[str]]:
    """With the source's own splits, a group's copies in one shipped split are split together; a copy whose
    photograph the source also ships in a split tested first (SHIPPED_ORDER) is excluded: the image_ids."""
    within, excluded = [], []
    for rows in groups:
        split = manifest.split.iloc[rows]
        keep = min(split, key=SHIPPED_ORDER.index)
        excluded += manifest.image_id.iloc[[r for r, s in zip(rows, split) if s != keep]].tolist()
        within += [part for s in set(split) if len(part := [r for r, t in zip(rows, split) if t == s]) > 1]
    return within, excluded


def handle_duplicates(manifest: pd.DataFrame, hashes: dict[str, str], policy: str, data_dir: Path,
                      where: Path, shipped: bool = False) -> tuple[pd.DataFrame, dict]:
    """The manifest to split (patient_id replaced by split_groups under 'group') and the counts for dataset.json
    (with the source's own splits, `shipped`: also the copies to exclude, shipped_copies); every group is printed by
    file (`where`: the manifest) and written to data_dir/duplicates.csv. 'refuse' raises ValueError instead."""
    check_policy(policy)
    groups = duplicate_groups(manifest, hashes)
    excluded: list[str] = []
    if shipped and policy == "group":
        groups_all, (groups, excluded) = groups, shipped_copies(manifest, groups)
        table = group_table(manifest, groups_all, Path(where).parent)
    else:
        table = group_table(manifest, groups, Path(where).parent)
    split_ids = split_groups(manifest, groups)
    merged = manifest.patient_id[split_ids != manifest.patient_id].nunique()
    counts = {"groups": int(table.group.nunique()), "images": len(table), "patients_grouped": int(merged),
              "policy": policy, "excluded": excluded}
    if table.empty:
        (Path(data_dir) / DUPLICATES_CSV).unlink(missing_ok=True)   # a report from other data would mislead
        return manifest, counts
    if policy == "refuse":
        raise ValueError(f"{where}: {len(groups)} photograph(s) appear more than once (identical pixels, "
                         f"{len(table)} files):\n  {_describe(table)}\nRemove the copies (or correct their patient "
                         "ids), or drop duplicates='refuse' from source_options to split each group's patients "
                         "together")
    write_csv(table, Path(data_dir) / DUPLICATES_CSV)
    print(f"NOTE {where}: {len(groups)} photograph(s) appear more than once (identical pixels, {len(table)} files; "
          f"listed in {Path(data_dir) / DUPLICATES_CSV}):\n  {_describe(table)}\n"
          + (f"The {merged} patients that share a photograph are split as one group (never across train, "
             "validation and test). Pass source_options={'duplicates': 'refuse'} to stop instead."
             if merged else "Each group belongs to one patient: the splits are unchanged.")
          + (f"\nThe source ships {len(excluded)} of these copies in a second split: each is excluded from the "
             "split it shares with a copy tested first (test, then validation, then train), so that no test or "
             "validation photograph is also trained on." if excluded else ""))
    return manifest.assign(patient_id=split_ids), counts
