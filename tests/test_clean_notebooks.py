"""Committed notebooks stay clean however they are used: JupyterLab saves them stripped (mtkd_utils.tools.lab's pre-save
hook), and git sees any other write through nbstripout (the set-up's filter)."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

from jupyter_server.services.contents.filemanager import FileContentsManager

from mtkd_utils.tools.lab import install_notebook_filter, strip_committed_notebook

REPO = Path(__file__).resolve().parent.parent
GIT_USER = ["-c", "user.name=mtkd test", "-c", "user.email=test@mtkd.invalid"]


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *GIT_USER, *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def scratch_repo(dest: Path, notebooks: tuple[str, ...] = (), also: tuple[str, ...] = ()) -> Path:
    """A fresh git repository holding the workbook's notebooks (all, or these names) and `also` (tracked files of
    this working tree), set up as `make` does (the nbstripout filter; this interpreter stands for .venv/bin/python)."""
    dest.mkdir(parents=True)
    git(dest, "init", "-q")
    install_notebook_filter_for(dest)
    names = notebooks or [p.name for p in sorted((REPO / "notebooks").glob("*.ipynb"))]
    for rel in [".gitignore", *[f"notebooks/{n}" for n in names], *also]:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dest / rel)
    git(dest, "add", "-A")
    git(dest, "commit", "-q", "-m", "workbook")
    for path in (dest / "notebooks").glob("*.ipynb"):      # as a clone has them: the committed (stripped) files
        path.unlink()
    git(dest, "checkout", "--", "notebooks")
    return dest


def install_notebook_filter_for(repo: Path) -> None:
    shutil.copy2(REPO / ".gitattributes", repo / ".gitattributes")
    install_notebook_filter(repo, python=sys.executable)


def run_all(nb: dict) -> dict:
    """What running does to a notebook: outputs, counts, timings, kernel details, widget views and state."""
    nb["metadata"]["language_info"] = {"name": "python", "version": "3.11.2", "mimetype": "text/x-python",
                                       "codemirror_mode": {"name": "ipython", "version": 3}}
    nb["metadata"]["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}, "version_major": 2}}
    for n, cell in enumerate(c for c in nb["cells"] if c["cell_type"] == "code"):
        cell["execution_count"] = n + 1
        cell["metadata"]["execution"] = {"iopub.execute_input": "2026-11-27T05:00:00.000Z"}
        cell["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["teacher T1 epoch 1: 7/7 in 2.0 s\n"]},
                           {"output_type": "display_data", "metadata": {},
                            "data": {"application/vnd.jupyter.widget-view+json": {"model_id": "f00d", "version_major": 2,
                                                                                   "version_minor": 0},
                                     "text/plain": ["  0%|          | 0/7 [00:00<?, ?it/s]"]}}]
    return nb


def test_notebooks_run_and_saved_in_the_lab_leave_git_status_clean(tmp_path):
    repo = scratch_repo(tmp_path / "clone", ("01_data_prep.ipynb", "02_teachers.ipynb"))
    lab = FileContentsManager(root_dir=str(repo))
    lab.register_pre_save_hook(strip_committed_notebook)    # as mtkd_utils.tools.lab's command line does
    for path in sorted((repo / "notebooks").glob("*.ipynb")):
        rel = path.relative_to(repo).as_posix()
        lab.save({"type": "notebook", "format": "json", "content": run_all(lab.get(rel)["content"])}, rel)
    assert git(repo, "status", "--porcelain") == ""
    copy = "outputs/01_with_outputs.ipynb"                 # Save As outside notebooks/: outputs kept
    (repo / "outputs").mkdir()
    lab.save({"type": "notebook", "format": "json", "content": run_all(lab.get("notebooks/01_data_prep.ipynb")["content"])}, copy)
    assert json.loads((repo / copy).read_text())["cells"][2]["outputs"]


def test_notebooks_written_by_other_tools_are_stripped_by_the_git_filter(tmp_path):
    """papermill into notebooks/, another editor: git sees no change (`git add` clears the size-changed stat)."""
    repo = scratch_repo(tmp_path / "clone", ("01_data_prep.ipynb", "06_results.ipynb"))
    for path in sorted((repo / "notebooks").glob("*.ipynb")):
        path.write_text(json.dumps(run_all(json.loads(path.read_text())), indent=1) + "\n")
    assert git(repo, "diff") == ""
    git(repo, "add", "-A")
    assert git(repo, "status", "--porcelain") == "" and git(repo, "diff", "--cached") == ""


def test_an_edit_to_a_cell_still_shows(tmp_path):
    """The filter hides what running leaves, not what a researcher writes."""
    repo = scratch_repo(tmp_path / "clone", ("02_teachers.ipynb",))
    path = repo / "notebooks" / "02_teachers.ipynb"
    nb = json.loads(path.read_text())
    params = next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))
    params["source"] = [line.replace("p = 15 ", "p = 30 ") for line in params["source"]]
    path.write_text(json.dumps(nb, indent=1) + "\n")
    assert git(repo, "status", "--porcelain").split() == ["M", "notebooks/02_teachers.ipynb"]
    assert "+    \"p = 30" in git(repo, "diff")


def test_the_committed_notebooks_are_clean():
    """Every notebook in the repository is stored as the filter would store it (no outputs sneaked in)."""
    for path in sorted((REPO / "notebooks").glob("*.ipynb")):
        stored = subprocess.run(["git", "show", f"HEAD:notebooks/{path.name}"], cwd=REPO, capture_output=True,
                                text=True, check=True).stdout
        nb = json.loads(stored)
        assert "language_info" not in nb["metadata"] and "widgets" not in nb["metadata"], path.name
        assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb["cells"] if c["cell_type"] == "code")
