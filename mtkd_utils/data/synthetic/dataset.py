"""The dataset folder: draw every planned patient, write images, masks, manifest and the
evaluation-only list atomically, and reuse a folder only when its parameters match.
"""
from __future__ import annotations

import inspect
import os
import secrets
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ...io import read_json, write_csv, write_json
from ...presets import SYNTHETIC_SIZES
from ..manifest import COLUMNS, write_manifest
from ..splits import EVALUATION_ONLY
from .cohort import plan_cohort
from .draw import Lesion, draw_eye
from .plan import plan_eye
from .taxonomy import FINE_PARENT, label_map
from .text import describe

GENERATOR_VERSION = 2  # bump when the images or labels change: old folders are then refused, not reused

SIZES = SYNTHETIC_SIZES  # the generator's sizes live with their presets: one table for config, grid and data


@dataclass
class Rendered:
    """One generated photograph with its mask, drawn lesions and diagnosis sentence."""

    image: np.ndarray  # (S, S, 3) uint8
    mask: np.ndarray  # (S, S) uint8, 255 = lesion
    lesions: list[Lesion]
    text: str
    findings: dict


def render_eye(fine: str, eye: str, size: int, rng: np.random.Generator) -> Rendered:
    """Plan and draw one fundus photograph; returns the image, its lesion mask, the lesions and a sentence."""
    plan = plan_eye(fine, eye, rng)
    image, mask, lesions = draw_eye(plan, size, rng)
    return Rendered(image, mask, lesions, describe(plan, rng), plan.findings)


def _make_patient(job: tuple[str, int, int, bool, dict[str, str], int]) -> list[dict]:
    """Draw and save both eyes of one patient (runs in a worker); returns its manifest rows."""
    root, seed, index, labeled, fines, size = job
    pid = f"p{index:05d}"
    rows = []
    for k, eye in enumerate(("left", "right")):
        iid = f"{pid}_{eye[0].upper()}"
        r = render_eye(fines[eye], eye, size, np.random.default_rng([seed, index, 1 + k]))
        Image.fromarray(r.image).save(Path(root) / "images" / f"{iid}.png", compress_level=4)
        mask = ""
        if labeled and r.lesions:
            mask = f"masks/{iid}.png"
            Image.fromarray(r.mask).save(Path(root) / mask, compress_level=4)
        fine = fines[eye] if labeled else ""
        rows.append({"image_id": iid, "image": f"images/{iid}.png", "patient_id": pid, "eye": eye,
                     "labeled": int(labeled), "coarse": FINE_PARENT[fine] if labeled else "",
                     "fine": fine, "text": r.text if labeled else "", "mask": mask})
    return rows


def _jobs(root: Path, cohort: pd.DataFrame, seed: int, size: int) -> list[tuple]:
    """One drawing job per patient, in patient order."""
    jobs = []
    for (index, pid), eyes in cohort.groupby(["index", "patient_id"], sort=True):
        fines = dict(zip(eyes.eye, eyes.fine))
        jobs.append((str(root), seed, int(index), bool(eyes.labeled.iloc[0]), fines, size))
    return jobs


def generate(out_dir: str | Path, *, n_patients: int, n_unlabeled_patients: int, n_eval_patients: int = 0,
             image_size: int = 128, seed: int = 0) -> Path:
    """Write a complete synthetic dataset folder (manifest, label map, evaluation-only list, images, masks,
    params); returns out_dir."""
    out_dir = Path(out_dir)
    if _occupied(out_dir):
        raise FileExistsError(f"{out_dir} already exists and is not empty; delete it or choose another folder")
    if n_patients < 1 or n_unlabeled_patients < 0 or n_eval_patients < 0 or image_size < 32:
        raise ValueError(f"need n_patients >= 1, n_eval_patients >= 0, n_unlabeled_patients >= 0 and image_size "
                         f">= 32; got {n_patients}, {n_eval_patients}, {n_unlabeled_patients}, {image_size}")
    params = _params(n_patients, n_unlabeled_patients, n_eval_patients, image_size, seed)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # a hidden unique sibling; plain mkdir (not mkdtemp, which makes it private to this user)
    tmp = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        (tmp / "images").mkdir()
        (tmp / "masks").mkdir()
        cohort = plan_cohort(n_patients, n_eval_patients, n_unlabeled_patients, seed)
        rows = [row for rows in _map(_make_patient, _jobs(tmp, cohort, seed, image_size)) for row in rows]
        write_manifest(pd.DataFrame(rows, columns=COLUMNS), tmp / "manifest.csv")
        label_map().save(tmp / "label_map.json")
        held = cohort[cohort.evaluation_only == 1].patient_id.drop_duplicates()
        write_csv(pd.DataFrame({"patient_id": held}), tmp / EVALUATION_ONLY)
        write_json(params, tmp / "params.json")  # written last: its presence marks a finished folder
        _move_into_place(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _move_into_place(tmp: Path, out_dir: Path) -> None:
    """Rename the finished temporary folder onto out_dir, atomically."""
    if out_dir.exists() and not _occupied(out_dir):
        out_dir.rmdir()  # an empty folder the caller made; the rename needs it gone
    try:
        os.rename(tmp, out_dir)  # atomic: a killed run leaves only the hidden .partial folder
    except OSError:
        if _occupied(out_dir):  # another process finished first
            raise FileExistsError(f"{out_dir} was written by someone else while this run generated it") from None
        raise


_GENERATE_SIGNATURE = inspect.signature(generate)


def _occupied(folder: Path) -> bool:
    """The folder exists and holds something."""
    return folder.exists() and any(folder.iterdir())


def _map(fn, jobs: list) -> list:
    """fn over jobs in order, on several processes when it pays; results never depend on the worker count."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = min(8, cpus)
    if workers < 2 or len(jobs) < 64:
        return [fn(j) for j in jobs]
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(fn, jobs, chunksize=16))


def _params(n_patients: int, n_unlabeled_patients: int, n_eval_patients: int, image_size: int, seed: int) -> dict:
    """What params.json records: a folder is reused only when all of it matches."""
    return {"n_patients": int(n_patients), "n_eval_patients": int(n_eval_patients),
            "n_unlabeled_patients": int(n_unlabeled_patients), "image_size": int(image_size), "seed": int(seed),
            "generator_version": GENERATOR_VERSION}


def ensure_synthetic(out_dir: str | Path, **params) -> Path:
    """Return out_dir/manifest.csv, generating the dataset first unless out_dir already holds these params."""
    out_dir = Path(out_dir)
    allowed = [p for p in _GENERATE_SIGNATURE.parameters if p != "out_dir"]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"unknown synthetic dataset parameter(s) {unknown}; allowed: {allowed}")
    try:
        bound = _GENERATE_SIGNATURE.bind(out_dir, **params)
    except TypeError as e:
        raise ValueError(f"synthetic dataset parameters: {e}; e.g. ensure_synthetic(folder, **SIZES['demo'])") from None
    bound.apply_defaults()
    want = _params(**{k: v for k, v in bound.arguments.items() if k != "out_dir"})
    if not _occupied(out_dir):
        try:
            generate(out_dir, **{k: want[k] for k in allowed})
        except FileExistsError:
            pass  # a concurrent run got there first: check what it wrote, below
    have = read_json(out_dir / "params.json") if (out_dir / "params.json").is_file() else None
    if have != want:
        raise ValueError(f"{out_dir} holds something else (params {have}, wanted {want}); "
                         f"delete the folder or choose another one")
    return out_dir / "manifest.csv"
