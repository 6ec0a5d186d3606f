"""The train program: everything a run compiles, assembled in one place.

`build_program` takes the model split into (graph, trained variables, frozen rest), an
objective and an optimizer, and returns the shardings of the train state, the frozen
weights and the batch, the state initializer and the jitted step. It works the same on
concrete parameters (the trainer, tests, benchmarks) and on abstract ones (shape structs
from `nnx.eval_shape`: the planner's compile-only check for a TPU topology), so what the
planner compiles is exactly what the trainer runs.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from stjax.models.partitioning import DEFAULT_RULES, Rules, checked_sharding
from stjax.objective import Objective
from stjax.training.step import (Frozen, TrainState, batch_sharding, jit_train_step, make_eval_step, make_train_step,
                                 state_sharding)


@dataclasses.dataclass
class TrainProgram:
    graphdef: nnx.GraphDef
    objective: Objective
    online: bool  # the step runs the reference forward itself (ref: online)
    frozen: Frozen  # passed to every step by reference, never copied or donated
    frozen_shardings: Frozen
    state_shardings: TrainState
    batch_sharding: NamedSharding
    init_state: Callable[[nnx.State], TrainState]  # trained params -> sharded TrainState (donates the params)
    abstract_state: TrainState  # shapes, dtypes and shardings of the state
    step: Callable  # jitted (state, frozen, batch) -> (state, metrics), state donated
    eval_step: Callable  # jitted (params, frozen, batch) -> summed loss and metrics (validation)

    def device_batch(self, batch: dict) -> dict:
        """Host rows -> global arrays sharded over the batch mesh axes."""
        return {k: jax.make_array_from_process_local_data(self.batch_sharding, v) for k, v in batch.items()}


def _is_abstract(tree) -> bool:
    return any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(tree))


def variable_shardings(tree: nnx.State, mesh: Mesh, rules: Rules = DEFAULT_RULES):
    """Shardings of model variables: a concrete array keeps its own; an abstract parameter
    follows its logical axes; other abstract variables (dropout key counts) are replicated."""
    if not _is_abstract(tree):
        return jax.tree.map(lambda x: x.sharding, tree)

    def one(path, var):
        if isinstance(var, nnx.Param):
            axes = getattr(var, "logical_axes", None) or (None,) * len(var.shape)
            return var.replace(checked_sharding(var.shape, axes, mesh, rules))
        return var.replace(NamedSharding(mesh, PartitionSpec()))

    return nnx.map_state(one, tree)


def build_program(graphdef: nnx.GraphDef, params: nnx.State, rest: nnx.State, objective: Objective,
                  tx: optax.GradientTransformation, mesh: Mesh, *, lora: bool, ref: str = "cached",
                  grad_accum: int = 1, seed: int = 0, rules: Rules = DEFAULT_RULES) -> TrainProgram:
    """The train program for trained `params` (concrete or abstract) and the frozen `rest`.

    ref: "online" runs the objective's reference in the step; with full fine-tuning that
    needs a frozen copy of the initial weights (with LoRA the reference is the base with the
    adapters off). "cached": the reference quantities arrive with the batch.
    """
    online = objective.needs_reference and ref == "online"
    reference = None
    if online and not lora:
        reference = params if _is_abstract(params) else jax.tree.map(jnp.copy, params)
    frozen = Frozen(rest, reference)
    frozen_shardings = Frozen(variable_shardings(rest, mesh, rules),
                              None if reference is None else variable_shardings(reference, mesh, rules))
    rng = jax.random.key_data(jax.random.key(seed))

    def init(p):
        return TrainState(jnp.zeros((), jnp.int32), p, tx.init(p), rng)

    abstract_state = jax.eval_shape(init, params)
    shardings = state_sharding(abstract_state, mesh, rules)
    abstract_state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                  abstract_state, shardings)
    batch = batch_sharding(mesh, rules)
    step = jit_train_step(make_train_step(graphdef, objective.loss, tx, grad_accum=grad_accum,
                                          reference_fn=objective.reference_fn if online else None),
                          shardings, frozen_shardings, batch)
    evaluate = jax.jit(make_eval_step(graphdef, objective.loss, reference_fn=objective.reference_fn if online else None),
                       in_shardings=(shardings.params, frozen_shardings, batch),
                       out_shardings=NamedSharding(mesh, PartitionSpec()))
    return TrainProgram(graphdef, objective, online, frozen, frozen_shardings, shardings, batch,
                        jax.jit(init, out_shardings=shardings, donate_argnums=0), abstract_state, step, evaluate)


def compiled_step(program: TrainProgram, batch: dict[str, Any]):
    """The step lowered and compiled for a batch of these shapes (arrays or shape structs)."""
    return program.step.lower(program.abstract_state, program.frozen, batch).compile()
