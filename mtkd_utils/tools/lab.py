"""JupyterLab for the workbook: `make lab` runs `python -m mtkd_utils.lab`; the browser test starts the same command.

The lab opens at the repository root (notebooks, outputs and docs in its file browser), listens on 127.0.0.1 only,
asks for a token, and offers only the workbook's kernel (`mtkd`, the one the notebooks name).

Committed notebooks stay clean two ways. The lab saves the workbook's own notebooks (notebooks/*.ipynb) as git
stores them, without outputs (strip_committed_notebook): saving after Run All leaves `git status` clean (a clean
filter alone cannot: git reports a file of another size as modified without filtering it). Results live in the
experiment folder; to keep a notebook with its outputs, save a copy elsewhere (File > Save Notebook As...).
Anything else that writes into notebooks/ (papermill, another editor) is stripped by the nbstripout git filter
that the set-up installs: `git diff` shows nothing, and `git add` clears the file from `git status`.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ..io import REPO_ROOT

KERNEL_NAME = "mtkd"


def lab_command(port: int | None = None, token: str | None = None, root: str | Path = REPO_ROOT) -> list[str]:
    """The `jupyter lab` command line; without a token JupyterLab makes a random one and prints it in the URL."""
    cmd = [sys.executable, "-m", "jupyterlab", f"--ServerApp.root_dir={Path(root).resolve()}", "--ip=127.0.0.1",
           "--no-browser", f"--KernelSpecManager.allowed_kernelspecs={KERNEL_NAME}",
           f"--MappingKernelManager.default_kernel_name={KERNEL_NAME}",
           f"--ContentsManager.pre_save_hook={__name__}.strip_committed_notebook"]
    if os.geteuid() == 0:
        cmd.append("--allow-root")        # containers and cloud machines run as root; JupyterLab refuses without it
    if port is not None:
        cmd.append(f"--ServerApp.port={port}")
    if token is not None:
        cmd.append(f"--IdentityProvider.token={token}")
    return cmd


# What git stores of a notebook: no outputs, counts or widget state (nbstripout's defaults), nor kernel details
# (language_info changes when a notebook is merely opened). Cell ids stay as committed: a save alone changes nothing.
STRIPPED_KEYS = ("metadata.signature", "metadata.widgets", "metadata.language_info", "cell.metadata.collapsed",
                 "cell.metadata.ExecuteTime", "cell.metadata.execution", "cell.metadata.heading_collapsed",
                 "cell.metadata.hidden", "cell.metadata.scrolled")
NBSTRIPOUT = f"-m nbstripout --keep-id --extra-keys '{' '.join(STRIPPED_KEYS)}'"
COMMITTED_NOTEBOOKS = "notebooks/"


def strip_committed_notebook(model: dict, path: str, **_) -> None:
    """JupyterLab's pre-save hook: a notebook under notebooks/ is written as git stores it (the filter's own strip)."""
    import nbformat
    from nbstripout import strip_output
    if model.get("type") != "notebook" or not path.lstrip("/").startswith(COMMITTED_NOTEBOOKS):
        return
    nb = nbformat.from_dict(model["content"])
    model["content"] = strip_output(nb, keep_output=False, keep_count=False, keep_id=True, extra_keys=list(STRIPPED_KEYS))


def install_notebook_filter(repo: str | Path = REPO_ROOT, python: str = ".venv/bin/python") -> None:
    """Make git see every notebook through nbstripout (.gitattributes, committed, names the filter `nbstripout`).

    `python` runs from the repository root, where git runs its filters: the relative default suits any clone.
    """
    if not (Path(repo) / ".gitattributes").exists():
        raise FileNotFoundError(f"{repo}/.gitattributes is missing: it names the nbstripout filter for *.ipynb")
    clean = f"{python} {NBSTRIPOUT}"
    for key, value in [("filter.nbstripout.clean", clean), ("filter.nbstripout.smudge", "cat"),
                       ("filter.nbstripout.required", "true"), ("diff.ipynb.textconv", f"{clean} --textconv")]:
        subprocess.run(["git", "config", key, value], cwd=repo, check=True)


def main(argv: list[str]) -> None:
    """`--install-git-filter`: the set-up step; otherwise replace this process by JupyterLab, passing argv on."""
    if argv == ["--install-git-filter"]:
        install_notebook_filter()
        return
    cmd = lab_command() + argv
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    main(sys.argv[1:])
