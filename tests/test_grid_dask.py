"""The smoke grid's training on 2 Dask workers against the sequential runner: the same numbers to the digit;
and a --set that changes the split reaches data prep and is what every record says."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from mtkd_utils.data.manifest import LabelMap, validate_manifest
from mtkd_utils.data.splits import load_evaluation_only, make_splits
from mtkd_utils.grid import batch
from mtkd_utils.runs import manifest_path

REPO = Path(__file__).resolve().parent.parent

# the smoke grid made lighter (p=15 only, one (τ, α) setting), on the split of seed 1 instead of the preset's 0
SETTINGS = ["--p", "15", "--set", "split_seed=1", "--set", "tau_grid=[2]", "--set", "alpha_grid=[0.9]"]


def batch_argv(exp: Path, *extra: str) -> list[str]:
    return ["--preset", "smoke", "--experiment-dir", str(exp), *SETTINGS, *extra]


def run_batch(exp: Path, *extra: str) -> None:
    assert batch.main(batch_argv(exp, *extra)) == 0, (exp / "runs" / "summary.csv").read_text()


@pytest.fixture(scope="module")
def experiments(tmp_path_factory) -> dict[str, Path]:
    """The smoke grid's data prep, then its teachers and students twice: one by one in a separate process and on
    2 Dask workers here, at the same time (the comparison needs both; running them side by side halves the wait)."""
    root = tmp_path_factory.mktemp("grids")
    sync, dask = root / "sync", root / "dask"
    run_batch(sync, "--scheduler", "sync", "--only-stage", "data")
    # data prep is tested below; the Dask run starts from the same prepared data (its cost, not its numbers)
    shutil.copytree(sync / "data", dask / "data")
    argv = batch_argv(sync, "--scheduler", "sync", "--only-stage", "teachers", "students")
    log = root / "sync.log"
    with log.open("w") as out:
        one_by_one = subprocess.Popen([sys.executable, "-m", "mtkd_utils.grid.batch", *argv], cwd=REPO, stdout=out,
                                      stderr=subprocess.STDOUT)
        try:
            run_batch(dask, "--scheduler", "dask", "--workers", "2", "--only-stage", "teachers", "students")
        finally:
            one_by_one.wait()
    assert one_by_one.returncode == 0, log.read_text()[-3000:]
    return {"sync": sync, "dask": dask}


def test_two_dask_workers_give_the_sequential_numbers(experiments):
    sync = sorted(experiments["sync"].glob("students/*/*/*/metrics.json"))
    assert len(sync) == 4      # M1, M2, M3, M1b
    for path in sync:
        twin = experiments["dask"] / path.relative_to(experiments["sync"])
        mine, theirs = json.loads(path.read_text()), json.loads(twin.read_text())
        assert mine["test"] == theirs["test"] and mine["val"] == theirs["val"] and mine["tau"] == theirs["tau"]
        assert (path.parent / "predictions.csv").read_bytes() == (twin.parent / "predictions.csv").read_bytes()


def test_the_teachers_ran_side_by_side(experiments):
    records = [json.loads(p.read_text()) for p in (experiments["dask"] / "runs" / "teachers").glob("*/*/cell.json")]
    assert len(records) == 7 and len({r["pid"] for r in records}) == 2      # one run per teacher, 2 workers
    spans = sorted((r["started"], r["finished"]) for r in records)
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:]))   # some overlapping in time


def test_split_seed_reaches_data_prep_and_every_record(experiments):
    exp = experiments["sync"]
    info = json.loads((exp / "data" / "dataset.json").read_text())
    assert info["split_seed"] == 1
    splits = pd.read_csv(exp / "data" / "splits.csv", dtype=str, keep_default_na=False)
    source = Path(manifest_path(exp))
    manifest = validate_manifest(source, LabelMap.load(source.parent / "label_map.json"))
    held = load_evaluation_only(source)            # the generator's evaluation-only patients: always test
    seed1, seed0 = make_splits(manifest, 1, evaluation_only=held), make_splits(manifest, 0, evaluation_only=held)
    assert list(splits.split) == list(seed1.split.astype(str)) != list(seed0.split.astype(str))
    data_run = json.loads((exp / "runs" / "data" / "all" / "cell.json").read_text())
    assert data_run["parameters"]["overrides"] == {"split_seed": 1, "tau_grid": [2], "alpha_grid": [0.9]}
    for config in exp.glob("*/**/config.json"):
        assert json.loads(config.read_text())["config"]["split_seed"] == 1, config
    # the split each run trained on is the split of seed 1
    teacher_split = pd.read_csv(next(exp.glob("teachers/p15_s0/*/split.csv")), dtype=str, keep_default_na=False)
    test_ids = set(seed1.image_id[seed1.split.astype(str) == "test"])
    assert set(teacher_split.image_id[teacher_split.role == "test"]) == test_ids
