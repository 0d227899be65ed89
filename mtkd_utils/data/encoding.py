"""User tables read with an explicit text encoding: a byte the encoding cannot decode is named by file, line and fix.

UTF-8 is the default (a byte-order mark is tolerated); any other encoding is asked for by name, e.g.
source_options={"encoding": "latin-1"} for a CSV saved by an older spreadsheet program.
"""
from __future__ import annotations

import codecs
import io
from pathlib import Path

import pandas as pd

DEFAULT_ENCODING = "utf-8"


def check_encoding(encoding: str, where: str = "encoding") -> str:
    """The codec's canonical name; ValueError naming the option when Python has no such codec."""
    try:
        return codecs.lookup(encoding).name
    except (LookupError, TypeError):
        raise ValueError(f"{where}={encoding!r}: not a text encoding Python knows; use e.g. 'utf-8' (the default), "
                         "'latin-1' or 'cp1252'") from None


SOURCE_FIX = ("save it as UTF-8, or name its encoding, e.g. source_options={\"encoding\": \"latin-1\"} "
              "(batch: --source-options '{\"encoding\": \"latin-1\"}'; Windows spreadsheets often write 'cp1252')")


def decode_file(path: str | Path, encoding: str = DEFAULT_ENCODING, fix: str = SOURCE_FIX) -> str:
    """The whole file as text; ValueError naming the file, the line and `fix` when a byte does not decode."""
    path = Path(path)
    codec = check_encoding(encoding)
    data = path.read_bytes()
    try:
        # utf-8-sig: the byte-order mark that Excel writes is dropped, not read as part of the first column name
        return data.decode("utf-8-sig" if codec == "utf-8" else codec)
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        start = data.rfind(b"\n", 0, err.start) + 1
        column = err.start - start + 1
        raise ValueError(
            f"{path}: line {line}, byte {column}: {data[err.start:err.end]!r} is not valid {codec} ({err.reason}). "
            f"The file was saved in another encoding: {fix}") from None


def read_csv_text(path: str | Path, encoding: str = DEFAULT_ENCODING, fix: str = SOURCE_FIX, **kwargs) -> pd.DataFrame:
    """pd.read_csv of a file decoded whole first (decode_file), so a bad byte is reported by line, never deep in pandas."""
    return pd.read_csv(io.StringIO(decode_file(path, encoding, fix)), **kwargs)
