"""Format auto-detection: file names first, then the first line of the candidate files.

Example:
    >>> detect(Path("ml-1m"))            # holds ratings.dat and movies.dat
    'movielens-dat'
"""

from __future__ import annotations

import json
from pathlib import Path

from recsys.errors import DataFormatError

EXPECTED = (
    "movielens-100k: u.data (+ u.item); movielens-dat: ratings.dat (+ movies.dat); "
    "recbole: NAME.inter (+ NAME.item); amazon2018: a ratings CSV without header "
    "(item,user,rating,timestamp) or review JSON lines (reviewerID, asin, unixReviewTime), "
    "with meta_*.json(l); amazon2023: review JSON lines (user_id, parent_asin, timestamp) with "
    "meta_*.jsonl; generic: interactions.csv/.parquet with user_id, item_id, timestamp or position"
)


def _first_json_keys(path: Path) -> set[str]:
    try:
        with open(path, "rb") as handle:
            value = json.loads(handle.readline())
    except (OSError, ValueError, UnicodeDecodeError):
        return set()
    return set(value) if isinstance(value, dict) else set()


def _first_line(path: Path) -> str:
    with open(path, "rb") as handle:
        return handle.readline().decode("utf-8", errors="replace").strip()


def looks_like_ratings_csv(path: Path) -> bool:
    parts = _first_line(path).split(",")
    return len(parts) == 4 and parts[2].replace(".", "", 1).isdigit() and parts[3].isdigit()


def json_format(path: Path) -> str | None:
    keys = _first_json_keys(path)
    if {"reviewerID", "asin"} <= keys:
        return "amazon2018"
    if {"user_id", "parent_asin"} <= keys:
        return "amazon2023"
    return None


def detect(path: Path) -> str:
    """Return the --format name for ``path`` (see module docstring)."""
    if path.is_file():
        name, suffix = path.name, path.suffix.lower()
        if name == "u.data":
            return "movielens-100k"
        if name == "ratings.dat":
            return "movielens-dat"
        if suffix == ".inter":
            return "recbole"
        if suffix in (".json", ".jsonl") and (found := json_format(path)):
            return found
        if suffix in (".csv", ".tsv", ".parquet"):
            if suffix == ".csv" and looks_like_ratings_csv(path):
                return "amazon2018"
            return "generic"
    elif path.is_dir():
        names = {p.name for p in path.iterdir() if p.is_file()}
        if "u.data" in names:
            return "movielens-100k"
        if "ratings.dat" in names:
            return "movielens-dat"
        if any(n.endswith(".inter") for n in names):
            return "recbole"
        if names & {"interactions.csv", "interactions.tsv", "interactions.parquet"}:
            return "generic"
        for name in sorted(names):
            if name.startswith("meta_"):
                continue
            candidate = path / name
            if name.endswith((".json", ".jsonl")) and (found := json_format(candidate)):
                return found
            if name.endswith(".csv") and looks_like_ratings_csv(candidate):
                return "amazon2018"
    raise DataFormatError(f"cannot tell the format; pass --format. Expected one of: {EXPECTED}", path=path)
