"""The pure train step: sharded == single device, LoRA trains only adapters, chunked CE."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from hf_fixtures import make_hf_model
from stjax.lora import LoraParam, apply_lora
from stjax.losses import cross_entropy, target_logprobs
from stjax.models import DEFAULT_RULES, from_pretrained, make_mesh
from stjax.models.sections import MeshSection, mesh_rules
from stjax.objective import Objective
from stjax.training.program import build_program
from stjax.training.step import split_model


def sft_loss(outputs, batch, refs):
    loss_sum, count = cross_entropy(outputs.hidden, outputs.output_weights, batch["targets"], batch["loss_mask"],
                                    chunk_tokens=16)
    return loss_sum, count, {}


def make_batch(seed=0, rows=8, length=12, vocab=160):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, vocab, (rows, length + 1)).astype(np.int32)
    lengths = rng.integers(5, length + 1, rows)
    attention = np.arange(length)[None] < lengths[:, None]
    loss_mask = attention & (np.arange(length)[None] >= 3)
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "attention_mask": attention,
            "loss_mask": loss_mask.astype(np.float32)}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama")
    make_hf_model("llama3").save_pretrained(path)
    return path


def run_steps(path, mesh_shape, *, lora, steps=2, grad_accum=1, tx=None, same_batch=False, remat="none",
              rules=DEFAULT_RULES):
    """Plain SGD by default: Adam's g/sqrt(v) would amplify float noise in tiny gradients."""
    mesh = make_mesh(*mesh_shape, devices=jax.devices()[: int(np.prod(mesh_shape))])
    model = from_pretrained(path, mesh=mesh, remat=remat, rules=rules)
    if lora:
        apply_lora(model, rank=4, alpha=8, targets=["q_proj", "v_proj", "up_proj"])
    graphdef, params, rest = split_model(model, LoraParam if lora else nnx.Param)
    program = build_program(graphdef, params, rest, Objective(sft_loss, None), tx or optax.sgd(0.5), mesh, lora=lora,
                            grad_accum=grad_accum, rules=rules)
    state, frozen = program.init_state(params), program.frozen
    losses = []
    for i in range(steps):
        state, metrics = program.step(state, frozen, make_batch(0 if same_batch else i))
        losses.append(float(metrics["loss"]))
    return losses, jax.device_get(state.params), frozen


@pytest.mark.parametrize("mesh_shape", [(8, 1, 1), (2, 2, 2), (1, 1, 2), (1, 4, 2)])
def test_sharded_step_equals_single_device(checkpoint, mesh_shape):
    ref_losses, ref_params, _ = run_steps(checkpoint, (1, 1, 1), lora=False)
    losses, params, _ = run_steps(checkpoint, mesh_shape, lora=False)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
        np.testing.assert_allclose(a, b, atol=2e-5)


def test_tensor_parallel_1_1_8_equals_single_device(tmp_path):
    make_hf_model("wide_heads").save_pretrained(tmp_path)
    ref_losses, ref_params, _ = run_steps(tmp_path, (1, 1, 1), lora=False)
    losses, params, _ = run_steps(tmp_path, (1, 1, 8), lora=False)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
        np.testing.assert_allclose(a, b, atol=2e-5)


def test_mesh_rules_from_the_config_change_the_layout_not_the_result(checkpoint):
    """mesh.rules: embeddings replicated and the MLP split over fsdp and tensor on a 2x2x2 mesh."""
    rules = mesh_rules(MeshSection(rules={"embed": None, "mlp": ["fsdp", "tensor"]}))
    assert rules["embed"] is None and rules["mlp"] == ("fsdp", "tensor") and rules["heads"] == "tensor"
    ref_losses, ref_params, _ = run_steps(checkpoint, (1, 1, 1), lora=False)
    losses, params, frozen = run_steps(checkpoint, (2, 2, 2), lora=False, rules=rules)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
        np.testing.assert_allclose(a, b, atol=2e-5)
    mesh = make_mesh(2, 2, 2, devices=jax.devices()[:8])
    model = from_pretrained(checkpoint, mesh=mesh, rules=rules)
    assert model.embed_tokens[...].sharding.spec == jax.sharding.PartitionSpec("tensor", None)  # (vocab, embed)
    default = from_pretrained(checkpoint, mesh=mesh)
    assert default.embed_tokens[...].sharding.spec != model.embed_tokens[...].sharding.spec


@pytest.mark.parametrize("rules,message", [
    ({"embedding": None}, "unknown logical axis 'embedding'"),
    ({"embed": "model"}, "mesh.rules.embed: expected null, a mesh axis"),
    ({"mlp": ["tensor", "tensor"]}, "mesh.rules.mlp: expected null, a mesh axis"),
])
def test_bad_mesh_rules_are_one_line(rules, message):
    from stjax.models import ShardingError

    with pytest.raises(ShardingError, match=message):
        mesh_rules(MeshSection(rules=rules))


def test_full_model_mesh_1_1_8_rejects_two_kv_heads(checkpoint):
    from stjax.models import ShardingError

    with pytest.raises(ShardingError, match="kv_heads"):
        run_steps(checkpoint, (1, 1, 8), lora=False, steps=1)


def test_lora_trains_only_adapters_and_starts_as_identity(checkpoint):
    base = from_pretrained(checkpoint)
    tokens = jnp.asarray(make_batch()["inputs"])
    before = base(tokens)
    apply_lora(base, rank=4, alpha=8, targets=["q_proj", "v_proj", "up_proj"])
    np.testing.assert_array_equal(base(tokens), before)
    losses, params, frozen = run_steps(checkpoint, (8, 1, 1), lora=True, steps=3, tx=optax.adamw(1e-2),
                                       same_batch=True)
    assert losses[-1] < losses[0]
    leaves = nnx.to_flat_state(params)
    assert leaves and all(path[-1] in ("a", "b") for path, _ in leaves)
    original = nnx.state(from_pretrained(checkpoint), nnx.Param)
    for (path, var), (_, ref) in zip(nnx.to_flat_state(nnx.state(frozen.rest, nnx.Param)), nnx.to_flat_state(original)):
        np.testing.assert_array_equal(var[...], ref[...], err_msg=str(path))


@pytest.mark.parametrize("lora", [True, False])
def test_remat_step_equals_plain_step(checkpoint, lora):
    plain, plain_params, _ = run_steps(checkpoint, (1, 1, 1), lora=lora)
    remat, remat_params, _ = run_steps(checkpoint, (1, 1, 1), lora=lora, remat="full")
    np.testing.assert_allclose(remat, plain, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(remat_params), jax.tree.leaves(plain_params)):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_grad_accumulation_weights_tokens_like_one_big_batch(checkpoint):
    one, params_one, _ = run_steps(checkpoint, (1, 1, 1), lora=False, steps=1)
    four, params_four, _ = run_steps(checkpoint, (1, 1, 1), lora=False, steps=1, grad_accum=4)
    np.testing.assert_allclose(four, one, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(params_four), jax.tree.leaves(params_one)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_chunked_cross_entropy_equals_naive():
    rng = np.random.default_rng(0)
    hidden = jnp.asarray(rng.normal(size=(3, 11, 16)), jnp.float32)
    weights = jnp.asarray(rng.normal(size=(16, 50)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 50, (3, 11)))
    mask = jnp.asarray(rng.random((3, 11)) > 0.3, jnp.float32)

    def naive(h, w):
        logp = jax.nn.log_softmax(h @ w, axis=-1)
        return -(jnp.take_along_axis(logp, targets[..., None], -1)[..., 0] * mask).sum()

    def chunked(h, w):
        return cross_entropy(h, w, targets, mask, chunk_tokens=6)[0]  # 2 positions/chunk, padded

    np.testing.assert_allclose(chunked(hidden, weights), naive(hidden, weights), rtol=1e-5)
    for g_chunked, g_naive in zip(jax.grad(chunked, (0, 1))(hidden, weights), jax.grad(naive, (0, 1))(hidden, weights)):
        np.testing.assert_allclose(g_chunked, g_naive, rtol=1e-4, atol=1e-5)
    assert target_logprobs(hidden, weights, targets, chunk_tokens=6).shape == (3, 11)
