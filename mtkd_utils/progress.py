"""Progress bars that save cleanly: a live widget in JupyterLab, one line of text per stage everywhere else.

tqdm.auto draws a widget in any kernel, papermill's included; a saved or executed notebook then keeps the
widget's text fallback (`0%| | 0/7`) or shows "Error displaying widget: model not found" after a reload.
Here a stage is a widget only while a JupyterLab front-end watches it, and every stage ends as one line of
text (`teacher T1 epoch 1: 7/7 in 2.1 s, loss=1.234`), which is all a saved notebook keeps.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Iterable, Iterator

# widget | terminal | text: forces a style (e.g. MTKD_PROGRESS=text for papermill started from inside the lab).
STYLE_VARIABLE = "MTKD_PROGRESS"
STYLES = ("widget", "terminal", "text")


def progress_style() -> str:
    """widget: a kernel started by a Jupyter server (it sets JPY_SESSION_NAME; papermill does not);
    terminal: a plain interpreter on a terminal; text: anything else (papermill, pytest, logs)."""
    forced = os.environ.get(STYLE_VARIABLE)
    if forced:
        if forced not in STYLES:
            raise ValueError(f"{STYLE_VARIABLE}={forced!r}: choose one of {STYLES} or leave it unset")
        return forced
    if "ipykernel" in sys.modules:
        return "widget" if os.environ.get("JPY_SESSION_NAME") else "text"
    return "terminal" if sys.stderr.isatty() else "text"


class progress:
    """Iterate over `items` as one named stage: `for b in progress(batches, "epoch 1"): ...; bar.set_postfix(...)`."""

    def __init__(self, items: Iterable, desc: str, total: int | None = None):
        self.items, self.desc = items, desc
        self.total = total if total is not None else len(items) if hasattr(items, "__len__") else None
        self.postfix: dict[str, str] = {}
        self._bar = None

    def __len__(self) -> int:
        if self.total is None:
            raise TypeError(f"progress({self.desc!r}): the number of items is unknown; pass total=")
        return self.total

    def set_postfix(self, **values) -> None:
        """Values shown beside the bar and in the stage's closing line (e.g. the running loss)."""
        self.postfix.update({k: str(v) for k, v in values.items()})
        if self._bar is not None:
            self._bar.set_postfix(self.postfix)

    def summary(self, done: int, seconds: float) -> str:
        extra = "".join(f", {k}={v}" for k, v in self.postfix.items())
        of = "" if self.total is None else f"/{self.total}"
        return f"{self.desc}: {done}{of} in {seconds:.1f} s{extra}"

    def __iter__(self) -> Iterator:
        start, done = time.perf_counter(), 0
        style = progress_style()
        handle = self._open_widget() if style == "widget" else None
        if style == "terminal":
            from tqdm import tqdm
            self._bar = tqdm(total=self.total, desc=self.desc, leave=False, file=sys.stderr)
        try:
            for item in self.items:
                yield item
                done += 1
                if self._bar is not None:
                    self._bar.update(1)
        finally:
            bar, self._bar = self._bar, None
            if bar is not None:
                bar.close()
            self._finish(self.summary(done, time.perf_counter() - start), handle, bar)

    def _open_widget(self):
        """A tqdm widget in a display that the closing line will replace (so no widget reaches the saved file)."""
        from IPython.display import display
        from tqdm.notebook import tqdm as widget_bar
        self._bar = widget_bar(total=self.total, desc=self.desc, display=False)
        return display(self._bar.container, display_id=True)

    @staticmethod
    def _finish(line: str, handle, bar) -> None:
        if handle is None:
            print(line, flush=True)
            return
        handle.update({"text/plain": line}, raw=True)
        close_widget(bar.container)   # its models go too: no widget state is left for a saved file to miss


def close_widget(widget) -> None:
    """Close an ipywidget and every widget it holds (children, layout, style): `close()` alone leaves those."""
    from ipywidgets import Widget
    for name in widget.keys:
        value = getattr(widget, name)
        for part in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(part, Widget):
                close_widget(part)
    widget.close()
