"""What the fine-tuning data is: MNIST again, or a shifted MNIST that the pretrained model must adapt to.

Fine-tuning on the very data the base was pretrained on (``same``, as the seeds do) leaves little to
adapt: the base already scores about 95%. A shifted task makes the adapters earn their accuracy:

    rotate   every image rotated by ``finetune.rotate_degrees`` (counter-clockwise, bilinear, black fill)
    permute  every image's pixels shuffled by one fixed permutation (``finetune.permutation_seed``),
             the "permuted MNIST" of the continual-learning literature; no convolution could undo
             it, but an MLP's first layer can

The same shift applies to the training and the test split, so accuracy is measured on the task.

Two tasks keep the images and change the labels, so that what fine-tuning must learn is known in
advance (loradora/teachers.py): each seed's pretrained base, changed in a known way, labels the
images for that seed's models (``taught``):

    gain     every row of every layer rescaled by its own factor: DoRA's magnitude can reach it, LoRA cannot
    turn     every layer's rows turned by a rank-2 change, norms kept: DoRA's direction reaches it
"""

import torch

from loradora.choices import N_PIXELS, TASKS, TEACHER_TASKS
from loradora.data import Split
from loradora.teachers import TEACHERS
from loradora.training import predict

SIDE = 28  # MNIST images are 28 x 28, stored flattened


def shift_split(split: Split, task: str, rotate_degrees: float = 0.0, permutation_seed: int = 0) -> Split:
    """``split`` as the fine-tuning task sees it; ``same`` and the teacher tasks (whose labels come
    after pretraining, ``taught``) return it unchanged."""
    if task in ("same", *TEACHER_TASKS):
        return split
    if task == "rotate":
        return Split(rotate_images(split.images, rotate_degrees), split.labels)
    if task == "permute":
        return Split(split.images[:, pixel_permutation(permutation_seed).to(split.images.device)], split.labels)
    raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")


def rotate_images(images: torch.Tensor, degrees: float) -> torch.Tensor:
    """(N, 784) flattened images, each rotated about its centre; pixels rotated in from outside are 0."""
    # torchvision is imported here, not at the top: only this task needs its transforms, and
    # importing it costs about a second of every run's start-up.
    import torchvision.transforms.v2.functional as TF
    from torchvision.transforms import InterpolationMode

    square = images.reshape(-1, 1, SIDE, SIDE)
    rotated = TF.rotate(square, degrees, interpolation=InterpolationMode.BILINEAR, fill=0.0)
    return rotated.reshape(len(images), N_PIXELS)


def pixel_permutation(seed: int) -> torch.Tensor:
    """One fixed order of the 784 pixels, drawn on the CPU so a seed means the same on every device."""
    return torch.randperm(N_PIXELS, generator=torch.Generator().manual_seed(seed))


def taught(split: Split, teachers: list[torch.nn.Module], seeds: list[int]) -> Split:
    """``split``'s images labelled by each seed's teacher: labels (seeds, N), a row per seed."""
    labels = torch.stack([predict(teacher, split.images).argmax(dim=1) for teacher in teachers])
    return Split(split.images, labels, tuple(seeds))


def teachers_of(bases: list[torch.nn.Module], task: str, teacher_seed: int) -> list[torch.nn.Module]:
    """Each base's teacher for ``task`` (teachers.TEACHERS), all drawn from ``teacher_seed``."""
    return [TEACHERS[task](base, teacher_seed) for base in bases]


def task_label(task: str, rotate_degrees: float = 0.0, permutation_seed: int = 0, teacher_seed: int = 0) -> str:
    """A short name for tables and plots."""
    if task == "gain":
        return f"MNIST labelled by each base with its rows rescaled (teacher seed {teacher_seed})"
    if task == "turn":
        return f"MNIST labelled by each base with its rows turned (teacher seed {teacher_seed})"
    if task == "rotate":
        return f"MNIST rotated {rotate_degrees:g} degrees"
    if task == "permute":
        return f"MNIST with pixels permuted (seed {permutation_seed})"
    return "MNIST"
