"""Losses as small functions of logits, each per example so labeled and unlabeled rows can be weighted.

KD follows Hinton et al. (2015): tau^2 * KL(teacher_tau || student_tau), the KL summed over classes and
kept per example ('batchmean' when averaged), NOT nn.KLDivLoss(reduction='mean'), which also divides
by the number of classes (the paper's code did that).

A task's student objective is alpha * mean_all(KD) + (1 - alpha) * mean_labeled(CE) (`distill_objective`):
the CE is averaged over the labeled rows only, so that alpha weighs the true labels as it says whatever
the share of labeled rows in a batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.text import PAD_ID


def ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per example (B,); rows with target -1 give 0."""
    known = target >= 0
    loss = F.cross_entropy(logits.float(), target.clamp(min=0), reduction="none")
    return loss * known


def kd(student: torch.Tensor, teacher: torch.Tensor, tau: float) -> torch.Tensor:
    """tau^2 * KL(softmax(teacher/tau) || softmax(student/tau)) per example (B,); teacher gets no gradient."""
    log_s = F.log_softmax(student.float() / tau, dim=-1)
    log_t = F.log_softmax(teacher.detach().float() / tau, dim=-1)
    return tau**2 * (log_t.exp() * (log_t - log_s)).sum(-1)


def caption_ce(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Word cross-entropy along a sentence, mean over its real tokens: (B, L-1, V), (B, L) -> (B,)."""
    target = tokens[:, 1:]                                   # (B, L-1): predict the next word
    mask = target != PAD_ID
    loss = F.cross_entropy(logits.float().transpose(1, 2), target, reduction="none")  # (B, L-1)
    return (loss * mask).sum(1) / mask.sum(1).clamp(min=1)


def rest_log_prob(logits: torch.Tensor, top_idx: torch.Tensor, tau: float) -> torch.Tensor:
    """log of the probability softmax(logits/tau) puts outside `top_idx`: (..., V), (..., k) -> (...).

    Exact (a log-sum-exp over the other words, not log(1 - sum of the top-k)): the rest can be tiny.
    """
    scaled = logits.float() / tau
    if top_idx.shape[:-1] != scaled.shape[:-1]:                      # one student view per teacher
        scaled = scaled.expand(*top_idx.shape[:-1], scaled.shape[-1])
    rest = scaled.scatter(-1, top_idx.long(), float("-inf"))
    return rest.logsumexp(-1) - scaled.logsumexp(-1)


def caption_kd(logits: torch.Tensor, top_val: torch.Tensor, top_idx: torch.Tensor, tokens: torch.Tensor,
               tau: float, rest: torch.Tensor | None = None) -> torch.Tensor:
    """Word-level KD (Kim & Rush 2016) along `tokens`, against the teachers' top-k logits per step.

    logits (B, L-1, V) student; top_val/top_idx (B, L-1, k) for one teacher -> (B,), or (B, K, L-1, k)
    for K teachers -> (B, K). Which teacher distribution the student matches:
    - k >= V: the teacher's full distribution; the KL is exact.
    - `rest` given ((B, L-1) or (B, K, L-1): the teacher's log-probability outside its top k at this tau,
      `rest_log_prob`): the top k words plus one "rest" bucket carrying the remaining mass, for teacher
      and student alike. The KL between these bucketed distributions is computed exactly; it is a lower
      bound of the full-vocabulary KL (data-processing inequality: merging words never raises a KL),
      equal to it when both put the same shape on the rest (tests/test_recipe.py measures the gap).
    - neither: the teacher's softmax over its top k alone, renormalised (the "topk" ablation): it teaches
      zero mass on every other word, a bias that grows with tau.
    """
    mask = tokens[:, 1:] != PAD_ID                           # (B, L-1)
    log_s_all = F.log_softmax(logits.float() / tau, dim=-1)  # (B, L-1, V)
    if top_idx.dim() == 4:                                   # one view of the student per teacher, no copy
        log_s_all, mask = log_s_all.unsqueeze(1).expand(-1, top_idx.shape[1], -1, -1), mask.unsqueeze(1)
    log_s = log_s_all.gather(-1, top_idx.long())             # (..., L-1, k)
    log_t = F.log_softmax(top_val.detach().float() / tau, dim=-1)
    bucketed = rest is not None and top_idx.shape[-1] < logits.shape[-1]
    if bucketed:
        # Finite bounds: a padded step (rest 0 in the cache) or a vanishing rest must not make 0 * inf = nan.
        rest_t = rest.detach().float().clamp(min=-80.0, max=-1e-6)                  # (..., L-1)
        log_t = log_t + torch.log(-torch.expm1(rest_t)).unsqueeze(-1)               # top k share 1 - rest
        rest_s = rest_log_prob(log_s_all, top_idx, 1.0)                              # log_s_all is already /tau
    per_step = (log_t.exp() * (log_t - log_s)).sum(-1)                               # (..., L-1)
    if bucketed:
        per_step = per_step + rest_t.exp() * (rest_t - rest_s)
    per_step = tau**2 * per_step
    return (per_step * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def distill_objective(hard: torch.Tensor, kd: torch.Tensor | None, labeled: torch.Tensor, alpha: float) -> torch.Tensor:
    """One task's loss on a batch: alpha * mean_all(KD) + (1 - alpha) * mean_labeled(CE); mean_labeled(CE) alone
    without teachers (M1).

    hard (B,) per-row CE (0 on unlabeled rows), kd (B,) or None, labeled (B,) bool. A batch without labeled
    rows has no CE term: the KD term is then the whole loss (its weight alpha is kept, not renormalised).
    """
    n_labeled = labeled.sum()
    ce_mean = (hard * labeled).sum() / n_labeled.clamp(min=1)
    if kd is None:
        return ce_mean
    return alpha * kd.mean() + (1 - alpha) * ce_mean
