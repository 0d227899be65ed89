"""One save/load pair for every notebook: full state, written atomically, read with weights_only=True."""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from ..io import DamagedFileError, atomic_path, verify_file


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """torch.save to a temporary file, then rename: a kill never leaves a half-written checkpoint.
    Its SHA-256 goes beside it (`<path>.sha256`), checked by load_checkpoint."""
    with atomic_path(path, checksum=True) as tmp:
        torch.save(state, tmp)
    return Path(path)


def load_checkpoint(path: str | Path, expect: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load a checkpoint (tensors and plain containers only) and check it fits what the caller expects."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint; train this model first (02_teachers / 03_student_mtl_kd)")
    verify_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as e:
        # only a damaged file written before checksums existed gets here: a checksummed one failed verify_file
        raise DamagedFileError(path, f"not a readable checkpoint ({type(e).__name__}: {str(e)[:200]})") from None
    if expect:
        have = state.get("signature", {})
        diff = {k: (have.get(k), v) for k, v in expect.items() if have.get(k) != v}
        if diff:
            lines = "; ".join(f"{k}: checkpoint has {a!r}, expected {b!r}" for k, (a, b) in diff.items())
            raise ValueError(f"{path} does not fit this run ({lines}). It was trained with another backbone, "
                             "task set, label map or vocabulary: retrain it or point to the right run folder.")
    return state
