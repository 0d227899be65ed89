"""What the notebooks show: the one setup call every notebook starts with, and small views of the run folders."""
from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch

from .. import presets
from ..config import FRACTIONS, Config
from ..data.dataset import FundusData
from ..data.manifest import LabelMap
from ..data.splits import select_fraction
from ..io import REPO_ROOT, current_experiment
from ..train.runtime import setup_runtime
from .results import read_predictions


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
    return path if path.is_absolute() else REPO_ROOT / path


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


def class_counts(split_table: pd.DataFrame, manifest: pd.DataFrame, labels: LabelMap,
                 fractions=(15, 70)) -> pd.DataFrame:
    """Labeled images per fine class (rows grouped by coarse class, label-map order) in the training set at each p,
    in validation and in test; a `total` row at the end."""
    if split_table.image_id.tolist() != manifest.image_id.tolist():
        raise ValueError("split_table and manifest disagree row for row: pass the experiment's splits.csv and "
                         "the manifest it was made from")
    columns = {f"train p={p:g}": select_fraction(split_table, p).role.to_numpy() == "train" for p in fractions}
    columns |= {name: split_table.split.to_numpy() == name for name in ("val", "test")}
    pairs = [(coarse, fine) for coarse in labels.coarse for fine in labels.fine if labels.fine_parent[fine] == coarse]
    index = pd.MultiIndex.from_tuples(pairs, names=["coarse", "fine"])
    sizes = {name: manifest[chosen].groupby(["coarse", "fine"]).size() for name, chosen in columns.items()}
    table = pd.DataFrame(sizes)
    table = table.reindex(index).fillna(0).astype(int)
    table.loc[("total", ""), :] = table.sum()
    return table.astype(int)


def sample_rows(manifest: pd.DataFrame, per_class: int, seed: int, classes: list[str] | None = None) -> pd.DataFrame:
    """A seeded draw of labeled rows per coarse class, favouring distinct fine labels."""
    lab = manifest[manifest.labeled.astype(str) == "1"]
    picks = [g.sample(frac=1, random_state=seed).drop_duplicates("fine").head(per_class)
             for _, g in lab.groupby("coarse")]
    order = {c: i for i, c in enumerate(classes)} if classes else {}
    return (pd.concat(picks).sort_values("coarse", key=lambda s: s.map(order).fillna(len(order)), kind="stable")
            .reset_index(drop=True))


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


def held_out_images(data: FundusData, role: str = "test") -> tuple[pd.DataFrame, torch.Tensor]:
    """One split's (default: test) manifest rows and images as one float batch (N, 3, H, W) in [0, 1]."""
    rows = data.rows(role)
    x = torch.from_numpy(np.array(data.images[rows])).permute(0, 3, 1, 2).float() / 255
    return data.manifest.iloc[rows].reset_index(drop=True), x


def has_lesion(masks: list) -> np.ndarray:
    """Whether each image has a lesion mask with at least one lesion pixel."""
    return np.array([m is not None and bool(np.any(m)) for m in masks], dtype=bool)


def pick_images(rows: pd.DataFrame, masks: list, per_disease: int, seed: int, image_ids=()) -> list[int]:
    """Positions of the figure's images: the given ids, else a seeded draw per disease among the annotated images,
    or among all of them when the data has no lesion mask (ODIR-5K, a CSV)."""
    if image_ids:
        missing = sorted(set(image_ids) - set(rows.image_id))
        if missing:
            raise ValueError(f"image_ids {missing} are not test images of this experiment")
        return [int(np.flatnonzero(rows.image_id.to_numpy() == i)[0]) for i in image_ids]
    annotated = has_lesion(masks)
    pool = rows.assign(pos=range(len(rows)))[annotated if annotated.any() else slice(None)]
    picks = [g.sample(n=min(per_disease, len(g)), random_state=seed).pos
             for _, g in pool.groupby("coarse", sort=False)]
    return [int(i) for part in picks for i in sorted(part)]


def scored_images(rows: pd.DataFrame, masks: list, normal: str = "normal") -> np.ndarray:
    """Positions of the images whose CAMs are scored: abnormal (coarse label not `normal`) with a lesion mask."""
    return np.flatnonzero(has_lesion(masks) & (rows.coarse.to_numpy() != normal))


def class_indices(names, classes: list[str]) -> np.ndarray:
    """Class indices of label names (e.g. the true labels, as CAM targets); ValueError naming an unknown one."""
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(names) - set(index))
    if unknown:
        raise ValueError(f"labels {unknown[:5]} are not classes of the label map ({classes[:8]}...)")
    return np.array([index[n] for n in names], dtype=np.int64)


def cam_targets(rows: pd.DataFrame, masks: list, classes: list[str], task: str = "T1",
                normal: str = "normal") -> tuple[np.ndarray, np.ndarray]:
    """(positions, targets): the images whose CAMs are scored (abnormal, with a lesion mask) and the index of each
    one's *true* class for `task` (T1 coarse, T2 fine): localisation is asked of the class that has the lesion,
    not of whatever the model predicts (mostly 'normal' for a weak model)."""
    if task not in ("T1", "T2"):
        raise ValueError(f"task={task!r}: CAM targets exist for the class heads T1 and T2")
    positions = scored_images(rows, masks, normal)
    names = rows.coarse if task == "T1" else rows.fine
    return positions, class_indices(names.iloc[positions], classes)


def focus_names(names, focus: str) -> list[str]:
    """The run names ('M3 p=15') of the focus model, in the given order; a clear error where it has none (an
    experiment trained without it: e.g. M1 alone at p = 70)."""
    found = [n for n in names if n.startswith(focus + " ")]
    if not found:
        models = sorted({n.split(" ")[0] for n in names})
        raise ValueError(f"focus={focus!r}: this experiment has no finished {focus} run (it has {models or 'none'}); "
                         f"set the notebook's focus to one of them (papermill -p focus {models[0] if models else 'M1'})"
                         " or train it first (03_student_mtl_kd)")
    return found
