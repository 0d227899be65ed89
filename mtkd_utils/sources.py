"""Dataset adapters: ODIR-5K, any CSV of labelled images, or a bare folder -> manifest.csv + label_map.json.

Images are not copied: the manifest points at them with paths relative to the output folder
(they may start with '..'), so keep the output folder and the images where they are.
See data/README.md for each source.
"""
from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath

import pandas as pd

from .io import write_csv
from .manifest import COLUMNS, LabelMap, spelling_groups, validate_manifest, write_manifest
from .metrics import ODIR2019

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
PAPER_COARSE = ["normal", "diabetic_retinopathy", "amd", "glaucoma", "melanoma"]

# ---------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------


def _relpath(path: str | Path, out_dir: Path) -> str:
    """`path` as seen from the manifest's folder, with '/' on every OS."""
    return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(out_dir))).as_posix()


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


def _raise_missing(missing: list[str], source: Path | str) -> None:
    shown = "\n  ".join(missing[:30]) + (f"\n  ... and {len(missing) - 30} more" if len(missing) > 30 else "")
    raise ValueError(f"{source}: {len(missing)} listed image(s) are not on disk; nothing was written:\n  {shown}\n"
                     f"Put the files there, or pass skip_missing=True to leave them out (they are counted).")


def _label_map(rows: pd.DataFrame, coarse_order: list[str] | None = None) -> LabelMap:
    """The classes present in the labeled rows: coarse in `coarse_order` (default sorted), fine grouped under them."""
    lab = rows[rows.labeled == 1]
    pairs = lab[["fine", "coarse"]].drop_duplicates()
    clash = pairs[pairs.fine.duplicated(keep=False)]
    if not clash.empty:
        detail = {f: sorted(g.coarse) for f, g in clash.groupby("fine")}
        raise ValueError(f"fine classes under more than one coarse class: {detail}; "
                         f"a fine class must nest in one coarse class, so rename or correct them")
    present = set(lab.coarse)
    coarse = sorted(present) if coarse_order is None else [c for c in dict.fromkeys(coarse_order) if c in present]
    fine = sorted(pairs.itertuples(index=False), key=lambda p: (coarse.index(p.coarse), p.fine))
    return LabelMap.from_pairs(coarse, [(p.fine, p.coarse) for p in fine])


def _write_dataset(rows: pd.DataFrame, labels: LabelMap, out_dir: Path) -> Path:
    """Write manifest.csv and label_map.json, and check them together (images are checked later: slow)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = write_manifest(rows.reindex(columns=COLUMNS, fill_value=""), out_dir / "manifest.csv")
    labels.save(out_dir / "label_map.json")
    validate_manifest(path, labels, check_images=False)
    return path


def _counts(values: Iterable[str]) -> str:
    return ", ".join(f"{k} {n}" for k, n in Counter(values).most_common()) or "none"


# ---------------------------------------------------------------------------------------------
# ODIR-5K
# ---------------------------------------------------------------------------------------------

ODIR_COLUMNS = ["ID", "Left-Fundus", "Right-Fundus", "Left-Diagnostic Keywords", "Right-Diagnostic Keywords"]

# Keyword (regex, searched in one normalised keyword) -> coarse class, first match wins. None: not a
# class (kept in the text, never labels an eye). The order of first appearance is also the priority
# when an eye has keywords of several classes; 'normal' always comes last (any finding beats it).
ODIR_COARSE_MAP: dict[str, str | None] = {
    r"diabetic retinopathy|proliferative retinopathy": "diabetic_retinopathy",
    r"macular degeneration": "amd",
    r"glaucoma": "glaucoma",
    r"melanoma": "melanoma",
    r"hypertensive": "hypertension",
    r"myopi": "myopia",                      # pathological myopia, myopic retinopathy/maculopathy
    r"cataract": "cataract",
    r"^normal fundus$": "normal",
    r".": "other",                           # ODIR's 'O': every other finding (drusen, laser spot, ...)
}

# Keywords about the photograph, not the eye (after normalisation; see split_keywords): never a label or text.
ODIR_UNUSABLE = ("lens dust", "low image quality", "optic disc photographically invisible", "image offset",
                 "no fundus image", "anterior segment image")
# Of those, the ones saying the photograph is not a usable fundus image: such an eye is always left out.
# The others are quality flags: an eye with other keywords keeps them as its labels (in the V2 sheet 403
# of the 405 lens-dust eyes also carry a diagnosis, 277 of them 'normal fundus').
ODIR_NOT_FUNDUS = ("no fundus image", "anterior segment image")

# Short fine names for the common keywords; others become a slug ('macular epiretinal membrane'
# -> 'macular_epiretinal_membrane') and 'suspected X' becomes '<name of X>_suspected'.
ODIR_FINE_NAMES = {
    "normal fundus": "normal",
    "mild nonproliferative retinopathy": "dr_mild_npdr",
    "moderate nonproliferative retinopathy": "dr_moderate_npdr",
    "severe nonproliferative retinopathy": "dr_severe_npdr",
    "proliferative diabetic retinopathy": "dr_pdr",
    "severe proliferative diabetic retinopathy": "dr_severe_pdr",
    "diabetic retinopathy": "dr_ungraded",
    "suspected diabetic retinopathy": "dr_suspected",
    "dry age-related macular degeneration": "amd_dry",
    "wet age-related macular degeneration": "amd_wet",
    "age-related macular degeneration": "amd_ungraded",
    "pathological myopia": "myopia_pathological",
    "myopic retinopathy": "myopia_retinopathy",
    "myopic maculopathy": "myopia_maculopathy",
}

# Spelling variants found in the ODIR sheet, unified so one finding is one keyword.
_SPELLING = [(r"\bnon proliferative\b", "nonproliferative"), (r"\bsuspicious\b", "suspected"),
             (r"\bmyopia retinopathy\b", "myopic retinopathy"), (r"\boptic disk\b", "optic disc")]


def split_keywords(cell: object) -> list[str]:
    """One eye's keyword cell as normalised keywords: split on ',' and '，', lower case, single spaces, no repeats."""
    out: list[str] = []
    for raw in re.split(r"[,，;；、]", "" if pd.isna(cell) else str(cell)):
        kw = " ".join(raw.lower().split())
        for pattern, repl in _SPELLING:
            kw = re.sub(pattern, repl, kw)
        if kw and kw not in out:
            out.append(kw)
    return out


def odir_fine_name(keyword: str) -> str:
    """The fine class name of one normalised ODIR keyword."""
    if keyword in ODIR_FINE_NAMES:
        return ODIR_FINE_NAMES[keyword]
    if keyword.startswith("suspected "):
        return odir_fine_name(keyword.removeprefix("suspected ")) + "_suspected"
    return re.sub(r"[^a-z0-9]+", "_", keyword).strip("_")


def read_odir_annotations(path: str | Path) -> pd.DataFrame:
    """The ODIR-5K sheet (.xlsx, or a .csv such as Kaggle's full_df.csv) as strings, one row per patient."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no ODIR annotation sheet here "
                                f"(ODIR-5K_Training_Annotations(Updated)_V2.xlsx)")
    if path.suffix.lower() in (".xlsx", ".xls"):
        df = pd.read_excel(path, dtype=str, na_filter=False)
    else:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in ODIR_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: not an ODIR-5K annotation sheet: no column(s) {missing}; "
                         f"its columns are {list(df.columns)}")
    df = df[ODIR_COLUMNS].apply(lambda s: s.str.strip())
    df = df.drop_duplicates()  # Kaggle's full_df.csv repeats each patient once per image
    dup = sorted(set(df.ID[df.ID.duplicated()]))
    if dup:
        raise ValueError(f"{path}: patient ID(s) {dup[:20]} appear in rows with different contents; fix the sheet")
    return df.reset_index(drop=True)


def _keyword_classes(keywords: Iterable[str], coarse_map: Mapping[str, str | None]) -> dict[str, str | None]:
    """Coarse class of every distinct keyword; a keyword no pattern matches is an error (listed)."""
    out, unmatched = {}, []
    for kw in sorted(set(keywords)):
        hit = next((p for p in coarse_map if re.search(p, kw)), None)
        if hit is None:
            unmatched.append(kw)
        else:
            out[kw] = coarse_map[hit]
    if unmatched:
        raise ValueError(f"ODIR keywords that no coarse_map pattern matches: {unmatched}. Add patterns for "
                         f"them (map to None to ignore a finding, or end with {{'.': 'other'}} as the default does)")
    return out


def _priority(coarse_map: Mapping[str, str | None]) -> list[str]:
    """Classes in order of first appearance in coarse_map, with 'normal' last."""
    order = list(dict.fromkeys(c for c in coarse_map.values() if c is not None))
    return [c for c in order if c != "normal"] + (["normal"] if "normal" in order else [])


def _odir_eyes(sheet: pd.DataFrame) -> pd.DataFrame:
    """One row per listed image: patient, eye, file name, keyword cell."""
    sides = []
    for eye, side in (("left", "Left"), ("right", "Right")):
        sides.append(pd.DataFrame({"ID": sheet.ID, "order": sheet.index * 2 + (eye == "right"), "eye": eye,
                                   "file": sheet[f"{side}-Fundus"], "cell": sheet[f"{side}-Diagnostic Keywords"]}))
    eyes = pd.concat(sides).sort_values("order", ignore_index=True)
    eyes["patient_id"] = "odir_" + eyes.ID
    eyes["image_id"] = eyes.patient_id + "_" + eyes.eye
    eyes["keywords"] = eyes.cell.map(split_keywords)
    return eyes


def _quality_reason(quality: list[str], findings: list[str], not_fundus: set[str], drop_quality_flags: bool) -> str:
    """Why an eye with quality keywords is left out ('' when it is kept, labeled by its other keywords)."""
    blocked = [k for k in quality if k in not_fundus]
    if blocked:
        return "not a fundus image: " + ", ".join(blocked)
    if drop_quality_flags:
        return "unusable: " + ", ".join(quality)
    return "" if findings else "quality flags only: " + ", ".join(quality)


def _label_eye(keywords: list[str], classes: Mapping[str, str | None], priority: list[str],
               unusable: set[str], keep_unusable: bool, not_fundus: set[str] = frozenset(),
               drop_quality_flags: bool = False) -> dict:
    """coarse, fine, findings, quality flags and why the eye is left out ('' when kept) for one eye's keywords."""
    quality = [k for k in keywords if k in unusable]
    findings = [k for k in keywords if k not in unusable]
    labelling = [k for k in findings if classes[k] is not None]
    reason = _quality_reason(quality, findings, not_fundus, drop_quality_flags) if quality and not keep_unusable else ""
    if reason:
        return {"coarse": "", "fine": "", "findings": findings, "quality": quality, "reason": reason}
    out = _label_findings(findings, labelling, classes, priority)
    return {**out, "quality": quality}


def _label_findings(findings: list[str], labelling: list[str], classes: Mapping[str, str | None],
                    priority: list[str]) -> dict:
    """coarse and fine from the keyword of the highest-priority class; '' when no finding names a class."""
    if findings and not labelling:
        return {"coarse": "", "fine": "", "findings": findings, "reason": "no coarse class: " + ", ".join(findings)}
    if not labelling:  # empty cell, or only a quality keyword kept: an image without a diagnosis
        return {"coarse": "", "fine": "", "findings": [], "reason": ""}
    primary = min(labelling, key=lambda k: priority.index(classes[k]))  # ties: first in the cell
    return {"coarse": classes[primary], "fine": odir_fine_name(primary), "findings": findings, "reason": ""}


def _index_images(image_dir: Path) -> dict[str, Path]:
    """Image files of a folder by lower-case stem, so '0_left.jpg' also finds '0_left.jpeg' or '0_LEFT.JPG'."""
    if not image_dir.is_dir():
        raise FileNotFoundError(f"{image_dir}: no image folder here (ODIR-5K_Training_Dataset/ holds 0_left.jpg, ...)")
    return {p.stem.lower(): p for p in sorted(image_dir.iterdir())
            if p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".")}


def _merge_rare_fine(rows: pd.DataFrame, min_count: int) -> dict[str, str]:
    """Rename fine classes with fewer than `min_count` labeled images to '<coarse>_other'; returns the renames."""
    lab = rows.labeled == 1
    counts = rows[lab].groupby(["coarse", "fine"]).size()
    renames = {fine: f"{coarse}_other" for (coarse, fine), n in counts.items() if n < min_count}
    rows.loc[lab, "fine"] = rows.loc[lab, "fine"].replace(renames)
    return renames


def from_odir(annotations_xlsx: str | Path, image_dir: str | Path, out_dir: str | Path, *,
              coarse_map: Mapping[str, str | None] | None = None, keep_unusable: bool = False,
              drop_quality_flags: bool = False, skip_missing: bool = False, min_fine_count: int = 1,
              unusable: Iterable[str] = ODIR_UNUSABLE, not_fundus: Iterable[str] = ODIR_NOT_FUNDUS) -> Path:
    """ODIR-5K sheet + image folder -> out_dir/manifest.csv (returned), label_map.json and excluded.csv.

    Eyes with quality flags (lens dust, ...) are kept, labeled by their other keywords; left out are eyes
    with only quality flags and photographs that are not fundus images (`not_fundus`).
    drop_quality_flags=True leaves out every flagged eye; keep_unusable=True keeps every eye.
    """
    sheet_path, image_dir, out_dir = Path(annotations_xlsx), Path(image_dir), Path(out_dir)
    default_map = coarse_map is None
    coarse_map = ODIR_COARSE_MAP if coarse_map is None else dict(coarse_map)
    unusable = {kw for u in unusable for kw in split_keywords(u)}
    not_fundus = {kw for u in not_fundus for kw in split_keywords(u)}
    eyes = _odir_eyes(read_odir_annotations(sheet_path))
    classes = _keyword_classes((k for kws in eyes.keywords for k in kws if k not in unusable), coarse_map)
    priority = _priority(coarse_map)
    labels = [_label_eye(kws, classes, priority, unusable, keep_unusable, not_fundus, drop_quality_flags)
              for kws in eyes.keywords]
    eyes = pd.concat([eyes, pd.DataFrame(labels)], axis=1)

    index = _index_images(image_dir)
    eyes["path"] = [index.get(Path(f).stem.lower()) if f else None for f in eyes.file]
    eyes["image"] = [_relpath(p if p is not None else image_dir / f, out_dir) for p, f in zip(eyes.path, eyes.file)]
    kept = eyes.reason == ""
    missing = kept & eyes.path.isna()
    if missing.any() and not skip_missing:
        _raise_missing([f"patient ID {r.ID} {r.eye} eye: {image_dir / (r.file or '(no file name in the sheet)')}"
                        for r in eyes[missing].itertuples()], sheet_path)
    eyes.loc[missing, "reason"] = "missing on disk"

    eyes["labeled"] = (eyes.coarse != "").astype(int)
    eyes["text"] = [f"{e} eye: {', '.join(f)}" if c else "" for e, f, c in zip(eyes.eye, eyes.findings, eyes.coarse)]
    rows = eyes[eyes.reason == ""].reset_index(drop=True)
    renames = _merge_rare_fine(rows, min_fine_count)
    label_map = _label_map(rows, PAPER_COARSE + priority)
    if default_map:   # the challenge's classes (N, D, G, C, A, H, M, O): metrics adds its score
        label_map.benchmark = ODIR2019

    out_dir.mkdir(parents=True, exist_ok=True)
    left_out = eyes[eyes.reason != ""].assign(keywords=lambda d: d.cell)
    write_csv(left_out[["image_id", "image", "patient_id", "eye", "reason", "keywords"]], out_dir / "excluded.csv")
    path = _write_dataset(rows, label_map, out_dir)
    _print_odir_summary(eyes, rows, renames, keep_unusable, out_dir)
    return path


_LEFT_OUT = {  # reason kind -> how the summary names it and what keeps those images
    "unusable": ("images with quality flags (drop_quality_flags=True)", "drop_quality_flags=False keeps those "
                 "with a diagnosis"),
    "quality flags only": ("images whose keywords are only quality flags", "keep_unusable=True keeps them "
                           "in the unlabeled pool"),
    "not a fundus image": ("photographs that are not fundus images", "keep_unusable=True keeps them"),
}


def _print_odir_summary(eyes: pd.DataFrame, rows: pd.DataFrame, renames: dict[str, str],
                        keep_unusable: bool, out_dir: Path) -> None:
    """What was kept, what was left out and why: nothing disappears without a line here."""
    kind = eyes.reason.str.split(":").str[0]
    lab = rows[rows.labeled == 1]
    print(f"ODIR-5K: {eyes.ID.nunique()} patients, {len(eyes)} images listed -> {out_dir / 'manifest.csv'}")
    print(f"  kept {len(rows)}: {len(lab)} labeled, {len(rows) - len(lab)} without a diagnosis (unlabeled pool)")
    flagged = rows[rows.quality.map(len) > 0]
    if len(flagged):
        print(f"  kept {len(flagged)} images with quality flags ({_counts(k for q in flagged.quality for k in q)}), "
              "labeled by their other keywords; the flags are in no label or text")
    for reason, (what, how) in _LEFT_OUT.items():
        if (kind == reason).any():
            words = [k.strip() for r in eyes.reason[kind == reason] for k in r.split(":", 1)[1].split(",")]
            print(f"  left out {(kind == reason).sum()} {what} ({_counts(words)}); {how}")
    if (kind == "no coarse class").any():
        print(f"  left out {(kind == 'no coarse class').sum()} images whose findings all map to None in coarse_map")
    if (kind == "missing on disk").any():
        print(f"  left out {(kind == 'missing on disk').sum()} images missing on disk (skip_missing=True)")
    if (kind != "").any():
        print(f"  every left-out image is listed in {out_dir / 'excluded.csv'}")
    if renames:
        print(f"  merged {len(renames)} rare fine classes into <coarse>_other: {sorted(renames)}")
    print(f"  coarse: {_counts(lab.coarse)}")
    print(f"  {lab.fine.nunique()} fine classes")


def _find_odir_sheet(root: Path) -> Path:
    """The ODIR annotation sheet under root; with several, the one listing the most patients."""
    found = []
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() in (".xlsx", ".xls", ".csv") and not p.name.startswith((".", "~$")):
            try:
                found.append((read_odir_annotations(p).ID.nunique(), p))
            except (ValueError, OSError):
                continue  # another table: not ours
    if not found:
        raise FileNotFoundError(f"{root}: no ODIR annotation sheet (.xlsx/.csv with columns {ODIR_COLUMNS}) "
                                f"in this folder or below; pass annotations=<path to the sheet>")
    return max(found, key=lambda t: t[0])[1]


def _find_image_dir(root: Path, files: Iterable[str]) -> Path:
    """The folder under root holding the most of the sheet's images (by name, any image extension)."""
    wanted = {Path(f).stem.lower() for f in files if f}
    best, best_n = None, 0
    for folder, _, names in sorted(os.walk(root)):
        n = sum(Path(f).stem.lower() in wanted and Path(f).suffix.lower() in IMAGE_EXTS for f in names)
        if n > best_n:
            best, best_n = Path(folder), n
    if best is None:
        raise FileNotFoundError(f"{root}: no folder in or below it holds the sheet's images (0_left.jpg, ...); "
                                f"pass image_dir=<folder of the training images>")
    return best


def from_odir_folder(root: str | Path, out_dir: str | Path, *, annotations: str | Path | None = None,
                     image_dir: str | Path | None = None, **kw) -> Path:
    """from_odir on a downloaded ODIR-5K folder: finds the annotation sheet and the training-image folder in it."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder; source_path must be the folder holding the ODIR-5K download")
    sheet = Path(annotations) if annotations else _find_odir_sheet(root)
    if image_dir is None:
        table = read_odir_annotations(sheet)
        image_dir = _find_image_dir(root, pd.concat([table["Left-Fundus"], table["Right-Fundus"]]))
    print(f"ODIR-5K: sheet {sheet}, images {image_dir}")
    return from_odir(sheet, image_dir, out_dir, **kw)


# ---------------------------------------------------------------------------------------------
# Any CSV, any folder
# ---------------------------------------------------------------------------------------------

_EYE_VALUES = {"left": "left", "l": "left", "os": "left", "right": "right", "r": "right", "od": "right"}


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
             skip_missing: bool = False) -> Path:
    """A CSV of image paths and (optional) labels -> out_dir/manifest.csv (returned) and label_map.json."""
    csv_path, out_dir = Path(csv_path), Path(out_dir)
    if coarse_col is None and (fine_col or text_col):
        raise ValueError(f"{csv_path}: fine_col/text_col need coarse_col too: a labeled image needs its coarse (T1) "
                         f"class; pass coarse_col=<column>, or leave all three out for an unlabeled pool")
    t = _read_table(csv_path, {"image_col": image_col, "coarse_col": coarse_col, "fine_col": fine_col,
                               "text_col": text_col, "patient_col": patient_col, "eye_col": eye_col})
    col = lambda name: t[name] if name else pd.Series("", index=t.index)  # noqa: E731  (absent column: empty)
    coarse, fine, text = col(coarse_col), col(fine_col), col(text_col)
    coarse, fine = _one_spelling(coarse, "coarse", csv_path), _one_spelling(fine, "fine", csv_path)
    eyes = [_EYE_VALUES.get(e.lower()) if eye_col else _eye_from_name(p) for e, p in zip(col(eye_col), t[image_col])]
    problems = _csv_problems(t, image_col, coarse, fine, text, eye_col, eyes)
    if problems:
        raise ValueError(f"{csv_path}: {len(problems)} row problem(s); nothing was written:\n  "
                         + "\n  ".join(problems[:30]))

    root = Path(image_root) if image_root is not None else csv_path.parent
    paths = [root / p for p in t[image_col]]
    missing = _missing_files((f"line {i + 2}", p) for i, p in zip(t.index, paths))
    if missing and not skip_missing:
        _raise_missing(missing, csv_path)
    fine = fine.where(fine != "", coarse)  # no fine label: the coarse class nested in itself
    generated = pd.Series([_label_text(c, f) for c, f in zip(coarse, fine)], index=t.index)
    rows = pd.DataFrame({
        "image_id": _unique_ids([_relpath(p, root) for p in paths]),
        "image": [_relpath(p, out_dir) for p in paths],
        "patient_id": col(patient_col),
        "eye": _fill_eyes(eyes, str(csv_path)),
        "labeled": (coarse != "").astype(int),
        "coarse": coarse, "fine": fine,
        "text": text.mask((text == "") & (coarse != ""), generated),
    })
    if not patient_col:
        rows["patient_id"] = rows.image_id
        print(f"WARNING {csv_path}: no patient column, so each image is its own patient; two eyes of one person "
              f"can land in different splits (leakage). Pass patient_col= if the CSV has one.")
    if missing:
        rows = rows[[p.is_file() for p in paths]].reset_index(drop=True)
        print(f"  left out {len(missing)} images missing on disk (skip_missing=True), e.g. {missing[0]}")
    path = _write_dataset(rows, _label_map(rows), out_dir)
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
    rows = pd.DataFrame({"image_id": ids, "image": [_relpath(p, out_dir) for p in files], "patient_id": ids,
                         "eye": _fill_eyes([_eye_from_name(p.name) for p in files], str(image_dir)), "labeled": 0})
    if isinstance(label_map, LabelMap):
        labels = label_map
    else:
        labels = LabelMap.load(label_map) if label_map is not None else LabelMap([], [], {})
    path = _write_dataset(rows, labels, out_dir)
    print(f"{image_dir}: {len(rows)} images as an unlabeled pool (each its own patient) -> {path}"
          + ("" if label_map is not None else "; label map has no classes: use it as extra unlabeled data"))
    return path

