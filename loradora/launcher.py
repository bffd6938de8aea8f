"""Where a plan's jobs train (``experiment.launcher``): here, one after another (local), or each as a
Ray task (ray), on this machine or on a cluster. Either way ``run`` gives the jobs' results in the
order the jobs were given.

A job holds everything that decides its bits (loradora/jobs.py), so a Ray task gives the local
launcher's results to the last bit, provided it trains as the driver would:

- with the driver's thread count: a matmul's float32 sums depend on how it is split over threads,
  and Ray sets a worker's OMP_NUM_THREADS from the task's num_cpus (1), not from the machine;
- with the driver's deterministic-algorithms setting.

A task's metrics records and console lines cannot stream from a worker: they come back with its
result and are replayed through the driver's ``Output`` in order.

Ray is optional (requirements-dev.txt): only ``RayLauncher`` imports it.
"""

import io
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from loradora.config import Config
from loradora.jobs import JobData, JobResult, Output, label, run_job
from loradora.plan import Job
from loradora.training import use_deterministic_algorithms

PACKAGE = Path(__file__).resolve().parent  # shipped to a cluster's workers, which may not have it

# What a job needs from the run: its cell's config, its data, and where its output goes.
Inputs = Callable[[Job], tuple[Config, JobData, Output]]


class LauncherUnavailable(RuntimeError):
    """experiment.launcher is ray but Ray cannot be imported, or ray.address cannot be joined."""


class LocalLauncher:
    """Trains each job in this process, one after another."""

    def run(self, jobs: list[Job], inputs: Inputs) -> Iterator[tuple[Job, JobResult]]:
        for job in jobs:
            yield job, run_job(job, *inputs(job))

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
    """Each job a Ray task, all of a ``run`` submitted at once; results taken in submission order.

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
        self.shipped: dict[int, tuple[object, object]] = {}  # id(object) -> (object, its ObjectRef)

    def run(self, jobs: list[Job], inputs: Inputs) -> Iterator[tuple[Job, JobResult]]:
        submitted = []
        for job in jobs:
            config, data, output = inputs(job)
            payload = dumps({"job": job, "config": config, "seeds": list(data.bases), "tags": output.tags,
                             "threads": torch.get_num_threads(),
                             "deterministic": torch.are_deterministic_algorithms_enabled()})
            refs = [self.put(value) for value in (data.train, data.scored, *data.bases.values())]
            submitted.append((job, output, self.task.remote(payload, self.device.type, *refs)))
            output.say(f"ray: {label(job)} sent as a task; its lines follow when it has trained")
        for job, output, handle in submitted:
            result, events = loads(self.ray.get(handle), self.device)
            for kind, event in events:
                if kind == "record":
                    output.record(event)
                else:
                    output.say(event)
            yield job, result

    def put(self, value) -> object:
        """``value`` (a split, a base) in the object store, put there once for every task that reads it."""
        if id(value) not in self.shipped:
            self.shipped[id(value)] = (value, self.ray.put(dumps(value)))
        return self.shipped[id(value)][1]

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()


def train_task(payload: bytes, device_type: str, train: bytes, scored: bytes, *bases: bytes) -> bytes:
    """The Ray task: one job, trained as the driver would have (see the module docstring); its
    result, and its records and console lines in the order they came."""
    device = torch.device(device_type)  # on CUDA, the GPU Ray gave this task, visible as cuda:0
    sent = loads(payload, device)
    torch.set_num_threads(sent["threads"])
    if sent["deterministic"]:
        use_deterministic_algorithms()
    events = []
    output = Output(lambda record: events.append(("record", record)), lambda line: events.append(("say", line)),
                    **sent["tags"])
    data = JobData(loads(train, device), loads(scored, device),
                   {seed: loads(base, device) for seed, base in zip(sent["seeds"], bases)})
    return dumps((run_job(sent["job"], sent["config"], data, output), events))


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
