"""GGUF import against transformers on a tiny llama written here the way llama.cpp writes it."""

import json

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")

import jax.numpy as jnp  # noqa: E402
import transformers  # noqa: E402
from stjax.toy.build import train_byte_level_bpe  # noqa: E402

from stjax.models import from_pretrained  # noqa: E402
from stjax.cli import main as stjax_main  # noqa: E402
from stjax.models.gguf_import import GGUFError, convert_gguf, gguf_tokenizer, load_gguf, read_gguf  # noqa: E402

Q = gguf.GGMLQuantizationType
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world! Tokenizers split text into pieces, and models read the pieces.",
    "In 2024 there were 12345 apples and 678 pears on the farm.",
] * 20
SAMPLE = "Hello there, the lazy fox read 2024 pieces!<|im_end|>"
LLAMA3_ROPE = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
HEADS, KV_HEADS, HIDDEN, FFN, THETA = 4, 2, 64, 128, 500000.0
TOKENS = np.array([[5, 17, 42, 99, 3, 150, 7, 8, 200, 11, 64, 1]])

LAYER_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}
# Two block types so both dequantizers run: Q8_0 for embeddings/attention, Q4_0 for the rest.
QUANT = {"token_embd": Q.Q8_0, "attn_q": Q.Q8_0, "attn_k": Q.Q8_0, "attn_v": Q.Q8_0, "attn_output": Q.Q8_0,
         "ffn_gate": Q.Q4_0, "ffn_up": Q.Q4_0, "ffn_down": Q.Q4_0, "output": Q.Q4_0}


@pytest.fixture(scope="module")
def bpe():
    """A byte-level BPE trained here: (tokenizer, tokens by id, merges as 'a b')."""
    tok = train_byte_level_bpe(CORPUS, 320, SPECIALS)
    model = json.loads(tok.to_str())["model"]
    tokens = sorted(model["vocab"], key=model["vocab"].get)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return tok, tokens, merges


def torch_llama(vocab: int, *, tie: bool, rope: dict | None = None, seed: int = 0):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=2,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, rms_norm_eps=1e-5, max_position_embeddings=16384,
        rope_parameters={"rope_type": "default", "rope_theta": THETA, **(rope or {})},
        tie_word_embeddings=tie, bos_token_id=1, eos_token_id=2,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # non-trivial norms, so swapping attn_norm/ffn_norm would show
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
    return model


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_divisors() -> np.ndarray:
    """The rope_freqs tensor convert_hf_to_gguf.py writes for a llama3 rope schedule."""
    dim, r = HIDDEN // HEADS, LLAMA3_ROPE
    freqs = 1.0 / THETA ** (np.arange(0, dim, 2) / dim)
    low_wavelen = r["original_max_position_embeddings"] / r["low_freq_factor"]
    high_wavelen = r["original_max_position_embeddings"] / r["high_freq_factor"]
    out = []
    for freq in freqs:
        wavelen = 2 * np.pi / freq
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(r["factor"])
        else:
            smooth = (r["original_max_position_embeddings"] / wavelen - r["low_freq_factor"]) / (
                r["high_freq_factor"] - r["low_freq_factor"])
            out.append(1 / ((1 - smooth) / r["factor"] + smooth))
    return np.array(out, np.float32)


def write_gguf(path, model, bpe, *, quantize: bool, rope_freqs: bool = False) -> dict:
    """Writes `model` as llama.cpp would; returns the HF state dict as stored (dequantized)."""
    _, tokens, merges = bpe
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(16384)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(2)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(THETA)
    w.add_rope_dimension_count(HIDDEN // HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in SPECIALS else 1 for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(TEMPLATE)
    stored = {}
    for name, value in model.state_dict().items():
        if name == "lm_head.weight" and model.config.tie_word_embeddings:
            continue
        x = value.numpy()
        parts = name.split(".")
        if parts[1] == "layers":
            gname = f"blk.{parts[2]}.{LAYER_NAMES['.'.join(parts[3:-1])]}.weight"
        else:
            gname = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                     "lm_head.weight": "output.weight"}[name]
        qtype = QUANT.get(gname.split(".")[-2], Q.F32) if quantize else Q.F32
        data = gguf.quants.quantize(x, qtype)
        stored[name] = gguf.quants.dequantize(data, qtype).reshape(x.shape)
        # Quantization blocks lie within rows, so permuting rows commutes with it.
        heads = {"attn_q": HEADS, "attn_k": KV_HEADS}.get(gname.split(".")[-2])
        if heads:
            data = llama_cpp_permute(data, heads)
        w.add_tensor(gname, data, raw_dtype=qtype)
    if rope_freqs:
        w.add_tensor("rope_freqs.weight", llama3_divisors())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return stored


def torch_logits(model) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(TOKENS)).logits.numpy()


def stjax_logits(model) -> np.ndarray:
    return np.asarray(model(jnp.asarray(TOKENS)))


@pytest.fixture(scope="module")
def quantized(bpe, tmp_path_factory):
    """(path, torch model holding exactly the dequantized weights)."""
    path = tmp_path_factory.mktemp("gguf") / "tiny-q.gguf"
    model = torch_llama(len(bpe[1]), tie=False)
    stored = write_gguf(path, model, bpe, quantize=True)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in stored.items()})
    return path, model


def test_quantized_logits_match_dequantized_torch(quantized):
    path, model = quantized
    hf, tensors, _ = read_gguf(path)
    assert hf["num_key_value_heads"] == KV_HEADS and hf["rope_parameters"]["rope_theta"] == THETA
    assert hf["rms_norm_eps"] == 1e-5 and not hf["tie_word_embeddings"]
    assert tensors["model.layers.0.self_attn.k_proj.weight"].shape == (KV_HEADS * HIDDEN // HEADS, HIDDEN)
    np.testing.assert_allclose(stjax_logits(load_gguf(path)), torch_logits(model), atol=1e-4, rtol=0)


@pytest.mark.parametrize("variant", ["untied", "tied", "llama3_rope"])
def test_f32_logits_match_original_torch(variant, bpe, tmp_path):
    rope = {"rope_type": "llama3", **LLAMA3_ROPE} if variant == "llama3_rope" else None
    model = torch_llama(len(bpe[1]), tie=variant == "tied", rope=rope, seed=1)
    path = tmp_path / f"{variant}.gguf"
    write_gguf(path, model, bpe, quantize=False, rope_freqs=rope is not None)
    ours = load_gguf(path)
    assert (ours.lm_head is None) == (variant == "tied")
    assert ours.config.rope_type == ("llama3" if rope else "default")
    np.testing.assert_allclose(stjax_logits(ours), torch_logits(model), atol=1e-4, rtol=0)


def test_tokenizer_matches_bpe_and_round_trips(quantized, bpe):
    reference = bpe[0]
    tok = gguf_tokenizer(quantized[0])
    ids = tok(SAMPLE)["input_ids"]
    assert ids == reference.encode(SAMPLE).ids
    assert tok.decode(ids) == SAMPLE
    assert (tok.bos_token, tok.eos_token, tok.chat_template) == ("<|im_start|>", "<|im_end|>", TEMPLATE)
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == \
        "<|im_start|>user\nhi<|im_end|>\n"
    assert tok.model_max_length == 16384


def test_convert_gguf_loads_in_transformers_and_stjax(quantized, tmp_path):
    path, _ = quantized
    out = convert_gguf(path, tmp_path / "hub")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    reference = stjax_logits(load_gguf(path))
    np.testing.assert_allclose(torch_logits(theirs), reference, atol=1e-4, rtol=0)
    np.testing.assert_allclose(stjax_logits(from_pretrained(out)), reference, atol=1e-5, rtol=0)
    assert transformers.AutoTokenizer.from_pretrained(out)(SAMPLE)["input_ids"] == \
        gguf_tokenizer(path)(SAMPLE)["input_ids"]


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    other = tmp_path / "gpt2.gguf"
    w = gguf.GGUFWriter(str(other), "gpt2")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    text = tmp_path / "model.gguf"
    text.write_text("not a model")

    with pytest.raises(GGUFError, match=r"gpt2\.gguf: architecture 'gpt2' is not supported"):
        load_gguf(other)
    with pytest.raises(GGUFError, match="not a GGUF file"):
        read_gguf(text)
    for bad in (other, text, tmp_path / "missing.gguf"):
        assert stjax_main(["convert-gguf", str(bad), str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("stjax convert-gguf: error: ") and err.count("\n") == 1 and str(bad) in err
    assert not (tmp_path / "out").exists()
