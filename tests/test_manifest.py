import re

import pandas as pd
import pytest
from conftest import LABELS

from mtkd_utils.data.manifest import LabelMap, ManifestError, read_manifest, validate_manifest


def edit(manifest, line: int, **values):
    """Change row `line` (0-based data row) of the manifest on disk."""
    df = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    for k, v in values.items():
        df.loc[line, k] = v
    df.to_csv(manifest, index=False)


def problems(manifest) -> list[str]:
    with pytest.raises(ManifestError) as e:
        validate_manifest(manifest, LABELS)
    return e.value.problems


def test_good_manifest_passes(tiny_dataset):
    df = validate_manifest(tiny_dataset, LABELS)
    assert len(df) == 5 and df.labeled.tolist() == [1, 1, 1, 1, 0]


@pytest.mark.parametrize("change, expected", [
    (dict(image="images/missing.png"), "file not found"),
    (dict(coarse="cataract"), "unknown coarse label 'cataract'"),
    (dict(fine="dr_proliferative"), "unknown fine label 'dr_proliferative'"),
    (dict(fine="dr_mild"), "belongs under 'dr', not 'normal'"),
    (dict(text=""), "empty diagnosis text"),
    (dict(eye="both"), "eye is 'both'"),
    (dict(labeled="yes"), "labeled is 'yes'"),
    (dict(patient_id=""), "empty patient_id"),
])
def test_each_bad_row_is_reported_with_its_line(tiny_dataset, change, expected):
    edit(tiny_dataset, 0, **change)
    found = problems(tiny_dataset)
    assert any(expected in p for p in found), found
    assert any(re.search(r"\blines? 2\b", p) for p in found)  # data row 0 is line 2 of the CSV (header: line 1)


def test_truncated_image(tiny_dataset):
    img = tiny_dataset.parent / "images" / "0.png"
    img.write_bytes(img.read_bytes()[:60])
    assert any("unreadable or truncated" in p for p in problems(tiny_dataset))


def test_duplicate_image_path_and_disagreeing_patient(tiny_dataset):
    edit(tiny_dataset, 1, image="images/0.png")                 # same file twice
    edit(tiny_dataset, 3, eye="left")                           # patient b: two left eyes, same label -> fine
    edit(tiny_dataset, 2, coarse="normal", fine="normal")       # ... now the two left eyes disagree
    found = problems(tiny_dataset)
    assert any("duplicate image 'images/0.png'" in p for p in found)
    assert any("patient 'b' left eye has disagreeing coarse labels" in p for p in found)


def test_every_problem_at_once_and_nothing_dropped(tiny_dataset):
    edit(tiny_dataset, 0, coarse="cataract")
    edit(tiny_dataset, 2, text="")
    found = problems(tiny_dataset)
    assert len(found) == 2 and "line 2" in found[0] and "line 4" in found[1]


def test_labels_on_an_unlabeled_row_are_an_error(tiny_dataset):
    edit(tiny_dataset, 4, coarse="dr")
    assert any("labeled=0 but the row has labels" in p for p in problems(tiny_dataset))


def test_missing_column_named(tiny_dataset):
    df = pd.read_csv(tiny_dataset).drop(columns=["patient_id"])
    df.to_csv(tiny_dataset, index=False)
    with pytest.raises(ManifestError, match="patient_id"):
        read_manifest(tiny_dataset)


def test_label_map_round_trip_and_checks(tmp_path):
    LABELS.save(tmp_path / "lm.json")
    lm = LabelMap.load(tmp_path / "lm.json")
    assert lm.coarse == LABELS.coarse and lm.fine == LABELS.fine and lm.fine_to_coarse_index() == [0, 1, 1]
    bad = LabelMap.from_pairs(["normal"], [("x", "dr")])
    with pytest.raises(ValueError, match="unknown coarse parent"):
        bad.check()
