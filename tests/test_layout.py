"""The package layout promises of ARCHITECTURE.md section 1."""

from __future__ import annotations

import subprocess
import sys
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


def test_console_script_help_runs():
    out = subprocess.run([sys.executable, "-m", "recsys", "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "recsys" in out.stdout
