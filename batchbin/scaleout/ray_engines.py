"""vLLM engines held by Ray actors, one per GPU (or per CPU worker), for a run spread over a
Ray cluster (`batchbin run ... --ray-address ADDRESS --engines N`).

Each actor builds one engine with BatchBin's settings for the node it landed on and runs the
requests it is sent through `generate_in_order` (tasks/generate.py) on a thread of its own, so
its engine never waits for the driver: `submit` queues rows, `collect` hands back the results
finished since the last call. The driver (tasks/generate_ray.py) writes them to the run's
database; an actor never touches it.

Needs the `ray` extra; on a cluster every node runs the same BatchBin installation.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass

from batchbin.config import EngineOptions
from batchbin.engine.settings import EngineSettings
from batchbin.errors import BatchBinError

NAMESPACE = "batchbin"
COLLECT_WAIT_S = 0.5  # a collect call returns at once when results are there, else after this


def require_ray():
    """The ray module, or an error saying how to install it."""
    try:
        import ray
    except ImportError as error:
        raise BatchBinError("--ray-address needs Ray: pip install 'batchbin[ray]' (on every node of the cluster)") from error
    return ray


def actor_name(run_id: str, engine: int) -> str:
    """The name of a run's engine actor in the `batchbin` namespace (ray.get_actor finds it)."""
    return f"{run_id}-engine-{engine}"


@dataclass(frozen=True)
class Placement:
    """Where an engine actor runs: its host (engines on one host share its cores), Ray node, cores."""
    host: str
    node_id: str
    cores: tuple[int, ...]
    pid: int
    gpus: tuple[str, ...] = ()


class EngineWorker:
    """One vLLM engine inside a Ray actor (created through `engine_actor_class`)."""

    def __init__(self, engine: int) -> None:
        self.engine = engine
        self.inbox: deque[dict] = deque()
        self.outbox: list[dict] = []
        self.lock = threading.Condition()
        self.failure: str | None = None
        self.produced = 0
        self.settings = None
        self.thread: threading.Thread | None = None

    def placement(self) -> Placement:
        import ray

        from batchbin.engine.machine import detect_machine

        context = ray.get_runtime_context()
        return Placement(host=socket.gethostname(), node_id=context.get_node_id(), cores=detect_machine().cores,
                         pid=os.getpid(), gpus=tuple(str(gpu) for gpu in context.get_accelerator_ids().get("GPU", [])))

    def start(self, model_path: str, options: EngineOptions, requests: int, engines_on_host: int, slot: int,
              defaults, tensor_parallel_size: int = 1) -> dict:
        """Build the engine (settings chosen for this node, its cores split among the engines on
        the host) and start generating whatever is submitted. Returns the settings and start time."""
        from batchbin.engine.pool import get_engine

        self.settings = actor_engine_settings(options, requests, engines_on_host, slot, tensor_parallel_size)
        engine = get_engine(model_path, self.settings, defaults.max_model_len)
        self.thread = threading.Thread(target=self._generate_forever, args=(engine, defaults), daemon=True,
                                       name=f"batchbin-engine-{self.engine}")
        self.thread.start()
        return {"start_s": engine.start_s, "threads": self.settings.threads, "device": self.settings.device,
                "kv_cache_gib": self.settings.kv_cache_gib}

    def submit(self, rows: list[dict]) -> int:
        """Queue rows (of generate.work_in_order) behind those already queued; returns the queue's length."""
        with self.lock:
            self.inbox.extend(rows)
            self.lock.notify_all()
            return len(self.inbox)

    def collect(self, wait_s: float = COLLECT_WAIT_S) -> list[dict]:
        """The results finished since the last call (waiting up to `wait_s` for the first);
        raises if the engine failed."""
        deadline = time.monotonic() + wait_s
        with self.lock:
            while not self.outbox and self.failure is None and time.monotonic() < deadline:
                self.lock.wait(max(0.0, deadline - time.monotonic()))
            results, self.outbox = self.outbox, []
            if self.failure is not None and not results:
                raise BatchBinError(f"engine {self.engine} failed: {self.failure}")
            return results

    def results_produced(self) -> int:
        """How many results this engine has finished (collected or not)."""
        return self.produced

    def stop(self) -> None:
        from batchbin.engine.pool import shutdown_engine

        shutdown_engine()

    def _generate_forever(self, engine, defaults) -> None:
        from batchbin.engine.step_loop import generate_in_order

        def queued_rows():
            while True:
                with self.lock:
                    if not self.inbox:
                        return
                    row = self.inbox.popleft()
                yield row

        def store(results: list[dict]) -> None:
            with self.lock:
                self.outbox.extend(results)
                self.produced += len(results)
                self.lock.notify_all()

        try:
            while True:
                with self.lock:
                    while not self.inbox:
                        self.lock.wait()
                generate_in_order(engine, queued_rows(), defaults, store, checkpoint_every=1)
        except BaseException as error:  # the engine died or a step failed: the driver gives its work to others
            with self.lock:
                self.failure = f"{type(error).__name__}: {error}"
                self.lock.notify_all()


@dataclass
class ShardEngineSettings(EngineSettings):
    """EngineSettings of an engine on a Ray actor: may span several GPUs (tensor parallelism,
    its workers started by vLLM's multiprocessing executor on the GPUs Ray gave the actor)."""
    tensor_parallel_size: int = 1

    def engine_kwargs(self) -> dict:
        kwargs = super().engine_kwargs()
        if self.tensor_parallel_size > 1:
            kwargs.update(tensor_parallel_size=self.tensor_parallel_size, distributed_executor_backend="mp")
        return kwargs


def actor_engine_settings(options: EngineOptions, requests: int, engines_on_host: int, slot: int,
                          tensor_parallel_size: int = 1) -> ShardEngineSettings:
    """BatchBin's settings for the node an actor runs on. On CPU, where the user set them not:
    the host's cores and KV cache are split among its engines (each its own cores), and the
    engine core runs inside the actor, so a lost actor leaves no engine process behind."""
    from batchbin.engine.settings import choose_engine_settings, core_ranges
    from batchbin.engine.machine import detect_machine
    from batchbin.scaleout.shares import split_cores

    machine = detect_machine()
    if not machine.gpu and options.in_process is None:
        options = options.model_copy(update={"in_process": True})
    settings = choose_engine_settings(machine, options, requests=requests)
    if settings.device == "cpu" and engines_on_host > 1:
        if options.threads is None:
            settings.threads = core_ranges(split_cores(machine.cores, engines_on_host, slot))
            settings.reasons["threads"] = f"engine {slot + 1} of {engines_on_host} on this host: its own cores"
        if options.kv_cache_gib is None and settings.kv_cache_gib:
            settings.kv_cache_gib = max(1.0, float(int(settings.kv_cache_gib / engines_on_host)))
            settings.reasons["kv_cache_gib"] += f", shared by {engines_on_host} engines on this host"
    if tensor_parallel_size > 1 and settings.device != "gpu":
        raise BatchBinError(f"tensor_parallel_size {tensor_parallel_size}: tensor parallelism spans GPUs; "
                            "this engine's node has none")
    return ShardEngineSettings(**settings.as_dict(), tensor_parallel_size=tensor_parallel_size)


def engine_actor_class(device: str, tensor_parallel_size: int = 1):
    """EngineWorker as a Ray actor class: one CPU worker each on CPU, `tensor_parallel_size`
    GPUs each on GPU. Threaded, so `collect` and `submit` are answered while it generates."""
    ray = require_ray()
    resources = {"num_gpus": tensor_parallel_size} if device == "gpu" else {"num_cpus": 1}
    return ray.remote(max_concurrency=4, max_restarts=0, **resources)(EngineWorker)


def connect(address: str) -> bool:
    """Join the Ray cluster at `address` (host:port, "auto", or "local" for a new cluster on
    this machine); True when this call connected (and the caller should disconnect)."""
    ray = require_ray()
    if ray.is_initialized():
        return False
    try:
        ray.init(address=None if address == "local" else address, namespace=NAMESPACE, log_to_driver=False,
                 configure_logging=False)
    except (ConnectionError, ValueError, RuntimeError) as error:
        raise BatchBinError(f"cannot join the Ray cluster at {address}: {error} (start one with `ray start --head`, "
                            "then pass the address it prints, or 'auto' on a node of it)") from error
    return True


def cluster_capacity(device: str, tensor_parallel_size: int = 1) -> int:
    """How many engines the cluster can hold now: its CPUs (CPU) or GPUs / tensor_parallel_size."""
    ray = require_ray()
    resources = ray.cluster_resources()
    if device == "gpu":
        return int(resources.get("GPU", 0) // tensor_parallel_size)
    return int(resources.get("CPU", 0))


def slots_by_host(placements: list[Placement]) -> list[tuple[int, int]]:
    """(engines on its host, its slot there) of each engine, in engine order."""
    hosts: dict[str, int] = {}
    slots = []
    for placement in placements:
        slots.append(hosts.get(placement.host, 0))
        hosts[placement.host] = slots[-1] + 1
    return [(hosts[placement.host], slot) for placement, slot in zip(placements, slots)]
