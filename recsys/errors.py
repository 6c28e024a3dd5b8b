"""Project exceptions. Every message names the file, row or field and what to do.

Example:
    >>> raise DataFormatError("column 'user_id' is missing", path="u.csv", line=1)
"""

from __future__ import annotations

from pathlib import Path


class SetrecError(Exception):
    """Base class of every error setrec raises on purpose; the CLI prints it without a traceback."""


class DataFormatError(SetrecError):
    """Malformed input data, located by file, line (1-based) and column when known."""

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        column: str | None = None,
    ) -> None:
        self.path = str(path) if path is not None else None
        self.line = line
        self.column = column
        where = []
        if self.path is not None:
            where.append(self.path)
        if line is not None:
            where.append(f"line {line}")
        if column is not None:
            where.append(f"column {column!r}")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class ConfigError(SetrecError):
    """An invalid configuration value; the message names the field."""


class ArtifactError(SetrecError):
    """A missing, corrupt or incompatible artifact (bundle, embeddings, checkpoint)."""


class UnknownItemError(SetrecError):
    """Item ids that are not in the catalogue."""
