"""The typed result records: one schema, every field's fate over seeds declared once."""

import dataclasses
import json

import pytest

from loradora.files import write_json
from loradora.results import (AVERAGED, COUNTED, PER_SEED, SHARED, FileChecks, MethodResult, OverSeeds,
                              aggregate_method, declared_fields, from_json, result_fields)
from helpers import method_result


def test_every_field_says_once_how_the_seeds_add_up():
    # The old aggregation kept a list of per-seed fields and copied every other one from the first
    # seed, so a new per-seed field was silently reported as the first seed's value.
    assert sorted(declared_fields()) == sorted(result_fields())
    assert len(declared_fields()) == len(set(declared_fields()))


def test_the_aggregate_holds_the_shared_fields_and_the_summaries():
    over_seeds = {field.name for field in dataclasses.fields(OverSeeds)}
    assert set(SHARED) <= over_seeds and set(AVERAGED) <= over_seeds and set(COUNTED) <= over_seeds
    assert not set(PER_SEED) & over_seeds  # those stay in each seed's run


def test_seeds_add_up_over_the_finished_ones():
    results = [method_result(method="dora", test_accuracy=96.0, train_seconds=2.0),
               method_result(method="dora", test_accuracy=None, test_correct=None, train_seconds=None,
                             diverged=True, error="a batch loss reached nan"),
               method_result(method="dora", test_accuracy=98.0, train_seconds=4.0)]
    over = aggregate_method(results)
    assert (over.test_accuracy, over.train_seconds, over.n_seeds, over.n_diverged) == (97.0, 3.0, 2, 1)
    assert over.test_accuracy_std == pytest.approx(2 ** 0.5) and over.test_accuracies == [96.0, None, 98.0]
    assert not over.diverged and over.method == "dora" and over.n_test == 100


def test_seeds_that_trained_differently_are_a_bug_not_an_average():
    with pytest.raises(ValueError, match="lr differ between seeds"):
        aggregate_method([method_result(lr=0.01), method_result(lr=0.02)])


def test_summary_json_reads_back_as_the_records_written(tmp_path):
    checks = FileChecks(merged_test_accuracy=90.0, merged_test_correct=90, merged_max_logit_diff=1e-6,
                        reloaded_test_correct=90)
    one = method_result(method="lora", rank=4, alpha=8.0, scaling="standard", s=2.0, files={"adapter_bytes": 10},
                        file_checks=checks)
    over = aggregate_method([one, one])
    write_json(tmp_path / "summary.json", {"methods": {"one": one, "over": over}})
    methods = json.loads((tmp_path / "summary.json").read_text())["methods"]
    assert from_json(methods["one"]) == one and from_json(methods["over"]) == over
    assert list(methods["one"]) == [field.name for field in dataclasses.fields(MethodResult)]
