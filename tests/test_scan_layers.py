"""`model.scan_layers`: the decoder layers stacked and run under `lax.scan` compute what the
Python loop computes (logits and gradients for every family, under remat, with LoRA and its
dropout, with a KV cache, PACT's loss sharded over 8 devices), load from and save to the
Hub's per-layer layout (files equal to the loop model's, PEFT adapters both ways), and train
through `stjax train` to the loop's losses and exports; settings a scan cannot run are one
line."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

from hf_fixtures import hf_logits, make_hf_model
from stjax.lora import LoraParam, apply_lora, merge_lora, save_peft_adapter
from stjax.models import from_pretrained, make_mesh, save_pretrained
from stjax.models.layer_stack import is_stacked, layer_paths
from stjax.training.step import Frozen, forward, make_reference

TINY = Path(__file__).parents[1] / "configs" / "tiny_sft.yaml"


def flat(state) -> dict:
    """{per-layer path: array}: a stacked variable's rows under the loop's names."""
    out = {}
    for path, var in nnx.to_flat_state(state):
        value = np.asarray(var.get_value()) if not jnp.issubdtype(var.get_value().dtype, jax.dtypes.prng_key) else None
        if value is None:
            continue
        if is_stacked(path):
            out.update(zip(layer_paths(path, value.shape[0]), value))
        else:
            out[path] = value
    return out


def assert_same_tree(loop_state, scan_state, atol=2e-6):
    want, got = flat(loop_state), flat(scan_state)
    assert set(want) == set(got) and want
    for path in want:
        scale = max(1.0, float(np.abs(want[path]).max()))
        np.testing.assert_allclose(got[path], want[path], rtol=1e-4, atol=atol * scale, err_msg=str(path))


def copy_into_stack(loop_model, scan_model, kind=nnx.Variable):
    """Sets every stacked variable of `scan_model` to the loop model's per-layer values."""
    want = flat(nnx.state(loop_model, kind))
    for path, var in nnx.to_flat_state(nnx.state(scan_model, kind)):
        if is_stacked(path) and not jnp.issubdtype(var.get_value().dtype, jax.dtypes.prng_key):
            var.set_value(jnp.stack([want[p] for p in layer_paths(path, var.shape[0])]).astype(var.dtype))
    nnx.update(scan_model, nnx.state(scan_model, kind))


def tokens_and_mask(rng, batch=3, width=12, vocab=160):
    tokens = rng.integers(1, vocab, (batch, width)).astype(np.int32)
    mask = np.arange(width)[None, :] < np.array([width, width - 3, 5])[:batch, None]  # right padding
    return jnp.asarray(tokens), jnp.asarray(mask)


def value_and_grads(model, tokens, mask, *, key=None):
    """A loss over every real position's logits, and its gradient for every trained variable
    (the LoRA matrices when adapters are on, every weight otherwise)."""
    trained = LoraParam if any(isinstance(v, LoraParam) for _, v in nnx.to_flat_state(nnx.state(model))) else nnx.Param
    graphdef, params, rest = nnx.split(model, trained, ...)
    batch = {"inputs": tokens, "attention_mask": mask}

    def loss(params):
        out = forward(graphdef, params, Frozen(rest), batch, key if key is not None else jax.random.key(0))
        logits = jnp.einsum("bld,dv->blv", out.hidden, out.output_weights)
        return (jax.nn.log_softmax(logits)[..., 7] * mask).sum() + (out.hidden ** 2 * mask[..., None]).mean()

    return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.parametrize("family", ["llama3", "smollm2", "mistral", "qwen2", "qwen3"])
def test_scanned_layers_give_the_loops_logits_and_gradients(tmp_path, family):
    hf = make_hf_model(family)
    hf.save_pretrained(tmp_path)
    loop, scan = from_pretrained(tmp_path), from_pretrained(tmp_path, scan_layers=True)
    assert any(is_stacked(p) for p, _ in nnx.to_flat_state(nnx.state(scan)))
    assert scan.layers.self_attn.q_proj.weight.shape[0] == hf.config.num_hidden_layers
    tokens, mask = tokens_and_mask(np.random.default_rng(0))
    got = np.asarray(scan(tokens, attention_mask=mask))
    np.testing.assert_allclose(got, np.asarray(loop(tokens, attention_mask=mask)), atol=2e-5)
    np.testing.assert_allclose(got[mask], hf_logits(hf, tokens, mask)[np.asarray(mask)], atol=1e-4)
    (want_loss, want_grads), (got_loss, got_grads) = value_and_grads(loop, tokens, mask), value_and_grads(scan, tokens, mask)
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5)
    assert_same_tree(want_grads, got_grads)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama3")
    make_hf_model("llama3").save_pretrained(path)
    return path


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_scanned_layers_under_remat_give_the_loops_gradients(llama_dir, remat):
    tokens, mask = tokens_and_mask(np.random.default_rng(1))
    want = value_and_grads(from_pretrained(llama_dir), tokens, mask)
    got = value_and_grads(from_pretrained(llama_dir, remat=remat, scan_layers=True), tokens, mask)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    assert_same_tree(want[1], got[1])


def lora_pair(model_dir, dropout):
    """The same LoRA adapters (random B) on a loop model and on a scanned one."""
    loop = apply_lora(from_pretrained(model_dir), rank=4, alpha=8.0, dropout=dropout, targets="all-linear", seed=1)
    rng = np.random.default_rng(2)
    for _, var in nnx.to_flat_state(nnx.state(loop, LoraParam)):
        var.set_value(jnp.asarray(rng.normal(0, 0.05, var.shape), var.dtype))
    scan = apply_lora(from_pretrained(model_dir, scan_layers=True), rank=4, alpha=8.0, dropout=dropout,
                      targets="all-linear", seed=1)
    assert scan.layers.mlp.up_proj.lora.a.shape[0] == 2
    copy_into_stack(loop, scan, LoraParam)
    return loop, scan


def test_lora_with_dropout_on_scanned_layers_gives_the_loops_loss_and_adapter_gradients(llama_dir):
    loop, scan = lora_pair(llama_dir, dropout=0.3)
    tokens, mask = tokens_and_mask(np.random.default_rng(3))
    key = jax.random.key(7)
    want, got = value_and_grads(loop, tokens, mask, key=key), value_and_grads(scan, tokens, mask, key=key)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)  # each layer's dropout mask is the loop's
    assert_same_tree(want[1], got[1])
    other = value_and_grads(scan, tokens, mask, key=jax.random.key(8))[0]
    assert abs(float(other) - float(got[0])) > 1e-4  # dropout is on: another key, another loss


def test_lora_adapters_of_scanned_layers_save_load_and_merge_in_the_hub_layout(llama_dir, tmp_path):
    from stjax.evaluation.adapter import load_peft_adapter

    loop, scan = lora_pair(llama_dir, dropout=0.0)
    kwargs = dict(rank=4, alpha=8.0, dropout=0.0)
    save_peft_adapter(loop, tmp_path / "loop", **kwargs)
    save_peft_adapter(scan, tmp_path / "scan", **kwargs)
    want, got = load_file(tmp_path / "loop" / "adapter_model.safetensors"), load_file(tmp_path / "scan" / "adapter_model.safetensors")
    assert set(got) == set(want) and len(want) == 2 * 7 * 2
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
    loaded = load_peft_adapter(from_pretrained(llama_dir, scan_layers=True), tmp_path / "loop")
    tokens, mask = tokens_and_mask(np.random.default_rng(4))
    loop.eval()
    expected = np.asarray(loop(tokens, attention_mask=mask))
    np.testing.assert_allclose(np.asarray(loaded(tokens, attention_mask=mask)), expected, atol=2e-5)
    merged = merge_lora(loaded)
    assert all(not isinstance(v, LoraParam) for _, v in nnx.to_flat_state(nnx.state(merged)))
    np.testing.assert_allclose(np.asarray(merged(tokens, attention_mask=mask)), expected, atol=2e-5)
    save_pretrained(merge_lora(loop), tmp_path / "merged_loop")
    save_pretrained(merged, tmp_path / "merged_scan")
    a, b = load_file(tmp_path / "merged_loop" / "model.safetensors"), load_file(tmp_path / "merged_scan" / "model.safetensors")
    assert set(a) == set(b)
    for name in a:
        np.testing.assert_allclose(b[name], a[name], atol=1e-6)


def test_a_scanned_model_saves_the_hub_layout_transformers_loads(llama_dir, tmp_path):
    import transformers

    scan = from_pretrained(llama_dir, scan_layers=True)
    save_pretrained(scan, tmp_path / "out")
    saved, original = load_file(tmp_path / "out" / "model.safetensors"), load_file(llama_dir / "model.safetensors")
    assert "model.layers.1.self_attn.q_proj.weight" in saved and set(saved) == set(original)
    for name in original:
        np.testing.assert_array_equal(saved[name], original[name])
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    tokens, mask = tokens_and_mask(np.random.default_rng(5))
    np.testing.assert_allclose(hf_logits(hf, tokens, mask)[np.asarray(mask)],
                               np.asarray(scan(tokens, attention_mask=mask))[np.asarray(mask)], atol=1e-4)


def test_generation_with_a_stacked_kv_cache_equals_the_loop(llama_dir):
    from stjax.generation import generate

    prompts = [[5, 9, 13, 2], [7, 3], [11, 12, 13, 14, 15, 16]]
    want = generate(from_pretrained(llama_dir), prompts, max_new_tokens=6, temperature=0.8, seed=3)
    got = generate(from_pretrained(llama_dir, scan_layers=True), prompts, max_new_tokens=6, temperature=0.8, seed=3)
    assert got.tokens == want.tokens and len(want.tokens[0]) == 6


def pact_loss_and_grads(model_dir, batch, mesh, scan):
    from stjax.pact.objective import pact

    objective = pact(np.array([3, 7, 11, 19, 23]), np.array([0.5, 0.2, 0.1, 0.1, 0.1], np.float32), 2,
                     lam=2.0, chunk_tokens=24)
    model = apply_lora(from_pretrained(model_dir, mesh=mesh, scan_layers=scan), rank=4, alpha=8.0, dropout=0.1,
                       targets=["q_proj", "v_proj", "down_proj"], seed=1)
    graphdef, params, rest = nnx.split(model, LoraParam, ...)
    params = jax.tree.map(lambda x: x + 0.01, params)  # B != 0: the KL has something to pull against
    frozen = Frozen(rest)
    device = {k: jnp.asarray(v) for k, v in batch.items()}

    @jax.jit
    def value_and_grad(params, device):
        def total(params):
            refs = objective.reference_fn(make_reference(graphdef, params, frozen), device)
            return objective.loss(forward(graphdef, params, frozen, device, jax.random.key(0)), device, refs)[0]
        return jax.value_and_grad(total)(params)

    with jax.set_mesh(mesh):
        loss, grads = value_and_grad(params, device)
    return float(loss), grads


def test_pact_on_scanned_layers_sharded_over_8_devices_equals_the_loop_on_one(llama_dir):
    from stjax.data.batching import BatchIterator
    from stjax.data.tokenize import TokenizedExample

    if len(jax.devices()) < 8:
        pytest.skip("needs 8 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)")
    rng = np.random.default_rng(6)
    items = [TokenizedExample(rng.integers(1, 160, int(rng.integers(8, 30))).astype(np.int32), 4, i) for i in range(8)]
    batch = next(BatchIterator(items, 8, 32, buckets=[32], shuffle=False, process_index=0, process_count=1))
    want_loss, want = pact_loss_and_grads(llama_dir, batch, make_mesh(data=1, devices=jax.devices()[:1]), scan=False)
    got_loss, got = pact_loss_and_grads(llama_dir, batch, make_mesh(data=2, fsdp=2, tensor=2), scan=True)
    np.testing.assert_allclose(got_loss, want_loss, rtol=2e-5)  # same adapters drawn, same dropout masks
    assert_same_tree(want, got)


def test_scan_layers_refuses_layers_with_different_sliding_windows():
    from stjax.models.config import ConfigError, ModelConfig

    with pytest.raises(ConfigError, match="model.scan_layers: the layers have different sliding windows"):
        ModelConfig(vocab_size=8, hidden_size=8, intermediate_size=8, num_layers=2, num_heads=2, num_kv_heads=2,
                    head_dim=4, sliding_windows=(4, None), scan_layers=True)


def test_stjax_train_with_scanned_layers_matches_the_loop_and_a_changed_layout_is_refused(tmp_path, capsys):
    from stjax.cli import train as train_cli
    from stjax.cli.common import run_cli
    from stjax.training.metrics_log import read_metrics

    def run(name, *extra):
        args = ["--config", str(TINY), f"train.run_dir={tmp_path / name}", "logging.progress=false",
                "train.max_steps=3", "checkpoint.every_steps=2", *extra]
        return run_cli("stjax train", train_cli.main, args)

    assert run("loop") == 0 and run("scan", "model.scan_layers=true") == 0
    loop, scan = read_metrics(tmp_path / "loop"), read_metrics(tmp_path / "scan")
    assert len(loop) == len(scan) == 3
    np.testing.assert_allclose([m["loss"] for m in scan], [m["loss"] for m in loop], rtol=1e-5)
    a = load_file(tmp_path / "loop" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "scan" / "adapter" / "adapter_model.safetensors")
    assert set(a) == set(b) and a
    for name in a:  # the same adapters drawn, the same dropout masks, the same updates
        np.testing.assert_allclose(b[name], a[name], rtol=1e-4, atol=1e-6)
    assert max(np.abs(a[n]).max() for n in a if "lora_B" in n) > 0
    capsys.readouterr()
    assert run("scan", "model.scan_layers=false", "train.max_steps=4") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.scan_layers: True -> False" in err[0], err


def test_the_scan_benchmark_runs_on_cpu_and_checks_both_layouts_agree(capsys):
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    import scan_layers as benchmark

    assert benchmark.main(["--layers", "3", "--hidden", "64", "--vocab", "256", "--batch", "2", "--length", "32",
                           "--repeats", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| sft") or line.startswith("| pact")]
    assert [r.split("|")[1].strip() for r in rows] == ["sft", "pact_cached", "pact_online"]
    for row in rows:
        loop, scan = (float(x) for x in row.split("|")[6:8])
        assert np.isfinite(loop) and loop == pytest.approx(scan, rel=1e-4)


def test_weight_decay_skips_norms_and_biases_in_either_layout(tmp_path):
    """A full fine-tuning step with weight decay: scanned == loop (a stacked norm scale is
    [layers, hidden], still no matrix), and Qwen2's [heads, head_dim] q/k/v biases undecayed."""
    import optax

    from stjax.training.optimizer import OptimizerSection, make_optimizer

    make_hf_model("qwen2").save_pretrained(tmp_path)
    section = OptimizerSection(lr=1e-2, weight_decay=0.5)
    results = []
    for scan in (False, True):
        model = from_pretrained(tmp_path, scan_layers=scan)
        tx = make_optimizer(section, optax.constant_schedule(section.lr))
        params = nnx.state(model, nnx.Param)
        grads = jax.tree.map(jnp.zeros_like, params)  # no gradient: the update is the decay alone
        updates, _ = tx.update(grads, tx.init(params), params)
        results.append(updates)
    assert_same_tree(*results)
    decayed = flat(results[0])
    assert np.abs(decayed[("layers", 0, "mlp", "up_proj", "weight")]).max() > 0
    assert decayed[("layers", 0, "self_attn", "q_proj", "bias")].ndim == 2  # [heads, head_dim]
    skipped = [p for p in decayed if p[-1] == "bias" or (len(p) > 1 and "norm" in str(p[-2]))]
    assert len(skipped) > 4 and not any(np.any(decayed[p]) for p in skipped)


def test_the_plan_is_the_same_for_either_layout(tmp_path):
    from stjax import planning as plan
    from stjax.models.config import ModelConfig
    from stjax.training.config import load_train_config

    root = Path(__file__).parents[1]
    config = load_train_config(root / "configs" / "llama31_8b_sst2_pact.yaml")
    hf, _ = plan.model_hf_config(config.model.path)
    estimates = [plan.estimate(config, plan.parse_topology("v5e-8"),
                               ModelConfig.from_hf_dict(hf, param_dtype="bfloat16", scan_layers=scan), seq_len=256)
                 for scan in (False, True)]
    assert config.model.scan_layers  # the 8B base config scans
    assert estimates[0].memory == estimates[1].memory
    assert estimates[0].flops_per_step == estimates[1].flops_per_step
    assert estimates[0].params_total == estimates[1].params_total == 8_030_261_248 + estimates[0].params_trained


def test_generation_keeps_one_stacked_cache_in_place():
    """The scanned decode loop carries the stacked KV cache (updated a layer at a time) instead
    of handing it to the scan as input and output: no second copy of the cache."""
    from stjax.generation import _generate_ids
    from stjax.models.config import ModelConfig
    from stjax.models.transformer import init_model

    config = ModelConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=8, num_heads=4,
                         num_kv_heads=2, head_dim=16)
    # a short prompt, a long generation: the cache dominates the temporaries (not the prefill's scores)
    cache_bytes = 2 * 8 * 8 * 2016 * 2 * 16 * 4  # keys and values, 8 layers, batch 8, 2016 slots, float32
    temp = {}
    for scan in (False, True):
        graphdef, state = nnx.split(init_model(config.replace(scan_layers=scan)))
        tokens = jnp.ones((8, 16), jnp.int32)
        compiled = _generate_ids.lower(graphdef, state, tokens, tokens > 0, jax.random.key(0), 1.0, 1.0,
                                       max_new_tokens=2000, stop_ids=(), greedy=True).compile()
        temp[scan] = compiled.memory_analysis().temp_size_in_bytes
    assert temp[True] < temp[False] + 0.1 * cache_bytes, (temp, cache_bytes)  # a copy would add 1.0


def test_the_stacked_layer_axis_cannot_be_sharded():
    from stjax.models.partitioning import ShardingError
    from stjax.models.sections import MeshSection, mesh_rules

    assert mesh_rules(MeshSection())["layers"] is None
    with pytest.raises(ShardingError, match="mesh.rules.layers: the stacked layer axis"):
        mesh_rules(MeshSection(rules={"layers": "fsdp"}))
