"""What a config may name, and the shape of an MNIST image: plain constants, free of torch.

``loradora.config`` checks a config against these before anything imports torch (which takes
seconds), so ``--help`` and a bad key answer at once; the modules that implement each choice import
their names from here, so the two cannot drift apart.
"""

import math

SCALINGS = ("standard", "rslora", "alpha")  # lora_scaling below
# magnitude and direction are DoRA with one part frozen (loradora/adapters.py: DoRAMagnitude,
# DoRADirection); they take the dora: section's settings (ADAPTER_SECTIONS)
ADAPTER_METHODS = ("lora", "dora", "magnitude", "direction")  # loradora/adapters.py: ADAPTERS
ADAPTER_SECTIONS = {"lora": "lora", "dora": "dora", "magnitude": "dora", "direction": "dora"}
BASELINES = ("full", "head")                # loradora/methods.py: prepare
METHODS = (*ADAPTER_METHODS, *BASELINES)
SHIFTS = ("same", "rotate", "permute")      # loradora/tasks.py: shift_split
TEACHER_TASKS = ("gain", "turn")            # loradora/teachers.py: TEACHERS; labels from each seed's base
TASKS = (*SHIFTS, *TEACHER_TASKS)
PRECISIONS = ("fp32", "bf16")               # loradora/training.py: products_in

N_PIXELS = 28 * 28  # an MNIST image, flattened
N_CLASSES = 10


def lora_scaling(rank: int, alpha: float, scaling: str = "standard") -> float:
    """The factor s in W0 + s * B @ A.

    standard: alpha / rank (LoRA paper section 4.1, PEFT's default), so changing the rank does not
        require retuning the learning rate much.
    rslora:   alpha / sqrt(rank) (Kalajdzievski 2023, arXiv 2312.03732), stable at high rank.
    alpha:    alpha alone, the convention of the from-scratch DoRA article, to reproduce it.
    """
    if scaling == "standard":
        return alpha / rank
    if scaling == "rslora":
        return alpha / math.sqrt(rank)
    if scaling == "alpha":
        return float(alpha)
    raise ValueError(f"unknown scaling {scaling!r}; expected one of {', '.join(SCALINGS)}")
