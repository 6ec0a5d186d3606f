"""Logical axis names -> mesh axes.

Every parameter names its dimensions logically (`embed`, `heads`, `mlp`, ...). A small
rules table maps each logical name onto mesh axes (`data`, `fsdp`, `tensor`), so the same
model code runs data-parallel, FSDP or tensor-parallel by changing the table or the mesh.
A dimension that does not divide its mesh axes is an error: silent replication would
quietly multiply memory.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from stjax.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axis (or tuple of mesh axes, or None for replicated)
DEFAULT_RULES: dict[str, str | tuple[str, ...] | None] = {
    "batch": ("data", "fsdp"),
    "length": None,
    "vocab": "tensor",
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "mlp": "tensor",
    "norm": None,
    "lora_rank": None,
    "layers": None,  # the stacked axis of scanned layers (model.scan_layers): every device holds all layers' slices
}

Rules = Mapping[str, "str | tuple[str, ...] | None"]


class ShardingError(UserError):
    """A parameter or batch dimension that cannot be split over its mesh axes."""


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices=None) -> Mesh:
    """A (data, fsdp, tensor) mesh; -1 in one axis takes the remaining devices."""
    devices = list(devices if devices is not None else jax.devices())
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ShardingError("mesh: at most one of data/fsdp/tensor may be -1")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if len(devices) % known:
            raise ShardingError(f"mesh: {len(devices)} devices do not divide into fsdp*tensor={known}")
        sizes[sizes.index(-1)] = len(devices) // known
    if int(np.prod(sizes)) != len(devices):
        raise ShardingError(
            f"mesh: data*fsdp*tensor = {int(np.prod(sizes))} but {len(devices)} devices are available"
        )
    return jax.make_mesh(
        tuple(sizes), MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3, devices=devices
    )


def logical_to_spec(logical_axes: Sequence[str | None], rules: Rules = DEFAULT_RULES) -> PartitionSpec:
    def lookup(name):
        if name is None:
            return None
        if name not in rules:
            raise ShardingError(f"logical axis '{name}' has no rule (known: {', '.join(sorted(rules))})")
        return rules[name]

    return PartitionSpec(*(lookup(n) for n in logical_axes))


def checked_sharding(
    shape: Sequence[int], logical_axes: Sequence[str | None], mesh: Mesh, rules: Rules = DEFAULT_RULES,
    what: str = "array",
) -> NamedSharding:
    """NamedSharding for an array, raising if a dimension does not divide its mesh axes."""
    spec = logical_to_spec(logical_axes, rules)
    for dim, (size, axes) in enumerate(zip(shape, spec)):
        if axes is None:
            continue
        names = (axes,) if isinstance(axes, str) else tuple(axes)
        parts = int(np.prod([mesh.shape[a] for a in names]))
        if size % parts:
            raise ShardingError(
                f"{what}: dimension {dim} ('{logical_axes[dim]}', size {size}) does not divide "
                f"mesh axes {names} of size {parts}; change the mesh or the sharding rules"
            )
    return NamedSharding(mesh, spec)


def state_shardings(state: nnx.State, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> nnx.State:
    """`state` with each variable's value replaced by its NamedSharding (same tree
    structure, so it can be zipped with the state or given to jit/device_put as is)."""

    def one(path, var):
        axes = getattr(var, "logical_axes", None) or (None,) * len(var.shape)
        name = ".".join(str(p) for p in path)
        return var.replace(checked_sharding(var.shape, axes, mesh, rules, what=f"parameter {name}"))

    return nnx.map_state(one, state)


def shard_like_rules(model: nnx.Module, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> None:
    """Moves a concrete model's variables onto the mesh in place, following the rules."""
    graphdef, state = nnx.split(model)
    shardings = state_shardings(state, mesh, rules)
    nnx.update(model, jax.device_put(state, shardings))


def host_array(value) -> np.ndarray:
    """The whole of a (possibly multi-host sharded) jax.Array as one numpy array.

    Shards held by other processes are gathered (a collective: every process must call
    it, in the same order), so process 0 can write exports of sharded weights.
    """
    if not value.is_fully_addressable:
        from jax.experimental import multihost_utils

        value = multihost_utils.process_allgather(value, tiled=True)
    return np.asarray(jax.device_get(value))
