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
