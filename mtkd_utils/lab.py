"""JupyterLab for the workbook: `make lab` runs `python -m mtkd_utils.lab`; the browser test starts the same command.

The lab opens at the repository root (notebooks, outputs and docs in its file browser), listens on 127.0.0.1 only,
asks for a token, and offers only the workbook's kernel (`mtkd`, the one the notebooks name).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
KERNEL_NAME = "mtkd"


def lab_command(port: int | None = None, token: str | None = None, root: str | Path = REPO) -> list[str]:
    """The `jupyter lab` command line; without a token JupyterLab makes a random one and prints it in the URL."""
    cmd = [sys.executable, "-m", "jupyterlab", f"--ServerApp.root_dir={Path(root).resolve()}", "--ip=127.0.0.1",
           "--no-browser", f"--KernelSpecManager.allowed_kernelspecs={KERNEL_NAME}"]
    if os.geteuid() == 0:
        cmd.append("--allow-root")        # containers and cloud machines run as root; JupyterLab refuses without it
    if port is not None:
        cmd.append(f"--ServerApp.port={port}")
    if token is not None:
        cmd.append(f"--IdentityProvider.token={token}")
    return cmd


# What git stores of a notebook: no outputs, execution counts, widget state or kernel details (language_info changes
# when a notebook is merely opened). --keep-id: cell ids stay as committed, so a save alone changes nothing.
NBSTRIPOUT = "-m nbstripout --keep-id --extra-keys metadata.language_info"


def install_notebook_filter(repo: str | Path = REPO, python: str = ".venv/bin/python") -> None:
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
