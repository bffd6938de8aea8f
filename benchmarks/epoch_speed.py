"""One training epoch, three ways, for pretraining, LoRA and DoRA, measured side by side.

    python benchmarks/epoch_speed.py [--repeats 5] [--seeds-repeats 3] [key.sub=value ...]

  project  loradora.training.train: the loop dora_example.py runs (logging, running loss and
           accuracy, divergence check) over tensors on the device
  floor    the barest PyTorch loop over the same model and tensors: index slices of a randperm,
           forward, backward, fused Adam, nothing else; what the project's loop costs at least
  seeds    the seeds' way (seeds_way.py): ToTensor() through a DataLoader, the adapted weight
           rebuilt in every forward, per-tensor Adam

All run in this one process on the same data and weights, interleaved repeat by repeat, so the
machine's drift hits them alike; the figures are medians. Seconds exclude evaluation and, on CUDA,
synchronise the device. On CUDA, peak memory is the device memory allocated during each epoch
(MNIST included); on the CPU the allocator reuses memory from one phase to the next, so only the
process's peak resident memory is meaningful, and it is printed once.
"""

import argparse
import contextlib
import copy
import io
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import dora_example  # noqa: E402
from loradora.adapters import add_adapters  # noqa: E402
from loradora.config import load_config, resolve_device  # noqa: E402
from loradora.data import load_mnist, shuffled_batches  # noqa: E402
from loradora.model import MLP  # noqa: E402
from loradora.training import train  # noqa: E402
from seeds_way import seeds_adapt, seeds_loaders, seeds_train  # noqa: E402


def project_epoch(model, data, config, device):
    train(model, data, epochs=1, batch_size=config.finetune.batch_size, lr=config.finetune.lr,
          generator=torch.Generator().manual_seed(config.seed), log=lambda record: None,
          log_every=config.log.every_n_batches, max_loss=config.finetune.max_loss)


def floor_epoch(model, data, config, device):
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.finetune.lr,
                                 fused=True)
    generator = torch.Generator().manual_seed(config.seed)
    for indices in shuffled_batches(len(data), config.finetune.batch_size, generator, device):
        loss = F.cross_entropy(model(data.images[indices]), data.labels[indices])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def seeds_epoch(model, loader, config, device):
    with contextlib.redirect_stdout(io.StringIO()):  # its loss lines
        seeds_train(model, 1, config.finetune.lr, loader, device, accuracy_pass=False)


def measure(epoch, model, data, config, device) -> tuple[float, float]:
    """(seconds, peak device MB or NaN on the CPU) of one epoch on a fresh copy of ``model``."""
    model = copy.deepcopy(model)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = now(device)
    epoch(model, data, config, device)
    seconds = now(device) - start
    return seconds, torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")


def now(device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def peak_resident_mb() -> float:
    """The process's peak resident memory so far (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="epochs timed per way and phase (project, floor)")
    parser.add_argument("--seeds-repeats", type=int, default=3, help="the same for the seeds' way (slow); 0 skips it")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value")
    args = parser.parse_args()
    config = load_config(dora_example.DEFAULT_CONFIG, args.overrides, project=dora_example.PROJECT)
    device = resolve_device(config.device)
    data = load_mnist(config.data.root, train=True, device=device, subset=config.data.train_subset,
                      download=config.data.download)
    seeds_loader, _ = seeds_loaders(config.data.root, config.finetune.batch_size)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(f"torch {torch.__version__} on {device} ({name}); {len(data):,} images, batch "
          f"{config.finetune.batch_size}, rank {config.lora.rank}, alpha {config.lora.alpha:g}")

    torch.manual_seed(config.seed)
    base = MLP(config.model.hidden_sizes).to(device)
    phases = {"pretrain": base}
    for method in ("lora", "dora"):
        adapter = getattr(config, method)
        torch.manual_seed(config.seed)
        phases[method] = add_adapters(copy.deepcopy(base), method, **vars(adapter))
    seeds_models = {"pretrain": base, **{m: seeds_adapt(base, m, getattr(config, m).rank, getattr(config, m).alpha)
                                         for m in ("lora", "dora")}}
    ways = {"project": (project_epoch, lambda phase: (phases[phase], data)),
            "floor": (floor_epoch, lambda phase: (phases[phase], data)),
            "seeds": (seeds_epoch, lambda phase: (seeds_models[phase], seeds_loader))}

    for phase in phases:  # warm-up: first calls pay for allocation and kernel selection
        project_epoch(copy.deepcopy(phases[phase]), data, config, device)
    results = {(way, phase): [] for way in ways for phase in phases}
    for repeat in range(max(args.repeats, args.seeds_repeats)):
        for (way, phase), runs in results.items():
            if repeat < (args.seeds_repeats if way == "seeds" else args.repeats):
                epoch, inputs = ways[way]
                runs.append(measure(epoch, *inputs(phase), config, device))
        print(f"repeat {repeat + 1} done", file=sys.stderr, flush=True)
    report(results, phases, ways)


def report(results: dict, phases: dict, ways: dict) -> None:
    seconds = {key: statistics.median(s for s, _ in runs) for key, runs in results.items() if runs}
    memory = {key: max(mb for _, mb in runs) for key, runs in results.items() if runs}
    print(f"\n{'phase':<9}" + "".join(f"{way + ' s':>11}" for way in ways)
          + f"{'project/floor':>15}{'seeds/project':>15}{'peak MB (project)':>19}")
    for phase in phases:
        row = f"{phase:<9}" + "".join(f"{seconds.get((way, phase), float('nan')):>11.3f}" for way in ways)
        row += f"{seconds['project', phase] / seconds['floor', phase]:>15.3f}"
        row += f"{seconds.get(('seeds', phase), float('nan')) / seconds['project', phase]:>15.2f}"
        peak = memory["project", phase]
        print(row + (f"{'-':>19}" if math.isnan(peak) else f"{peak:>19.0f}"))
    for way in ("project", "floor"):
        print(f"DoRA / LoRA epoch ({way}): {seconds[way, 'dora'] / seconds[way, 'lora']:.3f}")
    print("repeats per way: " + ", ".join(f"{way} {len(results[way, 'pretrain'])}" for way in ways))
    if math.isnan(memory["project", "pretrain"]):
        print(f"peak resident memory of this process (CPU; all ways and phases): {peak_resident_mb():.0f} MB")


if __name__ == "__main__":
    main()
