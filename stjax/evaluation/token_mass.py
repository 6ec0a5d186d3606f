"""Probability mass of a few vocabulary entries, without materializing full-vocab logits.

Judges and the safety-mass curve need p(ids | context) = sum_i softmax(logits)[i] for a
handful of ids at a handful of positions. The numerator needs only those output columns;
the normalizer is a logsumexp over the vocabulary accumulated chunk by chunk, so memory is
[positions, chunk] rather than [positions, 128k] per row.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from stjax.models.transformer import CausalLM
from stjax.data.batching import pack_teacher_forced


def token_mass(model: CausalLM, hidden: jax.Array, ids: jax.Array, vocab_chunk: int = 8192) -> jax.Array:
    """sum over `ids` of softmax(model.project(hidden)) for hidden [..., D] -> [...]."""
    vocab = model.config.vocab_size
    chunk = min(vocab_chunk, vocab)

    def add_chunk(i, running):
        columns = i * chunk + jnp.arange(chunk)
        logits = model.project(hidden, jnp.minimum(columns, vocab - 1))
        logits = jnp.where(columns < vocab, logits, -jnp.inf)  # the last chunk overhangs the vocabulary
        return jnp.logaddexp(running, jax.nn.logsumexp(logits, axis=-1))

    normalizer = jax.lax.fori_loop(0, -(-vocab // chunk), add_chunk, jnp.full(hidden.shape[:-1], -jnp.inf))
    return jnp.exp(jax.nn.logsumexp(model.project(hidden, ids), axis=-1) - normalizer)


@functools.partial(jax.jit, static_argnames=("graphdef", "vocab_chunk"))
def _batch_mass(graphdef, state, tokens, mask, gather, ids, *, vocab_chunk: int):
    model: CausalLM = nnx.merge(graphdef, state)
    hidden, _ = model.hidden_states(tokens, attention_mask=mask)
    picked = jnp.take_along_axis(hidden, gather[..., None], axis=1)
    return token_mass(model, picked, ids, vocab_chunk)


def response_token_mass(
    model: CausalLM,
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    ids: Sequence[int],
    *,
    positions: int,
    batch_size: int = 8,
    pad_id: int = 0,
    vocab_chunk: int = 8192,
) -> np.ndarray:
    """[N, positions]: mass on `ids` at the positions predicting each response token
    (teacher-forced), the first `positions` of them; NaN past a response's end."""
    graphdef, state = nnx.split(model)
    ids = jnp.asarray(np.asarray(ids, np.int32))
    out = np.full((len(prompts), positions), np.nan, np.float32)
    for start in range(0, len(prompts), batch_size):
        chunk_prompts = [list(p) for p in prompts[start:start + batch_size]]
        chunk_responses = [list(r)[:positions] for r in responses[start:start + batch_size]]
        tokens, mask, gather, valid = pack_teacher_forced(chunk_prompts, chunk_responses, batch_size, positions, pad_id)
        mass = np.asarray(_batch_mass(graphdef, state, tokens, mask, gather, ids, vocab_chunk=vocab_chunk))
        rows = len(chunk_prompts)
        out[start:start + rows] = np.where(valid[:rows], mass[:rows], np.nan)
    return out
