"""Figures the notebooks show and save (PNG at 300 dpi and PDF), each from files earlier steps wrote."""
from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..io import save_figure


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
    b.set(xlabel="epoch", ylabel="validation score", title="validation score (mean skill above the baselines)")
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
    from ..data.fundus import prepare_image
    from ..data.manifest import read_manifest

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


# ---------------------------------------------------------------- metric figures (06): ROC, reliability, confusion

def _class_indices(preds: pd.DataFrame, labels, level: str) -> np.ndarray:
    from ..train.metrics import class_indices
    return class_indices(preds[f"{level}_true"], getattr(labels, level), f"{level}_true")


def roc_curves(runs: dict[str, tuple[pd.DataFrame, np.ndarray]], labels, stem: str | Path, task: str = "T1",
               classes: list[str] | None = None):
    """One-vs-rest ROC curves, one panel per class (default: every class but 'normal'), one line per run.

    `runs`: {'M1 p=15': (predictions, probs (N, C) of the task)}; line style by p, colour by model.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    level = {"T1": "coarse", "T2": "fine"}[task]
    names = getattr(labels, level)
    classes = classes or [c for c in names if c != "normal"]
    fig, axes = plt.subplots(1, len(classes), figsize=(3.3 * len(classes), 3.4), squeeze=False)
    colours = {m: f"C{i}" for i, m in enumerate(dict.fromkeys(name.split()[0] for name in runs))}
    styles = {p: s for p, s in zip(dict.fromkeys(name.split(" ", 1)[-1] for name in runs), ("--", "-", ":", "-."))}
    for ax, cls in zip(axes[0], classes):
        k = names.index(cls)
        for name, (preds, probs) in runs.items():
            positive = _class_indices(preds, labels, level) == k
            if 0 < positive.sum() < len(positive):   # a class needs positives and negatives for a curve
                fpr, tpr, _ = roc_curve(positive, probs[:, k])
                ax.plot(fpr, tpr, styles[name.split(" ", 1)[-1]], color=colours[name.split()[0]], linewidth=1.2,
                        label=f"{name} ({roc_auc_score(positive, probs[:, k]):.2f})")
        ax.plot([0, 1], [0, 1], color="0.6", linewidth=0.8, linestyle=":")
        ax.set(xlabel="1 − specificity", ylabel="sensitivity", title=f"{cls.replace('_', ' ')} vs rest",
               xlim=(0, 1), ylim=(0, 1.01), aspect="equal")
        ax.legend(fontsize=6, title="run (AUROC)", title_fontsize=6, loc="lower right")
    fig.tight_layout()
    save_figure(fig, stem)
    return fig


def reliability_diagram(runs: dict[str, tuple[np.ndarray, np.ndarray]], stem: str | Path, title: str = "T1",
                        n_bins: int = 15):
    """Accuracy against confidence of the top class, one line per run, with its ECE; the diagonal is perfect.

    `runs`: {'M1 p=70': (true class indices, probs (N, C))}. Below the diagonal: over-confident.
    """
    from ..train.metrics import expected_calibration_error, reliability_bins

    fig, (ax, hist) = plt.subplots(2, 1, figsize=(4.4, 5.2), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], color="0.6", linewidth=0.8, linestyle=":", label="perfectly calibrated")
    for name, (y, probs) in runs.items():
        bins = reliability_bins(y, probs, n_bins).dropna()
        ece = expected_calibration_error(y, probs, n_bins)
        line, = ax.plot(bins.confidence, bins.accuracy, marker="o", markersize=3, label=f"{name} (ECE {ece:.3f})")
        hist.plot((bins.lo + bins.hi) / 2, bins["count"] / bins["count"].sum(), marker=".", color=line.get_color())
    ax.set(ylabel="accuracy", title=f"Reliability, {title} ({n_bins} bins)", xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=7)
    hist.set(xlabel="confidence of the predicted class", ylabel="share of images")
    fig.tight_layout()
    save_figure(fig, stem)
    return fig


def confusion_heatmap(matrix: pd.DataFrame, title: str, stem: str | Path, groups: dict[str, str] | None = None):
    """Row-normalised confusion matrix (rows true, columns predicted) as a heatmap; empty rows stay blank.

    `groups` ({class: group}, e.g. fine -> coarse parent): classes sorted by group, with lines between groups
    and the group names on the axes. Counts are printed when the matrix is small enough to read them.
    """
    if groups:
        order = sorted(matrix.index, key=lambda c: (list(dict.fromkeys(groups.values())).index(groups[c]),
                                                    list(matrix.index).index(c)))
        matrix = matrix.loc[order, order]
    counts = matrix.to_numpy(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = counts / counts.sum(1, keepdims=True)
    n = len(matrix)
    size = min(14.0, 3.0 + 0.22 * n)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    im = ax.imshow(np.ma.masked_invalid(share), cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    font = 7 if n <= 12 else max(3, 7 - n // 12)
    ax.set_xticks(range(n), [str(c) for c in matrix.columns], rotation=90, fontsize=font)
    ax.set_yticks(range(n), [str(c) for c in matrix.index], fontsize=font)
    if n <= 12:
        for (i, j), v in np.ndenumerate(counts):
            ax.text(j, i, int(v), ha="center", va="center", fontsize=7,
                    color="white" if np.nan_to_num(share[i, j]) > 0.5 else "black")
    if groups:
        _group_lines(ax, [groups[c] for c in matrix.index])
    ax.set(xlabel="predicted", ylabel="true")
    ax.set_title(title, pad=40 if groups else 6)
    fig.tight_layout()
    save_figure(fig, stem)
    return fig


def _group_lines(ax, group_of_row: list[str]) -> None:
    """Lines between consecutive groups of classes, the group's name beside its block."""
    starts = [i for i, g in enumerate(group_of_row) if i == 0 or g != group_of_row[i - 1]] + [len(group_of_row)]
    for a, b in zip(starts[:-1], starts[1:]):
        if a > 0:
            ax.axhline(a - 0.5, color="0.3", linewidth=0.6)
            ax.axvline(a - 0.5, color="0.3", linewidth=0.6)
        ax.text((a + b - 1) / 2, -0.7, group_of_row[a].replace("_", " "), fontsize=7, rotation=30,
                va="bottom", ha="left", fontweight="bold")   # above the columns of the block
