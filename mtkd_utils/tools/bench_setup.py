"""What a benchmark run trains on (mtkd_utils.tools.bench): its config, a synthetic in-memory dataset and freshly
initialised models (random init: no weights are needed to time)."""
from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import torch

from ..config import TASKS, Config, task_subsets
from ..data.dataset import FundusData
from ..data.manifest import LabelMap
from ..data.text import EOS_ID, PAD_ID, SOS_ID, SPECIALS, Vocab
from ..presets import config as preset_config
from ..train.model import MTLModel
from ..train.runtime import setup_runtime
from ..train.steps import new_model

N_COARSE, N_FINE, N_WORDS = 5, 45, 100   # about the synthetic demo set's label map and vocabulary
LABELED_SHARE = 0.5    # share of the rows that carry labels; the rest play the unlabeled pool
SENTENCE_WORDS = (4, 20)   # T3 sentence length in words, uniform (the synthetic set: median ~10)


def bench_config(args: argparse.Namespace) -> Config:
    """The demo (or paper) preset with the benchmark's overrides; random init (no weights are needed to time)."""
    over = dict(pretrained=None, device=args.device, batch_size=args.batch_size)
    over.update({k: v for k, v in (("backbone", args.backbone), ("image_size", args.image_size), ("threads", args.threads))
                 if v is not None})
    return preset_config("paper" if args.paper else "demo", **over)


def synthetic_data(n: int, size: int, max_len: int, seed: int = 0) -> FundusData:
    """n random uint8 images with random labels and sentences; the first LABELED_SHARE of the rows labeled."""
    g = np.random.default_rng(seed)
    coarse = [f"c{i}" for i in range(N_COARSE)]
    labels = LabelMap.from_pairs(coarse, [(f"f{j}", coarse[j % N_COARSE]) for j in range(N_FINE)])
    vocab = Vocab(f"w{i}" for i in range(N_WORDS))
    lab = np.arange(n) < max(1, round(n * LABELED_SHARE))
    t3 = np.full((n, max_len), PAD_ID, dtype=np.int64)
    for i in np.flatnonzero(lab):
        words = g.integers(len(SPECIALS), len(vocab), g.integers(SENTENCE_WORDS[0], SENTENCE_WORDS[1] + 1))[: max_len - 2]
        t3[i, : len(words) + 2] = [SOS_ID, *words, EOS_ID]
    targets = {"T1": torch.from_numpy(np.where(lab, g.integers(0, N_COARSE, n), -1)),
               "T2": torch.from_numpy(np.where(lab, g.integers(0, N_FINE, n), -1)), "T3": torch.from_numpy(t3)}
    roles = pd.DataFrame({"role": np.where(lab, "train", "unlabeled")})
    images = g.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    return FundusData(images, pd.DataFrame(index=range(n)), roles, labels, vocab, targets, 15.0)


def base_model(cfg: Config, data: FundusData) -> MTLModel:
    """The freshly initialised T1+T2+T3 model every mode trains its own copy of."""
    return new_model(cfg, data, TASKS, seed=0)


def teacher_models(cfg: Config, data: FundusData, device: torch.device) -> list:
    """One freshly initialised teacher per non-empty subset of T1+T2+T3: 7 models.

    Untrained, their greedy sentences run to max_len (a trained teacher stops at <eos>): the worst case
    for the online teachers' decoding and for the length of the sentences the student distils along.
    """
    return [new_model(cfg, data, subset, seed=1 + i).to(device).eval() for i, subset in enumerate(task_subsets(TASKS))]


def setup_data(cfg: Config, steps: int) -> FundusData:
    """2 * `steps` batches of rows, half labeled: every mode's pass is `steps` batches (mode_rows)."""
    return synthetic_data(2 * steps * cfg.batch_size, cfg.image_size, cfg.max_len)


def setup(args: argparse.Namespace) -> tuple[Config, torch.device, FundusData]:
    """The run's config, its runtime (threads, determinism, device) and its data."""
    cfg = bench_config(args)
    device = setup_runtime(cfg)
    return cfg, device, setup_data(cfg, args.steps)
