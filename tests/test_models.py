"""Numerical parity of the stjax decoder with transformers, for every supported family."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers

from hf_fixtures import FAMILIES, hf_logits, left_padded_batch, make_hf_model
from stjax.models import (
    CheckpointError, ConfigError, ModelConfig, ShardingError, from_pretrained, make_mesh, save_pretrained,
)

TOL = 1e-4


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def checkpoint(request, tmp_path_factory):
    model = make_hf_model(request.param)
    path = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(path)
    return request.param, model, path


def test_logits_match_transformers(checkpoint):
    _, hf_model, path = checkpoint
    ours = from_pretrained(path)
    tokens = np.random.default_rng(0).integers(0, 160, (2, 21)).astype(np.int32)
    diff = np.abs(np.asarray(ours(jnp.asarray(tokens))) - hf_logits(hf_model, tokens)).max()
    assert diff <= TOL, diff


def test_logits_match_with_left_padding(checkpoint):
    _, hf_model, path = checkpoint
    ours = from_pretrained(path)
    tokens, mask = left_padded_batch(np.random.default_rng(1), [19, 7, 12], 160)
    got = np.asarray(ours(jnp.asarray(tokens), attention_mask=jnp.asarray(mask)))
    want = hf_logits(hf_model, tokens, mask)
    assert np.abs(got[mask] - want[mask]).max() <= TOL


def test_save_pretrained_round_trip_in_transformers(checkpoint, tmp_path):
    _, hf_model, path = checkpoint
    ours = from_pretrained(path)
    save_pretrained(ours, tmp_path / "out", max_shard_bytes=40_000)  # forces several shards
    assert (tmp_path / "out" / "model.safetensors.index.json").is_file()
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert type(reloaded) is type(hf_model)
    tokens = np.random.default_rng(2).integers(0, 160, (1, 13))
    assert np.abs(hf_logits(reloaded, tokens) - hf_logits(hf_model, tokens)).max() <= 1e-6
    again = from_pretrained(tmp_path / "out")
    assert np.abs(np.asarray(again(jnp.asarray(tokens))) - hf_logits(hf_model, tokens)).max() <= TOL


def test_sharded_2x2x2_equals_single_device(checkpoint):
    _, _, path = checkpoint
    mesh = make_mesh(2, 2, 2)
    single = from_pretrained(path)
    sharded = from_pretrained(path, mesh=mesh)
    q = sharded.layers[0].self_attn.q_proj.weight[...]
    assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)
    assert len(q.addressable_shards) == 8 and q.addressable_shards[0].data.shape[0] == q.shape[0] // 2
    tokens, mask = left_padded_batch(np.random.default_rng(3), [16, 9, 5, 16], 160)
    batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
    with jax.set_mesh(mesh):
        got = jax.jit(lambda m, t, a: m(t, attention_mask=a))(
            sharded, jax.device_put(tokens, batch), jax.device_put(mask, batch))
    want = single(jnp.asarray(tokens), attention_mask=jnp.asarray(mask))
    assert np.abs(np.asarray(got) - np.asarray(want))[mask].max() <= 1e-5


def test_hidden_states_project_onto_selected_columns(checkpoint):
    _, _, path = checkpoint
    ours = from_pretrained(path)
    tokens = jnp.asarray(np.random.default_rng(4).integers(0, 160, (2, 9)), jnp.int32)
    hidden, _ = ours.hidden_states(tokens)
    columns = jnp.asarray([3, 50, 7, 159])
    np.testing.assert_allclose(ours.project(hidden, columns), ours(tokens)[..., columns], atol=1e-5)


def test_bf16_compute_stays_close(checkpoint):
    _, hf_model, path = checkpoint
    ours = from_pretrained(path, dtype=jnp.bfloat16)
    assert ours.layers[0].mlp.up_proj.weight[...].dtype == jnp.bfloat16
    tokens = np.random.default_rng(5).integers(0, 160, (1, 12)).astype(np.int32)
    want = hf_logits(hf_model, tokens)
    got = np.asarray(ours(jnp.asarray(tokens)))
    assert got.dtype == np.float32
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_gives_same_gradients(tmp_path, remat):
    make_hf_model("llama2").save_pretrained(tmp_path)
    tokens = jnp.asarray(np.random.default_rng(6).integers(0, 160, (2, 8)), jnp.int32)

    def grads(model):
        from flax import nnx

        return nnx.grad(lambda m: m(tokens).mean())(model)

    plain, remat_grads = grads(from_pretrained(tmp_path)), grads(from_pretrained(tmp_path, remat=remat))
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(remat_grads)):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_missing_and_misshaped_tensors_are_clear_errors(tmp_path):
    from safetensors.numpy import load_file, save_file

    make_hf_model("llama2").save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    bad = dict(tensors)
    bad["model.layers.1.mlp.up_proj.weight"] = bad["model.layers.1.mlp.up_proj.weight"][:, :10]
    save_file(bad, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model.layers.1.mlp.up_proj.weight' has shape \(96, 10\), expected \(96, 64\)"):
        from_pretrained(tmp_path)
    del tensors["model.norm.weight"]
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="'model.norm.weight' is missing"):
        from_pretrained(tmp_path)


def test_indivisible_dimension_is_an_error_not_replication(tmp_path):
    make_hf_model("llama2").save_pretrained(tmp_path)  # 2 kv heads
    with pytest.raises(ShardingError, match=r"k_proj.weight: dimension 1 \('kv_heads', size 2\) does not divide"):
        from_pretrained(tmp_path, mesh=make_mesh(1, 1, 8))


def test_unsupported_config_names_the_key():
    base = dict(vocab_size=10, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2)
    with pytest.raises(ConfigError, match="model_type 'gpt2' is not supported"):
        ModelConfig.from_hf_dict({**base, "model_type": "gpt2"})
    with pytest.raises(ConfigError, match="missing required key 'intermediate_size'"):
        ModelConfig.from_hf_dict({k: v for k, v in base.items() if k != "intermediate_size"})
    with pytest.raises(ConfigError, match="rope type 'yarn'"):
        ModelConfig.from_hf_dict({**base, "rope_parameters": {"rope_type": "yarn", "factor": 4.0}})
