"""Seeds per model of a run: diverse teachers and a student of their own, reproducible on any machine."""
from __future__ import annotations

import hashlib

ROLES = ("teacher", "student")


def derive_seed(run_seed: int, role: str, tasks) -> int:
    """A seed in [0, 2**31) for one model of run `run_seed`: its initialisation and data order.

    Teachers of different task subsets, and the student, get different seeds (an ensemble of
    near-copies adds little); the same inputs give the same seed in every process and on every
    machine, because it comes from sha256 and not from Python's salted `hash()`. Task order does
    not matter: ('T2', 'T1') is the subset ('T1', 'T2').
    """
    if role not in ROLES:
        raise ValueError(f"role={role!r}: choose one of {ROLES}")
    if isinstance(run_seed, bool) or not isinstance(run_seed, int):
        raise ValueError(f"run_seed={run_seed!r}: give an int")
    key = f"{run_seed}|{role}|{'+'.join(sorted(tasks))}"
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") & 0x7FFF_FFFF
