"""The one dataset format: manifest.csv + label_map.json, and the validator that guards it."""
from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from PIL import Image

from ..io import atomic_path, read_json, write_json
from ..progress import progress
from .splits import SPLITS

COLUMNS = ["image_id", "image", "patient_id", "eye", "labeled", "coarse", "fine", "text", "mask"]
REQUIRED = ["image_id", "image", "patient_id", "eye", "labeled"]
# Kept when a manifest has them: `split` (train / val / test: the source's own splits, honoured by data prep) and
# `keywords` (a source's finding keywords, e.g. DeepEyeNet's, for clinical-correctness metrics)
OPTIONAL = ["split", "keywords"]
EYES = ("left", "right")
MIN_LABELED_PATIENTS = 3   # one each for train, validation and test: the least a split can hold
MIN_IMAGE_SIDE = 32   # pixels: a smaller photograph holds too little to show a lesion; warned by name


class ManifestError(ValueError):
    """A manifest that must be fixed before anything is trained; lists every problem at once."""

    def __init__(self, path: Path | str, problems: list[str]):
        self.problems = problems
        shown = "\n  ".join(problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        super().__init__(f"{path}: {len(problems)} problem(s); nothing was trained or dropped. "
                         f"Fix these rows and run again:\n  {shown}{more}")


@dataclass
class LabelMap:
    """The dataset's classes: coarse (T1) names, and fine (T2) names each nested in a coarse one."""

    coarse: list[str]
    fine: list[str]
    fine_parent: dict[str, str] = field(default_factory=dict)
    ordered: list[str] = field(default_factory=list)   # levels ('coarse', 'fine') whose order is a grade scale
    benchmark: str = ""                                 # e.g. 'odir2019': the label set of a challenge (its score)
    folded: dict[str, str] = field(default_factory=dict)  # rare source classes -> the fine class they were folded into

    @classmethod
    def from_pairs(cls, coarse: list[str], fine_pairs: Iterable[tuple[str, str]], **options) -> "LabelMap":
        pairs = list(fine_pairs)
        return cls(list(coarse), [f for f, _ in pairs], dict(pairs), **options)

    @classmethod
    def load(cls, path: str | Path) -> "LabelMap":
        raw = read_json(path)
        try:
            lm = cls.from_pairs(raw["coarse"], [(f["name"], f["coarse"]) for f in raw["fine"]],
                                ordered=list(raw.get("ordered", [])), benchmark=raw.get("benchmark", ""),
                                folded=dict(raw.get("folded", {})))
        except (KeyError, TypeError) as e:
            raise ValueError(f"{path}: a label map needs 'coarse' (list of names) and 'fine' "
                             f"(list of {{'name', 'coarse'}}); missing {e}") from None
        lm.check(path)
        return lm

    def check(self, where: str | Path = "label map") -> None:
        for kind, names in (("coarse", self.coarse), ("fine", self.fine)):
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ValueError(f"{where}: duplicate {kind} class names {dup}")
            variants = [sorted(g) for g in spelling_groups(names).values() if len(g) > 1]
            if variants:
                raise ValueError(f"{where}: {kind} class names {variants} differ only in case or spacing; "
                                 "labels are compared ignoring both, so keep one spelling of each")
        bad = {f: c for f, c in self.fine_parent.items() if c not in self.coarse}
        if bad:
            raise ValueError(f"{where}: fine classes with an unknown coarse parent: {bad}")
        unknown = {k: v for k, v in self.folded.items() if v not in self.fine_parent}
        if unknown:
            raise ValueError(f"{where}: 'folded' names fine classes that are not in 'fine': {unknown}")
        if not set(self.ordered) <= {"coarse", "fine"}:
            raise ValueError(f"{where}: 'ordered' is {self.ordered}; list 'coarse' and/or 'fine' (the levels whose "
                             "class order is a grade scale), or leave it out")

    def save(self, path: str | Path) -> Path:
        return write_json(self.to_dict(), path)

    def to_dict(self) -> dict:
        out = {"coarse": self.coarse, "fine": [{"name": f, "coarse": self.fine_parent[f]} for f in self.fine]}
        # optional keys only when set: label maps without them keep their fingerprint (checkpoints stay valid)
        return {**out, **({"ordered": self.ordered} if self.ordered else {}),
                **({"benchmark": self.benchmark} if self.benchmark else {}),
                **({"folded": self.folded} if self.folded else {})}

    def fine_to_coarse_index(self) -> list[int]:
        """For each fine class index, the index of its coarse parent."""
        return [self.coarse.index(self.fine_parent[f]) for f in self.fine]


def label_key(name: str) -> str:
    """How labels are compared: ignoring case and spacing ('DR', ' dr', 'Dr' are one label)."""
    return " ".join(name.split()).casefold()


def spelling_groups(names: Iterable[str]) -> dict[str, list[str]]:
    """Distinct spellings of each label, by label_key, in order of first appearance."""
    groups: dict[str, list[str]] = {}
    for name in dict.fromkeys(names):
        groups.setdefault(label_key(name), []).append(name)
    return groups


def _spelling_hint(value: str, names: Iterable[str]) -> str:
    """'; the label map writes it 'dr'' when value is a case or spacing variant of a known name, else ''."""
    known = {label_key(n): n for n in names}
    match = known.get(label_key(value)) if value else None
    return f"; the label map writes it {match!r} (labels differ only in case or spacing): use that spelling" \
        if match else ""


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read a manifest as strings, with the optional columns filled in; checks the header only."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no manifest here. Build one with 01_data_prep.ipynb or see data/README.md.")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        problem = f"the file is empty; a manifest has the header {COLUMNS} (data/README.md)"
        raise ManifestError(path, [problem]) from None
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise ManifestError(path, [f"missing column(s) {missing}; the schema is {COLUMNS} (data/README.md)"])
    for col in COLUMNS:
        if col not in df.columns:
            df[col] = ""
    df = df[COLUMNS + [c for c in OPTIONAL if c in df.columns]].apply(lambda s: s.str.strip())
    return df


def write_manifest(df: pd.DataFrame, path: str | Path) -> Path:
    """Write the schema's columns, and the optional ones the rows have (data/README.md)."""
    with atomic_path(path) as tmp:
        df[COLUMNS + [c for c in OPTIONAL if c in df.columns]].to_csv(tmp, index=False)
    return Path(path)


def _image_problem(path: Path) -> str | None:
    """None if the image decodes fully, else what is wrong with it."""
    if not path.is_file():
        return "file not found"
    try:
        with Image.open(path) as im:
            im.load()  # decodes everything: catches truncated files, not just bad headers
    except Exception as e:  # PIL raises many types for corrupt files
        return f"unreadable or truncated image ({type(e).__name__}: {e})"
    return None


def warn_tiny_images(df: pd.DataFrame, root: Path, min_side: int = MIN_IMAGE_SIDE) -> list[str]:
    """Warn, by name, about images smaller than min_side pixels (headers only: cheap); returns their paths."""
    tiny = []
    for rel in df.image[df.image != ""]:
        try:
            with Image.open(root / rel) as im:
                if min(im.size) < min_side:
                    tiny.append(f"{rel} ({im.size[0]}x{im.size[1]})")
        except Exception:  # noqa: BLE001  unreadable images are reported by the row checks
            continue
    if tiny:
        warnings.warn(f"{root}: {len(tiny)} image(s) smaller than {min_side} px on a side, too small to show "
                      f"a lesion; they are upscaled. Check them: {', '.join(tiny[:10])}"
                      + (" ..." if len(tiny) > 10 else ""), stacklevel=2)
    return tiny


def _row_problems(row: pd.Series, labels: LabelMap, root: Path, check_images: bool) -> list[str]:
    out = []
    if row.eye not in EYES:
        out.append(f"eye is {row.eye!r}; write 'left' or 'right'")
    if row.labeled not in ("0", "1"):
        out.append(f"labeled is {row.labeled!r}; write 1 for a labeled row, 0 for the unlabeled pool")
    if not row.image:
        out.append("empty image path")
    elif check_images and (why := _image_problem(root / row.image)):
        out.append(f"{row.image}: {why}")
    if row["mask"] and check_images and (why := _image_problem(root / row["mask"])):
        out.append(f"mask {row['mask']}: {why}")
    if row.labeled == "1":
        if row.coarse not in labels.coarse:
            hint = _spelling_hint(row.coarse, labels.coarse) or f"; known: {labels.coarse}"
            out.append(f"unknown coarse label {row.coarse!r}{hint}")
        if row.fine not in labels.fine_parent:
            hint = _spelling_hint(row.fine, labels.fine) or "; add it to label_map.json or correct the row"
            out.append(f"unknown fine label {row.fine!r}{hint}")
        elif row.coarse in labels.coarse and labels.fine_parent[row.fine] != row.coarse:
            out.append(f"fine label {row.fine!r} belongs under {labels.fine_parent[row.fine]!r}, not {row.coarse!r}")
        if not row.text:
            out.append("empty diagnosis text on a labeled row; write the sentence or set labeled=0")
    elif row.labeled == "0" and (row.coarse or row.fine or row.text):
        out.append("labeled=0 but the row has labels; set labeled=1, or clear coarse/fine/text")
    if "split" in row and row.split not in SPLITS + ("",):
        out.append(f"split is {row.split!r}; write one of {SPLITS} (or leave it empty on an unlabeled row)")
    elif "split" in row and row.labeled == "1" and not row.split:
        out.append(f"empty split on a labeled row; with a split column every labeled row needs one of {SPLITS}")
    return out


def _table_problems(df: pd.DataFrame) -> list[str]:
    out = []
    for col in ("image_id", "image"):
        dup = df[df[col].duplicated(keep=False) & (df[col] != "")]
        for value, rows in dup.groupby(col).groups.items():
            lines = ", ".join(str(i + 2) for i in rows)
            files = sorted(set(df.image[rows]))
            if col == "image_id" and len(files) > 1:   # one id for different files: a naming clash, not a repeat
                out.append(f"lines {lines}: image_id {value!r} names different files {files}; give each its own id")
            else:
                out.append(f"lines {lines}: duplicate {col} {value!r}; each image must appear once")
    # Two photographs of one eye may differ in quality, but not in diagnosis.
    labeled = df[df.labeled == "1"]
    for (pid, eye), g in labeled.groupby(["patient_id", "eye"]):
        if g.coarse.nunique() > 1:
            lines = ", ".join(str(i + 2) for i in g.index)
            out.append(f"lines {lines}: patient {pid!r} {eye} eye has disagreeing coarse labels "
                       f"{sorted(g.coarse.unique())}; correct the labels or the patient id")
    return out


def validate_manifest(path: str | Path, labels: LabelMap, check_images: bool = True) -> pd.DataFrame:
    """Return the manifest if every row is sound; else raise ManifestError listing every bad row."""
    path = Path(path)
    df = read_manifest(path)
    if "split" in df and (df.split == "").all():
        df = df.drop(columns="split")   # an empty split column is no split: 01 splits by seed
    problems = []
    rows = progress(df.iterrows(), "validate", total=len(df)) if len(df) >= 2000 else df.iterrows()
    for i, row in rows:
        problems += [f"line {i + 2} ({row.image_id or 'no id'}): {p}" for p in _row_problems(row, labels, path.parent, check_images)]
    problems += _table_problems(df)
    if not df.empty and (df.patient_id == "").any():
        lines = ", ".join(str(i + 2) for i in df.index[df.patient_id == ""][:20])
        problems.append(f"lines {lines}: empty patient_id; splits are by patient, so every row needs one")
    if df.empty:
        problems.append("the manifest has no rows")
    if problems:
        raise ManifestError(path, problems)
    if check_images:
        warn_tiny_images(df, path.parent)
    df["labeled"] = df.labeled.astype(int)
    return df


def check_trainable(df: pd.DataFrame, path: str | Path) -> None:
    """Refuse, before any split, a manifest too small to train on: unlabeled only, or labeled patients < 3."""
    labeled = df[df.labeled.astype(int) == 1]
    patients = labeled.patient_id.nunique()
    if patients < MIN_LABELED_PATIENTS:
        raise ValueError(
            f"{path}: {len(labeled)} labeled image(s) of {patients} patient(s) beside {len(df) - len(labeled)} "
            f"unlabeled: training needs labeled images (labeled=1 with coarse, fine and text) of at least "
            f"{MIN_LABELED_PATIENTS} patients, one each for train, validation and test, and far more to learn "
            "anything. Add labeled rows (for a CSV: pass coarse_col=), or add these images to a labeled dataset "
            "as its unlabeled pool (data/README.md).")
