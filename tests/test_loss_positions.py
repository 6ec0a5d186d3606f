"""Vocabulary projections at the loss positions only: batches carry `loss_index`, and every
objective gives the same loss, metrics and gradients with it as over all positions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stjax.data.batching import BatchIterator, loss_widths
from stjax.data.tokenize import TokenizedExample
from stjax.objective import ModelOutputs, Reference, gather_positions, scatter_positions
from stjax.pact.loss import GateSettings
from stjax.pact.objective import pact, pact_bucket
from stjax.training.objectives import constrained_sft, kl_baseline, sft

VOCAB, DIM, HEADER = 97, 16, 2


def examples(n=24, seed=0):
    """Chat-like examples: a prompt, an optional earlier assistant turn, a final response."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        prompt, response = int(rng.integers(4, 20)), int(rng.integers(2, 9))
        tokens = rng.integers(1, VOCAB, prompt + response).astype(np.int32)
        turns = ((2, 4),) if i % 3 == 0 else ()
        out.append(TokenizedExample(tokens, prompt, i, turns))
    return out


def batch_pair(seed=0):
    batch = next(BatchIterator(examples(seed=seed), 8, 32, buckets=[16, 32], seed=seed))
    full = {k: v for k, v in batch.items() if k != "loss_index"}
    return {k: jnp.asarray(v) for k, v in batch.items()}, {k: jnp.asarray(v) for k, v in full.items()}


def reference(seed=1) -> Reference:
    key1, key2 = jax.random.split(jax.random.key(seed))
    table, weights = jax.random.normal(key1, (VOCAB, DIM)), jax.random.normal(key2, (DIM, VOCAB)) / 2

    def hidden(tokens, attention_mask):  # position-dependent, attention-aware stand-in for a model
        h = table[tokens] * attention_mask[..., None]
        return jnp.cumsum(h, axis=1) / (1 + jnp.arange(tokens.shape[1]))[None, :, None]

    return Reference(hidden, lambda columns=None: weights if columns is None else weights[:, columns])


SAFETY = np.array([3, 7, 11, 19, 23]), np.array([0.5, 0.2, 0.1, 0.1, 0.1], np.float32)
OBJECTIVES = {
    "sft": lambda: sft(chunk_tokens=24),
    "kl": lambda: kl_baseline(lam=0.7, chunk_tokens=24),
    "constrained_sft": lambda: constrained_sft(chunk_tokens=24),
    "pact": lambda: pact(*SAFETY, HEADER, lam=2.0, gate=GateSettings(prefix_n=2, decay_tau=2.0), chunk_tokens=24),
    "pact, no KL at end": lambda: pact(*SAFETY, HEADER, at_end=False, chunk_tokens=24),
    "pact_bucket": lambda: pact_bucket(*SAFETY, HEADER, chunk_tokens=24),
}


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_gathered_loss_positions_give_the_same_loss_metrics_and_gradients(name):
    objective = OBJECTIVES[name]()
    gathered, full = batch_pair()
    ref = reference()
    key = jax.random.key(3)
    hidden = jax.random.normal(key, (*full["inputs"].shape, DIM))
    weights = jax.random.normal(jax.random.fold_in(key, 1), (DIM, VOCAB)) / 2

    def value(hidden, weights, batch):
        refs = objective.reference_fn(ref, batch) if objective.needs_reference else {}
        loss, count, metrics = objective.loss(ModelOutputs(hidden, weights), batch, refs)
        return loss, (count, metrics)

    grad = jax.jit(jax.value_and_grad(value, argnums=(0, 1), has_aux=True))
    (loss_a, (count_a, metrics_a)), grads_a = grad(hidden, weights, gathered)
    (loss_b, (count_b, metrics_b)), grads_b = grad(hidden, weights, full)
    assert float(count_a) == float(count_b) == float(full["loss_mask"].sum()) > 0
    np.testing.assert_allclose(loss_a, loss_b, rtol=2e-6)
    for k in metrics_b:
        np.testing.assert_allclose(metrics_a[k], metrics_b[k], rtol=2e-5, atol=1e-6, err_msg=k)
    for a, b in zip(grads_a, grads_b):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
    assert float(jnp.abs(grads_a[0]).sum()) > 0  # a loss that depends on the model


def test_loss_index_lists_each_rows_loss_positions_at_a_fixed_width_per_bucket():
    it = BatchIterator(examples(), 8, 32, buckets=[16, 32])
    for _ in range(it.batches_per_epoch):
        batch = next(it)
        width = batch["inputs"].shape[1]
        assert batch["loss_index"].shape == (8, it.loss_widths[width])
        for row in range(8):
            positions = np.flatnonzero(batch["loss_mask"][row])
            index = batch["loss_index"][row]
            assert list(index[: len(positions)]) == list(positions) and (index[len(positions):] == -1).all()


def test_loss_widths_cover_every_example_that_can_ride_in_a_bucket():
    # bucket 0 holds examples with 3 and 12 loss tokens, bucket 1 one with 5: leftovers of
    # bucket 0 ride up into bucket 1, so both need 12 -> 16
    assert loss_widths((16, 64), np.array([0, 0, 1]), np.array([3, 12, 5])) == {16: 16, 64: 16}
    assert loss_widths((16, 64, 128), np.array([0, 2]), np.array([2, 100])) == {16: 8, 64: 8, 128: 104}


def test_scatter_inverts_gather_on_the_loss_positions():
    gathered, _ = batch_pair(seed=4)
    x = jax.random.normal(jax.random.key(0), gathered["loss_mask"].shape)
    back = scatter_positions(gather_positions(x, gathered), gathered, fill=jnp.full_like(x, -7.0))
    mask = np.asarray(gathered["loss_mask"]) > 0
    np.testing.assert_array_equal(np.asarray(back)[mask], np.asarray(x)[mask])
    assert (np.asarray(back)[~mask] == -7.0).all()


def test_the_switch_off_leaves_batches_without_an_index():
    batch = next(BatchIterator(examples(), 8, 32, buckets=[16, 32], loss_index=False))
    assert "loss_index" not in batch and batch["loss_mask"].shape[1] in (16, 32)
