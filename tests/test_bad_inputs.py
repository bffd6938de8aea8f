"""Every bad input gets one line naming its key, exit code 2 and no run folder.

The values are generated for every key of the schema (the dataclasses of loradora/config.py), so a
key added later is covered without editing this file. Whether a value must be refused is decided
from the key's type alone: a value of another type, an integer beyond 64 bits or a non-finite
float. A value of the right type may still be refused by a range check, but only with its key named.
"""

import dataclasses
import math
import subprocess
import sys
import types
import typing

import pytest
import yaml

import dora_example
from conftest import REPO
from loradora.config import Config, ConfigError, load_config

HUGE = 10**400
SHAPES = {  # what YAML can put where a key's value goes
    "empty list": [], "list": [1, 2], "nested list": [[1]], "list of null": [None], "list of huge": [HUGE],
    "mapping": {"a": 1}, "empty mapping": {}, "null": None, "huge integer": HUGE, "huge negative": -HUGE,
    "huge float": math.inf, "nan": math.nan, "text": "x", "boolean": True, "integer": 3, "float": 0.5,
}


def schema_keys(cls=Config, prefix: str = ""):
    """(key, type) of every key of the schema: sections and the keys inside them."""
    for name, hint in typing.get_type_hints(cls).items():
        yield prefix + name, hint
        if dataclasses.is_dataclass(hint):
            yield from schema_keys(hint, f"{prefix}{name}.")


KEYS = dict(schema_keys())


def conforms(value, hint) -> bool:
    """Whether ``value`` is of the type ``hint`` names, as a run can use it: 64-bit integers,
    finite floats (an integer is a float too), a section's mapping of its own keys."""
    if dataclasses.is_dataclass(hint):
        fields = typing.get_type_hints(hint)
        return isinstance(value, dict) and all(k in fields and conforms(v, fields[k]) for k, v in value.items())
    if isinstance(hint, types.UnionType):  # X | None
        return any(conforms(value, arg) for arg in typing.get_args(hint))
    if typing.get_origin(hint) is list:
        return isinstance(value, list) and all(conforms(item, typing.get_args(hint)[0]) for item in value)
    if hint is float and type(value) is int:
        return abs(value) < 2**63
    if hint is int and type(value) is int:
        return -(2**63) <= value < 2**63
    if hint is float and type(value) is float:
        return math.isfinite(value)
    return hint is type(None) and value is None or type(value) is hint


def nest(key: str, value) -> dict:
    """{'lora': {'rank': value}} for 'lora.rank'."""
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def names_key(message: str, key: str) -> bool:
    return message.startswith((f"{key}:", f"{key}[", f"unknown key {key}."))


def one_line_error(capsys) -> str:
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert captured.out == "", captured.out  # not even the resolved config: nothing ran
    return err.removeprefix("error: ")


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project folder of its own for dora_example.main: its default results/ must stay unmade."""
    monkeypatch.setattr(dora_example, "PROJECT", tmp_path / "project")
    return tmp_path / "project"


def cli(tmp_path, *argv) -> int:
    return dora_example.main([*argv, f"output.dir={tmp_path / 'out'}"])


def test_the_schema_walk_sees_every_key_of_the_default_config():
    def leaves(mapping, prefix=""):
        for name, value in mapping.items():
            yield from leaves(value, f"{prefix}{name}.") if isinstance(value, dict) else [prefix + name]

    default = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())
    assert set(leaves(default)) == {key for key, hint in KEYS.items() if not dataclasses.is_dataclass(hint)}


@pytest.mark.parametrize("key", list(KEYS))
def test_any_value_in_a_config_file_is_used_or_refused_in_one_line_naming_the_key(tmp_path, capsys, project, key):
    hint = KEYS[key]
    for shape, value in SHAPES.items():
        path = tmp_path / f"{shape}.yaml"
        path.write_text(yaml.safe_dump(nest(key, value)))
        try:
            load_config(path)
            message = None
        except ConfigError as error:
            message = str(error)
        if not conforms(value, hint):
            assert message is not None, f"{key}: {shape} ({value!r}) was accepted"
            assert names_key(message, key), f"{shape}: {message}"
        if message is not None:  # a value of the right type may break a range that involves another key
            assert any(names_key(message, other) for other in KEYS), f"{shape}: {message}"
            assert dora_example.main(["--config", str(path)]) == 2  # no override: the file's value counts
            assert one_line_error(capsys) == message
            assert not project.exists()


@pytest.mark.parametrize("key", [key for key, hint in KEYS.items() if str not in (hint, *typing.get_args(hint))])
def test_any_value_on_the_command_line_is_used_or_refused_naming_the_key(key):
    # A key of type str takes the text as typed (output.run_name=001 stays "001"), so it is left out.
    for shape, value in SHAPES.items():
        text = yaml.safe_dump(value, default_flow_style=True).removesuffix("\n...\n").strip()
        try:
            load_config(None, [f"{key}={text}"])
        except ConfigError as error:
            assert any(names_key(str(error), other) for other in KEYS), f"{shape}: {error}"
            assert conforms(value, KEYS[key]) or names_key(str(error), key), f"{shape}: {error}"
        else:
            assert conforms(value, KEYS[key]), f"{key}={text} was accepted"


def test_text_that_is_not_yaml_on_the_command_line(tmp_path, capsys):
    assert cli(tmp_path, "lora.rank=[4") == 2
    assert one_line_error(capsys) == "lora.rank: expected an integer, got '[4', which is not valid YAML"


def test_an_empty_rank_sweep(tmp_path, capsys):
    assert cli(tmp_path, "experiment.ranks=[]") == 2
    assert one_line_error(capsys).startswith("experiment.ranks: got [], allowed: null or a non-empty list")


@pytest.mark.parametrize("content,message", [
    (b"\xff\xfe\x00l\x00o\x00r\x00a", "not a YAML text file: byte 0xff at offset 0 is not UTF-8"),  # UTF-16
    (b"lora:\n  rank: 4\xe9\n", "not a YAML text file: byte 0xe9 at offset 15 is not UTF-8"),      # Latin-1
    (bytes(range(256)), "not a YAML text file: byte 0x80 at offset 128 is not UTF-8"),           # binary
    (b"\x00\x01\x02\x03", "not valid YAML"),                                                    # UTF-8, not text
    (b"seed: 1\n\x1b[31m", "not valid YAML"),
    (b"42\n", "the top level must be a mapping of keys, got int"),
    (b"? [a]\n: 1\n", "not valid YAML"),                                                        # unhashable key
    (b"!!python/object:os.system {}\n", "not valid YAML"),
    (b"1: 2\n", "unknown key 1"),
])
def test_a_config_file_of_any_content(tmp_path, capsys, content, message):
    (tmp_path / "bad.yaml").write_bytes(content)
    assert cli(tmp_path, "--config", str(tmp_path / "bad.yaml")) == 2
    assert message in one_line_error(capsys)
    assert not (tmp_path / "out").exists()


def test_a_folder_as_config_file(tmp_path, capsys):
    assert cli(tmp_path, "--config", str(tmp_path)) == 2
    assert "cannot read config file" in one_line_error(capsys)


def test_a_real_process_with_a_binary_config_file(tmp_path):
    (tmp_path / "bad.yaml").write_bytes(bytes(range(256)))
    result = subprocess.run([sys.executable, str(REPO / "dora_example.py"), "--config", str(tmp_path / "bad.yaml"),
                             f"output.dir={tmp_path / 'out'}"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == f"error: {tmp_path / 'bad.yaml'}: not a YAML text file: byte 0x80 at offset 128 is not UTF-8\n"
    assert not (tmp_path / "out").exists()
