"""How a run's seeds add up to an answer.

A run pretrains one base per seed and fine-tunes every *variant* (loradora/variants.py) from it.
Per-seed results are then aggregated: mean +- std of each variant's test accuracy,
DoRA - LoRA paired by seed with a 95% t interval (same base, batch order and adapter init within a
seed, so the pairing removes the seed-to-seed noise they share), and the weight-decomposition line
of each variant pooled over seeds.
"""

import dataclasses
import statistics

from loradora.analysis import DecompositionPoint, DecompositionTracker, fit_decomposition, unavailable_reason
from loradora.results import MethodResult, SeedResults, aggregate_method
from loradora.per_image import ImageHits
from loradora.stats import over_seeds, paired_difference, two_way_difference, verdict
from loradora.variants import RATE_FAMILIES


def rate_sensitivity(tuning: dict, pairs: list[tuple[str, str]]) -> dict:
    """Per (dora, lora) pair, DoRA - LoRA validation accuracy at every rate both were tuned at,
    paired by tuning seed (same base, batch order and init), with its 95% t interval: how much the
    answer depends on the rate (the paper's stability claim, read as sensitivity to the rate). Each
    rate's interval is its own, not adjusted for the grid's size: a profile to read, not a verdict."""
    sensitivity = {}
    for dora, lora in pairs:
        a, b = tuning[dora]["validation_accuracies"], tuning[lora]["validation_accuracies"]
        rows = {}
        for rate in sorted(set(a) & set(b), key=float):
            both = [(x, y) for x, y in zip(a[rate], b[rate]) if x is not None and y is not None]
            difference = paired_difference(*zip(*both)) if len(both) >= 2 else None
            rows[rate] = None if difference is None else {
                "mean": difference.mean, "ci95": list(difference.ci95), "n": difference.n,
                "dora": statistics.fmean(x for x, _ in both), "lora": statistics.fmean(y for _, y in both)}
        sensitivity[f"{dora} - {lora}"] = rows
    return sensitivity


def aggregate(runs: list[SeedResults], margin: float = 0.05, hits: ImageHits | None = None) -> dict:
    """The summary's results from per-seed runs.

    One seed: "methods" is that seed's, unchanged. Several: each method over the seeds
    (``results.aggregate_method``). The last run may be partial (the summary is saved after every
    phase). With ``hits`` (which test images each member got right), every comparison also holds an
    interval for new test images.
    """
    methods = runs[0].methods if len(runs) == 1 else {
        name: aggregate_method([run.methods[name] for run in runs if name in run.methods])
        for name in runs[0].methods}
    pooled, unavailable = pool_decomposition(runs)
    return {
        "seeds": [run.seed for run in runs],
        "methods": methods,
        "comparisons": compare_adapters(runs, margin, hits),
        "part_comparisons": compare_parts(runs, margin, hits),
        "decomposition": pooled,
        "decomposition_unavailable": unavailable,
        "runs": runs,
    }


def adapter_pairs(methods: dict[str, MethodResult]) -> list[tuple[str, str]]:
    """(dora, lora) variant names compared with each other, by their records' fields: within a rate
    family, DoRA and LoRA at the same rank; or the one DoRA with the one LoRA, whatever their ranks
    (lora.rank and dora.rank may differ; the report then says the pair is not like for like)."""
    pairs = []
    for rates in RATE_FAMILIES:
        of = {method: {result.rank: name for name, result in methods.items()
                       if result.method == method and result.rates == rates} for method in ("dora", "lora")}
        if len(of["dora"]) == len(of["lora"]) == 1:
            pairs.append((*of["dora"].values(), *of["lora"].values()))
        else:
            pairs += [(name, of["lora"][rank]) for rank, name in of["dora"].items() if rank in of["lora"]]
    return pairs


def compare_adapters(runs: list[SeedResults], margin: float = 0.05, hits: ImageHits | None = None) -> dict:
    """DoRA - LoRA test accuracy, paired by seed, per rank; empty with fewer than 2 seeds.

    A rank sweep asks its question once per rank, so its intervals are Bonferroni-adjusted for the
    number of ranks (``stats.paired_difference``); variants at the shared lr are a family of their
    own.
    """
    comparisons = {}
    first = runs[0].methods
    pairs = adapter_pairs(first)
    family_size = {pair: sum(first[other].rates == first[pair[0]].rates for other, _ in pairs) for pair in pairs}
    for dora, lora in pairs:
        ranks = {"dora": first[dora].rank, "lora": first[lora].rank}
        names = (f"DoRA (rank {ranks['dora']})", f"LoRA (rank {ranks['lora']})") \
            if ranks["dora"] != ranks["lora"] else ("DoRA", "LoRA")
        adjustment = f"Bonferroni over {family_size[dora, lora]} ranks" if family_size[dora, lora] > 1 else None
        comparison = paired_comparison(runs, dora, lora, names, family_size[dora, lora], adjustment, margin, hits)
        if comparison is not None:
            comparisons[f"{dora} - {lora}"] = {**comparison, "ranks": ranks}
    return comparisons


# DoRA's parts against each other and LoRA (issue 20: which part reaches which teacher), first
# minus second; DoRA - LoRA is the run's own question (compare_adapters)
PART_PAIRS = [("magnitude", "lora"), ("direction", "lora"), ("dora", "magnitude"), ("dora", "direction"),
              ("magnitude", "direction")]
DISPLAY = {"lora": "LoRA", "dora": "DoRA", "magnitude": "the magnitude alone", "direction": "the direction alone"}


def compare_parts(runs: list[SeedResults], margin: float = 0.05, hits: ImageHits | None = None) -> dict:
    """The ``PART_PAIRS`` a run has, at its own rates, paired by seed: one variant of each method
    (no rank sweep), the intervals Bonferroni-adjusted for the number of pairs; empty otherwise."""
    first = runs[0].methods
    tuned = [result.method for result in first.values() if result.rates == "tuned" and result.method in DISPLAY]
    if len(tuned) != len(set(tuned)):
        return {}  # a rank sweep: pairs by rank are the adapters' question, not the parts'
    name_of = {result.method: name for name, result in first.items() if result.rates == "tuned"}
    pairs = [(name_of[a], name_of[b]) for a, b in PART_PAIRS if a in name_of and b in name_of]
    comparisons = {}
    for a, b in pairs:
        adjustment = f"Bonferroni over {len(pairs)} pairs" if len(pairs) > 1 else None
        names = (DISPLAY[first[a].method], DISPLAY[first[b].method])
        comparison = paired_comparison(runs, a, b, names, len(pairs), adjustment, margin, hits)
        if comparison is not None:
            comparisons[f"{a} - {b}"] = {**comparison, "ranks": {first[a].method: first[a].rank,
                                                                  first[b].method: first[b].rank}}
    return comparisons


def paired_comparison(runs: list[SeedResults], a: str, b: str, names: tuple[str, str], family: int,
                      adjustment: str | None, margin: float, hits: ImageHits | None = None) -> dict | None:
    """``a`` - ``b`` test accuracy over the seeds where both finished, with its verdict, on this test
    set; and, where ``hits`` has both for every such seed, over seeds and new test images too
    ("new_test_images", stats.two_way_difference). None under 2 seeds."""
    paired = [run for run in runs if finished(run.methods, a) and finished(run.methods, b)]
    if len(paired) < 2:
        return None
    difference = paired_difference([run.methods[a].test_accuracy for run in paired],
                                   [run.methods[b].test_accuracy for run in paired], comparisons=family)
    comparison = {**difference.to_dict(), "unit": "accuracy points", "rates": runs[0].methods[a].rates,
                  "margin": margin, "adjustment": adjustment, "verdict": verdict(difference, *names, margin=margin),
                  "new_test_images": None}
    seeds = [run.seed for run in paired]
    correct = [hits.matrix(name, seeds) for name in (a, b)] if hits is not None else [None]
    if None not in correct:
        two_way = two_way_difference(*correct, comparisons=family)
        comparison["new_test_images"] = {**two_way.to_dict(), "verdict": verdict(two_way, *names, margin=margin)}
    return comparison


def finished(methods: dict[str, MethodResult], name: str) -> bool:
    return name in methods and not methods[name].diverged


def pool_decomposition(runs: list[SeedResults]) -> tuple[dict, dict]:
    """Per variant, the line of dM on dD over every seed's measured steps and layers, the per-seed slopes
    with their mean and 95% t interval over seeds, and the line within each layer; and, for the
    variants where no honest line exists (``analysis.fit_decomposition``), why not."""
    pooled, unavailable = {}, {}
    for name in runs[0].decomposition:
        tracked = [run.decomposition[name] for run in runs if name in run.decomposition]
        points = [DecompositionPoint(**point) for result in tracked for point in result["points"]]
        line = fit_decomposition(points)
        if line is None:
            unavailable[name] = unavailable_reason(points)
            continue
        slopes = [result["slope"] for result in tracked]
        pooled[name] = {**dataclasses.asdict(line), "n_seeds": len(tracked), "per_seed_slopes": slopes,
                        "slope_over_seeds": over_seeds([slope for slope in slopes if slope is not None]),
                        "per_layer": per_layer_lines(points)}
    return pooled, unavailable


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
