"""Field-of-view crop on synthetic photographs with a known circle."""
from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from mtkd_utils.data.fundus import crop_to_fov, fov_bbox, prepare_image


def _fundus(h, w, cy, cx, r, seed=0):
    """Black image with a reddish disc of radius r at (cy, cx), with some texture inside."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2
    img = np.zeros((h, w, 3), np.uint8)
    img[disc] = (150, 70, 30)
    img[disc] += rng.integers(0, 40, (disc.sum(), 1), dtype=np.uint8)
    return img


def _expected(h, w, cy, cx, r):
    return max(cy - r, 0), min(cy + r + 1, h), max(cx - r, 0), min(cx + r + 1, w)


def _jpeg_noisy(img, seed=0):
    """Add sensor noise, a white camera label in a corner, and JPEG compression."""
    rng = np.random.default_rng(seed)
    noisy = np.clip(img.astype(int) + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
    cv2.putText(noisy, "2019-03-01", (5, img.shape[0] - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
    buf = io.BytesIO()
    Image.fromarray(noisy).save(buf, format="JPEG", quality=70)
    return np.asarray(Image.open(buf).convert("RGB"))


@pytest.mark.parametrize("h, w, cy, cx, r", [
    (200, 300, 100, 150, 80),    # whole circle
    (200, 300, 100, 140, 120),   # cut off at top and bottom, as by many cameras
    (240, 260, 90, 130, 100),    # cut off at the top only
    (512, 768, 256, 384, 250),   # a wide camera frame
])
def test_fov_bbox_known_circle(h, w, cy, cx, r):
    img = _fundus(h, w, cy, cx, r)
    want = np.array(_expected(h, w, cy, cx, r))
    assert np.abs(np.array(fov_bbox(img)) - want).max() <= 2
    assert np.abs(np.array(fov_bbox(_jpeg_noisy(img))) - want).max() <= 2


def test_fov_bbox_blank_image_is_the_whole_image():
    assert fov_bbox(np.zeros((30, 40, 3), np.uint8)) == (0, 30, 0, 40)


def test_crop_to_fov_centres_a_clipped_circle_in_a_square():
    img = _fundus(200, 300, 100, 140, 120)
    out = crop_to_fov(img)
    assert out.shape[0] == out.shape[1] and abs(out.shape[0] - 241) <= 2 and out.dtype == np.uint8
    rows = np.flatnonzero(out.max(axis=(1, 2)) > 20)
    assert abs(rows[0] - (out.shape[0] - rows[-1] - 1)) <= 1  # equal black bands above and below


def test_prepare_image(tmp_path):
    path = tmp_path / "0_left.jpg"
    Image.fromarray(_jpeg_noisy(_fundus(300, 450, 150, 225, 140))).save(path, quality=90)
    out = prepare_image(path, 64)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert out[32, 32].max() > 100 and out[32, 1].max() > 100 and out[1, 1].max() < 30  # disc fills the square
    plain = prepare_image(path, 64, crop_fov=False)
    assert plain.shape == (64, 64, 3) and plain[5, 32].max() < 30  # only padded: black band above
