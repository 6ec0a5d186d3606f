"""Every process of a multi-process run agrees: on the config, the batch layout, the stop step.

`check_same_config` hashes the resolved config on every process and fails on all of them,
with one line naming the differing keys, when they disagree. `check_batch_split` checks
that the batch rows split evenly over the processes. `StopAgreement` makes all processes
stop at the same step when only some of them received SIGTERM (a preemption notice), so
the collective checkpoint save is entered by everyone or no one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import signal
from collections.abc import Mapping
from typing import Any

import numpy as np

from stjax.distributed import DistributedError, describe
from stjax.logs import get_logger

log = get_logger(__name__)


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
    """What `stjax train` checks before building anything: the same config on
    every process and a mesh whose batch splits over the processes. Returns the config hash."""
    import jax

    digest = check_same_config(config)
    if jax.process_count() > 1:
        from stjax.models.partitioning import make_mesh

        check_batch_split(make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor),
                          config.train.batch_size, config.train.grad_accum)
        if jax.process_index() == 0:
            log.info(f"distributed: {describe()}; config sha256 {digest[:12]} agreed by all processes")
    return digest


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
