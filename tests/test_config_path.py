"""Every shipped YAML and the config commands' flags go through the one config path (recsys.config).

A wrong type or an unknown key, in a file or on the command line, fails with the file (or
"command line") and the dotted key named; --print_config prints what the command would run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from recsys.cli import main
from recsys.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
#: Shipped YAML -> the command that reads it.
SHIPPED = {path: ("train",) if path.name.startswith("setrec-") else ("tune", "rere") if path.name == "rere.yaml"
           else ("benchmark", "quality") for path in sorted(CONFIGS.glob("*.yaml"))}
#: The section and an int field of each command's config, for the wrong-type and unknown-key checks.
PROBES = {("train",): ("trainer", "max_epochs"), ("tune", "rere"): ("rere", "group_size"),
          ("benchmark", "quality"): ("evaluation", "batch_size")}


def _parse(command: tuple[str, ...], argv: list[str]):
    if command == ("train",):
        from recsys.training.commands import parse_train_args

        return parse_train_args(argv)[0]
    if command == ("tune", "rere"):
        from recsys.tuning.commands import parse_tune_args

        return parse_tune_args(["--bundle", "b", "--data", "d", *argv])
    from recsys.evaluation.commands import parse_quality_args

    return parse_quality_args(argv)[0]


def test_every_shipped_yaml_is_read_by_a_command():
    assert SHIPPED and all(path.name.startswith(("setrec-", "bench-")) or path.name == "rere.yaml" for path in SHIPPED)


@pytest.mark.parametrize("path", list(SHIPPED), ids=lambda p: p.name)
def test_shipped_yaml_loads_and_refuses_an_unknown_key_and_a_wrong_type_naming_file_and_key(path, tmp_path):
    command = SHIPPED[path]
    assert _parse(command, ["--config", str(path)]) is not None
    values = yaml.safe_load(path.read_text())
    section, field = PROBES[command]

    unknown = tmp_path / f"unknown-{path.name}"
    unknown.write_text(yaml.safe_dump({**values, section: {**values.get(section, {}), "no_such_key": 1}}))
    with pytest.raises(ConfigError, match=rf"unknown-{path.name}: {section}\.no_such_key: unknown key"):
        _parse(command, ["--config", str(unknown)])

    wrong = tmp_path / f"wrong-{path.name}"
    wrong.write_text(yaml.safe_dump({**values, section: {**values.get(section, {}), field: "three"}}))
    with pytest.raises(ConfigError, match=rf"wrong-{path.name}: {section}\.{field}: Expected a <class 'int'>"):
        _parse(command, ["--config", str(wrong)])

    # composing: a second file overrides the first; the error names the file that set the bad value
    with pytest.raises(ConfigError, match=rf"wrong-{path.name}: {section}\.{field}"):
        _parse(command, ["--config", str(path), "--config", str(wrong)])


@pytest.mark.parametrize("path", list(SHIPPED), ids=lambda p: p.name)
def test_command_flags_refuse_an_unknown_key_and_a_wrong_type(path, capsys):
    section, field = PROBES[SHIPPED[path]]
    key = f"{section}.{field}"
    command = list(SHIPPED[path]) + (["--bundle", "b", "--data", "d"] if SHIPPED[path] == ("tune", "rere") else [])
    assert main([*command, "--config", str(path), f"--{key}=three"]) == 2
    assert f"command line (--{key}): {key}: Expected a <class 'int'>" in capsys.readouterr().err
    assert main([*command, "--config", str(path), "--set", f"{key}x=3"]) == 2
    assert f"{key}x: unknown key" in capsys.readouterr().err
    # allow_abbrev=False: a prefix of a key is not taken for the key
    assert main([*command, "--config", str(path), f"--{key[:-2]}=3"]) == 2
    assert "unknown key" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["train"], ["benchmark", "quality"]], ids=" ".join)
def test_print_config_prints_the_composed_config(command, capsys):
    path = next(p for p, c in SHIPPED.items() if list(c) == command)
    key, section, field = (("seed=7", "seed", None) if command == ["train"]
                           else ("evaluation.batch_size=7", "evaluation", "batch_size"))
    with pytest.raises(SystemExit) as stop:
        main([*command, "--config", str(path), "--set", key, "--print_config"])
    assert stop.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert (printed[section] if field is None else printed[section][field]) == 7


def test_benchmark_method_overrides_are_typed_by_their_kind(tmp_path):
    from recsys.evaluation.benchmark_config import parse_benchmark_config

    base = {"dataset": "x", "data": {"source": "ml-100k"}}
    with pytest.raises(ConfigError, match=r"methods\[0\] \(s\)\.overrides: hidden_size"):
        parse_benchmark_config({**base, "methods": [{"name": "s", "kind": "sasrec", "overrides": {"hidden_size": "big"}}]})
    with pytest.raises(ConfigError, match=r"methods\[0\] \(t\)\.overrides: no_such: unknown key"):
        parse_benchmark_config({**base, "methods": [{"name": "t", "kind": "tiger", "overrides": {"no_such": 1}}]})
    with pytest.raises(ConfigError, match=r"methods\[0\] \(r\)\.overrides: model\.attention"):
        parse_benchmark_config({**base, "setrec": {"base": {"model": {"backbone": "t5"}}},
                                "methods": [{"name": "r", "kind": "setrec", "overrides": {"model.attention": "dense"}}]})
    with pytest.raises(ConfigError, match=r"data\.kcore"):
        parse_benchmark_config({**base, "data": {"source": "ml-100k", "kcore": "five"},
                                "methods": [{"name": "p", "kind": "popularity"}]})
    # a string is read as YAML, as on the command line: "no" is false (bool("no") would be true)
    config = parse_benchmark_config({**base, "evaluation": {"exclude_history": "no"},
                                     "methods": [{"name": "p", "kind": "popularity"}]})
    assert config.evaluation.exclude_history is False


# --------------------------------------------------------------------------- the other commands and loaders

TRAIN_YAML = str(CONFIGS / "setrec-t5-demo.yaml")
BENCH_YAML = str(CONFIGS / "bench-ml100k.yaml")

#: Every command parsed through recsys.config (a ConfigCommand): (argv before the config keys, its documented
#: flag for an int key (the dotted key where it has none), that key, a sample of valid flags and command options).
OTHER_COMMANDS = {
    "train": (["train", "--config", TRAIN_YAML], "--trainer.max_epochs", "trainer.max_epochs",
              ["--resume", "--set", "seed=3", "--model.attention=full"]),
    "benchmark quality": (["benchmark", "quality", "--config", BENCH_YAML], "--evaluation.batch_size",
                          "evaluation.batch_size", ["--seeds", "1", "--methods", "popularity", "--out", "o", "--work-dir", "w",
                                                    "--no-mlflow", "--set", "seeds=[4]"]),
    "benchmark merge": (["benchmark", "merge", "--config", BENCH_YAML, "--run", "a.json:w"], "--evaluation.batch_size",
                        "evaluation.batch_size", ["--run", "b.json:x", "--out", "o", "--set", "evaluation.ks=[5]"]),
    "tokenize cf": (["tokenize", "cf", "--data", "d", "--out", "o"], "--epochs", "max_epochs", ["--dim", "8", "--set", "lr=0.01"]),
    "data prepare": (["data", "prepare", "--source", "s", "--out", "o"], "--max-text-chars", "max_text_chars",
                     ["--kcore", "0", "--min-rating", "4", "--set", "split=temporal"]),
    "evaluate": (["evaluate", "--bundle", "b", "--data", "d"], "--batch-size", "batch_size",
                 ["--no-exclude-history", "--allow-other-data", "--split", "valid"]),
    "tokenize semantic": (["tokenize", "semantic", "--data", "d", "--out", "o"], "--batch-size", "encoder.batch_size",
                          ["--no-cache", "--no-progress", "--encoder", "some/dir", "--set", "encoder.max_length=32"]),
    "tokenize ids": (["tokenize", "ids", "--data", "d", "--semantic", "s", "--out", "o"], "--levels", "levels",
                     ["--codes", "4", "--backend", "numpy", "--set", "niter=5"]),
    "tokenize table": (["tokenize", "table", "--data", "d", "--cf", "c", "--semantic", "s", "--out", "o"], "--num-tokens",
                       "num_tokens", ["--token-dim", "8", "--pretrain-epochs", "1", "--set", "pretrain_lr=0.01"]),
    "tokenize health": (["tokenize", "health", "--table", "t"], "--max-pairwise-items", "max_pairwise_items",
                        ["--threshold", "0.9", "--set", "threshold=0.95"]),
    "tune rere": (["tune", "rere", "--bundle", "b", "--data", "d"], "--rere.group_size", "rere.group_size",
                  ["--out", "o", "--set", "rere.lr=0.00002", "--rere.sampling=sample"]),
    "serve": (["serve", "--bundle", "b"], "--max-batch-size", "batcher.max_batch_size",
              ["--max-wait-ms", "1", "--index", "hnsw", "--port", "9000", "--admin-token-file", "t", "--set", "index.nprobe=4"]),
}


def _nested(key: str, value):
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def _lookup(tree, key: str):
    for part in key.split("."):
        tree = tree[part]
    return tree


@pytest.mark.parametrize("name", list(OTHER_COMMANDS))
def test_other_commands_refuse_wrong_types_and_unknown_keys_in_flags_and_files(name, tmp_path, capsys):
    prefix, flag, key, valid = OTHER_COMMANDS[name]
    assert main([*prefix, f"{flag}", "three"]) == 2
    assert f"command line ({flag}): {key}: Expected a <class 'int'>" in capsys.readouterr().err
    assert main([*prefix, f"--{key}=three"]) == 2
    assert f"command line (--{key}): {key}: Expected a <class 'int'>" in capsys.readouterr().err
    assert main([*prefix, "--set", f"{key}x=3"]) == 2
    assert f"{key}x: unknown key" in capsys.readouterr().err
    assert main([*prefix, f"--{key[:-2]}=3"]) == 2  # allow_abbrev=False
    assert "unknown key" in capsys.readouterr().err
    for bad, problem in ((key, "Expected a <class 'int'>"), ("no_such_key", "unknown key")):
        path = tmp_path / f"{name.replace(' ', '-')}-{bad}.yaml"
        path.write_text(yaml.safe_dump(_nested(bad, "three" if bad == key else 1)))
        assert main([*prefix, "--config", str(path)]) == 2
        assert f"{path}: {bad}: {problem}" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:  # the documented flags, dotted keys and --set compose; --print_config shows them
        main([*prefix, *valid, flag, "7", "--print_config"])
    assert stop.value.code == 0
    assert _lookup(yaml.safe_load(capsys.readouterr().out), key) == 7


@pytest.mark.parametrize("name", list(OTHER_COMMANDS))
def test_a_file_value_is_honoured_and_the_command_line_beats_the_file(name, tmp_path, capsys):
    prefix, flag, key, _ = OTHER_COMMANDS[name]
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump(_nested(key, 5)))

    def printed(*args) -> int:
        with pytest.raises(SystemExit) as stop:
            main([*prefix, "--config", str(path), *args, "--print_config"])
        assert stop.value.code == 0
        return _lookup(yaml.safe_load(capsys.readouterr().out), key)

    assert printed() == 5
    assert printed(flag, "6") == 6
    assert printed(f"--{key}=7") == 7
    assert printed("--set", f"{key}=8") == 8


def test_tokenize_table_seed_seeds_the_table_and_its_pretraining(tmp_path):
    from recsys.tokenizers.commands import parse_table_args

    base = ["--data", "d", "--cf", "c", "--semantic", "s", "--out", "o"]
    table = parse_table_args([*base, "--seed", "3", "--num-tokens", "2", "--pretrain-epochs", "4"]).table_config()
    assert (table.seed, table.pretrain.seed, table.num_semantic_tokens, table.pretrain.epochs) == (3, 3, 2, 4)
    path = tmp_path / "table.yaml"
    path.write_text("seed: 5\npretrain_lr: 0.5\n")
    table = parse_table_args([*base, "--config", str(path)]).table_config()
    assert (table.seed, table.pretrain.seed, table.pretrain.lr) == (5, 5, 0.5)
    with pytest.raises(ConfigError, match=r"command line \(--num-tokens\): num_tokens: must be >= 1, got 0"):
        parse_table_args([*base, "--num-tokens", "0"])
    with pytest.raises(ConfigError, match=rf"{path}: pretrain_epochs: must be >= 0, got -1"):
        path.write_text("pretrain_epochs: -1\n")
        parse_table_args([*base, "--config", str(path)])


def test_tokenize_ids_backend_is_a_closed_choice():
    from recsys.tokenizers.commands import parse_ids_args

    base = ["--data", "d", "--semantic", "s", "--out", "o"]
    config, folders = parse_ids_args([*base, "--backend", "numpy", "--levels", "2"])
    assert (config.backend, config.levels, folders.semantic) == ("numpy", 2, "s")
    with pytest.raises(ConfigError, match=r"command line \(--backend\): backend: .*Literal"):
        parse_ids_args([*base, "--backend", "scipy"])
    with pytest.raises(ConfigError, match=r"command line \(--levels\): levels: must be >= 1, got 0"):
        parse_ids_args([*base, "--levels", "0"])


def test_tokenize_add_items_flags_file_and_errors(tmp_path, capsys):
    from recsys.tokenizers.commands import parse_add_items_args

    base = ["--table", "t", "--items", "new.jsonl"]
    config = parse_add_items_args(base)
    assert (config.use_cache, config.cache_dir, config.out) == (True, None, None)
    config = parse_add_items_args([*base, "--no-cache", "--cache-dir", "c", "--out", "o"])
    assert (config.use_cache, config.cache_dir, config.out) == (False, "c", "o")
    path = tmp_path / "add.yaml"
    path.write_text("use_cache: false\ncache_dir: from-file\n")
    config = parse_add_items_args([*base, "--config", str(path), "--cache-dir", "from-flag"])
    assert (config.use_cache, config.cache_dir) == (False, "from-flag")
    assert main(["tokenize", "add-items", *base, "--set", "use_cache=maybe"]) == 2
    assert "command line (--use_cache): use_cache: Expected a <class 'bool'>" in capsys.readouterr().err
    path.write_text("no_such_key: 1\n")
    assert main(["tokenize", "add-items", *base, "--config", str(path)]) == 2
    assert f"{path}: no_such_key: unknown key" in capsys.readouterr().err
    assert main(["tokenize", "add-items", *base, "--no-cache=1"]) == 2
    assert "command line (--no-cache): use_cache: --no-cache takes no value" in capsys.readouterr().err
    assert main(["tokenize", "add-items", "--table", "t"]) == 2
    assert "items" in capsys.readouterr().err


def test_serve_checks_name_the_key(tmp_path, capsys):
    from recsys.serving.commands import parse_serve_args

    config = parse_serve_args(["--model", "models:/setrec@champion", "--max-queue", "8", "--index", "ivf", "--threads", "0"])
    assert (config.model, config.batcher.max_queue, config.index.kind, config.threads) == ("models:/setrec@champion", 8, "ivf", 0)
    for argv, message in (
        ([], "bundle: give exactly one of --bundle DIR or --model"),
        (["--bundle", "b", "--model", "m"], "command line (--bundle): bundle: give exactly one of"),
        (["--bundle", "b", "--port", "0"], "command line (--port): port: must be 1..65535, got 0"),
        (["--bundle", "b", "--drain-s", "-1"], "command line (--drain-s): drain_s: must be >= 0, got -1.0"),
        (["--bundle", "b", "--max-queue", "0"], "command line (--max-queue): batcher.max_queue: must be >= 1, got 0"),
        (["--bundle", "b", "--engine", "onnx"], "command line (--engine): engine: Expected a typing.Literal"),
        (["--bundle", "b", "--index", "lsh"], "command line (--index): index.kind: Expected a typing.Literal"),
        (["--bundle", "b", "--log-level", "loud"], "command line (--log-level): log_level: Expected a typing.Literal"),
    ):
        assert main(["serve", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump({"bundle": "b", "batcher": {"max_wait_ms": "soon"}}))
    assert main(["serve", "--config", str(path)]) == 2
    assert f"{path}: batcher.max_wait_ms: Expected a <class 'float'>" in capsys.readouterr().err


def test_bundle_model_config_goes_through_the_config_path():
    """SetRecConfig.from_dict (a bundle's model_config) checks keys and types, naming where and the key."""
    from recsys.models.setrec import LoraSettings, SetRecConfig

    config = SetRecConfig(backbone="qwen", preset="tiny", lora=LoraSettings(rank=4))
    assert SetRecConfig.from_dict(config.to_dict()) == config
    values = SetRecConfig(backbone="t5", preset="tiny").to_dict()
    with pytest.raises(ConfigError, match=r"b/manifest.json: model_config: num_semantic_tokens: Expected a <class 'int'>"):
        SetRecConfig.from_dict({**values, "num_semantic_tokens": "four"}, where="b/manifest.json: model_config")
    with pytest.raises(ConfigError, match=r"model_config: hidden: unknown key"):
        SetRecConfig.from_dict({**values, "hidden": 1}, where="model_config")
    with pytest.raises(ConfigError, match=r"model_config: backbone: Expected a typing.Literal"):
        SetRecConfig.from_dict({**values, "backbone": "gpt"}, where="model_config")


def test_prepare_config_formats_are_the_readers():
    from typing import get_args

    from recsys.pipelines.prepare import SourceFormat
    from recsys.pipelines.readers import FORMATS

    assert get_args(SourceFormat) == FORMATS


def test_demo_set_overrides_are_checked_before_any_step(tmp_path, capsys):
    """`recsys demo --set KEY=VALUE` goes through the training config's path at once (nothing is prepared first)."""
    config = str(next(p for p, c in SHIPPED.items() if c == ("train",)))
    base = ["demo", "--root", str(tmp_path / "runs"), "--config", config, "--no-serve"]
    assert main([*base, "--set", "trainer.max_epochs=three"]) == 2
    assert "command line (--trainer.max_epochs): trainer.max_epochs: Expected a <class 'int'>" in capsys.readouterr().err
    assert main([*base, "--set", "trainer.no_such_key=1"]) == 2
    assert "trainer.no_such_key: unknown key" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_switch_flags_are_aliases_of_bool_keys():
    from recsys.evaluation.commands import parse_evaluate_args

    base = ["--bundle", "b", "--data", "d"]
    assert parse_evaluate_args(base).exclude_history is True and parse_evaluate_args(base).allow_other_data is False
    config = parse_evaluate_args([*base, "--no-exclude-history", "--allow-other-data"])
    assert config.exclude_history is False and config.allow_other_data is True
    assert parse_evaluate_args([*base, "--set", "exclude_history=false"]).exclude_history is False
    with pytest.raises(ConfigError, match=r"command line \(--no-exclude-history\): exclude_history: .* takes no value"):
        parse_evaluate_args([*base, "--no-exclude-history=1"])
    with pytest.raises(ConfigError, match=r"command line \(--batch-size\): batch_size: must be >= 1, got 0"):
        parse_evaluate_args([*base, "--batch-size", "0"])


def test_every_config_command_is_declared_once_as_a_config_command():
    """Each subcommand that parses its own arguments does it through a ConfigCommand (its --help text says so)."""
    import argparse

    from recsys.cli import build_parser

    def walk(parser, words):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk(sub, [*words, name])
        if parser._defaults.get("config_args"):
            yield " ".join(words), parser

    found = dict(walk(build_parser(), []))
    assert set(found) == set(OTHER_COMMANDS) | {"tokenize add-items"}
    for name, parser in found.items():
        assert "--print_config prints them." in parser.description, name


def test_recsys_help_imports_no_config_library_and_no_heavy_module():
    import subprocess
    import sys

    code = ("import sys; from recsys.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('jsonargparse', 'numpy', 'torch', 'polars', 'yaml') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_benchmark_quality_command_options_are_read_before_the_config(capsys):
    from recsys.evaluation.commands import parse_quality_args

    config, options = parse_quality_args(["--config", BENCH_YAML, "--seeds", "2", "--methods", "a,b", "--out", "o",
                                          "--work-dir", "w", "--no-mlflow", "--set", "seeds=[4,5,6]"])
    assert (options.seeds, options.methods, options.out, options.work_dir, options.no_mlflow) == (2, "a,b", "o", "w", True)
    assert config.seeds == [4, 5, 6]  # the key seeds (a list) is apart from --seeds N (take the first N)
    config, options = parse_quality_args(["--config", BENCH_YAML])
    assert (options.seeds, options.out, options.no_mlflow) == (None, "benchmarks/results", False)
    assert main(["benchmark", "quality", "--config", BENCH_YAML, "--seeds", "three"]) == 2
    assert "command line (--seeds): invalid int value: 'three'" in capsys.readouterr().err
    assert main(["benchmark", "quality", "--seeds", "1"]) == 2
    assert "recsys benchmark quality: give --config, e.g. --config configs/bench-ml100k.yaml" in capsys.readouterr().err
    assert main(["benchmark", "quality", "--config", BENCH_YAML, "--seeds", "9", "--set", "seeds=[0]",
                 "--no-mlflow"]) == 2  # checked by the handler before anything runs
    assert "--seeds must lie in 1..1" in capsys.readouterr().err


def test_benchmark_merge_options_and_errors(tmp_path, capsys):
    from recsys.evaluation.commands import parse_merge_args

    config, options = parse_merge_args(["--config", BENCH_YAML, "--run", "a.json:w", "--run=b.json:x", "--out", "o"])
    assert (config.dataset, options.run, options.out) == ("ml-100k", ["a.json:w", "b.json:x"], "o")
    assert parse_merge_args(["--config", BENCH_YAML, "--run", "a.json:w"])[1].out == "benchmarks/results"
    assert main(["benchmark", "merge", "--run", "a.json:w"]) == 2
    assert "recsys benchmark merge: give --config, e.g. --config configs/bench-ml100k.yaml" in capsys.readouterr().err
    assert main(["benchmark", "merge", "--config", BENCH_YAML]) == 2
    assert "run: the following arguments are required" in capsys.readouterr().err
    assert main(["benchmark", "merge", "--config", BENCH_YAML, "--run", f"{tmp_path}/none.json:{tmp_path}"]) == 2
    assert "give REPORT.json:WORK_DIR of a finished run" in capsys.readouterr().err
