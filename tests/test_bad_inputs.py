"""Bad inputs that used to slip through: each refused (or warned) by name, at plan time where it can be."""
import os

import numpy as np
import pandas as pd
import pytest
from conftest import LABELS
from PIL import Image

from mtkd_utils.config import check_fraction, parse_tasks
from mtkd_utils.data.csv_folder import from_csv, from_folder
from mtkd_utils.data.manifest import LabelMap, ManifestError, check_trainable, read_manifest, validate_manifest
from mtkd_utils.data.splits import warn_single_image_classes
from mtkd_utils.grid import batch
from mtkd_utils.presets import config as preset


def dry_run(tmp_path, *args: str, capsys) -> str:
    """The batch command's --dry-run; returns what it printed to stderr when it refused (exit 2)."""
    with pytest.raises(SystemExit) as exit_:
        batch.main(["--preset", "smoke", "--dry-run", *args], batch.NOTEBOOKS)
    assert exit_.value.code == 2
    return capsys.readouterr().err


def image(path, size=40) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), 90, np.uint8)).save(path)


# ---------------------------------------------------------------- labels
def test_label_case_and_spacing_variants_are_one_label_in_a_csv(tmp_path, capsys):
    for i in range(5):
        image(tmp_path / f"p{i}_left.png")
    pd.DataFrame({"image": [f"p{i}_left.png" for i in range(5)], "dx": ["dr", "DR", "dr ", "normal", "Normal"],
                  "grade": ["mild", "Mild", "mild", "", ""]}).to_csv(tmp_path / "l.csv", index=False)
    path = from_csv(tmp_path / "l.csv", tmp_path / "out", coarse_col="dx", fine_col="grade")
    labels = LabelMap.load(tmp_path / "out" / "label_map.json")
    assert labels.coarse == ["dr", "normal"] and labels.fine == ["mild", "normal"]
    assert set(read_manifest(path).coarse) == {"dr", "normal"}
    assert "coarse labels ['dr', 'DR'] differ only in case or spacing" in capsys.readouterr().out


def test_a_manifest_label_in_another_case_names_the_label_maps_spelling(tiny_dataset):
    df = pd.read_csv(tiny_dataset, dtype=str, keep_default_na=False)
    df.loc[1, "coarse"], df.loc[2, "fine"] = "DR", "DR_Severe"
    df.to_csv(tiny_dataset, index=False)
    with pytest.raises(ManifestError) as err:
        validate_manifest(tiny_dataset, LABELS)
    assert "line 3 (img1): unknown coarse label 'DR'; the label map writes it 'dr'" in str(err.value)
    assert "line 4 (img2): unknown fine label 'DR_Severe'; the label map writes it 'dr_severe'" in str(err.value)
    with pytest.raises(ValueError, match=r"coarse class names \[\['DR', 'dr'\]\] differ only in case"):
        LabelMap.from_pairs(["dr", "DR"], [("a", "dr")]).check()


# ---------------------------------------------------------------- data that cannot be trained on
def test_unlabeled_only_data_is_refused_before_the_splits(tmp_path):
    for i in range(4):
        image(tmp_path / "imgs" / f"{i}.png")
    path = from_folder(tmp_path / "imgs", tmp_path / "out")
    with pytest.raises(ValueError, match=r"0 labeled image\(s\) of 0 patient\(s\) beside 4 unlabeled.*at least 3 "):
        check_trainable(read_manifest(path), path)


def test_a_class_with_a_single_image_is_warned_by_name(tiny_dataset):
    manifest = validate_manifest(tiny_dataset, LABELS)
    with pytest.warns(UserWarning, match=r"coarse 'normal' \(img0\), fine 'dr_mild' \(img1\), fine 'normal' \(img0\)"):
        assert len(warn_single_image_classes(manifest)) == 3


def test_image_ids_are_unique_by_construction(tmp_path):
    names = ["a b_left.jpg", "a_b_left.jpg", "é.jpg", "ü.jpg", "plain_right.jpg"]
    for name in names:
        image(tmp_path / "imgs" / name)
    ids = read_manifest(from_folder(tmp_path / "imgs", tmp_path / "out")).image_id.tolist()
    assert len(set(ids)) == len(ids) and all(ids)
    assert "plain_right" in ids                                   # no clash: the readable id is kept


def test_one_id_for_two_files_names_both(tiny_dataset):
    df = pd.read_csv(tiny_dataset, dtype=str, keep_default_na=False)
    df.loc[1, "image_id"] = "img0"
    df.to_csv(tiny_dataset, index=False)
    with pytest.raises(ManifestError,
                       match=r"image_id 'img0' names different files \['images/0.png', 'images/1.png'\]"):
        validate_manifest(tiny_dataset, LABELS)


def test_an_empty_csv_names_the_file(tmp_path, capsys):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match=f"{empty}: the file is empty"):
        from_csv(empty, tmp_path / "out", coarse_col="dx")
    with pytest.raises(ManifestError, match=f"(?s){empty}: .*the file is empty"):
        read_manifest(empty)
    args = ("--source", "csv", "--source-path", str(empty), "--experiment-dir", str(tmp_path / "e"))
    assert f"--source-path {empty}: the file is empty" in dry_run(tmp_path, *args, capsys=capsys)


# ---------------------------------------------------------------- parameters, at plan time
@pytest.mark.parametrize("setting, message", [
    ("lr=0", "lr=0: the learning rate must be > 0"), ("lr=-1", "lr=-1"),
    ("threads=-3", "threads=-3: must be an integer >= 0"), ("backbone=\"resnet9\"", "backbone='resnet9': choose one"),
    ("unlabeled_per_epoch=-0.5", "unlabeled_per_epoch=-0.5"),
    ('task_weights={"T1": 1, "T2": -1}', "weights must be numbers >= 0, not {'T2': -1}"),
])
def test_bad_settings_are_refused_by_dry_run(tmp_path, setting, message, capsys):
    assert message in dry_run(tmp_path, "--set", setting, "--experiment-dir", str(tmp_path / "e"), capsys=capsys)


@pytest.mark.parametrize("tasks", ["T1+T4", "", "T1+T1", ["T2", "t5"]])
def test_tasks_outside_t1_t3_are_refused_with_an_example(tasks):
    with pytest.raises(ValueError, match=r"tasks=.*e\.g\. 'T1\+T2\+T3'"):
        parse_tasks(tasks)
    assert parse_tasks("t3, T1") == ("T1", "T3")


def test_a_fraction_given_as_text_is_a_type_error():
    with pytest.raises(ValueError, match=r"p='15' \(str\): the training fraction must be a number"):
        check_fraction("15")
    with pytest.raises(ValueError, match="lr=0"):
        preset("smoke", lr=0)


def test_the_same_fraction_twice_is_refused(tmp_path, capsys):
    err = dry_run(tmp_path, "--p", "15", "15.0", "--experiment-dir", str(tmp_path / "e"), capsys=capsys)
    assert "--p: 15.0 is given twice" in err


def test_an_experiment_dir_that_is_a_file_or_unwritable_is_refused(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    err = dry_run(tmp_path, "--experiment-dir", str(tmp_path / "file"), capsys=capsys)
    assert "a file is there, not a folder" in err
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user who may write anywhere (root)")
        assert "is not writable" in dry_run(tmp_path, "--experiment-dir", str(locked / "exp"), capsys=capsys)
    finally:
        locked.chmod(0o700)
