"""Readers, one module per source format, and format auto-detection.

Each reader module has ``read(path, log) -> SourceTables``; :data:`READERS` maps the
``--format`` names onto them and :func:`detect_format` picks one from the files present.

Example:
    >>> detect_format(Path("~/.cache/setrec/ml-100k").expanduser())
    'recbole'
    >>> tables = read_source(Path("data/ml-1m"), "auto", RowLog("error"))
"""

from __future__ import annotations

import importlib
from pathlib import Path

from recsys.errors import DataFormatError
from recsys.pipelines.issues import RowLog
from recsys.pipelines.source import SourceTables

#: --format name -> reader module.
READERS = {
    "movielens-100k": "recsys.pipelines.readers.movielens",
    "movielens-dat": "recsys.pipelines.readers.movielens",
    "recbole": "recsys.pipelines.readers.recbole",
    "amazon2018": "recsys.pipelines.readers.amazon2018",
    "amazon2023": "recsys.pipelines.readers.amazon2023",
    "generic": "recsys.pipelines.readers.generic",
}
FORMATS = ("auto", *READERS)


def read_source(path: Path, format: str, log: RowLog) -> SourceTables:
    """Read ``path`` with the reader of ``format`` ("auto": :func:`detect_format`)."""
    if not path.exists():
        raise DataFormatError("the source does not exist; check --source", path=path)
    if format == "auto":
        format = detect_format(path)
    if format not in READERS:
        raise DataFormatError(f"unknown --format {format!r}; choose one of {', '.join(FORMATS)}", path=path)
    module = importlib.import_module(READERS[format])
    if format.startswith("movielens"):
        return module.read(path, log, variant=format)
    return module.read(path, log)


def detect_format(path: Path) -> str:
    """Guess the format of a source from its file names and first lines.

    Args:
        path: a directory or a single file.

    Raises:
        DataFormatError: nothing matches; the message lists what each format expects.
    """
    from recsys.pipelines.detect import detect

    return detect(path)
