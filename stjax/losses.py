"""Losses as pure functions of arrays.

The vocabulary projection is the memory hog of LLM fine-tuning: [batch, length, vocab]
float32 logits are 2 GB at batch 8, length 512 and Llama-3's 128k vocabulary. These
functions take final hidden states and the output matrix instead, and project one
sequence chunk at a time under `jax.checkpoint`, so neither the forward nor the backward
pass ever holds more than one chunk of logits.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _chunks(x: jax.Array, chunk: int) -> jax.Array:
    """[B, L, ...] -> [L // chunk, B, chunk, ...] (L padded up to a multiple of chunk)."""
    B, L = x.shape[:2]
    pad = -L % chunk
    if pad:
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    return jnp.swapaxes(x.reshape(B, -1, chunk, *x.shape[2:]), 0, 1)


def chunk_length(batch: int, length: int, chunk_tokens: int) -> int:
    return max(1, min(length, chunk_tokens // max(batch, 1)))


def map_chunks(fn, arrays: tuple[jax.Array, ...], chunk: int) -> jax.Array:
    """fn over sequence chunks of [B, L, ...] arrays, rematerialized in the backward pass;
    fn maps [B, C, ...] chunks to [B, C] and the results are joined back into [B, L]."""
    B, L = arrays[0].shape[:2]
    step = jax.checkpoint(lambda args: fn(*args))
    out = jax.lax.map(step, tuple(_chunks(a, chunk) for a in arrays))
    return jnp.swapaxes(out, 0, 1).reshape(B, -1)[:, :L]


def _logits(h: jax.Array, output_weights: jax.Array) -> jax.Array:
    return jnp.einsum("bcd,dv->bcv", h, output_weights.astype(h.dtype), preferred_element_type=jnp.float32)


def target_logprobs(
    hidden: jax.Array, output_weights: jax.Array, targets: jax.Array, *, chunk_tokens: int = 512
) -> jax.Array:
    """log p(targets) [B, L] in float32, from hidden [B, L, D] and the output matrix [D, V]."""

    def one_chunk(h, t):
        logits = _logits(h, output_weights)
        picked = jnp.take_along_axis(logits, t[..., None], axis=-1)[..., 0]
        return picked - jax.nn.logsumexp(logits, axis=-1)

    B, L, _ = hidden.shape
    return map_chunks(one_chunk, (hidden, targets), chunk_length(B, L, chunk_tokens))


def logsumexp_chunked(hidden: jax.Array, output_weights: jax.Array, *, temperature: float = 1.0,
                      chunk_tokens: int = 512) -> jax.Array:
    """logsumexp over the vocabulary of logits / temperature, [B, L]."""
    B, L, _ = hidden.shape
    return map_chunks(lambda h: jax.nn.logsumexp(_logits(h, output_weights) / temperature, axis=-1),
                      (hidden,), chunk_length(B, L, chunk_tokens))


def full_vocab_kl(ref_hidden: jax.Array, ref_weights: jax.Array, hidden: jax.Array, output_weights: jax.Array, *,
                  chunk_tokens: int = 512) -> jax.Array:
    """KL(p_ref || p_theta) over the whole vocabulary at every position, [B, L]."""

    def one_chunk(rh, h):
        log_ref = jax.nn.log_softmax(jax.lax.stop_gradient(_logits(rh, ref_weights)), axis=-1)
        log_p = jax.nn.log_softmax(_logits(h, output_weights), axis=-1)
        return (jnp.exp(log_ref) * (log_ref - log_p)).sum(axis=-1)

    B, L, _ = hidden.shape
    return map_chunks(one_chunk, (ref_hidden, hidden), chunk_length(B, L, chunk_tokens))


def cross_entropy(
    hidden: jax.Array, output_weights: jax.Array, targets: jax.Array, loss_mask: jax.Array, *,
    chunk_tokens: int = 512,
) -> tuple[jax.Array, jax.Array]:
    """(sum of masked token NLLs, number of masked tokens): callers divide by token counts."""
    logp = target_logprobs(hidden, output_weights, targets, chunk_tokens=chunk_tokens)
    mask = loss_mask.astype(jnp.float32)
    return -(logp * mask).sum(), mask.sum()


# ---------------------------------------------------------------------------------- PACT
def top_p_count(logits: jax.Array, top_p: float, temperature: float = 1.0) -> jax.Array:
    """Smallest number of entries whose softmax(logits / temperature) mass reaches top_p."""
    probs = jnp.sort(jax.nn.softmax(logits / temperature, axis=-1), axis=-1)[..., ::-1]
    count = (jnp.cumsum(probs, axis=-1) < top_p).sum(axis=-1) + 1
    return jnp.minimum(count, logits.shape[-1])


def pact_gate(train_logits, ref_post_logits, response_pos, *, gate_top_p=0.9, gate_alpha=2.0, gate_bias=0.0,
              gate_temperature=1.0, gate_prefix_n=8, gate_decay_tau=8.0, gate_prefix_boost=1.0) -> jax.Array:
    """Per-position weight [B, L] of the response-only reference (no gradient through it).

    It grows when the trained model spreads its safety-token mass over more tokens than the
    response-only reference does, and decays after the first gate_prefix_n response positions.
    """
    k = train_logits.shape[-1]
    n_train = top_p_count(train_logits, gate_top_p, gate_temperature) / k
    n_post = top_p_count(ref_post_logits, gate_top_p, gate_temperature) / k
    gate = jax.nn.sigmoid(gate_alpha * (n_train - n_post - gate_bias))
    t = response_pos.astype(jnp.float32)
    if gate_decay_tau > 0:
        decay = jnp.exp(-jnp.maximum(t - gate_prefix_n, 0.0) / gate_decay_tau)
    else:
        decay = (t < gate_prefix_n).astype(jnp.float32)
    return jax.lax.stop_gradient(gate * decay * gate_prefix_boost)


def pact_kl_per_position(train_logits, ref_full_logits, ref_post_logits, weights, response_pos, *,
                         temperature=2.0, **gate_kwargs) -> tuple[jax.Array, jax.Array]:
    """(KL_t [B, L], gate [B, L]) of the weighted safety-token target q against the trained model."""
    z = train_logits.astype(jnp.float32)
    gate = pact_gate(z, ref_post_logits.astype(jnp.float32), response_pos, **gate_kwargs)
    ref = (1.0 - gate[..., None]) * ref_full_logits + gate[..., None] * ref_post_logits
    q = jax.nn.softmax(ref.astype(jnp.float32) / temperature, axis=-1) * weights
    q = q / jnp.maximum(q.sum(axis=-1, keepdims=True), 1e-12)
    q = jax.lax.stop_gradient(q)
    log_p = jax.nn.log_softmax(z / temperature, axis=-1)
    kl = (q * (jnp.log(jnp.maximum(q, 1e-12)) - log_p)).sum(axis=-1) * temperature**2
    return kl, gate


def pact_kl(train_logits, ref_full_logits, ref_post_logits, weights, mask, response_pos, *, temperature=2.0,
            gate_top_p=0.9, gate_alpha=2.0, gate_bias=0.0, gate_temperature=1.0, gate_prefix_n=8,
            gate_decay_tau=8.0, gate_prefix_boost=1.0) -> tuple[jax.Array, dict]:
    """PACT's KL term: mean over masked positions of KL(q || softmax(z / T)) * T^2.

    The three logits are the K safety-token columns [B, L, K] of the trained model (full
    context), the frozen reference (full context) and the reference on the response-only
    sequence; weights [K] are the safety tokens' positive weights; mask [B, L] marks the
    assistant positions; response_pos [B, L] counts them from 0. Returns (scalar, aux).
    """
    kl, gate = pact_kl_per_position(
        train_logits, ref_full_logits, ref_post_logits, weights, response_pos, temperature=temperature,
        gate_top_p=gate_top_p, gate_alpha=gate_alpha, gate_bias=gate_bias, gate_temperature=gate_temperature,
        gate_prefix_n=gate_prefix_n, gate_decay_tau=gate_decay_tau, gate_prefix_boost=gate_prefix_boost)
    mask = mask.astype(jnp.float32)
    count = jnp.maximum(mask.sum(), 1.0)
    return (kl * mask).sum() / count, {"gate_mean": (gate * mask).sum() / count}


def pact_bucket_kl_per_position(train_logits, train_lse, ref_full_logits, ref_full_lse, ref_post_logits,
                                ref_post_lse, weights, response_pos, *, temperature=2.0, **gate_kwargs):
    """Experimental K + 1 bucket PACT: (KL_t [B, L], gate [B, L]).

    Buckets are the K safety tokens and "the rest of the vocabulary", with full-vocabulary
    probabilities at temperature T (the *_lse arguments are logsumexp(logits / T) over the
    whole vocabulary). The target keeps the reference's mass on each safety token scaled by
    weight / max(weight); the remainder goes to the rest bucket.
    """
    T = temperature
    z = train_logits.astype(jnp.float32)
    gate = pact_gate(z, ref_post_logits.astype(jnp.float32), response_pos, **gate_kwargs)
    c = gate[..., None]
    log_ref = (1.0 - c) * (ref_full_logits / T - ref_full_lse[..., None]) + c * (
        ref_post_logits / T - ref_post_lse[..., None])
    q_tokens = jnp.exp(log_ref) * (weights / jnp.maximum(weights.max(), 1e-12))
    q_tokens = jax.lax.stop_gradient(jnp.minimum(q_tokens, 1.0))
    q_rest = jnp.maximum(1.0 - q_tokens.sum(axis=-1), 0.0)
    log_p_tokens = z / T - train_lse[..., None]
    p_rest = jnp.maximum(1.0 - jnp.exp(log_p_tokens).sum(axis=-1), 1e-12)
    kl = (q_tokens * (jnp.log(jnp.maximum(q_tokens, 1e-12)) - log_p_tokens)).sum(axis=-1)
    kl += q_rest * (jnp.log(jnp.maximum(q_rest, 1e-12)) - jnp.log(p_rest))
    return kl * T**2, gate
