"""LoRA: identity at start, PEFT adapter and merged checkpoint agree with stjax's logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from flax import nnx
from peft import PeftModel

from hf_fixtures import hf_logits, make_hf_model
from stjax.lora import LoraParam, apply_lora, merge_lora, save_peft_adapter
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
    with pytest.raises(ValueError, match=r"unknown module\(s\) \['qkv'\]"):
        apply_lora(trained[2], rank=2, alpha=2, targets=["qkv"])
