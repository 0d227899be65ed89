"""Where and how a process computes: the device, mixed precision, threads and determinism (chosen outside the loop)."""
from __future__ import annotations

from contextlib import nullcontext

import torch
from threadpoolctl import threadpool_limits


def pick_device(name: str = "auto") -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but no CUDA device is visible; use 'auto' or 'cpu'")
    return torch.device("cuda" if name in ("auto", "cuda") and torch.cuda.is_available() else "cpu")


def autocast(device: torch.device):
    """bf16 mixed precision on CUDA where supported; plain fp32 on CPU (exact and deterministic)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def eval_batch_size(cfg) -> int:
    """Evaluation keeps no activations for backward: twice the training batch fits in the same memory."""
    return cfg.batch_size * 2


def setup_runtime(cfg) -> torch.device:
    """Threads and determinism for this process; returns the device runs will use."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
        # numpy's BLAS as well: a bootstrap's matrix product then rounds alike whoever started the kernel (a sync
        # runner's kernel inherits every core, a Dask worker's its share: CIs differed in the 17th digit)
        threadpool_limits(cfg.threads)
    device = pick_device(cfg.device)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)   # same seed on CPU -> same numbers
        # Deterministic mode also fills every new tensor with NaN, a debugging aid that cost ~30% of a CPU
        # training step here (docs/PERFORMANCE.md); results are bit-identical without it.
        torch.utils.deterministic.fill_uninitialized_memory = False
    else:
        torch.backends.cudnn.benchmark = True      # speed on GPU; numbers then vary in the last digits
    return device
