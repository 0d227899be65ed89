"""What the notebooks show: the one setup call every notebook starts with, and small views of the run folders."""
from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch

from . import presets
from .config import FRACTIONS, Config
from .data import FundusData, load_mask
from .engine import setup_runtime
from .io import current_experiment
from .results import read_predictions
from .splits import select_fraction

REPO = Path(__file__).resolve().parent.parent


class Experiment(NamedTuple):
    path: Path               # the experiment folder (mtkd_utils.runs)
    cfg: Config              # the preset with the notebook's overrides: what 01-03 train with
    device: torch.device     # where runs compute


def experiment_path(path: str | Path | None) -> Path:
    """Relative experiment folders live under the repo root, whether run from papermill or JupyterLab;
    None is the experiment chosen for every notebook in outputs/experiment.json (io.current_experiment)."""
    if path is None:
        return current_experiment()
    path = Path(path)
    return path if path.is_absolute() else REPO / path


def open_experiment(experiment_dir: str | Path, preset: str, overrides: dict[str, Any] | None = None) -> Experiment:
    """Every notebook's first call: the experiment folder, the preset's config with overrides, threads and device.

    The analyses (04, 05) rebuild each model from its run's own config.json (runs.run_config), not from this one.
    """
    cfg = presets.config(preset, **(overrides or {}))
    return Experiment(experiment_path(experiment_dir), cfg, setup_runtime(cfg))


# ---------------------------------------------------------------- data prep (01)
def fraction_table(splits: pd.DataFrame, fractions=FRACTIONS) -> pd.DataFrame:
    """Images per role at each training fraction p."""
    counts = {f"p={p}": select_fraction(splits, p).role.value_counts() for p in fractions}
    return pd.DataFrame(counts).fillna(0).astype(int)


def sample_rows(manifest: pd.DataFrame, per_class: int, seed: int, classes: list[str] | None = None) -> pd.DataFrame:
    """A seeded draw of labeled rows per coarse class, favouring distinct fine labels."""
    lab = manifest[manifest.labeled.astype(str) == "1"]
    picks = [g.sample(frac=1, random_state=seed).drop_duplicates("fine").head(per_class)
             for _, g in lab.groupby("coarse")]
    order = {c: i for i, c in enumerate(classes)} if classes else {}
    return (pd.concat(picks).sort_values("coarse", key=lambda s: s.map(order).fillna(len(order)), kind="stable")
            .reset_index(drop=True))


def load_samples(manifest_path: str | Path, rows: pd.DataFrame, size: int) -> tuple[np.ndarray, list]:
    """Prepared images and lesion masks of some manifest rows, for figures."""
    from .fundus import prepare_image
    root = Path(manifest_path).parent
    images = np.stack([prepare_image(root / r.image, size) for r in rows.itertuples()])
    masks = [load_mask(manifest_path, r.image, r.mask, size) for r in rows.itertuples()]
    return images, masks


# ---------------------------------------------------------------- students (03)
def results_frame(results: dict[str, dict]) -> pd.DataFrame:
    """Test metrics of several models side by side, with the chosen tau and alpha and the updates each took."""
    rows = {m: {"tau": r["tau"], "alpha": r.get("alpha"), "updates": r.get("updates"), **r["test"]}
            for m, r in results.items()}
    return pd.DataFrame(rows).T.drop(columns=["n"], errors="ignore").round(4)


def tau_frame(results: dict[str, dict]) -> pd.DataFrame:
    """Validation score per (tau, alpha) for each distilled model (the test split plays no part)."""
    rows = [{"model": m, **t} for m, r in results.items() for t in r.get("tau_search", [])]
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows).pivot(index=["tau", "alpha"], columns="model", values="val_score")


# ---------------------------------------------------------------- finished runs (04, 05)
def student_predictions(finished: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Test predictions of each finished run (runs.finished_runs), keyed like 'M3 p=15'."""
    return {r.key.name: read_predictions(r.run / "predictions.csv")
            .assign(bleu=lambda d: pd.to_numeric(d.bleu, errors="coerce")) for r in finished.itertuples()}


def held_out_images(data: FundusData) -> tuple[pd.DataFrame, torch.Tensor]:
    """The test split's manifest rows and images as one float batch (N, 3, H, W) in [0, 1]."""
    test = data.rows("test")
    x = torch.from_numpy(np.array(data.images[test])).permute(0, 3, 1, 2).float() / 255
    return data.manifest.iloc[test].reset_index(drop=True), x


def pick_images(rows: pd.DataFrame, masks: list, per_disease: int, seed: int, image_ids=()) -> list[int]:
    """Positions of the figure's images: the given ids, else a seeded draw of annotated images per disease."""
    if image_ids:
        missing = sorted(set(image_ids) - set(rows.image_id))
        if missing:
            raise ValueError(f"image_ids {missing} are not test images of this experiment")
        return [int(np.flatnonzero(rows.image_id.to_numpy() == i)[0]) for i in image_ids]
    annotated = rows.assign(pos=range(len(rows)))[[m is not None and m.any() for m in masks]]
    picks = [g.sample(n=min(per_disease, len(g)), random_state=seed).pos
             for _, g in annotated.groupby("coarse", sort=False)]
    return [int(i) for part in picks for i in sorted(part)]

