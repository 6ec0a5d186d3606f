"""Multi-process runs: one JAX process per host, all of them running the same command.

`initialize()` starts `jax.distributed` when the run spans more than one process and is
a no-op otherwise, so single-host runs (one TPU VM, a laptop) never need a coordinator:

* TPU VM slices and pods: detected (libtpu + a TPU device node); `jax.distributed.initialize()`
  then reads the worker list and this worker's id from the TPU metadata.
* other clusters: `--coordinator HOST:PORT --num-processes N --process-id I` (or the
  environment variables STJAX_COORDINATOR, STJAX_NUM_PROCESSES, STJAX_PROCESS_ID);
  SLURM and Open MPI jobs with more than one task are detected by JAX itself.
* CPU processes exchange collectives over gloo (how the tests run 2 processes x 4 devices).

STJAX_DISTRIBUTED=0 turns detection off (one process, whatever the environment says).

After initialization every process must run the same resolved config:
`check_same_config` hashes it on every process and fails on all of them, with one line
naming the differing keys, when they disagree. `StopAgreement` makes all processes stop
at the same step when only some of them received SIGTERM (a preemption notice), so the
collective checkpoint save is entered by everyone or no one.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import importlib.util
import json
import os
import signal
from collections.abc import Mapping
from typing import Any

import numpy as np

from stjax.configlib import ConfigKeyError

ENV_COORDINATOR = "STJAX_COORDINATOR"
ENV_NUM_PROCESSES = "STJAX_NUM_PROCESSES"
ENV_PROCESS_ID = "STJAX_PROCESS_ID"
ENV_SWITCH = "STJAX_DISTRIBUTED"  # 0/off/false: never initialize
ENV_TIMEOUT = "STJAX_INIT_TIMEOUT"  # seconds to wait for every process to join (default 300)


class DistributedError(ConfigKeyError):
    """A multi-process set-up that cannot work; str(e) is one line for the user."""


@dataclasses.dataclass(frozen=True)
class Setup:
    """How this process joins the run. source: explicit, tpu, cluster or single."""

    source: str
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None

    @property
    def distributed(self) -> bool:
        return self.source != "single"


def _int(value, name: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise DistributedError(f"{name}: expected an integer, got {value!r}") from None


def on_tpu_vm() -> bool:
    """A Cloud TPU VM (or GKE TPU node): libtpu is installed and a TPU device node exists."""
    if importlib.util.find_spec("libtpu") is None:
        return False
    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def _cluster_tasks(environ: Mapping[str, str]) -> int:
    """Number of tasks a SLURM / Open MPI launcher started (1 when none)."""
    for key in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        if environ.get(key, "").isdigit():
            return int(environ[key])
    return 1


def resolve_setup(coordinator: str | None = None, num_processes: int | None = None,
                  process_id: int | None = None, *, environ: Mapping[str, str] | None = None,
                  tpu_vm: bool | None = None) -> Setup:
    """Flags win over STJAX_* variables, which win over detection (TPU VM, SLURM, Open MPI)."""
    environ = os.environ if environ is None else environ
    coordinator = coordinator or environ.get(ENV_COORDINATOR) or None
    num_processes = num_processes if num_processes is not None else _int(environ.get(ENV_NUM_PROCESSES),
                                                                         ENV_NUM_PROCESSES)
    process_id = process_id if process_id is not None else _int(environ.get(ENV_PROCESS_ID), ENV_PROCESS_ID)
    explicit = (coordinator, num_processes, process_id)
    if any(v is not None for v in explicit):
        if num_processes == 1 and process_id in (None, 0):
            return Setup("single")
        missing = [name for name, v in zip(("--coordinator", "--num-processes", "--process-id"), explicit)
                   if v is None]
        if missing:
            raise DistributedError(
                f"multi-process run: {', '.join(missing)} missing (give all three, as flags or as "
                f"{ENV_COORDINATOR}/{ENV_NUM_PROCESSES}/{ENV_PROCESS_ID})")
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise DistributedError(f"--process-id {process_id} is not in 0..{num_processes - 1}")
        if ":" not in coordinator:
            raise DistributedError(f"--coordinator {coordinator!r}: expected HOST:PORT of process 0")
        return Setup("explicit", coordinator, num_processes, process_id)
    if environ.get(ENV_SWITCH, "").lower() in ("0", "off", "false", "no"):
        return Setup("single")
    if tpu_vm if tpu_vm is not None else on_tpu_vm():
        return Setup("tpu")
    if _cluster_tasks(environ) > 1:
        return Setup("cluster")
    return Setup("single")


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> Setup:
    """Joins the run before any other JAX call; a no-op for single-process runs (and when
    already initialized)."""
    import jax

    setup = resolve_setup(coordinator, num_processes, process_id)
    if not setup.distributed or jax.distributed.is_initialized():
        return setup
    # CPU processes need a cross-process collectives backend (no effect on TPU/GPU).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # The trainer handles SIGTERM itself (stjax.training.preemption) and agrees on the stop
    # step with StopAgreement; JAX's preemption notifier would swallow SIGTERM instead.
    jax.config.update("jax_enable_preemption_service", False)
    timeout = _int(os.environ.get(ENV_TIMEOUT), ENV_TIMEOUT) or 300
    if setup.source == "explicit":
        jax.distributed.initialize(setup.coordinator, setup.num_processes, setup.process_id,
                                   initialization_timeout=timeout)
    else:  # TPU metadata / SLURM / Open MPI fill in the three values
        jax.distributed.initialize(initialization_timeout=timeout)
    return dataclasses.replace(setup, num_processes=jax.process_count(), process_id=jax.process_index())


def describe() -> str:
    import jax

    return (f"process {jax.process_index()} of {jax.process_count()}, {jax.local_device_count()} local / "
            f"{jax.device_count()} global {jax.devices()[0].platform} devices")


# ------------------------------------------------------------------ same config everywhere
def config_json(config: Any) -> str:
    """The resolved config (a dataclass) as canonical JSON: sorted keys, no whitespace."""
    data = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)


def config_hash(config: Any) -> str:
    return hashlib.sha256(config_json(config).encode()).hexdigest()


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(data, list):
        out = {f"{prefix}.length": len(data)}
        for i, value in enumerate(data):
            out.update(_flatten(value, f"{prefix}[{i}]"))
        return out
    return {prefix: data}


def config_differences(a: Mapping, b: Mapping) -> list[str]:
    """Dotted keys whose values differ between two config dicts, sorted."""
    fa, fb = _flatten(dict(a)), _flatten(dict(b))
    return sorted(k for k in fa.keys() | fb.keys() if fa.get(k, "<absent>") != fb.get(k, "<absent>"))


def check_same_config(config: Any) -> str:
    """Every process must hold the same resolved config; returns its sha256.

    A collective (all processes call it). The configs themselves are gathered (a few KB),
    so every process finds the same differences and every process raises the same
    DistributedError, instead of some of them waiting forever in the next collective.
    """
    import jax

    text = config_json(config)
    digest = hashlib.sha256(text.encode()).hexdigest()
    if jax.process_count() == 1:
        return digest
    from jax.experimental import multihost_utils

    local = np.frombuffer(bytes.fromhex(digest), np.uint8)
    digests = np.asarray(multihost_utils.process_allgather(local))  # [P, 32]
    if (digests == digests[0]).all():
        return digest
    raw = text.encode()
    longest = int(np.asarray(multihost_utils.process_allgather(np.array([len(raw)], np.int64))).max())
    padded = np.zeros(longest, np.uint8)
    padded[:len(raw)] = np.frombuffer(raw, np.uint8)
    texts = np.asarray(multihost_utils.process_allgather(padded))  # [P, longest]
    configs = [json.loads(bytes(row).rstrip(b"\0").decode()) for row in texts]
    other = next(p for p in range(len(configs)) if (digests[p] != digests[0]).any())
    keys = config_differences(configs[0], configs[other])
    flat0, flat_other = _flatten(configs[0]), _flatten(configs[other])
    shown = ", ".join(f"{k}: {flat0.get(k, '<absent>')!r} on process 0, {flat_other.get(k, '<absent>')!r} on "
                      f"process {other}" for k in keys[:3])
    more = f" (and {len(keys) - 3} more)" if len(keys) > 3 else ""
    differing = [p for p in range(len(configs)) if (digests[p] != digests[0]).any()]
    raise DistributedError(
        f"the resolved config differs between processes ({len(differing)} of {len(configs)} differ from "
        f"process 0): {shown}{more}; start every process with the same config file and overrides")


def check_run(config) -> str:
    """What `python -m stjax.train` checks before building anything: the same config on
    every process and a mesh whose batch splits over the processes. Returns the config hash."""
    import jax

    digest = check_same_config(config)
    if jax.process_count() > 1:
        from stjax.models.partitioning import make_mesh

        check_batch_split(make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor),
                          config.train.batch_size, config.train.grad_accum)
        if jax.process_index() == 0:
            print(f"distributed: {describe()}; config sha256 {digest[:12]} agreed by all processes", flush=True)
    return digest


# ------------------------------------------------------------------ batch layout
def check_batch_split(mesh, batch_size: int, grad_accum: int = 1, *, process_count: int | None = None) -> None:
    """The batch rows (sharded over the data and fsdp mesh axes) must split evenly over the
    processes: each process feeds batch_size / process_count rows (stjax.data.batching)."""
    import jax

    procs = jax.process_count() if process_count is None else process_count
    shards = int(mesh.shape["data"] * mesh.shape["fsdp"])
    if procs == 1:
        return
    if shards % procs:
        raise DistributedError(
            f"mesh: data*fsdp = {shards} batch shards cannot be split over {procs} processes; make "
            f"mesh.data*mesh.fsdp a multiple of {procs} (put the tensor axis within a host)")
    owners: dict[int, set[int]] = {}
    for shard, row in np.ndenumerate(mesh.devices.reshape(shards, -1)):
        owners.setdefault(row.process_index, set()).add(shard[0])
    per_process = {len(s) for s in owners.values()}
    if per_process != {shards // procs} or sum(len(s) for s in owners.values()) != shards:
        raise DistributedError(
            f"mesh: every process must hold {shards // procs} of the {shards} batch shards; the device "
            f"layout gives {sorted(per_process)}")
    if batch_size % (shards * grad_accum):
        raise DistributedError(
            f"train.batch_size {batch_size} is not divisible by data*fsdp*grad_accum = {shards * grad_accum}")


# ------------------------------------------------------------------ stopping together
def host_array(value) -> np.ndarray:
    """The whole of a (possibly multi-host sharded) jax.Array as one numpy array.

    Shards held by other processes are gathered (a collective: every process must call
    it, in the same order), so process 0 can write exports of sharded weights.
    """
    import jax

    if not value.is_fully_addressable:
        from jax.experimental import multihost_utils

        value = multihost_utils.process_allgather(value, tiled=True)
    return np.asarray(jax.device_get(value))


class StopAgreement:
    """All processes stop at the same step boundary, even when only some received SIGTERM.

    `poll(signal_name)` is called once per step by every process with the local stop request
    (a signal name or None) and returns the agreed one. With one process it returns its
    argument. With several, each call dispatches a max-reduce of every process's signal
    number over all devices (queued behind the step in flight, so nothing waits) and returns
    the result of the previous call: every process sees the same value at the same step, one
    step after the signal, at the cost of one scalar collective a step.
    """

    def __init__(self):
        import jax

        self.multi = jax.process_count() > 1
        self._pending = None
        if not self.multi:
            return
        from jax.sharding import Mesh, NamedSharding, PartitionSpec

        mesh = Mesh(np.array(jax.devices()), ("all",))
        self._sharding = NamedSharding(mesh, PartitionSpec("all"))
        self._local = jax.local_device_count()
        self._reduce = jax.jit(lambda codes: codes.max(), out_shardings=NamedSharding(mesh, PartitionSpec()))

    def poll(self, signal_name: str | None) -> str | None:
        if not self.multi:
            return signal_name
        import jax

        code = int(signal.Signals[signal_name]) if signal_name else 0
        local = np.full((self._local,), code, np.int32)
        codes = jax.make_array_from_process_local_data(self._sharding, local)
        previous, self._pending = self._pending, self._reduce(codes)
        if previous is None:
            return None
        agreed = int(np.asarray(previous.addressable_data(0)))
        return signal.Signals(agreed).name if agreed else None
