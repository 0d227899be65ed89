"""Figures the notebooks show and save (PNG at 300 dpi and PDF), each from files earlier steps wrote."""
from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .io import save_figure


def _boundary(mask: np.ndarray) -> np.ndarray:
    """The boundary pixels of a boolean mask."""
    inner = mask.copy()
    inner[1:-1, 1:-1] = mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
    return mask & ~inner


def overlay_mask(image: np.ndarray, mask: np.ndarray | None, colour=(0, 255, 255)) -> np.ndarray:
    """The image with the lesion annotation's outline drawn in cyan."""
    out = image.copy()
    if mask is not None and mask.any():
        out[_boundary(mask)] = colour
    return out


def sample_grid(samples: pd.DataFrame, images: np.ndarray, masks: list, n_per_class: int, stem: str | Path):
    """Rows of classes, columns of examples; each captioned with its fine label and diagnosis text."""
    classes = list(dict.fromkeys(samples.coarse))
    fig, axes = plt.subplots(len(classes), n_per_class, figsize=(2.6 * n_per_class, 3.1 * len(classes)), squeeze=False)
    for r, c in enumerate(classes):
        idx = np.flatnonzero(samples.coarse.to_numpy() == c)[:n_per_class]
        for k, ax in enumerate(axes[r]):
            ax.axis("off")
            if k >= len(idx):
                continue
            i = idx[k]
            ax.imshow(overlay_mask(images[i], masks[i]))
            row = samples.iloc[i]
            ax.set_title(f"{row.fine}\n" + "\n".join(textwrap.wrap(row.text, 34)[:4]), fontsize=6.5, loc="left")
        axes[r][0].text(-0.08, 0.5, c.replace("_", " "), transform=axes[r][0].transAxes, rotation=90,
                        va="center", ha="right", fontsize=10, fontweight="bold")
    fig.suptitle("Samples per class (lesion annotation outlined in cyan)", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))   # half an inch for the title, above the captions
    save_figure(fig, stem)
    return fig


def training_curves(histories: dict[str, pd.DataFrame], stem: str | Path):
    """Training loss and validation score per epoch, one line per model."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    for name, h in histories.items():
        a.plot(h.epoch, h.train_loss, marker=".", label=name)
        b.plot(h.epoch, h.val_score, marker=".", label=name)
    a.set(xlabel="epoch", ylabel="training loss", title="training loss")
    b.set(xlabel="epoch", ylabel="validation score", title="validation score (mean of task metrics)")
    b.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    save_figure(fig, stem)
    return fig


def confusion_plot(matrix: pd.DataFrame, title: str, stem: str | Path):
    """A confusion matrix with counts, rows true, columns predicted."""
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    ax.imshow(matrix.to_numpy(), cmap="Blues")
    ax.set_xticks(range(matrix.shape[1]), [str(c).replace("_", "\n") for c in matrix.columns], fontsize=7)
    ax.set_yticks(range(matrix.shape[0]), [str(c).replace("_", " ") for c in matrix.index], fontsize=7)
    for (i, j), v in np.ndenumerate(matrix.to_numpy()):
        colour = "black" if v < matrix.to_numpy().max() / 2 else "white"
        ax.text(j, i, int(v), ha="center", va="center", fontsize=8, color=colour)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.tight_layout()
    save_figure(fig, stem)
    return fig


def example_grid(examples: pd.DataFrame, manifest_path: str | Path, stem: str | Path, size: int = 160,
                 per_row: int = 4):
    """Example test images with the cell they fall in, true/predicted labels and both sentences."""
    from .fundus import prepare_image
    from .manifest import read_manifest

    manifest_path = Path(manifest_path)
    paths = read_manifest(manifest_path).set_index("image_id").image
    cell_cols = [c for c in examples.columns if c in ("coarse", "fine", "bleu_bucket")]
    n = len(examples)
    rows = max(1, -(-n // per_row))
    fig, axes = plt.subplots(rows, per_row, figsize=(3.4 * per_row, 4.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, ex in zip(axes.flat, examples.itertuples()):
        ax.imshow(prepare_image(manifest_path.parent / paths[ex.image_id], size))
        cell = ", ".join(f"{c} {getattr(ex, c)}" for c in cell_cols)
        lines = [cell, f"coarse: {ex.coarse_true} -> {ex.coarse_pred or '-'}",
                 f"fine: {ex.fine_true} -> {ex.fine_pred or '-'}"]
        if getattr(ex, "text_pred", ""):
            lines += textwrap.wrap(f"ref: {ex.text_true}", 44)[:3] + textwrap.wrap(f"gen: {ex.text_pred}", 44)[:3]
            lines.append(f"sentence BLEU {float(ex.bleu):.2f}")
        ax.set_title("\n".join(lines), fontsize=6.5, loc="left")
    fig.tight_layout()
    save_figure(fig, stem)
    return fig
