"""The experiment folder: one owner for its layout, its run keys, the claim of a run folder and its saved config.

    <experiment>/data/                                  01: dataset.json, splits.csv, label_map.json, cache/
    <experiment>/teachers/p<P>_s<seed>/<tasks>/         02: one teacher per task subset
    <experiment>/students/<tasks>/p<P>_s<seed>/<model>/ 03: M1 / M2 / M3 / M1b / M1L; M2, M3: tau_<τ>_alpha_<α>/
                                                        per setting; M1L: schedule_x<k>/ per schedule
    <experiment>/analysis/, gradcam/, results/          04, 05, 06
    <experiment>/study/<variant>/                       07: each variant's own small experiment folder

Every other module and notebook spells and parses these paths through here (docs/ARCHITECTURE.md).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .config import MODELS, Config, check_fraction, parse_tasks, task_key
from .io import REPO_ROOT, create_json, environment, fingerprint, read_json

DEFAULTS = Config().to_dict()                           # what a config.json written before a field existed means
RUNTIME_FIELDS = ("device", "threads")                   # change how fast, not what is computed
DISTILL_FIELDS = ("alpha_grid", "tau_grid", "student_passes", "unlabeled_per_epoch", "kd_mode", "labeled_share",
                  "student_augment", "head_dropout", "t3_kd")           # students only: teachers and M1 ignore them
# how a reported model's sentences are written, after training (train/scst.py) and at test: the checkpoints of teachers
# and of KD settings do not depend on them, so those runs ignore them
SENTENCE_FIELDS = ("beam_size", "mbr_samples", "t3_scst_steps", "t3_scst_lr", "t3_scst_samples", "t3_scst_findings")
ANALYSES = ("analysis", "gradcam", "results")            # the folders of notebooks 04, 05, 06
_FOLDER = re.compile(r"p(?P<p>[0-9.]+)_s(?P<seed>[0-9]+)")


@dataclass(frozen=True)
class RunKey:
    """Which run: task combination, training fraction p (a float, in %), seed and model (None: a teacher)."""
    tasks: tuple[str, ...]
    p: float
    seed: int
    model: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", parse_tasks(self.tasks))
        object.__setattr__(self, "p", check_fraction(self.p))
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ValueError(f"seed={self.seed!r}: training seeds are integers >= 0")
        if self.model is not None and self.model not in MODELS:
            raise ValueError(f"model={self.model!r}: choose one of {MODELS}")

    @property
    def folder(self) -> str:
        """The fraction/seed folder name, e.g. 'p15_s0'."""
        return fraction_folder(self.p, self.seed)

    @property
    def p_label(self) -> int | float:
        """p as tables and folder names show it: 15.0 -> 15, 12.5 stays."""
        return int(self.p) if self.p.is_integer() else self.p

    @property
    def name(self) -> str:
        """How figures and tables name the run, e.g. 'M3 p=15'."""
        return f"{self.model} p={self.p:g}"

    def with_model(self, model: str | None) -> "RunKey":
        return RunKey(self.tasks, self.p, self.seed, model)

    @classmethod
    def from_student_dir(cls, run: str | Path) -> "RunKey":
        """students/<tasks>/p<P>_s<seed>/<model> -> its key (the inverse of student_dir)."""
        run = Path(run)
        p, seed = parse_fraction_folder(run.parent.name)
        return cls(run.parent.parent.name, p, seed, run.name)


def fraction_folder(p: float, seed: int) -> str:
    return f"p{check_fraction(p):g}_s{seed}"


def parse_fraction_folder(name: str) -> tuple[float, int]:
    """'p15_s0' -> (15.0, 0); ValueError for any other name."""
    match = _FOLDER.fullmatch(name)
    if not match:
        raise ValueError(f"{name!r} is not a run folder name like 'p15_s0' (fraction p, seed)")
    return float(match["p"]), int(match["seed"])


# ---------------------------------------------------------------- paths
def data_dir(experiment_dir: str | Path) -> Path:
    return Path(experiment_dir) / "data"


# dataset.json stores the manifest relative to one of these, so an experiment folder can move (MANIFEST_BASES).
MANIFEST_BASES = ("experiment", "repository", "absolute")


def manifest_record(manifest_path: str | Path, experiment_dir: str | Path, repo_root: str | Path = REPO_ROOT) -> dict:
    """How dataset.json stores the manifest: relative to the experiment folder when it lies inside it (built from
    a source), to the repository for the embedded datasets, absolute only for data elsewhere (e.g. /data/ODIR-5K)."""
    path = Path(manifest_path).resolve()
    for base, root in zip(MANIFEST_BASES, (Path(experiment_dir).resolve(), Path(repo_root).resolve())):
        if path.is_relative_to(root):
            return {"manifest": path.relative_to(root).as_posix(), "manifest_base": base}
    return {"manifest": str(path), "manifest_base": "absolute"}


def manifest_location(experiment_dir: str | Path, info: dict | None = None, repo_root: str | Path = REPO_ROOT) -> Path:
    """The manifest an experiment was prepared from (its dataset.json, or `info`), wherever the folder now lives."""
    info = info or read_json(Path(experiment_dir) / "data" / "dataset.json")
    base = info.get("manifest_base", "absolute")             # experiments prepared before stored absolute paths
    if base not in MANIFEST_BASES:
        raise ValueError(f"{experiment_dir}/data/dataset.json: manifest_base={base!r}, expected one of {MANIFEST_BASES}")
    root = {"experiment": Path(experiment_dir), "repository": Path(repo_root), "absolute": Path("/")}[base]
    return root / info["manifest"]


def manifest_path(experiment_dir: str | Path) -> str:
    """The manifest the experiment was prepared from (01 records it in data/dataset.json)."""
    info = data_dir(experiment_dir) / "dataset.json"
    if not info.exists():
        raise FileNotFoundError(f"{info} missing: run notebooks/01_data_prep.ipynb for this experiment first")
    return str(manifest_location(experiment_dir, read_json(info)))


def teacher_dir(experiment_dir: str | Path, key: RunKey) -> Path:
    """teachers/p<P>_s<seed>/<tasks>: one teacher per task subset (M1 is the full set's)."""
    return Path(experiment_dir) / "teachers" / key.folder / task_key(key.tasks)


def teachers_root(experiment_dir: str | Path, p: float, seed: int) -> Path:
    """The folder of every teacher at (p, seed): 02 draws its training curves there."""
    return Path(experiment_dir) / "teachers" / fraction_folder(p, seed)


def student_dir(experiment_dir: str | Path, key: RunKey) -> Path:
    """students/<tasks>/p<P>_s<seed>/<model>."""
    if key.model is None:
        raise ValueError(f"{key}: a student run needs a model, one of {MODELS}")
    return Path(experiment_dir) / "students" / task_key(key.tasks) / key.folder / key.model


def setting_dir(student_run: Path, tau: float, alpha: float) -> Path:
    """One student per (temperature, KD weight) of the validation grid, inside its run folder."""
    return Path(student_run) / f"tau_{tau:g}_alpha_{alpha:g}"


def soft_targets_path(student_run: Path) -> Path:
    """The M2/M3 teachers' outputs, computed once and shared by every tau."""
    return Path(student_run) / "soft_targets.pt"


def analysis_dir(experiment_dir: str | Path, which: str) -> Path:
    """analysis/ (04), gradcam/ (05) or results/ (06)."""
    if which not in ANALYSES:
        raise ValueError(f"analysis folder {which!r}: choose one of {ANALYSES}")
    return Path(experiment_dir) / which


def study_dir(experiment_dir: str | Path, variant: str | None = None) -> Path:
    """study/ (07): its table and figure; study/<variant>/ one variant's experiment folder."""
    root = Path(experiment_dir) / "study"
    return root / variant if variant else root


def trained_model_dir(experiment_dir: str | Path, key: RunKey) -> Path:
    """Where a finished run's weights are: M1 is its teacher; M1b its own folder; M1L the schedule validation chose;
    M2/M3 the student at the (tau, alpha) chosen on validation."""
    if key.model == "M1":
        return teacher_dir(experiment_dir, key.with_model(None))
    run = student_dir(experiment_dir, key)
    if key.model == "M1b":
        return run
    chosen = read_json(run / "metrics.json")
    if key.model == "M1L":
        return Path(experiment_dir) / chosen["checkpoint_dir"]
    return setting_dir(run, chosen["tau"], chosen["alpha"])


def trained_model_config(experiment_dir: str | Path, key: RunKey) -> Config:
    """The Config the model behind a finished run was built with: its folder's, or for M1L its run's (the schedule
    folders hold weights and history, not a config)."""
    folder = student_dir(experiment_dir, key) if key.model == "M1L" else trained_model_dir(experiment_dir, key)
    return run_config(folder)


# ---------------------------------------------------------------- claiming a run folder
def signature(data, cfg: Config, tasks: tuple[str, ...]) -> dict:
    """What a checkpoint must match to be reused: architecture, task set, label map, vocabulary, split."""
    return dict(tasks=list(tasks), backbone=cfg.backbone, output_stride=cfg.output_stride, image_size=cfg.image_size,
                p=data.p, split_seed=cfg.split_seed, label_map=fingerprint(data.labels.to_dict()),
                vocab=fingerprint(data.vocab.itos))


def json_equal(a, b) -> bool:
    """Equality as stored in JSON (tuples become lists)."""
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def claim_run(run: Path, cfg: Config, ignore: tuple[str, ...] = (), **meta) -> None:
    """Record config, seed and versions in a new run folder; refuse a folder holding a different run.

    A run folder is never overwritten: re-running with the same settings resumes or reuses it, and
    different settings must go to another experiment folder. config.json is created only if absent, in
    one step: of two processes claiming one folder with different settings, exactly one gets it.
    """
    if not create_json(dict(**meta, config=cfg.to_dict(), environment=environment()), run / "config.json"):
        refuse_other_settings(run, cfg, ignore, **meta)


def refuse_other_settings(run: Path, cfg: Config, ignore: tuple[str, ...] = (), **meta) -> bool:
    """True if `run` holds a run with these settings, False if none; raises if it holds other settings."""
    if not (run / "config.json").exists():
        return False
    mine = {k: v for k, v in cfg.to_dict().items() if k not in RUNTIME_FIELDS + ignore}
    old = read_json(run / "config.json")
    # a field added after the run was recorded holds its default there: a new option's default keeps the old behaviour
    theirs = {k: old["config"].get(k, DEFAULTS[k]) for k in mine}
    diff = sorted(k for k in mine if not json_equal(mine[k], theirs[k]))
    diff += sorted(k for k, v in meta.items() if not json_equal(v, old.get(k)))
    if diff:
        raise FileExistsError(f"{run} holds a run with other settings ({', '.join(diff)}); nothing was "
                              "overwritten. Use another experiment_dir, or delete that folder to retrain.")
    return True


def run_config(run: str | Path) -> Config:
    """The Config a run was trained with, read back from its config.json."""
    path = Path(run) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: {run} is not a run folder (train it with 02/03 first)")
    return Config.from_dict(read_json(path)["config"])


# ---------------------------------------------------------------- finished runs
def student_runs(experiment_dir: str | Path, filename: str = "metrics.json") -> list[tuple[RunKey, Path]]:
    """Every student run holding `filename` (metrics.json: finished), sorted by folder."""
    found = sorted(Path(experiment_dir).glob(f"students/*/p*_s*/*/{filename}"))
    return [(RunKey.from_student_dir(path.parent), path.parent) for path in found]


def finished_runs(experiment_dir, tasks, seed: int, models=MODELS, ps=None) -> pd.DataFrame:
    """Finished student runs of one task combination and seed: model, p, tau, run folder, key."""
    tasks, rows = parse_tasks(tasks), []
    for key, run in student_runs(experiment_dir):
        if key.tasks == tasks and key.seed == seed and key.model in models and (ps is None or key.p in map(float, ps)):
            tau = read_json(run / "metrics.json").get("tau")
            rows.append(dict(model=key.model, p=key.p, tau=tau, run=run, key=key))
    if not rows:
        raise FileNotFoundError(f"no finished {task_key(tasks)} runs with seed {seed} under {experiment_dir}/students; "
                                "run 03_student_mtl_kd.ipynb first")
    return pd.DataFrame(rows).sort_values(["p", "model"]).reset_index(drop=True)
