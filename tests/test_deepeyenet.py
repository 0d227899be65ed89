"""The DeepEyeNet adapter and shipped splits (issue 31), on a fixture in exactly the dataset's format."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from mtkd_utils.data.csv_folder import from_csv
from mtkd_utils.data.deepeyenet import disease_of, from_deepeyenet, is_grey, load_coarse_map, norm
from mtkd_utils.data.manifest import LabelMap, ManifestError, validate_manifest
from mtkd_utils.data.splits import LeakageError, make_splits, select_fraction

# disease in the file name -> (keywords, clinical description, coarse class under the shipped map)
DISEASES = {
    "central-serous-chorioretinopathy": ("central serous chorioretinopathy, csc", "serous detachment at the macula",
                                         "macular"),
    "retinitis-pigmentosa": ("retinitis pigmentosa (rp), bone spicules", "bone spicule pigment in the periphery",
                             "inherited_dystrophy"),
    "branch-retinal-vein-occlusion": ("branch retinal vein occlusion, brvo", "flame haemorrhages along a vein",
                                      "retinal_vascular"),
    "choroidal-melanoma": ("choroidal melanoma, tumour", "elevated pigmented choroidal mass", "tumour"),
    "optic-neuritis": ("optic neuritis, disc swelling", "swollen optic disc with blurred margins", "optic_nerve"),
    "toxoplasmosis": ("toxoplasmosis, retinochoroiditis", "focal retinochoroiditis beside an old scar",
                      "inflammatory_infectious"),
    "lattice-degeneration": ("lattice degeneration, peripheral thinning", "peripheral lattice with thinning",
                             "other"),
}
RARE = "coats-disease"      # 3 train images: folded into retinal_vascular_other at min_class_images=5
PER_SPLIT = {"train": 6, "val": 2, "test": 2}
FOLDER = {"train": "train_set", "val": "val_set", "test": "test_set"}
JSON_NAME = {"train": "DeepEyeNet_train.json", "val": "DeepEyeNet_valid.json", "test": "DeepEyeNet_test.json"}


def fundus(path, seed: int, spot: int, grey: bool = False, size=(64, 72)) -> None:
    """A fundus-like JPEG: a red disc on black with a bright spot whose place names the disease; grey: angiogram."""
    img = Image.new("RGB", (size[1], size[0]))
    d = ImageDraw.Draw(img)
    d.ellipse([2, 2, size[1] - 3, size[0] - 3], fill=(170 + seed % 40, 70, 30))
    angle = 2 * np.pi * spot / 8
    cx, cy = size[1] / 2 + 18 * np.cos(angle), size[0] / 2 + 16 * np.sin(angle)
    d.ellipse([cx - 6, cy - 6, cx + 6, cy + 6], fill=(250, 230, 120))
    if grey:
        img = img.convert("L").convert("RGB")
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, quality=92)


def deepeyenet_folder(root, per_split: dict[str, int] = PER_SPLIT):
    """A DeepEyeNet folder: the three JSON files and eyenet0420/{train,val,test}_set; per split and disease
    `per_split` images, the rare disease 3/1/1, a 'group' image whose keyword names a disease, one whose keywords
    name none, a near-grey angiogram and a colour image whose keywords say 'fluorescein angiography'."""
    items = {s: [] for s in FOLDER}

    def add(split, name, keywords, text, spot, grey=False):
        key = f"eyenet0420/{FOLDER[split]}/{name}.jpg"
        fundus(root / key, seed=len(items[split]) * 7 + spot, spot=spot, grey=grey)
        items[split].append({key: {"keywords": keywords, "clinical-description": text}})

    n = 0
    for spot, (disease, (kw, text, _)) in enumerate(DISEASES.items()):
        for split, k in per_split.items():
            for _ in range(k):
                n += 1
                add(split, f"{disease}-{n}", kw, f"{text} {'left' if n % 2 else 'right'} side", spot)
    for split, k in {"train": 3, "val": 1, "test": 1}.items():
        for _ in range(k):
            n += 1
            add(split, f"{RARE}-{n}", "coats disease, exudation", "telangiectatic vessels with exudate", 7)
    add("train", "group41-177", "uveitis, toxoplasmosis, scar", "old toxoplasmosis scar", 5)
    add("test", "group12-3", "unusual finding, unnamed", "an unusual finding", 3)
    add("train", "central-serous-chorioretinopathy-900", "central serous chorioretinopathy", "late leak", 0, grey=True)
    add("val", "optic-neuritis-901", "optic neuritis, fluorescein angiography", "disc leakage", 4)
    for split, name in JSON_NAME.items():
        (root / name).write_text(json.dumps(items[split], indent=1))
    return root


@pytest.fixture(scope="module")
def den(tmp_path_factory):
    return deepeyenet_folder(tmp_path_factory.mktemp("DeepEyeNet"))


def _listed(root) -> pd.DataFrame:
    rows = []
    for split, name in JSON_NAME.items():
        for item in json.loads((root / name).read_text()):
            (key, rec), = item.items()
            rows.append({"key": key, "split": split, **rec})
    return pd.DataFrame(rows)


def _manifest(path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def test_names_and_greyness(den):
    name = "eyenet0420/train_set/central-serous-chorioretinopathy-12.jpg"
    assert disease_of(name) == "central serous chorioretinopathy"
    assert disease_of("eyenet0420/train_set/group41-177.jpg") == ""
    assert norm("Dry Age-Related Macular Degeneration (dry AMD)") == "dry age related macular degeneration"
    assert is_grey(den / "eyenet0420/train_set/central-serous-chorioretinopathy-900.jpg")
    assert not is_grey(den / "eyenet0420/val_set/optic-neuritis-901.jpg")


def test_manifest_classes_texts_keywords_and_splits(den, tmp_path, capsys):
    out = tmp_path / "out"
    m = _manifest(from_deepeyenet(den, out))
    listed = _listed(den).set_index("key")
    m["key"] = [p.split("DeepEyeNet/", 1)[1] if "DeepEyeNet/" in p else p for p in m.image]
    assert not list(out.rglob("*.jpg"))                          # nothing copied: the manifest points at the images
    assert all((out / p).resolve().is_file() for p in m.image)
    row = m[m.image.str.endswith("central-serous-chorioretinopathy-1.jpg")].iloc[0]
    assert (row.coarse, row.fine, row.split) == ("macular", "central_serous_chorioretinopathy", "train")
    assert row.text == "serous detachment at the macula left side"               # T3: the description as written
    assert row.keywords == "central serous chorioretinopathy, csc"
    # every kept image keeps its shipped split and its description
    key = m.image.str.extract(r"(eyenet0420/.*)$")[0]
    assert (m.split.to_numpy() == listed.split[key].to_numpy()).all()
    assert (m.text.to_numpy() == listed["clinical-description"][key].to_numpy()).all()
    assert (m.patient_id == m.image_id).all() and m.image_id.is_unique and (m.labeled == "1").all()
    # the 'group' image takes the disease of its first keyword naming a known one ('uveitis' names none)
    group = m[m.image.str.endswith("group41-177.jpg")].iloc[0]
    assert (group.fine, group.coarse) == ("toxoplasmosis", "inflammatory_infectious")
    for disease, (_, _, coarse) in DISEASES.items():
        assert set(m.coarse[m.fine == disease.replace("-", "_")]) == {coarse}
    printed = capsys.readouterr().out
    n_kept = {s: (m.split == s).sum() for s in JSON_NAME}
    assert f"kept {len(m)} (train {n_kept['train']}, val {n_kept['val']}, test {n_kept['test']})" in printed
    assert "'other': ['lattice degeneration']" in printed         # unmatched classes are listed


def test_every_left_out_image_is_listed_with_its_reason(den, tmp_path, capsys):
    out = tmp_path / "out"
    m = _manifest(from_deepeyenet(den, out))
    excluded = _manifest(out / "excluded.csv")
    assert len(m) + len(excluded) == len(_listed(den))
    reasons = dict(zip(excluded.key.str.rsplit("/", n=1).str[1], excluded.reason))
    assert set(reasons) == {"group12-3.jpg", "central-serous-chorioretinopathy-900.jpg", "optic-neuritis-901.jpg"}
    assert reasons["group12-3.jpg"].startswith("no disease in the file name, and no keyword names a known one")
    assert reasons["central-serous-chorioretinopathy-900.jpg"].startswith("angiogram (near-grey image)")
    assert reasons["optic-neuritis-901.jpg"].startswith("angiogram ('angiography' in the keywords)")
    printed = capsys.readouterr().out
    assert "left out 2: angiogram" in printed and "left out 1: no disease in the file name" in printed
    assert f"{len(_listed(den)) - 2} colour fundus photographs, 2 angiograms" in printed


def test_modality_all_keeps_the_angiograms(den, tmp_path):
    m = _manifest(from_deepeyenet(den, tmp_path / "all", modality="all"))
    colour = _manifest(from_deepeyenet(den, tmp_path / "colour"))
    assert len(m) == len(colour) + 2
    assert m.image.str.endswith("central-serous-chorioretinopathy-900.jpg").any()
    with pytest.raises(ValueError, match=r"modality='grey'.*'colour', 'all'"):
        from_deepeyenet(den, tmp_path / "bad", modality="grey")


def test_rare_classes_fold_by_their_train_images(den, tmp_path, capsys):
    out = tmp_path / "out"
    m = _manifest(from_deepeyenet(den, out))
    coats = m[m.image.str.contains(RARE)]
    assert len(coats) == 5 and set(coats.fine) == {"retinal_vascular_other"}   # 5 images, but 3 in train
    assert set(coats.text) == {"telangiectatic vessels with exudate"}          # T3 keeps the sentence
    labels = LabelMap.load(out / "label_map.json")
    assert labels.folded == {"coats_disease": "retinal_vascular_other"}
    assert labels.fine_parent["retinal_vascular_other"] == "retinal_vascular"
    assert labels.coarse[:2] == ["tumour", "inherited_dystrophy"] and labels.coarse[-1] == "other"   # map order
    assert "['coats_disease']" in capsys.readouterr().out
    kept = _manifest(from_deepeyenet(den, tmp_path / "keep", min_class_images=1))
    assert set(kept.fine[kept.image.str.contains(RARE)]) == {"coats_disease"}
    assert LabelMap.load(tmp_path / "keep" / "label_map.json").folded == {}
    # at 7 train images every disease folds (6 train each), the group image's toxoplasmosis (7) does not
    strict = _manifest(from_deepeyenet(den, tmp_path / "strict", min_class_images=7))
    assert set(strict.fine) == {"macular_other", "inherited_dystrophy_other", "retinal_vascular_other",
                                "tumour_other", "optic_nerve_other", "toxoplasmosis", "other"}


def test_custom_coarse_map_replaces_the_shipped_one(den, tmp_path):
    assert list(load_coarse_map()) == ["tumour", "inherited_dystrophy", "inflammatory_infectious", "optic_nerve",
                                       "retinal_vascular", "macular"]          # the shipped map, 'about' no class
    cmap = tmp_path / "my_map.json"
    classes = {"posterior_pole": ["serous", "optic"], "periphery": ["lattice|pigmentosa"], "mass": ["tumour"]}
    cmap.write_text(json.dumps({"classes": classes}))
    m = _manifest(from_deepeyenet(den, tmp_path / "out", coarse_map=str(cmap)))
    coarse = dict(zip(m.fine, m.coarse))
    assert coarse["central_serous_chorioretinopathy"] == coarse["optic_neuritis"] == "posterior_pole"
    assert coarse["lattice_degeneration"] == "periphery" and coarse["toxoplasmosis"] == "other"
    assert coarse["choroidal_melanoma"] == "mass"               # by its keyword 'tumour': the name matches nothing
    assert LabelMap.load(tmp_path / "out" / "label_map.json").coarse == ["posterior_pole", "periphery", "mass", "other"]
    bare = _manifest(from_deepeyenet(den, tmp_path / "bare", coarse_map=classes))   # a dict of the classes alone
    assert dict(zip(bare.fine, bare.coarse)) == coarse
    cmap.write_text(json.dumps({"classes": {"x": ["(unclosed"]}}))
    with pytest.raises(ValueError, match=r"my_map.json: class 'x': pattern '\(unclosed'"):
        from_deepeyenet(den, tmp_path / "bad", coarse_map=cmap)
    cmap.write_text(json.dumps(["serous"]))
    with pytest.raises(ValueError, match=r'my_map.json: a coarse map is \{"classes"'):
        from_deepeyenet(den, tmp_path / "bad", coarse_map=cmap)


def test_shipped_splits_are_kept_and_p_is_drawn_inside_train(den, tmp_path):
    path = from_deepeyenet(den, tmp_path / "out")
    m = validate_manifest(path, LabelMap.load(tmp_path / "out" / "label_map.json"), check_images=False)
    for seed in (0, 1):
        splits = make_splits(m, seed=seed)
        assert (splits.split.to_numpy() == m.split.to_numpy()).all()   # every image where the source put it
        trained = set()
        for p in (15, 45, 60):
            roles = select_fraction(splits, p)
            assert (roles.role[m.split == "test"] == "test").all() and (roles.role[m.split == "val"] == "val").all()
            assert set(roles.image_id[roles.role.isin(["train", "unlabeled"])]) == set(m.image_id[m.split == "train"])
            now = set(roles.image_id[roles.role == "train"])
            assert trained <= now                                        # nested fractions
            trained = now
            assert len(now) >= round(p / 100 * len(m)) - 1
    with pytest.warns(UserWarning, match=r"p=65: the train split holds 46 of the 76 labeled images \(60.5 %\)"):
        assert (select_fraction(splits, 65).role[m.split == "train"] == "train").all()


def test_shipped_split_problems_are_refused(den, tmp_path):
    path = from_deepeyenet(den, tmp_path / "out")
    labels = LabelMap.load(tmp_path / "out" / "label_map.json")
    m = validate_manifest(path, labels, check_images=False)
    two = m.copy()
    two.loc[two.split == "test", "patient_id"] = two.patient_id[two.split == "train"].iat[0]   # one patient, 2 splits
    with pytest.raises(LeakageError, match="more than one shipped split"):
        make_splits(two)
    with pytest.raises(ValueError, match=r"no labeled image to \['val'\]"):
        make_splits(m.assign(split=m.split.replace("val", "train")))
    bad = _manifest(path)
    bad.assign(split="").to_csv(tmp_path / "out" / "manifest.csv", index=False)   # an empty column: seeded splits
    seeded = validate_manifest(tmp_path / "out" / "manifest.csv", labels, check_images=False)
    assert "split" not in seeded and set(make_splits(seeded).split) == {"train", "val", "test"}
    bad.loc[0, "split"] = "holdout"
    bad.loc[1, "split"] = ""
    bad.to_csv(tmp_path / "out" / "manifest.csv", index=False)
    with pytest.raises(ManifestError, match=r"split is 'holdout'.*\n.*empty split on a labeled row"):
        validate_manifest(tmp_path / "out" / "manifest.csv", labels, check_images=False)


def test_bad_folders_say_what_is_wrong(den, tmp_path):
    broken = deepeyenet_folder(tmp_path / "broken", {"train": 1, "val": 1, "test": 1})
    (broken / "DeepEyeNet_valid.json").write_text(json.dumps([{"a.jpg": {"keywords": "x"}}]))
    with pytest.raises(ValueError, match=r"DeepEyeNet_valid.json: item 0 \(a.jpg\): no text field\(s\) "
                                         r"\['clinical-description'\]"):
        from_deepeyenet(broken, tmp_path / "o1")
    (broken / "DeepEyeNet_valid.json").write_text(json.dumps({"a.jpg": {}}))
    with pytest.raises(ValueError, match="DeepEyeNet_valid.json: a JSON list of one-key objects expected"):
        from_deepeyenet(broken, tmp_path / "o2")
    (broken / "DeepEyeNet_valid.json").unlink()
    with pytest.raises(FileNotFoundError, match="DeepEyeNet_valid.json: missing"):
        from_deepeyenet(broken, tmp_path / "o3")
    gone = deepeyenet_folder(tmp_path / "gone", {"train": 1, "val": 1, "test": 1})
    (gone / "eyenet0420/test_set/toxoplasmosis-18.jpg").unlink()
    with pytest.raises(ValueError, match=r"(?s)1 listed image.*test eyenet0420/test_set/toxoplasmosis-18.jpg"):
        from_deepeyenet(gone, tmp_path / "o4")
    (gone / "eyenet0420/val_set/toxoplasmosis-17.jpg").write_bytes(b"not a jpeg")   # corrupt: named by the validator
    path = from_deepeyenet(gone, tmp_path / "o5", skip_missing=True)
    with pytest.raises(ManifestError, match=r"toxoplasmosis-17.jpg: unreadable or truncated image"):
        validate_manifest(path, LabelMap.load(tmp_path / "o5" / "label_map.json"))
    m = _manifest(path)
    excluded = _manifest(tmp_path / "o5" / "excluded.csv")
    assert "toxoplasmosis-18" not in " ".join(m.image)
    assert excluded.reason[excluded.key.str.endswith("toxoplasmosis-18.jpg")].iat[0].startswith("missing on disk")


def test_csv_split_column_is_kept(tmp_path):
    rows = []
    for i in range(24):
        split = ("train", "val", "test", "Train")[i % 4] if i < 20 else ("validation", "TEST")[i % 2]
        fundus(tmp_path / "img" / f"{i}.jpg", seed=i, spot=i % 3)
        rows.append({"file": f"img/{i}.jpg", "dx": f"c{i % 3}", "split": split})
    pd.DataFrame(rows).to_csv(tmp_path / "labels.csv", index=False)
    path = from_csv(tmp_path / "labels.csv", tmp_path / "out", image_col="file", coarse_col="dx", split_col="split")
    m = validate_manifest(path, LabelMap.load(tmp_path / "out" / "label_map.json"), check_images=False)
    expected = [{"train": "train", "val": "val", "validation": "val", "test": "test"}[r["split"].lower()] for r in rows]
    assert m.split.tolist() == expected
    splits = make_splits(m, seed=3)
    assert splits.split.tolist() == expected                     # test stays test, whatever the seed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        roles = select_fraction(splits, 15)
    assert set(roles.image_id[roles.role == "test"]) == set(m.image_id[m.split == "test"])
    pd.DataFrame(rows).assign(split=["holdout"] + ["train"] * 23).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match=r"line 2: 'split' is 'holdout'; write train, val or test"):
        from_csv(tmp_path / "bad.csv", tmp_path / "o2", image_col="file", coarse_col="dx", split_col="split")


def test_deepeyenet_fixture_runs_through_the_notebooks(den, tmp_path):
    """01-06 end to end on the smoke preset: the shipped splits kept, the left-out images counted, all three tasks."""
    from conftest import run_notebook as run

    exp = tmp_path / "exp"
    executed = run("01_data_prep.ipynb", exp, source="deepeyenet", source_path=str(den)).read_text()
    assert "cannot be ruled out" in executed and "left out 2: angiogram" in executed
    info = json.loads((exp / "data" / "dataset.json").read_text())
    assert (info["source"], info["splits"]) == ("deepeyenet", "shipped")
    splits = pd.read_csv(exp / "data" / "splits.csv", dtype=str, keep_default_na=False)
    m = _manifest(exp / "data" / "source" / "manifest.csv")
    assert (splits.split.to_numpy() == m.split.to_numpy()).all()
    run("02_teachers.ipynb", exp, p=45, tasks="T1+T2+T3")
    run("03_student_mtl_kd.ipynb", exp, p=45, tasks="T1+T2+T3", models=["M1", "M3"])
    student = exp / "students" / "T1+T2+T3" / "p45_s0" / "M3"
    metrics = json.loads((student / "metrics.json").read_text())
    assert set(metrics["test"]) >= {"T1_acc", "T2_acc", "T3_bleu4"}
    tested = pd.read_csv(student / "split.csv", dtype=str, keep_default_na=False)
    assert set(tested.image_id[tested.role == "test"]) == set(m.image_id[m.split == "test"])
    assert set(tested.image_id[tested.role == "train"]) <= set(m.image_id[m.split == "train"])
    run("04_error_analysis.ipynb", exp, focus="M3")
    run("05_gradcam.ipynb", exp, n_per_disease=1)
    run("06_results.ipynb", exp, metrics=["T1_acc", "T2_acc", "T3_bleu4"], n_boot=100)
    assert (exp / "results" / "table1.csv").exists()


def test_batch_runner_takes_the_source_and_the_preset_needs_it(den, tmp_path, capsys):
    from mtkd_utils.grid import batch

    argv = ["--experiment-dir", str(tmp_path / "exp"), "--dry-run", "--source", "deepeyenet", "--source-path", str(den)]
    assert batch.main(["--preset", "deepeyenet", *argv], batch.NOTEBOOKS) == 0
    data = {c.name: c for c in batch.expand_grid("deepeyenet", tmp_path / "exp", data_parameters={
        "source": "deepeyenet", "source_path": str(den)})}["data/all"]
    assert (data.parameters["source"], data.parameters["preset"]) == ("deepeyenet", "deepeyenet")
    with pytest.raises(SystemExit) as exit_:     # a real-data preset without its data: refused before anything runs
        batch.main(["--preset", "deepeyenet", "--dry-run", "--experiment-dir", str(tmp_path / "e2")], batch.NOTEBOOKS)
    assert exit_.value.code == 2 and "--source deepeyenet --source-path FOLDER" in capsys.readouterr().err
