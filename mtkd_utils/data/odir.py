"""The ODIR-5K adapter: the annotation sheet and its image folder -> manifest.csv, label_map.json, excluded.csv.

Each eye is one image; its keywords give its coarse and fine class (ODIR_COARSE_MAP, ODIR_FINE_NAMES) and its
sentence. See data/README.md for the download and every choice made here.
"""
from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd

from ..io import write_csv
from .dataset_writer import IMAGE_EXTS, label_map_of, raise_missing, relpath, write_dataset

ODIR2019 = "odir2019"      # LabelMap.benchmark of this adapter's label set (metrics add the ODIR-2019 score)

PAPER_COARSE = ["normal", "diabetic_retinopathy", "amd", "glaucoma", "melanoma"]   # first in the label map
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
    eyes["image"] = [relpath(p if p is not None else image_dir / f, out_dir) for p, f in zip(eyes.path, eyes.file)]
    kept = eyes.reason == ""
    missing = kept & eyes.path.isna()
    if missing.any() and not skip_missing:
        raise_missing([f"patient ID {r.ID} {r.eye} eye: {image_dir / (r.file or '(no file name in the sheet)')}"
                        for r in eyes[missing].itertuples()], sheet_path)
    eyes.loc[missing, "reason"] = "missing on disk"

    eyes["labeled"] = (eyes.coarse != "").astype(int)
    eyes["text"] = [f"{e} eye: {', '.join(f)}" if c else "" for e, f, c in zip(eyes.eye, eyes.findings, eyes.coarse)]
    rows = eyes[eyes.reason == ""].reset_index(drop=True)
    renames = _merge_rare_fine(rows, min_fine_count)
    label_map = label_map_of(rows, PAPER_COARSE + priority)
    if default_map:   # the challenge's classes (N, D, G, C, A, H, M, O): metrics adds its score
        label_map.benchmark = ODIR2019

    out_dir.mkdir(parents=True, exist_ok=True)
    left_out = eyes[eyes.reason != ""].assign(keywords=lambda d: d.cell)
    write_csv(left_out[["image_id", "image", "patient_id", "eye", "reason", "keywords"]], out_dir / "excluded.csv")
    path = write_dataset(rows, label_map, out_dir)
    _print_odir_summary(eyes, rows, renames, keep_unusable, out_dir)
    return path


def _counts(values: Iterable[str]) -> str:
    return ", ".join(f"{k} {n}" for k, n in Counter(values).most_common()) or "none"


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
