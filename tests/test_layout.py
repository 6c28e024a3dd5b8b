"""The package layout promises of ARCHITECTURE.md section 1."""

from __future__ import annotations

import subprocess
import sysconfig
import tomllib
from importlib.metadata import entry_points
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_tokenizers_is_hugging_face_library():
    import tokenizers

    # recsys/tokenizers must never shadow the Hugging Face package transformers imports.
    assert "site-packages" in tokenizers.__file__
    assert hasattr(tokenizers, "Tokenizer")
    assert not (REPO_ROOT / "tokenizers").exists()


def test_recsys_is_the_only_top_level_package():
    packages = {p.parent.name for p in REPO_ROOT.glob("*/__init__.py")}
    assert packages == {"recsys"}


def test_installed_console_script_runs(tmp_path):
    """The ``recsys`` command that installing the project writes (pyproject [project.scripts]), not ``python -m recsys``."""
    declared = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]["recsys"]
    installed = [ep.value for ep in entry_points(group="console_scripts", name="recsys")]
    assert installed == [declared], f"installed entry point {installed} != pyproject's {declared!r}: reinstall (pip install -e .)"
    script = Path(sysconfig.get_path("scripts")) / "recsys"
    assert script.is_file(), f"{script} is missing: install the project (make install)"
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: recsys")
    assert all(command in out.stdout for command in ("data", "tokenize", "train", "serve"))
    sub = subprocess.run([str(script), "data", "prepare", "--help"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert sub.returncode == 0 and "--format" in sub.stdout, sub.stderr
