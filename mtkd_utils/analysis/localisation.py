"""How well a CAM localises: the pointing game and the energy inside the lesion mask, on the field of view only.

A CAM upsampled from a coarse map puts plateaus of equal values in the image's black corners, where no lesion
can be; searched over the whole image, the maximum lands there and the pointing game is 0 by construction.
Here every score looks only inside the field of view (FOV): the maximum is searched there, the energy and the
chance levels are taken there, and a CAM flat over the FOV never scores a hit.

The pointing game is Zhang et al.'s (ECCV 2016 / IJCV 2018): a hit when the maximum lies within a tolerance of
the annotated region. A CAM upsampled from a 4 x 4 map cannot put its maximum on a 3-px lesion, so "inside the
mask" would score every model 0; the tolerance (15 px at 224 px, scaled to the map) is what makes it informative.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import cv2
import numpy as np
import pandas as pd
from scipy.ndimage import distance_transform_edt

from ..data.fundus import FOV_THRESHOLD

SCORE_COLUMNS = ["has_mask", "pointing", "pointing_chance", "energy", "mask_share", "flat"]
EQUAL_ATOL = 1e-6            # CAM values this close are equal: a plateau of maxima, or a CAM flat over the FOV
# Zhang et al., "Top-down neural attention by excitation backprop" (ECCV 2016; IJCV 2018): a hit is a maximum
# within 15 px of the annotation, on images of about 224 px.
POINTING_TOLERANCE_PX, POINTING_IMAGE_PX = 15, 224


def default_tolerance(shape: tuple[int, int]) -> float:
    """Zhang et al.'s 15 px at 224 px, scaled to a map of `shape` by its shorter side (about 4.3 px at 64 px)."""
    return POINTING_TOLERANCE_PX * min(shape[:2]) / POINTING_IMAGE_PX


def as_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A boolean (H, W) mask (>0 = inside) at `shape`, resized by nearest neighbour when needed."""
    m = np.asarray(mask)
    if m.ndim == 3 and m.shape[-1] == 1:
        m = m[..., 0]
    if m.ndim != 2:
        raise ValueError(f"mask: expected a single-channel (H, W) array, got shape {m.shape}")
    m = m > 0
    if m.shape != tuple(shape):
        # nearest neighbour: a resized mask stays a mask (no blended edge values)
        m = cv2.resize(m.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST) > 0
    return m


def fov_mask(image: np.ndarray, threshold: int = FOV_THRESHOLD) -> np.ndarray:
    """The field of view of a prepared image (H, W, 3), uint8 or float in [0, 1], as a filled boolean (H, W) mask.

    The largest bright blob (as fundus.fov_bbox finds it), holes filled so that a dark lesion inside stays
    inside; the whole image when nothing is bright (then the scores fall back to the whole image).
    """
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"image: expected (H, W, 3), got shape {img.shape}")
    if img.dtype != np.uint8:
        img = np.clip(np.round(img.astype(np.float32) * 255), 0, 255).astype(np.uint8)
    bright = (cv2.medianBlur(np.ascontiguousarray(img.max(axis=2)), 3) > threshold).astype(np.uint8)
    contours, _ = cv2.findContours(bright, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return np.ones(img.shape[:2], bool)
    filled = np.zeros_like(bright)
    cv2.drawContours(filled, [max(contours, key=cv2.contourArea)], -1, 1, thickness=cv2.FILLED)
    return filled > 0


def _cam(cam: np.ndarray) -> np.ndarray:
    c = np.asarray(cam, dtype=np.float64)
    if c.ndim != 2 or not np.isfinite(c).all() or c.min() < 0:
        raise ValueError(f"cam: expected a finite, non-negative (H, W) map, got shape {c.shape}")
    return c


def _regions(cam: np.ndarray, mask: np.ndarray, fov: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The checked CAM, the FOV and the lesion pixels inside it, all at the CAM's size (no FOV: the whole image)."""
    c = _cam(cam)
    f = np.ones(c.shape, bool) if fov is None else as_mask(fov, c.shape)
    if not f.any():
        raise ValueError("fov: the field-of-view mask is empty; pass None to score on the whole image")
    return c, f, as_mask(mask, c.shape) & f


def _tolerance(tolerance: float | None, shape: tuple[int, int]) -> float:
    if tolerance is None:
        return default_tolerance(shape)
    if not tolerance >= 0:
        raise ValueError(f"tolerance={tolerance!r}: a distance in pixels >= 0 (0: inside the mask)")
    return float(tolerance)


def near_mask(mask: np.ndarray, tolerance: float) -> np.ndarray:
    """The pixels within `tolerance` px (Euclidean) of a mask pixel, the mask itself included."""
    return distance_transform_edt(~mask) <= tolerance


def maximum_point(cam: np.ndarray, fov: np.ndarray) -> tuple[int, int]:
    """(row, col) of the CAM's maximum inside the FOV. An upsampled CAM has plateaus of equal maxima: then the
    maximal pixel nearest their centroid (the first in raster order when several are as near)."""
    rows, cols = np.nonzero(fov & (cam >= cam[fov].max() - EQUAL_ATOL))
    nearest = np.argmin((rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2)
    return int(rows[nearest]), int(cols[nearest])


def pointing_game(cam: np.ndarray, mask: np.ndarray, fov: np.ndarray | None = None,
                  tolerance: float | None = None) -> bool:
    """Whether the CAM's maximum inside the FOV lies within `tolerance` px of the mask (mask and FOV resized to the
    CAM by nearest neighbour; distances in the CAM's pixels).

    tolerance None: default_tolerance of the CAM's size; 0: the maximum must fall inside the mask. A CAM flat
    over the FOV points nowhere: never a hit. A mask with no pixel in the FOV: ValueError.
    """
    c, f, m = _regions(cam, mask, fov)
    if not m.any():
        raise ValueError("pointing_game: the mask is empty inside the field of view (no lesion pixel); skip this image")
    if np.ptp(c[f]) < EQUAL_ATOL:
        return False
    return bool(near_mask(m, _tolerance(tolerance, c.shape))[maximum_point(c, f)])


def pointing_chance(mask: np.ndarray, fov: np.ndarray, tolerance: float) -> float:
    """The share of the FOV within `tolerance` px of the mask: what a uniformly random point scores (chance level)."""
    return float(near_mask(mask & fov, tolerance)[fov].mean())


def energy_inside(cam: np.ndarray, mask: np.ndarray, fov: np.ndarray | None = None) -> float:
    """Share of the CAM's mass in the FOV that lies inside the mask; a constant or all-zero CAM scores chance
    (mask_share), not NaN, so a randomised model's empty maps are not silently dropped from a mean."""
    c, f, m = _regions(cam, mask, fov)
    total = c[f].sum()
    return float(c[m].sum() / total) if total > 0 else mask_share(m, f)


def mask_share(mask: np.ndarray, fov: np.ndarray) -> float:
    """The mask's share of the FOV: what a uniform CAM scores for energy (chance level)."""
    return float((mask & fov).sum() / fov.sum())


def _optional(values: Sequence | None, n: int, name: str) -> Sequence:
    if values is None:
        return [None] * n
    if len(values) != n:
        raise ValueError(f"{n} CAMs but {len(values)} {name}: give one (or None) per CAM")
    return values


def localisation_scores(cams: Sequence[np.ndarray] | np.ndarray, masks: Sequence[np.ndarray | None],
                        fovs: Sequence[np.ndarray | None] | None = None,
                        tolerance: float | None = None) -> pd.DataFrame:
    """Per image: pointing hit and its chance level, energy inside and its chance level (the mask's share of the
    FOV), flat (constant over the FOV); NaN without a lesion mask in the FOV. tolerance: as pointing_game."""
    masks, fovs = _optional(masks, len(cams), "masks"), _optional(fovs, len(cams), "fovs")
    rows = []
    for cam, mask, fov in zip(cams, masks, fovs):
        c, f, m = _regions(cam, np.zeros(np.shape(cam), bool) if mask is None else mask, fov)
        if not m.any():                              # no annotation in the FOV (e.g. a normal eye): not scored
            rows.append(dict(has_mask=False))
            continue
        tol = _tolerance(tolerance, c.shape)
        rows.append(dict(has_mask=True, pointing=float(pointing_game(c, m, f, tol)),
                         pointing_chance=pointing_chance(m, f, tol), energy=energy_inside(c, m, f),
                         mask_share=mask_share(m, f), flat=float(np.ptp(c[f]) < EQUAL_ATOL)))
    return pd.DataFrame(rows, columns=SCORE_COLUMNS)


def _se(values: pd.Series) -> float:
    """Standard error of the mean (NaN below two values)."""
    v = values.dropna()
    return float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")


def _summary(scores: pd.DataFrame) -> dict:
    s = scores[scores["has_mask"].astype(bool)]
    return {"n_images": len(scores), "n_scored": len(s),
            "pointing": s["pointing"].mean(), "pointing_se": _se(s["pointing"]),
            "pointing_chance": s["pointing_chance"].mean(),
            "energy": s["energy"].mean(), "energy_se": _se(s["energy"]),
            "mask_share": s["mask_share"].mean(), "n_flat": int(s["flat"].sum())}


def localisation_table(cams: Sequence[np.ndarray] | np.ndarray, masks: Sequence[np.ndarray | None],
                       groups: Mapping[str, Sequence] | None = None, fovs: Sequence[np.ndarray | None] | None = None,
                       tolerance: float | None = None) -> pd.DataFrame:
    """Pointing-game rate and mean energy inside the mask (± standard errors) per group and overall ('all', last).

    The chance levels beside them: pointing_chance, the mean share of the FOV within the tolerance of the mask
    (a random point's hit rate); mask_share, the mean lesion share of the FOV (a uniform CAM's energy). n_flat
    counts CAMs constant over the FOV among the scored images. Images without a mask count in n_images only.
    """
    scores = localisation_scores(cams, masks, fovs, tolerance)
    keys = list(groups or {})
    for k in keys:
        if len(groups[k]) != len(scores):
            raise ValueError(f"groups[{k!r}] has {len(groups[k])} values for {len(scores)} CAMs")
        scores[k] = np.asarray(groups[k]).astype(str)
    parts = {g if len(keys) > 1 else g[0]: _summary(s) for g, s in scores.groupby(keys, sort=True)} if keys else {}
    parts[("all",) * len(keys) if len(keys) > 1 else "all"] = _summary(scores)
    if len(keys) > 1:
        index = pd.MultiIndex.from_tuples(list(parts), names=keys)
    else:
        index = pd.Index(list(parts), name=keys[0] if keys else None)
    return pd.DataFrame(list(parts.values()), index=index)
