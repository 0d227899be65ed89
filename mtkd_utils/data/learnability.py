"""A deliberately weak coarse-label baseline: a sanity check that a dataset is learnable but not trivial."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn

from .fundus import read_rgb8
from .manifest import read_manifest
from .splits import select_fraction


def _load(root: Path, paths: list[str], size: int) -> torch.Tensor:
    """Images as a float tensor (N, 3, size, size) in [0, 1]."""
    arr = np.stack([np.asarray(Image.fromarray(read_rgb8(root / p)).resize((size, size), Image.BOX)) for p in paths])
    # (N, H, W, C) -> (N, C, H, W); contiguous, or torch keeps a channels-last layout that is slow on CPU
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous().float() / 255


def _tiny_cnn(n_classes: int) -> nn.Module:
    def block(i: int, o: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2))
    return nn.Sequential(block(3, 16), block(16, 32), block(32, 64), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(64, n_classes))


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def quick_baseline(data: str | Path, train_fraction: float, seed: int = 0, *, image_size: int = 32,
                   steps: int = 300, batch_size: int = 64, threads: int = 1) -> dict:
    """Coarse accuracy of a tiny CNN trained on `train_fraction` of the labeled patients, tested on a held-out 30 %.

    `data` is a dataset folder or its manifest.csv. The split is by patient and seeded; the test
    patients do not depend on `train_fraction`, so fractions are compared on the same test set.
    Training runs a fixed number of steps, so a small fraction is not also an under-trained one.
    One thread by default: on a busy 2-core machine a model this small runs 2-10x slower on two.
    """
    _check_steps(steps)
    manifest = Path(data) / "manifest.csv" if Path(data).is_dir() else Path(data)
    df = read_manifest(manifest)
    df = df[df.labeled == "1"].reset_index(drop=True)
    patients = np.array(sorted(df.patient_id.unique()))
    rng = np.random.default_rng(seed)
    patients = patients[rng.permutation(len(patients))]
    n_test = round(0.3 * len(patients))
    n_train = round(train_fraction * len(patients))
    if not 0 < n_train <= len(patients) - n_test:
        raise ValueError(f"train_fraction must be in (0, 0.7] (the other 30 % of patients is the test set); "
                         f"got {train_fraction}")
    train = df.patient_id.isin(set(patients[n_test:n_test + n_train])).to_numpy()
    test = df.patient_id.isin(set(patients[:n_test])).to_numpy()
    result = _train_and_score(manifest, df[train | test].reset_index(drop=True), train[train | test], seed,
                              image_size, steps, batch_size, threads)
    return {"train_fraction": train_fraction, "seed": seed, **result}


def split_baseline(manifest_path: str | Path, splits: pd.DataFrame, p: float, seed: int = 0, *,
                   evaluate_on: str = "val", image_size: int = 32, steps: int = 300, batch_size: int = 64,
                   threads: int = 1) -> dict:
    """The tiny CNN on the experiment's own split: trained on the images of fraction p, scored on `evaluate_on`.

    `splits` is the experiment's splits.csv (splits.load_splits). Validation by default: the data-prep
    notebook reads no test label; every p is scored on the same images. Beside the accuracy, the commonest
    class of the training images (coarse and fine) scored on the same images: the no-skill lines.
    """
    _check_steps(steps)
    if evaluate_on not in ("val", "test"):
        raise ValueError(f"evaluate_on={evaluate_on!r}: choose 'val' or 'test'")
    df = read_manifest(manifest_path)
    if df.image_id.tolist() != splits.image_id.tolist():
        raise ValueError(f"splits do not match {manifest_path} row for row: pass the experiment's own splits.csv")
    roles = select_fraction(splits, p).role.to_numpy()
    keep = (roles == "train") | (roles == evaluate_on)
    if not (roles == evaluate_on).any():
        raise ValueError(f"evaluate_on={evaluate_on!r}: the split has no {evaluate_on} image")
    result = _train_and_score(manifest_path, df[keep].reset_index(drop=True), roles[keep] == "train", seed,
                              image_size, steps, batch_size, threads)
    return {"p": p, "evaluated_on": evaluate_on, "seed": seed, **result}


def _check_steps(steps: int) -> None:
    if steps < 10:
        raise ValueError(f"steps must be at least 10 (the learning-rate schedule warms up over 20 % of them); "
                         f"got {steps}")


def _commonest_rate(train_labels: pd.Series, test_labels: pd.Series) -> float:
    """Accuracy on the test labels of always answering the commonest training label."""
    return float((test_labels == train_labels.value_counts().idxmax()).mean())


def _train_and_score(manifest: str | Path, df: pd.DataFrame, is_train: np.ndarray, seed: int, image_size: int,
                     steps: int, batch_size: int, threads: int) -> dict:
    """Fit the tiny CNN on the rows `is_train` of `df` (labeled manifest rows), score it on the others."""
    tr, te = np.flatnonzero(is_train), np.flatnonzero(~is_train)
    classes = sorted(df.coarse.unique())
    y_all = torch.tensor([classes.index(c) for c in df.coarse])
    x_all = _load(Path(manifest).parent, list(df.image), image_size)
    mean, std = x_all[tr].mean((0, 2, 3), keepdim=True), x_all[tr].std((0, 2, 3), keepdim=True)
    x_all = (x_all - mean) / std
    with _torch_threads(threads):
        acc = _fit_and_score(x_all, y_all, tr, te, len(classes), seed, steps, batch_size)
    train, test = df.iloc[tr], df.iloc[te]
    return {"n_train_images": len(tr), "n_test_images": len(te), "coarse_acc": acc,
            "majority_acc": _commonest_rate(train.coarse, test.coarse),
            "fine_majority_acc": _commonest_rate(train.fine, test.fine)}


def _fit_and_score(x_all: torch.Tensor, y_all: torch.Tensor, tr: np.ndarray, te: np.ndarray, n_classes: int,
                   seed: int, steps: int, batch_size: int) -> float:
    """Train the tiny CNN on rows `tr` for a fixed number of steps; accuracy on rows `te`."""
    torch.manual_seed(seed)
    model = _tiny_cnn(n_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-3)
    # warm up, then anneal: without the decay the last step's noise decides the score (seen: 0.33-0.7 by seed)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.2)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.from_numpy(tr)[torch.randint(len(tr), (batch_size,), generator=gen)]
        x = x_all[idx]
        flip = torch.rand(len(idx), generator=gen) < 0.5  # left/right eyes are mirror images anyway
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
        loss = nn.functional.cross_entropy(model(x), y_all[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        pred = model(x_all[te]).argmax(1)
    return float((pred == y_all[te]).float().mean())
