"""The benchmarked modes (mtkd_utils.tools.bench) and how one pass of each is timed: every mode trains its own copy
of one model, with its own optimizer and teachers."""
from __future__ import annotations

import copy
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..config import TASKS, Config
from ..data.dataset import FundusData, batch_rows, image_batch
from ..data.text import trim
from ..train import losses
from ..train.distill import CachedTeachers, OnlineTeachers, build_soft_targets, load_soft_targets
from ..train.engine import MultiTaskLoss, TrainBatches, cosine_schedule, epoch_generator, train_one_epoch
from ..train.runtime import autocast, eval_batch_size

MODES = {   # name -> what one pass measures
    "ceiling": "fwd+bwd+AdamW on float tensors already in memory",
    "M1": "train_one_epoch, no teachers",
    "M3-cached": "train_one_epoch, 7 cached teachers",
    "M3-online": "train_one_epoch, 7 online teachers",
}
TAU = 2.0              # KD temperature (any value costs the same)


def cached_teachers(models: list, cfg: Config, data: FundusData, rows: np.ndarray, device: torch.device) -> CachedTeachers:
    """The teachers' soft targets, written by build_soft_targets and read back as the students read them."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "soft_targets.pt"
        build_soft_targets(models, data, rows, path, cfg.max_len, cfg.t3_topk, eval_batch_size(cfg), device)
        return load_soft_targets(path, len(data.images), device)


@dataclass
class Mode:
    """One benchmarked way of training: its own copy of the model, optimizer and teachers."""
    name: str
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    rows: np.ndarray              # what one pass trains on (mode_rows)
    teachers: CachedTeachers | OnlineTeachers | None = None
    setup_s: float = 0.0          # one-off cost before training (the soft-target cache)


def mode_rows(name: str, data: FundusData) -> np.ndarray:
    """What each mode trains on, as in a real run: the ceiling and M1 labeled rows only (M1 is a teacher,
    trained on the labeled fraction); the M3 modes as many rows, half labeled and half unlabeled (a student)."""
    labeled = data.is_labeled_train(np.arange(len(data.images))).numpy()
    lab, unl = np.flatnonzero(labeled), np.flatnonzero(~labeled)
    return lab if name in ("ceiling", "M1") else np.sort(np.concatenate([lab[: len(lab) // 2], unl[: len(lab) - len(lab) // 2]]))


def build_mode(name: str, base: torch.nn.Module, cfg: Config, data: FundusData,
               device: torch.device, teachers: list | None = None) -> Mode:
    """A copy of `base` ready to train in mode `name`; M3 modes need the 7 teacher models."""
    model = copy.deepcopy(base).to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)   # as engine.fit does
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    mode = Mode(name, model, optimizer, cosine_schedule(optimizer, total_steps=10**6, warmup=1), mode_rows(name, data))
    if name == "M3-online":
        mode.teachers = OnlineTeachers(teachers, cfg.max_len, cfg.t3_topk)
    elif name == "M3-cached":
        t0 = time.perf_counter()
        mode.teachers = cached_teachers(teachers, cfg, data, mode.rows, device)
        mode.setup_s = time.perf_counter() - t0
    return mode


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def ceiling_batches(data: FundusData, rows: np.ndarray, cfg: Config, device: torch.device, epoch: int) -> list:
    """train_one_epoch's batches of this epoch as float images and targets (sentences trimmed as MultiTaskLoss
    trims them), made before the clock starts."""
    g = epoch_generator(cfg.seed, epoch)   # the same seed: the same mix of rows per batch
    out = []
    for b in batch_rows(rows, cfg.batch_size, shuffle=True, generator=g):
        y = {t: data.targets[t][b].to(device) for t in TASKS}
        out.append((_as_trained(image_batch(data.images, b, device), device), {**y, "T3": trim(y["T3"])}))
    return out


def _as_trained(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The memory layout train_one_epoch feeds the model: channels_last on CUDA; on CPU image_batch's
    permute already gives channels_last strides (about 25% faster here than a contiguous NCHW copy)."""
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x


def ceiling_step(model, optimizer, x: torch.Tensor, y: dict[str, torch.Tensor], device: torch.device) -> None:
    """The model's own work for one batch: T1 + T2 + T3 losses, backward, optimizer step."""
    with autocast(device):
        out = model(x, y["T3"])
        loss = (losses.ce(out["T1"], y["T1"]) + losses.ce(out["T2"], y["T2"]) + losses.caption_ce(out["T3"], y["T3"])).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def timed_pass(mode: Mode, data: FundusData, cfg: Config, device: torch.device, epoch: int, limit: int | None = None) -> float:
    """Seconds for one pass of `mode` over its rows (the first `limit` of them); a pass is one engine epoch."""
    rows = mode.rows[:limit]
    batches = ceiling_batches(data, rows, cfg, device, epoch) if mode.name == "ceiling" else None
    sync(device)
    t0 = time.perf_counter()
    if batches is not None:
        for x, y in batches:
            ceiling_step(mode.model, mode.optimizer, x, y, device)
    else:
        loss_fn = MultiTaskLoss(data, cfg.task_weights, cfg.alpha_grid[-1], TAU, mode.teachers)
        train_one_epoch(mode.model, TrainBatches(data, rows, cfg, epoch, device), mode.optimizer, mode.scheduler, loss_fn,
                        desc=mode.name)
    sync(device)
    return time.perf_counter() - t0


def time_modes(modes: list[Mode], data: FundusData, cfg: Config, device: torch.device, repeats: int) -> pd.DataFrame:
    """Seconds per pass, one row per repeat and a column per mode; the modes take turns (order rotates)."""
    for m in modes:                                     # warm-up: allocator, kernels, thread pool
        timed_pass(m, data, cfg, device, epoch=0, limit=2 * cfg.batch_size)
    out = []
    for r in range(repeats):
        turn = modes[r % len(modes):] + modes[: r % len(modes)]
        out.append({m.name: timed_pass(m, data, cfg, device, epoch=r + 1) for m in turn})
    return pd.DataFrame(out)[[m.name for m in modes]]
