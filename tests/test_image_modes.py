"""Images in any PIL mode become the same 8-bit RGB as their 8-bit twin; tiny images are named."""
import warnings

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mtkd_utils.data.fundus import prepare_image, read_rgb8, to_rgb8
from mtkd_utils.data.manifest import warn_tiny_images


def fundus_like(h: int = 96, w: int = 128) -> np.ndarray:
    """A dark background, a bright disc with a gradient: (h, w, 3) uint8, varied values on every channel."""
    y, x = np.mgrid[:h, :w]
    disc = (y - h / 2) ** 2 + (x - w / 2) ** 2 < (0.45 * h) ** 2
    rgb = np.stack([90 + x % 160, 40 + y % 120, (x + y) % 60], axis=-1) * disc[..., None]
    return rgb.astype(np.uint8)


GREY = fundus_like()[..., 0]                 # 0..249: an 8-bit grey photograph
TWIN_GREY = np.repeat(GREY[..., None], 3, axis=2)


@pytest.mark.parametrize("mode, suffix", [("I;16", ".png"), ("I", ".tif")])
def test_16_bit_grey_is_scaled_by_its_range_not_clipped(mode, suffix, tmp_path):
    sixteen = Image.fromarray((GREY.astype(np.uint32) * 257).astype(np.uint16 if mode == "I;16" else np.int32))
    assert sixteen.mode == mode
    assert np.array_equal(to_rgb8(sixteen), TWIN_GREY)
    # the same through a file, as the image cache reads it: a 16-bit file and its 8-bit twin
    sixteen.save(tmp_path / f"16{suffix}")
    Image.fromarray(GREY).save(tmp_path / "8.png")
    with Image.open(tmp_path / f"16{suffix}") as im:
        assert im.mode.startswith("I")
        assert (np.asarray(im.convert("RGB")) == 255).mean() > 0.3    # what PIL alone gives: clipped, washed out
    assert np.array_equal(read_rgb8(tmp_path / f"16{suffix}"), TWIN_GREY)
    assert np.array_equal(prepare_image(tmp_path / f"16{suffix}", 32), prepare_image(tmp_path / "8.png", 32))


def test_grey_modes_match_their_twin():
    assert np.array_equal(to_rgb8(Image.fromarray(GREY)), TWIN_GREY)                         # L
    opaque = Image.fromarray(np.stack([GREY, np.full_like(GREY, 255)], axis=-1), mode="LA")
    assert np.array_equal(to_rgb8(opaque), TWIN_GREY)


def test_palette_matches_its_twin(tmp_path):
    rgb = (fundus_like() // 64) * 64          # at most 64 colours: a palette holds them exactly
    Image.fromarray(rgb).quantize(colors=256, method=Image.Quantize.MAXCOVERAGE).save(tmp_path / "p.png")
    with Image.open(tmp_path / "p.png") as im:
        assert im.mode == "P" and np.array_equal(to_rgb8(im), rgb)


def test_cmyk_matches_its_twin(tmp_path):
    rgb = fundus_like()
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.tif")
    with Image.open(tmp_path / "c.tif") as im:
        assert im.mode == "CMYK" and np.array_equal(to_rgb8(im), rgb)


def test_transparency_becomes_the_black_background():
    rgb = fundus_like()
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    assert np.array_equal(to_rgb8(Image.fromarray(np.dstack([rgb, alpha]), mode="RGBA")), rgb)
    alpha[:, :10] = 0                                               # a transparent band, white underneath
    rgba = np.dstack([np.full_like(rgb, 255), alpha])
    out = to_rgb8(Image.fromarray(rgba, mode="RGBA"))
    assert (out[:, :10] == 0).all() and (out[:, 10:] == 255).all()


def test_tiny_images_are_warned_by_name(tmp_path):
    Image.fromarray(fundus_like(20, 40)).save(tmp_path / "small.png")
    Image.fromarray(fundus_like(64, 64)).save(tmp_path / "fine.png")
    df = pd.DataFrame({"image": ["small.png", "fine.png"]})
    with pytest.warns(UserWarning, match=r"1 image\(s\) smaller than 32 px.*small.png \(40x20\)"):
        assert warn_tiny_images(df, tmp_path) == ["small.png (40x20)"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_tiny_images(df.iloc[1:], tmp_path)
