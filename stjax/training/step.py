"""The pure train step: (state, frozen, batch) -> (state, metrics) under `jax.jit`.

The model is split once into a static graph, the trainable variables (LoRA adapters or
all weights) and the frozen rest. Only the trainable part is differentiated, donated and
given optimizer state; the frozen weights are passed by reference every step and never
copied. Micro-batches are scanned and their gradients summed, then divided by the token
count of the whole step, so gradient accumulation weighs every token equally.

Losses that compare against the frozen starting model get a `Reference`: with LoRA it is
the same graph with the adapters' B matrices zeroed (no second copy of the weights); with
full fine-tuning it is a frozen copy of the initial weights, passed in `Frozen.reference`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from stjax.lora import with_dropout_keys
from stjax.objective import LossFn, ModelOutputs, Reference, ReferenceFn
from stjax.models.partitioning import DEFAULT_RULES, Rules, checked_sharding, state_shardings


class Frozen(NamedTuple):
    rest: nnx.State  # everything that is not trained
    reference: nnx.State | None = None  # full fine-tuning with an online reference: initial weights


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    step: jax.Array
    params: nnx.State  # trainable variables only
    opt_state: Any
    rng: jax.Array  # raw base key data; step keys are folded from it, so resume is exact


def split_model(model: nnx.Module, trainable) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """(graph, trainable variables, everything else) for a trainable-variable filter."""
    return nnx.split(model, trainable, ...)


def right_padded_hidden(model, tokens: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """Hidden states of right-padded rows (every training, eval and reference batch): their
    lengths let a length-aware kernel (cuDNN) skip the dense mask."""
    return model.hidden_states(tokens, attention_mask=attention_mask, lengths=attention_mask.sum(axis=1))[0]


def batch_hidden(model, batch: dict) -> jax.Array:
    """Hidden states of a training or eval batch: packed rows (segment_ids, positions) attend
    within each example; others are right-padded rows."""
    if "segment_ids" in batch:
        return model.hidden_states(batch["inputs"], attention_mask=batch["attention_mask"],
                                   positions=batch["positions"], segment_ids=batch["segment_ids"])[0]
    return right_padded_hidden(model, batch["inputs"], batch["attention_mask"])


def forward(graphdef, params, frozen: Frozen, batch, dropout_key) -> ModelOutputs:
    # A fresh dropout key per step and micro-batch, so runs are reproducible and resume exactly.
    model = nnx.merge(graphdef, params, with_dropout_keys(frozen.rest, dropout_key))
    return ModelOutputs(batch_hidden(model, batch), model.output_weights())


def make_reference(graphdef, params, frozen: Frozen) -> Reference:
    """The starting model: adapters off (B = 0) with LoRA, the frozen initial copy otherwise."""
    reference_params = frozen.reference if frozen.reference is not None else jax.tree.map(jnp.zeros_like, params)
    model = nnx.merge(graphdef, jax.lax.stop_gradient(reference_params), frozen.rest)
    model.eval()  # no dropout in the reference

    def hidden(tokens, attention_mask, segment_ids=None, positions=None):
        if segment_ids is not None:
            return jax.lax.stop_gradient(model.hidden_states(tokens, attention_mask=attention_mask, positions=positions,
                                                             segment_ids=segment_ids)[0])
        return jax.lax.stop_gradient(right_padded_hidden(model, tokens, attention_mask))

    return Reference(hidden, lambda columns=None: jax.lax.stop_gradient(model.output_weights(columns)))


def make_train_step(
    graphdef: nnx.GraphDef, loss_fn: LossFn, tx: optax.GradientTransformation, *, grad_accum: int = 1,
    reference_fn: ReferenceFn | None = None,
):
    """Returns the un-jitted step; `jit_train_step` adds shardings and donation.

    With reference_fn the reference quantities are computed in the step (online);
    without, the loss reads them from the batch (cached, or not needed).
    """

    def micro_loss(params, frozen, micro, key):
        refs = micro if reference_fn is None else reference_fn(make_reference(graphdef, params, frozen), micro)
        loss_sum, count, metrics = loss_fn(forward(graphdef, params, frozen, micro, key), micro, refs)
        return loss_sum, (count, metrics)

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

    def train_step(state: TrainState, frozen: Frozen, batch: dict):
        step_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        micro_batches = jax.tree.map(lambda x: x.reshape(grad_accum, -1, *x.shape[1:]), batch)

        def accumulate(carry, inputs):
            index, micro = inputs
            (loss_sum, (count, metrics)), grads = grad_fn(state.params, frozen, micro, jax.random.fold_in(step_key, index))
            total = jax.tree.map(jnp.add, carry, (grads, loss_sum, count, metrics))
            return total, None

        zero_metrics = jax.eval_shape(lambda: micro_loss(state.params, frozen, jax.tree.map(lambda x: x[0], micro_batches), step_key)[1][1])
        init = (
            jax.tree.map(jnp.zeros_like, state.params),
            jnp.zeros((), jnp.float32),
            jnp.zeros((), jnp.float32),
            jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zero_metrics),
        )
        (grads, loss_sum, count, metric_sums), _ = jax.lax.scan(
            accumulate, init, (jnp.arange(grad_accum), micro_batches))
        denominator = jnp.maximum(count, 1.0)
        grads = jax.tree.map(lambda g: g / denominator, grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": loss_sum / denominator,
            "grad_norm": optax.tree.norm(grads),
            "tokens": batch["attention_mask"].sum().astype(jnp.float32),  # real (unpadded) tokens read
            "response_tokens": count,  # the tokens the loss covers
            **{name: value / denominator for name, value in metric_sums.items()},
        }
        return TrainState(state.step + 1, params, opt_state, state.rng), metrics

    return train_step


def make_eval_step(graphdef: nnx.GraphDef, loss_fn: LossFn, *, reference_fn: ReferenceFn | None = None):
    """(trainable params, frozen, batch) -> the objective's sums on the batch, dropout off and
    no gradient: {"loss", "tokens", and every metric of the loss}, each summed over tokens."""

    def eval_step(params, frozen: Frozen, batch: dict):
        model = nnx.merge(graphdef, params, frozen.rest)
        model.eval()
        hidden = batch_hidden(model, batch)
        refs = batch if reference_fn is None else reference_fn(make_reference(graphdef, params, frozen), batch)
        loss_sum, count, metrics = loss_fn(ModelOutputs(hidden, model.output_weights()), batch, refs)
        return {"loss": loss_sum, "tokens": count, **metrics}

    return eval_step


def batch_sharding(mesh: Mesh, rules: Rules = DEFAULT_RULES) -> NamedSharding:
    """Rows over the batch mesh axes (data, fsdp), the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(rules["batch"]))


def state_sharding(state: TrainState, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> TrainState:
    """Params follow their logical axes; so do optimizer moments (copies of the param
    Variables, metadata included); counts and scalars are replicated."""
    replicated = NamedSharding(mesh, PartitionSpec())

    def leaf(x):
        if isinstance(x, nnx.Variable) and getattr(x, "logical_axes", None):
            return x.replace(checked_sharding(x.shape, x.logical_axes, mesh, rules, what="optimizer state"))
        return x.replace(replicated) if isinstance(x, nnx.Variable) else replicated

    return TrainState(
        step=replicated,
        params=state_shardings(state.params, mesh, rules),
        opt_state=jax.tree.map(leaf, state.opt_state, is_leaf=lambda x: isinstance(x, nnx.Variable)),
        rng=replicated,
    )


def jit_train_step(step_fn, state_shardings_: TrainState, frozen_shardings, batch_sharding_: NamedSharding):
    replicated = NamedSharding(batch_sharding_.mesh, PartitionSpec())
    return jax.jit(
        step_fn,
        in_shardings=(state_shardings_, frozen_shardings, batch_sharding_),
        out_shardings=(state_shardings_, replicated),
        donate_argnums=(0,),
    )
