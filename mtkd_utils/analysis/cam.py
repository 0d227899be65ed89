"""Grad-CAM on one head of the multi-task model, the sanity-check copy and the figure (scores: localisation).

Supplement section 4 shows Grad-CAM overlays beside the ophthalmologist's annotation; here the overlap is
also measured (pointing game, energy inside the mask), and the model-randomisation check of Adebayo et
al. (2018) says whether the maps depend on what the model learned at all.
"""
from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import torch
from matplotlib.figure import Figure
from pytorch_grad_cam import (
    KPCA_CAM,
    EigenCAM,
    EigenGradCAM,
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from ..io import save_figure
from .localisation import as_mask

# CAM methods of pytorch-grad-cam that take (model, target_layers) and class-index targets. Left out:
# AblationCAM (swaps a layer inside the model), FullGrad (ignores the target layer), FinerCAM (other
# targets), RandomCAM (draws from numpy's global, unseeded stream: not reproducible). The chance levels
# for the scores are localisation's pointing_chance and mask_share; the sanity check is randomized_copy.
METHODS: dict[str, type[BaseCAM]] = {
    "gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "hirescam": HiResCAM, "xgradcam": XGradCAM,
    "layercam": LayerCAM, "gradcam-elementwise": GradCAMElementWise, "eigencam": EigenCAM,
    "eigengradcam": EigenGradCAM, "scorecam": ScoreCAM, "kpcacam": KPCA_CAM,
}
CORRECT_COLOR, WRONG_COLOR = "#1a7f37", "#c0172b"   # green / red captions, as in the supplement's figures
NEUTRAL_COLOR = "black"                              # a true-class CAM: no prediction to judge


class CamError(RuntimeError):
    """A CAM came out unusable (wrong shape, not finite, constant)."""


class TaskOutput(nn.Module):
    """One head's logits (B, C) from the multi-task model: what a CAM method needs to see."""

    def __init__(self, model: nn.Module, task: str = "T1"):
        super().__init__()
        heads = getattr(model, "heads", {})
        if task not in heads:
            raise ValueError(f"task={task!r}: CAMs need a class head; this model has {tuple(heads)}"
                             " (T3 emits sentences: no class to explain)")
        self.model, self.task = model, task

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and not images.requires_grad:
            # cam_extractor freezes the weights; a leaf input that needs gradients still carries them
            # back to the target layer, so the CAM works and no parameter .grad is left behind.
            images = images.detach().requires_grad_(True)
        return self.model(images)[self.task]


def target_layer(model: nn.Module, block: int | None = None) -> nn.Module:
    """The layer the CAMs look at: encoder block `block`, or by default its last convolutional block
    (`model.cam_layer`)."""
    model = model.model if isinstance(model, TaskOutput) else model
    layer = getattr(model, "cam_layer", None)
    if not isinstance(layer, nn.Module):
        raise ValueError(f"{type(model).__name__} has no `cam_layer` module: pass an MTLModel")
    if block is None:
        return layer
    if not -len(model.encoder) <= block < len(model.encoder):
        raise ValueError(f"block={block}: the encoder has blocks 0..{len(model.encoder) - 1}")
    return model.encoder[block]


@torch.no_grad()
def block_strides(model: nn.Module, image_size: int) -> list[int]:
    """Each encoder block's output stride (image side / map side) for square images of `image_size` px."""
    model = model.model if isinstance(model, TaskOutput) else model
    h, strides = torch.zeros(1, 3, image_size, image_size, device=_device(model)), []
    was_training = model.training
    model.eval()
    try:
        for block in model.encoder:
            h = block(h)
            strides.append(round(image_size / h.shape[-1]))
    finally:
        model.train(was_training)
    return strides


def block_at_stride(model: nn.Module, stride: int | None, image_size: int) -> int | None:
    """The last encoder block whose map has output stride `stride` at this image size (None: the default layer).

    Stride 8 is an 8 x 8 map at 64 px (mobilenet_v3_small: block 3), 28 x 28 at 224 px (resnet50: layer2)."""
    if stride is None:
        return None
    strides = block_strides(model, image_size)
    if stride not in strides:
        raise ValueError(f"cam_stride={stride}: this encoder's blocks have output strides {sorted(set(strides))} "
                         f"at {image_size} px; choose one of them, or None for the last block")
    return len(strides) - 1 - strides[::-1].index(stride)


def _method(method: str) -> type[BaseCAM]:
    if method not in METHODS:
        raise ValueError(f"method={method!r}: choose one of {sorted(METHODS)}")
    return METHODS[method]


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def predicted_classes(model: nn.Module, images: torch.Tensor, task: str = "T1", batch_size: int = 32) -> np.ndarray:
    """Predicted class indices (N,) of one head, in eval mode; the model's mode is restored."""
    head, was_training = TaskOutput(model, task), model.training
    if len(images) == 0:
        return np.zeros(0, dtype=np.int64)
    model.eval()
    try:
        out = [head(images[i: i + batch_size].to(_device(model))).argmax(1).cpu()
               for i in range(0, len(images), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out).numpy()


@contextmanager
def cam_extractor(model: nn.Module, task: str = "T1", method: str = "gradcam",
                  block: int | None = None) -> Iterator[BaseCAM]:
    """A CAM object on one head, built once; on exit hooks are released and the model restored, errors propagate."""
    cls = _method(method)
    was_training = model.training
    params = list(model.parameters())
    needs_grad = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)        # see TaskOutput.forward
    cam = None
    try:
        cam = cls(model=TaskOutput(model, task), target_layers=[target_layer(model, block)])   # sets eval mode
        yield cam
    finally:
        # Not `with cam:`: the package's __exit__ prints and swallows IndexError.
        if cam is not None:
            cam.activations_and_grads.release()
        for p, flag in zip(params, needs_grad):
            p.requires_grad_(flag)
        model.train(was_training)


def check_cams(cams: np.ndarray, shape: tuple[int, ...], allow_constant: bool = False, hint: str = "") -> np.ndarray:
    """Return `cams` if they have `shape`, are finite, lie in [0, 1] and vary; CamError otherwise."""
    if cams.shape != tuple(shape):
        raise CamError(f"CAMs have shape {cams.shape}, expected {tuple(shape)}. {hint}")
    bad = ~np.isfinite(cams).all(axis=(1, 2))
    if bad.any():
        raise CamError(f"{int(bad.sum())} of {len(cams)} CAMs hold NaN/inf "
                       f"(images {np.flatnonzero(bad)[:10].tolist()}). {hint}")
    if cams.size and (cams.min() < -1e-6 or cams.max() > 1 + 1e-6):
        raise CamError(f"CAMs span [{cams.min():.3g}, {cams.max():.3g}], expected [0, 1]. {hint}")
    flat = np.ptp(cams.reshape(len(cams), -1), axis=1) < 1e-6 if cams.size else np.zeros(0, bool)
    if flat.any():
        msg = (f"{int(flat.sum())} of {len(cams)} CAMs are constant (images {np.flatnonzero(flat)[:10].tolist()}): "
               f"they localise nothing. Either the target layer's map is a single cell (images too small), or no "
               f"location speaks for the target class (Grad-CAM clips negative evidence to 0). {hint}")
        if not allow_constant:
            raise CamError(msg + " Pass allow_constant=True to keep them (e.g. for a randomised model).")
        warnings.warn(msg, stacklevel=3)
    return cams


def compute_cams(model: nn.Module, images: torch.Tensor, task: str = "T1", targets: Sequence[int] | None = None,
                 method: str = "gradcam", batch_size: int = 16, allow_constant: bool = False,
                 block: int | None = None) -> np.ndarray:
    """CAMs (N, H, W) in [0, 1] of one head for class `targets` (default: the predicted class), checked; at encoder
    block `block` (block_at_stride), by default the last one."""
    if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
        raise ValueError(f"images: expected a float (N, 3, H, W) tensor in [0, 1], "
                         f"got {images.dtype} {tuple(images.shape)}")
    if len(images) and (images.min() < 0 or images.max() > 1):
        raise ValueError("images: values must lie in [0, 1] (the model normalises them itself)")
    if torch.is_inference_mode_enabled():
        raise RuntimeError("compute_cams needs autograd: call it outside torch.inference_mode()")
    n_classes = TaskOutput(model, task).model.heads[task][-1].out_features
    targets = predicted_classes(model, images, task, batch_size) if targets is None else np.asarray(targets, dtype=int)
    if targets.shape != (len(images),) or targets.min(initial=0) < 0 or targets.max(initial=0) >= n_classes:
        raise ValueError(f"targets: one class index in [0, {n_classes}) per image ({len(images)}), "
                         f"got {targets.tolist()}")
    maps, fmap = [], None
    with cam_extractor(model, task, method, block) as cam, torch.enable_grad():   # a caller's no_grad would kill the gradients
        for i in range(0, len(images), batch_size):
            x = images[i: i + batch_size].to(_device(model))
            chosen = [ClassifierOutputTarget(int(t)) for t in targets[i: i + batch_size]]
            maps.append(cam(input_tensor=x, targets=chosen))
            if fmap is None and cam.activations_and_grads.activations:
                fmap = tuple(cam.activations_and_grads.activations[0].shape[-2:])
    cams = np.concatenate(maps) if maps else np.zeros((0, *images.shape[-2:]), np.float32)
    hint = f"(method={method!r}, task={task!r}, target layer map {fmap}, images {tuple(images.shape[-2:])})"
    return check_cams(cams, (len(images), *images.shape[-2:]), allow_constant, hint)


def randomized_copy(model: nn.Module, seed: int = 0, prefixes: Sequence[str] | None = None) -> nn.Module:
    """A deep copy with weights re-initialised (every module with reset_parameters; only names under `prefixes`
    if given)."""
    device = _device(model)
    twin = copy.deepcopy(model).cpu()    # drawn on the CPU: the same seed gives the same weights on any device
    reset = set()
    with torch.random.fork_rng(devices=[]):          # leaves the caller's random stream untouched
        torch.manual_seed(seed)
        for name, module in twin.named_modules():
            if prefixes is not None and not any(name == p or name.startswith(p + ".") for p in prefixes):
                continue
            if callable(getattr(module, "reset_parameters", None)):
                module.reset_parameters()           # BatchNorm also resets its running statistics
                reset.update(id(p) for p in module.parameters(recurse=False))
    missed = [n for n, p in twin.named_parameters() if id(p) not in reset
              and (prefixes is None or any(n.startswith(p + ".") for p in prefixes))]
    if missed:
        warnings.warn(f"randomized_copy: no reset_parameters for {missed[:5]}{'...' if len(missed) > 5 else ''}: "
                      "these weights kept their trained values", stacklevel=2)
    return twin.to(device)


# ---------------------------------------------------------------- figure

class Panel(NamedTuple):
    """One CAM column of a figure row: the map, its caption, whether the prediction is right (None: a CAM of the
    true class, captioned in black)."""
    cam: np.ndarray
    caption: str
    correct: bool | None


class Row(NamedTuple):
    """One figure row: the image (H, W, 3) in [0, 1] (uint8 accepted), its lesion mask or None, its CAM panels."""
    image: np.ndarray
    mask: np.ndarray | None
    panels: Sequence[Panel]


def _rgb01(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"image: expected (H, W, 3), got shape {img.shape}")
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255.0
    img = img.astype(np.float32)
    if img.min() < 0 or img.max() > 1:
        raise ValueError(f"image: float values must lie in [0, 1], got [{img.min():.3g}, {img.max():.3g}]")
    return img


def cam_overlay(image: np.ndarray, cam: np.ndarray, image_weight: float = 0.5) -> np.ndarray:
    """The CAM as a jet heat map over the image (uint8 RGB); the CAM is resized to the image if needed."""
    img = _rgb01(image)
    c = np.asarray(cam, dtype=np.float32)
    if c.shape != img.shape[:2]:
        c = cv2.resize(c, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR)
    return show_cam_on_image(img, np.clip(c, 0, 1), use_rgb=True, image_weight=image_weight)


def _bare(ax) -> None:
    """No ticks, no frame, but keep the x label (axis('off') would hide the caption)."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _caption(panel: Panel) -> str:
    """The caption with a tick or a cross besides the colour, for colour-blind readers."""
    if panel.correct is None:
        return panel.caption
    mark = "\u2713" if panel.correct else "\u2717"
    return f"{mark} {panel.caption}"


def _caption_color(correct: bool | None) -> str:
    return NEUTRAL_COLOR if correct is None else CORRECT_COLOR if correct else WRONG_COLOR


def _draw_outline(ax, mask: np.ndarray | None, shape: tuple[int, int], color: str) -> None:
    if mask is not None and (m := as_mask(mask, shape)).any():
        ax.contour(m.astype(float), levels=[0.5], colors=color, linewidths=1.0)


def gradcam_figure(rows: Sequence[Row | tuple], path_stem: str | Path, column_titles: Sequence[str] | None = None,
                   row_titles: Sequence[str] | None = None, mask_color: str = "cyan", outline_on_cams: bool = False,
                   panel_inches: float = 1.9, dpi: int = 300) -> Figure:
    """Image with its lesion outline, then one CAM overlay per panel captioned green (right) / red (wrong);
    saves .png and .pdf."""
    rows = [Row(*r) for r in rows]
    if not rows:
        raise ValueError("rows is empty: nothing to draw")
    n_cols = 1 + max(len(r.panels) for r in rows)
    default_titles = ["annotation"] + [f"CAM {i}" for i in range(1, n_cols)]
    titles = list(column_titles) if column_titles is not None else default_titles
    if len(titles) != n_cols:
        raise ValueError(f"column_titles: {n_cols} needed (the image, then {n_cols - 1} CAM columns), "
                         f"got {len(titles)}")
    if row_titles is not None and len(row_titles) != len(rows):
        raise ValueError(f"row_titles: one per row ({len(rows)}), got {len(row_titles)}")
    # Not pyplot: the figure is not registered globally, so a notebook shows it once (as the cell's value) and
    # loops leak nothing.
    fig = Figure(figsize=(panel_inches * n_cols, (panel_inches + 0.3) * len(rows)), layout="constrained")
    axes = np.asarray(fig.subplots(len(rows), n_cols, squeeze=False))
    for r, row in enumerate(rows):
        img = _rgb01(row.image)
        axes[r, 0].imshow(img)
        _draw_outline(axes[r, 0], row.mask, img.shape[:2], mask_color)
        if row_titles is not None:
            axes[r, 0].set_ylabel(row_titles[r], fontsize=8)
        for c in range(1, n_cols):
            ax = axes[r, c]
            _bare(ax)
            if c > len(row.panels):
                continue
            panel = Panel(*row.panels[c - 1])
            ax.imshow(cam_overlay(img, panel.cam))
            if outline_on_cams:
                _draw_outline(ax, row.mask, img.shape[:2], mask_color)
            ax.set_xlabel(_caption(panel), color=_caption_color(panel.correct), fontsize=8)
        _bare(axes[r, 0])
    for c, title in enumerate(titles):
        axes[0, c].set_title(title, fontsize=9)
    save_figure(fig, path_stem, dpi=dpi, tight=False)
    return fig


def figure_rows(images: Sequence[np.ndarray], masks: Sequence[np.ndarray | None], cams: Mapping[str, np.ndarray],
                predicted: Mapping[str, Sequence[str]], truth: Sequence[str], picks: Sequence[int],
                true_class_cams: Mapping[str, np.ndarray] | None = None) -> list[Row]:
    """Rows for gradcam_figure: for each picked image, one panel per run captioned with its prediction (green/red),
    then, per run of `true_class_cams`, its CAM of the true class (captioned 'true: <label>' in black)."""
    def panel(run: str, i: int) -> Panel:
        return Panel(cams[run][i], predicted[run][i].replace("_", " "), predicted[run][i] == truth[i])

    def true_panel(run: str, i: int) -> Panel:
        return Panel(true_class_cams[run][i], f"true: {truth[i].replace('_', ' ')}", None)
    extra = list(true_class_cams or {})
    return [Row(images[i], masks[i], [panel(run, i) for run in cams] + [true_panel(run, i) for run in extra])
            for i in picks]
