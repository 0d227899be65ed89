"""What every source adapter (odir, csv_folder) shares: image paths as the manifest sees them, the label map of
the rows, and writing manifest.csv + label_map.json.

Images are not copied: the manifest points at them with paths relative to the output folder
(they may start with '..'), so keep the output folder and the images where they are.
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from .manifest import COLUMNS, OPTIONAL, LabelMap, validate_manifest, write_manifest

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")


def relpath(path: str | Path, out_dir: Path) -> str:
    """`path` as seen from the manifest's folder, with '/' on every OS."""
    return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(out_dir))).as_posix()


def raise_missing(missing: list[str], source: Path | str) -> None:
    """ValueError listing the images a source lists but the disk lacks (the first 30)."""
    shown = "\n  ".join(missing[:30]) + (f"\n  ... and {len(missing) - 30} more" if len(missing) > 30 else "")
    raise ValueError(f"{source}: {len(missing)} listed image(s) are not on disk; nothing was written:\n  {shown}\n"
                     f"Put the files there, or pass skip_missing=True to leave them out (they are counted).")


def label_map_of(rows: pd.DataFrame, coarse_order: list[str] | None = None) -> LabelMap:
    """The classes present in the labeled rows: coarse in `coarse_order` (default sorted), fine grouped under them."""
    lab = rows[rows.labeled == 1]
    pairs = lab[["fine", "coarse"]].drop_duplicates()
    clash = pairs[pairs.fine.duplicated(keep=False)]
    if not clash.empty:
        detail = {f: sorted(g.coarse) for f, g in clash.groupby("fine")}
        raise ValueError(f"fine classes under more than one coarse class: {detail}; "
                         f"a fine class must nest in one coarse class, so rename or correct them")
    present = set(lab.coarse)
    coarse = sorted(present) if coarse_order is None else [c for c in dict.fromkeys(coarse_order) if c in present]
    fine = sorted(pairs.itertuples(index=False), key=lambda p: (coarse.index(p.coarse), p.fine))
    return LabelMap.from_pairs(coarse, [(p.fine, p.coarse) for p in fine])


def write_dataset(rows: pd.DataFrame, labels: LabelMap, out_dir: Path) -> Path:
    """Write manifest.csv and label_map.json, and check them together (images are checked later: slow)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = COLUMNS + [c for c in OPTIONAL if c in rows.columns]   # a source's split and keywords, when it has them
    path = write_manifest(rows.reindex(columns=columns, fill_value=""), out_dir / "manifest.csv")
    labels.save(out_dir / "label_map.json")
    validate_manifest(path, labels, check_images=False)
    return path
