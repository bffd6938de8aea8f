"""Config loading: defaults, files, overrides, and the errors that name the key."""

import dataclasses

import pytest
import torch
import yaml

from loradora.config import Config, ConfigError, load_config, resolve_device
from conftest import REPO


def test_default_yaml_matches_the_dataclass_defaults():
    assert yaml.safe_load((REPO / "configs" / "default.yaml").read_text()) == dataclasses.asdict(Config())


def test_smoke_config_uses_a_subset():
    config = load_config(REPO / "configs" / "smoke.yaml")
    assert config.data.train_subset and config.data.test_subset
    assert config.lora == Config().lora  # keys it leaves out keep their defaults


def test_overrides_are_typed_by_their_key():
    config = load_config(None, ["lora.rank=8", "dora.alpha=16", "finetune.methods=[dora]",
                                "pretrain.lr=1e-3", "output.run_name=001", "data.train_subset=null"])
    assert config.lora.rank == 8 and config.dora.alpha == 16.0 and isinstance(config.dora.alpha, float)
    assert config.finetune.methods == ["dora"]
    assert config.pretrain.lr == 1e-3  # YAML alone would read 1e-3 as text
    assert config.output.run_name == "001"  # a string key keeps its text as typed
    assert config.data.train_subset is None


def test_yaml_float_without_a_dot_is_read_as_a_number(tmp_path):
    path = tmp_path / "lr.yaml"
    path.write_text("finetune:\n  lr: 1e-3\n")
    assert load_config(path).finetune.lr == 1e-3


@pytest.mark.parametrize("override,message", [
    (["lora.rnak=8"], "unknown key lora.rnak; did you mean lora.rank?"),
    (["bogus=1"], "unknown key bogus"),
    (["lora.rank=four"], "lora.rank: expected an integer, got 'four'"),
    (["lora.rank=2.5"], "lora.rank: expected an integer"),
    (["dora.detach_norm=maybe"], "dora.detach_norm: expected true or false"),
    (["finetune.methods=lora"], "finetune.methods: expected a list"),
    (["finetune.methods=[lora, qlora]"], "finetune.methods: got ['lora', 'qlora']"),
    (["lora.rank=0"], "lora.rank: got 0, allowed: an integer >= 1"),
    (["pretrain.lr=nan"], "pretrain.lr: got nan, allowed: a finite number"),
    (["lora.scaling=linear"], "lora.scaling: got 'linear', allowed: one of standard, rslora, alpha"),
    (["dora.dropout=1"], "dora.dropout: got 1.0, allowed: a number from 0 up to, not including, 1"),
    (["lora.dropout=-0.1"], "lora.dropout: got -0.1, allowed: a number from 0"),
    (["lora=3"], "lora: is a section"),
    (["rank"], "not of the form key.sub=value"),
])
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError) as error:
        load_config(None, override)
    assert message in str(error.value)


def test_bad_files_are_named(tmp_path):
    empty, listed, broken = tmp_path / "empty.yaml", tmp_path / "list.yaml", tmp_path / "broken.yaml"
    empty.write_text("")
    listed.write_text("- a\n- b\n")
    broken.write_text("lora:\n  rank: [4\n")
    for path, message in [(empty, "empty"), (listed, "must be a mapping"), (broken, "not valid YAML"),
                          (tmp_path / "missing.yaml", "cannot read config file")]:
        with pytest.raises(ConfigError, match=message):
            load_config(path)


def test_device_must_exist():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            resolve_device("cuda")
