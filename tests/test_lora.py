"""LoRA: identity at start, PEFT adapter and merged checkpoint agree with stjax's logits."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from flax import nnx
from peft import PeftModel

from hf_fixtures import hf_logits, make_hf_model
from stjax.configlib import ConfigKeyError
from stjax.lora import TARGETS as TARGETS_ALL
from stjax.lora import LoraParam, LoraSection, adapted_projections, apply_lora, merge_lora, save_peft_adapter
from stjax.models import from_pretrained, save_pretrained

TARGETS = ["q_proj", "v_proj", "o_proj", "down_proj"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A qwen2 model with adapters whose B matrices are no longer zero."""
    hf = make_hf_model("qwen2")
    path = tmp_path_factory.mktemp("qwen2")
    hf.save_pretrained(path)
    model = from_pretrained(path)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 160, (2, 9)), jnp.int32)
    base_logits = model(tokens)
    apply_lora(model, rank=4, alpha=8, dropout=0.1, targets=TARGETS)
    model.eval()
    np.testing.assert_array_equal(model(tokens), base_logits)  # B = 0: the identity
    noise = jax.tree.map(lambda x: 0.05 * jax.random.normal(jax.random.key(1), x.shape), nnx.state(model, LoraParam))
    nnx.update(model, jax.tree.map(jnp.add, nnx.state(model, LoraParam), noise))
    return hf, path, model, tokens


def test_peft_adapter_loads_in_peft_with_the_same_logits(trained, tmp_path):
    hf, path, model, tokens = trained
    ours = np.asarray(model(tokens))
    save_peft_adapter(model, tmp_path / "adapter", base_model=str(path), rank=4, alpha=8, dropout=0.1)
    peft_model = PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    assert np.abs(hf_logits(peft_model, np.asarray(tokens)) - ours).max() < 1e-5


def test_merged_checkpoint_loads_in_transformers_with_the_same_logits(trained, tmp_path):
    _, _, model, tokens = trained
    ours = np.asarray(model(tokens))
    merged = nnx.merge(*nnx.split(model))  # a copy: merge_lora works in place
    save_pretrained(merge_lora(merged), tmp_path / "merged")
    hf_merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert np.abs(hf_logits(hf_merged, np.asarray(tokens)) - ours).max() < 1e-5


def test_unknown_target_is_an_error(trained):
    with pytest.raises(ConfigKeyError, match=r"'lora.targets': unknown module\(s\) \['qkv'\]"):
        apply_lora(trained[2], rank=2, alpha=2, targets=["qkv"])
    for bad, key in [(LoraSection(targets=[]), "lora.targets"), (LoraSection(rank=0), "lora.rank"),
                     (LoraSection(dropout=1.0), "lora.dropout"), (LoraSection(alpha=0.0), "lora.alpha")]:
        with pytest.raises(ConfigKeyError, match=f"'{key}'"):
            bad.check()


def test_all_linear_rslora_adapter_loads_in_peft_and_back_with_the_same_logits(tmp_path):
    """targets all-linear = every projection PEFT's "all-linear" adapts; rsLoRA's alpha/sqrt(r)
    scale is exported as use_rslora and read back by stjax's own adapter loader."""
    from stjax.evaluation.adapter import load_peft_adapter

    hf = make_hf_model("llama3")
    path = tmp_path / "llama3"
    hf.save_pretrained(path)
    model = from_pretrained(path)
    apply_lora(model, rank=4, alpha=8, targets=["all-linear"], rslora=True)
    adapted = {p[-1] for p, _ in adapted_projections(model)}
    assert adapted == set(TARGETS_ALL)
    assert all(np.isclose(m.lora.scale, 8 / np.sqrt(4)) for _, m in adapted_projections(model))
    noise = jax.tree.map(lambda x: 0.05 * jax.random.normal(jax.random.key(2), x.shape), nnx.state(model, LoraParam))
    nnx.update(model, jax.tree.map(jnp.add, nnx.state(model, LoraParam), noise))
    model.eval()
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 160, (2, 9)), jnp.int32)
    ours = np.asarray(model(tokens))
    save_peft_adapter(model, tmp_path / "adapter", base_model=str(path), rank=4, alpha=8, dropout=0.0)
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["use_rslora"] is True and sorted(saved["target_modules"]) == sorted(TARGETS_ALL)
    peft_model = PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    assert np.abs(hf_logits(peft_model, np.asarray(tokens)) - ours).max() < 1e-5
    reloaded = load_peft_adapter(from_pretrained(path), tmp_path / "adapter")
    np.testing.assert_allclose(np.asarray(reloaded(tokens)), ours, atol=1e-5)
