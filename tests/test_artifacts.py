"""What a run saves for use outside the script, from a smoke run tested on all 10,000 test images."""

import pytest
import torch
from safetensors.torch import load_file

from conftest import summary_of
from loradora.checkpoints import load_adapters, load_model
from loradora.data import load_mnist
from loradora.model import MLP
from loradora.training import evaluate, predict
from helpers import rounding_bound
from peft_oracle import load_with_peft

METHODS = ["lora", "dora"]


@pytest.fixture(scope="module")
def summary(smoke_run):
    return summary_of(smoke_run)["methods"]


@pytest.fixture(scope="module")
def test_data(mnist_root):
    return load_mnist(mnist_root, train=False, download=False)


def pretrained(run):
    return load_model(MLP(), run / "pretrained.safetensors")


def adapted(run, method):
    return load_adapters(pretrained(run), run / "adapters" / f"{method}.safetensors")


def test_run_saves_the_models_adapters_and_peft_exports(smoke_run, summary):
    full_model_bytes = (smoke_run / "pretrained.safetensors").stat().st_size
    assert summary["pretrained"]["files"] == {"full_model_bytes": full_model_bytes}
    for method in METHODS:
        files = summary[method]["files"]
        peft_dir = smoke_run / "peft" / method
        assert files == {"adapter_bytes": (smoke_run / "adapters" / f"{method}.safetensors").stat().st_size,
                         "merged_bytes": (smoke_run / f"{method}_merged.safetensors").stat().st_size,
                         "peft_adapter_bytes": (peft_dir / "adapter_model.safetensors").stat().st_size,
                         "full_model_bytes": full_model_bytes}
        assert (peft_dir / "adapter_config.json").exists()
        # rank 4 adapters: 4 * (912 + 384 + 266) floats (+ 394 magnitudes) against 136,074 weights
        assert files["adapter_bytes"] < 0.06 * full_model_bytes


@pytest.mark.parametrize("method", METHODS)
def test_merged_model_is_a_plain_mlp_that_predicts_as_the_adapters_do(smoke_run, summary, test_data, method):
    state = load_file(smoke_run / f"{method}_merged.safetensors")
    assert set(state) == set(MLP().state_dict())  # only nn.Linear weights and biases
    merged = MLP()
    merged.load_state_dict(state)
    logits, merged_logits = predict(adapted(smoke_run, method), test_data.images), predict(merged, test_data.images)
    assert (merged_logits - logits).abs().max() <= rounding_bound(logits)
    checks = summary[method]["file_checks"]
    assert (merged_logits - logits).abs().max().item() == checks["merged_max_logit_diff"]
    # The same predictions wherever the top two logits are further apart than the merge moved any
    # logit; the images that are closer (which ones depends on the CPU's rounding) may go either way.
    top2 = logits.topk(2, dim=1).values
    sure = top2[:, 0] - top2[:, 1] > 2 * checks["merged_max_logit_diff"]
    assert torch.equal(merged_logits.argmax(1)[sure], logits.argmax(1)[sure])
    correct = evaluate(merged, test_data).correct
    assert correct == checks["merged_test_correct"]
    assert abs(correct - summary[method]["test_correct"]) <= int((~sure).sum())
    assert len(test_data) == summary[method]["n_test"] == 10_000


@pytest.mark.parametrize("method", METHODS)
def test_adapter_file_on_the_saved_base_reproduces_the_test_accuracy(smoke_run, summary, test_data, method):
    accuracy = evaluate(adapted(smoke_run, method), test_data)
    assert accuracy.correct == summary[method]["test_correct"] == summary[method]["file_checks"]["reloaded_test_correct"]
    assert accuracy.percent == summary[method]["test_accuracy"]


@pytest.mark.parametrize("method", METHODS)
def test_peft_loads_the_export_onto_the_pretrained_mlp(smoke_run, test_data, method):
    peft_model = load_with_peft(pretrained(smoke_run), smoke_run / "peft" / method)
    expected = predict(adapted(smoke_run, method), test_data.images)
    torch.testing.assert_close(predict(peft_model, test_data.images), expected, atol=rounding_bound(expected), rtol=0)
