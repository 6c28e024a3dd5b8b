"""Training-job configs: every shipped YAML loads and validates; overrides and errors name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys.errors import ConfigError
from recsys.training.setrec_config import (
    TrainJobConfig,
    config_from_dict,
    load_train_config,
    parse_override,
)

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("setrec-*.yaml"))
EXPECTED = {f"setrec-{b}-{d}.yaml" for b in ("t5", "qwen") for d in ("ml100k", "industrial", "demo")}


def test_every_expected_config_is_shipped():
    assert EXPECTED <= {p.name for p in CONFIGS}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_loads_and_validates(path):
    cfg = load_train_config(path)
    assert isinstance(cfg, TrainJobConfig)
    assert cfg.model.backbone in path.name
    assert Path(cfg.data).name in cfg.cf and Path(cfg.data).name in cfg.semantic  # artifacts of the same dataset
    assert cfg.out_dir.startswith("runs/")


def test_dotted_overrides_reach_nested_fields_and_are_typed():
    cfg = load_train_config(CONFIGS[0], overrides={"trainer.max_epochs": 2, "model.attention": "full", "seed": 1,
                                                   "out_dir": "runs/x", "optim.lr": 1, "model.lora": {"rank": 4}})
    assert (cfg.trainer.max_epochs, cfg.model.attention, cfg.seed, cfg.out_dir) == (2, "full", 1, "runs/x")
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert parse_override("beta_grid=[0.2, 0.5]") == ("beta_grid", [0.2, 0.5])
    assert parse_override("model.pretrained_dir=null") == ("model.pretrained_dir", None)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"trainer.max_epoch": 2}, "trainer.max_epoch"),
        ({"trainer.max_epochs": "two"}, "trainer.max_epochs"),
        ({"model.attention": "dense"}, "model.attention"),
        ({"trainer.strategy": "horovod"}, "trainer.strategy"),
        ({"negatives": "everything"}, "negatives"),
        ({"autoencoder_pretrain_epochs": -1}, "autoencoder_pretrain_epochs"),
        ({"beta_grid": [0.5, 1.5]}, "beta_grid"),
        ({"exclude_history": "maybe"}, "exclude_history"),
        ({"optim.betas": "0.9"}, "optim.betas"),
        ({"model.lora": {"rank": 4}, "model.backbone": "t5"}, "model.lora"),
    ],
)
def test_bad_values_are_refused_naming_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        config_from_dict({}, overrides)


def test_missing_and_malformed_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_train_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_train_config(bad)
    with pytest.raises(ConfigError, match="KEY=VALUE|key.sub=value"):
        parse_override("trainer.max_epochs")


def test_every_field_is_documented_and_listed_in_train_help(capsys):
    from recsys.cli import main
    from recsys.config import config_parser

    parser = config_parser(TrainJobConfig, "recsys train")
    undocumented = [a.dest for a in parser._actions if a.dest not in ("help", "config") and not (a.help or "").strip()]
    assert not undocumented
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for name in ("trainer.max_epochs", "model.attention", "optim.alpha", "trainer.strategy", "beta_grid", "model.lora",
                 "--print_config", "--resume", "Most training epochs"):
        assert name in text


def test_limit_batches_keep_int_and_float_apart():
    """An int is a number of batches and must reach Lightning as an int (1.0 would mean all batches)."""
    from recsys.training.commands import parse_train_args

    cfg, _ = parse_train_args(["--config", str(CONFIGS[0]), "--set", "trainer.limit_train_batches=1"])
    assert cfg.trainer.limit_train_batches == 1 and type(cfg.trainer.limit_train_batches) is int
    cfg, _ = parse_train_args(["--config", str(CONFIGS[0]), "--trainer.limit_train_batches=0.5"])
    assert type(cfg.trainer.limit_train_batches) is float
    assert type(load_train_config(CONFIGS[0], {"trainer.limit_val_batches": 2}).trainer.limit_val_batches) is int


def test_train_flags_compose_files_dotted_keys_and_the_set_alias(tmp_path):
    from recsys.training.commands import parse_train_args

    extra = tmp_path / "more.yaml"
    extra.write_text("trainer:\n  max_epochs: 7\nseed: 5\n")
    cfg, resume = parse_train_args(["--config", str(CONFIGS[0]), "--config", str(extra), "--set", "seed=6", "--resume"])
    assert (cfg.trainer.max_epochs, cfg.seed, resume) == (7, 6, True)
    dotted, _ = parse_train_args(["--config", str(CONFIGS[0]), "--model.attention=full", "--trainer.max_epochs", "2"])
    aliased, _ = parse_train_args(["--config", str(CONFIGS[0]), "--set", "model.attention=full", "--set=trainer.max_epochs=2"])
    assert dotted == aliased and dotted.model.attention == "full" and dotted.trainer.max_epochs == 2
    assert load_train_config([CONFIGS[0], extra]).trainer.max_epochs == 7


def test_train_errors_name_the_file_and_the_key(tmp_path):
    from recsys.training.commands import parse_train_args

    bad = tmp_path / "bad-key.yaml"
    bad.write_text("trainer:\n  max_epoch: 3\n")
    with pytest.raises(ConfigError, match=r"bad-key\.yaml: trainer\.max_epoch: unknown key"):
        parse_train_args(["--config", str(CONFIGS[0]), "--config", str(bad)])
    wrong = tmp_path / "wrong-type.yaml"
    wrong.write_text("optim:\n  lr: fast\n")
    with pytest.raises(ConfigError, match=r"wrong-type\.yaml: optim\.lr"):
        parse_train_args(["--config", str(wrong)])
    with pytest.raises(ConfigError, match=r"command line.*trainer\.max_epochs"):
        parse_train_args(["--config", str(CONFIGS[0]), "--trainer.max_epochs=three"])
    with pytest.raises(ConfigError, match="allow_abbrev|unknown key"):
        parse_train_args(["--config", str(CONFIGS[0]), "--trainer.max_epo=3"])


def test_print_config_prints_the_composed_config(capsys):
    import yaml

    from recsys.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["train", "--config", str(CONFIGS[0]), "--set", "seed=9", "--print_config"])
    assert stop.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["seed"] == 9 and printed["trainer"]["max_epochs"] == load_train_config(CONFIGS[0]).trainer.max_epochs
    assert load_train_config(CONFIGS[0], {"seed": 9}) == config_from_dict({k: v for k, v in printed.items()
                                                                            if k not in ("config", "resume")})


def test_missing_artifacts_and_resume_without_checkpoint_are_named(tmp_path):
    from recsys.errors import ArtifactError
    from recsys.training.job import train

    cfg = config_from_dict({"data": str(tmp_path / "no-data"), "out_dir": str(tmp_path / "job"),
                            "tracking": {"enabled": False}})
    with pytest.raises(ArtifactError, match="last.ckpt does not exist"):
        train(cfg, resume=True)
    with pytest.raises(ArtifactError, match="no-data"):
        train(cfg)
