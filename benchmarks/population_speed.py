"""Population training against one model after another, measured side by side.

    python benchmarks/population_speed.py epochs [--sizes 1 5 20 32 50] [--repeats 3]
    python benchmarks/population_speed.py runs [--repeats 1] [--sweep]
    python benchmarks/population_speed.py precision [--sizes 1 20 32] [--repeats 3]

epochs  One epoch of pretraining, LoRA and DoRA (rank 4) per member, for populations of each size,
        against the compute floor: the epoch's FLOPs (counted by torch's FlopCounterMode on one
        step) divided by the rate of a large matrix product measured in the same run. Also DoRA's
        two exact norm paths (direct and expanded) at each size, and DoRA / LoRA through
        add_adapters for one model (the project's loop).
        Beside that floor, a roofline floor per phase and size (``roofline_step``): one step's
        matrix products, recorded under a dispatch mode on a real population step (forward, input
        and weight gradients) and each timed alone at its own shapes and strides, plus the bytes the
        step must move divided by a copy rate measured at the step's working-set size:
          gather       read + write of the (N, batch, 784) float32 images and the int64 labels;
          Adam         7 x 4 bytes per trainable element (read param, grad, exp_avg, exp_avg_sq;
                       write param, exp_avg, exp_avg_sq);
          ReLU         per hidden output (N, batch, out): forward read + write, backward read grad,
                       read activation, write (5 passes);
          loss         softmax over the (N, batch, 10) logits: forward and backward read + write
                       (4 passes, small);
          DoRA         per adapted layer, the per-row rescale of its output: forward read + write,
                       backward read 2 + write (5 passes).
        The working set (the copy probe's buffer) is the parameters, gradients and Adam state of
        the population plus the step's activations (the images and every layer's output, and for
        DoRA the output before its rescale), in float32. Both floors are today's maths: work that
        sharing the frozen first layer across members would remove is still counted, so sharing
        shows as beating them. Neither counts the LoRA add, the bias gradient's reduction or
        forming DoRA's V in the direct norm (its matmuls are counted), so the roofline is a floor.
precision  One epoch of pretraining, LoRA and DoRA per member, as the project trains them
        (population.member_step: one model alone, more as a population), with precision fp32
        against bf16 (autocast products, float32 master weights), side by side.
runs    Whole runs of dora_example.py, each in a fresh process (wall time from outside, peak
        resident memory from the child): 20 seeds of LoRA and DoRA, 1 fine-tuning epoch, cache off,
        with experiment.population auto against 1; with --sweep also configs/rank_sweep.yaml.
        Prints the speed-up, the mean accuracies of both, DoRA / LoRA train s per member, and peak
        memory.

Sides alternate repeat by repeat and each keeps its fastest run: other jobs on shared cores only
ever slow a run down (torch's threads collapse under contention), so the fastest is the least
disturbed. Timing excludes evaluation and synchronises the GPU.
"""

import argparse
import copy
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map_only
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from loradora.config import load_config, resolve_device  # noqa: E402
from loradora.data import load_mnist  # noqa: E402
from loradora.methods import prepare  # noqa: E402
from loradora.model import MLP  # noqa: E402
from loradora.population import Population, StackedDoRA, member_step, train_population  # noqa: E402
from loradora.run_folder import cpu_name  # noqa: E402
from loradora.training import train, train_members  # noqa: E402

PHASES = ("pretrain", "lora", "dora")
PRECISIONS = ("fp32", "bf16")


def members(phase: str, n: int, config, device) -> list[torch.nn.Module]:
    models = []
    for seed in range(1, n + 1):
        torch.manual_seed(seed)
        base = MLP(config.model.hidden_sizes).to(device)
        models.append(base if phase == "pretrain" else prepare(base, phase, **vars(getattr(config, phase))))
    return models


def population_epoch(models, data, config, norm: str = "direct") -> float:
    """Seconds per member of one epoch of ``models`` trained as one population."""
    start = now(data.images.device)
    train_population(Population(models, norm=norm), data, epochs=1, batch_size=config.finetune.batch_size,
                     lr=config.finetune.lr, generators=[torch.Generator().manual_seed(i) for i in range(len(models))],
                     log=lambda records: None, log_every=10**9)
    return (now(data.images.device) - start) / len(models)


def single_epoch(model, data, config) -> float:
    """Seconds of one epoch of ``model`` through the project's loop (training.train)."""
    start = now(data.images.device)
    train(model, data, epochs=1, batch_size=config.finetune.batch_size, lr=config.finetune.lr,
          generator=torch.Generator().manual_seed(0), log=lambda record: None, log_every=10**9)
    return now(data.images.device) - start


def project_epoch(models, data, config, precision: str) -> float:
    """Seconds per member of one epoch of ``models`` as a run trains them (population.member_step)."""
    step = member_step(models, [config.finetune.lr] * len(models), precision=precision)
    start = now(data.images.device)
    train_members(step, data, epochs=1, batch_size=config.finetune.batch_size,
                  generators=[torch.Generator().manual_seed(i) for i in range(len(models))],
                  log=lambda records: None, log_every=10**9)
    return (now(data.images.device) - start) / len(models)


def step_flops(model, data, batch_size: int) -> int:
    """FLOPs of one training step (forward and backward) of one model, counted by torch."""
    model = copy.deepcopy(model)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(data.images[:batch_size]), data.labels[:batch_size]).backward()
    return counter.get_total_flops()


def matmul_rate(device, size: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of a large float32 matrix product on ``device``: the best of ``repeats``."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    best = float("inf")
    for _ in range(repeats):
        start = now(device)
        a @ b
        best = min(best, now(device) - start)
    return 2 * size**3 / best


def now(device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


# ---- the roofline floor: each matrix product of a step timed alone, plus its bytes at a copy rate ----

# aten ops that are matrix products; matmul itself decomposes before dispatch, but is listed in case
MATMULS = {"mm", "bmm", "addmm", "addmm_", "baddbmm", "baddbmm_", "addbmm", "matmul", "_addmm_activation"}
MB = 2**20


@dataclass(frozen=True)
class Layout:
    """A recorded tensor argument: enough to make a fresh one laid out the same. A dataclass, not a
    namedtuple, so that pytree treats it as a leaf."""
    shape: tuple
    stride: tuple
    dtype: torch.dtype
    device: torch.device


def layout(tensor: torch.Tensor) -> Layout:
    return Layout(tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype, tensor.device)


def fresh(recorded: Layout) -> torch.Tensor:
    """Random values with the recorded shape and strides (transposed, broadcast bias and all): a
    storage just long enough, viewed with as_strided."""
    extent = 1 + sum((n - 1) * s for n, s in zip(recorded.shape, recorded.stride)) if all(recorded.shape) else 0
    return torch.randn(extent, dtype=recorded.dtype, device=recorded.device).as_strided(recorded.shape, recorded.stride)


class MatmulRecorder(TorchDispatchMode):
    """Records every matrix product dispatched under it, autograd's backward ones included:
    signature (op, argument layouts, scalars such as beta and alpha) -> [op, args, kwargs, count]."""

    def __init__(self):
        super().__init__()
        self.calls: dict[str, list] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.overloadpacket.__name__ in MATMULS:
            shapes, kw_shapes = tree_map_only(torch.Tensor, layout, (args, kwargs))
            self.calls.setdefault(repr((func, shapes, kw_shapes)), [func, shapes, kw_shapes, 0])[3] += 1
        return func(*args, **kwargs)


def best_seconds(fn, device, repeats: int = 5, target: float = 2e-3) -> float:
    """Fastest seconds per call of ``fn`` over ``repeats`` timings, after a warm call. A call much
    shorter than ``target`` is timed ``inner`` times in a row, so that one synchronisation (a GPU's
    launch latency) and the timer's resolution are spread over them; a long one once, to stay short."""
    fn()
    start = now(device)
    fn()
    inner = max(1, min(100, round(target / (now(device) - start))))
    best = float("inf")
    for _ in range(repeats):
        start = now(device)
        for _ in range(inner):
            fn()
        best = min(best, (now(device) - start) / inner)
    return best


def copy_rate(nbytes: int, device) -> float:
    """Bytes/s of dst.copy_(src) for float32 buffers of ``nbytes`` each (read + write: 2 x nbytes)."""
    src = torch.rand(max(nbytes // 4, 1), device=device)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / best_seconds(lambda: dst.copy_(src), device)


def record_step(population: Population, data, batch_size: int) -> tuple[list, list]:
    """One training step of ``population`` as PopulationStep takes it (gather, forward, per-member
    mean cross-entropy summed, backward): its matrix products, and each layer's (module, output
    elements)."""
    n = len(population)
    indices = torch.randint(len(data), (n, batch_size), generator=torch.Generator().manual_seed(0))
    indices = indices.to(data.images.device)
    outputs = []
    hooks = [layer.register_forward_hook(lambda module, _, out: outputs.append((module, out.numel())))
             for layer in population.layers]
    with MatmulRecorder() as recorder:
        images, labels = data.images[indices], data.labels[indices]
        logits = population(images)
        losses = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none").view(n, -1).mean(dim=1)
        losses.sum().backward()
    for hook in hooks:
        hook.remove()
    return list(recorder.calls.values()), outputs


def step_bytes(population: Population, outputs: list, batch_size: int) -> tuple[int, int]:
    """(bytes one step must move outside its matmuls, its working set in bytes): the counts of the
    module docstring."""
    n, f32 = len(population), 4
    images = n * batch_size * 784
    trainable = sum(p.numel() for p in population.parameters() if p.requires_grad)
    everything = sum(p.numel() for p in population.parameters())
    moved = 2 * f32 * images + 2 * 8 * n * batch_size + 7 * f32 * trainable  # gather, Adam
    activations = images + sum(numel for _, numel in outputs)
    for module, numel in outputs:
        if isinstance(module, nn.ReLU):
            moved += 5 * f32 * numel
        if isinstance(module, StackedDoRA):  # the rescale, and the output before it
            moved += 5 * f32 * numel
            activations += numel
    moved += 4 * f32 * outputs[-1][1]  # softmax / cross-entropy over the logits
    return moved, f32 * (everything + 3 * trainable + activations)


def roofline_step(models, data, batch_size: int, norm: str) -> dict:
    """Seconds of one step of ``models`` as a population at the roofline: every recorded matrix
    product timed alone (times its multiplicity), plus ``step_bytes`` at the copy rate of a buffer
    the size of the step's working set."""
    device = data.images.device
    population = Population(models, norm=norm)
    calls, outputs = record_step(population, data, batch_size)
    matmul = 0.0
    for func, shapes, kw_shapes, count in calls:
        args, kwargs = tree_map_only(Layout, fresh, (shapes, kw_shapes))
        matmul += count * best_seconds(lambda: func(*args, **kwargs), device)
    moved, working_set = step_bytes(population, outputs, batch_size)
    rate = copy_rate(working_set, device)
    return {"seconds": matmul + moved / rate, "matmul": matmul, "moved": moved, "working_set": working_set,
            "rate": rate, "kinds": len(calls), "calls": sum(call[3] for call in calls)}


def epochs_benchmark(args) -> None:
    config = load_config(REPO / "configs" / "default.yaml", args.overrides)
    device = resolve_device(config.device)
    data = load_mnist(REPO / config.data.root, train=True, device=device, subset=config.data.train_subset)
    print(f"torch {torch.__version__} on {device_name(device)}; {len(data):,} images, batch "
          f"{config.finetune.batch_size}, rank {config.lora.rank}; fastest of {args.repeats} per cell")
    steps = -(-len(data) // config.finetune.batch_size)
    flops = {phase: step_flops(members(phase, 1, config, device)[0], data, config.finetune.batch_size) * steps
             for phase in PHASES}
    ways = [(phase, n, "direct") for phase in PHASES for n in args.sizes]
    ways += [("dora", n, "expanded") for n in args.sizes]
    best = {way: float("inf") for way in ways}
    alone = {phase: float("inf") for phase in ("lora", "dora")}
    rate = 0.0
    for repeat in range(args.repeats):  # alternate every cell within a repeat
        rate = max(rate, matmul_rate(device))
        for way in ways:
            phase, n, norm = way
            best[way] = min(best[way], population_epoch(members(phase, n, config, device), data, config, norm))
        for phase in alone:
            alone[phase] = min(alone[phase], single_epoch(members(phase, 1, config, device)[0], data, config))
        print(f"repeat {repeat + 1} done", file=sys.stderr, flush=True)

    # the roofline once, after the timed epochs; each of its timings keeps its own fastest repeat
    roof = {(phase, n, norm): roofline_step(members(phase, n, config, device), data, config.finetune.batch_size, norm)
            for phase, n, norm in ways}
    print_roofline(roof, steps, device)

    print(f"\nlarge matmul (2048^2, float32): {rate / 1e9:.1f} GFLOP/s")
    print(f"{'phase':<9}{'norm':<10}{'N':>5}{'s/member':>10}{'speed-up':>10}{'GFLOP/s':>9}{'floor s':>9}"
          f"{'s / floor':>10}{'roofline s':>11}{'s / roofline':>13}")
    for phase, n, norm in ways:
        seconds = best[phase, n, norm]
        floor = flops[phase] / rate
        roofline = steps * roof[phase, n, norm]["seconds"] / n  # per member
        speedup = best[phase, 1, "direct"] / seconds
        print(f"{phase:<9}{norm if phase == 'dora' else '-':<10}{n:>5}{seconds:>10.3f}{speedup:>9.2f}x"
              f"{flops[phase] / seconds / 1e9:>9.1f}{floor:>9.3f}{seconds / floor:>10.2f}"
              f"{roofline:>11.3f}{seconds / roofline:>13.2f}")
    for n in args.sizes:
        dora = min(best["dora", n, "direct"], best["dora", n, "expanded"])
        print(f"DoRA / LoRA per member at N={n}: {dora / best['lora', n, 'direct']:.3f} "
              f"(direct {best['dora', n, 'direct'] / best['lora', n, 'direct']:.3f}, "
              f"expanded {best['dora', n, 'expanded'] / best['lora', n, 'direct']:.3f})")
    print(f"DoRA / LoRA for one model through add_adapters (training.train): {alone['dora'] / alone['lora']:.3f}")


def print_roofline(roof: dict, steps: int, device) -> None:
    """Each way's roofline step: its matrix products, its bytes, and the copy probe behind them."""
    # copy rates depend on the size (caches), hence the probe at each working set; two sizes for scale
    print("\ncopy rate (dst.copy_(src), float32): " + ", ".join(
        f"{size} MB {copy_rate(size * MB, device) / 1e9:.1f} GB/s" for size in (4, 32)))
    # calls (distinct signatures); the last column is the whole population's epoch, not per member
    print(f"roofline per step: {'phase':<9}{'norm':<10}{'N':>5}{'mm (uniq)':>10}{'matmul ms':>10}"
          f"{'moved MB':>9}{'set MB':>8}{'copy GB/s':>10}{'bytes ms':>9}{'pop epoch s':>12}")
    for (phase, n, norm), r in roof.items():
        print(f"{'':<19}{phase:<9}{norm if phase == 'dora' else '-':<10}{n:>5}{r['calls']:>5} ({r['kinds']:>2})"
              f"{r['matmul'] * 1e3:>10.3f}{r['moved'] / MB:>9.2f}{r['working_set'] / MB:>8.1f}"
              f"{r['rate'] / 1e9:>10.1f}{r['moved'] / r['rate'] * 1e3:>9.3f}{steps * r['seconds']:>12.3f}")


def precision_benchmark(args) -> None:
    config = load_config(REPO / "configs" / "default.yaml", args.overrides)
    device = resolve_device(config.device)
    data = load_mnist(REPO / config.data.root, train=True, device=device, subset=config.data.train_subset)
    print(f"torch {torch.__version__} on {device_name(device)}; {len(data):,} images, batch "
          f"{config.finetune.batch_size}, rank {config.lora.rank}; fastest of {args.repeats} per cell")
    ways = [(phase, n) for phase in PHASES for n in args.sizes]
    best = {(way, precision): float("inf") for way in ways for precision in PRECISIONS}
    for repeat in range(args.repeats):
        for way in ways:
            for precision in PRECISIONS if repeat % 2 == 0 else PRECISIONS[::-1]:  # alternate which goes first
                phase, n = way
                seconds = project_epoch(members(phase, n, config, device), data, config, precision)
                best[way, precision] = min(best[way, precision], seconds)
        print(f"repeat {repeat + 1} done", file=sys.stderr, flush=True)
    print(f"\n{'phase':<10}{'N':>4}{'fp32 s/member':>15}{'bf16 s/member':>15}{'fp32 / bf16':>13}")
    for way in ways:
        fp32, bf16 = best[way, "fp32"], best[way, "bf16"]
        print(f"{way[0]:<10}{way[1]:>4}{fp32:>15.3f}{bf16:>15.3f}{fp32 / bf16:>12.2f}x")


def whole_run(overrides: list[str], checkout: Path = REPO) -> dict:
    """One dora_example.py run of ``checkout`` in a fresh process: wall seconds, peak resident MB, and
    its summary. MNIST is read from this checkout's data folder."""
    with tempfile.TemporaryDirectory() as out:
        argv = [*overrides, f"data.root={REPO / 'data'}", f"output.dir={out}", "output.run_name=run"]
        wrapper = ("import runpy, sys\n"
                   f"sys.argv = ['dora_example.py', *{argv!r}]\n"
                   "try:\n    runpy.run_path('dora_example.py', run_name='__main__')\n"
                   "except SystemExit as done:\n    assert not done.code, done.code\n"
                   "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
                   "print('PEAK_KB', hwm)\n")
        start = time.perf_counter()
        output = subprocess.run([sys.executable, "-c", wrapper], cwd=checkout, capture_output=True, text=True,
                                check=True)
        seconds = time.perf_counter() - start
        summary = json.loads((Path(out) / "run" / "summary.json").read_text())
    peak_kb = int(output.stdout.rsplit("PEAK_KB", 1)[1])
    return {"seconds": seconds, "peak_mb": peak_kb / 1024, "summary": summary}


def runs_benchmark(args) -> None:
    """Each run's sides, alternated repeat by repeat; with --against, the same runs of that revision too."""
    with tempfile.TemporaryDirectory() as tmp:
        old = None
        if args.against:
            old = Path(tmp) / "against"
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(old), args.against],
                           check=True, capture_output=True)
        try:
            for name, overrides, sides in planned_runs(args, old):
                compare_runs(name, overrides, sides, args.repeats)
        finally:
            if old is not None:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(old)], check=True)


def planned_runs(args, old: Path | None) -> list[tuple[str, list[str], dict]]:
    """(name, overrides, {side: (checkout, its own overrides)}) for each run the options ask for."""
    seeds = "experiment.seeds=[" + ", ".join(map(str, range(1, 21))) + "]"
    sides = {"population auto": (REPO, ["experiment.population=auto"]),
             "population 1": (REPO, ["experiment.population=1"])}
    if old is not None:
        sides[f"{args.against}, population 1"] = (old, ["experiment.population=1"])
    runs = [("20 seeds, lora+dora, 1 epoch", [seeds, "finetune.methods=[lora, dora]", "finetune.epochs=1",
                                               "cache.enabled=false"], sides)]
    if args.default and old is not None:
        runs.insert(0, ("the default run (configs/default.yaml)", ["cache.enabled=false"],
                        {"this code": (REPO, []), args.against: (old, [])}))
    if args.sweep:
        runs.append(("configs/rank_sweep.yaml", ["--config", "configs/rank_sweep.yaml", "cache.enabled=false"],
                     {side: sides[side] for side in ("population auto", "population 1")}))
    if args.decisive:
        decisive = {"this code": (REPO, [])}
        if old is not None:
            decisive[args.against] = (old, [])
        runs.append(("configs/decisive.yaml", ["--config", "configs/decisive.yaml", "cache.enabled=false"],
                     decisive))
    return runs


def compare_runs(name: str, overrides: list[str], sides: dict, repeats: int) -> None:
    """Every side of one run, alternated; the fastest of each against the first side."""
    results = {side: [] for side in sides}
    for repeat in range(repeats):
        for side in (list(sides) if repeat % 2 == 0 else list(sides)[::-1]):
            checkout, own = sides[side]
            results[side].append(whole_run([*overrides, *own], checkout))
            print(f"{name}, {side}: {results[side][-1]['seconds']:.1f} s", file=sys.stderr, flush=True)
    fastest = {side: min(r, key=lambda r: r["seconds"]) for side, r in results.items()}
    first = next(iter(fastest))
    print(f"\n{name} (fastest of {repeats} a side):")
    for side, run in fastest.items():
        print(f"  {side:<28} {run['seconds']:7.1f} s   {run['seconds'] / fastest[first]['seconds']:.2f}x the time "
              f"of {first}; peak memory {run['peak_mb']:.0f} MB")
    methods = {side: run["summary"]["methods"] for side, run in fastest.items()}
    print(f"  {'test accuracy':<16}" + " | ".join(sides))
    for method in methods[first]:
        cells = [dash(methods[side].get(method, {}).get("test_accuracy")) for side in methods]
        print(f"  {method:<16}" + " | ".join(cells))
    for side in methods:
        lora, dora = (methods[side].get(m, {}).get("train_seconds") for m in ("lora", "dora"))
        if lora and dora:
            print(f"  DoRA / LoRA train s per model, {side}: {dora / lora:.3f}")
        for pair, c in fastest[side]["summary"].get("comparisons", {}).items():
            print(f"  {side}, {pair}: {c['mean']:+.3f} [{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}]")
        if "tuning" in fastest[side]["summary"]:
            print(f"  {side}, chosen rates: " + ", ".join(f"{m} {t['lr']:g}" for m, t in
                                                         fastest[side]["summary"]["tuning"].items()))


def dash(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def device_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()}, {torch.get_num_threads()} threads"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    epochs = commands.add_parser("epochs", help="per-member epoch time by population size, against the floor")
    epochs.add_argument("--sizes", type=int, nargs="+", default=[1, 5, 20, 32, 50])
    epochs.add_argument("--repeats", type=int, default=3)
    epochs.add_argument("overrides", nargs="*", metavar="key.sub=value")
    precision = commands.add_parser("precision", help="per-member epoch time, fp32 against bf16")
    precision.add_argument("--sizes", type=int, nargs="+", default=[1, 20, 32])
    precision.add_argument("--repeats", type=int, default=3)
    precision.add_argument("overrides", nargs="*", metavar="key.sub=value")
    runs = commands.add_parser("runs", help="whole runs, population auto against 1")
    runs.add_argument("--repeats", type=int, default=1)
    runs.add_argument("--sweep", action="store_true", help="also configs/rank_sweep.yaml (minutes)")
    runs.add_argument("--decisive", action="store_true", help="also configs/decisive.yaml (minutes)")
    runs.add_argument("--default", action="store_true", help="with --against: also the default run against REF")
    runs.add_argument("--against", metavar="REF", help="also the code at this git revision (a temporary worktree)")
    args = parser.parse_args()
    {"epochs": epochs_benchmark, "precision": precision_benchmark, "runs": runs_benchmark}[args.command](args)


if __name__ == "__main__":
    main()
