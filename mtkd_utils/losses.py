"""Losses as small functions of logits, each per example so labeled and unlabeled rows can be weighted.

KD follows Hinton et al. (2015): tau^2 * KL(teacher_tau || student_tau), the KL summed over classes and
kept per example ('batchmean' when averaged), NOT nn.KLDivLoss(reduction='mean'), which also divides
by the number of classes (the paper's code did that).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .text import PAD_ID


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


def caption_kd(logits: torch.Tensor, top_val: torch.Tensor, top_idx: torch.Tensor, tokens: torch.Tensor,
               tau: float) -> torch.Tensor:
    """Word-level KD (Kim & Rush 2016) along `tokens`, against the teachers' top-k logits per step.

    logits (B, L-1, V) student; top_val/top_idx (B, L-1, k) for one teacher -> (B,), or (B, K, L-1, k)
    for K teachers -> (B, K). A teacher's distribution is its softmax over its top-k words (exact when
    k >= vocabulary size).
    """
    mask = tokens[:, 1:] != PAD_ID                           # (B, L-1)
    log_s = F.log_softmax(logits.float() / tau, dim=-1)
    if top_idx.dim() == 4:                                   # one view of the student per teacher, no copy
        log_s, mask = log_s.unsqueeze(1).expand(-1, top_idx.shape[1], -1, -1), mask.unsqueeze(1)
    log_s = log_s.gather(-1, top_idx.long())                 # (..., L-1, k)
    log_t = F.log_softmax(top_val.detach().float() / tau, dim=-1)
    per_step = tau**2 * (log_t.exp() * (log_t - log_s)).sum(-1)                      # (..., L-1)
    return (per_step * mask).sum(-1) / mask.sum(-1).clamp(min=1)
