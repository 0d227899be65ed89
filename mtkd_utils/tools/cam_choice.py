"""Which CAM localises: the pointing game of each (method, encoder block) on the VALIDATION split of a finished run,
for the trained model and its randomised copy — the probe that chooses 05's `method` and `cam_stride` (run on
purpose; never reads the test split).

    python -m mtkd_utils.cam_choice outputs/demo --p 70 --seed 0 --model M1
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence

import pandas as pd
import torch

from .. import runs
from ..analysis import cam, localisation, views
from ..config import TASKS
from ..data.dataset import load_mask
from ..runs import RunKey
from ..train import reload


def validation_images(experiment_dir, data, normal: str = "normal"):
    """The abnormal validation images with a lesion mask: (images (N, 3, H, W), masks, their true coarse class
    indices, their disease names)."""
    rows, x = views.held_out_images(data, "val")
    masks = [load_mask(runs.manifest_path(experiment_dir), r.image, r.mask, x.shape[-1]) for r in rows.itertuples()]
    scored, targets = views.cam_targets(rows, masks, data.labels.coarse, "T1", normal)
    return x[scored], [masks[i] for i in scored], targets, rows.coarse.iloc[scored]


def validation_scores(experiment_dir, key: RunKey, methods: Sequence[str] = ("gradcam", "layercam"),
                      blocks: Sequence[int] | None = None, seed: int = 0) -> pd.DataFrame:
    """One row per (block, method): pointing game and energy of the true class's T1 CAM on validation, for the
    trained model and a randomised copy (Adebayo et al. 2018), with their chance levels. blocks: encoder block
    indices (default: every block from stride 8 down)."""
    model, data = reload.load_student(experiment_dir, key, "cpu")
    x, masks, targets, diseases = validation_images(experiment_dir, data)
    if len(x) == 0:
        raise ValueError(f"{experiment_dir}: no abnormal validation image has a lesion mask; localisation cannot "
                         "be scored on this data")
    size = x.shape[-1]
    strides = cam.block_strides(model, size)
    blocks = [b for b, s in enumerate(strides) if s >= 8] if blocks is None else list(blocks)
    fovs = [localisation.fov_mask(image) for image in x.permute(0, 2, 3, 1).numpy()]
    models = {"trained": model, "randomised": cam.randomized_copy(model, seed)}
    rows = []
    for block in blocks:
        for method in methods:
            scores = {name: localisation.localisation_table(
                cam.compute_cams(m, x, "T1", targets, method=method, allow_constant=True, block=block),
                masks, {"disease": diseases}, fovs=fovs).loc["all"] for name, m in models.items()}
            t, r = scores["trained"], scores["randomised"]
            rows.append(dict(block=block, stride=strides[block], map=f"{size // strides[block]}x{size // strides[block]}",
                             method=method, n_scored=int(t.n_scored), pointing=t.pointing,
                             randomised_pointing=r.pointing, pointing_chance=t.pointing_chance, energy=t.energy,
                             mask_share=t.mask_share))
    return pd.DataFrame(rows)


def run_parser(description: str) -> argparse.ArgumentParser:
    """The arguments every validation probe takes: an experiment and the finished run to probe in it."""
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("experiment", help="an experiment folder with finished runs, e.g. outputs/demo")
    ap.add_argument("--p", type=float, default=70)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="M1")
    ap.add_argument("--tasks", default="+".join(TASKS))
    return ap


def run_key(args: argparse.Namespace) -> RunKey:
    return RunKey(tuple(args.tasks.split("+")), args.p, args.seed, args.model)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    ap = run_parser(__doc__)
    ap.add_argument("--methods", nargs="+", default=["gradcam", "layercam"])
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    key = run_key(args)
    table = validation_scores(args.experiment, key, args.methods)
    print(f"{key.name}, seed {key.seed}: the true class's T1 CAM on {table.n_scored.iloc[0]} abnormal validation "
          "images with a lesion mask")
    print(table.round(3).to_string(index=False))
    return table


if __name__ == "__main__":
    main()
