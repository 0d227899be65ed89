"""A student's teachers as one source of soft targets: computed once into a cache (default) or per batch (online).

Every tensor is row-first, teacher second: T1/T2 logits (B, K, C) of the K teachers that know the task;
T3 one sentence per image (B, L), each T3 teacher's top-k logits along it (B, K, L-1, k) and, when k is
below the vocabulary size, the log-probability each teacher puts on the other words, the "rest" bucket
of exact T3 KD (losses.caption_kd). The rest depends on the temperature: it is computed for each tau asked
for, (B, K, L-1, n_tau) in the cache, and a student reads the column of its own tau, (B, K, L-1).

Soft targets come from the teachers on clean images in cached mode (computed once, while the student sees
its own noised view: Noisy Student, Xie et al. 2020); kd_mode="online" runs the teachers on the student's
augmented batch instead (consistent teaching, Beyer et al. 2022).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.dataset import FundusData, batch_rows, image_batch
from ..data.text import EOS_ID, PAD_ID, SOS_ID, trim
from ..io import DamagedFileError
from ..progress import progress
from .checkpoint import load_checkpoint, save_checkpoint
from .losses import rest_log_prob


@torch.no_grad()
def ensemble_greedy(decoders: list, feats: list[torch.Tensor], max_len: int) -> torch.Tensor:
    """Greedy decoding of the decoders' ensemble (mean word probabilities), in lockstep: (B, max_len) ids.

    One decoder gives exactly its own greedy decode (CaptionDecoder.generate with beam_size=1).
    """
    states = [d.init_state(f) for d, f in zip(decoders, feats)]
    B, device = feats[0].shape[0], feats[0].device
    tokens = torch.full((B, max_len), PAD_ID, dtype=torch.long, device=device)
    tokens[:, 0] = SOS_ID
    done = torch.zeros(B, dtype=torch.bool, device=device)
    for t in range(1, max_len):
        probs = 0
        for i, d in enumerate(decoders):
            y, states[i] = d.lstm(d.embed(tokens[:, t - 1 : t]), states[i])
            probs = probs + F.softmax(d.out(y[:, 0]).float(), dim=-1)
        word = probs.argmax(1) if t < max_len - 1 else torch.full_like(done, EOS_ID, dtype=torch.long)
        tokens[:, t] = torch.where(done, PAD_ID, word)     # a finished sentence only pads
        done = done | (word == EOS_ID)
        if done.all():
            break
    return tokens


@torch.no_grad()
def ensemble_outputs(teachers: list, x: torch.Tensor, ref_tokens: torch.Tensor, labeled: torch.Tensor,
                     max_len: int, topk: int, taus: tuple[float, ...] = ()) -> dict[str, torch.Tensor]:
    """What the teachers tell the student about a batch (module docstring for the shapes).

    The T3 sentence is the reference on labeled images and the T3 teachers' ensemble greedy decode on
    unlabeled ones; every T3 teacher's word distributions are taken along that one sentence (word-level
    KD, Kim & Rush 2016), as the paper's code does along the reference. One shared sentence lets one
    student decoder pass serve the caption CE and every teacher. With `taus` and topk below the
    vocabulary, T3_rest holds each teacher's rest log-probability at each tau (B, K, L-1, n_tau).
    """
    feats = [t.eval().features(x) for t in teachers]
    out = {}
    for task in ("T1", "T2"):
        known = [t.heads[task](f).float() for t, f in zip(teachers, feats) if task in t.heads]
        if known:
            out[task] = torch.stack(known, dim=1)                               # (B, K, C)
    captioners = [(t.decoder, f) for t, f in zip(teachers, feats) if t.decoder is not None]
    if captioners:
        tokens = ref_tokens.clone()
        if (~labeled).any():
            decoders, unlabeled_feats = [d for d, _ in captioners], [f[~labeled] for _, f in captioners]
            tokens[~labeled] = ensemble_greedy(decoders, unlabeled_feats, max_len)
        short = trim(tokens)
        logits = [d(f, short).float() for d, f in captioners]                    # each (B, L', V)
        top = [z.topk(min(topk, z.shape[-1]), dim=-1) for z in logits]
        pad = (0, 0, 0, tokens.shape[1] - short.shape[1])                       # back to (B, K, L-1, k): batches stack
        out.update(T3_tokens=tokens, T3_val=F.pad(torch.stack([v for v, _ in top], dim=1), pad),
                   T3_idx=F.pad(torch.stack([i for _, i in top], dim=1), pad))
        if taus and top[0].indices.shape[-1] < logits[0].shape[-1]:
            rest = [torch.stack([rest_log_prob(z, i, tau) for tau in taus], -1) for z, (_, i) in zip(logits, top)]
            out["T3_rest"] = F.pad(torch.stack(rest, dim=1), pad)               # (B, K, L-1, n_tau); padded steps: 0
    return out


def rest_at(store: dict, taus: list[float], tau: float | None) -> dict:
    """The rest log-probabilities at one tau (B, K, L-1), or none at all when tau is None (the topk ablation)."""
    store = dict(store)
    rest = store.pop("T3_rest", None)
    if rest is None or tau is None:
        return store
    if float(tau) not in [float(t) for t in taus]:
        raise ValueError(f"tau={tau:g}: the soft-target cache holds the T3 rest mass for tau in {taus} only; "
                         "rebuild it with this tau in tau_grid")
    return {**store, "T3_rest": rest[..., [float(t) for t in taus].index(float(tau))]}


class OnlineTeachers:
    """Runs every teacher on every student batch (use when augmentation changes what the student sees)."""

    def __init__(self, models: list, max_len: int, topk: int, tau: float | None = None):
        self.models, self.max_len, self.topk, self.tau = models, max_len, topk, tau

    def targets(self, rows: np.ndarray, x: torch.Tensor, ref_tokens: torch.Tensor, labeled: torch.Tensor) -> dict:
        taus = () if self.tau is None else (self.tau,)
        out = ensemble_outputs(self.models, x, ref_tokens, labeled, self.max_len, self.topk, taus)
        return rest_at(out, list(taus), self.tau)


class CachedTeachers:
    """Looks the teachers' soft targets up by row: a student step then costs about what an M1 step costs."""

    def __init__(self, store: dict, n_rows: int, device: torch.device, tau: float | None = None):
        tensors = {k: v for k, v in store.items() if isinstance(v, torch.Tensor) and k != "rows"}
        self.store = {k: v.to(device) for k, v in rest_at(tensors, store.get("rest_taus", []), tau).items()}
        self.pos = torch.full((n_rows,), -1, dtype=torch.long)
        self.pos[store["rows"]] = torch.arange(len(store["rows"]))

    def targets(self, rows: np.ndarray, x, ref_tokens, labeled) -> dict:
        pos = self.pos[torch.from_numpy(rows)]
        if (pos < 0).any():
            raise KeyError(f"{int((pos < 0).sum())} rows of this batch are not in the soft-target cache; rebuild it")
        pos = pos.to(next(iter(self.store.values())).device)
        return {k: v[pos].float() if v.is_floating_point() else v[pos].long() for k, v in self.store.items()}


def build_soft_targets(teachers: list, data: FundusData, rows: np.ndarray, path: str | Path, max_len: int, topk: int,
                       batch_size: int, device: torch.device, meta: dict | None = None,
                       taus: tuple[float, ...] = (), finish=None) -> dict:
    """Run the teachers once over `rows` (labeled fraction + unlabeled pool), on clean images; store fp16 logits,
    int16 ids and the float32 T3 rest log-probabilities at each of `taus` (exact T3 KD) at `path`, after
    `finish(store)` where given (the study's hardened targets); returns what it stored."""
    parts: dict[str, list[torch.Tensor]] = {}
    batches = list(batch_rows(rows, batch_size, shuffle=False))
    for b in progress(batches, f"soft targets ({len(teachers)} teachers)"):
        out = ensemble_outputs(teachers, image_batch(data.images, b, device), data.targets["T3"][b].to(device),
                               data.is_labeled_train(b).to(device), max_len, topk, taus)
        for k, v in out.items():
            parts.setdefault(k, []).append(v.cpu())
    store = {k: torch.cat(v) for k, v in parts.items()}
    for k in ("T1", "T2", "T3_val"):
        if k in store:
            store[k] = store[k].half()            # logits in fp16: half the disk, same argmax
    for k in ("T3_tokens", "T3_idx"):
        if k in store:
            store[k] = store[k].to(torch.int16)
    store.update(rows=torch.from_numpy(np.asarray(rows)).long(), meta=meta or {}, rest_taus=[float(t) for t in taus])
    if finish is not None:
        store = {**finish(store), "finished_by": finish.__name__}
    save_checkpoint(path, store)
    return store


def read_soft_targets(path: str | Path) -> dict:
    """The cached soft targets, or {} when absent or damaged: the caller then rebuilds them (derived data)."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        return load_checkpoint(path)
    except DamagedFileError as err:
        print(f"WARNING {path}: {err.problem}; rebuilding the soft targets")
        return {}


def load_soft_targets(path: str | Path, n_rows: int, device: torch.device, tau: float | None = None) -> CachedTeachers:
    return CachedTeachers(load_checkpoint(path), n_rows, device, tau)
