"""The frozen reference's safety-token logits for PACT: full context and response only.

The response-only sequence (assistant header + response) is a contiguous slice of the
training sequence: the chat-template prompt ends with the header. So it is built on
device by shifting each row left past its user prompt, and the reference's logits are
shifted back afterwards, aligning position t of the response in both. The same code
serves the online step and the cache precomputed before training.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

# (tokens [B, L], attention_mask [B, L], segment_ids=None, positions=None) -> final hidden states [B, L, D]
HiddenFn = Callable[..., jax.Array]


def response_start_shift(response_pos: jax.Array, header_len: int) -> jax.Array:
    """Per-row index [B] where the final response's assistant header starts (its first
    position - header + 1)."""
    first = jnp.argmax(response_pos >= 0, axis=1)
    return jnp.maximum(first - header_len + 1, 0)


def shift_rows(x: jax.Array, shift: jax.Array, fill=0) -> tuple[jax.Array, jax.Array]:
    """Row i moved left by shift[i] ([B, L, ...]); also the mask of positions that came from x."""
    L = x.shape[1]
    source = jnp.arange(L)[None, :] + shift[:, None]
    inside = source < L
    index = jnp.minimum(source, L - 1).reshape(source.shape + (1,) * (x.ndim - 2))
    moved = jnp.take_along_axis(x, index, axis=1)
    return jnp.where(inside.reshape(index.shape), moved, fill), inside


def unshift_rows(x: jax.Array, shift: jax.Array) -> jax.Array:
    """Inverse of shift_rows for the positions at or after the shift (others are zero)."""
    L = x.shape[1]
    source = jnp.arange(L)[None, :] - shift[:, None]
    valid = source >= 0
    index = jnp.maximum(source, 0).reshape(source.shape + (1,) * (x.ndim - 2))
    return jnp.where(valid.reshape(index.shape), jnp.take_along_axis(x, index, axis=1), 0)


def packed_response_only(batch: dict, header_len: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(attention, segment_ids, positions) [B, L] that make each example of a packed row its own
    response-only sequence in place: the tokens from its assistant header on (its prompt is
    left out), positions restarting at the header. The pass then needs no shifting: its logits
    are already aligned with the row."""
    segment_ids, response_pos = batch["segment_ids"], batch["response_pos"]
    B, L = segment_ids.shape
    index = jnp.broadcast_to(jnp.arange(L)[None, :], (B, L))
    keys = (segment_ids + jnp.arange(B)[:, None] * (L + 1)).ravel()  # one key per (row, segment)
    first = jax.ops.segment_min(jnp.where(response_pos >= 0, index, L).ravel(), keys, num_segments=B * (L + 1))
    first = first[keys].reshape(B, L)  # each token's example: its first response position
    segment_start = index - batch["positions"]
    start = jnp.maximum(first - header_len + 1, segment_start)
    inside = batch["attention_mask"] & (segment_ids > 0) & (index >= start)
    return inside, jnp.where(inside, segment_ids, 0), jnp.where(inside, index - start, 0)


def reference_safety_logits(
    hidden_fn: HiddenFn, output_columns: jax.Array, batch: dict, header_len: int,
) -> tuple[jax.Array, jax.Array]:
    """(r_full, r_post): the reference's [B, L, K] safety-token logits, aligned to the batch.

    output_columns [D, K] are the safety-token columns of the reference's output matrix.
    The response-only pass runs at the width it needs, `response_only_width`, not the row's;
    on packed rows (segment_ids) it runs in place at the row's full width, each example's
    prompt left out of its segment.
    """
    inputs, attention = batch["inputs"], batch["attention_mask"]
    columns = output_columns
    if "segment_ids" in batch:
        hidden = hidden_fn(inputs, attention, batch["segment_ids"], batch["positions"])
        post_hidden = hidden_fn(inputs, *packed_response_only(batch, header_len))
        r_full, r_post = (jnp.einsum("bld,dk->blk", h, columns.astype(h.dtype), preferred_element_type=jnp.float32)
                          for h in (hidden, post_hidden))
        return jax.lax.stop_gradient(r_full), jax.lax.stop_gradient(r_post)
    hidden = hidden_fn(inputs, attention)
    r_full = jnp.einsum("bld,dk->blk", hidden, output_columns.astype(hidden.dtype),
                        preferred_element_type=jnp.float32)
    shift = response_start_shift(batch["response_pos"], header_len)
    width = response_only_width(batch, header_len)
    post_inputs, inside = shift_rows(inputs, shift)
    post_attention, _ = shift_rows(attention, shift, fill=False)
    post_hidden = hidden_fn(post_inputs[:, :width], (post_attention & inside)[:, :width])
    r_post = jnp.einsum("bld,dk->blk", post_hidden, output_columns.astype(post_hidden.dtype),
                        preferred_element_type=jnp.float32)
    r_post = jnp.pad(r_post, ((0, 0), (0, inputs.shape[1] - width), (0, 0)))
    return jax.lax.stop_gradient(r_full), jax.lax.stop_gradient(unshift_rows(r_post, shift))


def response_only_width(batch: dict, header_len: int) -> int:
    """Static width of the response-only sequences: the assistant header and the final
    response, which `loss_index` bounds (R loss positions a row); the row width without it.
    The pass is causal, so cutting it after the response changes none of its logits."""
    width = batch["inputs"].shape[1]
    if "loss_index" not in batch:
        return width
    return min(width, batch["loss_index"].shape[1] + header_len)
