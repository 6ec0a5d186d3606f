"""The attention kernel choice (`model.attention`: auto, xla, cudnn) and the length-aware
kernel cuDNN runs: the same causal-with-lengths computation, run through XLA here, equals the
dense-mask attention at every real position, in a kernel call and through a whole model
(forward and gradients, grouped-query heads, sliding windows), and generation with a cache
keeps the dense mask."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hf_fixtures import make_hf_model
from stjax.errors import UserError
from stjax.models import from_pretrained
from stjax.models.attention import _causal_lengths, causal_mask, get_attention, register_attention, resolve_attention
from stjax.training.step import right_padded_hidden

_by_length = _causal_lengths("xla")  # cuDNN's computation, on any backend
CALLS: list[bool] = []  # per kernel call (at trace time): were lengths given?


def _recording(q, k, v, mask, scale, *, lengths=None, window=None):
    CALLS.append(lengths is not None)
    return _by_length(q, k, v, mask, scale, lengths=lengths, window=window)


@pytest.fixture(autouse=True)
def length_kernel():
    """`xla_lengths`: the length kernel through XLA, registered for this module's tests only."""
    from stjax.models import attention

    register_attention("xla_lengths", _recording)
    yield
    attention._KERNELS.pop("xla_lengths")


def test_auto_picks_cudnn_on_gpus_where_it_runs_and_xla_elsewhere():
    h100, v100, no_gpu = 9.0, 7.0, None  # compute capabilities; None: CPU, TPU or a ROCm GPU
    assert resolve_attention("auto", "bfloat16", 64, h100) == "cudnn"
    assert resolve_attention("auto", "float16", 128, 8.0) == "cudnn"
    assert resolve_attention("auto", "bfloat16", 64, v100) == "xla"  # before Ampere: no flash kernels
    assert resolve_attention("auto", "float32", 64, h100) == "xla"  # cuDNN's flash kernels: 16-bit only
    assert resolve_attention("auto", "bfloat16", 256, h100) == "xla"
    assert resolve_attention("auto", "bfloat16", 24, h100) == "cudnn"
    assert resolve_attention("auto", "bfloat16", 20, h100) == "xla"
    assert resolve_attention("auto", "bfloat16", 64, no_gpu) == "xla"
    if jax.default_backend() == "cpu":
        assert resolve_attention("auto", "bfloat16", 64) == "xla"  # this machine's devices
    assert resolve_attention("xla", "bfloat16", 64, h100) == "xla"  # an explicit choice stays
    assert resolve_attention("cudnn", "bfloat16", 64, h100) == "cudnn"
    with pytest.raises(UserError, match=r"model.attention: cudnn runs on NVIDIA GPUs of compute capability 8 or "
                                        r"later, and this process sees no NVIDIA GPU; install jax's GPU build "
                                        r"\(pip install 'stjax\[cuda\]'\)"):
        resolve_attention("cudnn", "bfloat16", 64, no_gpu)
    with pytest.raises(UserError, match=r"sees a GPU of compute capability 7"):
        resolve_attention("cudnn", "bfloat16", 64, v100)
    with pytest.raises(UserError, match=r"model.attention: cudnn needs compute dtype bfloat16 or float16 .* got "
                                        r"float32 and 64"):
        resolve_attention("cudnn", "float32", 64, h100)
    with pytest.raises(UserError, match=r"model.attention: unknown kernel 'flash'"):
        resolve_attention("flash", "bfloat16", 64, h100)


@pytest.mark.parametrize("window", [None, 3])
def test_the_length_kernel_equals_the_dense_mask_at_real_positions(window):
    B, T, N, K, H = 3, 10, 4, 2, 16
    q, k, v = (jax.random.normal(jax.random.key(i), (B, T, n, H)) for i, n in enumerate((N, K, K)))
    lengths = jnp.array([10, 6, 0])  # a full row, a padded one, a padding row (no real token)
    valid = jnp.arange(T)[None, :] < lengths[:, None]
    mask = causal_mask(jnp.arange(T), valid, window)
    dense = get_attention("xla")(q, k, v, mask, 0.25)
    assert get_attention("xla")(q, k, v, mask, 0.25, lengths=lengths, window=window) is not None  # ignores them
    by_length = get_attention("xla_lengths")(q, k, v, mask, 0.25, lengths=lengths, window=window)
    real = np.asarray(valid)
    np.testing.assert_allclose(np.asarray(by_length)[real], np.asarray(dense)[real], atol=1e-6)
    assert np.isfinite(np.asarray(by_length)).all()  # padding queries (and a row of none) stay finite
    grads = jax.grad(lambda q: (get_attention("xla_lengths")(q, k, v, mask, 0.25, lengths=lengths, window=window)
                                * valid[..., None, None]).sum())(q)
    assert np.isfinite(np.asarray(grads)).all() and not np.asarray(grads)[~real].any()
    no_lengths = get_attention("xla_lengths")(q, k, v, mask, 0.25, window=window)  # no lengths: the mask
    np.testing.assert_allclose(np.asarray(no_lengths), np.asarray(dense), atol=1e-6)


@pytest.mark.parametrize("family", ["llama3", "mistral"])  # grouped-query heads; a sliding window of 6
def test_a_model_on_the_length_kernel_gives_the_same_hidden_states_and_gradients(tmp_path, family):
    make_hf_model(family).save_pretrained(tmp_path)
    dense, by_length = from_pretrained(tmp_path, attention="xla"), from_pretrained(tmp_path, attention="xla_lengths")
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 160, (3, 12)), jnp.int32)
    mask = jnp.arange(12)[None, :] < jnp.array([12, 7, 3])[:, None]

    def real_sum(model):
        return (right_padded_hidden(model, tokens, mask) * mask[..., None]).sum()

    CALLS.clear()
    (value_a, grads_a), (value_b, grads_b) = (nnx.value_and_grad(real_sum)(m) for m in (dense, by_length))
    assert CALLS and all(CALLS)  # every layer got the lengths
    np.testing.assert_allclose(value_b, value_a, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grads_a), jax.tree.leaves(grads_b)):
        np.testing.assert_allclose(b, a, atol=2e-5)
    hidden_a = right_padded_hidden(dense, tokens, mask)
    hidden_b = right_padded_hidden(by_length, tokens, mask)
    np.testing.assert_allclose(np.asarray(hidden_b)[np.asarray(mask)], np.asarray(hidden_a)[np.asarray(mask)], atol=1e-5)


def test_generation_with_a_cache_keeps_the_dense_mask(tmp_path):
    """Left-padded prompts decoded with a cache: the length kernel is handed no lengths there,
    so its replies equal the dense kernel's."""
    from stjax.generation import generate

    make_hf_model("llama2").save_pretrained(tmp_path)
    prompts = [[5, 6, 7, 8, 9], [11, 12]]
    CALLS.clear()
    replies = [generate(from_pretrained(tmp_path, attention=name), prompts, max_new_tokens=6).tokens
               for name in ("xla", "xla_lengths")]
    assert replies[0] == replies[1] and len(replies[0][1]) == 6
    assert CALLS and not any(CALLS)
