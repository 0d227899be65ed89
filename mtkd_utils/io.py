"""Atomic file writes and run-folder bookkeeping: a kill never leaves a half-written file."""
from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

_UMASK = os.umask(0)
os.umask(_UMASK)

REPO_ROOT = Path(__file__).resolve().parent.parent
# The experiment every notebook works on when its experiment_dir is None: chosen once, here, for all of them.
CURRENT_EXPERIMENT = Path("outputs") / "experiment.json"
DEFAULT_EXPERIMENT = "outputs/demo"          # what `make demo` builds


@contextmanager
def atomic_path(path: str | Path, checksum: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    checksum=True also writes `<path>.sha256` (sha256sum format) for derived files: verify_file checks it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~_UMASK)      # mkstemp makes 0600; results should read like any other file
    try:
        yield tmp
        digest = sha256_of(tmp) if checksum else None
        # The old checksum goes first: a kill before the new one leaves a file unverified, never wrongly refused.
        checksum_path(path).unlink(missing_ok=True)
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one
        if digest:
            with atomic_path(checksum_path(path)) as side:
                side.write_text(f"{digest}  {path.name}\n")
    finally:
        tmp.unlink(missing_ok=True)


def fingerprint(obj: Any) -> str:
    """Short stable hash of a JSON-able object (a label map, a vocabulary, a data signature)."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def file_sha1(path: str | Path) -> str:
    """Full sha1 of a file's bytes (a manifest, a teacher checkpoint): what a derived file was built from."""
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def save_figure(fig, stem: str | Path, dpi: int = 300, tight: bool = True) -> list[Path]:
    """Write stem.png and stem.pdf atomically (a kill leaves the old file or none); returns both paths.

    tight: crop to the drawn area (bbox_inches="tight"); off for figures with a constrained layout.
    """
    stem = Path(stem)
    paths = [stem.with_name(f"{stem.name}.{ext}") for ext in ("png", "pdf")]   # not with_suffix: stems may hold dots
    for path in paths:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=path.suffix[1:], dpi=dpi, **({"bbox_inches": "tight"} if tight else {}))
    return paths


# ---------------------------------------------------------------- integrity of derived files
class DamagedFileError(ValueError):
    """A derived file (checkpoint, cache, result) that is not what was written: names the path and the fix."""

    def __init__(self, path: str | Path, problem: str, fix: str | None = None):
        self.path, self.problem = Path(path), problem
        super().__init__(f"{path}: {problem}. {fix or repair_hint(path)}")


def checksum_path(path: str | Path) -> Path:
    """The sidecar `<file>.sha256` written with a derived file (`sha256sum -c` reads it too)."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def sha256_of(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def verify_file(path: str | Path, fix: str | None = None) -> Path:
    """Raise DamagedFileError unless `path` matches the checksum written with it (a file without one,
    from an older run, passes unverified). Reads the whole file once: call it per load, never per batch."""
    path, side = Path(path), checksum_path(path)
    if not side.is_file():
        return path
    if not path.is_file():
        raise DamagedFileError(path, "missing, though its checksum file is there", fix)
    expected = side.read_text().split()[:1]
    if expected != [sha256_of(path)]:
        raise DamagedFileError(path, f"damaged: its content ({path.stat().st_size} bytes) does not match the "
                               f"SHA-256 written with it in {side.name} (truncated, overwritten or zeroed since)", fix)
    return path


def repair_hint(path: str | Path) -> str:
    """What to do about a damaged derived file: delete the run that wrote it and run that step again."""
    path = Path(path).resolve()
    exp = next((a for a in path.parents if (a / "data" / "dataset.json").is_file()), None)
    # the run folder is the outermost folder under the experiment holding a config.json (a student, not its tau)
    runs = [a for a in path.parents if exp in a.parents and (a / "config.json").is_file()] if exp else []
    if not runs:
        return (f"It cannot be rebuilt in place: delete {path.parent} and run the step that wrote it again "
                "(the batch command with --retry-failed)")
    run = runs[-1]
    record = exp / "runs" / run.relative_to(exp).parent      # the batch cell that trains this run, if any
    also = f" and its batch record {record}" if (record / "cell.json").is_file() else ""
    return (f"It cannot be rebuilt: delete the run folder {run}{also}, then run the same batch command again "
            "with --retry-failed (or re-run the notebook that trained it)")


def write_json(obj: Any, path: str | Path, checksum: bool = False) -> Path:
    with atomic_path(path, checksum) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
    return Path(path)


def add_seconds(path: str | Path, **seconds: float) -> None:
    """Add wall-clock seconds per phase to a run's timing.json: where the time goes (tools/profile), kept apart from
    the results so that those stay byte-identical from run to run."""
    path = Path(path)
    total = read_json(path) if path.exists() else {}
    for phase, s in seconds.items():
        total[phase] = round(total.get(phase, 0.0) + s, 3)
    write_json(total, path)


def create_json(obj: Any, path: str | Path) -> bool:
    """Write `path` only if it does not exist, complete or not at all: the file is written under a temporary
    name, then hard-linked to `path`, which fails when the name is taken. Of two processes racing to create
    one file exactly one wins. Returns whether this call created it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


def read_json(path: str | Path) -> Any:
    """Parse a JSON file, verified against its checksum when it was written with one."""
    text = verify_file(path).read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); correct the file, or delete it if a step wrote it") from None


def write_csv(df, path: str | Path, checksum: bool = False) -> Path:
    with atomic_path(path, checksum) as tmp:
        df.to_csv(tmp, index=False)
    return Path(path)


def write_npy(array, path: str | Path, checksum: bool = False) -> Path:
    with atomic_path(path, checksum) as tmp, open(tmp, "wb") as f:   # a file object: np.save would add '.npy'
        np.save(f, array)
    return Path(path)


def git_commit() -> str:
    """The workbook's git commit (with '+dirty' when there are uncommitted changes), or 'unknown'."""
    root = REPO_ROOT
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def environment() -> dict[str, str]:
    """Versions that decide the numbers: recorded in every run folder."""
    import numpy  # noqa: E401  (lazy: keeps `import mtkd_utils` light)
    import torch
    import torchvision
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "cuda": torch.version.cuda or "none",
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "git_commit": git_commit(),
    }


def current_experiment(repo_root: str | Path = REPO_ROOT) -> Path:
    """The experiment folder named in outputs/experiment.json ({"experiment_dir": "outputs/odir"}), else outputs/demo.

    A relative experiment_dir is relative to the repository root, as every path in the notebooks is.
    """
    root = Path(repo_root)
    path = root / CURRENT_EXPERIMENT
    if not path.exists():
        return root / DEFAULT_EXPERIMENT
    try:
        chosen = read_json(path)["experiment_dir"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: expected JSON like {{\"experiment_dir\": \"outputs/demo\"}} ({err!r}); "
                         f"fix or delete the file (without it notebooks use {DEFAULT_EXPERIMENT})") from err
    if not isinstance(chosen, str) or not chosen:
        raise ValueError(f"{path}: experiment_dir must be a folder path, got {chosen!r}")
    return Path(chosen) if Path(chosen).is_absolute() else root / chosen


def choose_experiment(experiment_dir: str | Path, repo_root: str | Path = REPO_ROOT) -> Path:
    """Make `experiment_dir` the current experiment of every notebook (writes outputs/experiment.json)."""
    return write_json({"experiment_dir": str(experiment_dir)}, Path(repo_root) / CURRENT_EXPERIMENT)
