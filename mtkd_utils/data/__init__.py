"""Data (notebook 01): any source -> one validated manifest, patient-level splits, the image cache, the T3 vocabulary.

Holds the manifest format and its validator (manifest), the sources and their adapters (sources, csv_folder, odir,
dataset_writer, synthetic/), fundus image preparation (fundus), splits, the T3 tokenizer and BLEU (text), what a
training run reads (dataset), step 01 itself (prep) and the learnability check (learnability).
May import: the top-level modules (config, presets, runs, io, progress, seeds) — never train, analysis, grid or tools.
"""
from .csv_folder import from_csv, from_folder
from .dataset import FundusData, load_data
from .fundus import prepare_image
from .odir import from_odir_folder

__all__ = ["FundusData", "from_csv", "from_folder", "from_odir_folder", "load_data", "prepare_image"]
