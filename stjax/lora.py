"""LoRA adapters on the model's projections, and their export (merged or PEFT format).

Adapters live inside the `Projection` modules they adapt, as `LoraParam` variables, so
`nnx.split(model, LoraParam, ...)` separates the trainable adapters from the frozen base
without copying it. Zeroing the B matrices turns the adapters off: that is how the frozen
reference model is evaluated with no second copy of the weights.
"""

from __future__ import annotations

import dataclasses
import json
import math
import zlib
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from stjax.configlib import ConfigKeyError
from stjax.models.partitioning import host_array
from stjax.fileio import atomic_directory
from stjax.models.checkpoint_io import hf_name
from stjax.models.layer_stack import layer_paths, layer_slices
from stjax.models.transformer import CausalLM, Projection


@dataclasses.dataclass
class LoraSection:
    enabled: bool = True
    rank: int = 8
    alpha: float = 32.0
    dropout: float = 0.05
    targets: list[str] = dataclasses.field(default_factory=lambda: ["q_proj", "v_proj"])  # or ["all-linear"]
    rslora: bool = False  # rank-stabilized scale alpha / sqrt(rank) instead of alpha / rank (PEFT use_rslora)

    def check(self) -> None:
        """One line naming the key for settings no adapter can have."""
        expand_targets(self.targets)
        if self.rank < 1:
            raise ConfigKeyError(f"'lora.rank': expected a positive rank, got {self.rank}")
        if not self.alpha > 0:
            raise ConfigKeyError(f"'lora.alpha': expected a positive number, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigKeyError(f"'lora.dropout': expected a value in [0, 1), got {self.dropout}")


TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ALL_LINEAR = "all-linear"  # PEFT's shorthand: every linear layer but the output projection


def expand_targets(targets: Sequence[str] | str) -> list[str]:
    """lora.targets with `all-linear` expanded; anything unknown is a one-line error."""
    names = [targets] if isinstance(targets, str) else list(targets)
    if ALL_LINEAR in names:
        return list(TARGETS)
    unknown = sorted(set(names) - set(TARGETS))
    if unknown or not names:
        raise ConfigKeyError(f"'lora.targets': unknown module(s) {unknown}; expected {ALL_LINEAR!r} or a non-empty "
                             f"subset of {list(TARGETS)}")
    return [t for t in TARGETS if t in names]


def lora_scale(alpha: float, rank: int, rslora: bool = False) -> float:
    """The factor of B A: alpha / rank, or alpha / sqrt(rank) for rsLoRA (Kalajdzievski 2023)."""
    return alpha / math.sqrt(rank) if rslora else alpha / rank


class LoraParam(nnx.Param):
    """A trainable adapter matrix (the base model's `nnx.Param`s stay frozen)."""


class DropoutKey(nnx.Variable):
    """The adapter's dropout key. The train step sets a fresh one per step before building
    the model (see `with_dropout_keys`), so dropout needs no mutable RNG state."""


def fold_path(key: jax.Array, path: tuple) -> jax.Array:
    """`key` folded with a variable's path: a key of its own, the same however it is reached."""
    return jax.random.fold_in(key, zlib.crc32(repr(path).encode()) & 0x7FFFFFFF)


def with_dropout_keys(state: nnx.State, key: jax.Array) -> nnx.State:
    """`state` with every adapter's DropoutKey replaced by `key` folded with its path (a
    stacked adapter's keys with each layer's own path: the masks of scanned layers are
    those of the loop)."""

    def one(path, var):
        if not isinstance(var, DropoutKey):
            return var
        if var.get_value().ndim == 0:
            return var.replace(fold_path(key, path))
        return var.replace(jnp.stack([fold_path(key, p) for p in layer_paths(path, var.get_value().shape[0])]))

    return nnx.map_state(one, state)


class LoraAdapter(nnx.Module):
    """B A on a projection; on a stacked projection of scanned layers, one A and B per layer
    stacked on a leading axis (the scan hands each layer its own)."""

    def __init__(self, base: Projection, rank: int, alpha: float, dropout: float, keys: Sequence[jax.Array],
                 rslora: bool = False):
        """`keys`: one initialization key per layer row (one for an unstacked projection)."""
        lead = 0 if base.stack is None else 1
        stack_axes, stack_shape = base.weight.logical_axes[:lead], (() if base.stack is None else (base.stack,))
        in_axes = base.weight.logical_axes[lead: lead + len(base.in_shape)]
        out_axes = base.weight.logical_axes[lead + len(base.in_shape):]
        fan_in = int(np.prod(base.in_shape))
        dtype = base.weight.dtype
        # PEFT's init: A ~ U(+-1/sqrt(fan_in)) (kaiming-uniform with a=sqrt(5)), B = 0.
        bound = 1.0 / math.sqrt(fan_in)
        draws = [jax.random.uniform(key, (*base.in_shape, rank), dtype, -bound, bound) for key in keys]
        self.a = LoraParam(draws[0] if base.stack is None else jnp.stack(draws),
                           logical_axes=(*stack_axes, *in_axes, "lora_rank"))
        self.b = LoraParam(jnp.zeros((*stack_shape, rank, *base.out_shape), dtype),
                           logical_axes=(*stack_axes, "lora_rank", *out_axes))
        self.stack = base.stack
        self.scale = lora_scale(alpha, rank, rslora)
        self.rslora = rslora
        self.dropout = dropout
        placeholder = jax.random.key(0) if base.stack is None else jax.random.split(jax.random.key(0), base.stack)
        self.dropout_key = DropoutKey(placeholder) if dropout > 0 else None  # set per step (with_dropout_keys)
        self.deterministic = False  # model.eval() turns dropout off

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.dropout_key is not None and not self.deterministic:
            keep = jax.random.bernoulli(self.dropout_key[...], 1.0 - self.dropout, x.shape)
            x = jnp.where(keep, x / (1.0 - self.dropout), 0).astype(x.dtype)
        down = jnp.tensordot(x, self.a[...].astype(x.dtype), axes=self.a.ndim - 1)
        return jnp.tensordot(down, self.b[...].astype(x.dtype), axes=1) * self.scale

    def delta(self) -> jax.Array:
        """The update to the base kernel, in its [in..., out...] layout ([layers, in..., out...]
        when stacked)."""
        product = lambda a, b: jnp.tensordot(a, b, axes=1)  # noqa: E731
        if self.stack is not None:
            product = jax.vmap(product)
        return product(self.a[...], self.b[...]) * self.scale


def adapted_projections(model: CausalLM, targets: Sequence[str] | None = None):
    """(path, Projection) for every projection whose name is in targets (or has an adapter)."""
    for path, module in nnx.iter_graph(model):
        if isinstance(module, Projection) and path and (
            (targets is None and module.lora is not None) or (targets is not None and path[-1] in targets)
        ):
            yield path, module


def adapter_keys(seed: int, path: tuple, projection: Projection) -> list[jax.Array]:
    """The initialization key of each layer's adapter at `path`, from the layer's own path:
    scanned and looped layers draw the same matrices."""
    paths = [path] if projection.stack is None else layer_paths(path, projection.stack)
    return [fold_path(jax.random.key(seed), p) for p in paths]


def attach_adapters(model: CausalLM, *, rank: int, alpha: float, dropout: float = 0.0,
                    targets: Sequence[str] | str = ("q_proj", "v_proj"), seed: int = 0,
                    rslora: bool = False) -> list:
    """Fresh adapters on every targeted projection, in place, not yet placed on a mesh (so it
    also runs abstractly, under eval_shape); returns the (path, projection) pairs."""
    found = list(adapted_projections(model, expand_targets(targets)))
    for path, projection in found:
        projection.lora = LoraAdapter(projection, rank, alpha, dropout, adapter_keys(seed, path, projection), rslora)
    return found


def apply_lora(model: CausalLM, *, rank: int, alpha: float, dropout: float = 0.0,
               targets: Sequence[str] | str = ("q_proj", "v_proj"), seed: int = 0, rslora: bool = False) -> CausalLM:
    """Attaches fresh adapters in place, on the mesh of their base kernels; the model is
    unchanged until B is trained."""
    _place_like_base(attach_adapters(model, rank=rank, alpha=alpha, dropout=dropout, targets=targets, seed=seed,
                                     rslora=rslora))
    return model


def _place_like_base(found) -> None:
    """Puts each adapter on the mesh of its base kernel (A/B follow the base's axes)."""
    for _, projection in found:
        base = projection.weight[...].sharding
        if not isinstance(base, jax.sharding.NamedSharding):
            continue
        spec = tuple(base.spec) + (None,) * (projection.weight.ndim - len(base.spec))
        lead = 0 if projection.stack is None else 1  # the layer axis of a stacked projection
        n_in = lead + len(projection.in_shape)
        a_spec = jax.sharding.PartitionSpec(*spec[:n_in], None)
        b_spec = jax.sharding.PartitionSpec(*spec[:lead], None, *spec[n_in:])
        adapter = projection.lora
        adapter.a.set_value(jax.device_put(adapter.a[...], jax.sharding.NamedSharding(base.mesh, a_spec)))
        adapter.b.set_value(jax.device_put(adapter.b[...], jax.sharding.NamedSharding(base.mesh, b_spec)))


def merge_lora(model: CausalLM) -> CausalLM:
    """Folds every adapter into its base kernel and removes it (in place)."""
    for _, projection in list(adapted_projections(model)):
        base = projection.weight[...]
        projection.weight.set_value((base.astype(jnp.float32) + projection.lora.delta().astype(jnp.float32)).astype(base.dtype))
        projection.lora = None
    return model


def save_peft_adapter(model: CausalLM, out_dir: str | Path, *, base_model: str = "", rank: int,
                      alpha: float, dropout: float, dtype=None, tokenizer=None,
                      extra_files: dict[str, str] | None = None) -> Path:
    """Writes adapter_config.json + adapter_model.safetensors as PEFT and vLLM load them, with
    the tokenizer and `extra_files` (name -> text: a model card, generation_config.json)."""
    out_dir = Path(out_dir)
    tensors, targets, rslora = {}, set(), False
    for path, projection in adapted_projections(model):
        rslora |= projection.lora.rslora
        a_all, b_all = host_array(projection.lora.a[...]), host_array(projection.lora.b[...])
        for (layer_path, a), (_, b) in zip(layer_slices(path, a_all), layer_slices(path, b_all)):
            name = hf_name((*layer_path, "weight"))[: -len(".weight")]
            if dtype is not None:
                a, b = a.astype(dtype), b.astype(dtype)
            # PEFT stores torch Linear layouts: lora_A [r, in], lora_B [out, r].
            tensors[f"base_model.model.{name}.lora_A.weight"] = np.ascontiguousarray(a.reshape(-1, a.shape[-1]).T)
            tensors[f"base_model.model.{name}.lora_B.weight"] = np.ascontiguousarray(b.reshape(b.shape[0], -1).T)
        targets.add(path[-1])
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
        "r": rank, "lora_alpha": alpha, "lora_dropout": dropout, "target_modules": sorted(targets),
        "bias": "none", "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": True,
        "modules_to_save": None, "use_rslora": rslora, "use_dora": False,
    }
    if jax.process_index() != 0:
        return out_dir
    with atomic_directory(out_dir) as staging:
        save_file(tensors, str(staging / "adapter_model.safetensors"), metadata={"format": "pt"})
        (staging / "adapter_config.json").write_text(json.dumps(config, indent=2))
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        for name, text in (extra_files or {}).items():
            (staging / name).write_text(text)
    return out_dir
