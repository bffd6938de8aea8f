"""What a run measures, as typed records: one method on one seed (``MethodResult``), one seed's
methods (``SeedResults``), and one method over the seeds (``OverSeeds``).

summary.json holds these records field for field (``files.write_json``), every field always
present (null where it does not apply); ``from_json`` reads them back for the plots. How the seeds
of a method add up is declared field by field below, and a test checks that every field of
``MethodResult`` is declared exactly once: a new field cannot slip into the summary as the first
seed's value.
"""

from dataclasses import dataclass, field, fields

from loradora.stats import spread


@dataclass(frozen=True)
class FileChecks:
    """The checks of a fine-tuned adapter's saved files, on the test set (artifacts.save_method)."""
    merged_test_accuracy: float   # the merged model, in percent
    merged_test_correct: int
    merged_max_logit_diff: float  # largest |merged - unmerged| logit: float32 rounding only
    reloaded_test_correct: int    # the adapter file re-attached to the saved base; must equal test_correct


@dataclass(frozen=True)
class MethodResult:
    """One method (a variant of a sweep, the pretraining, or the untuned base) on one seed."""
    # what was trained: the same for every seed of a run
    method: str | None       # lora, dora, full, head; None for pretrained and no_finetune
    rank: int | None         # the adapters' settings; None for the rest
    alpha: float | None
    scaling: str | None
    s: float | None          # the update's scaling, from rank, alpha and scaling
    rates: str | None        # tuned (the run's own rate) or shared (finetune.lr beside tuned ones); None unless fine-tuned
    lr: float | None         # the rate it trained at (chosen on the validation split, with experiment.lrs)
    epochs: int
    n_train: int
    n_test: int
    trainable_params: int
    # how it went on this seed
    diverged: bool
    error: str | None        # why it diverged
    test_accuracy: float | None  # percent of the n_test images; None if it diverged
    test_correct: int | None
    train_accuracy: float | None  # on the last epoch's batches as they were trained
    train_seconds: float | None   # the training loop only (evaluation and analysis excluded)
    cached: bool = False          # pretrained: loaded from the cache; train_seconds is the run that trained it
    files: dict[str, int] = field(default_factory=dict)  # bytes of each file saved for it (first seed only)
    file_checks: FileChecks | None = None                  # those files' checks, for a fine-tuned adapter
    steps: int | None = None      # finetune.steps: the batches it trained, whatever epochs says; None: epochs


@dataclass
class SeedResults:
    """One seed's results, phase by phase as they finish."""
    seed: int
    methods: dict[str, MethodResult] = field(default_factory=dict)
    decomposition: dict[str, dict] = field(default_factory=dict)  # per variant: experiment.decomposition_result


# How the seeds of a method add up (aggregate_method), every MethodResult field named once:
SHARED = ("method", "rank", "alpha", "scaling", "s", "rates", "lr", "epochs", "steps", "n_train", "n_test",
          "trainable_params")
AVERAGED = ("test_accuracy", "train_seconds")  # over the seeds that finished; test_accuracy also its std
COUNTED = ("diverged",)                         # n_diverged; diverged = on every seed
PER_SEED = ("error", "test_correct", "train_accuracy", "cached", "files", "file_checks")  # in runs[i] only


@dataclass(frozen=True)
class OverSeeds:
    """A method over the seeds of a run: summary["methods"] when there are several."""
    method: str | None
    rank: int | None
    alpha: float | None
    scaling: str | None
    s: float | None
    rates: str | None
    lr: float | None
    epochs: int
    n_train: int
    n_test: int
    trainable_params: int
    diverged: bool                     # on every seed
    n_diverged: int
    n_seeds: int                       # the seeds it finished on: the mean's sample
    test_accuracy: float | None        # mean over those seeds
    test_accuracy_std: float | None    # their sample std; None below 2 seeds
    test_accuracies: list[float | None]  # every seed's, in seed order (None: diverged)
    train_seconds: float | None        # mean over those seeds
    steps: int | None = None           # as MethodResult's


def aggregate_method(results: list[MethodResult]) -> OverSeeds:
    """One method's results on several seeds (in seed order; some may have diverged)."""
    finished = [result for result in results if not result.diverged]
    shared = {name: getattr(results[0], name) for name in SHARED}
    differing = [name for name in SHARED if any(getattr(result, name) != shared[name] for result in results)]
    if differing:  # a bug upstream: seeds of one method must train alike
        raise ValueError(f"{results[0].method}: {', '.join(differing)} differ between seeds")
    accuracy = spread([result.test_accuracy for result in finished]) if finished else None
    return OverSeeds(
        **shared,
        diverged=not finished,
        n_diverged=len(results) - len(finished),
        n_seeds=len(finished),
        test_accuracy=accuracy.mean if accuracy else None,
        test_accuracy_std=accuracy.std if accuracy else None,
        test_accuracies=[result.test_accuracy for result in results],
        train_seconds=spread([result.train_seconds for result in finished]).mean if finished else None,
    )


def accuracy_std(result: MethodResult | OverSeeds) -> float | None:
    """The test accuracy's sample std over seeds; None for one seed's result, or below 2 seeds."""
    return result.test_accuracy_std if isinstance(result, OverSeeds) else None


def from_json(entry: dict) -> MethodResult | OverSeeds:
    """A summary.json entry of ``methods`` as the record it was written from; ValueError when its
    fields are not that record's (a summary.json written by another version of this code)."""
    record = OverSeeds if "n_seeds" in entry else MethodResult
    expected = [f.name for f in fields(record)]
    if sorted(entry) != sorted(expected):
        differ = sorted(set(entry) ^ set(expected))
        raise ValueError(f"its results are not this version's {record.__name__} records "
                         f"(fields {', '.join(differ)} differ)")
    if record is OverSeeds:
        return OverSeeds(**entry)
    checks = entry["file_checks"]
    return MethodResult(**{**entry, "file_checks": FileChecks(**checks) if checks else None})


def declared_fields() -> list[str]:
    """Every field named in SHARED, AVERAGED, COUNTED and PER_SEED (a test compares it with MethodResult's)."""
    return [*SHARED, *AVERAGED, *COUNTED, *PER_SEED]


def result_fields() -> list[str]:
    return [f.name for f in fields(MethodResult)]
