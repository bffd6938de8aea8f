"""The experiment's settings: typed dataclasses, filled from YAML and ``key.sub=value`` overrides.

The dataclasses are the schema and hold the defaults; ``configs/default.yaml`` spells every key out
with a comment on its trade-off (a test keeps the two equal). A config file or override may name
any subset of keys; the rest keep their defaults. Unknown keys, wrong types and out-of-range values
are errors that name the key, raised before any work starts.
"""

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from loradora.choices import METHODS, N_CLASSES, N_PIXELS, PRECISIONS, SCALINGS, TASKS

if TYPE_CHECKING:
    import torch


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the key."""


PATH_KEYS = ("data.root", "output.dir", "cache.dir")
MAX_WIDTH = 16_384  # model.hidden_sizes
INT64 = 2**63  # torch's seeds and sizes are 64-bit: a larger integer would fail deep inside a run
LAUNCHERS = ("local", "ray")
# ray.address: what ray.init joins. "auto" finds the cluster this machine belongs to (ray start); a
# GCS address host:port, or ray://host:port for Ray Client, names one; null starts a runtime here.
RAY_ADDRESS = re.compile(r"auto|(ray://)?[^\s/:]+:\d{1,5}")


# A range check: (field, whether its value is allowed, the text that says what is allowed). Each
# section lists its own from checks(), naming fields without the section: validate() adds the name
# under which Config holds the section, so the checks a subclass inherits name the subclass's keys
# (FinetuneConfig's are finetune.lr, not pretrain.lr). Every float is finite by the time they run
# (coerce), so "> 0" is all a positive number still needs.
Check = tuple[str, bool, str]


class Section:
    """A section of the config: a dataclass whose keys have ranges that their types cannot express."""

    def checks(self, config: "Config") -> list[Check]:
        return []  # a section whose types say it all, such as cache


@dataclass
class DataConfig(Section):
    root: str = "data"
    download: bool = True
    train_subset: int | None = None
    test_subset: int | None = None
    validation_size: int = 0
    validation_seed: int = 0

    def checks(self, config: "Config") -> list[Check]:
        return [
            ("train_subset", self.train_subset is None or self.train_subset >= 1, "null or an integer >= 1"),
            ("test_subset", self.test_subset is None or self.test_subset >= 1, "null or an integer >= 1"),
            ("validation_size", self.validation_size >= 0, "an integer >= 0 (0: no validation split)"),
            ("validation_size", self.validation_size < (self.train_subset or 60_000),
             "fewer images than the training set holds (60,000, or data.train_subset)"),
        ]


@dataclass
class ModelConfig(Section):
    hidden_sizes: list[int] = field(default_factory=lambda: [128, 256])

    def checks(self, config: "Config") -> list[Check]:
        # The bound keeps a typo from asking for terabytes: two 16,384-wide layers are 1 GiB of float32.
        return [("hidden_sizes", all(1 <= size <= MAX_WIDTH for size in self.hidden_sizes),
                 f"integers from 1 to {MAX_WIDTH:,}")]


@dataclass
class PretrainConfig(Section):
    epochs: int = 1
    batch_size: int = 64
    lr: float = 0.005
    max_loss: float = 1000.0

    def checks(self, config: "Config") -> list[Check]:
        return [
            ("epochs", self.epochs >= 0, "an integer >= 0"),
            ("batch_size", self.batch_size >= 1, "an integer >= 1"),
            ("lr", self.lr > 0, "a finite number > 0"),
            ("max_loss", self.max_loss > 0, "a finite number > 0"),
        ]


@dataclass
class FinetuneConfig(PretrainConfig):
    epochs: int = 2
    steps: int | None = None
    methods: list[str] = field(default_factory=lambda: ["lora", "dora"])
    task: str = "same"
    rotate_degrees: float = 45.0
    permutation_seed: int = 0
    teacher_seed: int = 0
    train_subset: int | None = None
    validation_size: int = 0
    subset_seed: int = 0
    subset_per_seed: bool = False

    def checks(self, config: "Config") -> list[Check]:
        pool = (config.data.train_subset or 60_000) - config.data.validation_size
        return super().checks(config) + [
            ("steps", self.steps is None or self.steps >= 1, "null (finetune.epochs) or an integer >= 1"),
            ("methods", set(self.methods) <= set(METHODS), f"a list drawn from {', '.join(METHODS)}"),
            ("methods", len(set(self.methods)) == len(self.methods), "each method at most once"),
            ("task", self.task in TASKS, f"one of {', '.join(TASKS)}"),
            ("train_subset", self.train_subset is None or self.train_subset >= 1, "null or an integer >= 1"),
            ("validation_size", self.validation_size >= 0, "an integer >= 0 (0: data.validation_size's split)"),
            ("validation_size", self.validation_size == 0 or config.data.validation_size == 0,
             "0 when data.validation_size > 0: the validation images come from one place"),
            ("train_subset", self.validation_size + (self.train_subset or 1) <= pool,
             f"with finetune.validation_size, at most the {pool:,} images of the fine-tuning pool "
             f"(data.train_subset or 60,000, less data.validation_size)"),
        ]


@dataclass
class LoRAConfig(Section):
    rank: int = 4
    alpha: float = 8.0
    scaling: str = "standard"
    dropout: float = 0.0
    b_lr_ratio: float = 1.0

    def checks(self, config: "Config") -> list[Check]:
        limit = max_useful_rank(config.model.hidden_sizes)
        return [
            ("rank", self.rank >= 1, "an integer >= 1"),
            ("rank", self.rank <= limit, f"an integer from 1 to {limit} for this model"),
            ("alpha", self.alpha > 0, "a finite number > 0"),
            ("scaling", self.scaling in SCALINGS, f"one of {', '.join(SCALINGS)}"),
            ("dropout", 0 <= self.dropout < 1, "a number from 0 up to, not including, 1"),
            ("b_lr_ratio", self.b_lr_ratio > 0, "a finite number > 0"),
        ]


@dataclass
class DoRAConfig(LoRAConfig):
    detach_norm: bool = True
    magnitude_lr_ratio: float = 1.0

    def checks(self, config: "Config") -> list[Check]:
        return super().checks(config) + [("magnitude_lr_ratio", self.magnitude_lr_ratio > 0, "a finite number > 0")]


@dataclass
class ExperimentConfig(Section):
    seeds: list[int] | None = None
    ranks: list[int] | None = None
    population: int | str = "auto"
    lrs: list[float] | None = None
    b_lr_ratios: list[float] | None = None
    magnitude_lr_ratios: list[float] | None = None
    tuning_seeds: list[int] | None = None
    tuning_overlap: bool = False
    extend_grid: bool = False
    shared_lr: bool = True
    margin: float = 0.05
    launcher: str = "local"

    def checks(self, config: "Config") -> list[Check]:
        # In this order because each group reads keys the one before it checks.
        return self.sweep_checks(config) + self.tuning_checks(config) + self.launcher_checks(config)

    def sweep_checks(self, config: "Config") -> list[Check]:
        """The seeds and ranks every method runs at, how many train at once, and the verdicts' margin."""
        seeds, ranks, population = self.seeds, self.ranks, self.population
        limit = max_useful_rank(config.model.hidden_sizes)
        return [
            ("seeds", seeds is None or (len(seeds) >= 1 and len(set(seeds)) == len(seeds)),
             "null or a non-empty list of distinct integers"),
            ("ranks", ranks is None or (len(ranks) >= 1 and len(set(ranks)) == len(ranks) and min(ranks) >= 1),
             "null or a non-empty list of distinct integers >= 1"),
            ("ranks", ranks is None or all(rank <= limit for rank in ranks), f"ranks up to {limit} for this model"),
            ("margin", self.margin > 0, "a finite number > 0 (accuracy points)"),
            ("population", population == "auto" or (isinstance(population, int) and population >= 1),
             "auto or an integer >= 1"),
        ]

    def tuning_checks(self, config: "Config") -> list[Check]:
        """The learning-rate search: its rates, the split that judges them and the seeds that do."""
        lrs, tuning, compared = self.lrs, self.tuning_seeds, self.seeds or [config.seed]
        return [
            ("lrs", lrs is None or (len(lrs) >= 1 and all(lr > 0 for lr in lrs) and len(set(lrs)) == len(lrs)),
             "null or a non-empty list of distinct finite numbers > 0"),
            ("lrs", lrs is None or config.data.validation_size > 0 or config.finetune.validation_size > 0,
             "null unless data.validation_size or finetune.validation_size > 0: rates are chosen on a "
             "validation split, never the test set"),
            ("tuning_seeds", tuning is None or (len(tuning) >= 1 and len(set(tuning)) == len(tuning)),
             "null or a non-empty list of distinct integers"),
            ("tuning_seeds", tuning is None or lrs is not None, "null unless experiment.lrs is set"),
            *[(key, grid is None or (lrs is not None and len(grid) >= 1 and all(r > 0 for r in grid)
                                     and len(set(grid)) == len(grid)),
               "null, or with experiment.lrs a list of distinct multipliers > 0")
              for key, grid in (("b_lr_ratios", self.b_lr_ratios), ("magnitude_lr_ratios", self.magnitude_lr_ratios))],
            ("tuning_seeds", lrs is None or self.tuning_overlap or tuning is not None,
             "a list of seeds apart from experiment.seeds, e.g. [101, 102, 103, 104, 105], to choose the rates "
             "(or experiment.tuning_overlap: true to tune on the compared seeds themselves)"),
            ("tuning_seeds", tuning is None or self.tuning_overlap or not set(tuning) & set(compared),
             f"seeds apart from the compared ones (experiment.seeds, or seed): {', '.join(map(str, sorted(set(tuning or []) & set(compared))))} "
             f"in both; or experiment.tuning_overlap: true to compare seeds that chose the rates"),
            ("tuning_seeds", tuning is None or not self.tuning_overlap or set(tuning) <= set(compared),
             "with experiment.tuning_overlap: true, null (every compared seed) or some of the compared seeds"),
        ]

    def launcher_checks(self, config: "Config") -> list[Check]:
        """Ray runs populations as tasks, so a run that trains one model at a time (one seed, or
        experiment.population: 1, without experiment.lrs) has none to send."""
        return [
            ("launcher", self.launcher in LAUNCHERS, f"one of {', '.join(LAUNCHERS)}"),
            ("launcher", self.launcher != "ray" or trains_populations(config),
             "local for a run that trains one model at a time (one seed, or experiment.population: 1 without "
             "experiment.lrs): ray runs populations, and this run has none"),
        ]


@dataclass
class AnalysisConfig(Section):
    every_n_batches: int | None = 100

    def checks(self, config: "Config") -> list[Check]:
        every = self.every_n_batches
        return [("every_n_batches", every is None or every >= 1, "null or an integer >= 1")]


@dataclass
class CacheConfig(Section):
    enabled: bool = True
    dir: str | None = None


@dataclass
class LogConfig(Section):
    every_n_batches: int = 400
    tensorboard: bool = False
    print_config: bool = False

    def checks(self, config: "Config") -> list[Check]:
        return [("every_n_batches", self.every_n_batches >= 1, "an integer >= 1")]


@dataclass
class OutputConfig(Section):
    dir: str = "results"
    run_name: str | None = None

    def checks(self, config: "Config") -> list[Check]:
        return [("run_name", is_plain_name(self.run_name),
                 "null or a folder name without '/', '\\' or '..', so the run stays inside output.dir")]


@dataclass
class MapConfig(Section):
    rotate_degrees: list[float] | None = None
    train_subsets: list[int | None] | None = None
    second_tuning_seeds: list[int] | None = None
    fixed_passes: int | None = None
    fixed_passes_degrees: list[float] | None = None
    fixed_passes_ranks: list[int] | None = None

    def checks(self, config: "Config") -> list[Check]:
        """A map (loradora/regime_map.py) is a cell per angle and size, each a run of its own."""
        angles, sizes = self.rotate_degrees, self.train_subsets
        on = angles is not None or sizes is not None
        return [
            ("rotate_degrees", angles is None or (len(angles) >= 1 and len(set(angles)) == len(angles)),
             "null or a non-empty list of distinct angles"),
            ("train_subsets", sizes is None or (len(sizes) >= 1 and len(set(sizes)) == len(sizes)
                                                and all(size is None or size >= 1 for size in sizes)),
             "null or a non-empty list of distinct sizes (integers >= 1, or null for the whole pool)"),
            ("rotate_degrees", not on or (angles is not None and sizes is not None),
             "a list when map.train_subsets is one (a map needs both axes)"),
            ("rotate_degrees", not on or config.finetune.task == "rotate",
             "null unless finetune.task is rotate (the map's shift axis is the angle)"),
            ("train_subsets", not on or len(config.experiment.seeds or []) >= 2,
             "null unless experiment.seeds holds 2 or more seeds (each cell compares DoRA with LoRA over them)"),
            *self.arm_checks(config, on),
        ]

    def arm_checks(self, config: "Config", on: bool) -> list[Check]:
        """The second tuning set and the fixed-passes arm: parts of a map, never a run of their own."""
        second, tuning = self.second_tuning_seeds, config.experiment.tuning_seeds or []
        return [
            ("second_tuning_seeds", second is None or (on and bool(config.experiment.lrs) and len(second) >= 1
                                                       and not set(second) & set(tuning + (config.experiment.seeds or [])))
             , "null, or on a tuned map (experiment.lrs) seeds apart from experiment.tuning_seeds and experiment.seeds"),
            ("fixed_passes", self.fixed_passes is None or (on and self.fixed_passes >= 1),
             "null, or on a map an integer >= 1 (the arm's epochs)"),
            ("fixed_passes_degrees", self.fixed_passes is None or bool(self.fixed_passes_degrees),
             "a non-empty list of angles when map.fixed_passes is set"),
            ("fixed_passes_ranks", self.fixed_passes is None or bool(self.fixed_passes_ranks),
             "a non-empty list of ranks when map.fixed_passes is set"),
        ]


@dataclass
class RayConfig(Section):
    address: str | None = None

    def checks(self, config: "Config") -> list[Check]:
        return [("address", self.address is None or RAY_ADDRESS.fullmatch(self.address) is not None,
                 "null (start Ray on this machine), auto, host:port or ray://host:port")]


@dataclass
class Config:
    seed: int = 123
    device: str = "auto"
    deterministic: bool = False
    precision: str = "fp32"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    dora: DoRAConfig = field(default_factory=DoRAConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    log: LogConfig = field(default_factory=LogConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    map: MapConfig = field(default_factory=MapConfig)
    ray: RayConfig = field(default_factory=RayConfig)


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = (),
                project: Path | None = None) -> Config:
    """Defaults, then the YAML file at ``path``, then each ``key.sub=value`` override, validated.

    With ``project``, the paths (PATH_KEYS) come back absolute: one set by an override is relative
    to the current folder, as whatever the user types in a shell is; the defaults and the paths in
    a config file are relative to ``project``, so that data/ and results/ are the same folders
    wherever the script is started from.
    """
    if path is not None and project is not None and not Path(path).exists() and (project / path).exists():
        raise ConfigError(f"cannot read config file {path}: no such file in the current folder {Path.cwd()} "
                          f"(paths on the command line are relative to it); did you mean {project / path}?")
    raw = read_yaml(path) if path is not None else {}
    overridden = set()
    for override in overrides:
        keys, value = parse_override(override)
        overridden.add(".".join(keys))
        section = raw
        for key in keys[:-1]:
            section = section.setdefault(key, {})
            if not isinstance(section, dict):
                raise ConfigError(f"{'.'.join(keys[:-1])}: is not a section, cannot set {override!r}")
        section[keys[-1]] = value
    config = build(Config, raw)
    validate(config)
    if project is not None:
        for key in PATH_KEYS:
            section, name = key.split(".")
            if (value := getattr(getattr(config, section), name)) is not None:
                base = Path.cwd() if key in overridden else project
                setattr(getattr(config, section), name, str(base / Path(value).expanduser()))
    return config


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
        data = yaml.safe_load(text)
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from error
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not a YAML text file: byte {error.object[error.start]:#04x} at offset "
                          f"{error.start} is not UTF-8") from error
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML: {problem}") from error
    if data is None:
        raise ConfigError(f"{path}: the config file is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[list[str], str]:
    """'lora.rank=8' -> (['lora', 'rank'], '8'); the value stays text until its key's type is known."""
    key, sep, value = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} is not of the form key.sub=value")
    return key.split("."), value


def build(cls: type, raw: dict, prefix: str = ""):
    """An instance of dataclass ``cls`` from a mapping, each value checked against its field's type."""
    hints = typing.get_type_hints(cls)
    unknown = [key for key in raw if key not in hints]
    if unknown:
        raise ConfigError(unknown_key_message(prefix + str(unknown[0]), list(hints), prefix))
    values = {key: coerce(value, hints[key], prefix + key) for key, value in raw.items()}
    return cls(**values)


def coerce(value, hint, key: str):
    """``value`` as type ``hint``, or a ConfigError naming ``key``.

    Text meets a non-text type when it comes from the command line (or from YAML that quoted it):
    it is then read as YAML, and floats also accept what float() reads, because PyYAML reads
    ``1e-3`` (no dot) as a string.
    """
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: is a section, expected a mapping of its keys, got {value!r}")
        return build(hint, value, prefix=key + ".")
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) and type(None) not in args:  # "int | str": the first that fits
        for arg in args:
            try:
                return coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {' or '.join(TYPE_NAMES.get(arg, str(arg)) for arg in args)}, "
                          f"got {value!r}")
    if isinstance(hint, types.UnionType) and type(None) in args:  # "X | None"
        if value is None or value in ("null", "~", "None"):
            return None
        (hint,) = [arg for arg in args if arg is not type(None)]
        args = typing.get_args(hint)  # list[int] | None: the items' type is list[int]'s, not the union's
    if isinstance(value, str) and hint is not str:
        try:
            value = yaml.safe_load(value) if value.strip() else value
        except yaml.YAMLError:
            raise ConfigError(f"{key}: expected {describe(hint)}, got {value!r}, which is not valid YAML") from None
    origin = typing.get_origin(hint)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list such as [a, b], got {value!r}")
        return [coerce(item, args[0] if args else str, f"{key}[{i}]") for i, item in enumerate(value)]
    if hint is float and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if hint is float and isinstance(value, int) and not isinstance(value, bool) and abs(value) < INT64:
        value = float(value)
    if type(value) is not hint:
        raise ConfigError(f"{key}: expected {describe(hint)}, got {short_repr(value)}")
    if hint is int and not -INT64 <= value < INT64:
        raise ConfigError(f"{key}: got {short_repr(value)}, allowed: an integer of at most 64 bits")
    if hint is float and not math.isfinite(value):  # YAML reads 1.0e400 as inf; no key means infinity
        raise ConfigError(f"{key}: got {value!r}, allowed: a finite number")
    return value


TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def describe(hint) -> str:
    return "a list such as [a, b]" if typing.get_origin(hint) is list else TYPE_NAMES.get(hint, str(hint))


def short_repr(value) -> str:
    """``repr(value)``, but a huge integer by its length: the error stays one readable line."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**20:
        return f"an integer of {len(str(abs(value)))} digits"
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "..."


def unknown_key_message(key: str, known: list[str], prefix: str) -> str:
    name = key.removeprefix(prefix)
    guess = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {prefix}{guess[0]}?" if guess else ""
    return f"unknown key {key}{hint} (known keys{' under ' + prefix[:-1] if prefix else ''}: {', '.join(known)})"


def validate(config: Config) -> None:
    """Ranges that the types cannot express; the first that fails is raised, naming its key.

    Sections are checked in Config's order, which puts a key before those whose checks read it
    (model.hidden_sizes before the rank limits it sets, data before experiment.lrs).
    """
    checks = [("precision", config.precision in PRECISIONS, f"one of {', '.join(PRECISIONS)}")]
    checks += [(f"{name}.{key}", ok, allowed) for name, section in sections(config)
               for key, ok, allowed in section.checks(config)]
    # One rule for the paths of every section: the OS would refuse a NUL only once a run had begun.
    checks += [(key, "\0" not in (lookup(config, key) or ""), "a path without a NUL character")
               for key in PATH_KEYS]
    for key, ok, allowed in checks:
        if not ok:
            raise ConfigError(f"{key}: got {lookup(config, key)!r}, allowed: {allowed}")


def trains_populations(config: Config) -> bool:
    """Whether the run trains populations of more than one model: several seeds (unless
    experiment.population is 1), or a learning-rate grid to tune; else every phase trains one model
    alone, and there is nothing for Ray to spread."""
    seeds = config.experiment.seeds or [config.seed]
    return bool(config.experiment.lrs) or (len(seeds) > 1 and config.experiment.population != 1)


def sections(config: Config) -> list[tuple[str, Section]]:
    """(name, section) for each section of ``config``, in the order Config declares them."""
    return [(f.name, getattr(config, f.name)) for f in dataclasses.fields(config)
            if isinstance(getattr(config, f.name), Section)]


def max_useful_rank(hidden_sizes: list[int]) -> int:
    """The largest rank from which some adapted layer still gains: max over layers of min(in, out).

    The update B@A of a layer has rank at most min(in, out); a higher rank still trains (PEFT
    allows it) but adds parameters no layer can use. Here: 128 for the 784-128-256-10 MLP, while
    the 256->10 head saturates at rank 10.
    """
    sizes = [N_PIXELS, *hidden_sizes, N_CLASSES]
    return max(min(n_in, n_out) for n_in, n_out in zip(sizes[:-1], sizes[1:]))


def is_plain_name(name: str | None) -> bool:
    return name is None or (name not in ("", ".", "..") and not any(c in name for c in "/\\\0"))


def resolve_device(name: str) -> "torch.device":
    """'auto' is CUDA when there is a GPU, else the CPU; a named device must exist here.

    The one check that needs torch, so it imports torch itself: the rest of this module runs
    before torch is loaded.
    """
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device: got {name!r}, allowed: auto, cpu, cuda, cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: got {name!r} but this machine has no CUDA GPU; allowed: auto, cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"device: got {name!r} but there are {torch.cuda.device_count()} GPUs")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device: got {name!r}, allowed: auto, cpu, cuda, cuda:N")
    return device


def lookup(config: Config, key: str):
    value = config
    for part in key.split("."):
        value = getattr(value, part)
    return value


def to_dict(config: Config) -> dict:
    return dataclasses.asdict(config)


def to_yaml(config: Config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def differences(before: Config, after: Config) -> list[str]:
    """Every key whose value differs between two configs, as "key: before -> after"."""
    old, new = flatten(to_dict(before)), flatten(to_dict(after))
    return [f"{key}: {short_repr(old[key])} -> {short_repr(new[key])}" for key in old if old[key] != new[key]]


LIKE_FOR_LIKE = ("rank", "alpha", "scaling", "dropout")  # what must match for DoRA - LoRA to isolate the decomposition


def adapter_differences(config: Config) -> str:
    """The adapter settings in which lora and dora differ, as "rank 4 and 8, alpha 8 and 16" (LoRA's
    first); "" where they match, or where the run does not fine-tune both. A sweep's rank
    (experiment.ranks) is both adapters' own, so the rank key is not compared then."""
    if not {"lora", "dora"} <= set(config.finetune.methods):
        return ""
    keys = [key for key in LIKE_FOR_LIKE if not (key == "rank" and config.experiment.ranks)]
    pairs = [(key, getattr(config.lora, key), getattr(config.dora, key)) for key in keys]
    return ", ".join(f"{key} {lora:g} and {dora:g}" if isinstance(lora, (int, float)) else f"{key} {lora} and {dora}"
                     for key, lora, dora in pairs if lora != dora)


def flatten(values: dict, prefix: str = "") -> dict:
    """A config as a dict (``to_dict``, or a run's config.yaml read back) keyed by dotted keys,
    "lora.rank", as overrides name them."""
    out = {}
    for key, value in values.items():
        out |= flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}
    return out
