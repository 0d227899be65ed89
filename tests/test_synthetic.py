"""The synthetic fundus generator: deterministic, valid, labels that match what is drawn."""
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage

from mtkd_utils.data import prep, synthetic
from mtkd_utils.data.dataset import load_mask
from mtkd_utils.data.learnability import quick_baseline
from mtkd_utils.data.manifest import COLUMNS, LabelMap, read_manifest, validate_manifest
from mtkd_utils.data.splits import load_evaluation_only, load_splits, make_splits, select_fraction
from mtkd_utils.data.synthetic import dataset as synthetic_dataset
from mtkd_utils.presets import config as preset

TINY = {"n_patients": 6, "n_unlabeled_patients": 2, "image_size": 48}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> Path:
    """The smoke dataset (large enough to use the 2-process pool)."""
    return synthetic.generate(tmp_path_factory.mktemp("syn") / "smoke", **synthetic.SIZES["smoke"])


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_different_seed_different(tmp_path):
    a = _files(synthetic.generate(tmp_path / "a", **TINY, seed=3))
    b = _files(synthetic.generate(tmp_path / "b", **TINY, seed=3))
    c = _files(synthetic.generate(tmp_path / "c", **TINY, seed=4))
    assert a == b
    assert a["manifest.csv"] != c["manifest.csv"]
    same_names = [k for k in a if k.startswith("images/") and k in c]
    assert same_names and all(a[k] != c[k] for k in same_names)


def test_worker_pool_gives_the_serial_result(smoke, tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic_dataset, "_map", lambda fn, jobs: [fn(j) for j in jobs])
    serial = synthetic.generate(tmp_path / "serial", **synthetic.SIZES["smoke"])
    assert _files(serial) == _files(smoke)


def test_folder_layout_and_manifest_contract(smoke):
    assert sorted(p.name for p in smoke.iterdir()) == ["evaluation_only.csv", "images", "label_map.json",
                                                       "manifest.csv", "masks", "params.json"]
    assert list(pd.read_csv(smoke / "manifest.csv", nrows=0).columns) == COLUMNS
    labels = LabelMap.load(smoke / "label_map.json")
    df = validate_manifest(smoke / "manifest.csv", labels)  # raises on any bad row, missing image or mask
    size = synthetic.SIZES["smoke"]["image_size"]
    n = sum(synthetic.SIZES["smoke"][k] for k in ("n_patients", "n_eval_patients", "n_unlabeled_patients"))
    assert len(df) == 2 * n and df.image_id.is_unique
    assert all(re.fullmatch(r"p\d{5}_[LR]", i) for i in df.image_id)
    assert (df.image == "images/" + df.image_id + ".png").all()
    assert df.groupby("patient_id").eye.apply(lambda eyes: sorted(eyes) == ["left", "right"]).all()
    assert df.patient_id.nunique() == n
    assert ((df.image_id.str[-1] == "L") == (df.eye == "left")).all()
    with Image.open(smoke / df.image[0]) as im:
        assert im.mode == "RGB" and im.size == (size, size)


def test_classes_nested_and_every_coarse_class_present(smoke):
    labels = LabelMap.load(smoke / "label_map.json")
    assert labels.coarse == ["normal", "diabetic_retinopathy", "amd", "glaucoma", "melanoma"]
    assert len(labels.fine) >= 12
    for fine in labels.fine:
        parent = labels.fine_parent[fine]
        assert parent in labels.coarse
        assert fine.startswith({"diabetic_retinopathy": "dr_"}.get(parent, parent))  # names say where they nest
    df = read_manifest(smoke / "manifest.csv")
    lab = df[df.labeled == "1"]
    assert set(lab.coarse) == set(labels.coarse)
    assert lab.coarse.value_counts().idxmax() == "normal"


def test_unlabeled_rows_carry_no_labels(smoke):
    df = read_manifest(smoke / "manifest.csv")
    unl = df[df.labeled == "0"]
    assert len(unl) == 2 * synthetic.SIZES["smoke"]["n_unlabeled_patients"]
    assert (unl[["coarse", "fine", "text", "mask"]] == "").all().all()
    assert set(unl.patient_id).isdisjoint(df[df.labeled == "1"].patient_id)


def test_masks_exist_exactly_for_abnormal_labeled_images(smoke):
    df = read_manifest(smoke / "manifest.csv")
    lab = df[df.labeled == "1"]
    assert ((lab["mask"] != "") == (lab.coarse != "normal")).all()
    for _, row in lab[lab["mask"] != ""].iterrows():
        m = np.asarray(Image.open(smoke / row["mask"]))
        assert m.shape == (64, 64) and set(np.unique(m)) == {0, 255}
    assert sorted(p.name for p in (smoke / "masks").iterdir()) == sorted(Path(m).name for m in lab["mask"] if m)


@pytest.mark.parametrize("fine", [f for f, _, _ in synthetic.FINE])
def test_mask_covers_every_drawn_lesion(fine):
    for k, eye in enumerate(("left", "right")):
        r = synthetic.render_eye(fine, eye, 64, np.random.default_rng([7, k]))
        assert r.image.shape == (64, 64, 3) and r.image.dtype == np.uint8
        if synthetic.FINE_PARENT[fine] == "normal":
            assert r.lesions == [] and r.mask.max() == 0
            continue
        assert r.lesions and set(np.unique(r.mask)) == {0, 255}
        for les in r.lesions:
            assert r.mask[round(les.y), round(les.x)] == 255, les


def test_lesions_are_visible_where_the_mask_says():
    """Large melanomas are grey-brown on an orange-red fundus: far less red than the fundus around them."""
    yy, xx = np.mgrid[0:128, 0:128]
    for k in range(3):
        r = synthetic.render_eye("melanoma_large", "left", 128, np.random.default_rng(k))
        core = next(les for les in r.lesions if les.kind.startswith("melanoma"))
        d = np.hypot(xx - core.x, yy - core.y)
        inside = d < 0.5 * core.r
        ring = (d > 1.6 * core.r) & (d < 2.2 * core.r) & (r.mask == 0) & (r.image.sum(2) > 60)  # in the field of view
        red = r.image[..., 0].astype(float)
        assert red[inside].mean() < 0.8 * red[ring].mean()


def test_fine_labels_are_visible_in_the_plan():
    """What defines a fine class is planned for drawing: CDR grade, haemorrhage count, melanoma size, new vessels."""
    rng = np.random.default_rng(0)

    def plans(fine):
        return [synthetic.plan_eye(fine, "left", rng) for _ in range(20)]

    cdr = {f: [p.cdr for p in plans(f)] for f in ("normal", "glaucoma_cdr06", "glaucoma_cdr09")}
    assert max(cdr["normal"]) < min(cdr["glaucoma_cdr06"]) and max(cdr["glaucoma_cdr06"]) < min(cdr["glaucoma_cdr09"])
    haem = {f: [p.findings["haemorrhages"] for p in plans(f)] for f in ("dr_mild_npdr", "dr_moderate_npdr",
                                                                          "dr_severe_npdr")}
    assert max(haem["dr_mild_npdr"]) < min(haem["dr_moderate_npdr"])
    assert max(haem["dr_moderate_npdr"]) < min(haem["dr_severe_npdr"])
    small, large = plans("melanoma_small"), plans("melanoma_large")
    assert max(max(s.r for s in p.spots) for p in small) < min(max(s.r for s in p.spots) for p in large)
    assert all(any(s.kind == "neovascularisation" for s in p.spots) for p in plans("dr_pdr"))
    assert not any(s.kind == "neovascularisation" for p in plans("dr_severe_npdr") for s in p.spots)


def test_cup_grades_are_separable_at_the_working_resolution():
    """The disc is the reference: on the smallest disc, the cups of neighbouring cup-to-disc grades differ by
    >= 2 px in diameter at 64 px (the ratios never overlap)."""
    rng = np.random.default_rng(1)
    px_per_unit = 32  # 64 px across the field of view after the crop
    grades = [[synthetic.plan_eye(f, "right", rng) for _ in range(200)]
              for f in ("normal", "glaucoma_cdr06", "glaucoma_cdr09")]
    smallest_disc = min(p.disc_r for grade in grades for p in grade)
    for lower, upper in zip(grades, grades[1:]):
        gap = min(p.cdr for p in upper) - max(p.cdr for p in lower)
        assert gap * 2 * smallest_disc * px_per_unit >= 2.0


@pytest.mark.parametrize("fine", [f for f, parent, _ in synthetic.FINE if parent != "normal"])
def test_every_lesion_is_at_least_2_px_across_at_64_px(fine, tmp_path):
    """Masks as the workbook sees them (FOV crop, nearest-neighbour resize to 64 px): every connected lesion
    holds a 2 x 2 block (the planned minimum is 2.9 px across; nearest-neighbour sampling can shave it to 2)."""
    for k, eye in enumerate(("left", "right", "left")):
        r = synthetic.render_eye(fine, eye, synthetic.SIZES["demo"]["image_size"], np.random.default_rng([11, k]))
        Image.fromarray(r.image).save(tmp_path / "i.png")
        Image.fromarray(r.mask).save(tmp_path / "m.png")
        mask = load_mask(tmp_path / "manifest.csv", "i.png", "m.png", 64)
        components, n = ndimage.label(mask)
        assert n >= 1
        for j in range(1, n + 1):
            comp = components == j
            assert ndimage.binary_erosion(comp, np.ones((2, 2)), border_value=0).any(), (fine, k, j)


@pytest.fixture(scope="module")
def demo_plan() -> pd.DataFrame:
    """The demo preset's cohort (labels of every image, no pixels) with its splits for split seed 0."""
    size = {k: v for k, v in synthetic.SIZES["demo"].items() if k != "image_size"}
    cohort = synthetic.plan_cohort(**size)
    held = set(cohort.patient_id[cohort.evaluation_only == 1])
    return make_splits(cohort, seed=0, evaluation_only=held).assign(fine=cohort.fine)


def test_every_fine_class_has_10_training_images_at_p15_in_the_demo(demo_plan):
    train = select_fraction(demo_plan, 15).query("role == 'train'")
    counts = train.fine.value_counts().reindex([f for f, _, _ in synthetic.FINE], fill_value=0)
    assert counts.min() >= 10, counts.to_dict()
    assert counts.max() >= 2.5 * counts.min()  # still long-tailed


def test_the_demo_test_split_has_1000_images_and_a_flat_prior(demo_plan):
    test = select_fraction(demo_plan, 70).query("role == 'test'")
    assert len(test) >= 1000
    assert test.coarse.value_counts(normalize=True).max() <= 0.40
    assert test.fine.value_counts(normalize=True).max() <= 0.20
    assert test.fine.nunique() == len(synthetic.FINE)
    labeled = demo_plan[demo_plan.labeled == 1]
    assert labeled.coarse.value_counts(normalize=True).max() <= 0.40
    assert labeled.fine.value_counts(normalize=True).max() <= 0.20


def test_cohort_quotas_and_fellow_eyes():
    cohort = synthetic.plan_cohort(n_patients=500, n_eval_patients=100, n_unlabeled_patients=50, seed=2)
    dev = cohort[cohort.group == "development"]
    for fine, share in synthetic.FINE_SHARE.items():
        assert abs((dev.fine == fine).sum() - share * len(dev)) <= 1, fine
    eyes = cohort.pivot(index="patient_id", columns="eye", values="coarse")
    melanoma = eyes[(eyes == "melanoma").any(axis=1)]
    assert ((melanoma == "normal").sum(axis=1) == 1).all()  # melanoma is one-eyed here: the fellow eye is normal
    dr = eyes[(eyes == "diabetic_retinopathy").any(axis=1)]
    assert (dr == "diabetic_retinopathy").all(axis=1).mean() > 0.7  # DR mostly in both eyes
    assert cohort.groupby("group").patient_id.nunique().to_dict() == {"development": 500, "evaluation": 100,
                                                                      "unlabeled": 50}
    assert (cohort.evaluation_only == (cohort.group == "evaluation")).all()


def test_evaluation_only_patients_are_listed_and_always_tested(smoke):
    df = validate_manifest(smoke / "manifest.csv", LabelMap.load(smoke / "label_map.json"))
    held = load_evaluation_only(smoke / "manifest.csv")
    assert len(held) == synthetic.SIZES["smoke"]["n_eval_patients"] and held <= set(df.patient_id[df.labeled == 1])
    for p in (15, 70):
        roles = select_fraction(make_splits(df, seed=0, evaluation_only=held), p)
        assert (roles[roles.patient_id.isin(held)].role == "test").all()


def test_prepare_data_tests_the_evaluation_only_patients(smoke, tmp_path):
    """The list beside the manifest reaches the experiment's splits.csv."""
    prep.prepare_data(tmp_path / "exp", preset("smoke"), source="manifest",
                      source_path=str(smoke / "manifest.csv"))
    splits = load_splits(tmp_path / "exp" / "data" / "splits.csv")
    held = splits[splits.evaluation_only == 1]
    assert set(held.patient_id) == load_evaluation_only(smoke / "manifest.csv") and (held.split == "test").all()


def test_left_and_right_eyes_are_mirrored():
    """The disc is nasal: on the image's right for a right eye, on its left for a left eye."""
    for eye, side in (("right", 1), ("left", -1)):
        for k in range(5):
            r = synthetic.render_eye("glaucoma_cdr09", eye, 64, np.random.default_rng(k))
            disc = next(les for les in r.lesions if les.kind == "glaucomatous_disc")
            assert side * (disc.x - 31.5) > 10


def test_sentences_follow_the_findings_and_vary(smoke):
    df = read_manifest(smoke / "manifest.csv")
    lab = df[df.labeled == "1"]
    for _, row in lab.iterrows():
        words = synthetic.tokens(row.text)
        assert row.text == row.text.lower() and 5 <= len(words) <= 25, row.text
        assert row.eye in words and ({"left", "right"} - {row.eye}).isdisjoint(words), row.text
    assert lab.groupby("coarse").text.nunique().min() > 1
    rng = np.random.default_rng(0)
    for fine, must in (("glaucoma_cdr06", "0.6"), ("melanoma_large", "large"), ("dr_pdr", "proliferative|pdr"),
                       ("dr_mild_npdr", "haemorrhage"), ("amd_intermediate", "intermediate"),
                       ("normal_tessellated", "tessellated|tigroid|choroidal")):
        texts = {synthetic.describe(synthetic.plan_eye(fine, "right", rng), rng) for _ in range(12)}
        assert len(texts) >= 4, texts
        assert all(re.search(must, t) for t in texts), texts
    vocab = {w for f, _, _ in synthetic.FINE for _ in range(10)
             for w in synthetic.tokens(synthetic.describe(synthetic.plan_eye(f, "left", rng), rng))}
    assert 50 < len(vocab) < 300


def test_ensure_synthetic_reuses_and_refuses(tmp_path, monkeypatch):
    out = tmp_path / "data" / "tiny"
    manifest = synthetic.ensure_synthetic(out, **TINY)
    assert manifest == out / "manifest.csv" and manifest.is_file()
    monkeypatch.setattr(synthetic, "generate", lambda *a, **k: pytest.fail("regenerated an existing dataset"))
    assert synthetic.ensure_synthetic(out, **TINY, seed=0) == manifest  # seed=0 is the default: same params
    with pytest.raises(ValueError, match="delete"):
        synthetic.ensure_synthetic(out, **{**TINY, "seed": 1})
    with pytest.raises(ValueError, match="unknown"):
        synthetic.ensure_synthetic(out, **TINY, colour="blue")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("someone's files")
    with pytest.raises(ValueError, match="delete"):
        synthetic.ensure_synthetic(tmp_path / "mine", **TINY)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "someone's files"
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["tiny"]  # no temporary folders left


def test_a_failed_generation_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def flaky(*args):
        calls.append(1)
        if len(calls) > 5:
            raise RuntimeError("killed")
        return real(*args)

    real = synthetic_dataset.render_eye
    monkeypatch.setattr(synthetic_dataset, "render_eye", flaky)
    with pytest.raises(RuntimeError):
        synthetic.generate(tmp_path / "half", **TINY)
    assert list(tmp_path.iterdir()) == []


def test_quick_baseline_runs_on_a_patient_split(smoke):
    res = quick_baseline(smoke, train_fraction=0.5, seed=0, steps=10)
    correct = res["coarse_acc"] * res["n_test_images"]           # a share of whole test images
    assert correct == pytest.approx(round(correct)) and 0 < res["majority_acc"] < 1
    n_patients = synthetic.SIZES["smoke"]["n_patients"] + synthetic.SIZES["smoke"]["n_eval_patients"]
    n_labeled = 2 * n_patients
    assert res["n_test_images"] == 2 * round(0.3 * n_patients)
    assert res["n_train_images"] + res["n_test_images"] <= n_labeled
    with pytest.raises(ValueError, match="train_fraction"):
        quick_baseline(smoke / "manifest.csv", train_fraction=0.8)
