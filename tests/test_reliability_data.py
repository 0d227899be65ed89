"""Issue 33, data side: a table in another encoding, one photograph under two patients, sentences cut by max_len."""
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mtkd_utils.data import prep
from mtkd_utils.data.csv_folder import from_csv
from mtkd_utils.data.duplicates import duplicate_groups, split_groups
from mtkd_utils.data.manifest import read_manifest
from mtkd_utils.data.splits import load_evaluation_only, load_splits, make_splits
from mtkd_utils.data.text import Vocab, long_sentences, tokenize
from mtkd_utils.grid import batch
from mtkd_utils.presets import config as preset

CFG = preset("smoke")


def dry_run_error(*args: str, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        batch.main(["--preset", "smoke", "--dry-run", *args], batch.NOTEBOOKS)
    assert exit_.value.code == 2
    return capsys.readouterr().err


def photo(path, seed: int, size: int = 40, mode: str = "RGB") -> None:
    """A distinct random photograph per seed (the same seed: the same pixels, whatever the file name)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert(mode).save(path)


def labelled_csv(folder, n: int = 40, copies: int = 0, text=lambda i: "normal fundus") -> pd.DataFrame:
    """n patients with one photograph each; the first `copies` photographs saved again under another name for
    another, new patient (an export done twice)."""
    rows = []
    for i in range(n):
        photo(folder / f"img{i}.png", i)
        rows.append({"image": f"img{i}.png", "patient": f"pt{i}", "dx": ["normal", "dr"][i % 2], "text": text(i)})
    for i in range(copies):
        photo(folder / f"copy{i}.png", i, mode="RGBA" if i % 2 else "RGB")   # an opaque RGBA copy: the same pixels
        rows.append({"image": f"copy{i}.png", "patient": f"again{i}", "dx": ["normal", "dr"][i % 2], "text": text(i)})
    return pd.DataFrame(rows)


OPTIONS = {"coarse_col": "dx", "text_col": "text", "patient_col": "patient"}


# ---------------------------------------------------------------- 1. encodings
def test_a_latin1_csv_is_refused_at_plan_time_by_line_with_the_fix(tmp_path, capsys):
    table = labelled_csv(tmp_path, 6, text=lambda i: "rétinopathie" if i == 4 else "normal")   # the accent: line 6
    table.to_csv(tmp_path / "labels.csv", index=False, encoding="latin-1")
    err = dry_run_error("--source", "csv", "--source-path", str(tmp_path / "labels.csv"), "--source-options",
                        json.dumps(OPTIONS), "--experiment-dir", str(tmp_path / "e"), capsys=capsys)
    assert f"{tmp_path / 'labels.csv'}: line 6, byte " in err and "b'\\xe9' is not valid utf-8" in err
    assert "--source-options '{\"encoding\": \"latin-1\"}'" in err
    # named, it is read as it is: the accent survives into the manifest
    path = from_csv(tmp_path / "labels.csv", tmp_path / "out", **OPTIONS, encoding="latin-1")
    assert read_manifest(path).text.iat[4] == "rétinopathie"
    with pytest.raises(ValueError, match=r"labels.csv: line 6, byte \d+: .*source_options=\{\"encoding\": \"latin-1\"\}"):
        from_csv(tmp_path / "labels.csv", tmp_path / "out2", **OPTIONS)    # the adapter itself says the same


def test_a_utf8_csv_with_a_byte_order_mark_keeps_its_first_column_name(tmp_path):
    labelled_csv(tmp_path, 6, text=lambda i: "rétinopathie").to_csv(tmp_path / "l.csv", index=False,
                                                                       encoding="utf-8-sig")
    assert (tmp_path / "l.csv").read_bytes()[:3] == b"\xef\xbb\xbf"
    path = from_csv(tmp_path / "l.csv", tmp_path / "out", image_col="image", **OPTIONS)
    assert read_manifest(path).text.iat[0] == "rétinopathie"


def test_an_unknown_encoding_is_refused_by_name(tmp_path, capsys):
    labelled_csv(tmp_path, 3).to_csv(tmp_path / "l.csv", index=False)
    err = dry_run_error("--source", "csv", "--source-path", str(tmp_path / "l.csv"), "--source-options",
                        '{"encoding": "latin-9x"}', "--experiment-dir", str(tmp_path / "e"), capsys=capsys)
    assert "encoding='latin-9x': not a text encoding" in err


def test_a_manifest_not_in_utf8_names_file_line_and_utf8(tmp_path):
    (tmp_path / "manifest.csv").write_bytes("image_id,image,patient_id,eye,labeled\nx,é.png,p,left,0\n"
                                            .encode("latin-1"))
    with pytest.raises(ValueError, match=r"manifest.csv: line 2, byte 3: .*a manifest is UTF-8"):
        read_manifest(tmp_path / "manifest.csv")


# ---------------------------------------------------------------- 2. one photograph, two patients
def test_copies_of_a_photograph_under_other_patients_never_straddle_splits(tmp_path, capsys):
    labelled_csv(tmp_path / "src", 60, copies=20).to_csv(tmp_path / "src" / "labels.csv", index=False)
    exp = tmp_path / "exp"
    info = prep.prepare_data(exp, CFG, "csv", str(tmp_path / "src" / "labels.csv"), OPTIONS)
    out = capsys.readouterr().out
    assert info["duplicates"] == {"groups": 20, "images": 40, "patients_grouped": 40, "policy": "group",
                                  "excluded": []}
    assert json.loads((exp / "data" / "dataset.json").read_text())["duplicates"] == info["duplicates"]
    assert "20 photograph(s) appear more than once" in out and f"{tmp_path}/src/copy3.png (patient again3)" in out
    report = pd.read_csv(exp / "data" / "duplicates.csv", dtype=str)
    assert len(report) == 40 and set(report.groupby("group").file.apply(lambda s: s.str[-5:].nunique())) == {1}
    splits, manifest = load_splits(exp / "data" / "splits.csv"), read_manifest(exp / "data" / "source" / "manifest.csv")
    split_of = dict(zip(splits.image_id, splits.split))
    for i in range(20):
        original, copy = (manifest.image_id[manifest.image.str.endswith(f"/{n}.png")].iat[0] for n in (f"img{i}", f"copy{i}"))
        assert split_of[original] == split_of[copy], i
    # what the grouping prevents: split by patient id alone, copies land on both sides
    manifest["labeled"] = manifest.labeled.astype(int)
    plain = dict(zip(*make_splits(manifest, CFG.split_seed)[["image_id", "split"]].to_numpy().T))
    assert sum(plain[f"img{i}"] != plain[f"copy{i}"] for i in range(20)) > 0


def test_duplicates_can_be_refused_listing_every_group(tmp_path):
    labelled_csv(tmp_path / "src", 12, copies=2).to_csv(tmp_path / "src" / "labels.csv", index=False)
    with pytest.raises(ValueError, match=r"(?s)2 photograph\(s\) appear more than once .*group 1: \S+/src/img0.png \(patient "
                       r"pt0\), \S+/src/copy0.png \(patient again0\)\n  group 2: \S+/src/img1.png .*duplicates='refuse'"):
        prep.prepare_data(tmp_path / "exp", CFG, "csv", str(tmp_path / "src" / "labels.csv"),
                          {**OPTIONS, "duplicates": "refuse"})
    assert not (tmp_path / "exp" / "data" / "splits.csv").exists()
    with pytest.raises(ValueError, match="duplicates='keep': choose one of"):
        prep.prepare_data(tmp_path / "e2", CFG, "csv", str(tmp_path / "src" / "labels.csv"),
                          {**OPTIONS, "duplicates": "keep"})


def test_split_groups_join_patients_linked_through_shared_photographs():
    manifest = pd.DataFrame({"image": list("abcdef"), "patient_id": ["p1", "p2", "p2", "p3", "p4", "p5"]})
    hashes = dict(zip("abcdef", ["x", "x", "y", "y", "z", "w"]))   # p1=p2 (a, b), p2=p3 (c, d): one group
    groups = duplicate_groups(manifest, hashes)
    assert groups == [[0, 1], [2, 3]]
    assert split_groups(manifest, groups).tolist() == ["p1+p2+p3"] * 4 + ["p4", "p5"]


def test_the_synthetic_smoke_set_has_no_duplicates_and_keeps_its_splits(tmp_path):
    info = prep.prepare_data(tmp_path / "exp", CFG)
    assert info["duplicates"]["groups"] == 0 and not (tmp_path / "exp" / "data" / "duplicates.csv").exists()
    manifest = read_manifest(info["manifest"])
    manifest["labeled"] = manifest.labeled.astype(int)
    saved = load_splits(tmp_path / "exp" / "data" / "splits.csv")
    expected = make_splits(manifest, CFG.split_seed, evaluation_only=load_evaluation_only(info["manifest"]))
    assert saved[["image_id", "split", "train_rank"]].equals(expected[["image_id", "split", "train_rank"]])


# ---------------------------------------------------------------- 3. nothing cut silently
def test_long_sentences_are_counted_as_encode_cuts_them():
    texts = ["a b c", "a b c d e f", "a, b."]                   # 3, 6 and 4 tokens (punctuation counts)
    found = long_sentences(texts, max_len=6)                    # room for 4 tokens beside <sos> and <eos>
    assert found == {"cut": 1, "sentences": 3, "max_tokens": 4, "longest_tokens": 6, "longest_at": 1,
                     "max_len_for_all": 8}
    vocab = Vocab(sorted({w for t in texts for w in tokenize(t)}))
    cut = [len(vocab.decode(vocab.encode(t, 6))) < len(tokenize(t)) for t in texts]
    assert sum(cut) == found["cut"]
    assert sum(len(vocab.decode(vocab.encode(t, 8))) < len(tokenize(t)) for t in texts) == 0   # the advised max_len


def test_a_400_word_diagnosis_is_reported_with_the_setting_to_change(tmp_path, capsys):
    long = " ".join(["haemorrhage"] * 400)
    labelled_csv(tmp_path / "src", 12, text=lambda i: long if i == 3 else "normal fundus").to_csv(
        tmp_path / "src" / "labels.csv", index=False)
    info = prep.prepare_data(tmp_path / "exp", CFG, "csv", str(tmp_path / "src" / "labels.csv"), OPTIONS)
    out = capsys.readouterr().out
    assert info["long_sentences"]["cut"] == 1 and info["long_sentences"]["longest_tokens"] == 400
    assert "1 of 12 diagnosis sentences are longer than 28 tokens" in out
    assert "set max_len=402 (batch: --set max_len=402" in out


def test_a_bad_duplicates_option_is_refused_at_plan_time(tmp_path, capsys):
    err = dry_run_error("--source-options", '{"duplicates": "keep"}', "--experiment-dir", str(tmp_path / "e"),
                        capsys=capsys)
    assert "duplicates='keep': choose one of ('group', 'refuse')" in err


def test_a_photograph_shipped_in_two_splits_stays_where_it_is_tested_first():
    import pandas as pd

    from mtkd_utils.data.duplicates import shipped_copies
    m = pd.DataFrame({"image_id": ["a", "b", "c", "d", "e", "f"], "split": ["train", "test", "val", "train", "train", ""]})
    # a (train) = b (test) = c (val); d and e: the same photograph twice in train; f: an unlabeled copy of d
    within, excluded = shipped_copies(m, [[0, 1, 2], [3, 4, 5]])
    assert sorted(excluded) == ["a", "c", "f"]           # only the test copy of the first, the train copies of the second
    assert within == [[3, 4]]                              # copies inside one shipped split are split together
