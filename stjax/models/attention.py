"""Attention kernels, selected by name in the model config (`model.attention`).

A kernel takes q [B, T, heads, D], k/v [B, S, kv_heads, D] (grouped-query heads are
shared by the kernel), a boolean mask [B, 1, T, S] (True = may attend) and the softmax
scale, and returns [B, T, heads, D]. Two keywords describe the mask when a kernel can use
them instead: `lengths` [B] when each row's real tokens are its first `lengths` positions and
no cache is in use (training and scoring batches: the mask is then causal over those keys),
and `window`, the layer's sliding window (None: full). `register_attention` lets a platform
kernel (TPU splash attention, a custom GPU kernel) replace the default without touching the
model.

- `xla`: the dense mask, any backend, any dtype.
- `cudnn`: cuDNN fused (flash) attention, on NVIDIA GPUs, bfloat16 or float16: a causal
  kernel with per-row lengths where they are given (no [B, T, S] mask is built); XLA with the
  mask elsewhere (generation with a cache: left-padded prompts, one query per decode step).
- `auto` (the default): `cudnn` on an NVIDIA GPU of compute capability 8.0 or later when the
  compute dtype and head size allow it, `xla` everywhere else (CPU, TPU, older or ROCm GPUs).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from stjax.errors import UserError

AttentionFn = Callable[..., jax.Array]  # (q, k, v, mask, scale, *, lengths=None, window=None) -> out

_KERNELS: dict[str, AttentionFn] = {}
CUDNN_DTYPES = ("bfloat16", "float16")
CUDNN_MAX_HEAD_DIM = 128  # cuDNN's flash kernels: head sizes up to 128, multiples of 8
CUDNN_MIN_CAPABILITY = 8.0  # Ampere (A100, L4, ...) and later


def register_attention(name: str, fn: AttentionFn) -> None:
    _KERNELS[name] = fn


def get_attention(name: str) -> AttentionFn:
    if name not in _KERNELS:
        raise ValueError(f"attention kernel '{name}' is not registered (known: {', '.join(sorted(_KERNELS))})")
    return _KERNELS[name]


DETECT = object()  # resolve_attention: read the CUDA capability of this process's first device


def cuda_capability() -> float | None:
    """The compute capability of this process's first device when it is an NVIDIA GPU
    (None for CPUs, TPUs and ROCm GPUs)."""
    device = jax.devices()[0]
    if device.platform != "gpu" or "cuda" not in str(getattr(device.client, "platform_version", "")).lower():
        return None
    capability = getattr(device, "compute_capability", None)
    return float(capability) if capability else None


def resolve_attention(name: str, compute_dtype: str, head_dim: int, capability=DETECT) -> str:
    """The kernel `name` stands for: `auto` -> `cudnn` on an NVIDIA GPU of compute capability
    8.0 or later (Ampere on: cuDNN's flash kernels) where the compute dtype and head size fit,
    else `xla`. An explicit `cudnn` where it cannot run is refused. `capability`: the GPU's
    (None: not an NVIDIA GPU); read from the devices unless given."""
    capability = cuda_capability() if capability is DETECT else capability
    dtype = jnp.dtype(compute_dtype).name
    fits = dtype in CUDNN_DTYPES and head_dim % 8 == 0 and head_dim <= CUDNN_MAX_HEAD_DIM
    on_gpu = capability is not None and capability >= CUDNN_MIN_CAPABILITY
    if name == "auto":
        return "cudnn" if on_gpu and fits else "xla"
    if name == "cudnn" and not on_gpu:
        seen = "no NVIDIA GPU" if capability is None else f"a GPU of compute capability {capability:g}"
        raise UserError(f"model.attention: cudnn runs on NVIDIA GPUs of compute capability "
                        f"{CUDNN_MIN_CAPABILITY:g} or later, and this process sees {seen}; install jax's GPU build "
                        "(pip install 'stjax[cuda]') or use attention: auto")
    if name == "cudnn" and not fits:
        raise UserError(f"model.attention: cudnn needs compute dtype {' or '.join(CUDNN_DTYPES)} and a head size "
                        f"up to {CUDNN_MAX_HEAD_DIM} (a multiple of 8), got {dtype} and {head_dim}; "
                        "use attention: auto or xla")
    if name not in _KERNELS:
        raise UserError(f"model.attention: unknown kernel {name!r} (known: auto, {', '.join(sorted(_KERNELS))})")
    return name


def _dense(implementation: str) -> AttentionFn:
    """The mask as given (every backend)."""
    def attend(q, k, v, mask, scale, *, lengths=None, window=None):
        return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, implementation=implementation)

    return attend


def _causal_lengths(implementation: str) -> AttentionFn:
    """A causal kernel over each row's first `lengths` keys (and the sliding window) when the
    caller gives lengths; XLA with the dense mask otherwise. `_causal_lengths("xla")` computes
    what the cuDNN kernel does, on any backend (the tests compare it with the dense mask)."""
    def attend(q, k, v, mask, scale, *, lengths=None, window=None):
        if lengths is None:
            return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, implementation="xla")
        # queries at or after a row's length are padding: the kernel masks them out as well
        # (their outputs are never read), so rows of length 0 are well defined too
        lengths = lengths.astype(jnp.int32)
        return jax.nn.dot_product_attention(
            q, k, v, scale=scale, is_causal=True, query_seq_lengths=lengths, key_value_seq_lengths=lengths,
            local_window_size=None if window is None else (window - 1, 0), implementation=implementation)

    return attend


register_attention("xla", _dense("xla"))
register_attention("cudnn", _causal_lengths("cudnn"))


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
