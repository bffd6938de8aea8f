"""FusedAdam: torch.optim.Adam(fused=True)'s bits, without the second of import it costs."""

import copy
import subprocess
import sys

import torch
import torch.nn.functional as F

from conftest import REPO
from loradora.adam import FusedAdam
from loradora.adapters import add_adapters
from loradora.model import MLP
from helpers import nontrivial


def losses_and_weights(model, optimizer, steps=20):
    generator = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        images, labels = torch.rand(32, 784, generator=generator), torch.randint(0, 10, (32,), generator=generator)
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses, [p.detach().clone() for p in model.parameters()]


def test_fused_adam_is_torchs_fused_adam_bit_for_bit():
    base = nontrivial(add_adapters(MLP(), "dora", 3, 7.0))  # frozen base, trainable A, B and magnitude
    ours, theirs = copy.deepcopy(base), copy.deepcopy(base)
    trainable = lambda model: [p for p in model.parameters() if p.requires_grad]  # noqa: E731
    ours_losses, ours_weights = losses_and_weights(ours, FusedAdam(trainable(ours), lr=3e-3))
    theirs_losses, theirs_weights = losses_and_weights(theirs, torch.optim.Adam(trainable(theirs), lr=3e-3,
                                                                                fused=True))
    assert ours_losses == theirs_losses
    assert all(torch.equal(a, b) for a, b in zip(ours_weights, theirs_weights))


def test_training_does_not_import_torch_dynamo():
    # Constructing a torch.optim optimiser imports torch._dynamo: 1.0 s of a 10 s default run.
    code = f"""
import sys
sys.path.insert(0, {str(REPO)!r})
import torch
from loradora.data import Split
from loradora.model import MLP
from loradora.training import train
data = Split(torch.rand(128, 784), torch.randint(0, 10, (128,)))
train(MLP(), data, epochs=1, batch_size=64, lr=1e-3, generator=torch.Generator().manual_seed(0),
      log=lambda record: None, log_every=1)
print("torch._dynamo" in sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
