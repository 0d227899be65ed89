"""Image preparation for real fundus photographs: find the round field of view, crop it square, resize."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

# The background of a fundus photograph is near black, but JPEG ringing lifts it to ~15 next to
# the rim; the dimmest edge of a field of view is brighter than 20 on its brightest (red) channel.
FOV_THRESHOLD = 20


def fov_bbox(img: np.ndarray, threshold: int = FOV_THRESHOLD) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the field of view in a uint8 image, bottom/right exclusive; whole image if none."""
    h, w = img.shape[:2]
    bright = img.max(axis=2) if img.ndim == 3 else img  # red is brightest in a fundus; max also suits grey images
    # The median removes JPEG speckle and thin overlay text before thresholding, and barely moves a smooth rim.
    mask = (cv2.medianBlur(np.ascontiguousarray(bright, dtype=np.uint8), 3) > threshold).astype(np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n < 2:
        return 0, h, 0, w
    # The field of view is the largest bright blob (a FOV cut off at the top or bottom is still one blob);
    # camera labels and stray bright pixels are smaller ones.
    x, y, bw, bh = stats[1 + stats[1:, cv2.CC_STAT_AREA].argmax(), :4]
    return int(y), int(y + bh), int(x), int(x + bw)


def pad_square(img: np.ndarray) -> np.ndarray:
    """Pad with black to a square, image centred."""
    h, w = img.shape[:2]
    side = max(h, w)
    out = np.zeros((side, side) + img.shape[2:], dtype=img.dtype)
    top, left = (side - h) // 2, (side - w) // 2
    out[top:top + h, left:left + w] = img
    return out


def crop_to_fov(img: np.ndarray, threshold: int = FOV_THRESHOLD) -> np.ndarray:
    """Crop to the field of view's bounding box and pad to a centred black square (a clipped FOV stays round)."""
    top, bottom, left, right = fov_bbox(img, threshold)
    return pad_square(img[top:bottom, left:right])


SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")   # PIL opens 16-bit grey PNG/TIFF as one of these


def to_rgb8(im: Image.Image) -> np.ndarray:
    """Any PIL mode -> (H, W, 3) uint8 RGB. 16-bit grey is scaled by its range (0..65535 -> 0..255), not clipped
    as PIL's convert("RGB") does; transparent pixels (RGBA, LA, PA, palette transparency) become black, the
    background of a fundus photograph; palette, CMYK and the rest through PIL's own conversion."""
    if im.mode in SIXTEEN_BIT_MODES:
        grey = np.clip(np.rint(np.asarray(im, dtype=np.float64) / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info:
        rgba = np.asarray(im.convert("RGBA"), dtype=np.uint16)
        return ((rgba[..., :3] * rgba[..., 3:] + 127) // 255).astype(np.uint8)   # composited on black
    return np.asarray(im.convert("RGB"))


def read_rgb8(path: str | Path, draft_size: int | None = None) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB, whatever its mode (to_rgb8)."""
    with Image.open(path) as im:
        if draft_size:
            # JPEG decodes at 1/2, 1/4 or 1/8 scale almost for free; 2x the target keeps detail for the crop.
            im.draft("RGB", (draft_size, draft_size))
        return to_rgb8(im)


def prepare_image(path: str | Path, size: int, crop_fov: bool = True) -> np.ndarray:
    """(size, size, 3) uint8 RGB: cropped to the field of view (or only padded square), resized with antialiasing."""
    rgb = read_rgb8(path, draft_size=2 * size)
    square = crop_to_fov(rgb) if crop_fov else pad_square(rgb)
    return np.asarray(Image.fromarray(square).resize((size, size), Image.Resampling.LANCZOS))
