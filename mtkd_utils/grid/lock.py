"""One runner per experiment: a lock file naming its holder, taken over when the holder is gone.

The lock is a file created with O_CREAT | O_EXCL (atomic, also on NFS v3+), holding the runner's pid, host,
start time and command. A lock whose pid no longer exists on this host is stale (a killed runner) and is
taken over; a lock held from another host cannot be checked from here and is refused with the holder named.
A filelock guard serialises the check-then-take-over so that two runners never both take over one lock.
"""
from __future__ import annotations

import json
import os
import socket
import sys
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Iterator

from filelock import FileLock

LOCK_NAME = "batch.lock"


class ExperimentBusy(RuntimeError):
    """Another live runner holds the experiment."""


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # exists, owned by someone else
        return True
    return True


def _holder_text(holder: dict) -> str:
    return (f"pid {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')} "
            f"({holder.get('command', '?')})")


def _read_holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, json.JSONDecodeError):
        return {}   # half-written by a runner killed between create and write: no live holder


def is_stale(holder: dict) -> bool:
    """Left by a runner that is gone: its pid does not exist on this host (or the file is unreadable)."""
    if not holder.get("pid"):
        return True
    return holder.get("host") == socket.gethostname() and not pid_alive(int(holder["pid"]))


def _create(path: Path, holder: dict) -> None:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(holder) + "\n")


def acquire(experiment_dir: str | Path) -> Path:
    """Take the experiment's lock or raise ExperimentBusy naming the holder; returns the lock path."""
    exp = Path(experiment_dir)
    exp.mkdir(parents=True, exist_ok=True)
    path = exp / LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": datetime.now().isoformat(timespec="seconds"),
          "command": " ".join(sys.argv)}
    with FileLock(str(path) + ".guard", timeout=60):
        if path.exists():
            holder = _read_holder(path)
            if not is_stale(holder):
                raise ExperimentBusy(
                    f"{exp} is busy: another batch runner holds {path} ({_holder_text(holder)}). Wait for it to "
                    f"finish, or, if that runner is gone (another host cannot be checked from here), delete {path}.")
            print(f"taking over a stale lock {path} ({_holder_text(holder)}: not running)", file=sys.stderr)
            path.unlink()
        _create(path, me)
    return path


def release(path: Path) -> None:
    """Remove the lock if this process holds it."""
    if _read_holder(path).get("pid") == os.getpid() and _read_holder(path).get("host") == socket.gethostname():
        path.unlink(missing_ok=True)


@contextmanager
def experiment_lock(experiment_dir: str | Path) -> Iterator[Path]:
    """with experiment_lock(exp): ... — the whole grid run holds it; released on any exit."""
    path = acquire(experiment_dir)
    try:
        yield path
    finally:
        release(path)
