"""1-nearest-neighbour retrieval, the T3 baseline report-generation work puts beside every generator.

Boag et al. 2020 (MIMIC-CXR) found that saying the reference sentence of the nearest training image beats many
published generators on BLEU and CIDEr. Here the nearest labeled training image is found in the evaluated model's
own encoder space (its pooled features, MTLModel.features) by cosine similarity; the test read writes the
retrieved sentence of every test image to retrieval.csv, which analysis/t3.py scores like a model's sentences.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..data.dataset import FundusData, batch_rows, image_batch
from .runtime import autocast

RETRIEVAL_FILE = "retrieval.csv"


@torch.no_grad()
def encode(model, data: FundusData, rows: np.ndarray, batch_size: int, device: torch.device) -> np.ndarray:
    """The model's pooled encoder features (N, D) of the images `rows`, float32, in the rows' order."""
    model.eval()
    out = []
    for b in batch_rows(rows, batch_size, shuffle=False):
        with autocast(device):
            out.append(model.features(image_batch(data.images, b, device)).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def nearest_neighbours(queries: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each query row, the index of the key row of highest cosine similarity and that similarity (ties: the
    first key)."""
    if len(keys) == 0:
        raise ValueError("nearest_neighbours: no keys to retrieve from (no labeled training image with a sentence)")
    unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)   # noqa: E731
    sim = unit(queries.astype(np.float64)) @ unit(keys.astype(np.float64)).T            # (Q, K)
    best = sim.argmax(1)
    return best, sim[np.arange(len(best)), best]


def retrieval_table(model, data: FundusData, test_rows: np.ndarray, batch_size: int,
                    device: torch.device) -> pd.DataFrame | None:
    """Per test image: the nearest labeled training image with a sentence (neighbour_id), the cosine similarity and
    that image's sentence (text_retrieved); None when no training image has a sentence."""
    train = data.rows("train")
    train = train[(data.manifest.text.iloc[train] != "").to_numpy()]
    if len(train) == 0:
        return None
    best, sim = nearest_neighbours(encode(model, data, test_rows, batch_size, device),
                                   encode(model, data, train, batch_size, device))
    neighbours = data.manifest.iloc[train[best]]
    return pd.DataFrame({"image_id": data.manifest.image_id.iloc[test_rows].to_numpy(),
                         "neighbour_id": neighbours.image_id.to_numpy(), "similarity": sim,
                         "text_retrieved": neighbours.text.to_numpy()})


def ensure_retrieval(experiment_dir, key, device: str | None = None) -> Path | None:
    """retrieval.csv of a finished run (RunKey with its model), computed from its saved weights when the test read
    predates it (no training: one encoder pass over the labeled training and test images); None without sentences."""
    from .. import runs
    from ..io import write_csv
    from .reload import load_student
    from .runtime import eval_batch_size, pick_device

    path = runs.student_dir(experiment_dir, key) / RETRIEVAL_FILE
    if path.exists():
        return path
    model, data = load_student(experiment_dir, key, device)
    cfg = runs.trained_model_config(experiment_dir, key)
    table = retrieval_table(model, data, data.rows("test"), eval_batch_size(cfg), pick_device(device or cfg.device))
    return None if table is None else write_csv(table, path, checksum=True)
