"""The synthetic dataset's classes: 5 coarse diseases, the fine classes nested in them, and their shares.

Every fine class is defined by something drawn at least 2-3 px across at the demo's working
resolution (64 px after the field-of-view crop: 1 eye-frame unit = 32 px there): lesion counts,
lesion sizes, or cup-to-disc ratios spaced by about 3 px of cup diameter. The shares are exact
image quotas of the labeled set (cohort.py), long-tailed but with every class at >= 5.5 %, so that
each has >= 10 training images at p = 15 in the demo preset.
"""
from __future__ import annotations

from ..manifest import LabelMap

COARSE = ["normal", "diabetic_retinopathy", "amd", "glaucoma", "melanoma"]

# (fine name, coarse parent, share of all labeled images): normal 0.31, DR 0.25, AMD 0.175, glaucoma 0.13,
# melanoma 0.135; the commonest fine class ("normal") holds 0.18, so always answering it scores <= 0.20 on T2.
FINE: list[tuple[str, str, float]] = [
    ("normal", "normal", 0.180),
    ("normal_tessellated", "normal", 0.070),
    ("normal_myopic_crescent", "normal", 0.060),
    ("dr_mild_npdr", "diabetic_retinopathy", 0.075),
    ("dr_moderate_npdr", "diabetic_retinopathy", 0.065),
    ("dr_severe_npdr", "diabetic_retinopathy", 0.055),
    ("dr_pdr", "diabetic_retinopathy", 0.055),
    ("amd_intermediate", "amd", 0.065),
    ("amd_geographic_atrophy", "amd", 0.055),
    ("amd_neovascular", "amd", 0.055),
    ("glaucoma_cdr06", "glaucoma", 0.075),
    ("glaucoma_cdr09", "glaucoma", 0.055),
    ("melanoma_small", "melanoma", 0.070),
    ("melanoma_large", "melanoma", 0.065),
]
FINE_PARENT = {name: parent for name, parent, _ in FINE}
FINE_SHARE = {name: share for name, _, share in FINE}

# P(a patient with the disease has it in both eyes); the fellow eye of a one-eyed disease is normal
BILATERAL = {"diabetic_retinopathy": 0.85, "amd": 0.65, "glaucoma": 0.6, "melanoma": 0.0}


def label_map() -> LabelMap:
    """The synthetic dataset's classes: 5 coarse, the fine classes nested in them."""
    return LabelMap.from_pairs(COARSE, [(name, parent) for name, parent, _ in FINE])


def coarse_shares() -> dict[str, float]:
    """Share of labeled images per coarse class (sums of the fine shares)."""
    out = dict.fromkeys(COARSE, 0.0)
    for _, parent, share in FINE:
        out[parent] += share
    return out
