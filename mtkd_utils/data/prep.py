"""Step 01: any supported source -> a validated manifest, patient-level splits and the image cache in data/."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .. import runs
from ..config import Config
from ..io import file_sha1, read_json, write_json
from .dataset import build_image_cache
from .manifest import LabelMap, check_trainable, validate_manifest
from .sources import resolve_source
from .splits import (has_shipped_splits, load_evaluation_only, load_user_splits, make_splits, save_splits,
                     warn_single_image_classes)


def prepare_data(experiment_dir: str | Path, cfg: Config, source: str = "synthetic", source_path: str | None = None,
                 source_options: dict | None = None, split_file: str | None = None, crop_fov: bool = True) -> dict:
    """Build/validate the manifest, make the patient-level splits and the image cache; write data/.

    Returns dataset.json's content with `manifest` as a usable path (the file stores it relative: manifest_record).
    """
    exp = Path(experiment_dir)
    data_dir = runs.data_dir(exp)
    settings = dict(source=source, split_seed=cfg.split_seed, split_file=split_file, crop_fov=crop_fov)
    refuse_other_data(data_dir, settings)        # before anything is written (a source adapter writes data/source/)
    manifest_path = resolve_source(source, source_path, source_options, cfg, exp).resolve()
    labels = LabelMap.load(manifest_path.parent / "label_map.json")
    manifest = validate_manifest(manifest_path, labels)
    check_trainable(manifest, manifest_path)
    warn_single_image_classes(manifest)
    info = dict(**runs.manifest_record(manifest_path, exp), manifest_sha1=file_sha1(manifest_path), **settings)
    refuse_other_data(data_dir, {**settings, "manifest": manifest_path, "manifest_sha1": info["manifest_sha1"]})
    # the source's own splits (a manifest `split` column) are kept: p and the unlabeled pool come from its train
    info["splits"] = "file" if split_file else "shipped" if has_shipped_splits(manifest) else "seeded"
    splits = (load_user_splits(split_file, manifest) if split_file else
              make_splits(manifest, cfg.split_seed, evaluation_only=load_evaluation_only(manifest_path)))
    save_splits(splits, data_dir / "splits.csv")
    labels.save(data_dir / "label_map.json")
    build_image_cache(manifest_path, data_dir / "cache", cfg.image_size, crop_fov)
    write_json(info, data_dir / "dataset.json")
    return {**info, "manifest": str(manifest_path)}


def split_note(info: dict, manifest: pd.DataFrame) -> str:
    """How 01's splits were made, in a sentence or two; says when each image is its own patient (no patient ids)."""
    how = {"shipped": "the source's own (the manifest's split column): its test and validation images as shipped, "
                      "p and the unlabeled pool drawn inside its train split",
           "file": f"from {info.get('split_file')}"}.get(info.get("splits", ""), "by patient, stratified, seeded "
                                                           "(split_seed): test 15 %, validation 15 %, train pool 70 %")
    if (manifest.patient_id == manifest.image_id).all():
        how += (". The source has no patient ids, so each image is its own patient: leakage between the two eyes "
                "(or two visits) of one person cannot be ruled out")
    return f"splits: {how}."


def refuse_other_data(data_dir: Path, expected: dict) -> None:
    """Refuse (writing nothing) an experiment already prepared with other data or splits."""
    if not (data_dir / "dataset.json").exists():
        return
    old = read_json(data_dir / "dataset.json")
    old["manifest"] = runs.manifest_location(data_dir.parent, old).resolve()
    diff = sorted(k for k, v in expected.items() if old.get(k) != v)
    if diff:
        raise FileExistsError(f"{data_dir} was prepared from other data or splits ({', '.join(diff)}: {old['manifest']}, "
                              f"split_seed={old.get('split_seed')}). Choose a new experiment_dir; nothing was overwritten.")


def ensure_data(experiment_dir, cfg: Config) -> None:
    """01's data/ for a notebook that can run first (07): the synthetic dataset when the experiment has none yet."""
    if not (runs.data_dir(experiment_dir) / "dataset.json").exists():
        prepare_data(experiment_dir, cfg)
