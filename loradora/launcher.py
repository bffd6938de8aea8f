"""Where a phase's populations train (``experiment.launcher``): here, one after another (local), or
each as a Ray task (ray), on this machine or on a cluster.

A phase submits every one of its populations before it collects any, then collects them in order.
``LocalLauncher`` trains a population when it is collected, so a local run is the loop it always
was; ``RayLauncher`` sends them all off at submission, so they train side by side, a GPU each on
CUDA. The results are the same bits either way, because a Ray task trains as the driver would:

- with the driver's thread count: a matmul's float32 sums depend on how it is split over threads,
  and Ray sets a worker's OMP_NUM_THREADS from the task's num_cpus (1), not from the machine;
- from the driver's global RNG state as it was when the population was made (adapter dropout draws
  its masks from it), and with its deterministic-algorithms setting;
- and it sends back what training changed in the driver's objects, which in the task are copies:
  each member's weights (loaded into the driver's modules, as ``Population.write_back`` fills them
  locally), the trackers' points, the RNG state after training, and the log records, which cannot
  stream from a worker and are replayed through the driver's ``log`` in order when they arrive.

Ray is optional (requirements-dev.txt): only ``RayLauncher`` imports it.
"""

import io
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from loradora.data import Split
from loradora.population import member_step
from loradora.training import MemberRun, train_members, use_deterministic_algorithms

PACKAGE = Path(__file__).resolve().parent  # shipped to a cluster's workers, which may not have it


class LauncherUnavailable(RuntimeError):
    """experiment.launcher is ray but Ray cannot be imported, or ray.address cannot be joined."""


@dataclass
class TrainJob:
    """One population's training: its members, the data, and ``training.train_members``'s settings."""
    models: list[nn.Module]
    trackers: list        # per member, a DecompositionTracker, called every observe_every steps, or None
    data: Split
    seeds: list[int]      # per member: its batch order's generator seed
    lr: float | list[float]
    epochs: int
    batch_size: int
    log_every: int
    max_loss: float
    observe_every: int | None
    precision: str        # the products' (training.products_in)
    steps: int | None = None  # exactly this many batches, whatever epochs says (finetune.steps)

    @property
    def lrs(self) -> list[float]:
        """Each member's rate."""
        return self.lr if isinstance(self.lr, list) else [self.lr] * len(self.models)


def train(job: TrainJob, log: Callable[[dict[int, dict]], None]) -> list[MemberRun]:
    """Train ``job``'s members at once (one alone, as itself); they hold their trained weights on return."""
    def observe(step: int, alive: list[int]) -> None:
        for i in alive:
            if job.trackers[i] is not None:
                job.trackers[i](step)

    return train_members(member_step(job.models, job.lrs, job.seeds, job.precision), job.data, epochs=job.epochs, batch_size=job.batch_size,
                         generators=[torch.Generator().manual_seed(seed) for seed in job.seeds], log=log,
                         log_every=job.log_every, max_loss=job.max_loss, observe=observe,
                         observe_every=job.observe_every, steps=job.steps)


@dataclass
class RandomState:
    """torch's global RNG state: the CPU generator's, and the device's on CUDA."""
    cpu: torch.Tensor
    cuda: torch.Tensor | None = None

    @classmethod
    def now(cls, device: torch.device) -> "RandomState":
        return cls(torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None)

    def restore(self, device: torch.device) -> None:
        torch.set_rng_state(self.cpu.cpu())  # ByteTensors on the CPU, wherever torch.load put them
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda.cpu(), device)


@dataclass
class Pending:
    """A submitted population: its job (the driver's own objects) and what the launcher keeps for it."""
    job: TrainJob
    random: RandomState   # the global RNG state when it was submitted, right after its members were made
    handle: object = None  # RayLauncher: the task's ObjectRef


class LocalLauncher:
    """Trains each population in this process when it is collected: one after another, as ever."""

    def submit(self, job: TrainJob) -> Pending:
        return Pending(job, RandomState.now(job.data.images.device))

    def collect(self, pending: Pending, log: Callable[[dict[int, dict]], None]) -> list[MemberRun]:
        # The phase made every population's members before this one trains: training starts from
        # the RNG state that followed making its own, as when each was made just before training.
        pending.random.restore(pending.job.data.images.device)
        return train(pending.job, log)

    def close(self) -> None:
        pass


def require_ray():
    """The ray module; a missing package is one line naming the key, before the run starts."""
    try:
        import ray
    except ImportError:
        raise LauncherUnavailable("experiment.launcher: ray needs the ray package: pip install ray (or pip install "
                                  "-r requirements-dev.txt), or set experiment.launcher=local") from None
    return ray


def start_ray(address: str | None, **options) -> None:
    """Join the Ray cluster at ``address``, or start a runtime on this machine for null.

    The workers get this package from the driver (runtime_env py_modules): a cluster's other machines
    need not have the project, and the data travels in the object store. ``options`` go to ray.init.
    """
    ray = require_ray()
    try:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING,
                 runtime_env={"py_modules": [str(PACKAGE)]}, **options)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        raise LauncherUnavailable(f"ray.address: cannot join Ray at {address}: {reason}") from None


class RayLauncher:
    """Each population a Ray task, submitted at once; results collected in submission order.

    Joins (or starts) Ray when made, unless this process already has; a runtime it started is shut
    down by ``close``. A task asks for one GPU when the device is CUDA and for Ray's default of one
    CPU otherwise (it then trains with the driver's thread count: see the module docstring).
    """

    def __init__(self, address: str | None, device: torch.device):
        self.ray = require_ray()
        self.started = not self.ray.is_initialized()
        if self.started:
            start_ray(address)
        self.device = device
        self.task = self.ray.remote(train_task).options(num_gpus=1 if device.type == "cuda" else 0)
        self.shipped: dict[int, tuple[Split, object]] = {}  # id(split) -> (split, its ObjectRef)

    def submit(self, job: TrainJob) -> Pending:
        random = RandomState.now(self.device)
        # the job without its data, as one pickle: the trackers keep pointing at their models
        payload = dumps({"job": replace(job, data=None), "random": random, "threads": torch.get_num_threads(),
                         "deterministic": torch.are_deterministic_algorithms_enabled()})
        return Pending(job, random, self.task.remote(payload, self.data_ref(job.data), self.device.type))

    def data_ref(self, split: Split):
        """``split`` in the object store, put there once for all the tasks that train on it."""
        if id(split) not in self.shipped:
            self.shipped[id(split)] = (split, self.ray.put(dumps(split)))
        return self.shipped[id(split)][1]

    def collect(self, pending: Pending, log: Callable[[dict[int, dict]], None]) -> list[MemberRun]:
        result = loads(self.ray.get(pending.handle), self.device)
        job = pending.job
        with torch.no_grad():
            for model, state in zip(job.models, result["states"]):
                model.load_state_dict(state)
        for tracker, points in zip(job.trackers, result["points"]):
            if tracker is not None:
                tracker.points = points
        for records in result["records"]:
            log(records)
        result["random"].restore(self.device)  # as training here would have left it
        return result["trained"]

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()


def train_task(payload: bytes, data: bytes, device_type: str) -> bytes:
    """The Ray task: train one population as the driver would have (see the module docstring)."""
    device = torch.device(device_type)  # on CUDA, the GPU Ray gave this task, visible as cuda:0
    sent = loads(payload, device)
    job = replace(sent["job"], data=loads(data, device))
    torch.set_num_threads(sent["threads"])
    if sent["deterministic"]:
        use_deterministic_algorithms()
    sent["random"].restore(device)
    records = []
    trained = train(job, records.append)
    return dumps({"states": [model.state_dict() for model in job.models],
                  "points": [tracker.points if tracker is not None else None for tracker in job.trackers],
                  "records": records, "trained": trained, "random": RandomState.now(device)})


def dumps(value) -> bytes:
    """torch.save to bytes: the receiver's ``loads`` puts every tensor on its own device."""
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def loads(data: bytes, device: torch.device):
    return torch.load(io.BytesIO(data), map_location=device, weights_only=False)  # our own objects


def make_launcher(name: str, address: str | None, device: torch.device) -> LocalLauncher | RayLauncher:
    """The launcher ``experiment.launcher`` names; Ray is imported only for ray."""
    return RayLauncher(address, device) if name == "ray" else LocalLauncher()
