"""The named presets: each says, in one place, its Config, the grid the batch runner walks and its synthetic data size.

    presets.config("smoke", epochs=3)   # the preset's Config with overrides
    presets.PRESETS["paper"].grid        # tasks, p, models, seeds of Table 1
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config import FRACTIONS, MODELS, Config


@dataclass(frozen=True)
class Preset:
    config: dict[str, Any]          # Config fields that differ from the defaults
    grid: dict[str, list]           # what batch runs: tasks, p, models, seeds
    synthetic: dict[str, Any] | None  # synthetic.ensure_synthetic arguments when Config.dataset names this preset
                                      # (None: a preset for real data, with no synthetic stand-in)
    learnability_steps: int = 300   # 01's quick tiny-CNN baseline: training steps per fraction


PRESETS: dict[str, Preset] = {
    # tiny, for the tests: seconds per model; the data in a few seconds
    "smoke": Preset(
        config=dict(dataset="smoke", image_size=32, epochs=2, student_passes=1.0, batch_size=32, head_hidden=32,
                    embed_dim=16, lstm_hidden=32, tau_grid=(2.0,), alpha_grid=(0.5, 0.9), patience=2, min_word_freq=1,
                    t3_topk=8, pool="mean+halves", t3_scst_steps=5),
        grid=dict(tasks=["T1+T2+T3"], p=[15, 70], kd_p=[15], models=["M1", "M2", "M3", "M1b"], seeds=[0]),
        synthetic={"n_patients": 40, "n_eval_patients": 10, "n_unlabeled_patients": 40, "image_size": 64, "seed": 0},
        learnability_steps=20),
    # the synthetic default on a 2-core CPU (its run time: the README's quick start); the data in about a minute
    # (generated at 128 px, trained at 64): 1,700 development images (p = 70 trains on ~1,190) and 800
    # evaluation-only ones, so that the test split holds ~255 + 800 images
    # output_stride=16: mobilenet_v3_small gives a 4 x 4 feature map at 64 px (2 x 2 at 32), the least a CAM needs
    # to localise a lesion; it costs ~1.5-1.9x the encoder's time per batch (measured on this machine)
    # pool="mean+halves": with the global average alone M1's sentences named the wrong eye for 13-19 % of test
    # images; with the half means 6-9 % (test, 3 seeds; docs/RESULTS.md)
    # beam_size=5 (test-time decoding only; python -m mtkd_utils.decoding_choice): M1 at p=70, validation, seeds 0-2,
    # beam 3 -> 5: BLEU-4 0.213 -> 0.239, CIDEr-D 1.70 -> 1.78, findings F1 0.814 -> 0.820 (p=5: equal); MBR over 64
    # samples 0.26 BLEU-4 but findings F1 and fine class named lower, at 8x the decoding time: not chosen
    # t3_scst_steps=300, t3_scst_lr=2e-4: each reported model's T3 decoder is then fine-tuned self-critically
    # (train/scst.py), kept only where validation rises. With sentence BLEU-4 alone as the reward, python -m
    # mtkd_utils.decoding_choice --scst 300 --scst-lr 2e-4, validation, beam 5: M1 at p=70, seeds 0-2, BLEU-4 0.237/0.242/0.237 -> 0.287/0.303/
    # 0.295, CIDEr-D 1.78 -> 2.08, findings F1 0.820 -> 0.817 (the constant per (eye, coarse) 0.258, classify-then-
    # describe 0.287); at p=5 (86 training sentences) it memorises them: M1 0.155 -> 0.155, M3 0.198 -> 0.173, and
    # the validation check puts the trained decoder back. 600 updates at 1e-4: about the same (0.297), twice the time
    # (~35 s per model here for 300)
    # t3_scst_findings=1: the reward is sentence BLEU-4 + 1 x the findings F1 it states (data/findings.py), and the keep
    # rule compares validation BLEU-4 + findings F1. Same probe with --scst-findings 1, seeds 0-2 (means): BLEU-4
    # 0.295 -> 0.290, findings F1 0.817 -> 0.837, fine class named 0.691 -> 0.725 (w=0.5: 0.292 / 0.837 / 0.718)
    # patience=epochs: every model trains its measured schedule to the end and keeps its best validation checkpoint;
    # with patience 4, M1 at p=70 (seed 0) stopped at epoch 11 of 20 (validation T1 0.764; to the end: 0.853)
    # labeled_share=0.5: M3 at p=5 (seed 0, tau=2, alpha=0.5), validation score 0.265 natural (~2 %), 0.273 at 0.1,
    # 0.344 at 0.25, 0.358 at 0.5 (docs/METHOD.md)
    # alpha_grid=(0.5,): over the 5-seed KD grid (make kd-seeds, alpha in (0.5, 0.9)) validation chose 0.5 for M3 on
    # 4 of 5 seeds and split M2 3-2 with margins <= 0.026 of validation score; 0.5 costs at most 0.010 where 0.9 won,
    # and one student per model instead of two saves ~16 % of the demo's time (issue 29). The paper preset keeps a grid.
    "demo": Preset(
        # Budgets measured on validation (n = 258, seed 0, patience off; python -m mtkd_utils.plateau): p=5 and
        # p=15 level off after ~600 updates (p=15: best score 0.49 at 600, 0.53 within a 1,200-update schedule, T1
        # 0.88 -> 0.91); p=70 does not: 760 updates (20 epochs) left it under-fitted (train T1 0.82, melanoma
        # recall 0.12 on its own training images), 1,520 (40 epochs) score 0.59 / T1 0.95 / T2 0.78, 3,040 (80)
        # 0.65 / 0.98 / 0.87. 40 epochs is the demo's compromise with the CPU clock (p=70's M1 ~6 min here, docs/PERFORMANCE.md);
        # --set epochs=80 patience=80 trains p=70 to its measured plateau. The demo distils at p=5.
        # A student's 3 passes over the unlabeled pool are 864 updates (half of each batch labeled).
        config=dict(dataset="demo", batch_size=32, epochs=40, min_steps=600, val_every=30, student_passes=3.0,
                    unlabeled_per_epoch=0.5, tau_grid=(2.0,), alpha_grid=(0.5,), output_stride=16,
                    pool="mean+halves", beam_size=5, t3_scst_steps=300, t3_scst_lr=2e-4, t3_scst_findings=1.0,
                    patience=40,
                    labeled_share=0.5),
        # KD (M2, M3, M1b and M3's six other teachers) at p=5 only; M1 alone at p=15 and 70: the learning curve.
        # M1L (M1 at its validation plateau: the best of 1, 2 and 4 x M1's updates, steps.PLATEAU_SCHEDULES) costs
        # ~6 teacher runs: the headline's grid trains it (make kd-seeds: --models M1 M2 M3 M1b M1L), the demo not
        grid=dict(tasks=["T1+T2+T3"], p=[5, 15, 70], kd_p=[5], models=["M1", "M2", "M3", "M1b"], seeds=[0]),
        synthetic={"n_patients": 850, "n_eval_patients": 400, "n_unlabeled_patients": 1750, "image_size": 128,
                   "seed": 0}),
    # the paper's settings, for a GPU; Table 1 is this grid; paper-like scale (the paper had 3,502 patients):
    # its 15 % test split is already > 1,000 images
    "paper": Preset(
        config=dict(dataset="paper", image_size=224, backbone="resnet50", pretrained="imagenet", head_hidden=512,
                    embed_dim=256, lstm_hidden=512, epochs=30, student_passes=20.0, threads=0, batch_size=64, lr=1e-3,
                    patience=5, beam_size=3, min_word_freq=3),
        grid=dict(tasks=["T1+T2", "T1+T3", "T2+T3", "T1+T2+T3"], p=list(FRACTIONS), models=list(MODELS),
                  seeds=[0, 1, 2]),
        synthetic={"n_patients": 3500, "n_eval_patients": 0, "n_unlabeled_patients": 8000, "image_size": 256,
                   "seed": 0}),
    # DeepEyeNet (source="deepeyenet", data/README.md) on a GPU: the paper's model at 224 px with ImageNet weights
    # (random initialisation, with a note, where torchvision's cache lacks them). p is a share of all the labeled
    # images and is drawn inside the shipped train split, about 60 % of the images: p = 60 is (nearly) all of it,
    # and p = 70 would train on the same images as 60. Its 20 % test split (~3,000 images) resolves ~1.5 points.
    "deepeyenet": Preset(
        config=dict(dataset="deepeyenet", image_size=224, backbone="resnet50", pretrained="imagenet", head_hidden=512,
                    embed_dim=256, lstm_hidden=512, epochs=30, student_passes=20.0, threads=0, batch_size=64, lr=1e-3,
                    patience=5, beam_size=3, min_word_freq=3),
        grid=dict(tasks=["T1+T2+T3"], p=[15, 30, 60], kd_p=[15, 30], models=list(MODELS), seeds=[0, 1, 2]),
        synthetic=None),
}
SYNTHETIC_SIZES = {name: p.synthetic for name, p in PRESETS.items() if p.synthetic is not None}   # synthetic's SIZES


def get(name: str) -> Preset:
    """The named preset; ValueError listing the names otherwise."""
    if name not in PRESETS:
        raise ValueError(f"preset={name!r}: choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def config(name: str, **overrides: Any) -> Config:
    """The named preset's config, with overrides (e.g. from a notebook's parameters cell or --set)."""
    return Config(**{**get(name).config, **overrides})


def synthetic_size(dataset: str) -> dict[str, Any]:
    """The synthetic generator's arguments for Config.dataset (a preset name)."""
    if dataset not in SYNTHETIC_SIZES:
        raise ValueError(f"dataset={dataset!r}: synthetic sizes are {sorted(SYNTHETIC_SIZES)}"
                         + (f"; preset {dataset!r} is for real data: pass its source and source_path (data/README.md)"
                            if dataset in PRESETS else ""))
    return dict(PRESETS[dataset].synthetic)
