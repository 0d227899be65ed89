"""The DeepEyeNet adapter (Huang et al., WACV 2021): its three JSON files and image folders -> manifest.csv,
label_map.json, excluded.csv, with the dataset's own train / val / test split in the manifest's `split` column.

Fine class (T2): the disease of the file name; coarse class (T1): an editable map (deepeyenet_coarse_map.json);
T3: the clinical description as written; the keywords are kept in a column. There are no patient ids: each image
is its own patient. See data/README.md (DeepEyeNet) for how to obtain the data and every choice made here.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..io import write_csv
from .dataset_writer import label_map_of, raise_missing, relpath, write_dataset

JSON_FILES = {"train": "DeepEyeNet_train.json", "val": "DeepEyeNet_valid.json", "test": "DeepEyeNet_test.json"}
COARSE_MAP = Path(__file__).with_name("deepeyenet_coarse_map.json")   # the shipped, editable coarse map
OTHER = "other"                          # the coarse class of a disease no pattern of the map matches
MODALITIES = ("colour", "all")           # colour fundus photographs only | angiograms too
GREY_SPREAD = 12.0                       # mean max-min channel difference (0-255) under which an image is grey
ANGIO_KEYWORD = re.compile(r"angiogra")  # 'fluorescein angiography', 'icg angiography', ...
_NO_DISEASE = re.compile(r"^(group ?\d*|\d*)$")   # file names that carry no disease: 'group41-177.jpg'


def norm(text: str) -> str:
    """A disease name or keyword as compared: lower case, hyphens as spaces, '(abbreviations)' dropped."""
    return " ".join(re.sub(r"\([^)]*\)", " ", text).replace("-", " ").replace("_", " ").lower().split())


def disease_of(key: str) -> str:
    """The disease a DeepEyeNet file name carries ('' for none): '.../central-serous-chorioretinopathy-12.jpg'
    -> 'central serous chorioretinopathy', '.../group41-177.jpg' -> ''."""
    name = norm(re.sub(r"-\d+$", "", Path(key).stem))
    return "" if _NO_DISEASE.match(name) else name


def slug(disease: str) -> str:
    """The fine class name of a disease: 'central serous chorioretinopathy' -> 'central_serous_chorioretinopathy'."""
    return re.sub(r"[^a-z0-9]+", "_", disease).strip("_")


def split_keywords(cell: str) -> list[str]:
    """A keyword cell as normalised keywords (norm), in order, without repeats."""
    return list(dict.fromkeys(k for k in (norm(part) for part in cell.split(",")) if k))


def _read_map_file(path: Path) -> object:
    """A coarse-map JSON file's content; FileNotFoundError / ValueError naming the file."""
    if not path.is_file():
        raise FileNotFoundError(f"coarse_map={str(path)!r}: no such file; give a JSON file like {COARSE_MAP}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); see {COARSE_MAP} for the format") from None


def load_coarse_map(coarse_map: str | Path | Mapping | None = None) -> dict[str, list[re.Pattern]]:
    """The coarse map as {class: compiled patterns}: the shipped one for None, else a JSON file or a dict
    ({"classes": {class: [regex, ...]}}, or the classes alone)."""
    where = "coarse_map (a dict)" if isinstance(coarse_map, Mapping) else str(coarse_map or COARSE_MAP)
    raw = coarse_map if isinstance(coarse_map, Mapping) else _read_map_file(Path(where))
    classes = raw.get("classes", {k: v for k, v in raw.items() if k != "about"}) if isinstance(raw, Mapping) else None
    if not isinstance(classes, Mapping) or not all(isinstance(v, list) for v in classes.values()):
        raise ValueError(f'{where}: a coarse map is {{"classes": {{"<coarse class>": ["<regex>", ...], ...}}}} '
                         f"(see {COARSE_MAP})")
    out = {}
    for name, patterns in classes.items():
        try:
            out[str(name)] = [re.compile(str(p)) for p in patterns]
        except re.error as e:
            raise ValueError(f"{where}: class {name!r}: pattern {e.pattern!r} is not a regular expression "
                             f"({e})") from None
    return out


def coarse_of(disease: str, keywords: Iterable[str], coarse_map: Mapping[str, list[re.Pattern]]) -> str:
    """The first class whose pattern matches the disease name, else its keywords (in order), else OTHER."""
    for texts in ([disease], list(keywords)):
        for name, patterns in coarse_map.items():
            if any(p.search(t) for t in texts for p in patterns):
                return name
    return OTHER


def read_split_file(path: Path, split: str) -> pd.DataFrame:
    """One DeepEyeNet JSON file (a list of one-key objects) as rows: key, split, keywords, description."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; a DeepEyeNet folder holds {', '.join(JSON_FILES.values())} "
                                f"beside eyenet0420/ (data/README.md, DeepEyeNet)")
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(items, list):
        raise ValueError(f"{path}: a JSON list of one-key objects expected, found a {type(items).__name__}")
    rows = []
    for i, item in enumerate(items):
        if not (isinstance(item, dict) and len(item) == 1 and isinstance(next(iter(item.values())), dict)):
            raise ValueError(f"{path}: item {i} is {str(item)[:80]!r}; each item is one key, the image path, "
                             'with {"keywords": ..., "clinical-description": ...}')
        (key, rec), = item.items()
        missing = [f for f in ("keywords", "clinical-description") if not isinstance(rec.get(f), str)]
        if missing:
            raise ValueError(f"{path}: item {i} ({key}): no text field(s) {missing}")
        rows.append({"key": key, "split": split, "keywords": rec["keywords"].strip(),
                     "text": " ".join(rec["clinical-description"].split())})
    return pd.DataFrame(rows, columns=["key", "split", "keywords", "text"])


def read_deepeyenet(root: Path) -> pd.DataFrame:
    """The three JSON files of a DeepEyeNet folder as one table, in file order; refuses an image listed twice."""
    table = pd.concat([read_split_file(root / name, split) for split, name in JSON_FILES.items()], ignore_index=True)
    dup = table[table.key.duplicated(keep=False)]
    if len(dup):
        shown = "; ".join(f"{k} in {sorted(set(g.split))}" for k, g in list(dup.groupby("key"))[:10])
        raise ValueError(f"{root}: {dup.key.nunique()} image(s) listed more than once in the JSON files ({shown}); "
                         "each image must be listed once, in one split")
    return table


def is_grey(path: Path, spread: float = GREY_SPREAD) -> bool:
    """Whether an image is near-grey (an angiogram): its lit pixels' channels hardly differ."""
    with Image.open(path) as im:
        im.draft("RGB", (128, 128))      # JPEG: decode at a reduced scale, enough for colour
        rgb = np.asarray(im.convert("RGB").resize((128, 128)), dtype=np.int16)
    lit = rgb.max(axis=2) > 20            # the field of view, not the black border
    if not lit.any():
        return True
    return float((rgb.max(axis=2) - rgb.min(axis=2))[lit].mean()) < spread


def _label(table: pd.DataFrame, known: set[str]) -> pd.Series:
    """Each image's disease: from its file name, else its first keyword naming a known disease, else ''."""
    return pd.Series([d or next((k for k in kws if k in known), "") for d, kws in zip(table.disease, table.kw)],
                     index=table.index)


def _reasons(table: pd.DataFrame, modality: str) -> pd.Series:
    """Why each image is left out ('' when kept); one reason each, the first that applies."""
    reason = pd.Series("", index=table.index)
    none = table.fine_disease == ""
    reason[none] = "no disease in the file name, and no keyword names a known one: " + table.keywords[none]
    angio = (table.modality != "colour") & (reason == "") & (modality == "colour")
    reason[angio] = "angiogram (" + table.modality[angio] + "); modality='all' keeps it"
    reason[(reason == "") & (table.text == "")] = "empty clinical description"
    return reason


def _fold_rare(rows: pd.DataFrame, min_class_images: int) -> dict[str, str]:
    """Fine classes with fewer than min_class_images images in the train split -> '<coarse>_other'; the folds."""
    train = rows[rows.split == "train"].fine.value_counts()
    folds = {f: (f"{c}_other" if c != OTHER else OTHER) for f, c in rows[["fine", "coarse"]].drop_duplicates()
             .itertuples(index=False) if train.get(f, 0) < min_class_images}
    rows["fine"] = rows.fine.replace(folds)
    return {f: to for f, to in folds.items() if f != to}


def _modality(table: pd.DataFrame, present: np.ndarray) -> np.ndarray:
    """'colour', 'near-grey image' or "'angiography' in the keywords" per image (an unreadable one counts as
    colour here: the manifest's validator lists it by name)."""
    def grey(path: Path) -> bool:
        try:
            return is_grey(path)
        except Exception:  # noqa: BLE001  PIL raises many types for a corrupt file
            return False
    is_grey_ = np.array([grey(p) if ok else False for p, ok in zip(table.path, present)], dtype=bool)
    keyword = table.keywords.str.lower().str.contains(ANGIO_KEYWORD).to_numpy()
    return np.where(is_grey_, "near-grey image", np.where(keyword, "'angiography' in the keywords", "colour"))


def _listed(root: Path, modality: str, skip_missing: bool) -> pd.DataFrame:
    """Every listed image with its disease, modality and why it is left out ('' when kept)."""
    table = read_deepeyenet(root)
    table["path"] = [root / k for k in table.key]
    present = np.array([p.is_file() for p in table.path], dtype=bool)
    if not present.all() and not skip_missing:
        raise_missing([f"{s} {k}: {p}" for s, k, p, ok in zip(table.split, table.key, table.path, present) if not ok],
                      root)
    table["disease"] = table.key.map(disease_of)
    table["kw"] = table.keywords.map(split_keywords)
    table["fine_disease"] = _label(table, set(table.disease) - {""})
    table["modality"] = _modality(table, present)
    table["reason"] = _reasons(table, modality).where(present, "missing on disk (skip_missing=True)")
    return table


def _labelled(kept: pd.DataFrame, cmap: Mapping[str, list[re.Pattern]], min_class_images: int,
              out_dir: Path) -> tuple[pd.DataFrame, dict[str, str], dict[str, str]]:
    """The manifest rows of the kept images, each disease's coarse class and the folds of rare diseases."""
    rows = kept.copy()
    train_kw = rows[rows.split == "train"].groupby("fine_disease").kw.sum()   # the map reads no test keyword
    coarse = {d: coarse_of(d, train_kw.get(d, []), cmap) for d in sorted(set(rows.fine_disease))}
    rows["coarse"] = rows.fine_disease.map(coarse)
    rows["fine"] = rows.fine_disease.map(slug)
    folds = _fold_rare(rows, min_class_images)
    rows = rows.assign(image_id=[f"{s}_{Path(k).stem}" for s, k in zip(rows.split, rows.key)],
                       image=[relpath(p, out_dir) for p in rows.path], eye="left", labeled=1).reset_index(drop=True)
    rows["patient_id"] = rows.image_id                   # no patient ids: each image is its own patient
    return rows, coarse, folds


def from_deepeyenet(root: str | Path, out_dir: str | Path, *, coarse_map: str | Path | Mapping | None = None,
                    modality: str = "colour", min_class_images: int = 5, skip_missing: bool = False) -> Path:
    """A DeepEyeNet folder (the three JSON files beside eyenet0420/) -> out_dir/manifest.csv (returned),
    label_map.json and excluded.csv. Images are not copied: the manifest points at them."""
    root, out_dir = Path(root), Path(out_dir)
    if modality not in MODALITIES:
        raise ValueError(f"modality={modality!r}: use one of {MODALITIES} (colour fundus photographs only | "
                         "angiograms too)")
    if isinstance(min_class_images, bool) or not isinstance(min_class_images, int) or min_class_images < 1:
        raise ValueError(f"min_class_images={min_class_images!r}: give an integer >= 1 (1 folds nothing)")
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder; source_path is the folder holding "
                                f"{', '.join(JSON_FILES.values())} and eyenet0420/")
    cmap = load_coarse_map(coarse_map)
    table = _listed(root, modality, skip_missing)
    rows, coarse, folds = _labelled(table[table.reason == ""], cmap, min_class_images, out_dir)
    labels = label_map_of(rows, list(cmap) + [OTHER])
    labels.folded = folds

    out_dir.mkdir(parents=True, exist_ok=True)
    left_out = table[table.reason != ""]
    left_out = left_out.assign(image=[relpath(p, out_dir) for p in left_out.path])
    write_csv(left_out[["key", "image", "split", "reason", "keywords"]], out_dir / "excluded.csv")
    path = write_dataset(rows, labels, out_dir)
    _print_summary(table, rows, coarse, folds, modality, min_class_images, out_dir)
    return path


def _counts(values: Iterable[str]) -> str:
    return ", ".join(f"{k} {n}" for k, n in Counter(values).most_common()) or "none"


def _per_split(frame: pd.DataFrame) -> str:
    return ", ".join(f"{s} {(frame.split == s).sum()}" for s in JSON_FILES)


def _print_summary(table: pd.DataFrame, rows: pd.DataFrame, coarse: dict[str, str], folds: dict[str, str],
                   modality: str, min_class_images: int, out_dir: Path) -> None:
    """Every count: images per split, modality, classes, what was left out and why (nothing disappears silently)."""
    kind = table.reason.str.split(r"[:(;]").str[0].str.strip()
    print(f"DeepEyeNet: {len(table)} images listed ({_per_split(table)}) -> {out_dir / 'manifest.csv'}")
    print(f"  modality: {(table.modality == 'colour').sum()} colour fundus photographs, "
          f"{(table.modality != 'colour').sum()} angiograms ({_counts(table.modality[table.modality != 'colour'])}); "
          f"modality={modality!r} " + ("keeps the colour ones only" if modality == "colour" else "keeps both"))
    print(f"  kept {len(rows)} ({_per_split(rows)}); each image is its own patient (the dataset has no patient "
          "ids) and is written eye=left (no laterality)")
    from_kw = (table.disease == "") & (table.fine_disease != "") & (table.reason == "")
    print(f"  {len(coarse)} diseases from the file names; {from_kw.sum()} images without a disease in the file "
          "name took it from their first keyword naming a known disease")
    for what, n in Counter(kind[table.reason != ""]).most_common():
        how = " (modality='colour'; modality='all' keeps them)" if what == "angiogram" else ""
        print(f"  left out {n}: {what}{how}")
    if (table.reason != "").any():
        print(f"  every left-out image is listed, with its reason, in {out_dir / 'excluded.csv'}")
    others = sorted(d for d, c in coarse.items() if c == OTHER)
    print(f"  coarse (T1): {_counts(rows.coarse)}")
    if others:
        print(f"  {len(others)} diseases no pattern of the coarse map matches, so '{OTHER}': {others}")
    print(f"  fine (T2): {rows.fine.nunique()} classes; {len(folds)} diseases with fewer than {min_class_images} "
          f"train images folded into '<coarse>_other' (label_map.json 'folded'): {sorted(folds)}")
