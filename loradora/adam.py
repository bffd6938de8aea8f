"""Adam (Kingma & Ba 2015, algorithm 1, as torch.optim.Adam orders it), for one model or a population.

``FusedAdam`` is ``torch.optim.Adam(fused=True)``: the same fused kernel, reached through torch's
functional form ``torch.optim.adam.adam``. The class is not used because constructing any
``torch.optim`` optimiser imports ``torch._dynamo`` on its first ``add_param_group``: 1.0 s of a
10 s default run (torch 2.14.1, 2-core Xeon), where the functional form needs no such import. A test
holds the two to the same bits.

``MemberAdam`` gives each member of a population (dim 0 of every parameter) its own learning rate,
which the fused kernel cannot: the update written out, with the rate broadcast over members.
Both take a multiplier per parameter (per member, for MemberAdam): a part of an adapter at its own
rate (variants.PartRates).

Both keep torch's state layout, ``state[parameter] = {"step", "exp_avg", "exp_avg_sq"}``, so a
population that drops a member can carry the others' moments over (population.PopulationStep.keep).
"""

import math

import torch
from torch import nn
from torch.optim.adam import adam

BETAS, EPS = (0.9, 0.999), 1e-8  # torch's defaults, and the paper's


class _Adam:
    """What both keep: the parameters they update, and each one's moments and step count."""

    def __init__(self, parameters: list[nn.Parameter]):
        self.parameters = list(parameters)
        self.state: dict = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.parameters:
            p.grad = None


class FusedAdam(_Adam):
    """Adam with one rate, one fused kernel per step over all parameters; with ``scales`` (one per
    parameter), parameter j at ``lr * scales[j]``: one kernel per distinct rate, as torch.optim.Adam
    runs one per parameter group."""

    def __init__(self, parameters: list[nn.Parameter], lr: float, scales: list[float] | None = None):
        super().__init__(parameters)
        self.lr = lr
        self.scales = scales or [1.0] * len(self.parameters)

    @torch.no_grad()
    def step(self) -> None:
        for scale in dict.fromkeys(self.scales):
            params = [p for p, s in zip(self.parameters, self.scales) if s == scale and p.grad is not None]
            states = [self.state.setdefault(p, {"step": torch.zeros((), dtype=torch.float32, device=p.device),
                                                "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)})
                      for p in params]
            if params:
                adam(params, [p.grad for p in params], [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                     [], [s["step"] for s in states], fused=True, amsgrad=False, beta1=BETAS[0], beta2=BETAS[1],
                     lr=self.lr * scale, weight_decay=0.0, eps=EPS, maximize=False)  # the kernel counts the steps


class MemberAdam(_Adam):
    """Adam with one learning rate per member (dim 0 of every parameter), torch's update written out:

        m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g^2;  p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)

    Tests hold it to torch's fused Adam member by member.
    """

    def __init__(self, parameters: list[nn.Parameter], lrs: list[float], scales: list[list[float]] | None = None):
        """``scales[j][i]``: member i's multiplier of its rate for parameter j (None: all 1)."""
        super().__init__(parameters)
        scales = scales or [[1.0] * len(lrs) for _ in self.parameters]
        self.rates = {p: torch.tensor([lr * s for lr, s in zip(lrs, row)], dtype=p.dtype, device=p.device)
                      for p, row in zip(self.parameters, scales)}

    @torch.no_grad()
    def step(self) -> None:
        beta1, beta2 = BETAS
        for p in self.parameters:
            if p.grad is None:
                continue
            state = self.state.setdefault(p, {"step": torch.zeros(()), "exp_avg": torch.zeros_like(p),
                                              "exp_avg_sq": torch.zeros_like(p)})
            state["step"] += 1
            t = state["step"].item()
            state["exp_avg"].lerp_(p.grad, 1 - beta1)
            state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
            denom = (state["exp_avg_sq"].sqrt() / math.sqrt(1 - beta2**t)).add_(EPS)
            step_size = (self.rates[p] / (1 - beta1**t)).view(-1, *[1] * (p.dim() - 1))
            p.sub_(step_size * state["exp_avg"] / denom)
