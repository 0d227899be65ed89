"""Everything a training run reads: the image cache, labels as tensors, the rows of each role, batches."""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from .. import runs
from ..io import DamagedFileError, checksum_path, read_json, verify_file, write_json, write_npy
from ..progress import progress
from .manifest import LabelMap, read_manifest
from .splits import load_splits, select_fraction
from .text import PAD_ID, Vocab


# ---------------------------------------------------------------- image cache
def _cache_key(manifest: pd.DataFrame, root: Path, size: int, crop_fov: bool) -> str:
    """Changes when any source image, the resolution or the crop changes: then the cache is rebuilt."""
    h = hashlib.sha1(f"{size}|{crop_fov}".encode())
    for rel in manifest.image:
        st = (root / rel).stat()
        h.update(f"{rel}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def build_image_cache(manifest_path: str | Path, cache_dir: str | Path, size: int, crop_fov: bool = True) -> np.ndarray:
    """Every manifest image, prepared once (FOV crop, resize) as uint8 (N, size, size, 3), memory-mapped."""
    from .fundus import prepare_image

    manifest_path, cache_dir = Path(manifest_path), Path(cache_dir)
    manifest = read_manifest(manifest_path)
    key = _cache_key(manifest, manifest_path.parent, size, crop_fov)
    arr_path, meta_path = cache_dir / f"images_{size}.npy", cache_dir / f"images_{size}.json"
    if meta_path.exists() and arr_path.exists() and read_json(meta_path).get("key") == key and _cache_intact(arr_path):
        return np.load(arr_path, mmap_mode="r")
    images = np.zeros((len(manifest), size, size, 3), dtype=np.uint8)
    for i, rel in enumerate(progress(manifest.image, f"image cache {size}px")):
        images[i] = prepare_image(manifest_path.parent / rel, size, crop_fov=crop_fov)
    write_npy(images, arr_path, checksum=True)
    write_json({"key": key, "size": size, "crop_fov": crop_fov, "image_ids": manifest.image_id.tolist()}, meta_path)
    return np.load(arr_path, mmap_mode="r")


def _cache_intact(arr_path: Path) -> bool:
    """Whether the cache is the one written (checksum; hashed once per load); if not, say so: it is rebuilt,
    as is a cache from before checksums (once)."""
    try:
        verify_file(arr_path)
    except DamagedFileError as err:
        print(f"WARNING {arr_path}: {err.problem}; rebuilding it from the source images")
        return False
    return checksum_path(arr_path).is_file()


def load_mask(manifest_path: str | Path, image_rel: str, mask_rel: str, size: int,
              crop_fov: bool = True) -> np.ndarray | None:
    """A lesion mask as bool (size, size), cropped exactly like its image; None when the row has none."""
    from .fundus import fov_bbox, pad_square, read_rgb8

    if not mask_rel:
        return None
    root = Path(manifest_path).parent
    img = read_rgb8(root / image_rel)
    with Image.open(root / mask_rel) as im:
        mask = np.asarray(im.convert("L"))
    top, bottom, left, right = fov_bbox(img) if crop_fov else (0, img.shape[0], 0, img.shape[1])
    square = pad_square(mask[top:bottom, left:right])
    return np.asarray(Image.fromarray(square).resize((size, size), Image.Resampling.NEAREST)) > 127


def load_samples(manifest_path: str | Path, rows: pd.DataFrame, size: int) -> tuple[np.ndarray, list]:
    """Prepared images (N, size, size, 3) and lesion masks (or None) of some manifest rows, for figures."""
    from .fundus import prepare_image
    root = Path(manifest_path).parent
    images = [prepare_image(root / r.image, size) for r in rows.itertuples()]
    masks = [load_mask(manifest_path, r.image, r.mask, size) for r in rows.itertuples()]
    return (np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)), masks


# ---------------------------------------------------------------- one experiment's data
@dataclass
class FundusData:
    """The cached images of one experiment with its labels, splits and vocabulary for fraction p."""

    images: np.ndarray            # (N, H, W, 3) uint8, manifest order
    manifest: pd.DataFrame
    roles: pd.DataFrame           # splits with a `role` column for this p
    labels: LabelMap
    vocab: Vocab
    targets: dict[str, torch.Tensor]  # T1 (N,), T2 (N,) with -1 when unknown; T3 (N, L) token ids
    p: float

    def rows(self, role: str) -> np.ndarray:
        """Cache rows of a role: train, val, test, unlabeled."""
        return np.flatnonzero(self.roles.role.to_numpy() == role)

    def is_labeled_train(self, rows: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.roles.role.to_numpy()[rows] == "train")


def label_targets(manifest: pd.DataFrame, labels: LabelMap, vocab: Vocab, max_len: int) -> dict[str, torch.Tensor]:
    """Index targets for every row; unlabeled rows get -1 (T1/T2) and <pad> (T3)."""
    lab = manifest.labeled.astype(int).to_numpy() == 1
    coarse = {c: i for i, c in enumerate(labels.coarse)}
    fine = {f: i for i, f in enumerate(labels.fine)}
    t1 = np.where(lab, manifest.coarse.map(coarse).fillna(-1), -1).astype(np.int64)
    t2 = np.where(lab, manifest.fine.map(fine).fillna(-1), -1).astype(np.int64)
    t3 = np.full((len(manifest), max_len), PAD_ID, dtype=np.int64)
    for i in np.flatnonzero(lab):
        t3[i] = vocab.encode(manifest.text.iat[i], max_len)
    return {"T1": torch.from_numpy(t1), "T2": torch.from_numpy(t2), "T3": torch.from_numpy(t3)}


def vocab_for(data_dir: Path, roles: pd.DataFrame, manifest: pd.DataFrame, p: float, min_freq: int) -> Vocab:
    """The T3 vocabulary of fraction p, from its labeled training texts only; built once, then read."""
    path = data_dir / f"vocab_p{p:g}.json"
    if path.exists():
        return Vocab.load(path)
    vocab = Vocab.build(manifest.text[roles.role.to_numpy() == "train"], min_freq=min_freq)
    vocab.save(path)
    return vocab


def load_data(experiment_dir: str | Path, p: float, cfg) -> FundusData:
    """Read what 01_data_prep wrote and select fraction p (checks leakage on the way)."""
    data_dir = runs.data_dir(experiment_dir)
    if not (data_dir / "dataset.json").exists():
        raise FileNotFoundError(f"{data_dir}/dataset.json missing: run notebooks/01_data_prep.ipynb for this "
                                "experiment first")
    info = read_json(data_dir / "dataset.json")
    manifest_path = runs.manifest_location(experiment_dir, info)
    manifest = read_manifest(manifest_path)
    manifest["labeled"] = manifest.labeled.astype(int)
    splits = load_splits(data_dir / "splits.csv")
    if splits.image_id.tolist() != manifest.image_id.tolist():
        raise ValueError(f"{data_dir}/splits.csv does not match {manifest_path}: the manifest changed "
                         "after data prep. Re-run 01_data_prep.ipynb into a new experiment folder.")
    roles = select_fraction(splits, p)
    labels = LabelMap.load(data_dir / "label_map.json")
    vocab = vocab_for(data_dir, roles, manifest, p, cfg.min_word_freq)
    images = build_image_cache(manifest_path, data_dir / "cache", cfg.image_size, info.get("crop_fov", True))
    return FundusData(images, manifest, roles, labels, vocab, label_targets(manifest, labels, vocab, cfg.max_len), p)


# ---------------------------------------------------------------- batches
def batch_rows(rows: np.ndarray, batch_size: int, shuffle: bool, generator: torch.Generator | None = None):
    """Yield arrays of rows; shuffled with the given generator (so batch order is seeded)."""
    order = rows[torch.randperm(len(rows), generator=generator).numpy()] if shuffle else rows
    for i in range(0, len(order), batch_size):
        yield order[i : i + batch_size]


def image_batch(images: np.ndarray, rows: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (B, H, W, 3) rows -> float (B, 3, H, W) in [0, 1] on device."""
    x = torch.from_numpy(np.ascontiguousarray(images[rows]))
    if device.type == "cuda":
        x = x.pin_memory().to(device, non_blocking=True)
    return x.permute(0, 3, 1, 2).float().div_(255)


def augment(x: torch.Tensor, generator: torch.Generator, shift: int = 4, jitter: float = 0.1) -> torch.Tensor:
    """Small shifts and brightness/contrast jitter. No flips: the text names laterality and location."""
    B = x.shape[0]
    dx, dy = (torch.randint(-shift, shift + 1, (2,), generator=generator)).tolist()
    x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    gain = 1 + jitter * (2 * torch.rand(B, 1, 1, 1, generator=generator) - 1)
    bias = jitter * (2 * torch.rand(B, 1, 1, 1, generator=generator) - 1) * 0.5
    return (x * gain.to(x.device) + bias.to(x.device)).clamp_(0, 1)


def _cycle(rows: np.ndarray, n: int, generator: torch.Generator) -> np.ndarray:
    """n rows drawn as whole seeded permutations of `rows`, one after another (each row once per round)."""
    rounds = -(-n // len(rows))
    return np.concatenate([rows[torch.randperm(len(rows), generator=generator).numpy()] for _ in range(rounds)])[:n]


def labeled_share_batches(labeled_rows: np.ndarray, unlabeled_rows: np.ndarray, batch_size: int, labeled_share: float,
                          passes: float, generator: torch.Generator) -> list[np.ndarray]:
    """A student's batches: each holds round(labeled_share * batch_size) labeled rows, the rest from the pool.

    The labeled fraction is oversampled so its rows keep their weight (at p = 15 a plain shuffle gives a
    batch ~9 % labeled rows): labeled rows are drawn as whole permutations, cycled. The schedule is
    `passes` passes over the unlabeled pool (each pool row once per pass, the last batch topped up from
    the next permutation), so every batch has exactly the same share. Seeded by `generator` alone.
    """
    if not 0 < labeled_share < 1:
        raise ValueError(f"labeled_share={labeled_share}: give the share of labeled rows per batch in (0, 1), "
                         "e.g. 0.25")
    if passes <= 0:
        raise ValueError(f"passes={passes}: give the number of passes over the unlabeled pool, > 0")
    if len(labeled_rows) == 0 or len(unlabeled_rows) == 0:
        raise ValueError(f"labeled_share_batches needs labeled and unlabeled rows (got {len(labeled_rows)} and "
                         f"{len(unlabeled_rows)}); without an unlabeled pool use batch_rows")
    n_labeled = min(batch_size - 1, max(1, round(labeled_share * batch_size)))
    n_unlabeled = batch_size - n_labeled
    n_batches = max(1, math.ceil(passes * len(unlabeled_rows) / n_unlabeled))
    lab = _cycle(np.asarray(labeled_rows), n_batches * n_labeled, generator).reshape(n_batches, n_labeled)
    unl = _cycle(np.asarray(unlabeled_rows), n_batches * n_unlabeled, generator).reshape(n_batches, n_unlabeled)
    return list(np.concatenate([lab, unl], axis=1))
