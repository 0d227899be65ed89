"""Embedded synthetic fundus dataset: colour fundus photographs with coarse and fine labels,
diagnosis sentences and lesion masks, generated deterministically from a seed.

One concern per module, in the order the data flows:
taxonomy (classes and their shares) -> cohort (patients, eyes, evaluation-only group: a table, no
pixels) -> plan (one eye's anatomy and findings) -> draw (pixels and lesion mask) and text (the
diagnosis sentence) -> dataset (the folder: images, masks, manifest, evaluation_only.csv).
"""
from .cohort import plan_cohort, quota
from .dataset import EVALUATION_ONLY, GENERATOR_VERSION, SIZES, Rendered, ensure_synthetic, generate, render_eye
from .draw import Lesion, draw_eye
from .plan import MIN_R, Plan, Spot, plan_eye
from .taxonomy import BILATERAL, COARSE, FINE, FINE_PARENT, FINE_SHARE, coarse_shares, label_map
from .text import describe, tokens

__all__ = ["BILATERAL", "COARSE", "EVALUATION_ONLY", "FINE", "FINE_PARENT", "FINE_SHARE", "GENERATOR_VERSION",
           "Lesion", "MIN_R", "Plan", "Rendered", "SIZES", "Spot", "coarse_shares", "describe", "draw_eye",
           "ensure_synthetic", "generate", "label_map", "plan_cohort", "plan_eye", "quota", "render_eye", "tokens"]
