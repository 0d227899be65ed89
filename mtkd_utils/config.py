"""One config object for every step: plain values, one comment each, saved in every run folder."""
from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from itertools import combinations
from typing import Any

from .seeds import derive_seed

TASKS = ("T1", "T2", "T3")          # coarse disease, fine disease, diagnosis sentence
# MTL baseline, MTL+KD (M1 teacher), MTL+KD (teacher ensemble), M1 retrained for as many updates as the student,
# M1 retrained to its validation plateau
MODELS = ("M1", "M2", "M3", "M1b", "M1L")   # M1b: M1 at the student's updates; M1L: M1 at its validation plateau
TEACHER_HEAD_DROPOUT = 0.2          # the heads' dropout for teachers, M1 and M1b (students: Config.head_dropout)
POOLS = ("mean", "mean+halves")      # pooling of the feature map: global average | + its left and right halves
T3_KD = ("exact", "topk")           # T3 soft targets: full, or top-k + rest bucket | truncated top-k (ablation)
FRACTIONS = (15, 30, 45, 60, 70)    # the paper's training fractions p, % of the labeled data
SUPPORTED_BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "wide_resnet50_2",   # torchvision names
                       "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
                       "shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "efficientnet_b0")


@dataclass
class Config:
    # data
    dataset: str = "demo"               # synthetic size preset (a name in mtkd_utils.presets) when source is synthetic
    image_size: int = 64                # working resolution (pixels, square)
    split_seed: int = 0                 # fixes test/val/train pool: the same for every run
    min_word_freq: int = 2              # T3 vocabulary: words seen fewer times become <unk>
    max_len: int = 30                   # T3: max tokens including <sos>/<eos>
    # model
    backbone: str = "mobilenet_v3_small"  # torchvision name; the paper used resnet50
    pretrained: str | None = None       # None: random init; "imagenet": torchvision cache; or a .pth path
    output_stride: int = 32             # 16: dilated last stage (mobilenet_v3, resnet50+): finer feature maps and CAMs
    pool: str = "mean"                  # "mean": global average (the paper); "mean+halves": + left/right half means
    head_hidden: int = 256              # T1/T2 heads: FC(hidden) + ReLU, then the class layer
    embed_dim: int = 128                # T3 word embedding size
    lstm_hidden: int = 256              # T3 LSTM size
    beam_size: int = 1                  # T3 decoding at test: 1 = greedy, >1 = beam search
    mbr_samples: int = 0                # T3 decoding at test: n > 0 = minimum-Bayes-risk choice among n sampled
                                        # sentences (the one agreeing best with the others; beam_size unused)
    t3_scst_steps: int = 0              # T3 self-critical fine-tuning of each reported model's decoder (train/scst.py)
                                        # after training, in updates of 32 images; 0: off
    t3_scst_lr: float = 1e-4            # its Adam learning rate
    t3_scst_samples: int = 5            # sentences sampled per image per update (>= 2: the baseline is the others')
    t3_scst_findings: float = 0.0       # its reward: sentence BLEU-4 + this x the sentence's findings F1 (0: BLEU-4 alone)
    # optimisation
    seed: int = 0                       # the run's seed; each model's own seed derives from it (diverse_seeds)
    diverse_seeds: bool = True          # own init/data-order seed per teacher subset and student; False: all `seed`
    epochs: int = 12                    # teachers / M1
    student_passes: float = 3.0         # M2 / M3: the schedule in passes over the unlabeled pool
    batch_size: int = 64
    lr: float = 2e-3                    # AdamW, cosine schedule
    weight_decay: float = 1e-4
    patience: int = 4                   # early stopping on the validation score (epochs without gain)
    min_steps: int = 0                  # at least this many updates per model (epochs stretched for small fractions)
    val_every: int = 0                  # at least this many updates between validations (0: every epoch); a small
                                        # fraction's epoch is a few updates, and each validation costs ~10 of them
    task_weights: dict[str, float] = field(default_factory=lambda: {"T1": 1.0, "T2": 1.0, "T3": 1.0})
    augment: bool = True                # teachers / M1: a small shift and brightness jitter per batch (no flips)
    # distillation
    alpha_grid: tuple[float, ...] = (0.5, 0.9)  # α of α·mean_all(KD) + (1−α)·mean_labeled(CE); chosen on val. with τ
    tau_grid: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0, 20.0)  # chosen on validation per (tasks, p)
    unlabeled_per_epoch: float = 1.0    # passes over the unlabeled pool per student epoch (one validation each)
    labeled_share: float = 0.25         # labeled rows per student batch (oversampled); 0: plain shuffle (ablation)
    student_augment: bool = True        # noised student: per-image crop, rotation, colours (noise.py); False: `augment`
    head_dropout: float = 0.5           # dropout before the students' T1/T2 heads (teachers, M1, M1b: 0.2)
    kd_mode: str = "cached"             # "cached": teachers on clean images, once; "online": on each noised batch
    t3_kd: str = "exact"                # "exact": full distribution or top-k + rest; "topk": truncated (ablation)
    t3_topk: int = 32                   # T3 soft targets kept per step (exact when >= vocabulary)
    # runtime
    device: str = "auto"                # "auto", "cpu" or "cuda"
    threads: int = 1                    # CPU threads for torch (0: torch's default); 1 was fastest: docs/PERFORMANCE.md

    def __post_init__(self) -> None:
        self.tau_grid = tuple(float(t) for t in self.tau_grid)
        self.alpha_grid = tuple(float(a) for a in self.alpha_grid)
        self.check()

    def check(self) -> None:
        """Raise ValueError naming the bad parameter and what is allowed."""
        for f in fields(self):
            _check_type(f, getattr(self, f.name))
        if not self.alpha_grid or any(not 0.0 <= a <= 1.0 for a in self.alpha_grid):
            raise ValueError(f"alpha_grid={self.alpha_grid}: give KD weights in [0, 1], e.g. (0.5, 0.9)")
        if not 0.0 <= self.labeled_share < 1.0 or not 0.0 <= self.head_dropout < 1.0:
            raise ValueError(f"labeled_share={self.labeled_share}, head_dropout={self.head_dropout}: "
                             "both must lie in [0, 1)")
        if self.student_passes <= 0 or self.unlabeled_per_epoch <= 0:
            raise ValueError(f"student_passes={self.student_passes}, unlabeled_per_epoch={self.unlabeled_per_epoch}: "
                             "both must be > 0")
        if self.t3_kd not in T3_KD:
            raise ValueError(f"t3_kd={self.t3_kd!r}: use one of {T3_KD}")
        if not self.tau_grid or any(t <= 0 for t in self.tau_grid):
            raise ValueError(f"tau_grid={self.tau_grid}: temperatures must be > 0")
        if self.pool not in POOLS:
            raise ValueError(f"pool={self.pool!r}: use one of {POOLS} (global average | + the left/right halves)")
        if self.kd_mode not in ("cached", "online"):
            raise ValueError(f"kd_mode={self.kd_mode!r}: use 'cached' or 'online'")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device={self.device!r}: use 'auto', 'cpu' or 'cuda'")
        if self.beam_size < 1 or self.max_len < 3:
            raise ValueError(f"beam_size={self.beam_size}, max_len={self.max_len}: need beam_size >= 1, max_len >= 3")
        for name in ("image_size", "epochs", "batch_size", "patience", "t3_topk", "min_word_freq",
                     "head_hidden", "embed_dim", "lstm_hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be a positive integer")
        for name in ("threads", "min_steps", "val_every", "seed", "split_seed", "mbr_samples", "t3_scst_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)}: must be an integer >= 0")
        self._check_optimisation()
        if self.backbone not in SUPPORTED_BACKBONES:
            raise ValueError(f"backbone={self.backbone!r}: choose one of {SUPPORTED_BACKBONES}")

    def _check_optimisation(self) -> None:
        """Values that train without error and learn nothing (lr=0) or the wrong thing (a negative weight)."""
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr}: the learning rate must be > 0")
        if self.t3_scst_findings < 0:
            raise ValueError(f"t3_scst_findings={self.t3_scst_findings}: the findings' weight in the reward must be >= 0")
        if self.t3_scst_steps and not (self.t3_scst_lr > 0 and self.t3_scst_samples >= 2):
            raise ValueError(f"t3_scst_lr={self.t3_scst_lr}, t3_scst_samples={self.t3_scst_samples}: self-critical "
                             "fine-tuning needs a learning rate > 0 and >= 2 samples per image (each one's baseline "
                             "is the others' mean reward)")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay={self.weight_decay}: must be >= 0")
        if not self.unlabeled_per_epoch > 0:
            raise ValueError(f"unlabeled_per_epoch={self.unlabeled_per_epoch}: the share of the unlabeled pool "
                             "drawn per student epoch must be > 0 (1.0: all of it)")
        if set(self.task_weights) - set(TASKS):
            raise ValueError(f"task_weights={self.task_weights}: keys must be among {TASKS}")
        bad = {k: w for k, w in self.task_weights.items()
               if isinstance(w, bool) or not isinstance(w, (int, float)) or not w >= 0}
        if bad:
            raise ValueError(f"task_weights={self.task_weights}: weights must be numbers >= 0, not {bad}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown config field(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)

    def updated(self, **changes: Any) -> "Config":
        return replace(self, **changes)

    def model_seed(self, role: str, tasks: tuple[str, ...]) -> int:
        """The seed of one model of the run (init and data order): its own with diverse_seeds, else the run's."""
        return derive_seed(self.seed, role, tasks) if self.diverse_seeds else self.seed


def _check_type(f, value: Any) -> None:
    """A papermill parameter of the wrong type fails here, by name, before anything trains."""
    default = f.default_factory() if f.default is MISSING else f.default
    ok = {bool: lambda v: isinstance(v, bool),
          int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          str: lambda v: isinstance(v, str),
          tuple: lambda v: isinstance(v, (tuple, list)),
          dict: lambda v: isinstance(v, dict)}.get(type(default), lambda v: v is None or isinstance(v, str))
    if not ok(value):
        kind = "str or None" if default is None else type(default).__name__
        raise ValueError(f"{f.name}={value!r} ({type(value).__name__}): expected {kind}")


def parse_tasks(tasks: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """'T1+T3' or ['T1', 'T3'] -> ('T1', 'T3'); rejects anything but a non-empty subset of TASKS."""
    items = tasks.replace(",", "+").split("+") if isinstance(tasks, str) else list(tasks)
    items = [t.strip().upper() for t in items if str(t).strip()]
    if not items or set(items) - set(TASKS) or len(set(items)) != len(items):
        raise ValueError(f"tasks={tasks!r}: give a non-empty subset of {TASKS} without repeats, e.g. 'T1+T2+T3'")
    return tuple(sorted(items))


def task_key(tasks: tuple[str, ...]) -> str:
    return "+".join(tasks)


def task_subsets(tasks: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Every non-empty subset of `tasks` (the teacher ensemble of M3 plus M1 itself)."""
    return [c for r in range(1, len(tasks) + 1) for c in combinations(tasks, r)]


def check_fraction(p: float) -> float:
    if not isinstance(p, (int, float)) or isinstance(p, bool):
        raise ValueError(f"p={p!r} ({type(p).__name__}): the training fraction must be a number, e.g. 15 (not '15')")
    if not 0 < p <= 70:
        raise ValueError(f"p={p!r}: the training fraction is a percentage of the labeled data in (0, 70]")
    return float(p)
