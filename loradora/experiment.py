"""What one run fine-tunes (methods, over a rank sweep), and how its seeds add up to an answer.

A run pretrains one base per seed and fine-tunes every *variant* from it: a method, at a rank when it
is an adapter. Per-seed results are then aggregated: mean +- std of each variant's test accuracy,
DoRA - LoRA paired by seed with a 95% t interval (same base, batch order and adapter init within a
seed, so the pairing removes the seed-to-seed noise they share), and the weight-decomposition line
of each variant pooled over seeds.
"""

import dataclasses
from dataclasses import dataclass

from loradora.adapters import ADAPTERS, lora_scaling
from loradora.analysis import DecompositionPoint, DecompositionTracker, fit_decomposition
from loradora.stats import paired_difference, spread, verdict

# Fields that vary from seed to seed; the rest of a method's entry (n_test, trainable_params, rank...)
# is the same for every seed. The saved files' checks are the first seed's, and stay in its run.
PER_SEED_FIELDS = ("test_accuracy", "test_correct", "train_accuracy", "train_seconds", "cached", "diverged",
                   "error", "merged_test_accuracy", "merged_test_correct", "merged_max_logit_diff",
                   "reloaded_test_correct", "files")


@dataclass
class Variant:
    name: str         # the key in summary.json: "lora", or "lora_r8" in a rank sweep
    method: str       # lora, dora, full or head
    adapter: dict     # rank, alpha, scaling, dropout (and detach_norm) for the adapters; empty for the baselines

    def describe(self) -> dict:
        """What the summary records about the variant beside its results."""
        if not self.adapter:
            return {"method": self.method}
        rank, alpha, scaling = self.adapter["rank"], self.adapter["alpha"], self.adapter["scaling"]
        return {"method": self.method, "rank": rank, "alpha": alpha, "scaling": scaling,
                "s": lora_scaling(rank, alpha, scaling)}


def finetune_variants(config) -> list[Variant]:
    """``finetune.methods`` in order; with ``experiment.ranks``, each adapter at every rank
    (both adapters take the rank, each keeps its own alpha and scaling)."""
    ranks = config.experiment.ranks
    variants = []
    for method in config.finetune.methods:
        if method not in ADAPTERS:
            variants.append(Variant(method, method, {}))
            continue
        settings = dataclasses.asdict(getattr(config, method))
        if ranks is None:
            variants.append(Variant(method, method, settings))
        else:
            variants += [Variant(f"{method}_r{rank}", method, {**settings, "rank": rank}) for rank in ranks]
    return variants


def aggregate(runs: list[dict]) -> dict:
    """The summary's results from per-seed runs ({"seed", "methods", "decomposition"} each).

    One seed: "methods" is that seed's, unchanged. Several: each method's test accuracy becomes the
    mean over the seeds where it finished without diverging, with its std and the per-seed values
    beside it. The last run may be partial (the summary is saved after every phase).
    """
    methods = runs[0]["methods"] if len(runs) == 1 else {
        name: aggregate_method([run["methods"][name] for run in runs if name in run["methods"]])
        for name in runs[0]["methods"]}
    return {
        "seeds": [run["seed"] for run in runs],
        "methods": methods,
        "comparisons": compare_adapters(runs),
        "decomposition": pool_decomposition(runs),
        "runs": runs,
    }


def aggregate_method(entries: list[dict]) -> dict:
    finished = [entry for entry in entries if not entry.get("diverged", False)]
    common = {key: value for key, value in (finished or entries)[0].items() if key not in PER_SEED_FIELDS}
    accuracy = spread([entry["test_accuracy"] for entry in finished]) if finished else None
    return {
        **common,
        "diverged": not finished,
        "n_diverged": len(entries) - len(finished),
        "test_accuracy": accuracy.mean if accuracy else None,
        "test_accuracy_std": accuracy.std if accuracy else None,
        "test_accuracies": [entry["test_accuracy"] for entry in entries],
        "train_seconds": spread([entry["train_seconds"] for entry in finished]).mean if finished else None,
        "n_seeds": len(finished),
    }


def adapter_pairs(names: list[str]) -> list[tuple[str, str]]:
    """(dora, lora) variant names that share a rank: ("dora", "lora") or ("dora_r8", "lora_r8")."""
    return [(name, "lora" + name.removeprefix("dora")) for name in names
            if name.startswith("dora") and "lora" + name.removeprefix("dora") in names]


def compare_adapters(runs: list[dict]) -> dict:
    """DoRA - LoRA test accuracy, paired by seed, per rank; empty with fewer than 2 seeds."""
    comparisons = {}
    for dora, lora in adapter_pairs(list(runs[0]["methods"])):
        paired = [run["methods"] for run in runs if finished(run["methods"], dora) and finished(run["methods"], lora)]
        if len(paired) < 2:
            continue
        difference = paired_difference([methods[dora]["test_accuracy"] for methods in paired],
                                       [methods[lora]["test_accuracy"] for methods in paired])
        ranks = {"dora": runs[0]["methods"][dora]["rank"], "lora": runs[0]["methods"][lora]["rank"]}
        comparisons[f"{dora} - {lora}"] = {
            **difference.to_dict(), "unit": "accuracy points", "ranks": ranks,
            "verdict": verdict(difference, f"DoRA (rank {ranks['dora']})", f"LoRA (rank {ranks['lora']})")
            if ranks["dora"] != ranks["lora"] else verdict(difference, "DoRA", "LoRA"),
        }
    return comparisons


def finished(methods: dict, name: str) -> bool:
    return name in methods and not methods[name].get("diverged", False)


def pool_decomposition(runs: list[dict]) -> dict:
    """Per variant, the line of dM on dD over every seed's checkpoints and layers, and per seed."""
    pooled = {}
    for name in runs[0]["decomposition"]:
        tracked = [run["decomposition"][name] for run in runs if name in run["decomposition"]]
        per_seed = [[DecompositionPoint(**point) for point in result["points"]] for result in tracked]
        line = fit_decomposition([point for points in per_seed for point in points])
        if line is None:
            continue
        pooled[name] = {**dataclasses.asdict(line), "n_seeds": len(tracked),
                        "per_seed_slopes": [result["slope"] for result in tracked],
                        "per_layer": per_layer_lines([point for points in per_seed for point in points])}
    return pooled


def per_layer_lines(points: list[DecompositionPoint]) -> dict:
    """The line within each layer: pooling layers mixes their scales, so the slope over all points
    can differ from every layer's own (Simpson's paradox); both are reported."""
    lines = {}
    for layer in dict.fromkeys(point.layer for point in points):
        line = fit_decomposition([point for point in points if point.layer == layer])
        if line is not None:
            lines[layer] = {"slope": line.slope, "correlation": line.correlation, "n": line.n}
    return lines


def decomposition_result(tracker: DecompositionTracker) -> dict:
    """One seed's points of a variant, the layers' (out, in) shapes, and the line (None if undefined)."""
    line = fit_decomposition(tracker.points)
    return {"slope": line.slope if line else None, "correlation": line.correlation if line else None,
            "layers": {name: list(shape) for name, shape in tracker.shapes.items()},
            "points": [dataclasses.asdict(point) for point in tracker.points]}
