"""Damaged derived files: detected by their checksum, rebuilt when they are caches, refused by path otherwise."""
import hashlib
import os
import re
import shutil
from pathlib import Path

import pytest

from mtkd_utils.analysis.results import collect_metrics, read_probs
from mtkd_utils.data import prep
from mtkd_utils.data.dataset import load_data
from mtkd_utils.io import DamagedFileError, checksum_path, read_json, verify_file, write_json
from mtkd_utils.presets import config as preset
from mtkd_utils.runs import RunKey, soft_targets_path, student_dir, teacher_dir
from mtkd_utils.train import steps
from mtkd_utils.train.checkpoint import load_checkpoint, save_checkpoint
from mtkd_utils.train.reload import load_model, student_teachers

CFG = preset("smoke", epochs=1)
TASKS = ("T1", "T3")
KEY = RunKey(TASKS, 15, 0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A prepared experiment with one teacher and its M1 run: every kind of derived file exists."""
    exp = tmp_path_factory.mktemp("trained")
    prep.prepare_data(exp, CFG)
    data = load_data(exp, 15, CFG)
    steps.train_teacher(exp, RunKey(TASKS, 15, 0), CFG, data)
    steps.run_student(exp, RunKey(TASKS, 15, 0, "M1"), CFG, data)
    student_teachers(exp, RunKey(TASKS, 15, 0, "M2"), CFG, data)
    return exp


@pytest.fixture
def exp(trained, tmp_path) -> Path:
    """A private copy: each test damages its own files."""
    return Path(shutil.copytree(trained, tmp_path / "exp", symlinks=True))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def zero_in_place(path: Path) -> None:
    """Same size, same mtime, content zeroed: only a checksum sees it."""
    st = path.stat()
    path.write_bytes(bytes(st.st_size))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def source_hashes(exp: Path) -> dict[str, str]:
    manifest = Path(read_json(exp / "data" / "dataset.json")["manifest"])
    images = sorted((manifest.parent / "images").glob("*"))[:50]
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in images}


def test_every_derived_file_carries_a_checksum(trained):
    teacher = teacher_dir(trained, KEY)
    student = student_dir(trained, KEY.with_model("M1"))
    for path in [trained / "data" / "cache" / "images_32.npy", teacher / "checkpoint.pt", teacher / "metrics.json",
                 student / "metrics.json", student / "predictions.csv", student / "probs_T1.npy",
                 soft_targets_path(student_dir(trained, KEY.with_model("M2")))]:
        assert verify_file(path) == path and checksum_path(path).is_file(), path


@pytest.mark.parametrize("damage", [truncate, zero_in_place])
def test_a_damaged_image_cache_is_rebuilt_and_the_source_images_are_untouched(exp, damage, capsys):
    cache = exp / "data" / "cache" / "images_32.npy"
    before, sources = cache.read_bytes(), source_hashes(exp)
    damage(cache)
    data = load_data(exp, 15, CFG)
    assert f"WARNING {cache}: damaged" in capsys.readouterr().out
    assert cache.read_bytes() == before and data.images.shape[1:] == (32, 32, 3)
    assert source_hashes(exp) == sources


@pytest.mark.parametrize("damage", [truncate, zero_in_place])
def test_a_damaged_soft_target_cache_is_rebuilt(exp, damage, capsys):
    data = load_data(exp, 15, CFG)
    cache = soft_targets_path(student_dir(exp, KEY.with_model("M2")))
    before = cache.read_bytes()
    damage(cache)
    student_teachers(exp, RunKey(TASKS, 15, 0, "M2"), CFG, data)
    assert f"WARNING {cache}: damaged" in capsys.readouterr().out
    assert verify_file(cache) and len(cache.read_bytes()) == len(before)


@pytest.mark.parametrize("damage", [truncate, zero_in_place])
def test_a_damaged_checkpoint_is_refused_by_path_with_the_fix_that_works(exp, damage):
    data = load_data(exp, 15, CFG)
    run = teacher_dir(exp, KEY)
    record = write_json({"status": "done"}, exp / "runs" / "teachers" / "p15_s0" / "cell.json").parent
    damage(run / "checkpoint.pt")
    with pytest.raises(DamagedFileError, match=f"{re.escape(str(run / 'checkpoint.pt'))}: damaged.*delete the run "
                       f"folder {re.escape(str(run))} and its batch record {re.escape(str(record))}, "
                       "then .*--retry-failed"):
        load_model(run, CFG, data, TASKS)
    shutil.rmtree(run)                                              # the fix the message gives
    steps.train_teacher(exp, RunKey(TASKS, 15, 0), CFG, data)
    assert load_model(run, CFG, data, TASKS) is not None


def test_a_checkpoint_damaged_before_checksums_existed_is_named(tmp_path):
    path = save_checkpoint(tmp_path / "checkpoint.pt", {"x": list(range(1000))})
    checksum_path(path).unlink()
    truncate(path)
    with pytest.raises(DamagedFileError, match=f"{re.escape(str(path))}: not a readable checkpoint"):
        load_checkpoint(path)


def test_damaged_metrics_json_is_refused_by_path(exp):
    metrics = student_dir(exp, KEY.with_model("M1")) / "metrics.json"
    truncate(metrics)
    expected = f"{re.escape(str(metrics))}: damaged.*delete the run folder {re.escape(str(metrics.parent))}"
    with pytest.raises(DamagedFileError, match=expected):
        collect_metrics(exp)


def test_damaged_probabilities_are_refused_by_path(exp):
    probs = student_dir(exp, KEY.with_model("M1")) / "probs_T1.npy"
    zero_in_place(probs)
    with pytest.raises(DamagedFileError, match=f"{re.escape(str(probs))}: damaged.*delete the run folder"):
        read_probs(probs.parent)


def test_rewriting_a_file_without_a_checksum_drops_the_old_one(tmp_path):
    path = write_json({"a": 1}, tmp_path / "m.json", checksum=True)
    assert checksum_path(path).is_file()
    write_json({"a": 2}, path)
    assert not checksum_path(path).exists() and read_json(path) == {"a": 2}
