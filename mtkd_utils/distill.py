"""Teachers as sources of soft targets: computed once into a cache (default) or per batch (online)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .checkpoint import load_checkpoint, save_checkpoint
from .data import FundusData, batch_rows, image_batch
from .engine import trim


@torch.no_grad()
def teacher_outputs(teacher, x: torch.Tensor, ref_tokens: torch.Tensor, labeled: torch.Tensor,
                    max_len: int, topk: int) -> dict[str, torch.Tensor]:
    """What a teacher tells the student about a batch: T1/T2 logits; T3 a sentence and top-k logits per word.

    The T3 sentence is the reference on labeled images and the teacher's greedy decode on unlabeled
    ones (word-level KD, Kim & Rush 2016).
    """
    teacher.eval()
    feats = teacher.features(x)
    out = {t: head(feats).float() for t, head in teacher.heads.items()}
    if teacher.decoder is not None:
        tokens = ref_tokens.clone()
        if (~labeled).any():
            tokens[~labeled] = teacher.decoder.generate(feats[~labeled], max_len, beam_size=1)
        short = trim(tokens)
        logits = teacher.decoder(feats, short)                           # (B, l-1, V), l <= L
        val, idx = logits.float().topk(min(topk, logits.shape[-1]), dim=-1)
        pad = tokens.shape[1] - short.shape[1]                           # back to (B, L-1, k): batches stack
        out.update(T3_tokens=tokens, T3_val=F.pad(val, (0, 0, 0, pad)), T3_idx=F.pad(idx, (0, 0, 0, pad)))
    return out


class OnlineTeacher:
    """Runs the teacher on every student batch (use when augmentation changes what the student sees)."""

    def __init__(self, model, max_len: int, topk: int):
        self.model, self.tasks, self.max_len, self.topk = model, model.tasks, max_len, topk

    def targets(self, rows: np.ndarray, x: torch.Tensor, ref_tokens: torch.Tensor, labeled: torch.Tensor) -> dict:
        return teacher_outputs(self.model, x, ref_tokens, labeled, self.max_len, self.topk)


class CachedTeacher:
    """Looks soft targets up by cache row: a student step then costs what an M1 step costs."""

    def __init__(self, store: dict[str, torch.Tensor], tasks: tuple[str, ...], n_rows: int, device: torch.device):
        self.tasks = tasks
        self.store = {k: v.to(device) for k, v in store.items() if k not in ("rows", "tasks")}
        self.pos = torch.full((n_rows,), -1, dtype=torch.long)
        self.pos[store["rows"]] = torch.arange(len(store["rows"]))

    def targets(self, rows: np.ndarray, x, ref_tokens, labeled) -> dict:
        pos = self.pos[torch.from_numpy(rows)]
        if (pos < 0).any():
            raise KeyError(f"{int((pos < 0).sum())} rows of this batch are not in the soft-target cache; rebuild it")
        pos = pos.to(next(iter(self.store.values())).device)
        return {k: v[pos].float() if v.is_floating_point() else v[pos].long() for k, v in self.store.items()}


def build_soft_targets(teacher, data: FundusData, rows: np.ndarray, path: str | Path, max_len: int, topk: int,
                       batch_size: int, device: torch.device) -> Path:
    """Run the teacher once over `rows` (labeled fraction + unlabeled pool); store fp16 logits, int16 ids."""
    parts: dict[str, list[torch.Tensor]] = {}
    for b in tqdm(list(batch_rows(rows, batch_size, shuffle=False)), desc="soft targets", leave=False):
        out = teacher_outputs(teacher, image_batch(data.images, b, device), data.targets["T3"][b].to(device),
                              data.is_labeled_train(b).to(device), max_len, topk)
        for k, v in out.items():
            parts.setdefault(k, []).append(v.cpu())
    store = {k: torch.cat(v) for k, v in parts.items()}
    for k in ("T1", "T2", "T3_val"):
        if k in store:
            store[k] = store[k].half()            # logits in fp16: half the disk, same argmax
    if "T3_idx" in store:
        store["T3_idx"] = store["T3_idx"].to(torch.int16)
    store["rows"] = torch.from_numpy(np.asarray(rows)).long()
    return save_checkpoint(path, store)


def load_soft_targets(path: str | Path, tasks: tuple[str, ...], n_rows: int, device: torch.device) -> CachedTeacher:
    return CachedTeacher(load_checkpoint(path), tasks, n_rows, device)
