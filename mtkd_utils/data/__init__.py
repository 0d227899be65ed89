"""Data (notebook 01): any source -> one validated manifest, patient-level splits, the image cache, the T3 vocabulary.

Holds the manifest format and its validator (manifest), the sources and their adapters (sources, csv_folder, odir,
dataset_writer, synthetic/), fundus image preparation (fundus), splits, the T3 tokenizer and BLEU (text), the
findings a sentence states by rules over the dataset's vocabulary (findings), what a training run reads (dataset),
step 01 itself (prep) and the learnability check (learnability).
May import: the top-level modules (config, presets, runs, io, progress, seeds) — never train, analysis, grid or tools.
"""
from importlib import import_module

# The functions data/README.md documents, importable from the wing (`from mtkd_utils.data import from_csv`); loaded
# on first use, so that importing one module of the wing does not import every adapter.
_EXPORTS = {"from_csv": "csv_folder", "from_folder": "csv_folder", "from_odir_folder": "odir",
            "prepare_image": "fundus", "FundusData": "dataset", "load_data": "dataset",
            "from_deepeyenet": "deepeyenet"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
