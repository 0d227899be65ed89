"""The noised student's view (Noisy Student, Xie et al. 2020): a different random view of every image, on tensors.

Per image: a random resized crop (zoom and shift), a rotation within +-15 degrees, and brightness, contrast
and saturation jitter, all in one batched affine resampling (F.affine_grid / grid_sample) so that each
image of a batch gets its own draw at the cost of one op; torchvision's transforms draw one set of
parameters per call, so a per-image draw would loop over the batch. Every draw comes from the
torch.Generator passed in: the same seed gives the same views on any device.

No flips, by choice. The T3 sentence names the eye ("left eye : ..."), and a fundus photograph tells its
eye by where the optic disc sits (nasal side: the right of the image for a right eye): a mirrored right
eye looks like a left eye whose sentence still says "right". A vertical flip swaps the superior and
inferior arcades. Rotations within +-15 degrees keep the disc on its side.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

GRAY = (0.299, 0.587, 0.114)      # ITU-R 601 luma weights, as torchvision's rgb_to_grayscale


@dataclass(frozen=True)
class NoiseSpec:
    """How strong the student's noise is; defaults are the student recipe's."""

    max_rotation: float = 15.0    # degrees, either way
    min_scale: float = 0.8        # crop side as a fraction of the image side: 1 = no zoom
    max_shift: float = 0.08       # extra translation, as a fraction of the half-width
    brightness: float = 0.2       # gain in [1 - b, 1 + b]
    contrast: float = 0.2         # contrast factor in [1 - c, 1 + c], around the image's mean grey
    saturation: float = 0.2       # saturation factor in [1 - s, 1 + s]


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def draw_params(n: int, generator: torch.Generator, spec: NoiseSpec = NoiseSpec()) -> dict[str, torch.Tensor]:
    """One draw per image, each (n,) on the CPU: angle (degrees), scale, shift_x, shift_y and the three jitters."""
    scale = _uniform(n, spec.min_scale, 1.0, generator)
    room = 1 - scale + spec.max_shift                     # a zoomed crop may sit anywhere inside the image
    return dict(angle=_uniform(n, -spec.max_rotation, spec.max_rotation, generator), scale=scale,
                shift_x=(2 * torch.rand(n, generator=generator) - 1) * room,
                shift_y=(2 * torch.rand(n, generator=generator) - 1) * room,
                brightness=_uniform(n, 1 - spec.brightness, 1 + spec.brightness, generator),
                contrast=_uniform(n, 1 - spec.contrast, 1 + spec.contrast, generator),
                saturation=_uniform(n, 1 - spec.saturation, 1 + spec.saturation, generator))


def apply_params(x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> the same images cropped, rotated and jittered, each by its own parameters."""
    p = {k: v.to(x.device, x.dtype) for k, v in params.items()}
    rad = p["angle"] * (math.pi / 180)
    cos, sin = torch.cos(rad) * p["scale"], torch.sin(rad) * p["scale"]
    theta = torch.stack([torch.stack([cos, -sin, p["shift_x"]], 1),
                         torch.stack([sin, cos, p["shift_y"]], 1)], 1)                          # (B, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # Zeros beyond the edge: black, like the surround of a fundus photograph.
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    luma = torch.tensor(GRAY, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    gray = (x * luma).sum(1, keepdim=True)                                                   # (B, 1, H, W)
    x = gray + (x - gray) * p["saturation"].view(-1, 1, 1, 1)
    mean = gray.mean(dim=(1, 2, 3), keepdim=True)
    x = mean + (x - mean) * p["contrast"].view(-1, 1, 1, 1)
    return (x * p["brightness"].view(-1, 1, 1, 1)).clamp(0, 1)


def student_noise(x: torch.Tensor, generator: torch.Generator, spec: NoiseSpec = NoiseSpec()) -> torch.Tensor:
    """A new noised view of every image of the batch, seeded by `generator`."""
    return apply_params(x, draw_params(x.shape[0], generator, spec))
