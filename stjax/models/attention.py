"""Attention kernels, selected by name in the model config (`attention: xla`).

A kernel takes q [B, T, heads, D], k/v [B, S, kv_heads, D] (grouped-query heads are
shared by the kernel), a boolean mask [B, 1, T, S] (True = may attend) and the softmax
scale, and returns [B, T, heads, D]. `register_attention` lets a platform kernel (TPU
splash/flash attention, a cuDNN build) replace the default without touching the model.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

AttentionFn = Callable[[jax.Array, jax.Array, jax.Array, jax.Array, float], jax.Array]

_KERNELS: dict[str, AttentionFn] = {}


def register_attention(name: str, fn: AttentionFn) -> None:
    _KERNELS[name] = fn


def get_attention(name: str) -> AttentionFn:
    if name not in _KERNELS:
        raise ValueError(f"attention kernel '{name}' is not registered (known: {', '.join(sorted(_KERNELS))})")
    return _KERNELS[name]


def _dot_product(implementation: str | None) -> AttentionFn:
    def attend(q, k, v, mask, scale):
        return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, implementation=implementation)

    return attend


register_attention("xla", _dot_product("xla"))
register_attention("cudnn", _dot_product("cudnn"))


def causal_mask(
    query_slots: jax.Array, key_valid: jax.Array, window: int | None = None
) -> jax.Array:
    """[B, 1, T, S] mask: causal by cache slot, valid keys only, optional sliding window.

    query_slots [T] are the cache slots of the queries, key_valid [B, S] marks filled,
    non-padding key slots. A query may always see its own slot, so rows of padding
    queries are never empty (their outputs are ignored, but must not be NaN).
    """
    key_slots = jnp.arange(key_valid.shape[1])
    delta = query_slots[:, None] - key_slots[None, :]
    allowed = (delta >= 0)[None] & key_valid[:, None, :]
    if window is not None:
        allowed &= (delta < window)[None]
    allowed |= (delta == 0)[None]
    return allowed[:, None]
