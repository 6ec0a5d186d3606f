"""Decoder layers stacked into one module and run under `jax.lax.scan` (`model.scan_layers`).

A Python loop over 32 layers hands XLA 32 copies of the layer to compile; a scan hands it
one. The stacked module is the first layer's module with every variable stacked along a
new leading axis (logical axis `layers`, replicated), so its parameter paths drop the layer
index: `layers.self_attn.q_proj.weight` is [num_layers, hidden, heads, head_dim].
Checkpoints keep the Hub's per-layer names: `layer_paths` / `layer_slices` say which
per-layer name each stacked row is, and the loaders and writers go through them.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from stjax.errors import UserError

STACK = "layers"  # the attribute of the stacked module, and the logical axis of the stacked dimension


def is_stacked(path: tuple) -> bool:
    """Whether a state path names a stacked variable ('layers', 'mlp', ...) rather than one
    layer's ('layers', 3, 'mlp', ...)."""
    return len(path) > 1 and path[0] == STACK and not isinstance(path[1], int)


def layer_paths(path: tuple, count: int) -> list[tuple]:
    """The per-layer paths of a stacked variable's rows: ('layers', i, ...) for each i."""
    return [(path[0], i, *path[1:]) for i in range(count)]


def layer_slices(path: tuple, value) -> Iterator[tuple[tuple, object]]:
    """(per-layer path, row) for a stacked variable, or (path, value) itself for any other."""
    if not is_stacked(path):
        yield path, value
        return
    for i, layer_path in enumerate(layer_paths(path, value.shape[0])):
        yield layer_path, value[i]


def is_matrix(path: tuple, shape: tuple) -> bool:
    """Whether a parameter is a weight matrix (a kernel, an embedding, an adapter): two or more
    dimensions besides a stacked layer axis, and not a bias (Qwen2's q/k/v biases are [heads,
    head_dim]). Norm scales and biases are not (weight decay and matmul FLOPs skip them)."""
    return path[-1] != "bias" and len(shape) - is_stacked(path) >= 2


def stack_modules(modules: Sequence[nnx.Module]) -> nnx.Module:
    """One module whose variables are those of `modules` stacked on a leading axis.

    The modules must be the same computation: equal graph definitions (static attributes
    such as a sliding window included), only their variables' values may differ.
    """
    splits = [nnx.split(m) for m in modules]
    graphdef = splits[0][0]
    for i, (other, _) in enumerate(splits[1:], 1):
        if other != graphdef:
            raise UserError(f"model.scan_layers: layer {i} is not built like layer 0 (a per-layer setting such as "
                            "the sliding window differs); set model.scan_layers: false")

    def stack(*variables):
        first = variables[0]
        out = first.replace(jnp.stack([v.get_value() for v in variables]))
        axes = first.get_metadata().get("logical_axes")
        if axes is not None:
            out.set_metadata("logical_axes", (STACK, *axes))
        return out

    state = jax.tree.map(stack, *[s for _, s in splits], is_leaf=lambda x: isinstance(x, nnx.Variable))
    return nnx.merge(graphdef, state)


def scan_stack(stack: nnx.Module, carry, per_layer, body: Callable, *, remat_policy=None, remat: bool = False):
    """Runs `body(layer, carry, per_layer_i) -> (carry, out_i)` over the stacked layers;
    returns (carry, outputs stacked on a leading axis). `per_layer` is a pytree whose leaves
    have the layer axis first (e.g. the layer indices) or None. With `remat`, each layer's activations
    are recomputed in the backward pass (under `remat_policy`), as the loop does per layer."""
    graphdef, state = nnx.split(stack)

    def step(carry, xs):
        layer_state, extra = xs
        return body(nnx.merge(graphdef, layer_state), carry, extra)

    if remat:
        step = jax.checkpoint(step, policy=remat_policy, prevent_cse=False)
    return jax.lax.scan(step, carry, (state, per_layer))
