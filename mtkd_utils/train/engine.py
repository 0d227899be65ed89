"""The training loop: one loss for any task subset with or without teachers, fit with early stopping and resume."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..data.dataset import FundusData, augment, batch_rows, image_batch, labeled_share_batches
from ..data.text import mbr_index, sentence_bleu4, tokenize, trim
from ..io import add_seconds
from ..progress import progress
from . import losses
from .checkpoint import load_checkpoint, save_checkpoint
from .metrics import rouge_l, task_metrics, train_baselines, val_score
from .noise import student_noise
from .runtime import autocast, eval_batch_size, pick_device


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The one seed formula of an epoch's randomness: batch order, unlabeled share, augmentation (bench_timing too)."""
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def caption_terms(decoder, feats: torch.Tensor, ref: torch.Tensor, labeled: torch.Tensor, soft: dict,
                  tau: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """T3: CE (B,) on labeled rows and the mean word-level KD over the teachers (B,), in one decoder pass.

    The teachers share one sentence per image, the reference on labeled rows (distill.ensemble_outputs),
    so one teacher-forced pass along it serves the CE and every teacher. `soft`: the teachers' soft targets.
    """
    tokens = trim(soft.get("T3_tokens", ref))
    logits, L = decoder(feats, tokens), tokens.shape[1] - 1                       # (B, L-1, V)
    hard = losses.caption_ce(logits, tokens) * labeled                           # unlabeled rows: no reference
    if "T3_val" not in soft:
        return hard, None
    rest = soft["T3_rest"][:, :, :L] if "T3_rest" in soft else None             # exact T3 KD: the rest bucket
    kd = losses.caption_kd(logits, soft["T3_val"][:, :, :L], soft["T3_idx"][:, :, :L], tokens, tau, rest)  # (B, K)
    return hard, kd.mean(1)


class MultiTaskLoss:
    """Weighted sum over tasks of mean_labeled(CE) and, with teachers, alpha*mean_all(KD) + (1-alpha)*mean_labeled(CE).

    `teachers` (distill.CachedTeachers / OnlineTeachers, or None) gives each task's soft targets from
    the teachers trained on it; a task's KD term is the mean over them. The CE is averaged over the
    labeled rows only (losses.distill_objective), so alpha weighs the true labels whatever their share.
    """

    def __init__(self, data: FundusData, weights: dict[str, float], alpha: float = 1.0, tau: float = 1.0,
                 teachers=None):
        self.data, self.weights, self.alpha, self.tau, self.teachers = data, weights, alpha, tau, teachers
        self.step = 0          # calls so far: a non-finite loss says when it happened

    def __call__(self, model, x: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
        data, self.step = self.data, self.step + 1
        labeled = data.is_labeled_train(rows).to(x.device)
        ref = data.targets["T3"][rows].to(x.device)
        soft = self.teachers.targets(rows, x, ref, labeled) if self.teachers else {}
        feats = model.features(x)
        total = torch.zeros((), device=x.device)
        for task in model.tasks:
            if task == "T3":
                hard, kd = caption_terms(model.decoder, feats, ref, labeled, soft, self.tau)
            else:
                logits = model.heads[task](feats)
                hard = losses.ce(logits, data.targets[task][rows].to(x.device))
                kd = losses.kd(logits.unsqueeze(1), soft[task], self.tau).mean(1) if task in soft else None  # (B,)
            term = losses.distill_objective(hard, kd, labeled, self.alpha)
            if not torch.isfinite(term):
                raise FloatingPointError(f"non-finite {task} loss at step {self.step}: lower the learning rate "
                                         "or check the inputs")
            total = total + self.weights.get(task, 1.0) * term
        return total


def epoch_rows(train_rows: np.ndarray, unlabeled_rows: np.ndarray | None, share: float,
               g: torch.Generator) -> np.ndarray:
    """The labeled rows plus this epoch's share of the unlabeled pool (a new seeded draw every epoch)."""
    if unlabeled_rows is None or len(unlabeled_rows) == 0:
        return train_rows
    k = len(unlabeled_rows) if share >= 1 else max(1, round(share * len(unlabeled_rows)))
    pick = torch.randperm(len(unlabeled_rows), generator=g)[:k].numpy()
    return np.concatenate([train_rows, unlabeled_rows[pick]])


class TrainBatches:
    """One epoch's training batches, (images (B, 3, H, W) on the device, manifest rows), in a seeded order.

    The order (labeled rows plus this epoch's unlabeled share) is drawn when built; augmentation draws from
    the same generator as the batches are read. A student (`student=True`) gets the recipe's batches, each
    with cfg.labeled_share labeled rows (data.labeled_share_batches; 0: a plain shuffle), and the noised
    view of noise.student_noise when cfg.student_augment.
    """

    def __init__(self, data: FundusData, rows: np.ndarray, cfg, epoch: int, device: torch.device,
                 unlabeled_rows: np.ndarray | None = None, student: bool = False):
        self.generator = epoch_generator(cfg.seed, epoch)
        pool = unlabeled_rows is not None and len(unlabeled_rows) > 0
        if student and pool and cfg.labeled_share > 0:
            self.order = labeled_share_batches(rows, unlabeled_rows, cfg.batch_size, cfg.labeled_share,
                                               cfg.unlabeled_per_epoch, self.generator)
        else:
            rows = epoch_rows(rows, unlabeled_rows, cfg.unlabeled_per_epoch, self.generator)
            self.order = list(batch_rows(rows, cfg.batch_size, shuffle=True, generator=self.generator))
        self.noise = student_noise if student and cfg.student_augment else augment if cfg.augment else None
        self.images, self.device = data.images, device

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self):
        for rows in self.order:
            x = image_batch(self.images, rows, self.device)
            if self.noise is not None:
                x = self.noise(x, self.generator)
            if self.device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, rows


def train_one_epoch(model, batches, optimizer, scheduler, loss_fn, desc: str = "train") -> float:
    """One pass over `batches` of (images, rows): loss_fn(model, images, rows), a step each; returns the mean loss."""
    model.train()
    running, n = 0.0, 0
    bar = progress(batches, desc)
    for x, rows in bar:
        with autocast(x.device):
            loss = loss_fn(model, x, rows)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        running, n = running + loss.item() * len(rows), n + len(rows)
        bar.set_postfix(loss=f"{running / n:.3f}")
    return running / max(n, 1)


def decode_sentences(decoder, feats: torch.Tensor, vocab, max_len: int, beam_size: int = 1, mbr_samples: int = 0,
                     generator: torch.Generator | None = None) -> list[list[str]]:
    """Each image's sentence as words: beam search, or with mbr_samples > 0 the sampled sentence that agrees best
    (mean sentence BLEU-4) with the image's other samples (text.mbr_index)."""
    if not mbr_samples:
        return [vocab.decode(t) for t in decoder.generate(feats, max_len, beam_size).tolist()]
    drawn = [[vocab.decode(t) for t in image] for image in decoder.sample(feats, max_len, mbr_samples, generator).tolist()]
    return [samples[mbr_index(samples)] for samples in drawn]


@torch.no_grad()
def predict(model, data: FundusData, rows: np.ndarray, batch_size: int, max_len: int, beam_size: int,
            device: torch.device, with_probs: bool = False, mbr_samples: int = 0, seed: int = 0
            ) -> pd.DataFrame | tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """One row per image: truths, predictions, top-5 fine labels, sentences, sentence BLEU and ROUGE-L.

    Sentences: beam search (beam_size; 1: greedy) or, with mbr_samples > 0, the minimum-Bayes-risk choice among
    that many sentences sampled with `seed` (decode_sentences). with_probs: also {'T1': (N, C), 'T2': (N, F)}
    softmax probabilities (float32, label-map order, rows as preds).
    """
    model.eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    m = data.manifest.iloc[rows]
    cols = {c: [] for c in ("coarse_pred", "fine_pred", "fine_top5", "text_pred")}
    probs = {"T1": [], "T2": []}
    for b in batch_rows(rows, batch_size, shuffle=False):
        x = image_batch(data.images, b, device)
        with autocast(device):
            feats = model.features(x)
            if "T1" in model.heads:
                logits = model.heads["T1"](feats)
                probs["T1"].append(logits.float().softmax(1).cpu().numpy())
                cols["coarse_pred"] += [data.labels.coarse[i] for i in logits.argmax(1).tolist()]
            if "T2" in model.heads:
                logits = model.heads["T2"](feats)
                probs["T2"].append(logits.float().softmax(1).cpu().numpy())
                top = logits.topk(min(5, len(data.labels.fine)), dim=1).indices.tolist()
                cols["fine_pred"] += [data.labels.fine[t[0]] for t in top]
                cols["fine_top5"] += ["|".join(data.labels.fine[i] for i in t) for t in top]
            if model.decoder is not None:
                sentences = decode_sentences(model.decoder, feats, data.vocab, max_len, beam_size, mbr_samples, generator)
                cols["text_pred"] += [" ".join(words) for words in sentences]
    preds = pd.DataFrame({"image_id": m.image_id.to_numpy(), "coarse_true": m.coarse.to_numpy(),
                          "fine_true": m.fine.to_numpy(), "text_true": m.text.to_numpy()})
    for c, v in cols.items():
        preds[c] = v if v else ""
    # BLEU against the true sentence as written (words outside the vocabulary count as misses).
    pairs = zip(preds.text_true, preds.text_pred)
    preds["bleu"] = [sentence_bleu4(tokenize(r), tokenize(h)) for r, h in pairs] if cols["text_pred"] else ""
    preds["rougeL"] = rouge_l(preds.text_true, preds.text_pred) if cols["text_pred"] else ""
    order = ["image_id", "coarse_true", "coarse_pred", "fine_true", "fine_pred", "fine_top5", "text_true", "text_pred",
             "bleu", "rougeL"]
    if not with_probs:
        return preds[order]
    return preds[order], {t: np.concatenate(p).astype(np.float32) for t, p in probs.items() if p}


def cosine_schedule(optimizer, total_steps: int, warmup: int):
    """Linear warm-up, then cosine decay to zero."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total_steps - warmup))))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def schedule(epochs: int, per_epoch: int, patience: int, min_steps: int,
             updates: int | None = None) -> tuple[int, int]:
    """(epochs, patience): `epochs` epochs of `per_epoch` updates stretched to at least min_steps updates, or as many
    epochs as `updates` updates take (M1 at a student's budget); patience stretches with the epochs."""
    if updates:
        budget = -(-updates // per_epoch)                 # ceil: the last epoch may run a few updates over
        return budget, math.ceil(patience * max(1.0, budget / epochs))
    stretch = max(1.0, min_steps / (epochs * per_epoch))
    return math.ceil(epochs * stretch), math.ceil(patience * stretch)


@dataclass(frozen=True)
class TrainPlan:
    """What one run trains on and for how long; early stopping's patience and min_steps come from the Config."""
    rows: np.ndarray                        # the labeled training rows
    epochs: int
    unlabeled: np.ndarray | None = None     # the unlabeled pool a student also learns from
    student: bool = False                   # the recipe's batches and noise (TrainBatches)
    updates: int | None = None              # a fixed length in updates instead of `epochs` (M1b)


def fit(model, data: FundusData, plan: TrainPlan, loss_fn: MultiTaskLoss, cfg, run_dir: str | Path,
        signature: dict | None = None, desc: str = "train") -> pd.DataFrame:
    """Train with early stopping on the validation score; resume from run_dir/last.pt after a kill.

    Leaves the best-validation weights in `model` and in run_dir/checkpoint.pt; returns the history, with the
    updates made by the end of each epoch. `signature` ties the checkpoints to the data and settings they came from.
    """
    run_dir, device = Path(run_dir), pick_device(cfg.device)
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    per_epoch = len(TrainBatches(data, plan.rows, cfg, 0, device, plan.unlabeled, plan.student))
    # A small fraction gets at least min_steps updates: otherwise p=15 is also an under-trained model.
    epochs, patience = schedule(plan.epochs, per_epoch, cfg.patience, cfg.min_steps, plan.updates)
    steps = epochs * per_epoch
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = cosine_schedule(optimizer, steps, warmup=max(1, steps // 20))
    state = dict(epoch=0, best=-math.inf, bad_epochs=0, history=[])
    last = run_dir / "last.pt"
    if last.exists():                                # a killed run: carry on from its last finished epoch
        ck = load_checkpoint(last, expect=signature)
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        torch.set_rng_state(ck["rng"])
        state = ck["progress"]
    val_rows = data.rows("val")
    baselines = train_baselines(data)              # the constant answers the validation score measures skill against
    check_every = max(1, math.ceil(cfg.val_every / per_epoch))     # epochs between validations
    for epoch in range(state["epoch"], epochs):
        batches = TrainBatches(data, plan.rows, cfg, epoch, device, plan.unlabeled, plan.student)
        t0 = time.perf_counter()
        loss = train_one_epoch(model, batches, optimizer, scheduler, loss_fn, f"{desc} epoch {epoch + 1}")
        t1 = time.perf_counter()
        add_seconds(run_dir / "timing.json", train_seconds=t1 - t0)
        if (epoch + 1) % check_every and epoch + 1 < epochs:
            continue
        val = task_metrics(predict(model, data, val_rows, eval_batch_size(cfg), cfg.max_len, 1, device), data.labels)
        add_seconds(run_dir / "timing.json", val_seconds=time.perf_counter() - t1)
        score = val_score(val, model.tasks, baselines)
        state["history"].append(dict(epoch=epoch + 1, updates=(epoch + 1) * per_epoch, train_loss=loss,
                                     val_score=score, **{f"val_{k}": v for k, v in val.items()}))
        if score > state["best"]:
            state["best"], state["bad_epochs"] = score, 0
            save_checkpoint(run_dir / "checkpoint.pt", dict(model=model.state_dict(), signature=signature or {},
                                                            epoch=epoch + 1, val_score=score, config=cfg.to_dict()))
        else:
            state["bad_epochs"] += check_every
        state["epoch"] = epoch + 1
        save_checkpoint(last, dict(model=model.state_dict(), optimizer=optimizer.state_dict(),
                                   scheduler=scheduler.state_dict(), rng=torch.get_rng_state(), progress=state,
                                   signature=signature or {}))
        if state["bad_epochs"] >= patience:
            break
    model.load_state_dict(load_checkpoint(run_dir / "checkpoint.pt")["model"])
    last.unlink(missing_ok=True)
    return pd.DataFrame(state["history"])
