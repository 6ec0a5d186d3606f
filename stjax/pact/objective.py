"""PACT's fine-tuning objective: CE + lambda * the gated safety-token KL at every assistant
position, against the frozen reference's full-context and response-only passes.

Factories with explicit hyperparameters (the optax pattern) return an `Objective`: the
reference function (what the frozen model contributes, cacheable per example) and the loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from stjax.losses import logsumexp_chunked
from stjax.objective import Objective, Reference, ce_plus, gather_positions, safety_columns, scatter_positions
from stjax.pact.loss import GateSettings, pact_bucket_kl_per_position, pact_kl_per_position
from stjax.pact.reference import reference_safety_logits, response_start_shift, shift_rows, unshift_rows


def kl_positions_mask(batch: dict, *, first_positions: int | None = None, at_end: bool = True) -> jax.Array:
    """Where the KL applies [B, L]: the final response's positions (earlier assistant turns of
    a multi-turn example are trained by CE alone), its first `first_positions` only (None:
    all), and, with at_end=False, not at the last one, whose target is the end-of-turn token
    (the position where a task answer must end)."""
    mask = batch["response_pos"] >= 0
    if first_positions is not None:
        mask &= batch["response_pos"] < first_positions
    if not at_end:
        following = batch["response_pos"][:, 1:] >= 0
        if "segment_ids" in batch:  # packed rows: the next token must be the same example's
            following &= batch["segment_ids"][:, 1:] == batch["segment_ids"][:, :-1]
        mask &= jnp.pad(following, ((0, 0), (0, 1)))
    return mask.astype(jnp.float32)


def pact(ids: np.ndarray, weights: np.ndarray, header_len: int, *, lam: float = 1.0, temperature: float = 2.0,
         gate: GateSettings = GateSettings(), chunk_tokens: int = 512, first_positions: int | None = None,
         at_end: bool = True) -> Objective:
    """ids/weights: the safety tokens (stage 1); header_len: tokens of the chat template's
    assistant header (the response-only sequences start with it); lam: weight of the KL;
    temperature: T of the KL; chunk_tokens: tokens per chunk of the CE's vocabulary projection;
    first_positions / at_end: where the KL applies (`kl_positions_mask`; the defaults, every
    assistant position, are the reference's)."""
    ids, weights = jnp.asarray(ids), jnp.asarray(weights)
    where = dict(first_positions=first_positions, at_end=at_end)

    def reference_fn(reference: Reference, batch):
        r_full, r_post = reference_safety_logits(reference.hidden, reference.output_weights(ids), batch, header_len)
        return {"ref_full": r_full, "ref_post": r_post}

    def loss(outputs, batch, refs):
        kl, c = pact_kl_per_position(safety_columns(outputs, ids), refs["ref_full"], refs["ref_post"], weights,
                                     batch["response_pos"], temperature=temperature, gate=gate)
        where_kl = kl_positions_mask(batch, **where)
        return ce_plus(outputs, batch, kl * where_kl, lam=lam, chunk_tokens=chunk_tokens, gate=c * where_kl)

    return Objective(loss, reference_fn)


def pact_bucket(ids: np.ndarray, weights: np.ndarray, header_len: int, *, lam: float = 1.0,
                temperature: float = 2.0, gate: GateSettings = GateSettings(), chunk_tokens: int = 512) -> Objective:
    """Experimental: PACT's KL over K + 1 buckets (safety tokens + the rest of the vocabulary),
    which holds the trained model to the reference's absolute confidence in the safety tokens.
    Arguments as for `pact`; chunk_tokens also chunks the vocabulary-wide logsumexps."""
    base = pact(ids, weights, header_len, lam=lam, temperature=temperature, gate=gate, chunk_tokens=chunk_tokens)
    ids, weights = jnp.asarray(ids), jnp.asarray(weights)
    T = temperature

    def reference_fn(reference: Reference, batch):
        refs = base.reference_fn(reference, batch)
        vocab = reference.output_weights(None)
        full = reference.hidden(batch["inputs"], batch["attention_mask"])
        lse = logsumexp_chunked(gather_positions(full, batch), vocab, temperature=T, chunk_tokens=chunk_tokens)
        refs["ref_full_lse"] = scatter_positions(lse, batch, fill=jax.nn.logsumexp(refs["ref_full"] / T, axis=-1))
        shift = response_start_shift(batch["response_pos"], header_len)
        post_inputs, inside = shift_rows(batch["inputs"], shift)
        post_attention, _ = shift_rows(batch["attention_mask"], shift, fill=False)
        post_lse = logsumexp_chunked(reference.hidden(post_inputs, post_attention & inside), vocab,
                                     temperature=T, chunk_tokens=chunk_tokens)
        refs["ref_post_lse"] = unshift_rows(post_lse, shift)
        return refs

    def loss(outputs, batch, refs):
        z = safety_columns(outputs, ids)
        lse = logsumexp_chunked(gather_positions(outputs.hidden, batch), outputs.output_weights, temperature=T,
                                chunk_tokens=chunk_tokens)
        # off the loss positions (no KL there) the K columns' own logsumexp keeps every term finite
        z_lse = scatter_positions(lse, batch, fill=jax.lax.stop_gradient(jax.nn.logsumexp(z / T, axis=-1)))
        kl, c = pact_bucket_kl_per_position(
            z, z_lse, refs["ref_full"], refs["ref_full_lse"], refs["ref_post"],
            refs["ref_post_lse"], weights, batch["response_pos"], temperature=T, gate=gate)
        final = kl_positions_mask(batch)
        return ce_plus(outputs, batch, kl * final, lam=lam, chunk_tokens=chunk_tokens, gate=c * final)

    return Objective(loss, reference_fn)
