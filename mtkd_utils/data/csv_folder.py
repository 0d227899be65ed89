"""Adapters for any CSV of labelled images, or a bare folder of images -> manifest.csv + label_map.json.

See data/README.md for each source.
"""
from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

import pandas as pd

from .dataset_writer import IMAGE_EXTS, label_map_of, raise_missing, relpath, write_dataset
from .manifest import LabelMap, spelling_groups

_EYE_VALUES = {"left": "left", "l": "left", "os": "left", "right": "right", "r": "right", "od": "right"}
# A split column's spellings -> the manifest's (a source's own train / val / test, kept by data prep)
_SPLIT_VALUES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                 "dev": "val", "test": "test", "testing": "test"}


def _image_id(rel: str) -> str:
    """A file-name-safe id from an image path: 'a/b/0_left.jpg' -> 'a_b_0_left'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(PurePosixPath(rel).with_suffix(""))).strip("._")


def _unique_ids(rels: list[str]) -> list[str]:
    """_image_id of each path; where two different paths give one id ('a b.jpg', 'a_b.jpg'; 'é.jpg', 'ü.jpg')
    or none, a short hash of the path is added to it: ids are unique by construction, readable otherwise."""
    ids = [_image_id(r) for r in rels]
    paths_of: dict[str, set[str]] = {}
    for i, r in zip(ids, rels):
        paths_of.setdefault(i, set()).add(r)
    return [f"{i}-{hashlib.sha1(r.encode()).hexdigest()[:8]}".lstrip("-") if len(paths_of[i]) > 1 or not i else i
            for i, r in zip(ids, rels)]


def _eye_from_name(path: str) -> str | None:
    """'left'/'right' when the file name says so ('12_left.jpeg', 'p3-OD.png'), else None."""
    words = set(re.split(r"[^a-z]+", PurePosixPath(path).stem.lower()))
    eyes = {"left" if w in ("left", "os") else "right" for w in words if w in ("left", "os", "right", "od")}
    return eyes.pop() if len(eyes) == 1 else None


def _fill_eyes(eyes: list[str | None], where: str) -> list[str]:
    """Unknown eyes become 'left' (the schema has no 'unknown'), with a warning saying how many."""
    unknown = sum(e is None for e in eyes)
    if unknown:
        print(f"WARNING {where}: {unknown} of {len(eyes)} images have no eye (no eye column, no left/right/OD/OS "
              f"in the file name); written as eye=left. Pass eye_col= if the eye is known.")
    return [e or "left" for e in eyes]


def _missing_files(paths: Iterable[tuple[str, Path]]) -> list[str]:
    """The '<where>: <path>' of every listed image that is not a file."""
    return [f"{where}: {p}" for where, p in paths if not p.is_file()]


def _words(label: str) -> str:
    return label.replace("_", " ").strip()


def _label_text(coarse: str, fine: str) -> str:
    """A plain diagnosis sentence when the CSV has no text column."""
    return _words(coarse) if fine == coarse else f"{_words(coarse)}: {_words(fine)}"


def _read_table(csv_path: Path, roles: dict[str, str | None]) -> pd.DataFrame:
    """The CSV as stripped strings; every column named in `roles` must exist."""
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{csv_path}: the file is empty; a CSV needs a header row and one row per image") from None
    if table.empty:
        raise ValueError(f"{csv_path}: a header but no rows; add one row per image")
    table.columns = [c.strip() for c in table.columns]
    for role, col in roles.items():
        if col is not None and col not in table.columns:
            raise ValueError(f"{csv_path}: no column {col!r} (passed as {role}); "
                             f"the CSV's columns are {list(table.columns)}")
    return table.apply(lambda s: s.str.strip())


def _one_spelling(labels: pd.Series, kind: str, where: Path) -> pd.Series:
    """Case or spacing variants of a label ('DR', 'dr ') become its commonest spelling, with a note."""
    ranked = [name for name, _ in Counter(labels[labels != ""]).most_common()]
    rename = {}
    for variants in spelling_groups(ranked).values():
        rename.update({v: variants[0] for v in variants[1:]})
        if len(variants) > 1:
            print(f"NOTE {where}: {kind} labels {variants} differ only in case or spacing: "
                  f"all written {variants[0]!r} (the commonest)")
    return labels.replace(rename)


def _csv_problems(t: pd.DataFrame, image_col: str, coarse: pd.Series, fine: pd.Series, text: pd.Series,
                  eye_col: str | None, eyes: list[str | None]) -> list[str]:
    """Rows the manifest cannot hold: no image path, labels without a coarse class, an unreadable eye."""
    out = [f"line {i + 2}: empty {image_col!r}" for i in t.index[t[image_col] == ""]]
    stray = (coarse == "") & ((fine != "") | (text != ""))
    out += [f"line {i + 2}: a fine or text label but no coarse label" for i in t.index[stray]]
    if eye_col:
        out += [f"line {i + 2}: {eye_col!r} is {t.at[i, eye_col]!r}; write left/right (or L/R, OS/OD)"
                for i, e in zip(t.index, eyes) if e is None]
    return out


def from_csv(csv_path: str | Path, out_dir: str | Path, *, image_col: str = "image",
             coarse_col: str | None = None, fine_col: str | None = None, text_col: str | None = None,
             patient_col: str | None = None, eye_col: str | None = None, image_root: str | Path | None = None,
             skip_missing: bool = False, split_col: str | None = None) -> Path:
    """A CSV of image paths and (optional) labels -> out_dir/manifest.csv (returned) and label_map.json.

    split_col: the CSV's own train/val/test split (kept by data prep; empty allowed on unlabeled rows)."""
    csv_path, out_dir = Path(csv_path), Path(out_dir)
    if coarse_col is None and (fine_col or text_col):
        raise ValueError(f"{csv_path}: fine_col/text_col need coarse_col too: a labeled image needs its coarse (T1) "
                         f"class; pass coarse_col=<column>, or leave all three out for an unlabeled pool")
    t = _read_table(csv_path, {"image_col": image_col, "coarse_col": coarse_col, "fine_col": fine_col,
                               "text_col": text_col, "patient_col": patient_col, "eye_col": eye_col,
                               "split_col": split_col})
    col = lambda name: t[name] if name else pd.Series("", index=t.index)  # noqa: E731  (absent column: empty)
    coarse, fine, text = col(coarse_col), col(fine_col), col(text_col)
    coarse, fine = _one_spelling(coarse, "coarse", csv_path), _one_spelling(fine, "fine", csv_path)
    eyes = [_EYE_VALUES.get(e.lower()) if eye_col else _eye_from_name(p) for e, p in zip(col(eye_col), t[image_col])]
    problems = _csv_problems(t, image_col, coarse, fine, text, eye_col, eyes)
    split = col(split_col).str.lower().map(lambda v: _SPLIT_VALUES.get(v, "" if v == "" else None))
    problems += [f"line {i + 2}: {split_col!r} is {t.at[i, split_col]!r}; write train, val or test"
                 for i in t.index[split.isna()]]
    if problems:
        raise ValueError(f"{csv_path}: {len(problems)} row problem(s); nothing was written:\n  "
                         + "\n  ".join(problems[:30]))

    root = Path(image_root) if image_root is not None else csv_path.parent
    paths = [root / p for p in t[image_col]]
    missing = _missing_files((f"line {i + 2}", p) for i, p in zip(t.index, paths))
    if missing and not skip_missing:
        raise_missing(missing, csv_path)
    fine = fine.where(fine != "", coarse)  # no fine label: the coarse class nested in itself
    generated = pd.Series([_label_text(c, f) for c, f in zip(coarse, fine)], index=t.index)
    rows = pd.DataFrame({
        "image_id": _unique_ids([relpath(p, root) for p in paths]),
        "image": [relpath(p, out_dir) for p in paths],
        "patient_id": col(patient_col),
        "eye": _fill_eyes(eyes, str(csv_path)),
        "labeled": (coarse != "").astype(int),
        "coarse": coarse, "fine": fine,
        "text": text.mask((text == "") & (coarse != ""), generated),
    })
    if split_col:
        rows["split"] = split.to_numpy()
    if not patient_col:
        rows["patient_id"] = rows.image_id
        print(f"WARNING {csv_path}: no patient column, so each image is its own patient; two eyes of one person "
              f"can land in different splits (leakage). Pass patient_col= if the CSV has one.")
    if missing:
        rows = rows[[p.is_file() for p in paths]].reset_index(drop=True)
        print(f"  left out {len(missing)} images missing on disk (skip_missing=True), e.g. {missing[0]}")
    path = write_dataset(rows, label_map_of(rows), out_dir)
    print(f"{csv_path}: {len(rows)} images ({rows.labeled.sum()} labeled) -> {path}")
    return path


def from_folder(image_dir: str | Path, out_dir: str | Path, *, label_map: str | Path | LabelMap | None = None) -> Path:
    """Every image under a folder (recursive, sorted) as an unlabeled pool -> out_dir/manifest.csv (returned)."""
    image_dir, out_dir = Path(image_dir), Path(out_dir)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"{image_dir}: not a folder of images")
    files = sorted((p for p in image_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS
                    and not any(part.startswith(".") for part in p.relative_to(image_dir).parts)),
                   key=lambda p: p.relative_to(image_dir).as_posix())  # dot-files: macOS '._x.jpg' are not images
    if not files:
        raise ValueError(f"{image_dir}: no images ({', '.join(IMAGE_EXTS)}) in this folder or below")
    ids = _unique_ids([p.relative_to(image_dir).as_posix() for p in files])
    rows = pd.DataFrame({"image_id": ids, "image": [relpath(p, out_dir) for p in files], "patient_id": ids,
                         "eye": _fill_eyes([_eye_from_name(p.name) for p in files], str(image_dir)), "labeled": 0})
    if isinstance(label_map, LabelMap):
        labels = label_map
    else:
        labels = LabelMap.load(label_map) if label_map is not None else LabelMap([], [], {})
    path = write_dataset(rows, labels, out_dir)
    print(f"{image_dir}: {len(rows)} images as an unlabeled pool (each its own patient) -> {path}"
          + ("" if label_map is not None else "; label map has no classes: use it as extra unlabeled data"))
    return path
