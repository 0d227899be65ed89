"""Shared fixtures: a tiny hand-written dataset on disk and the smoke synthetic dataset."""
from pathlib import Path

import numpy as np
import pandas as pd
import papermill as pm
import pytest
import torch
from PIL import Image

from mtkd_utils.data.dataset import FundusData
from mtkd_utils.data.manifest import COLUMNS, LabelMap
from mtkd_utils.data.text import PAD_ID, Vocab
from mtkd_utils.train.model import MTLModel

torch.set_num_threads(1)   # small models on a 2-core machine: one thread is fastest and immune to contention

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
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
    rows.append(dict(image_id="u0", image="images/u.png", patient_id="c", eye="left", labeled=0, coarse="", fine="",
                     text="", mask=""))
    pd.DataFrame(rows, columns=COLUMNS).to_csv(tmp_path / "manifest.csv", index=False)
    LABELS.save(tmp_path / "label_map.json")
    return tmp_path / "manifest.csv"


# ---------------------------------------------------------------- a fake in-memory dataset and small models
SMALL = dict(backbone="mobilenet_v3_small", head_hidden=16, embed_dim=8, lstm_hidden=16)


def fake_data(n: int = 8, size: int = 32) -> FundusData:
    """n random images; the first half labeled training rows, the rest unlabeled."""
    g = torch.Generator().manual_seed(0)
    labels = LabelMap.from_pairs(["normal", "dr"], [("normal", "normal"), ("dr_a", "dr"), ("dr_b", "dr")])
    vocab = Vocab(["mild", "dr", "normal", "."])
    roles = pd.DataFrame({"role": ["train"] * (n // 2) + ["unlabeled"] * (n - n // 2)})
    lab = torch.arange(n) < n // 2
    t3 = torch.tensor([vocab.encode("mild dr .", 8)] * n)
    t3[~lab] = PAD_ID
    targets = {"T1": torch.where(lab, torch.randint(0, 2, (n,), generator=g), -1),
               "T2": torch.where(lab, torch.randint(0, 3, (n,), generator=g), -1), "T3": t3}
    images = np.random.default_rng(0).integers(0, 255, (n, size, size, 3), dtype=np.uint8)
    return FundusData(images, pd.DataFrame(index=range(n)), roles, labels, vocab, targets, 15.0)


def model_for(tasks, data) -> MTLModel:
    torch.manual_seed(0)
    return MTLModel(tasks, len(data.labels.coarse), len(data.labels.fine), len(data.vocab), **SMALL)


# ---------------------------------------------------------------- notebooks and an ODIR-5K fixture
def run_notebook(name: str, out_dir: Path, **params) -> Path:
    """Execute a workbook notebook with papermill on the smoke preset into out_dir/executed/."""
    out = out_dir / "executed" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    pm.execute_notebook(NOTEBOOKS / name, out, parameters=dict(experiment_dir=str(out_dir), preset="smoke", **params),
                        kernel_name="mtkd", cwd=str(REPO), progress_bar=False)
    from test_progress import widget_debris
    assert widget_debris(out) == [], f"{name}: progress bars left widgets or 0% lines in the executed copy"
    return out


ODIR_HEADER = ["ID", "Patient Age", "Patient Sex", "Left-Fundus", "Right-Fundus", "Left-Diagnostic Keywords",
               "Right-Diagnostic Keywords", "N", "D", "G", "C", "A", "H", "M", "O"]

# Real ODIR-5K keyword strings, with the sheet's quirks: Chinese comma '，' and ',', stray spaces,
# spelling variants, quality keywords, patient-level flags that mix both eyes.
ODIR_ROWS = [
    # ID, age, sex, left keywords, right keywords, N D G C A H M O
    (0, 69, "Female", "cataract", "normal fundus", [0, 0, 0, 1, 0, 0, 0, 0]),
    (2, 42, "Male", "laser spot，moderate non proliferative retinopathy", "moderate non proliferative retinopathy",
     [0, 1, 0, 0, 0, 0, 0, 1]),
    (3, 66, "Male", "hypertensive retinopathy,diabetic retinopathy", "lens dust，normal fundus",
     [0, 1, 0, 0, 0, 1, 0, 0]),
    (4, 50, "Female", "suspected glaucoma", " dry age-related macular degeneration ", [0, 0, 1, 0, 1, 0, 0, 0]),
    (5, 60, "Male", "low image quality", "pathological myopia，drusen", [0, 0, 0, 0, 0, 0, 1, 1]),
    (6, 55, "Female", "normal fundus", "normal fundus", [1, 0, 0, 0, 0, 0, 0, 0]),
]


def odir_jpeg(path, seed=0, size=(40, 48)):
    """A tiny fundus-like JPEG: a red disc on black."""
    yy, xx = np.mgrid[:size[0], :size[1]]
    disc = (yy - size[0] / 2) ** 2 + (xx - size[1] / 2) ** 2 < (size[0] / 2 - 2) ** 2
    img = np.zeros(size + (3,), np.uint8)
    img[disc] = (180 + seed % 50, 80, 40)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, quality=90)


def architecture_paths(values: dict[str, str], under: str | None = None, skip: str | None = None) -> list[str]:
    """The experiment-folder paths docs/ARCHITECTURE.md lists (only those `under` a folder, or all but those
    under `skip`), with its placeholders filled in from `values`."""
    text = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    block = text.split("## Experiment folder", 1)[1].split("```", 2)[1]
    paths = [line.split()[0] for line in block.splitlines() if line.strip()]
    paths = [p for p in paths if (under is None or p.startswith(under)) and (skip is None or not p.startswith(skip))]
    for placeholder, value in values.items():
        paths = [p.replace(placeholder, value) for p in paths]
    assert paths and not [p for p in paths if "<" in p], paths   # every placeholder known
    return paths
