"""The files a run leaves for use outside this script, each checked on the test set as it is written.

pretrained.safetensors          the pretrained model's state dict: the base adapter files re-attach to
adapters/<method>.safetensors   that method's adapter tensors and settings, nothing else (checkpoints.py)
<method>_merged.safetensors     the adapters merged into the weights: a plain model's state dict
peft/<method>/                  the adapters in Hugging Face PEFT's format (export.py)
"""

import copy
from pathlib import Path

from torch import nn

from loradora.adapters import merge_adapters
from loradora.checkpoints import load_adapters, load_model, save_adapters, save_model
from loradora.data import Split
from loradora.export import export_peft
from loradora.results import FileChecks, MethodResult
from loradora.training import accuracy, predict

PRETRAINED = "pretrained.safetensors"


def save_pretrained(model: nn.Module, run_dir: Path) -> dict[str, int]:
    """Save the base; returns the bytes of the file written, for MethodResult.files."""
    save_model(model, run_dir / PRETRAINED)
    return {"full_model_bytes": (run_dir / PRETRAINED).stat().st_size}


def save_method(tuned: nn.Module, method: str, run_dir: Path, test_data: Split,
                base: nn.Module) -> tuple[dict[str, int], FileChecks]:
    """Save the adapters, the merged model and the PEFT export of ``tuned``; test what was saved.

    ``base`` is the pretrained model, already saved by ``save_pretrained``. The merged model is
    tested against ``tuned`` on every test image (same predictions, logits within float rounding),
    and the adapter file, re-attached to the saved base, must reproduce ``tuned``'s correct count.
    Returns the bytes of each file written, and the checks.
    """
    paths = {"adapter": run_dir / "adapters" / f"{method}.safetensors",
             "merged": run_dir / f"{method}_merged.safetensors",
             "peft_adapter": run_dir / "peft" / method / "adapter_model.safetensors",
             "full_model": run_dir / PRETRAINED}
    save_adapters(tuned, paths["adapter"])
    save_model(merge_adapters(copy.deepcopy(tuned)), paths["merged"])
    export_peft(tuned, paths["peft_adapter"].parent)

    logits = predict(tuned, test_data.images)
    merged_logits = predict(load_model(copy.deepcopy(base), paths["merged"]), test_data.images)
    reloaded_model = load_adapters(load_model(copy.deepcopy(base), paths["full_model"]), paths["adapter"])
    unmerged = accuracy(logits, test_data.labels)
    merged = accuracy(merged_logits, test_data.labels)
    reloaded = accuracy(predict(reloaded_model, test_data.images), test_data.labels)
    if reloaded.correct != unmerged.correct:
        raise RuntimeError(f"{method}: {paths['adapter']} on {paths['full_model']} gets {reloaded.correct} "
                           f"test images right, the fine-tuned model {unmerged.correct}")
    files = {f"{name}_bytes": path.stat().st_size for name, path in paths.items()}
    return files, FileChecks(merged_test_accuracy=merged.percent, merged_test_correct=merged.correct,
                             merged_max_logit_diff=(merged_logits - logits).abs().max().item(),
                             reloaded_test_correct=reloaded.correct)


def format_artifacts(methods: dict[str, MethodResult], seed: int) -> str:
    """One line per fine-tuned method of ``seed`` (the one whose files are saved): its file sizes
    against the full model's, merged vs unmerged."""
    lines = []
    for name, result in methods.items():
        checks = result.file_checks
        if checks is None:
            continue
        adapter_bytes, full_bytes = result.files["adapter_bytes"], result.files["full_model_bytes"]
        lines.append(
            f"{name}, seed {seed}: adapter file {adapter_bytes:,} bytes vs full model {full_bytes:,} "
            f"({adapter_bytes / full_bytes:.1%}); test accuracy merged {checks.merged_test_accuracy:.2f}% "
            f"({checks.merged_test_correct:,} of {result.n_test:,}) vs unmerged "
            f"{result.test_accuracy:.2f}% ({result.test_correct:,}), logits within "
            f"{checks.merged_max_logit_diff:.1e}")
    return "\n".join(lines)
