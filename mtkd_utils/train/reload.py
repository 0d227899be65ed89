"""Trained models back from their run folders: one model, a student's teachers (the models or their cached soft
targets), and the finished runs the analyses (04, 05) and the study rebuild."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .. import runs
from ..config import Config, task_key, task_subsets
from ..data.dataset import FundusData, load_data
from ..io import add_seconds, file_sha1, fingerprint
from ..runs import RunKey
from .checkpoint import load_checkpoint
from .distill import CachedTeachers, OnlineTeachers, build_soft_targets, read_soft_targets
from .model import MTLModel, build_model
from .runtime import eval_batch_size, pick_device
from .scst import load_finetuned_decoder


def load_model(run: Path, cfg: Config, data: FundusData, tasks: tuple[str, ...]) -> MTLModel:
    """A trained model from its run folder, refusing one trained for another setting."""
    state = load_checkpoint(run / "checkpoint.pt", expect=runs.signature(data, cfg, tasks))
    model = build_model(cfg.updated(pretrained=None), tasks, len(data.labels.coarse), len(data.labels.fine),
                        len(data.vocab))
    model.load_state_dict(state["model"])
    return model.to(pick_device(cfg.device)).eval()


def teachers_for(model_name: str, tasks: tuple[str, ...]) -> list[tuple[str, ...]]:
    """M2 distils from M1 alone; M3 from every non-empty task subset (M1 included)."""
    return {"M2": [tasks], "M3": task_subsets(tasks)}[model_name]


def _distil_rows(data: FundusData) -> np.ndarray:
    return np.sort(np.concatenate([data.rows("train"), data.rows("unlabeled")]))


def student_teachers(experiment_dir, key: RunKey, cfg: Config, data: FundusData, tau: float | None = None,
                     finish=None) -> CachedTeachers | OnlineTeachers:
    """The teachers of student `key` (M2, M3): their soft targets on clean images, computed once into the student's
    folder and reused by every (tau, alpha) (kd_mode="cached"), or the models themselves, run on every noised batch
    (kd_mode="online"). With t3_kd="exact" they also give the T3 rest bucket at `tau`. `finish` transforms a cache
    before it is written (the study's hardened targets); a cache it did not finish is rebuilt."""
    exact_tau = tau if cfg.t3_kd == "exact" else None
    found = {s: runs.teacher_dir(experiment_dir, RunKey(s, key.p, key.seed)) for s in teachers_for(key.model, key.tasks)}
    for subset, run in found.items():
        if not (run / "metrics.json").exists():
            raise FileNotFoundError(f"teacher {task_key(subset)} at p={key.p:g}, seed={key.seed} is missing ({run}); "
                                    "run 02_teachers.ipynb first")
    if cfg.kd_mode == "online":
        return OnlineTeachers([load_model(run, cfg, data, s) for s, run in found.items()], cfg.max_len, cfg.t3_topk,
                              exact_tau)
    rest_taus = cfg.tau_grid if cfg.t3_kd == "exact" else ()
    path = runs.soft_targets_path(runs.student_dir(experiment_dir, key))
    rows, device = _distil_rows(data), pick_device(cfg.device)
    # What the cache was computed from: it is derived data, rebuilt when any of this changed.
    meta = dict(teachers={task_key(s): file_sha1(r / "checkpoint.pt") for s, r in found.items()},
                data=fingerprint(runs.signature(data, cfg, key.tasks)), max_len=cfg.max_len, t3_topk=cfg.t3_topk,
                rows=fingerprint(rows.tolist()), rest_taus=list(rest_taus))
    store = read_soft_targets(path)
    unfinished = finish is not None and store.get("finished_by") != finish.__name__
    if unfinished or not runs.json_equal(store.get("meta"), meta):
        start, models = time.perf_counter(), [load_model(run, cfg, data, s) for s, run in found.items()]
        store = build_soft_targets(models, data, rows, path, cfg.max_len, cfg.t3_topk, eval_batch_size(cfg), device,
                                   meta, rest_taus, finish)
        add_seconds(path.parent / "timing.json", soft_targets_seconds=time.perf_counter() - start)
    return CachedTeachers(store, len(data.manifest), device, exact_tau)


def load_student(experiment_dir, key: RunKey, device: str | None = None) -> tuple[MTLModel, FundusData]:
    """The trained model behind a finished run, built from the run's own saved config, with its data.

    M1 is its teacher; M1b its own folder; M2/M3 the student at the (tau, alpha) chosen on validation; the decoder
    self-critically fine-tuned for the run's sentences where there is one (t3_scst.pt). Any --set
    used for training (image_size, backbone, head_hidden, ...) is therefore the one the model is rebuilt with.
    """
    run, cfg = runs.trained_model_dir(experiment_dir, key), runs.trained_model_config(experiment_dir, key)
    cfg = cfg.updated(device=device) if device else cfg
    data = load_data(experiment_dir, key.p, cfg)
    model = load_model(run, cfg, data, key.tasks)
    if key.model is not None:        # the decoder that wrote the run's sentences, where it was fine-tuned (scst.py)
        load_finetuned_decoder(model, runs.student_dir(experiment_dir, key))
    return model, data


def load_students(experiment_dir, keys, device: str | None = None) -> tuple[dict[str, MTLModel], FundusData]:
    """The models of several finished runs keyed like 'M3 p=15', and the first run's data (every p shares the test
    split); ValueError when they were trained at different image sizes, as one figure cannot show them."""
    loaded = {key.name: load_student(experiment_dir, key, device) for key in keys}
    sizes = {name: data.images.shape[1] for name, (_, data) in loaded.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"these runs were trained at different image sizes {sizes}: analyse them separately "
                         "(pass the runs of one size)")
    return {name: model for name, (model, _) in loaded.items()}, next(iter(loaded.values()))[1]
