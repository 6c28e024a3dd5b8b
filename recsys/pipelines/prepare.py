"""``recsys data prepare``: turn a source into a prepared dataset (ARCHITECTURE.md section 2).

Command:
    recsys data prepare --source ml-100k --out data/ml-100k --kcore 0 --split loo

Steps: read (lazy scans; one collect per table after typing and row checks), drop or
raise on bad rows, integer codes for the source ids (natural order), order each user's
events by time with the source line as the stable tie-break, drop duplicate events and
events of unknown items, filter ratings, handle repeats, iterative k-core, contiguous ids,
splits, warm/cold labels, item text. From the codes on, every step works on integer
columns; the source files are hashed for the manifest in a thread meanwhile.
The output is written to a temporary directory beside ``--out`` and renamed into place,
so an interrupted run never leaves a half-written dataset.

Example:
    >>> manifest = prepare(PrepareConfig(source="ml-100k", out="/tmp/ml", kcore=0))
    >>> manifest["counts"]["users"], manifest["counts"]["items"]
    (943, 1682)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from recsys.checksum import sha256_file
from recsys.errors import ConfigError, DataFormatError
from recsys.pipelines.issues import RowLog
from recsys.pipelines.readers import FORMATS, read_source
from recsys.pipelines.source import SourceTables
from recsys.pipelines.ids import encode_ids
from recsys.pipelines.steps import (
    SPLIT_DTYPE,
    SPLITS,
    report_duplicate_events,
    drop_repeats,
    filter_min_rating,
    kcore_mask,
    loo_splits,
    order_events,
    split_counts,
    temporal_splits,
)
from recsys.pipelines.tables import LINE
from recsys.pipelines.validate import check_interactions, check_items, check_known_items, require_any_rows

SCHEMA_VERSION = 1
EMBEDDED = ("ml-100k",)
OUTPUT_TABLES = ("interactions.parquet", "items.parquet", "users.parquet")
#: Source formats (``recsys.pipelines.readers.FORMATS``; a test keeps the two equal).
SourceFormat = Literal["auto", "movielens-100k", "movielens-dat", "recbole", "amazon2018", "amazon2023", "generic"]


@dataclass
class PrepareConfig:
    """Parameters of ``recsys data prepare``."""

    source: str
    """A path (directory or file) or the name of an embedded dataset ("ml-100k")."""
    out: str
    """The output directory; replaced atomically when it holds a previous prepared dataset."""
    format: SourceFormat = "auto"
    """Source format (see recsys.pipelines.readers.READERS), or "auto" to detect it."""
    kcore: int = 5
    """Iterative k-core: keep users and items with at least this many events (0 or 1: no filter)."""
    split: Literal["loo", "temporal"] = "loo"
    """"loo" (per user: last event test, second last valid) or "temporal" (global time cuts).
    A source with a split column keeps its own split."""
    min_rating: float | None = None
    """Drop events rated below this (None keeps all); needs a rating column."""
    on_bad_rows: Literal["error", "drop"] = "error"
    """"error": stop at the first bad row, naming file, line and column; "drop": drop and count."""
    repeats: Literal["keep", "first"] = "keep"
    """Repeated (user, item) pairs at different times: "keep" all, or keep the "first" only."""
    valid_fraction: float = 0.1
    """Temporal split: share of the latest events (before the test ones) that is valid."""
    test_fraction: float = 0.1
    """Temporal split: share of the latest events that is test."""
    max_text_chars: int = 2000
    """Item texts longer than this are cut."""
    catalogue_only: Literal["keep", "drop"] = "keep"
    """Items of the item file without any event: "keep" them (as cold items) or "drop" them."""


def _resolve_source(config: PrepareConfig) -> tuple[Path, str]:
    if config.source in EMBEDDED:
        from recsys.pipelines.embedded import ensure_ml100k

        return ensure_ml100k(), "recbole" if config.format == "auto" else config.format
    return Path(config.source).expanduser(), config.format


def _check_config(config: PrepareConfig) -> None:
    if config.format not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}, got {config.format!r}")
    if config.split not in ("loo", "temporal"):
        raise ConfigError(f"split must be 'loo' or 'temporal', got {config.split!r}")
    if config.kcore < 0:
        raise ConfigError(f"kcore must be >= 0, got {config.kcore}")
    if config.catalogue_only not in ("keep", "drop"):
        raise ConfigError(f"catalogue_only must be 'keep' or 'drop', got {config.catalogue_only!r}")
    if config.max_text_chars < 1:
        raise ConfigError(f"max_text_chars must be >= 1, got {config.max_text_chars}")


@dataclass
class _Build:
    """The one state :func:`build_tables` moves forward; each step reads what earlier steps set and adds its own.

    From :func:`_encode_and_order` on, ``events`` holds every event still in play in (user code, ts,
    source line) order, with int32 codes ``_u`` and ``_i``; arrays "per user/item code" index the codes
    of ``user_keys`` / ``item_keys`` (natural order of the source ids, catalogue items included).
    """

    tables: SourceTables
    config: PrepareConfig
    log: RowLog
    facts: dict = field(default_factory=lambda: {"warnings": []})
    """What the manifest reports (counts, split used, warnings)."""
    events: pl.DataFrame | None = None
    items: pl.DataFrame | None = None
    """The checked rows of the item file (None: the source has none)."""
    dropped_item_ids: pl.Series | None = None
    """Item ids of item-file rows dropped as bad."""
    user_keys: pl.Series | None = None
    """Source user id per user code."""
    item_keys: pl.Series | None = None
    """Source item id per item code."""
    duplicates: np.ndarray | None = None
    """Per row of ``events``: a duplicate event found and reported but not filtered yet (the k-core drops it
    in the same pass); None when there is none, or once they are filtered."""
    in_catalogue: np.ndarray | None = None
    """Per item code: the item file lists it."""
    ever_seen: np.ndarray | None = None
    """Per item code: it has an event after the event checks (before the k-core)."""
    item_kept: np.ndarray | None = None
    """Per item code: in the output (a kept event, or a catalogue-only item)."""
    user_kept: np.ndarray | None = None
    """Per user code: in the output."""
    interactions: pl.DataFrame | None = None
    item_table: pl.DataFrame | None = None
    users: pl.DataFrame | None = None

    def rows_in_play(self) -> int:
        """Events left once the pending duplicates are dropped."""
        return self.events.height if self.duplicates is None else self.events.height - int(self.duplicates.sum())


def _read_checked(b: _Build) -> None:
    """Typed, checked events and item rows (bad rows dropped or raised per ``on_bad_rows``)."""
    b.events = check_interactions(b.tables, b.log)
    b.facts["rows_read"] = b.events.height + sum(b.log.dropped.values())
    b.items, b.dropped_item_ids = check_items(b.tables, b.log, max_text_chars=b.config.max_text_chars)
    b.facts["items_read"] = None if b.items is None else b.items.height + sum(b.log.items_dropped.values())


def _encode_and_order(b: _Build) -> None:
    """Integer codes in the natural order of the source ids (catalogue items take part), the final event
    order, and the duplicate events (reported now, dropped later)."""
    user_codes, b.user_keys = encode_ids(b.events["user_id"])
    item_codes, b.item_keys = encode_ids(b.events["item_id"], None if b.items is None else b.items["item_id"])
    events = b.events.with_columns(  # int32 codes: half the bytes to sort and filter
        pl.Series("_u", user_codes, dtype=pl.Int32), pl.Series("_i", item_codes, dtype=pl.Int32)
    ).drop("user_id", "item_id")
    del user_codes, item_codes
    events = order_events(events)  # by user, time, source line: kept from here on
    b.duplicates = report_duplicate_events(events, b.log, b.tables.interactions_file)
    b.events = events.drop("_key", strict=False)


def _filter_events(b: _Build) -> None:
    """Events of unknown items, below ``min_rating`` and repeats. Only when one of these applies are the
    duplicates filtered here; otherwise they stay pending for the k-core pass."""
    config = b.config
    b.in_catalogue = np.zeros(len(b.item_keys), dtype=bool)
    if b.items is None and config.min_rating is None and config.repeats == "keep":
        return
    if b.duplicates is not None:
        b.events, b.duplicates = b.events.filter(pl.Series(~b.duplicates)), None
    if b.items is not None:
        b.in_catalogue = b.item_keys.is_in(b.items["item_id"].implode()).to_numpy()
        dropped = b.item_keys.is_in(b.dropped_item_ids.implode()).to_numpy()
        b.events = check_known_items(b.events, b.in_catalogue, dropped, b.item_keys, b.tables, b.log)
    require_any_rows(b.events, b.tables.interactions_file, "interaction")
    b.events = filter_min_rating(b.events, config.min_rating, b.log)
    b.events = drop_repeats(b.events, config.repeats, b.log)


def _kcore(b: _Build) -> None:
    """Iterative k-core over the events in play; drops the pending duplicates with it. Afterwards
    ``events`` holds exactly the kept events and source lines are gone (the order is final)."""
    config, events = b.config, b.events
    rows_left = b.rows_in_play()
    require_any_rows(events.clear() if rows_left == 0 else events, b.tables.interactions_file, "interaction")
    present = None if b.duplicates is None else ~b.duplicates
    item_codes = events["_i"].to_numpy()
    b.ever_seen = np.zeros(len(b.item_keys), dtype=bool)
    b.ever_seen[item_codes if present is None else item_codes[present]] = True
    keep = kcore_mask(events["_u"].to_numpy(), item_codes, config.kcore, present)
    b.log.count("kcore", rows_left - int(keep.sum()))
    if "split" in events.columns:  # a split given by the source: say what the k-core took from each part
        removed = ~keep if present is None else present & ~keep
        taken = events.filter(pl.Series(removed))["split"].value_counts()
        per_split = {split: 0 for split in SPLITS} | dict(zip(taken["split"].to_list(), taken["count"].to_list()))
        b.facts["kcore_removed_per_split"] = per_split
        if per_split["valid"] or per_split["test"]:
            b.facts["warnings"].append(
                f"the source's split is kept, but the {config.kcore}-core filter removed {per_split['valid']:,} valid and "
                f"{per_split['test']:,} test rows of it (and {per_split['train']:,} train rows); "
                "pass --kcore 0 to keep the split exactly as given"
            )
    b.events, b.duplicates = events.drop(LINE).filter(pl.Series(keep)), None
    require_any_rows(b.events, b.tables.interactions_file, f"interaction (after the {config.kcore}-core filter)")


def _renumber(b: _Build) -> None:
    """Kept users and items (items with a kept event, plus catalogue items that never had one) get
    contiguous ``user_idx`` / ``item_idx`` in code order, so the (user, time, line) order still holds."""
    item_has_event = np.zeros(len(b.item_keys), dtype=bool)
    item_has_event[b.events["_i"].to_numpy()] = True
    catalogue_only = b.in_catalogue & ~b.ever_seen
    if b.items is not None:
        if b.config.catalogue_only == "drop":
            b.log.count("catalogue_only", int(catalogue_only.sum()), items=True)
            catalogue_only[:] = False
        b.log.count("filtered_out_with_their_events", int((b.in_catalogue & b.ever_seen & ~item_has_event).sum()), items=True)
    b.facts["catalogue_only_items"] = int(catalogue_only.sum())
    b.item_kept = item_has_event | catalogue_only
    b.user_kept = np.zeros(len(b.user_keys), dtype=bool)
    b.user_kept[b.events["_u"].to_numpy()] = True
    item_new = np.cumsum(b.item_kept) - 1
    user_new = np.cumsum(b.user_kept) - 1
    b.events = b.events.with_columns(
        pl.Series("user_idx", user_new[b.events["_u"].to_numpy()], dtype=pl.Int32),
        pl.Series("item_idx", item_new[b.events["_i"].to_numpy()], dtype=pl.Int32),
    )


def _assign_splits(b: _Build) -> None:
    """The split of every event (the source's own, leave-one-out or temporal) and the interactions table."""
    events, config = b.events, b.config
    if "split" in events.columns:
        split_codes = events["split"].cast(SPLIT_DTYPE)
        b.facts["split"] = "source"
    elif config.split == "loo":
        codes, short = loo_splits(events["user_idx"].to_numpy())
        split_codes = pl.Series(SPLITS, dtype=SPLIT_DTYPE).gather(codes)
        b.facts["split"] = "loo"
        b.facts["loo_users_without_valid_test"] = short
    else:
        if b.tables.ts_kind != "time":
            raise ConfigError(
                f"{b.tables.interactions_file} orders events by position, without wall-clock time: "
                "a temporal split needs timestamps. Use --split loo."
            )
        codes, cuts = temporal_splits(events["ts"].to_numpy(), config.valid_fraction, config.test_fraction)
        split_codes = pl.Series(SPLITS, dtype=SPLIT_DTYPE).gather(codes)
        b.facts["split"] = "temporal"
        b.facts["warnings"] += cuts.pop("warnings")
        b.facts["temporal_cuts"] = cuts
    b.interactions = events.select("user_idx", "item_idx", pl.col("ts").cast(pl.Int64), split_codes.alias("split"))
    b.events = None


def _item_and_user_tables(b: _Build) -> None:
    """The item table (ids, text, item-file fields, ``is_cold``) and the user table of the kept ids."""
    kept_keys = b.item_keys.filter(pl.Series(b.item_kept))
    item_table = pl.DataFrame({"item_idx": pl.Series(np.arange(len(kept_keys)), dtype=pl.Int32), "item_id": kept_keys})
    if b.items is not None:
        fields = [c for c in b.items.columns if c not in ("item_id", "text", LINE)]
        item_table = item_table.join(b.items.select("item_id", "text", *fields), on="item_id", how="left", maintain_order="left")
    else:
        item_table = item_table.with_columns(pl.lit("").alias("text"))
    b.facts["per_split"], train_count = split_counts(b.interactions, item_table.height)
    b.item_table = item_table.with_columns(pl.col("text").fill_null(""), pl.Series("is_cold", train_count == 0))
    b.users = pl.DataFrame(
        {"user_idx": pl.Series(np.arange(int(b.user_kept.sum())), dtype=pl.Int32), "user_id": b.user_keys.filter(pl.Series(b.user_kept))}
    )


#: The steps of :func:`build_tables`, in order; each moves the one :class:`_Build` state forward.
BUILD_STEPS = (_read_checked, _encode_and_order, _filter_events, _kcore, _renumber, _assign_splits, _item_and_user_tables)


def build_tables(tables: SourceTables, config: PrepareConfig, log: RowLog) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, dict]:
    """Run every step (:data:`BUILD_STEPS`) on a read source; return (interactions, items, users, facts for the manifest)."""
    state = _Build(tables, config, log)
    for step in BUILD_STEPS:
        step(state)
    return state.interactions, state.item_table, state.users, state.facts


def _counts(interactions: pl.DataFrame, items: pl.DataFrame, users: pl.DataFrame, log: RowLog, facts: dict) -> dict:
    per_split = facts["per_split"]
    counts = {
        "rows_read": facts["rows_read"],
        "rows_dropped": dict(sorted(log.dropped.items())),
        "rows_kept": interactions.height,
        "items_read": facts["items_read"],
        "items_dropped": dict(sorted(log.items_dropped.items())),
        "users": users.height,
        "items": items.height,
        "interactions": interactions.height,
        "cold_items": int(items["is_cold"].sum()),
        "catalogue_only_items": facts["catalogue_only_items"],
        "splits": per_split,
    }
    if "loo_users_without_valid_test" in facts:
        counts["loo_users_without_valid_test"] = facts["loo_users_without_valid_test"]
    if "kcore_removed_per_split" in facts:
        counts["kcore_removed_per_split"] = facts["kcore_removed_per_split"]
    counts["item_text"] = log.item_text
    return counts


def _write_atomic(out: Path, tables: dict[str, pl.DataFrame], manifest: dict) -> None:
    """Write the tables and manifest into a temporary sibling of ``out``, then swap it in."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "manifest.json").is_file())):
        raise ConfigError(
            f"--out {out} exists and is not a prepared dataset; choose another directory or remove it"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        digest = hashlib.sha256()
        for name in OUTPUT_TABLES:
            # zstd level 1 without column statistics: as small as the default level, half the CPU.
            tables[name].write_parquet(work / name, compression="zstd", compression_level=1, statistics=False)
            digest.update(name.encode())
            digest.update((work / name).read_bytes())
        manifest["fingerprint"] = digest.hexdigest()[:16]
        manifest["files"] = {name: sha256_file(work / name) for name in OUTPUT_TABLES}
        (work / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        os.chmod(work, 0o755)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(work, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(work, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def prepare(config: PrepareConfig) -> dict:
    """Prepare ``config.source`` into ``config.out``; return the manifest written.

    Args:
        config: see :class:`PrepareConfig`.

    Raises:
        DataFormatError: a bad row under policy "error", or a source that cannot be read.
        ConfigError: inconsistent options.

    Example:
        >>> prepare(PrepareConfig(source="../shared/data/amazon-industrial", out="/tmp/ai", kcore=0))
    """
    _check_config(config)
    started = time.perf_counter()
    path, fmt = _resolve_source(config)
    log = RowLog(config.on_bad_rows)
    tables = read_source(path, fmt, log)
    with ThreadPoolExecutor(max_workers=1) as pool:  # hashing the source overlaps the steps
        hashes = pool.map(sha256_file, tables.files)
        interactions, items, users, facts = build_tables(tables, config, log)
        hashes = list(hashes)
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "fingerprint": "",
        "source": {
            "name": config.source,
            "path": str(path.resolve()),
            "format": tables.format,
            "ts_kind": tables.ts_kind,
            "files": [
                {"path": str(f.resolve()), "sha256": digest, "bytes": f.stat().st_size} for f, digest in zip(tables.files, hashes)
            ],
            "time": tables.time_info,
            **({"notes": tables.notes} if tables.notes else {}),
        },
        "parameters": {**asdict(config), "split_used": facts["split"], **({"temporal_cuts": facts["temporal_cuts"]} if "temporal_cuts" in facts else {})},
        "counts": _counts(interactions, items, users, log, facts),
        "warnings": facts["warnings"],
        "seconds": None,
    }
    manifest["parameters"]["out"] = str(Path(config.out).expanduser().resolve())
    manifest["seconds"] = round(time.perf_counter() - started, 3)
    out = Path(config.out).expanduser()
    _write_atomic(out, {"interactions.parquet": interactions, "items.parquet": items, "users.parquet": users}, manifest)
    return manifest


def check_output(out: str | Path) -> None:
    """Raise when ``out`` lacks a file of the contract (used by tests and ``recsys data stats``)."""
    out = Path(out)
    for name in (*OUTPUT_TABLES, "manifest.json"):
        if not (out / name).is_file():
            raise DataFormatError(f"missing {name}; run `recsys data prepare` again", path=out)
