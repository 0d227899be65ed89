"""Localisation scores on hand-made maps: the pointing game and the energy inside the field of view, the CAM targets."""
import numpy as np
import pandas as pd
import pytest

from mtkd_utils.analysis.localisation import (
    default_tolerance,
    energy_inside,
    fov_mask,
    localisation_scores,
    localisation_table,
    pointing_chance,
    pointing_game,
)
from mtkd_utils.analysis.views import cam_targets, class_indices, pick_images, scored_images
from mtkd_utils.data.dataset import load_samples


def disc_image(size: int = 16, lesion: tuple[int, int] | None = None) -> np.ndarray:
    """A fundus-like uint8 image: a bright disc on black, optionally with a black (dark) lesion pixel inside."""
    yy, xx = np.mgrid[:size, :size]
    img = np.zeros((size, size, 3), np.uint8)
    img[(yy - size / 2 + 0.5) ** 2 + (xx - size / 2 + 0.5) ** 2 < (size / 2 - 1) ** 2] = (180, 90, 40)
    if lesion is not None:
        img[lesion] = 0
    return img


def test_fov_mask_is_the_filled_disc():
    fov = fov_mask(disc_image(lesion=(8, 8)))
    assert fov[8, 8] and fov[2, 8]                            # a dark lesion stays inside; the disc is inside
    assert not fov[0, 0] and not fov[15, 15]                  # the black corners are not
    assert fov_mask(disc_image().astype(np.float32) / 255).tolist() == fov.tolist()   # float images too
    assert fov_mask(np.zeros((4, 4, 3), np.uint8)).all()      # nothing bright: the whole image
    with pytest.raises(ValueError, match="H, W, 3"):
        fov_mask(np.zeros((4, 4)))


def corner_cam() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 16 x 16 CAM whose global maximum is a plateau in the top-left corner (outside the FOV), a lower peak
    inside a lesion mask in the FOV; the FOV of disc_image."""
    cam = np.zeros((16, 16))
    cam[:3, :3] = 1.0                                         # corner plateau: what a bilinear 2 x 2 map gives
    cam[9, 10] = 0.6
    mask = np.zeros((16, 16), bool)
    mask[8:11, 9:12] = True
    return cam, mask, fov_mask(disc_image())


def test_pointing_game_hits_when_the_maximum_is_inside_the_mask():
    cam = np.zeros((16, 16))
    cam[9, 10] = 1.0
    _, mask, fov = corner_cam()
    assert pointing_game(cam, mask, fov) is True
    assert localisation_scores([cam], [mask], [fov])["pointing"].tolist() == [1.0]


def test_a_maximum_outside_the_field_of_view_is_ignored():
    cam, mask, fov = corner_cam()
    assert not fov[:3, :3].any()
    assert pointing_game(cam, mask) is False                  # over the whole image the corner wins ...
    assert pointing_game(cam, mask, fov) is True              # ... inside the FOV the lesion's peak does


def test_a_cam_flat_over_the_field_of_view_never_hits():
    _, mask, fov = corner_cam()
    flat = np.where(fov, 0.5, 1.0)                            # flat inside, a plateau outside
    assert pointing_game(flat, mask, fov) is False
    everywhere = np.zeros((16, 16)); everywhere[fov] = 0.5; everywhere[mask] = 0.5   # flat, mask included
    assert pointing_game(everywhere, mask, fov) is False
    row = localisation_scores([flat], [mask], [fov]).iloc[0]
    assert row.flat == 1.0 and row.energy == pytest.approx(mask.sum() / fov.sum())   # chance, inside the FOV


def test_energy_and_chance_are_taken_inside_the_field_of_view():
    cam, mask, fov = corner_cam()
    assert energy_inside(cam, mask, fov) == pytest.approx(1.0)          # the only FOV mass is the lesion's peak
    assert energy_inside(cam, mask) == pytest.approx(0.6 / 9.6)         # whole image: the corner's 9 units count
    share = localisation_scores([cam], [mask], [fov])["mask_share"].iloc[0]
    assert share == pytest.approx(mask.sum() / fov.sum())
    with pytest.raises(ValueError, match="fov"):
        energy_inside(cam, mask, np.zeros((16, 16), bool))


def test_pointing_game_by_hand():
    cam = np.zeros((4, 4))
    cam[1, 2] = 1.0
    mask = np.zeros((4, 4), np.uint8)
    mask[0:2, 2:4] = 255
    assert pointing_game(cam, mask) is True
    cam2 = np.zeros((4, 4))
    cam2[3, 0] = 0.7
    assert pointing_game(cam2, mask) is False


def test_pointing_game_resizes_the_mask_by_nearest_neighbour():
    cam = np.zeros((4, 4))
    cam[3, 3] = 1.0
    mask = np.zeros((8, 8), bool)
    mask[6:, 6:] = True                                       # the bottom-right 2 x 2 block at 4 x 4
    assert pointing_game(cam, mask) is True
    assert energy_inside(cam, mask) == pytest.approx(1.0)


def test_pointing_game_counts_a_maximum_within_the_tolerance_of_the_mask():
    mask = np.zeros((20, 20), bool)
    mask[10, 5:8] = True
    near, far = np.zeros((20, 20)), np.zeros((20, 20))
    near[10, 10] = 1.0                                        # 3 px right of the mask's last pixel (10, 7)
    far[10, 13] = 1.0                                         # 6 px
    assert pointing_game(near, mask, tolerance=4) is True
    assert pointing_game(far, mask, tolerance=4) is False
    assert pointing_game(near, mask, tolerance=3) is True    # the distance itself counts as within
    inside = np.zeros((20, 20)); inside[10, 6] = 1.0
    assert pointing_game(inside, mask, tolerance=0) is True   # 0: the maximum must fall inside the mask
    assert pointing_game(near, mask, tolerance=0) is False
    with pytest.raises(ValueError, match="tolerance"):
        pointing_game(near, mask, tolerance=-1)
    with pytest.raises(ValueError, match="empty"):
        pointing_game(near, np.zeros((20, 20)))


def test_a_plateau_of_maxima_points_at_its_pixel_nearest_the_centroid():
    cam = np.zeros((4, 4))
    cam[0, 0:3] = 1.0                                         # a plateau of three maxima: the middle one, (0, 1)
    mask = np.zeros((4, 4), bool)
    mask[0, 2] = True
    assert pointing_game(cam, mask, tolerance=0) is False
    assert pointing_game(cam, mask, tolerance=1) is True
    assert pointing_game(np.full((4, 4), 0.3), mask, tolerance=100) is False   # flat: never, whatever the tolerance


def test_the_default_tolerance_is_15_px_at_224_px():
    assert default_tolerance((224, 224)) == pytest.approx(15)
    assert default_tolerance((64, 64)) == pytest.approx(15 * 64 / 224)      # about 4.3 px
    assert default_tolerance((64, 128)) == pytest.approx(15 * 64 / 224)     # the shorter side
    mask = np.zeros((64, 64), bool)
    mask[30, 30] = True
    cam = np.zeros((64, 64)); cam[30, 34] = 1.0                              # 4 px away: a hit at 64 px
    assert pointing_game(cam, mask) is True
    cam = np.zeros((64, 64)); cam[30, 35] = 1.0                              # 5 px: a miss
    assert pointing_game(cam, mask) is False


def test_pointing_chance_is_the_share_of_the_fov_near_the_mask():
    mask = np.zeros((10, 10), bool)
    mask[5, 5] = True
    everywhere = np.ones((10, 10), bool)
    assert pointing_chance(mask, everywhere, 0) == pytest.approx(1 / 100)
    assert pointing_chance(mask, everywhere, 1) == pytest.approx(5 / 100)   # the pixel and its 4 neighbours
    top = np.zeros((10, 10), bool)
    top[:6] = True                                            # rows 0-5: 60 px, the pixel below the mask outside
    assert pointing_chance(mask, top, 1.5) == pytest.approx(6 / 60)         # the 3 x 3 block less its lowest row
    cam = np.zeros((10, 10)); cam[2, 2] = 1.0
    row = localisation_scores([cam], [mask], [top], tolerance=1.5).iloc[0]
    assert row.pointing == 0.0 and row.pointing_chance == pytest.approx(6 / 60)


def test_energy_inside_by_hand():
    cam = np.array([[1.0, 3.0], [0.0, 4.0]])
    mask = np.array([[0, 1], [0, 1]])
    assert energy_inside(cam, mask) == pytest.approx(7 / 8)
    assert energy_inside(np.zeros((2, 2)), mask) == pytest.approx(0.5)       # no evidence: uniform -> area share
    assert energy_inside(np.full((2, 2), 0.2), mask) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="non-negative"):
        energy_inside(-cam, mask)


def test_localisation_table_by_hand():
    a = np.zeros((2, 2)); a[0, 0] = 1.0                       # hits, energy 1
    b = np.array([[0.0, 1.0], [1.0, 2.0]])                    # max at (1,1) outside, energy 1/4 (mask (0,1))
    c = np.ones((2, 2))                                       # no mask: not scored
    d = np.zeros((2, 2))                                      # flat: energy = area share 2/4, no hit
    masks = [np.array([[1, 0], [0, 0]]), np.array([[0, 1], [0, 0]]), None, np.array([[1, 1], [0, 0]])]
    scores = localisation_scores([a, b, c, d], masks)
    assert scores["pointing"].tolist()[:2] == [1.0, 0.0] and np.isnan(scores["pointing"][2])
    assert scores["energy"].tolist()[:2] == pytest.approx([1.0, 0.25])
    table = localisation_table([a, b, c, d], masks, groups={"disease": ["dr", "dr", "normal", "amd"]})
    assert table.index.tolist() == ["amd", "dr", "normal", "all"]
    assert table.loc["dr", "pointing"] == pytest.approx(0.5)
    assert table.loc["dr", "energy"] == pytest.approx(0.625)
    assert table.loc["dr", "mask_share"] == pytest.approx(0.25)
    assert table.loc["dr", "pointing_chance"] == pytest.approx(0.25)   # 2 px maps: the tolerance is under a pixel
    assert localisation_table([b], [masks[1]], tolerance=1).loc["all", "pointing"] == 1.0   # (1, 1) is 1 px away
    assert table.loc["normal", "n_scored"] == 0 and table.loc["normal", "n_images"] == 1
    assert table.loc["all", "n_scored"] == 3 and table.loc["all", "n_flat"] == 1
    assert table.loc["all", "pointing"] == pytest.approx(1 / 3)
    assert table.loc["all", "energy"] == pytest.approx((1 + 0.25 + 0.5) / 3)
    assert localisation_table([a], [masks[0]]).index.tolist() == ["all"]




def test_no_mask_in_the_field_of_view_is_not_scored():
    cam, _, fov = corner_cam()
    corner_only = np.zeros((16, 16), bool)
    corner_only[0, 0] = True                                  # annotated, but outside the FOV
    scores = localisation_scores([cam, cam], [corner_only, None], [fov, fov])
    assert scores.has_mask.tolist() == [False, False] and scores.pointing.isna().all()
    table = localisation_table(np.zeros((0, 4, 4)), [], {"disease": []})   # data without lesion masks
    assert table.loc["all", "n_scored"] == 0 and np.isnan(table.loc["all", "pointing"])


# ---------------------------------------------------------------- which images, which class (05)

def test_cam_targets_are_the_true_classes_of_abnormal_annotated_images():
    lesion = np.ones((4, 4), bool)
    rows = pd.DataFrame({"coarse": ["normal", "dr", "amd", "dr", "amd"],
                         "fine": ["normal", "dr_b", "amd_a", "dr_a", "amd_a"]})
    masks = [lesion, lesion, None, np.zeros((4, 4), bool), lesion]   # normal with a mask; amd without; an empty mask
    positions, targets = cam_targets(rows, masks, ["normal", "dr", "amd"], "T1")
    assert positions.tolist() == [1, 4] and targets.tolist() == [1, 2]
    _, fine = cam_targets(rows, masks, ["normal", "dr_a", "dr_b", "amd_a"], "T2")
    assert fine.tolist() == [2, 3]
    assert scored_images(rows, [None] * 5).tolist() == []
    with pytest.raises(ValueError, match="not classes"):
        class_indices(["dr", "glaucoma"], ["normal", "dr"])
    with pytest.raises(ValueError, match="T3"):
        cam_targets(rows, masks, [], "T3")


def test_the_figure_picks_images_without_masks_when_none_has_one(tmp_path):
    rows = pd.DataFrame({"image_id": list("abcd"), "coarse": ["dr", "dr", "normal", "amd"]})
    picks = pick_images(rows, [None] * 4, per_disease=1, seed=0)
    assert len(picks) == 3 and set(rows.coarse[picks]) == {"dr", "normal", "amd"}
    lesion = np.ones((2, 2), bool)
    assert pick_images(rows, [None, lesion, None, None], per_disease=2, seed=0) == [1]   # annotated ones first
    images, masks = load_samples(tmp_path / "manifest.csv", rows.iloc[[]], 32)
    assert images.shape == (0, 32, 32, 3) and masks == []
