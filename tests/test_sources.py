"""Dataset adapters on small fixtures in the real formats: ODIR-5K sheet, a CSV, a folder."""
from __future__ import annotations

import pandas as pd
import pytest
from conftest import ODIR_HEADER, ODIR_ROWS
from conftest import odir_jpeg as _jpeg

from mtkd_utils.data.csv_folder import from_csv, from_folder
from mtkd_utils.data.manifest import LabelMap, validate_manifest
from mtkd_utils.data.odir import from_odir, from_odir_folder, odir_fine_name, split_keywords


@pytest.fixture
def odir(tmp_path):
    """An ODIR-5K folder: the training sheet and ODIR-5K_Training_Dataset/ (one image saved as .jpeg)."""
    return odir_folder(tmp_path, ODIR_ROWS)


def odir_folder(tmp_path, sheet_rows):
    root = tmp_path / "ODIR-5K"
    images = root / "ODIR-5K_Training_Dataset"
    records = []
    for pid, age, sex, left, right, flags in sheet_rows:
        records.append([pid, age, sex, f"{pid}_left.jpg", f"{pid}_right.jpg", left, right, *flags])
        for eye in ("left", "right"):
            ext = ".jpeg" if (pid, eye) == (6, "right") else ".jpg"  # the sheet says .jpg; the file is .jpeg
            _jpeg(images / f"{pid}_{eye}{ext}", seed=pid)
    sheet = root / "ODIR-5K_Training_Annotations(Updated)_V2.xlsx"
    pd.DataFrame(records, columns=ODIR_HEADER).to_excel(sheet, index=False)
    (root / "ODIR-5K_Testing_Images").mkdir()
    _jpeg(root / "ODIR-5K_Testing_Images" / "1000_left.jpg")  # a decoy folder for from_odir_folder
    return root, sheet, images


def _rows(manifest_path) -> dict[str, pd.Series]:
    m = pd.read_csv(manifest_path, dtype=str, keep_default_na=False)
    return {r.image_id: r for _, r in m.iterrows()}


def test_split_keywords_handles_both_commas_spaces_and_variants():
    assert split_keywords("laser spot，moderate non proliferative retinopathy") == \
        ["laser spot", "moderate nonproliferative retinopathy"]
    assert split_keywords(" hypertensive retinopathy ,diabetic retinopathy") == \
        ["hypertensive retinopathy", "diabetic retinopathy"]
    assert split_keywords("lens dust，lens dust，lens dust") == ["lens dust"]
    assert split_keywords("suspected abnormal color of  optic disc") == ["suspected abnormal color of optic disc"]
    assert split_keywords("suspicious diabetic retinopathy") == ["suspected diabetic retinopathy"]
    assert split_keywords("") == [] and split_keywords(float("nan")) == []


def test_fine_names():
    assert odir_fine_name("moderate nonproliferative retinopathy") == "dr_moderate_npdr"
    assert odir_fine_name("suspected glaucoma") == "glaucoma_suspected"
    assert odir_fine_name("dry age-related macular degeneration") == "amd_dry"
    assert odir_fine_name("macular epiretinal membrane") == "macular_epiretinal_membrane"


def test_odir_rows_per_eye(odir, tmp_path, capsys):
    root, sheet, images = odir
    out = tmp_path / "prepared"
    path = from_odir(sheet, images, out)
    labels = LabelMap.load(out / "label_map.json")
    df = validate_manifest(path, labels)  # also decodes every image
    rows = _rows(path)

    expect = {  # image_id: (coarse, fine, text)
        "odir_0_left": ("cataract", "cataract", "left eye: cataract"),
        "odir_0_right": ("normal", "normal", "right eye: normal fundus"),  # the other eye's disease stays there
        "odir_2_left": ("diabetic_retinopathy", "dr_moderate_npdr",
                        "left eye: laser spot, moderate nonproliferative retinopathy"),
        "odir_2_right": ("diabetic_retinopathy", "dr_moderate_npdr",
                         "right eye: moderate nonproliferative retinopathy"),
        "odir_3_left": ("diabetic_retinopathy", "dr_ungraded",  # DR outranks hypertension; both stay in the text
                        "left eye: hypertensive retinopathy, diabetic retinopathy"),
        "odir_4_left": ("glaucoma", "glaucoma_suspected", "left eye: suspected glaucoma"),
        "odir_4_right": ("amd", "amd_dry", "right eye: dry age-related macular degeneration"),
        "odir_5_right": ("myopia", "myopia_pathological", "right eye: pathological myopia, drusen"),
        "odir_6_left": ("normal", "normal", "left eye: normal fundus"),
        "odir_6_right": ("normal", "normal", "right eye: normal fundus"),
    }
    expect["odir_3_right"] = ("normal", "normal", "right eye: normal fundus")   # lens dust: kept, out of the text
    assert set(rows) == set(expect)  # 5 left (only 'low image quality') is left out
    for image_id, (coarse, fine, text) in expect.items():
        r = rows[image_id]
        assert (r.coarse, r.fine, r.text, r.labeled) == (coarse, fine, text, "1"), image_id
        assert r.patient_id == image_id.rsplit("_", 1)[0] and r.eye == image_id.rsplit("_", 1)[1]
    assert rows["odir_0_left"].image == "../ODIR-5K/ODIR-5K_Training_Dataset/0_left.jpg"
    assert rows["odir_6_right"].image.endswith("6_right.jpeg")  # found despite the sheet's .jpg
    assert len(df) == 11

    excluded = pd.read_csv(out / "excluded.csv")
    assert dict(zip(excluded.image_id, excluded.reason)) == {"odir_5_left": "quality flags only: low image quality"}
    assert labels.coarse == ["normal", "diabetic_retinopathy", "amd", "glaucoma", "myopia", "cataract"]
    assert labels.fine_parent["dr_moderate_npdr"] == "diabetic_retinopathy"
    printed = capsys.readouterr().out
    assert "kept 1 images with quality flags (lens dust 1), labeled by their other keywords" in printed
    assert "left out 1 images whose keywords are only quality flags (low image quality 1)" in printed
    assert labels.benchmark == "odir2019"   # the challenge's label set: metrics adds the ODIR score


def test_odir_keep_unusable(odir, tmp_path):
    root, sheet, images = odir
    path = from_odir(sheet, images, tmp_path / "out", keep_unusable=True)
    rows = _rows(path)
    assert len(rows) == 12
    assert (rows["odir_3_right"].coarse, rows["odir_3_right"].text) == ("normal", "right eye: normal fundus")
    # Only a quality keyword: no diagnosis left, so it joins the unlabeled pool.
    assert (rows["odir_5_left"].labeled, rows["odir_5_left"].coarse, rows["odir_5_left"].text) == ("0", "", "")
    validate_manifest(path, LabelMap.load(tmp_path / "out" / "label_map.json"))


# Rows as the V2 sheet writes them around photographs: lens dust beside a diagnosis (kept), only quality
# flags (left out), a photograph that is not a fundus image (always left out).
QUALITY_ROWS = [
    (7, 58, "Male", "lens dust，mild nonproliferative retinopathy", "lens dust，lens dust，normal fundus",
     [0, 1, 0, 0, 0, 0, 0, 0]),
    (8, 63, "Female", "lens dust，low image quality", "anterior segment image，cataract", [0, 0, 0, 1, 0, 0, 0, 0]),
    (9, 47, "Male", "no fundus image", "optic disk photographically invisible，glaucoma", [0, 0, 1, 0, 0, 0, 0, 0]),
]


def test_odir_keeps_lens_dust_eyes_with_their_other_labels(tmp_path, capsys):
    root, sheet, images = odir_folder(tmp_path, ODIR_ROWS + QUALITY_ROWS)
    rows = _rows(from_odir(sheet, images, tmp_path / "out"))
    assert (rows["odir_7_left"].coarse, rows["odir_7_left"].fine, rows["odir_7_left"].text) == \
        ("diabetic_retinopathy", "dr_mild_npdr", "left eye: mild nonproliferative retinopathy")
    assert (rows["odir_7_right"].coarse, rows["odir_7_right"].text) == ("normal", "right eye: normal fundus")
    assert (rows["odir_9_right"].coarse, rows["odir_9_right"].text) == ("glaucoma", "right eye: glaucoma")
    assert not any("dust" in r.text or "invisible" in r.text for r in rows.values())
    excluded = pd.read_csv(tmp_path / "out" / "excluded.csv")
    assert dict(zip(excluded.image_id, excluded.reason)) == {
        "odir_5_left": "quality flags only: low image quality",
        "odir_8_left": "quality flags only: lens dust, low image quality",
        "odir_8_right": "not a fundus image: anterior segment image",
        "odir_9_left": "not a fundus image: no fundus image"}
    printed = capsys.readouterr().out
    assert "kept 4 images with quality flags (lens dust 3, optic disc photographically invisible 1)" in printed
    assert "left out 2 images whose keywords are only quality flags (low image quality 2, lens dust 1)" in printed
    assert "left out 2 photographs that are not fundus images (anterior segment image 1, no fundus image 1)" in printed

    # drop_quality_flags=True: today's behaviour, every flagged eye out, each with its reason
    rows = _rows(from_odir(sheet, images, tmp_path / "strict", drop_quality_flags=True))
    assert not {"odir_3_right", "odir_7_left", "odir_7_right", "odir_9_right"} & set(rows)
    reasons = dict(pd.read_csv(tmp_path / "strict" / "excluded.csv")[["image_id", "reason"]].values)
    assert reasons["odir_7_right"] == "unusable: lens dust"
    assert reasons["odir_8_left"] == "unusable: lens dust, low image quality"
    assert reasons["odir_8_right"] == "not a fundus image: anterior segment image"
    assert "left out 6 images with quality flags (drop_quality_flags=True)" in capsys.readouterr().out


def test_odir_missing_image_is_an_error_unless_skipped(odir, tmp_path, capsys):
    root, sheet, images = odir
    (images / "2_right.jpg").unlink()
    with pytest.raises(ValueError, match=r"(?s)patient ID 2 right eye: .*2_right\.jpg.*skip_missing=True"):
        from_odir(sheet, images, tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.csv").exists()
    path = from_odir(sheet, images, tmp_path / "out", skip_missing=True)
    assert "odir_2_right" not in _rows(path) and "odir_2_left" in _rows(path)
    assert "left out 1 images missing on disk" in capsys.readouterr().out
    assert "missing on disk" in set(pd.read_csv(tmp_path / "out" / "excluded.csv").reason)


def test_odir_rare_fine_classes_merge_and_custom_coarse_map(odir, tmp_path):
    root, sheet, images = odir
    rows = _rows(from_odir(sheet, images, tmp_path / "a", min_fine_count=2))
    assert rows["odir_2_left"].fine == "dr_moderate_npdr"  # 2 images: kept
    assert rows["odir_3_left"].fine == "diabetic_retinopathy_other"  # 1 image: merged
    assert rows["odir_0_left"].fine == "cataract_other"
    validate_manifest(tmp_path / "a" / "manifest.csv", LabelMap.load(tmp_path / "a" / "label_map.json"))

    # The paper's classes only: cataract is not a class, other findings are ignored for the label.
    paper = {r"diabetic retinopathy|proliferative retinopathy": "diabetic_retinopathy", r"glaucoma": "glaucoma",
             r"macular degeneration": "amd", r"^normal fundus$": "normal", r".": None}
    rows = _rows(from_odir(sheet, images, tmp_path / "b", coarse_map=paper))
    assert "odir_0_left" not in rows and "odir_5_right" not in rows
    assert rows["odir_2_left"].coarse == "diabetic_retinopathy"
    assert LabelMap.load(tmp_path / "b" / "label_map.json").coarse == ["normal", "diabetic_retinopathy", "amd",
                                                                       "glaucoma"]
    with pytest.raises(ValueError, match="no coarse_map pattern matches: .*cataract"):
        from_odir(sheet, images, tmp_path / "c", coarse_map={r"normal": "normal"})


def test_odir_folder_finds_sheet_and_images(odir, tmp_path):
    root, sheet, images = odir
    path = from_odir_folder(root, tmp_path / "out", skip_missing=True)
    assert len(_rows(path)) == 11
    assert from_odir_folder(root, tmp_path / "o2").read_text() == path.read_text()  # nothing was missing
    with pytest.raises(FileNotFoundError, match="no ODIR annotation sheet"):
        from_odir_folder(images, tmp_path / "o3")


def test_odir_bad_sheet_names_the_column(tmp_path):
    bad = tmp_path / "sheet.xlsx"
    pd.DataFrame({"ID": [0], "Left-Fundus": ["0_left.jpg"]}).to_excel(bad, index=False)
    with pytest.raises(ValueError, match=r"no column\(s\) \['Right-Fundus'"):
        from_odir(bad, tmp_path, tmp_path / "out")


@pytest.fixture
def csv_images(tmp_path):
    root = tmp_path / "photos"
    for name in ("p1_left.png", "p1_right.png", "p2_left.png", "sub/p3.png"):
        _jpeg(root / name)
    return root


def test_csv_renamed_columns_and_unlabeled_rows(csv_images, tmp_path, capsys):
    table = pd.DataFrame({"file": ["p1_left.png", "p1_right.png", "p2_left.png", "sub/p3.png"],
                          "disease": ["glaucoma", "normal", "", "diabetic_retinopathy"],
                          "grade": ["", "", "", "dr_mild_npdr"],
                          "who": ["a", "a", "b", "c"]})
    table.to_csv(csv_images / "labels.csv", index=False)
    path = from_csv(csv_images / "labels.csv", tmp_path / "out", image_col="file", coarse_col="disease",
                    fine_col="grade", patient_col="who")
    labels = LabelMap.load(tmp_path / "out" / "label_map.json")
    validate_manifest(path, labels)
    rows = _rows(path)
    assert set(rows) == {"p1_left", "p1_right", "p2_left", "sub_p3"}
    assert (rows["p1_left"].coarse, rows["p1_left"].fine, rows["p1_left"].text) == ("glaucoma", "glaucoma", "glaucoma")
    assert rows["sub_p3"].text == "diabetic retinopathy: dr mild npdr"
    assert (rows["p2_left"].labeled, rows["p2_left"].coarse, rows["p2_left"].text) == ("0", "", "")
    assert rows["p1_left"].patient_id == rows["p1_right"].patient_id == "a"
    assert (rows["p1_left"].eye, rows["p1_right"].eye) == ("left", "right")
    assert rows["sub_p3"].image == "../photos/sub/p3.png"
    assert labels.coarse == ["diabetic_retinopathy", "glaucoma", "normal"]  # sorted: deterministic
    assert labels.fine == ["dr_mild_npdr", "glaucoma", "normal"]
    assert "no eye" in capsys.readouterr().out  # sub/p3.png says no eye


def test_csv_without_patient_column_warns(csv_images, tmp_path, capsys):
    pd.DataFrame({"image": ["p1_left.png", "p1_right.png"], "label": ["amd", "normal"],
                  "report": ["drusen at the macula", ""]}).to_csv(csv_images / "l.csv", index=False)
    path = from_csv(csv_images / "l.csv", tmp_path / "out", coarse_col="label", text_col="report")
    rows = _rows(path)
    assert rows["p1_left"].patient_id == "p1_left" and rows["p1_right"].patient_id == "p1_right"
    assert (rows["p1_left"].text, rows["p1_right"].text) == ("drusen at the macula", "normal")
    assert "each image is its own patient" in capsys.readouterr().out


def test_csv_bad_columns_and_rows(csv_images, tmp_path):
    pd.DataFrame({"image": ["p1_left.png", "nope.png"], "dx": ["normal", ""], "eye": ["L", "x"]}).to_csv(
        csv_images / "l.csv", index=False)
    with pytest.raises(ValueError, match=r"no column 'diagnosis' \(passed as coarse_col\).*\['image', 'dx', 'eye'\]"):
        from_csv(csv_images / "l.csv", tmp_path / "out", coarse_col="diagnosis")
    with pytest.raises(ValueError, match=r"line 3: 'eye' is 'x'"):
        from_csv(csv_images / "l.csv", tmp_path / "out", coarse_col="dx", eye_col="eye")
    with pytest.raises(ValueError, match=r"line 3: .*nope\.png"):
        from_csv(csv_images / "l.csv", tmp_path / "out", coarse_col="dx")
    path = from_csv(csv_images / "l.csv", tmp_path / "out", coarse_col="dx", skip_missing=True)
    assert list(_rows(path)) == ["p1_left"]


def test_folder_is_an_unlabeled_pool(tmp_path, capsys):
    root = tmp_path / "pool"
    for name in ("b/2.jpg", "a/10_right.png", "1.JPEG", ".hidden/x.jpg", "._1.jpg"):
        _jpeg(root / name)
    (root / "notes.txt").write_text("not an image")
    path = from_folder(root, tmp_path / "out")
    df = validate_manifest(path, LabelMap.load(tmp_path / "out" / "label_map.json"))
    assert list(df.image) == ["../pool/1.JPEG", "../pool/a/10_right.png", "../pool/b/2.jpg"]
    assert list(df.image_id) == ["1", "a_10_right", "b_2"] and (df.labeled == 0).all()
    assert df.eye.tolist() == ["left", "right", "left"]
    assert LabelMap.load(tmp_path / "out" / "label_map.json").coarse == []
    assert "no classes" in capsys.readouterr().out

    lm = LabelMap.from_pairs(["normal", "amd"], [("normal", "normal"), ("amd_dry", "amd")])
    from_folder(root, tmp_path / "out2", label_map=lm)
    assert LabelMap.load(tmp_path / "out2" / "label_map.json") == lm
