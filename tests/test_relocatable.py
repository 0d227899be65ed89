"""Experiment folders can move (a copy on a shared drive, a paper's supplement); the current experiment file;
refused runs write nothing."""
import json
import shutil
from pathlib import Path

import pytest

from mtkd_utils import runs
from mtkd_utils.data import prep, sources
from mtkd_utils.data.dataset import load_data
from mtkd_utils.io import choose_experiment, current_experiment
from mtkd_utils.presets import config as preset
from mtkd_utils.runs import RunKey, manifest_location, manifest_record
from mtkd_utils.train import steps

CFG = preset("smoke")


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def test_manifest_is_stored_relative_to_the_experiment_or_the_repository(tmp_path):
    exp, repo = tmp_path / "exp", tmp_path / "repo"
    assert manifest_record(exp / "data" / "source" / "manifest.csv", exp, repo) == \
        {"manifest": "data/source/manifest.csv", "manifest_base": "experiment"}
    assert manifest_record(repo / "data" / "synthetic" / "smoke" / "manifest.csv", exp, repo) == \
        {"manifest": "data/synthetic/smoke/manifest.csv", "manifest_base": "repository"}
    elsewhere = tmp_path / "ODIR-5K" / "manifest.csv"
    assert manifest_record(elsewhere, exp, repo) == {"manifest": str(elsewhere.resolve()), "manifest_base": "absolute"}
    moved = tmp_path / "drive" / "exp"
    info = manifest_record(exp / "data" / "source" / "manifest.csv", exp, repo)
    assert manifest_location(moved, info, repo) == moved / "data" / "source" / "manifest.csv"
    assert manifest_location(moved, {"manifest": str(elsewhere)}, repo) == elsewhere    # experiments from before
    with pytest.raises(ValueError, match="manifest_base"):
        manifest_location(moved, {**info, "manifest_base": "home"}, repo)


def test_a_moved_experiment_reads_its_own_data(tmp_path):
    """The source's manifest lies inside the experiment (as the ODIR/CSV adapters put it): move it, re-read it."""
    source = sources.resolve_source("synthetic", None, None, CFG, tmp_path)
    exp = tmp_path / "exp"
    shutil.copytree(source.parent, exp / "data" / "source")
    prep.prepare_data(exp, CFG, source="manifest", source_path=str(exp / "data" / "source" / "manifest.csv"))
    stored = json.loads((exp / "data" / "dataset.json").read_text())
    assert (stored["manifest"], stored["manifest_base"]) == ("data/source/manifest.csv", "experiment")
    before = load_data(exp, 15, CFG)
    moved = shutil.move(exp, tmp_path / "drive" / "archived")       # the original is gone
    after = load_data(moved, 15, CFG)
    assert after.manifest.equals(before.manifest) and (after.images == before.images).all()
    assert str(tmp_path / "exp") not in (Path(moved) / "data" / "dataset.json").read_text()
    prep.prepare_data(moved, CFG, source="manifest", source_path=str(Path(moved) / "data" / "source" / "manifest.csv"))
    with pytest.raises(FileExistsError, match="split_seed"):         # the same data is recognised, other splits not
        prep.prepare_data(moved, CFG.updated(split_seed=7), source="manifest",
                                source_path=str(Path(moved) / "data" / "source" / "manifest.csv"))


def test_refused_runs_leave_nothing_behind(tmp_path):
    exp = tmp_path / "exp"
    prep.prepare_data(exp, CFG)
    before = files_under(exp)
    with pytest.raises(FileExistsError, match="other data or splits"):
        prep.prepare_data(exp, CFG.updated(split_seed=3))
    assert files_under(exp) == before
    key = runs.RunKey(("T1",), 15, 0)
    run = runs.teacher_dir(exp, key)
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({**steps.teacher_meta(key, CFG),
                                                 "config": CFG.updated(seed=0).to_dict()}))
    before = files_under(exp)
    with pytest.raises(FileExistsError, match="image_size"):        # a preset of another size: no new image cache
        steps.train_teachers(exp, RunKey("T1", 15, 0), CFG.updated(image_size=48))
    assert files_under(exp) == before


def test_the_current_experiment_is_chosen_once_for_every_notebook(tmp_path):
    assert current_experiment(tmp_path) == tmp_path / "outputs" / "demo"
    choose_experiment("outputs/odir", tmp_path)
    assert current_experiment(tmp_path) == tmp_path / "outputs" / "odir"
    choose_experiment(tmp_path / "elsewhere", tmp_path)
    assert current_experiment(tmp_path) == tmp_path / "elsewhere"
    (tmp_path / "outputs" / "experiment.json").write_text('{"experiment": "outputs/odir"}')
    with pytest.raises(ValueError, match="experiment.json.*experiment_dir"):
        current_experiment(tmp_path)
