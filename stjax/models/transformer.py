"""The decoder-only transformer of the Llama family, in Flax NNX.

Module and attribute names mirror the Hugging Face checkpoints (`embed_tokens`,
`layers.N.self_attn.q_proj`, ...), so a parameter path is its checkpoint name (with
`scan_layers`, a stacked parameter's rows are: `stjax.models.layer_stack`). Every
parameter carries `logical_axes` metadata that `stjax.models.partitioning` maps onto the
mesh. Kernels are stored input-major ([in..., out...]); attention projections keep heads
as their own dimension so tensor parallelism splits whole heads.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from stjax.models.attention import causal_mask, get_attention, resolve_attention
from stjax.models.config import ModelConfig
from stjax.models.layer_stack import scan_stack, stack_modules
from stjax.models.rope import apply_rope, inverse_frequencies

_REMAT_POLICIES = {
    "none": None,
    "full": None,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class KVCache(NamedTuple):
    """Keys/values of every layer for a fixed number of slots, filled left to right.

    keys/values: per layer [B, S, kv_heads, head_dim] (a tuple, or one array with the layer
    axis first when the layers are scanned); valid [B, S] marks filled non-padding slots;
    index is the next slot to write (shared by the batch, prompts are left-padded).
    """

    keys: tuple[jax.Array, ...] | jax.Array
    values: tuple[jax.Array, ...] | jax.Array
    valid: jax.Array
    index: jax.Array

    @classmethod
    def empty(cls, config: ModelConfig, batch: int, slots: int) -> "KVCache":
        shape = (batch, slots, config.num_kv_heads, config.head_dim)
        dtype = jnp.dtype(config.compute_dtype)
        if config.scan_layers:
            zeros = jnp.zeros((config.num_layers, *shape), dtype)
        else:
            zeros = tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers))
        return cls(zeros, zeros, jnp.zeros((batch, slots), bool), jnp.zeros((), jnp.int32))


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float, param_dtype):
        self.weight = nnx.Param(jnp.ones((dim,), param_dtype), logical_axes=("norm",))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        # As in the reference implementations: normalize in float32, scale in input dtype.
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.weight[...].astype(x.dtype) * normed.astype(x.dtype)


class Projection(nnx.Module):
    """A linear map contracting the trailing `in_shape` dims into `out_shape` dims."""

    def __init__(
        self,
        in_shape: Sequence[int],
        out_shape: Sequence[int],
        in_axes: Sequence[str],
        out_axes: Sequence[str],
        *,
        use_bias: bool,
        rngs: nnx.Rngs,
        param_dtype,
    ):
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        init = nnx.initializers.normal(0.02)
        self.weight = nnx.Param(
            init(rngs.params(), self.in_shape + self.out_shape, param_dtype),
            logical_axes=tuple(in_axes) + tuple(out_axes),
        )
        self.bias = (
            nnx.Param(jnp.zeros(self.out_shape, param_dtype), logical_axes=tuple(out_axes)) if use_bias else None
        )
        self.lora = nnx.data(None)  # a stjax.lora.LoraAdapter once adapters are attached
        self.stack = None  # the number of layers when this is a stacked (scanned) layer's projection

    def __call__(self, x: jax.Array) -> jax.Array:
        n = len(self.in_shape)
        y = jnp.tensordot(x, self.weight[...].astype(x.dtype), axes=n)
        if self.bias is not None:
            y = y + self.bias[...].astype(x.dtype)
        if self.lora is not None:
            y = y + self.lora(x)
        return y


class Attention(nnx.Module):
    def __init__(self, config: ModelConfig, layer: int, *, rngs: nnx.Rngs):
        c, pd = config, jnp.dtype(config.param_dtype)
        D, N, K, H = c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim
        self.q_proj = Projection([D], [N, H], ["embed"], ["heads", "head_dim"], use_bias=c.qkv_bias, rngs=rngs, param_dtype=pd)
        self.k_proj = Projection([D], [K, H], ["embed"], ["kv_heads", "head_dim"], use_bias=c.qkv_bias, rngs=rngs, param_dtype=pd)
        self.v_proj = Projection([D], [K, H], ["embed"], ["kv_heads", "head_dim"], use_bias=c.qkv_bias, rngs=rngs, param_dtype=pd)
        self.o_proj = Projection([N, H], [D], ["heads", "head_dim"], ["embed"], use_bias=c.o_bias, rngs=rngs, param_dtype=pd)
        if c.qk_norm:
            self.q_norm = RMSNorm(H, c.rms_norm_eps, pd)
            self.k_norm = RMSNorm(H, c.rms_norm_eps, pd)
        else:
            self.q_norm = self.k_norm = None
        self.window = c.sliding_windows[layer] if c.sliding_windows else None
        self.inv_freq = tuple(inverse_frequencies(c).tolist())  # static, hashable
        self.scale = 1.0 / math.sqrt(H)
        self.kernel = get_attention(resolve_attention(c.attention, c.compute_dtype, H))

    def __call__(self, x, positions, query_slots, key_valid, cache_kv=None, offset=None, lengths=None,
                 segment_ids=None):
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q = apply_rope(q, positions, self.inv_freq)
        k = apply_rope(k, positions, self.inv_freq)
        if cache_kv is not None:
            cache_k, cache_v = cache_kv
            k = jax.lax.dynamic_update_slice(cache_k, k.astype(cache_k.dtype), (0, offset, 0, 0))
            v = jax.lax.dynamic_update_slice(cache_v, v.astype(cache_v.dtype), (0, offset, 0, 0))
        mask = causal_mask(query_slots, key_valid, self.window)
        if segment_ids is not None:  # packed rows: each example attends to itself only
            mask &= (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]
        out = self.kernel(q, k.astype(q.dtype), v.astype(q.dtype), mask, self.scale,
                          lengths=None if cache_kv is not None else lengths, window=self.window)
        return self.o_proj(out), (k, v)


class MLP(nnx.Module):
    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        c, pd = config, jnp.dtype(config.param_dtype)
        D, F = c.hidden_size, c.intermediate_size
        self.gate_proj = Projection([D], [F], ["embed"], ["mlp"], use_bias=c.mlp_bias, rngs=rngs, param_dtype=pd)
        self.up_proj = Projection([D], [F], ["embed"], ["mlp"], use_bias=c.mlp_bias, rngs=rngs, param_dtype=pd)
        self.down_proj = Projection([F], [D], ["mlp"], ["embed"], use_bias=c.mlp_bias, rngs=rngs, param_dtype=pd)

    def __call__(self, x):
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nnx.Module):
    def __init__(self, config: ModelConfig, layer: int, *, rngs: nnx.Rngs):
        pd = jnp.dtype(config.param_dtype)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, pd)
        self.self_attn = Attention(config, layer, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, pd)
        self.mlp = MLP(config, rngs=rngs)

    def __call__(self, x, positions, query_slots, key_valid, cache_kv=None, offset=None, lengths=None,
                 segment_ids=None):
        attn, kv = self.self_attn(self.input_layernorm(x), positions, query_slots, key_valid, cache_kv, offset,
                                  lengths, segment_ids)
        x = x + attn
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, kv


def _call_layer(layer, x, positions, query_slots, key_valid, cache_kv, offset, lengths, segment_ids):
    return layer(x, positions, query_slots, key_valid, cache_kv, offset, lengths, segment_ids)


def segment_positions(segment_ids: jax.Array) -> jax.Array:
    """[B, L] position of each token within its segment (a run of equal segment ids)."""
    index = jnp.arange(segment_ids.shape[1])[None, :]
    starts = jnp.concatenate([jnp.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]], 1)
    return index - jax.lax.cummax(jnp.where(starts, index, 0), axis=1)


class CausalLM(nnx.Module):
    """Token ids -> final hidden states -> logits (all, or only selected vocab columns)."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        pd = jnp.dtype(config.param_dtype)
        self.embed_tokens = nnx.Param(
            nnx.initializers.normal(0.02)(rngs.params(), (config.vocab_size, config.hidden_size), pd),
            logical_axes=("vocab", "embed"),
        )
        layers = [DecoderLayer(config, i, rngs=rngs) for i in range(config.num_layers)]
        if config.scan_layers:  # one stacked layer, run under lax.scan (stjax.models.layer_stack)
            self.layers = stack_modules(layers)
            for _, module in nnx.iter_graph(self.layers):
                if isinstance(module, Projection):
                    module.stack = config.num_layers
        else:
            self.layers = nnx.List(layers)
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, pd)
        self.lm_head = (
            None
            if config.tie_word_embeddings
            else Projection([config.hidden_size], [config.vocab_size], ["embed"], ["vocab"],
                            use_bias=False, rngs=rngs, param_dtype=pd)
        )
        if config.remat == "none":
            self._layer_fn = _call_layer
        else:
            # graph_updates=False: layers are merged from split state inside jax.grad (the train
            # step); their variables are read, never written, under the checkpoint
            self._layer_fn = nnx.remat(_call_layer, policy=_REMAT_POLICIES[config.remat], graph_updates=False)

    def hidden_states(
        self,
        tokens: jax.Array,
        *,
        attention_mask: jax.Array | None = None,
        positions: jax.Array | None = None,
        cache: KVCache | None = None,
        lengths: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
    ) -> tuple[jax.Array, KVCache | None]:
        """Final (normed) hidden states [B, L, D] and the updated cache.

        attention_mask [B, L] marks real tokens (left padding allowed); positions default
        to the count of real tokens before each one. `lengths` [B] says the real tokens of
        each row are its first `lengths` (right padding only; the mask must agree): kernels
        that take lengths instead of a mask (cuDNN) use them when no cache is given.
        `segment_ids` [B, L] (packed rows: 1, 2, ... per example, 0 for padding) restrict
        attention to each token's own segment, and positions then restart in each segment.
        """
        B, L = tokens.shape
        if attention_mask is None:
            attention_mask = jnp.ones((B, L), bool)
        attention_mask = attention_mask.astype(bool)
        if segment_ids is not None:
            if cache is not None:
                raise ValueError("hidden_states: segment_ids (packed rows) are for training, not a KV cache")
            lengths = None  # several sequences a row: the mask, not per-row lengths
            if positions is None:
                positions = segment_positions(segment_ids)
        if positions is None:
            positions = jnp.maximum(jnp.cumsum(attention_mask, axis=1) - 1, 0)
        if cache is None:
            offset, key_valid = jnp.zeros((), jnp.int32), attention_mask
        else:
            offset = cache.index
            key_valid = jax.lax.dynamic_update_slice(cache.valid, attention_mask, (0, offset))
        query_slots = offset + jnp.arange(L)

        x = jnp.take(self.embed_tokens[...], tokens, axis=0).astype(self.config.compute_dtype)
        if self.config.scan_layers:
            def body(layer, carry, i):  # the stacked cache rides in the carry: updated in place, a layer at a time
                x, keys, values = carry
                cache_kv = None if keys is None else (jax.lax.dynamic_index_in_dim(keys, i, keepdims=False),
                                                      jax.lax.dynamic_index_in_dim(values, i, keepdims=False))
                x, (k, v) = layer(x, positions, query_slots, key_valid, cache_kv, offset, lengths, segment_ids)
                if keys is not None:
                    keys = jax.lax.dynamic_update_index_in_dim(keys, k.astype(keys.dtype), i, 0)
                    values = jax.lax.dynamic_update_index_in_dim(values, v.astype(values.dtype), i, 0)
                return (x, keys, values), None

            carry = (x, None, None) if cache is None else (x, cache.keys, cache.values)
            (x, new_keys, new_values), _ = scan_stack(self.layers, carry, jnp.arange(self.config.num_layers), body,
                                                      remat=self.config.remat != "none",
                                                      remat_policy=_REMAT_POLICIES[self.config.remat])
        else:
            new_keys, new_values = [], []
            for i, layer in enumerate(self.layers):
                cache_kv = None if cache is None else (cache.keys[i], cache.values[i])
                x, (k, v) = self._layer_fn(layer, x, positions, query_slots, key_valid, cache_kv, offset, lengths,
                                           segment_ids)
                new_keys.append(k)
                new_values.append(v)
            new_keys, new_values = tuple(new_keys), tuple(new_values)
        x = self.norm(x)
        if cache is not None:
            cache = KVCache(new_keys, new_values, key_valid, offset + L)
        return x, cache

    def output_weights(self, columns: jax.Array | None = None) -> jax.Array:
        """The output matrix [D, V], or only its `columns` [D, K] (e.g. safety tokens)."""
        if self.lm_head is None:
            table = self.embed_tokens[...]
            return (table if columns is None else jnp.take(table, columns, axis=0)).T
        kernel = self.lm_head.weight[...]
        return kernel if columns is None else jnp.take(kernel, columns, axis=1)

    def project(self, hidden: jax.Array, columns: jax.Array | None = None) -> jax.Array:
        """float32 logits for all vocab entries, or only for `columns`."""
        w = self.output_weights(columns)
        return jnp.einsum("...d,dv->...v", hidden, w.astype(hidden.dtype), preferred_element_type=jnp.float32)

    def __call__(self, tokens, *, attention_mask=None, positions=None):
        hidden, _ = self.hidden_states(tokens, attention_mask=attention_mask, positions=positions)
        return self.project(hidden)


def init_model(config: ModelConfig, seed: int = 0) -> CausalLM:
    """A randomly initialized model (tests, toy worlds); checkpoints use from_pretrained."""
    return CausalLM(config, rngs=nnx.Rngs(seed))


def count_params(model: nnx.Module) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param))))
