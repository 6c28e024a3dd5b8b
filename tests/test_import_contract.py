"""The layers contract of pyproject.toml ([tool.importlinter]) holds: no module imports a layer above it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_layers_contract_holds():
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--config", str(REPO / "pyproject.toml"), "--no-cache"], cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 1 kept, 0 broken" in result.stdout


def test_no_module_outside_models_calls_a_private_member_of_a_model():
    import re

    private = re.compile(r"\bmodel\.(_[a-z]\w*)\(")
    offenders = [f"{path.relative_to(REPO)}:{line_no}: {match.group(0)}"
                 for path in (REPO / "recsys").rglob("*.py") if "models" not in path.relative_to(REPO).parts
                 for line_no, line in enumerate(path.read_text().splitlines(), start=1)
                 for match in private.finditer(line)]
    assert offenders == [], offenders
