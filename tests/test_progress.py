"""Progress output: one text line per stage outside the lab, nothing of a widget left in a saved notebook."""
import json
from pathlib import Path

import nbformat
import papermill as pm
import pytest

from mtkd_utils.progress import STYLE_VARIABLE, progress, progress_style

REPO = Path(__file__).resolve().parent.parent
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def widget_debris(notebook: Path, state: bool = True) -> list[str]:
    """What a saved notebook keeps of progress bars: widget views, tqdm's `0%|` text fallbacks, widget state."""
    nb = json.loads(Path(notebook).read_text())
    found = ["metadata.widgets"] if state and "widgets" in nb["metadata"] else []
    for i, cell in enumerate(nb["cells"]):
        for out in cell.get("outputs", []):
            text = "".join(out.get("text", "")) + "".join(out.get("data", {}).get("text/plain", ""))
            if WIDGET_MIME in out.get("data", {}) or "%|" in text:
                found.append(f"cell {i}: {out.get('data', {}).get('text/plain') or text[:80]!r}")
    return found


def test_text_style_prints_one_line_per_stage(monkeypatch, capsys):
    monkeypatch.setenv(STYLE_VARIABLE, "text")
    bar = progress([1, 2, 3], "teacher T1 epoch 1")
    for _ in bar:
        bar.set_postfix(loss="0.500")
    assert len(bar) == 3
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("teacher T1 epoch 1: 3/3 in ") and lines[0].endswith(", loss=0.500")


def test_a_stage_that_fails_still_says_how_far_it_got(monkeypatch, capsys):
    monkeypatch.setenv(STYLE_VARIABLE, "text")
    with pytest.raises(RuntimeError):
        for i in progress(range(5), "image cache"):
            if i == 2:
                raise RuntimeError("unreadable image")
    assert capsys.readouterr().out.startswith("image cache: 2/5 in ")


def test_style_follows_the_front_end(monkeypatch):
    monkeypatch.delenv(STYLE_VARIABLE, raising=False)
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    monkeypatch.setitem(__import__("sys").modules, "ipykernel", object())   # inside a kernel ...
    assert progress_style() == "text"                                       # ... that papermill started
    monkeypatch.setenv("JPY_SESSION_NAME", "notebooks/02_teachers.ipynb")
    assert progress_style() == "widget"                                     # ... that JupyterLab started
    monkeypatch.setenv(STYLE_VARIABLE, "bars")
    with pytest.raises(ValueError, match=STYLE_VARIABLE):
        progress_style()


def executed(tmp_path: Path) -> Path:
    """A two-stage notebook run by papermill in the workbook's kernel; returns the executed copy."""
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "mtkd", "display_name": "mtkd", "language": "python"}})
    nb.cells = [nbformat.v4.new_code_cell("from mtkd_utils.progress import progress\n"
                                          "for stage in ('image cache', 'teacher T1 epoch 1'):\n"
                                          "    bar = progress(range(7), stage)\n"
                                          "    for i in bar:\n"
                                          "        bar.set_postfix(loss=i)")]
    src, out = tmp_path / "stages.ipynb", tmp_path / "stages.out.ipynb"
    nbformat.write(nb, src)
    pm.execute_notebook(src, out, kernel_name="mtkd", cwd=str(REPO), progress_bar=False)
    return out


def outputs_text(notebook: Path) -> str:
    cell = json.loads(notebook.read_text())["cells"][-1]
    return "\n".join("".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/plain", "")) for o in cell["outputs"])


@pytest.mark.parametrize("front_end", [None, "notebooks/02_teachers.ipynb"], ids=["papermill", "lab"])
def test_an_executed_notebook_keeps_one_line_per_stage_and_no_widget(tmp_path, monkeypatch, front_end):
    """Papermill: text lines. A kernel that believes a front-end watches (JPY_SESSION_NAME, as JupyterLab sets it)
    draws widgets, and each is replaced by its line when its stage ends: the saved file holds the same lines."""
    monkeypatch.delenv(STYLE_VARIABLE, raising=False)
    if front_end:
        monkeypatch.setenv("JPY_SESSION_NAME", front_end)     # the kernel inherits it, as from jupyter_server
    else:
        monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    out = executed(tmp_path)
    # nbclient (not JupyterLab, which saves no widget state by default) records the state of widgets it saw open.
    assert widget_debris(out, state=not front_end) == []
    lines = [line for line in outputs_text(out).splitlines() if line]
    assert [line.split(":")[0] for line in lines] == ["image cache", "teacher T1 epoch 1"]
    assert all(" 7/7 in " in line and line.endswith("loss=6") for line in lines)
