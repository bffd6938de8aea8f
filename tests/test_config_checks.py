"""Range checks: each declared once, on its section, and inherited by the sections that subclass it.

FinetuneConfig subclasses PretrainConfig and DoRAConfig subclasses LoRAConfig, so a check declared on
the parent must refuse a bad value under both keys (pretrain.lr and finetune.lr), naming the key that
holds it.
"""

import dataclasses
import types
import typing

import pytest
import yaml

from loradora.config import Config, ConfigError, DoRAConfig, FinetuneConfig, LoRAConfig, PretrainConfig, load_config
from test_bad_inputs import KEYS, nest

PAIRS = [("pretrain", "finetune"), ("lora", "dora")]

# Values of each type to try against the range checks; between them they break every check declared
# today (a test below fails, asking for one more, when a new check is out of their reach).
CANDIDATES = {
    int: [-1, 0, 10**6], float: [-1.0, 0.0, 1.0], str: ["", "..", "bogus", "a\0b"],
    list[int]: [[], [0], [1, 1], [10**6]], list[float]: [[], [-1.0]], list[str]: [["bogus"], ["lora", "lora"]],
}

# Every key whose value validate() can refuse for its range, as it was before the checks moved onto the
# sections: a rule lost (or gained) on the way shows here.
RANGE_CHECKED = {
    "precision",
    "data.root", "data.train_subset", "data.test_subset", "data.validation_size",
    "model.hidden_sizes",
    "pretrain.epochs", "pretrain.batch_size", "pretrain.lr", "pretrain.max_loss",
    "finetune.epochs", "finetune.batch_size", "finetune.lr", "finetune.max_loss", "finetune.methods",
    "finetune.task", "finetune.steps", "finetune.train_subset", "finetune.validation_size",
    "lora.rank", "lora.alpha", "lora.scaling", "lora.dropout", "lora.b_lr_ratio",
    "dora.rank", "dora.alpha", "dora.scaling", "dora.dropout", "dora.b_lr_ratio", "dora.magnitude_lr_ratio",
    "experiment.seeds", "experiment.ranks", "experiment.population", "experiment.lrs", "experiment.tuning_seeds",
    "experiment.b_lr_ratios", "experiment.magnitude_lr_ratios", "map.second_tuning_seeds", "map.fixed_passes",
    "experiment.margin", "experiment.launcher",
    "analysis.every_n_batches", "cache.dir", "log.every_n_batches", "output.dir", "output.run_name", "map.rotate_degrees",
    "ray.address",
}


def candidates(hint) -> list:
    """The values to try for a key of type ``hint``: those of each member of a union (int | None)."""
    members = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    return [value for member in members for value in CANDIDATES.get(member, [])]


def declared(section) -> list[tuple[str, str]]:
    """(field, allowed) of each check that ``section`` declares, in the order they are checked."""
    return [(key, allowed) for key, _, allowed in section.checks(Config())]


def breaking_values(cls) -> dict[tuple[str, str], object]:
    """For each check that section class ``cls`` declares, a value of its field that fails it first."""
    hints, found = typing.get_type_hints(cls), {}
    for key, _ in declared(cls()):
        for value in candidates(hints[key]):
            section = dataclasses.replace(cls(), **{key: value})
            failed = [(name, allowed) for name, ok, allowed in section.checks(Config()) if not ok]
            if failed and failed[0][0] == key:
                found.setdefault(failed[0], value)
    return found


def refusal(tmp_path, key: str, value) -> str | None:
    """The error that a config file setting ``key`` to ``value`` gets, or None if it is used."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(nest(key, value)))
    try:
        load_config(path)
    except ConfigError as error:
        return str(error)
    return None


@pytest.mark.parametrize("parent,child", [(PretrainConfig, FinetuneConfig), (LoRAConfig, DoRAConfig)])
def test_a_subclass_checks_what_its_parent_does_first(parent, child):
    inherited = declared(parent())
    assert declared(child())[:len(inherited)] == inherited


def test_dora_adds_one_check_of_its_own_the_magnitudes_rate():
    assert declared(DoRAConfig()) == declared(LoRAConfig()) + [("magnitude_lr_ratio", "a finite number > 0")]


@pytest.mark.parametrize("parent,child", PAIRS)
def test_each_check_of_a_pair_refuses_the_value_under_both_keys(tmp_path, parent, child):
    cls = type(getattr(Config(), parent))
    values = breaking_values(cls)
    assert set(values) == set(declared(cls())), "add to CANDIDATES a value that breaks the missing check"
    for (key, allowed), value in values.items():
        for section in (parent, child):
            assert refusal(tmp_path, f"{section}.{key}", value) == f"{section}.{key}: got {value!r}, allowed: {allowed}"


def test_rank_below_1_is_refused_as_such_before_the_models_limit(tmp_path):
    for section in ("lora", "dora"):
        assert refusal(tmp_path, f"{section}.rank", 0) == f"{section}.rank: got 0, allowed: an integer >= 1"
        assert refusal(tmp_path, f"{section}.rank", 129).endswith("allowed: an integer from 1 to 128 for this model")


def test_the_keys_with_range_checks_are_those_there_were(tmp_path):
    refused = set()
    for key, hint in KEYS.items():
        for value in candidates(hint):
            message = refusal(tmp_path, key, value)
            if message is not None and message.startswith(f"{key}: got ") and ", allowed: " in message:
                refused.add(key)
    assert refused == RANGE_CHECKED
