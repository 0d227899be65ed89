"""`make lab`'s command line: repository root, 127.0.0.1, a token, the mtkd kernel only, root allowed for root."""
from pathlib import Path

import pytest

from mtkd_utils.tools import lab

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("uid", [0, 1000])
def test_lab_command(monkeypatch, uid):
    monkeypatch.setattr(lab.os, "geteuid", lambda: uid)
    cmd = lab.lab_command(port=8890, token="secret")
    assert f"--ServerApp.root_dir={REPO}" in cmd and "--ip=127.0.0.1" in cmd
    assert "--IdentityProvider.token=secret" in cmd and "--ServerApp.port=8890" in cmd
    assert "--KernelSpecManager.allowed_kernelspecs=mtkd" in cmd
    assert "--ContentsManager.pre_save_hook=mtkd_utils.tools.lab.strip_committed_notebook" in cmd
    assert ("--allow-root" in cmd) == (uid == 0)
    assert not any(a.startswith("--IdentityProvider.token") for a in lab.lab_command())   # JupyterLab makes one


def test_only_the_workbooks_notebooks_are_stripped_on_save():
    def saved(path):
        model = {"type": "notebook", "content": {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
            {"cell_type": "code", "id": "a1", "metadata": {}, "execution_count": 3, "source": "1",
             "outputs": [{"output_type": "execute_result", "execution_count": 3, "metadata": {},
                          "data": {"text/plain": "1"}}]}]}}
        lab.strip_committed_notebook(model, path)
        return model["content"]["cells"][0]
    assert saved("notebooks/01_data_prep.ipynb")["outputs"] == [] and saved("/notebooks/x.ipynb")["id"] == "a1"
    assert saved("outputs/demo/01_copy.ipynb")["outputs"]
