"""Hugging Face PEFT as the oracle for the export tests: load an exported adapter the way a user would."""

import warnings
from pathlib import Path

from peft import PeftModel
from torch import nn


def load_with_peft(base: nn.Module, directory: Path) -> PeftModel:
    """``PeftModel.from_pretrained(base, directory)``, in eval mode, failing on any warning (PEFT
    warns of missing adapter keys) and on any key that the file has and the model lacks, or the
    reverse (``load_adapter`` reports both)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        peft_model = PeftModel.from_pretrained(base, directory)
        again = peft_model.load_adapter(directory, adapter_name="again")
    assert not [str(w.message) for w in caught]
    assert (again.missing_keys, again.unexpected_keys) == ([], [])
    peft_model.set_adapter("default")
    return peft_model.eval()
