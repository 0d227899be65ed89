"""The study's two rows that are no training recipe (07): self-training on hardened soft targets, and the teacher
ensemble itself scored on the test split."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import runs
from ..config import Config, task_subsets
from ..data.dataset import FundusData, batch_rows, image_batch
from ..io import write_csv
from ..runs import RunKey
from ..train.reload import load_model, student_teachers
from ..train.runtime import eval_batch_size, pick_device

HARD_MARGIN = 20.0      # logit of the teacher's argmax in a hardened soft target: at tau=1 each other class gets ~2e-9


def harden(store: dict) -> dict:
    """Soft targets -> one-hot logits at the teacher's argmax (T1, T2, each T3 step), no T3 rest bucket."""
    out = {k: v for k, v in store.items() if k != "T3_rest"}
    for task in ("T1", "T2"):
        if task in store:
            z = store[task].float()                                              # (N, K, C)
            out[task] = (torch.zeros_like(z).scatter_(-1, z.argmax(-1, keepdim=True), HARD_MARGIN)).half()
    if "T3_val" in store:
        val = torch.zeros_like(store["T3_val"].float())                          # (N, K, L-1, k), sorted: top first
        val[..., 0] = HARD_MARGIN
        out["T3_val"] = val.half()
    return {**out, "hard": True}


def hard_pseudo_labels(experiment_dir: Path, key: RunKey, cfg: Config, data: FundusData) -> None:
    """The student's soft-target cache, hardened before it is written (its meta kept, so the student reuses it)."""
    student_teachers(experiment_dir, key, cfg, data, finish=harden)


@torch.no_grad()
def ensemble_probabilities(models: list, data: FundusData, rows: np.ndarray, batch_size: int,
                           device: torch.device) -> dict[str, np.ndarray]:
    """Mean softmax of the teachers that know each of T1/T2, on clean images: {task: (N, C)}."""
    parts: dict[str, list[np.ndarray]] = {}
    for b in batch_rows(rows, batch_size, shuffle=False):
        x = image_batch(data.images, b, device)
        feats = [m.eval().features(x) for m in models]
        for task in ("T1", "T2"):
            probs = [m.heads[task](f).float().softmax(-1) for m, f in zip(models, feats) if task in m.heads]
            parts.setdefault(task, []).append(torch.stack(probs).mean(0).cpu().numpy())
    return {task: np.concatenate(p) for task, p in parts.items()}


def teacher_ensemble_run(experiment_dir: Path, key: RunKey, data: FundusData) -> Path:
    """The teachers' mean probabilities scored on the test split, as predictions.csv (T1, T2; no sentence)."""
    run = runs.study_dir(experiment_dir, "ensemble") / runs.fraction_folder(key.p, key.seed)
    if (run / "predictions.csv").exists():
        return run
    models = []
    for subset in task_subsets(key.tasks):
        folder = runs.teacher_dir(experiment_dir, RunKey(subset, key.p, key.seed))
        models.append(load_model(folder, runs.run_config(folder), data, subset))
    cfg = runs.run_config(runs.teacher_dir(experiment_dir, key))
    test = data.rows("test")
    probs = ensemble_probabilities(models, data, test, eval_batch_size(cfg), pick_device(cfg.device))
    m = data.manifest.iloc[test]
    preds = pd.DataFrame({"image_id": m.image_id.to_numpy(), "coarse_true": m.coarse.to_numpy(),
                          "coarse_pred": "", "fine_true": m.fine.to_numpy(), "fine_pred": "",
                          "text_true": m.text.to_numpy(), "text_pred": "", "bleu": ""})
    if "T1" in probs:
        preds["coarse_pred"] = [data.labels.coarse[i] for i in probs["T1"].argmax(1)]
    if "T2" in probs:
        preds["fine_pred"] = [data.labels.fine[i] for i in probs["T2"].argmax(1)]
    write_csv(preds, run / "predictions.csv")
    return run
