"""Bad rows: raise a located error (policy ``error``) or drop and count them (policy ``drop``).

Every row the pipeline removes goes through :class:`RowLog`, so manifest.json can say how
many rows were dropped and why. Structural problems (a missing column, an empty file)
always raise, whatever the policy: there is no row to drop.

Example:
    >>> log = RowLog("drop")
    >>> log.bad("bad_type", 3, path="u.csv", line=7, column="ts", detail="'x' is not an integer")
    >>> log.dropped
    {'bad_type': 3}
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from recsys.errors import DataFormatError

POLICIES = ("error", "drop")

#: What a user can do about bad rows, appended to every bad-row error.
DROP_HINT = (
    "Fix the file, or pass --on-bad-rows drop to drop such rows "
    "(they are counted per reason in manifest.json)."
)


@dataclass
class RowLog:
    """Counts of removed rows per reason, for interactions and items separately.

    Attributes:
        policy: "error" raises :class:`DataFormatError` at the first bad row; "drop" counts it.
        dropped: interaction rows removed, per reason (bad rows and cleaning steps alike).
        items_dropped: item rows removed, per reason.
        item_text: what cleaning removed from item text values: kind -> field -> values
            (see :func:`recsys.pipelines.text.cleaning_flags`), plus ``cut_to_max_text_chars``.
    """

    policy: str = "error"
    dropped: Counter = field(default_factory=Counter)
    items_dropped: Counter = field(default_factory=Counter)
    item_text: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise DataFormatError(
                f"unknown --on-bad-rows policy {self.policy!r}; use one of {', '.join(POLICIES)}"
            )

    def bad(
        self,
        reason: str,
        count: int,
        *,
        path: str | Path | None,
        line: int | None,
        column: str | None,
        detail: str,
        items: bool = False,
    ) -> None:
        """Record ``count`` bad rows of one reason; under policy "error" raise for the first.

        Args:
            reason: short snake_case key used in the manifest (``bad_type``, ``unknown_item``...).
            count: how many rows have this problem (0 does nothing).
            path, line, column: where the first such row is.
            detail: what is wrong with that first row.
            items: the rows are item rows (else interaction rows).
        """
        if count <= 0:
            return
        if self.policy == "error":
            more = f" ({count - 1} more row(s) with the same problem)" if count > 1 else ""
            raise DataFormatError(f"{detail}{more} [{reason}]. {DROP_HINT}", path=path, line=line, column=column)
        self.count(reason, count, items=items)

    def count_text(self, kind: str, field_name: str | None, count: int) -> None:
        """Count ``count`` item text values that cleaning changed by ``kind`` (None field: whole texts)."""
        if count <= 0:
            return
        if field_name is None:
            self.item_text[kind] = self.item_text.get(kind, 0) + int(count)
        else:
            per_field = self.item_text.setdefault(kind, {})
            per_field[field_name] = per_field.get(field_name, 0) + int(count)

    def count(self, reason: str, count: int, *, items: bool = False) -> None:
        """Count rows removed by a cleaning step (never an error: blank lines, k-core...)."""
        if count > 0:
            (self.items_dropped if items else self.dropped)[reason] += int(count)
