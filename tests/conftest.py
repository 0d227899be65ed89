"""Shared fixtures: a tiny hand-written dataset on disk and the smoke synthetic dataset."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from mtkd_utils.manifest import COLUMNS, LabelMap

torch.set_num_threads(1)   # small models on a 2-core machine: one thread is fastest and immune to contention

LABELS = LabelMap.from_pairs(["normal", "dr"], [("normal", "normal"), ("dr_mild", "dr"), ("dr_severe", "dr")])


def write_image(path: Path, value: int = 120, size: int = 32) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(path)
    return path.name


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    """Four good rows (two patients, both eyes) and one unlabeled row; returns the manifest path."""
    rows = []
    for i, (pid, eye, coarse, fine, text) in enumerate([
        ("a", "left", "normal", "normal", "normal fundus."),
        ("a", "right", "dr", "dr_mild", "mild dr with microaneurysms."),
        ("b", "left", "dr", "dr_severe", "severe dr with haemorrhages."),
        ("b", "right", "dr", "dr_severe", "severe dr, exudates."),
    ]):
        write_image(tmp_path / "images" / f"{i}.png", 50 + 20 * i)
        rows.append(dict(image_id=f"img{i}", image=f"images/{i}.png", patient_id=pid, eye=eye, labeled=1,
                         coarse=coarse, fine=fine, text=text, mask=""))
    write_image(tmp_path / "images" / "u.png")
    rows.append(dict(image_id="u0", image="images/u.png", patient_id="c", eye="left", labeled=0, coarse="", fine="", text="", mask=""))
    pd.DataFrame(rows, columns=COLUMNS).to_csv(tmp_path / "manifest.csv", index=False)
    LABELS.save(tmp_path / "label_map.json")
    return tmp_path / "manifest.csv"
