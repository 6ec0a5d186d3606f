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

After initialization the processes agree on the config, the batch layout and the stop
step: `stjax.training.agreement`.
"""

from __future__ import annotations

import dataclasses
import glob
import importlib.util
import os
from collections.abc import Mapping

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
