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


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~_UMASK)      # mkstemp makes 0600; results should read like any other file
    try:
        yield tmp
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one
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


def write_json(obj: Any, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
    return Path(path)


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def write_csv(df, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    return Path(path)


def git_commit() -> str:
    """The workbook's git commit (with '+dirty' when there are uncommitted changes), or 'unknown'."""
    root = Path(__file__).resolve().parent.parent
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
    import numpy, torch, torchvision  # noqa: E401  (lazy: keeps `import mtkd_utils` light)
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
