"""How far the numbers move when only the CPU kernels change (a probe run on purpose; validation split only).

    python -m mtkd_utils.tools.cpu_kernels outputs/demo --p 5
    python -m mtkd_utils.tools.cpu_kernels outputs/demo --p 5 --variants native native avx2 scalar --updates 300

Each variant trains the same run — M1 at fraction p: the preset's recipe, seed and data, one commit, one thread —
in a fresh Python process whose environment selects the CPU kernels (VARIANTS: ATen's vectorised kernels, oneDNN's
convolutions and MKL's BLAS, as a machine with fewer instruction sets would), then predicts the validation split.
Each variant is compared with the first: identical weights or not, the largest weight difference, the share of
validation images whose T1 / T2 label or sentence changes, the validation metrics' differences and the largest
difference along the validation curve. `native` twice is the control: the same machine and build reproduce byte
for byte.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

# the environment of each variant; `native`: this machine's best (torch.backends.cpu.get_cpu_capability())
VARIANTS = {
    "native": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "aten_avx2": {"ATEN_CPU_CAPABILITY": "avx2"},          # ATen's own kernels only
    "scalar": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
}
KERNEL_ENV = sorted({k for env in VARIANTS.values() for k in env})
METRICS = ("T1_acc", "T2_acc", "T3_bleu4")


def check_variants(names: list[str]) -> list[str]:
    """The named variants; ValueError listing the known ones (at least two: the first is the reference)."""
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown or len(names) < 2:
        raise ValueError(f"variants {names}: give at least two of {sorted(VARIANTS)} (the first is the reference)")
    return list(names)


def train_once(experiment_dir: str | Path, p: float, preset: str, updates: int | None, out: Path) -> dict:
    """In this process: M1 at p as its teacher run trains it (or `updates` long), then its validation predictions,
    history and weights into `out`; returns what it wrote (weights digest, kernels, validation metrics)."""
    import torch

    from ..config import TASKS
    from ..data.dataset import load_data
    from ..io import write_json
    from ..presets import config as preset_config
    from ..train.engine import MultiTaskLoss, TrainPlan, fit, predict
    from ..train.metrics import task_metrics
    from ..train.runtime import eval_batch_size, setup_runtime
    from ..train.steps import new_model

    cfg = preset_config(preset)
    device = setup_runtime(cfg)
    data = load_data(experiment_dir, p, cfg)
    own_seed = cfg.model_seed("teacher", TASKS)
    model = new_model(cfg, data, TASKS, own_seed)
    with tempfile.TemporaryDirectory() as scratch:
        history = fit(model, data, TrainPlan(data.rows("train"), cfg.epochs, updates=updates),
                      MultiTaskLoss(data, cfg.task_weights), cfg.updated(seed=own_seed), scratch, desc=f"p={p:g}")
    preds = predict(model.eval(), data, data.rows("val"), eval_batch_size(cfg), cfg.max_len, cfg.beam_size, device)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    digest = hashlib.sha256(b"".join(v.numpy().tobytes() for v in state.values())).hexdigest()
    out.mkdir(parents=True, exist_ok=True)
    torch.save(state, out / "weights.pt")
    preds[["image_id", "coarse_pred", "fine_pred", "text_pred"]].to_csv(out / "val_predictions.csv", index=False)
    history.to_csv(out / "history.csv", index=False)
    record = dict(capability=torch.backends.cpu.get_cpu_capability(), torch=torch.__version__, weights=digest,
                  env={k: os.environ[k] for k in KERNEL_ENV if k in os.environ},
                  val={m: v for m, v in task_metrics(preds, data.labels).items() if m in METRICS})
    write_json(record, out / "record.json")
    return record


def run_variant(name: str, experiment_dir: Path, p: float, preset: str, updates: int | None, out: Path) -> dict:
    """train_once in a new process with the variant's kernel environment (read when torch loads, so never here)."""
    env = {k: v for k, v in os.environ.items() if k not in KERNEL_ENV} | VARIANTS[name]
    cmd = [sys.executable, "-m", "mtkd_utils.tools.cpu_kernels", str(experiment_dir), "--p", f"{p:g}", "--preset",
           preset, "--worker", str(out)] + (["--updates", str(updates)] if updates else [])
    subprocess.run(cmd, env=env, check=True)
    return json.loads((out / "record.json").read_text())


def compare(reference: Path, other: Path) -> dict:
    """What moved between two variants' outputs: weights, validation predictions, metrics, the validation curve."""
    import torch

    a, b = torch.load(reference / "weights.pt"), torch.load(other / "weights.pt")
    max_diff = max(float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0 for k in a)
    pa, pb = (pd.read_csv(d / "val_predictions.csv", keep_default_na=False) for d in (reference, other))
    ha, hb = (pd.read_csv(d / "history.csv") for d in (reference, other))
    ra, rb = (json.loads((d / "record.json").read_text()) for d in (reference, other))
    flips = {f"{task}_changed": float((pa[col] != pb[col]).mean())
             for task, col in (("T1", "coarse_pred"), ("T2", "fine_pred"), ("T3", "text_pred"))}
    return dict(capability=rb["capability"], identical_weights=ra["weights"] == rb["weights"],
                max_weight_diff=max_diff, **flips, n_val=len(pa),
                **{f"d_{m}": rb["val"][m] - ra["val"][m] for m in METRICS if m in ra["val"]},
                max_d_val_score=float(np.abs(ha.val_score.to_numpy() - hb.val_score.to_numpy()).max()))


def measure(experiment_dir: str | Path, p: float, variants: list[str], preset: str = "demo",
            updates: int | None = None, out_dir: str | Path | None = None) -> pd.DataFrame:
    """Every variant trained in its own process, each compared with the first: one row per variant."""
    variants, experiment_dir = check_variants(variants), Path(experiment_dir).resolve()
    if not (experiment_dir / "data" / "dataset.json").exists():
        raise FileNotFoundError(f"{experiment_dir}: not a prepared experiment (no data/dataset.json); run "
                                "notebooks/01_data_prep.ipynb or the grid first")
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(out_dir or scratch)
        folders = [root / f"{i}_{name}" for i, name in enumerate(variants)]
        records = [run_variant(n, experiment_dir, p, preset, updates, f) for n, f in zip(variants, folders)]
        rows = [dict(variant=n, **{f"val_{m}": r["val"].get(m) for m in METRICS}, **compare(folders[0], f))
                for n, r, f in zip(variants, records, folders)]
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> pd.DataFrame | None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("experiment", help="a prepared experiment folder (01_data_prep ran), e.g. outputs/demo")
    ap.add_argument("--p", type=float, default=5.0, help="training fraction, %%")
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--updates", type=int, default=None, help="schedule length (default: M1's own)")
    ap.add_argument("--variants", nargs="+", default=["native", "native", "avx2"], help=f"of {sorted(VARIANTS)}")
    ap.add_argument("--out", default=None, help="keep each variant's weights, predictions and history here")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)   # one variant's training, in its process
    args = ap.parse_args(argv)
    if args.worker:
        train_once(args.experiment, args.p, args.preset, args.updates, Path(args.worker))
        return None
    table = measure(args.experiment, args.p, args.variants, args.preset, args.updates, args.out)
    print(table.to_string(index=False))
    return table


if __name__ == "__main__":
    main()
