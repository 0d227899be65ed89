"""The workbook's steps as functions the notebooks call: prepare data, train teachers, train and test students.

Each step writes into the experiment folder (docs/ARCHITECTURE.md) and skips work already done,
so any notebook can be re-run alone and a killed run resumes.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .checkpoint import fingerprint, load_checkpoint
from .config import FRACTIONS, Config, check_fraction, parse_tasks, task_key, task_subsets
from .data import FundusData, build_image_cache, load_data
from .distill import CachedTeachers, OnlineTeachers, build_soft_targets, read_soft_targets
from .engine import fit, pick_device, predict
from .io import environment, read_json, verify_file, write_csv, write_json
from .manifest import LabelMap, check_trainable, validate_manifest
from .metrics import confusion, per_disease, task_metrics
from .model import MTLModel, build_model
from .splits import load_user_splits, make_splits, save_splits, warn_single_image_classes

REPO = Path(__file__).resolve().parent.parent
SOURCES = ("synthetic", "manifest", "odir", "csv", "folder")


# ---------------------------------------------------------------- data prep
def resolve_source(source: str, source_path: str | None, options: dict | None, cfg: Config, experiment_dir: Path) -> Path:
    """Turn any supported source into a manifest path (building the manifest where needed)."""
    options = dict(options or {})
    if source == "synthetic":
        from .synthetic import SIZES, ensure_synthetic
        if cfg.dataset not in SIZES:
            raise ValueError(f"dataset={cfg.dataset!r}: synthetic sizes are {sorted(SIZES)}")
        folder = Path(source_path) if source_path else REPO / "data" / "synthetic" / cfg.dataset
        return ensure_synthetic(folder, **{**SIZES[cfg.dataset], **options})
    if source_path is None:
        raise ValueError(f"source={source!r} needs source_path (see data/README.md)")
    if source == "manifest":
        return Path(source_path)
    from . import sources
    out = experiment_dir / "data" / "source"
    if source == "odir":
        return sources.from_odir_folder(source_path, out, **options)
    if source == "csv":
        return sources.from_csv(source_path, out, **options)
    if source == "folder":
        return sources.from_folder(source_path, out, **options)
    raise ValueError(f"source={source!r}: choose one of {SOURCES}")


def _sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def prepare_data(experiment_dir: str | Path, cfg: Config, source: str = "synthetic", source_path: str | None = None,
                 source_options: dict | None = None, split_file: str | None = None, crop_fov: bool = True) -> dict:
    """Build/validate the manifest, make the patient-level splits and the image cache; write data/."""
    exp = Path(experiment_dir)
    data_dir = exp / "data"
    manifest_path = resolve_source(source, source_path, source_options, cfg, exp).resolve()
    labels = LabelMap.load(manifest_path.parent / "label_map.json")
    manifest = validate_manifest(manifest_path, labels)
    check_trainable(manifest, manifest_path)
    warn_single_image_classes(manifest)
    info = dict(manifest=str(manifest_path), manifest_sha1=_sha1(manifest_path), source=source,
                split_seed=cfg.split_seed, split_file=split_file, crop_fov=crop_fov)
    if (data_dir / "dataset.json").exists():
        old = read_json(data_dir / "dataset.json")
        if {k: old.get(k) for k in info} != info:
            raise FileExistsError(f"{data_dir} was prepared from other data or splits ({old['manifest']}, split_seed="
                                  f"{old.get('split_seed')}). Choose a new experiment_dir; nothing was overwritten.")
    splits = load_user_splits(split_file, manifest) if split_file else make_splits(manifest, cfg.split_seed)
    save_splits(splits, data_dir / "splits.csv")
    labels.save(data_dir / "label_map.json")
    build_image_cache(manifest_path, data_dir / "cache", cfg.image_size, crop_fov)
    write_json(info, data_dir / "dataset.json")
    return info


# ---------------------------------------------------------------- run folders
def teacher_dir(experiment_dir, tasks, p, seed) -> Path:
    return Path(experiment_dir) / "teachers" / f"p{p:g}_s{seed}" / task_key(tasks)


def student_dir(experiment_dir, tasks, p, seed, model_name: str) -> Path:
    return Path(experiment_dir) / "students" / task_key(tasks) / f"p{p:g}_s{seed}" / model_name


def signature(data: FundusData, cfg: Config, tasks: tuple[str, ...]) -> dict:
    """What a checkpoint must match to be reused: architecture, task set, label map, vocabulary, split."""
    return dict(tasks=list(tasks), backbone=cfg.backbone, output_stride=cfg.output_stride, image_size=cfg.image_size, p=data.p, split_seed=cfg.split_seed,
                label_map=fingerprint(data.labels.to_dict()), vocab=fingerprint(data.vocab.itos))


RUNTIME_FIELDS = ("device", "threads")                   # change how fast, not what is computed
DISTILL_FIELDS = ("alpha", "tau_grid", "student_epochs", "unlabeled_per_epoch", "kd_mode")  # students only


def claim_run(run: Path, cfg: Config, ignore: tuple[str, ...] = (), **meta) -> None:
    """Record config, seed and versions in a new run folder; refuse a folder holding a different run.

    A run folder is never overwritten: re-running with the same settings resumes or reuses it, and
    different settings must go to another experiment folder.
    """
    mine = {k: v for k, v in cfg.to_dict().items() if k not in RUNTIME_FIELDS + ignore}
    if (run / "config.json").exists():
        old = read_json(run / "config.json")
        theirs = {k: v for k, v in old["config"].items() if k in mine}
        diff = sorted(k for k in mine if not json_equal(mine[k], theirs.get(k)))
        diff += sorted(k for k, v in meta.items() if not json_equal(v, old.get(k)))
        if diff:
            raise FileExistsError(f"{run} holds a run with other settings ({', '.join(diff)}); nothing was overwritten. "
                                  "Use another experiment_dir, or delete that folder to retrain.")
        return
    write_json(dict(**meta, config=cfg.to_dict(), environment=environment()), run / "config.json")


def json_equal(a, b) -> bool:
    """Equality as stored in JSON (tuples become lists)."""
    import json
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def write_split(run: Path, data: FundusData) -> None:
    """The exact split of this run, beside its results."""
    write_csv(data.roles[["image_id", "patient_id", "role"]], run / "split.csv")


def new_model(cfg: Config, data: FundusData, tasks: tuple[str, ...], seed: int) -> MTLModel:
    torch.manual_seed(seed)
    return build_model(cfg, tasks, len(data.labels.coarse), len(data.labels.fine), len(data.vocab))


def load_model(run: Path, cfg: Config, data: FundusData, tasks: tuple[str, ...]) -> MTLModel:
    """A trained model from its run folder, refusing one trained for another setting."""
    state = load_checkpoint(run / "checkpoint.pt", expect=signature(data, cfg, tasks))
    model = build_model(cfg.updated(pretrained=None), tasks, len(data.labels.coarse), len(data.labels.fine), len(data.vocab))
    model.load_state_dict(state["model"])
    return model.to(pick_device(cfg.device)).eval()


def _distil_rows(data: FundusData) -> np.ndarray:
    return np.sort(np.concatenate([data.rows("train"), data.rows("unlabeled")]))


# ---------------------------------------------------------------- teachers (02)
def train_teacher(experiment_dir, tasks, p: float, seed: int, cfg: Config, data: FundusData) -> Path:
    """An MTL model on the labeled fraction (M1 when tasks is the full set)."""
    tasks, p = parse_tasks(tasks), check_fraction(p)
    run, cfg = teacher_dir(experiment_dir, tasks, p, seed), cfg.updated(seed=seed)
    claim_run(run, cfg, DISTILL_FIELDS, role="teacher", tasks=list(tasks), p=p, seed=seed)
    if (run / "metrics.json").exists():
        return run
    write_split(run, data)
    model = new_model(cfg, data, tasks, seed)
    history = fit(model, data, data.rows("train"), cfg, run, cfg.epochs, signature=signature(data, cfg, tasks), desc=f"teacher {task_key(tasks)}")
    write_csv(history, run / "history.csv")
    best = history.loc[history.val_score.idxmax()]
    write_json(dict(tasks=list(tasks), p=p, seed=seed, best_epoch=int(best.epoch), val_score=float(best.val_score),
                    init=model.init_note), run / "metrics.json", checksum=True)   # written last: marks the teacher done
    return run


def train_teachers(experiment_dir, tasks, p: float, seed: int, cfg: Config) -> pd.DataFrame:
    """Every non-empty subset of `tasks` at fraction p: the M3 ensemble, with M1 (the full set) among them."""
    data = load_data(experiment_dir, p, cfg)
    rows = []
    for subset in task_subsets(parse_tasks(tasks)):
        run = train_teacher(experiment_dir, subset, p, seed, cfg, data)
        rows.append({"teacher": task_key(subset), **read_json(run / "metrics.json"), "folder": str(run)})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- students (03)
def teachers_for(model_name: str, tasks: tuple[str, ...]) -> list[tuple[str, ...]]:
    """M2 distils from M1 alone; M3 from every non-empty task subset (M1 included)."""
    return {"M2": [tasks], "M3": task_subsets(tasks)}[model_name]


def student_teachers(experiment_dir, model_name, tasks, p, seed, cfg, data) -> CachedTeachers | OnlineTeachers:
    """The student's teachers: their soft targets, computed once into the student's folder and reused by
    every tau (kd_mode="cached"), or the models themselves, run on every batch (kd_mode="online")."""
    runs = {subset: teacher_dir(experiment_dir, subset, p, seed) for subset in teachers_for(model_name, tasks)}
    for subset, run in runs.items():
        if not (run / "metrics.json").exists():
            raise FileNotFoundError(f"teacher {task_key(subset)} at p={p:g}, seed={seed} is missing ({run}); run 02_teachers.ipynb first")
    if cfg.kd_mode == "online":
        return OnlineTeachers([load_model(run, cfg, data, subset) for subset, run in runs.items()], cfg.max_len, cfg.t3_topk)
    path, rows, device = student_dir(experiment_dir, tasks, p, seed, model_name) / "soft_targets.pt", _distil_rows(data), pick_device(cfg.device)
    # What the cache was computed from: it is derived data, rebuilt when any of this changed.
    meta = dict(teachers={task_key(s): _sha1(r / "checkpoint.pt") for s, r in runs.items()},
                data=fingerprint(signature(data, cfg, tasks)), max_len=cfg.max_len, t3_topk=cfg.t3_topk,
                rows=fingerprint(rows.tolist()))
    store = read_soft_targets(path)
    if not json_equal(store.get("meta"), meta):
        models = [load_model(run, cfg, data, subset) for subset, run in runs.items()]
        store = load_checkpoint(build_soft_targets(models, data, rows, path, cfg.max_len, cfg.t3_topk, cfg.batch_size * 2, device, meta))
    return CachedTeachers(store, len(data.manifest), device)


def train_student(experiment_dir, model_name: str, tasks, p, seed, tau: float, cfg: Config, data: FundusData) -> dict:
    """One M2/M3 student at temperature tau; returns its validation metrics (never touches test)."""
    run, cfg = student_dir(experiment_dir, tasks, p, seed, model_name) / f"tau_{tau:g}", cfg.updated(seed=seed)
    claim_run(run, cfg, ("tau_grid",), model=model_name, tasks=list(tasks), p=p, seed=seed, tau=tau,
              teachers=[task_key(t) for t in teachers_for(model_name, tasks)])
    if (run / "val.json").exists():
        return read_json(run / "val.json")
    write_split(run, data)
    teachers = student_teachers(experiment_dir, model_name, tasks, p, seed, cfg, data)
    model = new_model(cfg, data, tasks, seed)
    history = fit(model, data, data.rows("train"), cfg, run, cfg.student_epochs, teachers=teachers, tau=tau,
                  unlabeled_rows=data.rows("unlabeled"), signature=signature(data, cfg, tasks), desc=f"{model_name} tau={tau:g}")
    write_csv(history, run / "history.csv")
    best = history.loc[history.val_score.idxmax()]
    val = dict(tau=tau, val_score=float(best.val_score), best_epoch=int(best.epoch))
    write_json(val, run / "val.json", checksum=True)
    return val


def evaluate_on_test(model: MTLModel, data: FundusData, cfg: Config, run: Path, meta: dict) -> dict:
    """The one read of the test split: predictions.csv, metrics.json, confusion.csv."""
    device = pick_device(cfg.device)
    preds = predict(model, data, data.rows("test"), cfg.batch_size * 2, cfg.max_len, cfg.beam_size, device)
    val = task_metrics(predict(model, data, data.rows("val"), cfg.batch_size * 2, cfg.max_len, cfg.beam_size, device), data.labels)
    metrics = dict(**meta, val=val, test=task_metrics(preds, data.labels), per_disease=per_disease(preds, data.labels),
                   bleu_note="T3_bleu1..4: nltk corpus BLEU, no smoothing; T3_sentence_bleu: mean nltk sentence BLEU-4, smoothing method1")
    write_csv(preds, run / "predictions.csv", checksum=True)
    if "T1" in model.tasks:
        confusion(preds, data.labels).to_csv(run / "confusion_T1.csv")
    write_json(metrics, run / "metrics.json", checksum=True)   # written last: marks the run done
    return metrics


def run_student(experiment_dir, model_name: str, tasks, p: float, seed: int, cfg: Config, data: FundusData | None = None) -> dict:
    """M1 (the teacher on the full task set), or M2/M3 with tau chosen on validation; then the test split."""
    tasks, p = parse_tasks(tasks), check_fraction(p)
    if model_name not in ("M1", "M2", "M3"):
        raise ValueError(f"model={model_name!r}: choose M1, M2 or M3")
    run, cfg = student_dir(experiment_dir, tasks, p, seed, model_name), cfg.updated(seed=seed)
    meta = dict(model=model_name, tasks=list(tasks), p=p, seed=seed)
    claim_run(run, cfg, DISTILL_FIELDS if model_name == "M1" else (), **meta)
    if (run / "metrics.json").exists():
        return read_json(run / "metrics.json")
    data = data or load_data(experiment_dir, p, cfg)
    write_split(run, data)
    if model_name == "M1":
        source = teacher_dir(experiment_dir, tasks, p, seed)
        if not (source / "metrics.json").exists():
            raise FileNotFoundError(f"M1 is the teacher {task_key(tasks)} at p={p:g}, seed={seed}; run 02_teachers.ipynb first ({source})")
        return evaluate_on_test(load_model(source, cfg, data, tasks), data, cfg, run, {**meta, "tau": None, "checkpoint": str(source / "checkpoint.pt")})
    search = pd.DataFrame([train_student(experiment_dir, model_name, tasks, p, seed, tau, cfg, data) for tau in cfg.tau_grid])
    write_csv(search, run / "tau_search.csv")
    tau = float(search.loc[search.val_score.idxmax(), "tau"])      # ties: the first (smallest) tau in the grid
    model = load_model(run / f"tau_{tau:g}", cfg, data, tasks)
    return evaluate_on_test(model, data, cfg, run, {**meta, "tau": tau, "tau_search": search.to_dict("records")})


# ---------------------------------------------------------------- data-prep views (01)
def experiment_path(path: str | Path) -> Path:
    """Relative experiment folders live under the repo root, whether run from papermill or JupyterLab."""
    path = Path(path)
    return path if path.is_absolute() else REPO / path


def fraction_table(splits: pd.DataFrame, fractions=FRACTIONS) -> pd.DataFrame:
    """Images per role at each training fraction p."""
    from .splits import select_fraction
    return pd.DataFrame({f"p={p}": select_fraction(splits, p).role.value_counts() for p in fractions}).fillna(0).astype(int)


def sample_rows(manifest: pd.DataFrame, per_class: int, seed: int, classes: list[str] | None = None) -> pd.DataFrame:
    """A seeded draw of labeled rows per coarse class, favouring distinct fine labels."""
    lab = manifest[manifest.labeled.astype(str) == "1"]
    picks = [g.sample(frac=1, random_state=seed).drop_duplicates("fine").head(per_class) for _, g in lab.groupby("coarse")]
    order = {c: i for i, c in enumerate(classes)} if classes else {}
    return pd.concat(picks).sort_values("coarse", key=lambda s: s.map(order).fillna(len(order)), kind="stable").reset_index(drop=True)


def load_samples(manifest_path: str | Path, rows: pd.DataFrame, size: int) -> tuple[np.ndarray, list]:
    """Prepared images and lesion masks of some manifest rows, for figures."""
    from .data import load_mask
    from .fundus import prepare_image
    root = Path(manifest_path).parent
    images = np.stack([prepare_image(root / r.image, size) for r in rows.itertuples()])
    masks = [load_mask(manifest_path, r.image, r.mask, size) for r in rows.itertuples()]
    return images, masks


# ---------------------------------------------------------------- student views (03)
def results_frame(results: dict[str, dict]) -> pd.DataFrame:
    """Test metrics of several models side by side, with the chosen tau."""
    rows = {m: {"tau": r["tau"], **r["test"]} for m, r in results.items()}
    return pd.DataFrame(rows).T.drop(columns=["n"], errors="ignore").round(4)


def tau_frame(results: dict[str, dict]) -> pd.DataFrame:
    """Validation score per tau for each distilled model (the test split plays no part)."""
    rows = [{"model": m, **t} for m, r in results.items() for t in r.get("tau_search", [])]
    return pd.DataFrame(rows).pivot(index="tau", columns="model", values="val_score") if rows else pd.DataFrame()


# ---------------------------------------------------------------- reading finished runs (04, 05)
def finished_runs(experiment_dir, tasks, seed: int, models=("M1", "M2", "M3"), ps=None) -> pd.DataFrame:
    """Finished student runs of one task combination and seed: model, p, run folder."""
    rows = []
    for path in sorted(Path(experiment_dir).glob(f"students/{task_key(parse_tasks(tasks))}/p*_s{seed}/*/metrics.json")):
        m = read_json(path)
        if m["model"] in models and (ps is None or float(m["p"]) in [float(p) for p in ps]):
            rows.append(dict(model=m["model"], p=float(m["p"]), tau=m.get("tau"), run=path.parent))
    if not rows:
        raise FileNotFoundError(f"no finished {task_key(parse_tasks(tasks))} runs with seed {seed} under {experiment_dir}/students; "
                                "run 03_student_mtl_kd.ipynb first")
    return pd.DataFrame(rows).sort_values(["p", "model"]).reset_index(drop=True)


def run_name(model: str, p: float) -> str:
    return f"{model} p={p:g}"


def student_predictions(runs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Test predictions of each finished run, keyed like 'M3 p=15'."""
    return {run_name(r.model, r.p): pd.read_csv(verify_file(r.run / "predictions.csv"), dtype=str, keep_default_na=False)
            .assign(bleu=lambda d: pd.to_numeric(d.bleu, errors="coerce")) for r in runs.itertuples()}


def load_student(experiment_dir, model_name: str, tasks, p: float, seed: int, cfg: Config, data: FundusData) -> MTLModel:
    """The trained model behind a finished run: M1's teacher, or the M2/M3 student at its chosen tau."""
    tasks = parse_tasks(tasks)
    if model_name == "M1":
        return load_model(teacher_dir(experiment_dir, tasks, p, seed), cfg, data, tasks)
    tau = read_json(student_dir(experiment_dir, tasks, p, seed, model_name) / "metrics.json")["tau"]
    return load_model(student_dir(experiment_dir, tasks, p, seed, model_name) / f"tau_{tau:g}", cfg, data, tasks)


def pick_images(rows: pd.DataFrame, masks: list, per_disease: int, seed: int, image_ids=()) -> list[int]:
    """Positions of the figure's images: the given ids, else a seeded draw of annotated images per disease."""
    if image_ids:
        missing = sorted(set(image_ids) - set(rows.image_id))
        if missing:
            raise ValueError(f"image_ids {missing} are not test images of this experiment")
        return [int(np.flatnonzero(rows.image_id.to_numpy() == i)[0]) for i in image_ids]
    annotated = rows.assign(pos=range(len(rows)))[[m is not None and m.any() for m in masks]]
    picks = [g.sample(n=min(per_disease, len(g)), random_state=seed).pos for _, g in annotated.groupby("coarse", sort=False)]
    return [int(i) for part in picks for i in sorted(part)]
