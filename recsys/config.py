"""The one config path: typed dataclasses read by jsonargparse for every command and YAML.

A config is a dataclass with a docstring per field (closed choices as ``Literal``). The same
parser reads YAML files (``--config``, repeatable: later files win), dotted overrides
(``--trainer.max_epochs=3``; ``--set trainer.max_epochs=3`` is an alias) and prints the
result (``--print_config``). Every failure is a :class:`recsys.errors.ConfigError` that names
the file (or the command line) and the dotted key. Values given as text are read as YAML, as
on the command line: ``"5"`` is 5 for an int field, ``no`` is false for a bool field.

Example:
    >>> from recsys.training.setrec_config import TrainJobConfig
    >>> cfg = load_config(TrainJobConfig, ["configs/setrec-t5-demo.yaml"], {"trainer.max_epochs": 2})
    >>> cfg.trainer.max_epochs
    2
    >>> cfg, options = parse_command(TrainJobConfig, ["--config", "configs/setrec-t5-demo.yaml", "--seed=1"], "recsys train")
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from recsys.errors import ConfigError

T = TypeVar("T")

#: Where a value came from when it was not a file.
COMMAND_LINE = "command line"


def _jsonargparse():
    import jsonargparse

    jsonargparse.set_parsing_settings(docstring_parse_attribute_docstrings=True)
    return jsonargparse


@functools.lru_cache(maxsize=None)
def _cached_parser(cls: type, prog: str, description: str, extra: Callable[[Any], None] | None):
    jsonargparse = _jsonargparse()
    parser = jsonargparse.ArgumentParser(
        prog=prog,
        description=description or (cls.__doc__ or "").strip().splitlines()[0],
        exit_on_error=False,
        allow_abbrev=False,
        env_prefix=None,
        default_env=False,
    )
    parser.add_argument("--config", action=jsonargparse.ActionConfigFile,
                        help="YAML file with these keys; repeat to compose several (later files win)")
    parser.add_class_arguments(cls, nested_key=None, fail_untyped=True, as_group=False)
    if extra is not None:
        extra(parser)
    return parser


def config_parser(cls: type, prog: str, description: str = "", extra: Callable[[Any], None] | None = None):
    """The jsonargparse parser of dataclass ``cls``: ``--config``, ``--print_config`` and one flag per dotted key.

    Args:
        cls: the config dataclass (nested dataclasses become dotted keys).
        prog: program name in usage lines, e.g. ``"recsys train"``.
        description: first line of ``--help`` (default: the class docstring's first line).
        extra: adds command options that are not config keys (e.g. ``--resume``); must be a
            module-level function (the parser is cached per arguments).

    Example:
        >>> config_parser(TrainJobConfig, "recsys train").print_help()
    """
    return _cached_parser(cls, prog, description, extra)


def expand_set(argv: Sequence[str]) -> list[str]:
    """Rewrite the alias ``--set KEY=VALUE`` (and ``--set=KEY=VALUE``) as ``--KEY=VALUE``.

    Example:
        >>> expand_set(["--config", "a.yaml", "--set", "trainer.max_epochs=3"])
        ['--config', 'a.yaml', '--trainer.max_epochs=3']
    """
    out: list[str] = []
    items = list(argv)
    i = 0
    while i < len(items):
        arg = items[i]
        if arg == "--set" or arg.startswith("--set="):
            if arg == "--set":
                if i + 1 >= len(items):
                    raise ConfigError(f"{COMMAND_LINE}: --set needs KEY=VALUE, e.g. --set trainer.max_epochs=3")
                text, i = items[i + 1], i + 2
            else:
                text, i = arg[len("--set="):], i + 1
            key, _ = split_override(text)
            out.append(f"--{key}={text.split('=', 1)[1]}")
            continue
        out.append(arg)
        i += 1
    return out


def expand_aliases(argv: Sequence[str], aliases: Mapping[str, str] | None) -> list[str]:
    """Rewrite a command's documented flags (``--epochs 5``, ``--epochs=5``) as their dotted keys (``--max_epochs=5``).

    An alias whose target holds ``=`` is a switch that takes no value (``{"--no-exclude-history": "exclude_history=false"}``).

    Example:
        >>> expand_aliases(["--epochs", "5", "--dim=8"], {"--epochs": "max_epochs", "--dim": "hidden_size"})
        ['--max_epochs=5', '--hidden_size=8']
        >>> expand_aliases(["--no-cache"], {"--no-cache": "use_cache=false"})
        ['--use_cache=false']
    """
    if not aliases:
        return list(argv)
    out: list[str] = []
    items = list(argv)
    i = 0
    while i < len(items):
        flag, eq, value = items[i].partition("=")
        if flag in aliases and "=" in aliases[flag]:
            if eq:
                key = aliases[flag].split("=", 1)[0]
                raise ConfigError(f"{COMMAND_LINE} ({flag}): {key}: {flag} takes no value")
            out.append(f"--{aliases[flag]}")
        elif flag in aliases:
            if not eq:
                if i + 1 >= len(items):
                    raise ConfigError(f"{COMMAND_LINE} ({flag}): {aliases[flag]}: expected one value")
                value, i = items[i + 1], i + 1
            out.append(f"--{aliases[flag]}={value}")
        else:
            out.append(items[i])
        i += 1
    return out


def given_keys(argv: Sequence[str], aliases: Mapping[str, str] | None = None) -> set[str]:
    """The dotted keys (and ``config`` for ``--config``) that ``argv`` sets, after ``--set`` and the aliases.

    Example:
        >>> sorted(given_keys(["--epochs", "5", "--set", "lr=0.1", "--data", "d"], {"--epochs": "max_epochs"}))
        ['data', 'lr', 'max_epochs']
    """
    expanded = expand_aliases(expand_set(argv), aliases)
    return {arg[2:].split("=", 1)[0] for arg in expanded if arg.startswith("--")} - {"help", "print_config"}


def describe_flags(aliases: Mapping[str, str]) -> str:
    """A command's documented flags for its ``--help``: each with the key it sets when the names differ.

    Example:
        >>> describe_flags({"--epochs": "max_epochs", "--lr": "lr", "--no-cache": "use_cache=false"})
        '--epochs (= --max_epochs), --lr, --no-cache (= --use_cache=false)'
    """
    return ", ".join(flag if flag[2:] == key else f"{flag} (= --{key})" for flag, key in aliases.items())


@dataclasses.dataclass(frozen=True)
class ConfigCommand:
    """A subcommand whose arguments go through the one config path: its parser, ``--help`` text and registration.

    Args:
        prog: program name in usage lines, e.g. ``"recsys tokenize table"``.
        config: the config dataclass, or ``"module:Class"`` to import it only when the command runs
            (``recsys --help`` stays fast).
        summary: what the command does, the first sentence(s) of its ``--help``.
        aliases: the documented flags for config keys (``{"--epochs": "max_epochs"}``; a target with ``=``
            is a switch, ``{"--no-cache": "use_cache=false"}``); both spellings work.
        extra: adds options that are not config keys (see :func:`config_parser`).
        options: command options read first, by plain argparse, as ``(flag, add_argument kwargs)``; unlike
            ``extra`` they may share a name with a key (``benchmark quality``: ``--seeds N`` takes the first N
            of the key ``seeds``, which is set with ``--set seeds=[0,1]``). With them, :meth:`parse` returns
            their namespace (not jsonargparse's), and ``extra`` must be None.
        config_example: when given, ``--config`` is required (the config has keys without defaults);
            the error shows this example, e.g. ``"configs/bench-ml100k.yaml"``.

    Example:
        >>> TABLE = ConfigCommand("recsys tokenize table", "recsys.tokenizers.commands:TableCommandConfig",
        ...                       "Build a token table.", {"--num-tokens": "num_tokens"})
        >>> config, namespace = TABLE.parse(["--data", "d", "--cf", "c", "--semantic", "s", "--out", "o", "--num-tokens", "2"])
    """

    prog: str
    config: type | str
    summary: str
    aliases: Mapping[str, str] = dataclasses.field(default_factory=dict)
    extra: Callable[[Any], None] | None = None
    options: tuple[tuple[str, Mapping[str, Any]], ...] = ()
    config_example: str = ""

    def __post_init__(self) -> None:
        if self.options and self.extra is not None:
            raise ValueError(f"{self.prog}: give options or extra, not both")

    def config_class(self) -> type:
        """The config dataclass (imported now when given as ``"module:Class"``)."""
        if isinstance(self.config, str):
            import importlib

            module, name = self.config.split(":")
            return getattr(importlib.import_module(module), name)
        return self.config

    @property
    def description(self) -> str:
        """The command's ``--help`` text: the summary, then how its settings are given."""
        name = self.config.split(":")[1] if isinstance(self.config, str) else self.config.__name__
        flags = f"the flags {describe_flags(self.aliases)}, " if self.aliases else ""
        config = "--config FILE (YAML, required, repeatable" if self.config_example else "--config FILE (YAML, repeatable"
        options = "".join(f" {flag}: {kwargs['help']}." for flag, kwargs in self.options)
        return (f"{self.summary}{' Command options (not config keys):' if options else ''}{options} The settings are "
                f"{name} keys: {flags}any key as a dotted flag (--key=value) or --set KEY=VALUE, {config}; later files "
                "win); --print_config prints them.")

    def parse(self, argv: Sequence[str]) -> tuple[Any, Any]:
        """(the validated config, the parsed namespace: ``extra`` options are read from it, or the namespace of
        ``options`` when the command has them); see :func:`parse_command`."""
        options = None
        if self.options:
            options, argv = self._parse_options(argv)
        if self.config_example and not {"-h", "--help"} & set(argv) and not any(
                arg == "--config" or arg.startswith("--config=") for arg in argv):
            raise ConfigError(f"{self.prog}: give --config, e.g. --config {self.config_example}")
        config, namespace = parse_command(self.config_class(), argv, self.prog, self.description, self.extra, self.aliases)
        return config, namespace if options is None else options

    def _parse_options(self, argv: Sequence[str]) -> tuple[Any, list[str]]:
        """(the namespace of ``options``, the rest of ``argv``); a bad value is a ConfigError naming the flag."""
        import argparse

        parser = argparse.ArgumentParser(prog=self.prog, add_help=False, allow_abbrev=False, exit_on_error=False)
        for flag, kwargs in self.options:
            parser.add_argument(flag, **kwargs)
        try:
            options, rest = parser.parse_known_args(list(argv))
        except argparse.ArgumentError as error:
            raise ConfigError(f"{COMMAND_LINE} ({error.argument_name}): {error.message}") from None
        return options, rest

    def add_to(self, subparsers: Any, name: str, help: str, handler: Callable[[Any], int],
               parse: Callable[[Sequence[str]], Any]) -> Any:
        """Add subcommand ``name``; the ``recsys`` parser leaves its arguments (``--help`` too) to the config path.

        :func:`recsys.cli.main` hands them to ``handler`` as ``args.argv``; ``handler`` calls ``parse(args.argv)``
        (``config_args``; the README test calls it alone).
        """
        parser = subparsers.add_parser(name, help=help, description=self.description, add_help=False)
        parser.set_defaults(func=handler, config_args=parse)
        return parser


def split_override(text: str) -> tuple[str, str]:
    """``"trainer.max_epochs=3"`` -> ``("trainer.max_epochs", "3")``; raises ConfigError without ``=``.

    Example:
        >>> split_override("beta_grid=[0.2, 0.5]")
        ('beta_grid', '[0.2, 0.5]')
    """
    if "=" not in text or not text.split("=", 1)[0].strip():
        raise ConfigError(f"{COMMAND_LINE}: override {text!r} must look like KEY=VALUE (key.sub=value)")
    key, raw = text.split("=", 1)
    return key.strip(), raw


def override_args(overrides: Mapping[str, Any] | None) -> list[str]:
    """Dotted overrides given as Python values, as command-line flags (non-strings as JSON).

    Example:
        >>> override_args({"trainer.max_epochs": 2, "model.attention": "full", "model.lora": None})
        ['--trainer.max_epochs=2', '--model.attention=full', '--model.lora=null']
    """
    args = []
    for key, value in (overrides or {}).items():
        text = value if isinstance(value, str) else json.dumps(value)
        args.append(f"--{key}={text}")
    return args


# --------------------------------------------------------------------------- locating errors


def argv_sources(argv: Sequence[str], flags: Mapping[str, str] | None = None) -> list[tuple[str, Any]]:
    """(label, values) of every config file and every dotted flag of ``argv``, in order.

    ``flags`` maps a dotted key to the documented flag the user typed for it (``{"max_epochs": "--epochs"}``),
    so messages name that flag."""
    flags = flags or {}
    import yaml

    sources: list[tuple[str, Any]] = []
    items = list(argv)
    for i, arg in enumerate(items):
        if arg.startswith("--config"):
            path = arg.split("=", 1)[1] if "=" in arg else (items[i + 1] if i + 1 < len(items) else "")
            try:
                sources.append((path, yaml.safe_load(Path(path).read_text()) or {}))
            except (OSError, yaml.YAMLError):
                sources.append((path, {}))
        elif arg.startswith("--") and arg not in ("--help", "--print_config"):
            key = arg[2:].split("=", 1)[0]
            tree: dict[str, Any] = {}
            node = tree
            parts = key.split(".")
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = True
            sources.append((f"{COMMAND_LINE} ({flags.get(key, '--' + key)})", tree))
    return sources


def _has(tree: Any, key: str) -> bool:
    for part in key.split("."):
        if not isinstance(tree, Mapping) or part not in tree:
            return False
        tree = tree[part]
    return True


_KEY_PATTERNS = (
    (re.compile(r"Group '([^']+)' does not accept option '([^']+)'"), lambda m: f"{m.group(1)}.{m.group(2)}", "unknown key"),
    (re.compile(r"Parser key \"([^\"]+)\""), lambda m: m.group(1), None),
    (re.compile(r"Option '([^']+)' is not accepted"), lambda m: m.group(1), "unknown key"),
    (re.compile(r"Key \"([^\"]+)\" is required"), lambda m: m.group(1), "missing key"),
    (re.compile(r"arguments are required: (\S+)"), lambda m: m.group(1).rstrip(","), "missing key"),
    (re.compile(r"unrecognized arguments: (\S+)"), lambda m: m.group(1).lstrip("-").split("=")[0], "unknown key"),
)


def located_error(error: Exception, sources: Sequence[tuple[str, Any]]) -> ConfigError:
    """A :class:`ConfigError` for a jsonargparse error: ``<file or command line>: <dotted key>: <problem>``.

    Args:
        error: the parser's error.
        sources: (label, values) of every input in order (:func:`argv_sources`); the file named is the
            last one that sets the key (the one whose value won).
    """
    text = " ".join(str(error).split())
    key, kind = None, None
    for pattern, get_key, what in _KEY_PATTERNS:
        match = pattern.search(text)
        if match:
            key, kind = get_key(match), what
            break
    files = [label for label, _ in sources if not label.startswith(COMMAND_LINE)]
    where = None
    if key is not None:
        for label, tree in reversed(sources):
            if _has(tree, key) or (kind == "unknown key" and _has(tree, key.split(".")[0])):
                where = label
                break
    if where is None:
        where = ", ".join(files) if files else COMMAND_LINE
    detail = re.sub(r"^Parser key \"[^\"]+\":\s*", "", text)
    if kind == "unknown key":
        detail = f"unknown key ({detail}); see --help for the keys"
    return ConfigError(f"{where}: {key}: {detail}" if key else f"{where}: {detail}")


# --------------------------------------------------------------------------- parsing


def _build(cls: type[T], init: Any) -> T:
    return cls(**{f.name: init[f.name] for f in dataclasses.fields(cls) if f.name in init})


def _check_files(argv: Sequence[str]) -> None:
    import yaml

    for label, _ in argv_sources(argv):
        if label.startswith(COMMAND_LINE):
            continue
        path = Path(label)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            values = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML ({' '.join(str(error).split())})") from error
        if values is not None and not isinstance(values, Mapping):
            raise ConfigError(f"{path}: expected a mapping of config keys, got {type(values).__name__}")


def _parse(cls: type[T], parse: Callable[[Any], Any], sources: Sequence[tuple[str, Any]], prog: str,
           description: str = "", extra: Callable[[Any], None] | None = None, validate: bool = True) -> tuple[T, Any]:
    """Run ``parse(parser)``, build ``cls``, validate; every error becomes a located ConfigError."""
    jsonargparse = _jsonargparse()
    parser = config_parser(cls, prog, description, extra)
    files = [label for label, _ in sources if not label.startswith(COMMAND_LINE)]
    if len(files) < len(sources):
        files.append(COMMAND_LINE)
    try:
        namespace = parse(parser)
        config = _build(cls, parser.instantiate(namespace))
        check = getattr(config, "validate", None) if validate else None
        if check is not None:
            check()
    except (jsonargparse.ArgumentError, TypeError, ValueError) as error:
        raise located_error(error, sources) from None
    except ConfigError as error:  # from __post_init__ or validate(): it names the key, add where it was set
        raise ConfigError(f"{_setter(str(error), sources) or ', '.join(files)}: {error}" if files else str(error)) from None
    return config, namespace


def _setter(message: str, sources: Sequence[tuple[str, Any]]) -> str | None:
    """The last source that sets the key a check's message starts with (``"port: must be ..."``), if any."""
    match = re.match(r"([A-Za-z_][\w.]*): ", message)
    if match is None:
        return None
    return next((label for label, tree in reversed(sources) if _has(tree, match.group(1))), None)


def parse_command(
    cls: type[T],
    argv: Sequence[str],
    prog: str,
    description: str = "",
    extra: Callable[[Any], None] | None = None,
    aliases: Mapping[str, str] | None = None,
) -> tuple[T, Any]:
    """Parse a command's arguments into ``cls`` and validate it (``cls.validate()`` when defined).

    Args:
        cls: the config dataclass.
        argv: the command's arguments, e.g. ``["--config", "a.yaml", "--set", "seed=1"]``.
        prog: program name for usage lines and ``--help``.
        description: first line of ``--help``.
        extra: adds options that are not config keys (see :func:`config_parser`).
        aliases: a command's documented flags for config keys (``{"--epochs": "max_epochs"}``);
            both spellings work, and messages name the flag as typed.

    Returns:
        (the config, the parsed namespace: extra options are read from it).

    Raises:
        ConfigError: a missing or malformed file, an unknown key, a wrongly typed or invalid value,
            naming the file (or the command line) and the dotted key.

    Example:
        >>> cfg, ns = parse_command(TrainJobConfig, ["--config", "configs/setrec-t5-demo.yaml"], "recsys train")
    """
    typed = {key.split("=", 1)[0]: flag for flag, key in (aliases or {}).items()
             if any(arg == flag or arg.startswith(flag + "=") for arg in argv)}
    argv = expand_aliases(expand_set(argv), aliases)
    if "--help" not in argv and "-h" not in argv:
        _check_files(argv)
    return _parse(cls, lambda parser: parser.parse_args(argv), argv_sources(argv, typed), prog, description, extra)


def load_config(
    cls: type[T],
    paths: str | Path | Sequence[str | Path] = (),
    overrides: Mapping[str, Any] | None = None,
) -> T:
    """Read YAML files (later ones win) and dotted overrides into ``cls`` (the library entry).

    Args:
        cls: the config dataclass.
        paths: YAML file(s).
        overrides: dotted keys with Python values, e.g. ``{"trainer.max_epochs": 2}``.

    Raises:
        ConfigError: as :func:`parse_command`.

    Example:
        >>> load_config(TrainJobConfig, "configs/setrec-t5-demo.yaml", {"seed": 3}).seed
        3
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    argv = [arg for path in paths for arg in ("--config", str(path))] + override_args(overrides)
    config, _ = parse_command(cls, argv, cls.__name__)
    return config


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set ``tree["a"]["b"] = value`` for ``key="a.b"``, creating sections.

    Example:
        >>> tree = {}; set_dotted(tree, "trainer.max_epochs", 3); tree
        {'trainer': {'max_epochs': 3}}
    """
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {key!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def config_from_values(
    cls: type[T],
    values: Mapping[str, Any] | None,
    overrides: Mapping[str, Any] | None = None,
    where: str = "config",
    validate: bool = True,
) -> T:
    """Build ``cls`` from an already loaded mapping (a bundle's ``config.yaml``, a section of a YAML).

    The mapping goes through the same parser; errors name ``where`` and the dotted key.

    Args:
        cls: the config dataclass.
        values: nested values (the parsed YAML); None is an empty mapping.
        overrides: dotted keys with Python values, applied on top.
        where: what to call the mapping in messages (a file path, ``bench.yaml: methods[2].overrides``).
        validate: also run ``cls.validate()`` (cross-field checks); False checks keys and types only.

    Example:
        >>> config_from_values(SASRecConfig, {"hidden_size": 32}, where="bench.yaml: sasrec").hidden_size
        32
    """
    import copy

    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where}: expected a mapping of config keys, got {type(values).__name__}")
    tree = copy.deepcopy(dict(values))
    for key, value in (overrides or {}).items():
        set_dotted(tree, key, value)
    config, _ = _parse(cls, lambda parser: parser.parse_object(tree), [(where, tree)], where, validate=validate)
    return config


def to_dict(config: Any) -> dict[str, Any]:
    """A config as a plain nested dict (YAML/JSON ready).

    Example:
        >>> to_dict(load_config(TrainJobConfig, "configs/setrec-t5-demo.yaml"))["optim"]["lr"]
    """
    return dataclasses.asdict(config)
