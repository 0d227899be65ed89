"""Any supported source -> a manifest path: the synthetic set, a manifest as it is, or an adapter's output
(odir: ODIR-5K; deepeyenet: DeepEyeNet, with its own splits; csv_folder: any CSV of labelled images, any
folder). See data/README.md for each source."""
from __future__ import annotations

from pathlib import Path

from .. import presets, runs
from ..config import Config
from ..io import REPO_ROOT
from .csv_folder import from_csv, from_folder
from .deepeyenet import from_deepeyenet
from .odir import from_odir_folder
from .synthetic import ensure_synthetic

SOURCES = ("synthetic", "manifest", "odir", "deepeyenet", "csv", "folder")


def resolve_source(source: str, source_path: str | None, options: dict | None, cfg: Config,
                   experiment_dir: Path) -> Path:
    """Turn any supported source into a manifest path (building the manifest where needed)."""
    options = dict(options or {})
    if source == "synthetic":
        size = presets.synthetic_size(cfg.dataset)
        folder = Path(source_path) if source_path else REPO_ROOT / "data" / "synthetic" / cfg.dataset
        return ensure_synthetic(folder, **{**size, **options})
    if source_path is None:
        raise ValueError(f"source={source!r} needs source_path (see data/README.md)")
    if source == "manifest":
        return Path(source_path)
    out = runs.data_dir(experiment_dir) / "source"
    if source == "odir":
        return from_odir_folder(source_path, out, **options)
    if source == "deepeyenet":   # options: coarse_map, modality, min_class_images, skip_missing (data/README.md)
        return from_deepeyenet(source_path, out, **options)
    if source == "csv":
        return from_csv(source_path, out, **options)
    if source == "folder":
        return from_folder(source_path, out, **options)
    raise ValueError(f"source={source!r}: choose one of {SOURCES}")
