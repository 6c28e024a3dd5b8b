"""The README's code blocks: every ``recsys`` command in them parses with the real command line.

The commands themselves run in the demo test (tests/test_demo.py) and in each area's tests;
this test catches a README that names a command, flag or choice the CLI no longer has.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from recsys.cli import COMMAND_MODULES, build_parser

README = Path(__file__).resolve().parents[1] / "README.md"


def _code_blocks(text: str) -> list[str]:
    """Shell code blocks (fences tagged bash or sh), fence by fence so other languages never pair up wrongly."""
    blocks, current, language = [], None, None
    for line in text.splitlines():
        if line.startswith("```"):
            if current is None:
                current, language = [], line[3:].strip()
            else:
                if language in ("bash", "sh"):
                    blocks.append("\n".join(current) + "\n")
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def readme_commands() -> list[str]:
    """Every ``recsys ...`` command line (also after ``-m recsys``) in the README's shell blocks."""
    commands = []
    for block in _code_blocks(README.read_text()):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.split(" #", 1)[0].strip()
            if line.startswith("recsys "):
                commands.append(line)
            elif " -m recsys " in line:
                commands.append("recsys " + line.split(" -m recsys ", 1)[1])
    return commands


def test_readme_lists_the_main_job():
    commands = readme_commands()
    names = {" ".join(shlex.split(c)[1:3]) for c in commands}
    for expected in ("data prepare", "data stats", "tokenize semantic", "tokenize cf"):
        assert expected in names
    for expected in ("train", "evaluate", "register", "serve"):
        assert any(shlex.split(c)[1] == expected for c in commands), expected


def test_every_command_area_is_installed():
    import importlib.util

    missing = [name for name in COMMAND_MODULES if importlib.util.find_spec(name) is None]
    assert not missing, f"command modules missing: {missing}"


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_parses(command):
    parser = build_parser()
    args, rest = parser.parse_known_args(shlex.split(command)[1:])
    assert callable(args.func)
    if getattr(args, "config_args", None):  # the command parses its own arguments (recsys.config)
        args.config_args(rest)
    else:
        assert not rest, f"unrecognized arguments: {rest}"
