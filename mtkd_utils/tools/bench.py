"""Training-speed benchmark (issue 8): how close M1 and M3 training come to the model's own speed.

A script run on purpose, never a timed test:

    python -m mtkd_utils.bench                          # mobilenet_v3_small, 64 px, batch 64
    python -m mtkd_utils.bench --backbone resnet18
    python -m mtkd_utils.bench --paper --device cuda    # resnet50 at 224 px (meant for a GPU)
    python -m mtkd_utils.bench --knobs                  # instead: M1 under 1 vs all threads x determinism
    python -m mtkd_utils.bench --cpu-formats            # instead: M1 in channels_last and under bf16 autocast
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
import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..io import REPO_ROOT, git_commit
from ..train.runtime import setup_runtime
from .bench_setup import LABELED_SHARE, base_model, bench_config, setup, teacher_models
from .bench_timing import MODES, Mode, build_mode, time_modes, timed_pass

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
    p.add_argument("--cpu-formats", action="store_true",
                   help="instead: time M1 in channels_last memory format and under bf16 autocast against fp32")
    p.add_argument("--profile", choices=tuple(MODES), help="profile one pass of this mode instead (torch.profiler)")
    p.add_argument("--memory-of", choices=tuple(MODES), help=argparse.SUPPRESS)   # internal: one mode's peak memory
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    for name in ("batch_size", "steps", "repeats"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}={getattr(args, name)}: must be a positive integer")
    return args


# ---------------------------------------------------------------- one mode alone: memory and profile
def one_mode(name: str, cfg, data, device: torch.device) -> Mode:
    """Mode `name` on its own, with its teachers when it has any."""
    teachers = teacher_models(cfg, data, device) if name.startswith("M3") else None
    return build_mode(name, base_model(cfg, data), cfg, data, device, teachers)


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
    cfg, device, data = setup(args)
    mode = one_mode(name, cfg, data, device)
    gc.collect()                                        # cached mode: the teacher models are gone after the cache
    exact = reset_peak(device)
    before, _ = memory_now(device)
    timed_pass(mode, data, cfg, device, epoch=0)
    _, peak = memory_now(device)
    return {"peak_MB": peak, "train_MB": peak - before, "peak_reset": exact}


def memory_in_subprocess(name: str, argv: list[str]) -> dict[str, float]:
    """peak_memory(name) in a fresh python, so that no other mode's allocations count."""
    cmd = [sys.executable, "-m", "mtkd_utils.tools.bench", *argv, "--memory-of", name]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"memory run of {name} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- the run
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
    cfg, device, data = setup(args)
    info = {**machine(device), "model": f"{cfg.backbone}, T1+T2+T3, {cfg.image_size} px, batch {cfg.batch_size}, "
            f"head {cfg.head_hidden}, LSTM {cfg.lstm_hidden}, vocab {len(data.vocab)}, max_len {cfg.max_len}, top-k {cfg.t3_topk}",
            "data": f"{len(data.images)} synthetic images in memory ({LABELED_SHARE:.0%} labeled), {args.steps} steps per pass, "
            f"{args.repeats} repeats; ceiling and M1 on labeled rows, M3 on labeled and unlabeled rows half and half"}
    base = base_model(cfg, data)
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
    "on": (True, True),                 # what runtime.setup_runtime sets on CPU (the fill is torch's default)
    "on, no NaN fill": (True, False),   # same results; new tensors are not pre-filled with NaN
}


def set_determinism(label: str) -> None:
    on, fill = DETERMINISM[label]
    torch.use_deterministic_algorithms(on)
    torch.utils.deterministic.fill_uninitialized_memory = fill


def knobs(args: argparse.Namespace) -> pd.DataFrame:
    """M1 images/s under 1 thread vs all usable cores x the DETERMINISM settings, interleaved in one process."""
    cfg, device, data = setup(args)
    mode = build_mode("M1", base_model(cfg, data), cfg, data, device)
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


CPU_FORMATS = {   # label -> (the model's memory format, bf16 autocast); runtime.autocast keeps fp32 on a CPU
    "fp32": (torch.contiguous_format, False),
    "fp32, channels_last": (torch.channels_last, False),
    "bf16 autocast": (torch.contiguous_format, True),
}


def cpu_formats(args: argparse.Namespace) -> pd.DataFrame:
    """M1 images/s in channels_last memory format and under bf16 autocast against plain fp32, interleaved in one
    process: the CPU settings that could speed the demo up (issue 29)."""
    cfg, device, data = setup(args)
    mode = build_mode("M1", base_model(cfg, data), cfg, data, device)
    labels = list(CPU_FORMATS)
    times: dict[str, list[float]] = {label: [] for label in labels}
    for r in range(args.repeats + 1):                   # the first round is a warm-up
        for label in labels[r % len(labels):] + labels[: r % len(labels)]:
            memory_format, bf16 = CPU_FORMATS[label]
            mode.model.to(memory_format=memory_format)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                sec = timed_pass(mode, data, cfg, device, epoch=r, limit=None if r else 2 * cfg.batch_size)
            if r:
                times[label].append(sec)
    mode.model.to(memory_format=torch.contiguous_format)
    n, base = len(mode.rows), float(np.median(times[labels[0]]))
    return pd.DataFrame([{"setting": label, "M1 images/s": round(n / float(np.median(v)), 1),
                          "speed-up": round(base / float(np.median(v)), 2)} for label, v in times.items()])


def profile(name: str, args: argparse.Namespace, rows_shown: int = 20) -> str:
    """torch.profiler's op table (self CPU time) for one pass of mode `name`, after a warm-up pass."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile
    cfg, device, data = setup(args)
    mode = one_mode(name, cfg, data, device)
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
    elif args.knobs or args.cpu_formats:
        print("\n".join(f"{k:38s} {v}" for k, v in machine(setup_runtime(bench_config(args))).items()))
        print("\n" + (knobs(args) if args.knobs else cpu_formats(args)).to_string(index=False))
    else:
        show(benchmark(args))


if __name__ == "__main__":
    main()
