"""Training-speed benchmark (issue 8): how close M1 and M3 training come to the model's own speed.

A script run on purpose, never a timed test:

    python -m mtkd_utils.bench                          # mobilenet_v3_small, 64 px, batch 64
    python -m mtkd_utils.bench --backbone resnet18
    python -m mtkd_utils.bench --paper --device cuda    # resnet50 at 224 px (meant for a GPU)
    python -m mtkd_utils.bench --knobs                  # instead: M1 under 1 vs all threads x determinism
    python -m mtkd_utils.bench --profile M3-cached      # instead: where one pass of a mode spends its time

One run builds one synthetic in-memory dataset (random uint8 images, labels and sentences: no files)
and one freshly initialised T1+T2+T3 model; every mode trains its own copy of that model, `--steps` batches
a pass: the ceiling and M1 on labeled rows (as M1, a teacher, trains), the M3 modes on labeled and unlabeled
rows half and half (as a student trains):

  ceiling    forward + backward + AdamW step on float tensors made before the clock starts
  M1         engine.train_one_epoch without teachers: image cache -> batches -> augment -> MultiTaskLoss
  M3-cached  the same with CachedTeachers: distill.build_soft_targets of 7 teachers (one per task subset)
  M3-online  the same with OnlineTeachers: all 7 teachers run on every student batch (the paper's code)

The modes take turns inside each repeat, so a load spike from other processes hits all of them; the
table shows medians over repeats and the ratios are medians of per-repeat ratios. Peak memory is
measured for each mode in a fresh subprocess, so each peak is that mode's own.
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import losses
from .config import TASKS, Config, task_subsets
from .data import FundusData, batch_rows, image_batch
from .distill import CachedTeachers, OnlineTeachers, build_soft_targets, load_soft_targets
from .engine import (MultiTaskLoss, TrainBatches, autocast, cosine_schedule, epoch_generator, eval_batch_size,
                     setup_runtime, train_one_epoch)
from .presets import config as preset_config
from .training import new_model
from .io import git_commit
from .manifest import LabelMap
from .text import EOS_ID, PAD_ID, SOS_ID, SPECIALS, Vocab, trim

MODES = {   # name -> what one pass measures
    "ceiling": "fwd+bwd+AdamW on float tensors already in memory",
    "M1": "train_one_epoch, no teachers",
    "M3-cached": "train_one_epoch, 7 cached teachers",
    "M3-online": "train_one_epoch, 7 online teachers",
}
N_COARSE, N_FINE, N_WORDS = 5, 45, 100   # about the synthetic demo set's label map and vocabulary
LABELED_SHARE = 0.5    # share of the rows that carry labels; the rest play the unlabeled pool
SENTENCE_WORDS = (4, 20)   # T3 sentence length in words, uniform (the synthetic set: median ~10)
TAU = 2.0              # KD temperature (any value costs the same)
TARGETS = {"M1 / ceiling (images/s)": (">=", 0.85), "M3-cached / M1 (time per step)": ("<=", 1.15),
           "M3-online / M1 (time per step)": ("", None)}


# ---------------------------------------------------------------- options
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m mtkd_utils.bench", description=__doc__.split("\n")[0])
    p.add_argument("--backbone", help="torchvision backbone (default mobilenet_v3_small; resnet50 with --paper)")
    p.add_argument("--image-size", type=int, help="pixels, square (default 64; 224 with --paper)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=10, help="training steps per timed pass")
    p.add_argument("--repeats", type=int, default=5, help="timed passes per mode (the table shows medians)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto: CUDA when visible")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: the preset's; 0: torch's default, all cores)")
    p.add_argument("--paper", action="store_true", help="the paper preset: resnet50 at 224 px, larger heads")
    p.add_argument("--no-memory", action="store_true", help="skip the per-mode peak-memory subprocesses")
    p.add_argument("--knobs", action="store_true", help="instead: time M1 under 1 vs all threads x determinism settings")
    p.add_argument("--profile", choices=tuple(MODES), help="profile one pass of this mode instead (torch.profiler)")
    p.add_argument("--memory-of", choices=tuple(MODES), help=argparse.SUPPRESS)   # internal: one mode's peak memory
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    for name in ("batch_size", "steps", "repeats"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}={getattr(args, name)}: must be a positive integer")
    return args


def bench_config(args: argparse.Namespace) -> Config:
    """The demo (or paper) preset with the benchmark's overrides; random init (no weights are needed to time)."""
    over = dict(pretrained=None, device=args.device, batch_size=args.batch_size)
    over.update({k: v for k, v in (("backbone", args.backbone), ("image_size", args.image_size), ("threads", args.threads))
                 if v is not None})
    return preset_config("paper" if args.paper else "demo", **over)


# ---------------------------------------------------------------- data and models
def synthetic_data(n: int, size: int, max_len: int, seed: int = 0) -> FundusData:
    """n random uint8 images with random labels and sentences; the first LABELED_SHARE of the rows labeled."""
    g = np.random.default_rng(seed)
    coarse = [f"c{i}" for i in range(N_COARSE)]
    labels = LabelMap.from_pairs(coarse, [(f"f{j}", coarse[j % N_COARSE]) for j in range(N_FINE)])
    vocab = Vocab(f"w{i}" for i in range(N_WORDS))
    lab = np.arange(n) < max(1, round(n * LABELED_SHARE))
    t3 = np.full((n, max_len), PAD_ID, dtype=np.int64)
    for i in np.flatnonzero(lab):
        words = g.integers(len(SPECIALS), len(vocab), g.integers(SENTENCE_WORDS[0], SENTENCE_WORDS[1] + 1))[: max_len - 2]
        t3[i, : len(words) + 2] = [SOS_ID, *words, EOS_ID]
    targets = {"T1": torch.from_numpy(np.where(lab, g.integers(0, N_COARSE, n), -1)),
               "T2": torch.from_numpy(np.where(lab, g.integers(0, N_FINE, n), -1)), "T3": torch.from_numpy(t3)}
    roles = pd.DataFrame({"role": np.where(lab, "train", "unlabeled")})
    images = g.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    return FundusData(images, pd.DataFrame(index=range(n)), roles, labels, vocab, targets, 15.0)


def teacher_models(cfg: Config, data: FundusData, device: torch.device) -> list:
    """One freshly initialised teacher per non-empty subset of T1+T2+T3: 7 models.

    Untrained, their greedy sentences run to max_len (a trained teacher stops at <eos>): the worst case
    for the online teachers' decoding and for the length of the sentences the student distils along.
    """
    return [new_model(cfg, data, subset, seed=1 + i).to(device).eval() for i, subset in enumerate(task_subsets(TASKS))]


def cached_teachers(models: list, cfg: Config, data: FundusData, rows: np.ndarray, device: torch.device) -> CachedTeachers:
    """The teachers' soft targets, written by build_soft_targets and read back as the students read them."""
    with tempfile.TemporaryDirectory() as tmp:
        path = build_soft_targets(models, data, rows, Path(tmp) / "soft_targets.pt", cfg.max_len, cfg.t3_topk, eval_batch_size(cfg), device)
        return load_soft_targets(path, len(data.images), device)


@dataclass
class Mode:
    """One benchmarked way of training: its own copy of the model, optimizer and teachers."""
    name: str
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    rows: np.ndarray              # what one pass trains on (mode_rows)
    teachers: CachedTeachers | OnlineTeachers | None = None
    setup_s: float = 0.0          # one-off cost before training (the soft-target cache)


def mode_rows(name: str, data: FundusData) -> np.ndarray:
    """What each mode trains on, as in a real run: the ceiling and M1 labeled rows only (M1 is a teacher,
    trained on the labeled fraction); the M3 modes as many rows, half labeled and half unlabeled (a student)."""
    labeled = data.is_labeled_train(np.arange(len(data.images))).numpy()
    lab, unl = np.flatnonzero(labeled), np.flatnonzero(~labeled)
    return lab if name in ("ceiling", "M1") else np.sort(np.concatenate([lab[: len(lab) // 2], unl[: len(lab) - len(lab) // 2]]))


def build_mode(name: str, base: torch.nn.Module, cfg: Config, data: FundusData,
               device: torch.device, teachers: list | None = None) -> Mode:
    """A copy of `base` ready to train in mode `name`; M3 modes need the 7 teacher models."""
    model = copy.deepcopy(base).to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)   # as engine.fit does
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    mode = Mode(name, model, optimizer, cosine_schedule(optimizer, total_steps=10**6, warmup=1), mode_rows(name, data))
    if name == "M3-online":
        mode.teachers = OnlineTeachers(teachers, cfg.max_len, cfg.t3_topk)
    elif name == "M3-cached":
        t0 = time.perf_counter()
        mode.teachers = cached_teachers(teachers, cfg, data, mode.rows, device)
        mode.setup_s = time.perf_counter() - t0
    return mode


# ---------------------------------------------------------------- timing
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def ceiling_batches(data: FundusData, rows: np.ndarray, cfg: Config, device: torch.device, epoch: int) -> list:
    """train_one_epoch's batches of this epoch as float images and targets (sentences trimmed as MultiTaskLoss
    trims them), made before the clock starts."""
    g = epoch_generator(cfg.seed, epoch)   # the same seed: the same mix of rows per batch
    out = []
    for b in batch_rows(rows, cfg.batch_size, shuffle=True, generator=g):
        y = {t: data.targets[t][b].to(device) for t in TASKS}
        out.append((_as_trained(image_batch(data.images, b, device), device), {**y, "T3": trim(y["T3"])}))
    return out


def _as_trained(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The memory layout train_one_epoch feeds the model: channels_last on CUDA; on CPU image_batch's
    permute already gives channels_last strides (about 25% faster here than a contiguous NCHW copy)."""
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x


def ceiling_step(model, optimizer, x: torch.Tensor, y: dict[str, torch.Tensor], device: torch.device) -> None:
    """The model's own work for one batch: T1 + T2 + T3 losses, backward, optimizer step."""
    with autocast(device):
        out = model(x, y["T3"])
        loss = (losses.ce(out["T1"], y["T1"]) + losses.ce(out["T2"], y["T2"]) + losses.caption_ce(out["T3"], y["T3"])).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def timed_pass(mode: Mode, data: FundusData, cfg: Config, device: torch.device, epoch: int, limit: int | None = None) -> float:
    """Seconds for one pass of `mode` over its rows (the first `limit` of them); a pass is one engine epoch."""
    rows = mode.rows[:limit]
    batches = ceiling_batches(data, rows, cfg, device, epoch) if mode.name == "ceiling" else None
    sync(device)
    t0 = time.perf_counter()
    if batches is not None:
        for x, y in batches:
            ceiling_step(mode.model, mode.optimizer, x, y, device)
    else:
        loss_fn = MultiTaskLoss(data, cfg.task_weights, cfg.alpha_grid[-1], TAU, mode.teachers)
        train_one_epoch(mode.model, TrainBatches(data, rows, cfg, epoch, device), mode.optimizer, mode.scheduler, loss_fn,
                        desc=mode.name)
    sync(device)
    return time.perf_counter() - t0


def time_modes(modes: list[Mode], data: FundusData, cfg: Config, device: torch.device, repeats: int) -> pd.DataFrame:
    """Seconds per pass, one row per repeat and a column per mode; the modes take turns (order rotates)."""
    for m in modes:                                     # warm-up: allocator, kernels, thread pool
        timed_pass(m, data, cfg, device, epoch=0, limit=2 * cfg.batch_size)
    out = []
    for r in range(repeats):
        turn = modes[r % len(modes):] + modes[: r % len(modes)]
        out.append({m.name: timed_pass(m, data, cfg, device, epoch=r + 1) for m in turn})
    return pd.DataFrame(out)[[m.name for m in modes]]


# ---------------------------------------------------------------- memory
def _status_mb(key: str) -> float:
    """VmRSS / VmHWM (peak RSS) of this process from /proc/self/status, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def reset_peak(device: torch.device) -> bool:
    """Start a new peak; False when the CPU peak cannot be reset (it then counts from process start)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        return True
    try:
        Path("/proc/self/clear_refs").write_text("5")   # Linux: resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def memory_now(device: torch.device) -> tuple[float, float]:
    """(current, peak) MB: tensors allocated by torch on CUDA, the process RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated() / 2**20, torch.cuda.max_memory_allocated() / 2**20
    return _status_mb("VmRSS"), _status_mb("VmHWM")


def peak_memory(name: str, args: argparse.Namespace) -> dict[str, float]:
    """One mode's memory in this process: set up, start a new peak, train one pass; MB."""
    cfg = bench_config(args)
    device = setup_runtime(cfg)
    data = setup_data(cfg, args.steps)
    teachers = teacher_models(cfg, data, device) if name.startswith("M3") else None
    mode = build_mode(name, new_model(cfg, data, TASKS, seed=0), cfg, data, device, teachers)
    del teachers                                        # cached mode: the teacher models are gone after the cache
    gc.collect()
    exact = reset_peak(device)
    before, _ = memory_now(device)
    timed_pass(mode, data, cfg, device, epoch=0)
    _, peak = memory_now(device)
    return {"peak_MB": peak, "train_MB": peak - before, "peak_reset": exact}


def memory_in_subprocess(name: str, argv: list[str]) -> dict[str, float]:
    """peak_memory(name) in a fresh python, so that no other mode's allocations count."""
    cmd = [sys.executable, "-m", "mtkd_utils.bench", *argv, "--memory-of", name]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    if done.returncode != 0:
        raise RuntimeError(f"memory run of {name} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- the run
def setup_data(cfg: Config, steps: int) -> FundusData:
    """2 * `steps` batches of rows, half labeled: every mode's pass is `steps` batches (mode_rows)."""
    return synthetic_data(2 * steps * cfg.batch_size, cfg.image_size, cfg.max_len)


def machine(device: torch.device) -> dict[str, str]:
    """What the figures were measured on."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown") if Path("/proc/cpuinfo").exists() else "unknown"
    info = {"cpu": cpu, "cores (usable / total)": f"{len(os.sched_getaffinity(0))} / {os.cpu_count()}",
            "code (git commit)": git_commit(), "torch": torch.__version__, "torch threads": str(torch.get_num_threads()),
            "device": str(device), "deterministic algorithms": str(torch.are_deterministic_algorithms_enabled()),
            "load average (1/5/15 min) at start": " ".join(f"{x:.2f}" for x in os.getloadavg())}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def results_table(times: pd.DataFrame, steps: int, batch_size: int, memory: dict[str, dict] | None) -> pd.DataFrame:
    """Medians over repeats: images/s, ms per step (with the fastest and slowest repeat) and memory:
    peak MB (CPU: the process's peak RSS; CUDA: torch's peak allocation) and train MB (that peak minus
    what was held just before the training pass)."""
    step_ms = times * 1000 / steps
    table = pd.DataFrame({"measures": pd.Series(MODES),
                          "images/s": (steps * batch_size / times).median(),
                          "ms/step": step_ms.median(), "ms/step min": step_ms.min(), "ms/step max": step_ms.max()})
    if memory:
        table["peak MB"] = pd.Series({k: v["peak_MB"] for k, v in memory.items()})
        table["train MB"] = pd.Series({k: v["train_MB"] for k, v in memory.items()})
    return table.loc[list(times.columns)].round(1)


def ratios_table(times: pd.DataFrame) -> pd.DataFrame:
    """Medians of per-repeat ratios (each ratio compares passes run back to back) against the targets."""
    values = {"M1 / ceiling (images/s)": times["ceiling"] / times["M1"],
              "M3-cached / M1 (time per step)": times["M3-cached"] / times["M1"],
              "M3-online / M1 (time per step)": times["M3-online"] / times["M1"]}
    rows = []
    for name, v in values.items():
        op, target = TARGETS[name]
        med = float(v.median())
        met = "" if target is None else ("yes" if (med >= target if op == ">=" else med <= target) else "NO")
        rows.append({"ratio": name, "median": round(med, 3), "min": round(float(v.min()), 3), "max": round(float(v.max()), 3),
                     "target": f"{op} {target}" if target else "-", "met": met})
    return pd.DataFrame(rows).set_index("ratio")


def benchmark(args: argparse.Namespace) -> dict:
    """Time every mode on the same data and the same initial model; measure each mode's peak memory."""
    cfg = bench_config(args)
    device = setup_runtime(cfg)
    data = setup_data(cfg, args.steps)
    info = {**machine(device), "model": f"{cfg.backbone}, T1+T2+T3, {cfg.image_size} px, batch {cfg.batch_size}, "
            f"head {cfg.head_hidden}, LSTM {cfg.lstm_hidden}, vocab {len(data.vocab)}, max_len {cfg.max_len}, top-k {cfg.t3_topk}",
            "data": f"{len(data.images)} synthetic images in memory ({LABELED_SHARE:.0%} labeled), {args.steps} steps per pass, "
            f"{args.repeats} repeats; ceiling and M1 on labeled rows, M3 on labeled and unlabeled rows half and half"}
    base = new_model(cfg, data, TASKS, seed=0)
    teachers = teacher_models(cfg, data, device)
    modes = [build_mode(name, base, cfg, data, device, teachers) for name in MODES]
    info["soft-target cache (7 teachers, once)"] = f"{modes[2].setup_s:.1f} s for {len(modes[2].rows)} images"
    times = time_modes(modes, data, cfg, device, args.repeats)
    info["load average (1/5/15 min) at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    memory = None if args.no_memory else {name: memory_in_subprocess(name, args.argv) for name in MODES}
    return {"machine": info, "times": times, "table": results_table(times, args.steps, cfg.batch_size, memory),
            "ratios": ratios_table(times)}


# ---------------------------------------------------------------- extras: knobs and profile
DETERMINISM = {   # label -> (torch.use_deterministic_algorithms, torch.utils.deterministic.fill_uninitialized_memory)
    "off": (False, False),
    "on": (True, True),                 # what engine.setup_runtime sets on CPU (the fill is torch's default)
    "on, no NaN fill": (True, False),   # same results; new tensors are not pre-filled with NaN
}


def set_determinism(label: str) -> None:
    on, fill = DETERMINISM[label]
    torch.use_deterministic_algorithms(on)
    torch.utils.deterministic.fill_uninitialized_memory = fill


def knobs(args: argparse.Namespace) -> pd.DataFrame:
    """M1 images/s under 1 thread vs all usable cores x the DETERMINISM settings, interleaved in one process."""
    cfg = bench_config(args)
    device = setup_runtime(cfg)
    data = setup_data(cfg, args.steps)
    mode = build_mode("M1", new_model(cfg, data, TASKS, seed=0), cfg, data, device)
    threads0, det0 = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    fill0 = torch.utils.deterministic.fill_uninitialized_memory
    settings = [(t, d) for t in sorted({1, len(os.sched_getaffinity(0))}) for d in DETERMINISM]
    times: dict[tuple, list[float]] = {s: [] for s in settings}
    try:
        for r in range(args.repeats + 1):               # the first round is a warm-up
            for t, d in settings[r % len(settings):] + settings[: r % len(settings)]:
                torch.set_num_threads(t)
                set_determinism(d)
                sec = timed_pass(mode, data, cfg, device, epoch=r, limit=None if r else 2 * cfg.batch_size)
                if r:
                    times[(t, d)].append(sec)
    finally:
        torch.set_num_threads(threads0)
        torch.use_deterministic_algorithms(det0)
        torch.utils.deterministic.fill_uninitialized_memory = fill0
    n = len(mode.rows)
    return pd.DataFrame([{"threads": t, "deterministic": d, "M1 images/s": round(n / float(np.median(v)), 1),
                          "slowest": round(n / max(v), 1), "fastest": round(n / min(v), 1)} for (t, d), v in times.items()])


def profile(name: str, args: argparse.Namespace, rows_shown: int = 20) -> str:
    """torch.profiler's op table (self CPU time) for one pass of mode `name`, after a warm-up pass."""
    from torch.profiler import ProfilerActivity, profile as torch_profile
    cfg = bench_config(args)
    device = setup_runtime(cfg)
    data = setup_data(cfg, args.steps)
    teachers = teacher_models(cfg, data, device) if name.startswith("M3") else None
    mode = build_mode(name, new_model(cfg, data, TASKS, seed=0), cfg, data, device, teachers)
    timed_pass(mode, data, cfg, device, epoch=0, limit=2 * cfg.batch_size)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        timed_pass(mode, data, cfg, device, epoch=1)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows_shown)


def show(result: dict) -> None:
    pd.set_option("display.width", 200)
    print("\n".join(f"{k:38s} {v}" for k, v in result["machine"].items()))
    load, cores = float(result["machine"]["load average (1/5/15 min) at start"].split()[0]), len(os.sched_getaffinity(0))
    if load > cores / 2:
        print(f"note: other processes were using the CPU when this run started (load {load:.2f} on {cores} cores): "
              "figures are noisy, and torch threads beyond the free cores slow training down badly (see --knobs)")
    print("\n" + result["table"].to_string())
    print("\n" + result["ratios"].to_string())


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.memory_of:
        print(json.dumps(peak_memory(args.memory_of, args)))
    elif args.profile:
        print(profile(args.profile, args))
    elif args.knobs:
        print("\n".join(f"{k:38s} {v}" for k, v in machine(setup_runtime(bench_config(args))).items()))
        print("\n" + knobs(args).to_string(index=False))
    else:
        show(benchmark(args))


if __name__ == "__main__":
    main()
