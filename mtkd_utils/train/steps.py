"""The workbook's training steps: teachers (02), students M1/M2/M3 and their one test read (03).

Each step writes into the experiment folder (mtkd_utils.runs, docs/ARCHITECTURE.md) and skips work already done,
so any notebook can be re-run alone and a killed run resumes.
"""
from __future__ import annotations

import math
import time
from itertools import product
from pathlib import Path

import pandas as pd
import torch

from .. import runs
from ..config import Config, task_key, task_subsets
from ..data.dataset import FundusData, load_data
from ..io import add_seconds, read_json, write_csv, write_json, write_npy
from ..runs import RunKey
from . import scst
from .engine import MultiTaskLoss, TrainPlan, fit, predict
from .metrics import confusion, disease_vs_normal, per_class_auroc, per_disease, task_metrics
from .model import MTLModel, build_model
from .reload import load_model, student_teachers, teachers_for
from .retrieval import RETRIEVAL_FILE, retrieval_table
from .runtime import eval_batch_size, pick_device

BLEU_NOTE = ("T3_bleu1..4: nltk corpus BLEU, no smoothing; "
             "T3_sentence_bleu: mean nltk sentence BLEU-4, smoothing method1")


def write_split(run: Path, data: FundusData) -> None:
    """The exact split of this run, beside its results."""
    write_csv(data.roles[["image_id", "patient_id", "role"]], run / "split.csv")


def new_model(cfg: Config, data: FundusData, tasks: tuple[str, ...], seed: int, student: bool = False) -> MTLModel:
    torch.manual_seed(seed)
    return build_model(cfg, tasks, len(data.labels.coarse), len(data.labels.fine), len(data.vocab), student)


def student_epochs(cfg: Config) -> int:
    """Student epochs: student_passes over the unlabeled pool, unlabeled_per_epoch of a pass per epoch."""
    return max(1, math.ceil(round(cfg.student_passes / cfg.unlabeled_per_epoch, 9)))


def _progress(history: pd.DataFrame) -> dict:
    """Best epoch and score, and the updates made in all (the budget M1b matches)."""
    best = history.loc[history.val_score.idxmax()]
    return dict(best_epoch=int(best.epoch), val_score=float(best.val_score), updates=int(history.updates.iloc[-1]))


# ---------------------------------------------------------------- teachers (02)
def train_teacher(experiment_dir, key: RunKey, cfg: Config, data: FundusData) -> Path:
    """An MTL model on the labeled fraction of key.tasks (M1 when that is the full set)."""
    key, seed = key.with_model(None), key.seed
    run, cfg = runs.teacher_dir(experiment_dir, key), cfg.updated(seed=seed)
    own_seed = cfg.model_seed("teacher", key.tasks)
    runs.claim_run(run, cfg, runs.DISTILL_FIELDS + runs.SENTENCE_FIELDS, **teacher_meta(key, cfg))
    if (run / "metrics.json").exists():
        return run
    write_split(run, data)
    model = new_model(cfg, data, key.tasks, own_seed)
    history = fit(model, data, TrainPlan(data.rows("train"), cfg.epochs), MultiTaskLoss(data, cfg.task_weights),
                  cfg.updated(seed=own_seed), run, runs.signature(data, cfg, key.tasks), f"teacher {task_key(key.tasks)}")
    write_csv(history, run / "history.csv")
    write_json(dict(tasks=list(key.tasks), p=key.p, seed=seed, model_seed=own_seed, **_progress(history),
                    init=model.init_note), run / "metrics.json", checksum=True)  # last: marks done
    return run


TEACHER_GROUPS = ("all", "full", "subsets")


def teacher_subsets(tasks: tuple[str, ...], group: str = "all") -> list[tuple[str, ...]]:
    """The teachers one 02 run trains: every non-empty subset of `tasks` ("all": M1 and M3's ensemble), the full
    set alone ("full": M1) or every smaller subset ("subsets": the rest of M3's ensemble, beside a "full" run)."""
    if group not in TEACHER_GROUPS:
        raise ValueError(f"group={group!r}: choose one of {TEACHER_GROUPS}")
    return {"all": task_subsets(tasks), "full": [tasks], "subsets": task_subsets(tasks)[:-1]}[group]


def train_teachers(experiment_dir, key: RunKey, cfg: Config, group: str = "all") -> pd.DataFrame:
    """The teachers of `group` (teacher_subsets of key.tasks) at key.p, key.seed; M1 is the one on the full set."""
    subs = [RunKey(subset, key.p, key.seed) for subset in teacher_subsets(key.tasks, group)]
    for sub in subs:   # refuse other settings before load_data writes an image cache of a new size
        runs.refuse_other_settings(runs.teacher_dir(experiment_dir, sub), cfg.updated(seed=key.seed),
                                   runs.DISTILL_FIELDS + runs.SENTENCE_FIELDS, **teacher_meta(sub, cfg))
    data = load_data(experiment_dir, key.p, cfg)
    rows = []
    for sub in subs:
        run = train_teacher(experiment_dir, sub, cfg, data)
        rows.append({"teacher": task_key(sub.tasks), **read_json(run / "metrics.json"), "folder": str(run)})
    return pd.DataFrame(rows).round(4)       # for people: nltk's zero-BLEU floor (~5e-232) shows as 0


def teacher_meta(key: RunKey, cfg: Config) -> dict:
    """What a teacher's config.json records beside its Config, its own seed included."""
    own_seed = cfg.updated(seed=key.seed).model_seed("teacher", key.tasks)
    return dict(role="teacher", tasks=list(key.tasks), p=key.p, seed=key.seed, model_seed=own_seed)


# ---------------------------------------------------------------- students (03)
def train_student(experiment_dir, key: RunKey, tau: float, alpha: float, cfg: Config, data: FundusData) -> dict:
    """One M2/M3 student (key.model) at temperature tau and KD weight alpha; returns its validation metrics (never
    touches test)."""
    model_name, seed = key.model, key.seed
    run, cfg = runs.setting_dir(runs.student_dir(experiment_dir, key), tau, alpha), cfg.updated(seed=seed)
    own_seed = cfg.model_seed("student", key.tasks)
    runs.claim_run(run, cfg, ("tau_grid", "alpha_grid") + runs.SENTENCE_FIELDS, model=model_name, tasks=list(key.tasks),
                   p=key.p, seed=seed, tau=tau, alpha=alpha, model_seed=own_seed,
                   teachers=[task_key(t) for t in teachers_for(model_name, key.tasks)])
    if (run / "val.json").exists():
        return read_json(run / "val.json")
    write_split(run, data)
    teachers = student_teachers(experiment_dir, key, cfg, data, tau)
    model = new_model(cfg, data, key.tasks, own_seed, student=True)
    plan = TrainPlan(data.rows("train"), student_epochs(cfg), unlabeled=data.rows("unlabeled"), student=True)
    history = fit(model, data, plan, MultiTaskLoss(data, cfg.task_weights, alpha, tau, teachers),
                  cfg.updated(seed=own_seed), run, runs.signature(data, cfg, key.tasks),
                  f"{model_name} tau={tau:g} alpha={alpha:g}")
    write_csv(history, run / "history.csv")
    val = dict(tau=tau, alpha=alpha, **_progress(history))
    write_json(val, run / "val.json", checksum=True)
    return val


def student_budget(experiment_dir, key: RunKey) -> tuple[int, str]:
    """The most updates a finished M2/M3 run of this (tasks, p, seed) took at its chosen setting, and which run."""
    done = {m: runs.student_dir(experiment_dir, key.with_model(m)) / "metrics.json" for m in ("M2", "M3")}
    budgets = {m: read_json(path)["updates"] for m, path in done.items() if path.exists()}
    if not budgets:
        raise FileNotFoundError(f"M1b is M1 retrained for as many updates as the student: train M2 or M3 at "
                                f"p={key.p:g}, seed={key.seed} first (03_student_mtl_kd.ipynb, models before M1b)")
    model = max(budgets, key=budgets.get)
    return budgets[model], model


def train_m1_at_budget(experiment_dir, key: RunKey, updates: int, cfg: Config, data: FundusData) -> MTLModel:
    """M1b: M1's recipe and seed (labeled rows, CE), trained for `updates` updates in the M1b run folder."""
    run, own_seed = runs.student_dir(experiment_dir, key), cfg.model_seed("teacher", key.tasks)
    model = new_model(cfg, data, key.tasks, own_seed)
    history = fit(model, data, TrainPlan(data.rows("train"), cfg.epochs, updates=updates),
                  MultiTaskLoss(data, cfg.task_weights), cfg.updated(seed=own_seed), run,
                  runs.signature(data, cfg, key.tasks), f"M1b ({updates} updates)")
    write_csv(history, run / "history.csv")
    return model


# M1L, M1 at its validation plateau: M1's recipe and seed over these multiples of M1's own schedule (1: M1 itself);
# validation keeps the best (ties: the shortest). Longest chosen: the plateau may lie further (metrics.json says so).
PLATEAU_SCHEDULES = (1.0, 2.0, 4.0)


def train_m1_to_plateau(experiment_dir, key: RunKey, cfg: Config, data: FundusData,
                        schedules: tuple[float, ...] = PLATEAU_SCHEDULES) -> tuple[MTLModel, dict]:
    """M1L: M1 retrained on schedules of `schedules` × M1's updates (each one cosine schedule, in
    schedule_x<k>/), the one with the best validation score kept; returns it and what the search recorded."""
    run, own_seed = runs.student_dir(experiment_dir, key), cfg.model_seed("teacher", key.tasks)
    source = runs.teacher_dir(experiment_dir, key.with_model(None))
    if not (source / "metrics.json").exists():
        raise FileNotFoundError(f"M1L starts from M1's schedule: train the teacher {task_key(key.tasks)} at "
                                f"p={key.p:g}, seed={key.seed} first (02_teachers.ipynb)")
    m1 = read_json(source / "metrics.json")
    rows = []
    for k in sorted(set(schedules) | {1.0}):
        folder = source if k == 1 else run / f"schedule_x{k:g}"
        if k != 1 and not (folder / "val.json").exists():
            model = new_model(cfg, data, key.tasks, own_seed)
            history = fit(model, data, TrainPlan(data.rows("train"), cfg.epochs, updates=round(k * m1["updates"])),
                          MultiTaskLoss(data, cfg.task_weights), cfg.updated(seed=own_seed), folder,
                          runs.signature(data, cfg, key.tasks), f"M1L ({k:g} x M1's updates)")
            write_csv(history, folder / "history.csv")
            write_json(_progress(history), folder / "val.json", checksum=True)
        done = m1 if k == 1 else read_json(folder / "val.json")
        rows.append(dict(schedule=k, updates=done["updates"], best_epoch=done["best_epoch"],
                         val_score=done["val_score"], folder=folder.relative_to(experiment_dir).as_posix()))
    search = pd.DataFrame(rows)
    write_csv(search, run / "schedule_search.csv")
    best = search.loc[search.val_score.idxmax()]          # ties: the shortest schedule (rows in schedule order)
    chosen = dict(schedule=float(best.schedule), updates=int(best.updates), checkpoint_dir=best.folder,
                  longest_chosen=bool(best.schedule == search.schedule.max()),
                  schedule_search=search.to_dict("records"))
    return load_model(Path(experiment_dir) / best.folder, cfg, data, key.tasks), chosen


def evaluate_on_test(model: MTLModel, data: FundusData, cfg: Config, run: Path, meta: dict) -> dict:
    """The one read of the test split: predictions.csv, probs_T1/T2.npy, metrics.json, confusion.csv. With
    cfg.t3_scst_steps, the decoder is first fine-tuned self-critically (scst.py; T1/T2 unchanged)."""
    if cfg.t3_scst_steps and model.decoder is not None:
        meta = {**meta, "t3_scst": scst.finetune_decoder(model, data, cfg, run)}
    start, device, batch = time.perf_counter(), pick_device(cfg.device), eval_batch_size(cfg)
    decoding = dict(mbr_samples=cfg.mbr_samples, seed=cfg.seed)
    preds, probs = predict(model, data, data.rows("test"), batch, cfg.max_len, cfg.beam_size, device, with_probs=True,
                           **decoding)
    val = task_metrics(predict(model, data, data.rows("val"), batch, cfg.max_len, cfg.beam_size, device, **decoding),
                       data.labels)
    metrics = dict(**meta, val=val, test=task_metrics(preds, data.labels, probs),
                   per_disease=per_disease(preds, data.labels), per_class_auroc=per_class_auroc(preds, data.labels, probs),
                   disease_vs_normal=disease_vs_normal(preds, data.labels), bleu_note=BLEU_NOTE)
    write_csv(preds, run / "predictions.csv", checksum=True)
    retrieved = retrieval_table(model, data, data.rows("test"), batch, device)   # the 1-NN T3 baseline (retrieval.py)
    if retrieved is not None:
        write_csv(retrieved, run / RETRIEVAL_FILE, checksum=True)
    for task, p in probs.items():
        write_npy(p, run / f"probs_{task}.npy", checksum=True)
    if "T1" in model.tasks:
        confusion(preds, data.labels).to_csv(run / "confusion_T1.csv")
    add_seconds(run / "timing.json", test_seconds=time.perf_counter() - start)
    write_json(metrics, run / "metrics.json", checksum=True)   # written last: marks the run done
    return metrics


def run_student(experiment_dir, key: RunKey, cfg: Config, data: FundusData | None = None) -> dict:
    """key.model: M1 (the teacher on the full task set), M2/M3 with (tau, alpha) chosen on validation, M1b (M1
    retrained for as many updates as the M2/M3 student took) or M1L (M1 at its validation plateau); then the test
    split."""
    model_name, seed = key.model, key.seed
    run, cfg = runs.student_dir(experiment_dir, key), cfg.updated(seed=seed)
    meta = dict(model=model_name, tasks=list(key.tasks), p=key.p, seed=seed)
    if model_name == "M1b":
        meta["updates"], meta["budget_of"] = student_budget(experiment_dir, key)
    runs.claim_run(run, cfg, runs.DISTILL_FIELDS if model_name in ("M1", "M1L") else (), **meta)
    if (run / "metrics.json").exists():
        return read_json(run / "metrics.json")
    data = data or load_data(experiment_dir, key.p, cfg)
    write_split(run, data)
    if model_name == "M1":
        source = runs.teacher_dir(experiment_dir, key.with_model(None))
        if not (source / "metrics.json").exists():
            raise FileNotFoundError(f"M1 is the teacher {task_key(key.tasks)} at p={key.p:g}, seed={seed}; "
                                    f"run 02_teachers.ipynb first ({source})")
        teacher = read_json(source / "metrics.json")
        return evaluate_on_test(load_model(source, cfg, data, key.tasks), data, cfg, run,
                                {**meta, "tau": None, "alpha": None, "updates": teacher.get("updates"),
                                 "model_seed": teacher.get("model_seed"),
                                 "checkpoint": (source / "checkpoint.pt").relative_to(experiment_dir).as_posix()})
    if model_name == "M1b":
        model = train_m1_at_budget(experiment_dir, key, meta["updates"], cfg, data)
        return evaluate_on_test(model, data, cfg, run, {**meta, "tau": None, "alpha": None,
                                                        "model_seed": cfg.model_seed("teacher", key.tasks)})
    if model_name == "M1L":
        model, chosen = train_m1_to_plateau(experiment_dir, key, cfg, data)
        return evaluate_on_test(model, data, cfg, run, {**meta, "tau": None, "alpha": None, **chosen,
                                                        "model_seed": cfg.model_seed("teacher", key.tasks)})
    search = pd.DataFrame([train_student(experiment_dir, key, tau, alpha, cfg, data)
                           for tau, alpha in product(cfg.tau_grid, cfg.alpha_grid)])
    write_csv(search, run / "tau_search.csv")
    best = search.loc[search.val_score.idxmax()]       # ties: the first setting in the grid (smallest tau, then alpha)
    tau, alpha = float(best.tau), float(best.alpha)
    model = load_model(runs.setting_dir(run, tau, alpha), cfg, data, key.tasks)
    return evaluate_on_test(model, data, cfg, run, {**meta, "tau": tau, "alpha": alpha, "updates": int(best.updates),
                                                    "model_seed": cfg.model_seed("student", key.tasks),
                                                    "tau_search": search.to_dict("records")})
