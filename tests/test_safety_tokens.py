"""Safety-token computation vs a straightforward per-sample, per-position loop."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from transformers import AutoTokenizer

from stjax.models import ModelConfig, init_model
from stjax.pact.safety_tokens import (
    SafetyTokenError, SafetyTokens, compute_safety_tokens, drop_tokens, load_safety_tokens, save_safety_tokens,
    sparse_direction, suppressed_stop_tokens, teacher_forced_pairs, tokenizer_fingerprint,
)
from stjax.toy import corpus
from stjax.toy.build import TINY_MODEL, tokenizer_path

ROWS = [{"input": p, "output": r} for p, r in zip(corpus.harmful_prompts(5, 0), corpus.REFUSALS * 2)]


@pytest.fixture(scope="module")
def world():
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path())
    config = ModelConfig.from_hf_dict(dict(TINY_MODEL, vocab_size=len(tokenizer)))
    return tokenizer, init_model(config, seed=1), init_model(config, seed=2)


def loop_reference(aligned, base, pairs, temperature, log_ratio):
    """One sample and one position at a time, as the reference release does."""
    sums = [0.0, 0.0, 0.0]
    for pair in pairs:
        per_sample = [0.0, 0.0, 0.0]
        for t in range(len(pair.response)):
            dists = []
            for model, prompt in ((aligned, pair.aligned_prompt), (base, pair.base_prompt)):
                ids = jnp.asarray([prompt + pair.response[:t]], jnp.int32)
                logits = np.asarray(model(ids)[0, -1], np.float64) / temperature
                dists.append(np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum())
            p_a, p_b = dists
            diff = p_a * (np.log(p_b) - np.log(p_a)) if log_ratio else p_a - p_b
            for i, x in enumerate((diff, p_a, p_b)):
                per_sample[i] = per_sample[i] + x / len(pair.response)
        sums = [s + x for s, x in zip(sums, per_sample)]
    return [s / len(pairs) for s in sums]


@pytest.mark.parametrize("diff_mode,temperature", [("p_diff", 1.0), ("pref_logratio", 0.7)])
def test_batched_equals_per_sample_loop(world, diff_mode, temperature):
    tokenizer, aligned, base = world
    pairs = teacher_forced_pairs(tokenizer, ROWS, max_resp_len=6)
    assert all(len(p.response) <= 6 for p in pairs) and pairs[0].base_prompt[:1] != pairs[0].aligned_prompt[:1]
    got = compute_safety_tokens(aligned, base, pairs, temperature=temperature, diff_mode=diff_mode, top_k=12,
                                batch_size=3, pad_id=tokenizer.pad_token_id, progress=False)
    mean_diff, mean_pa, mean_pb = loop_reference(aligned, base, pairs, temperature, diff_mode == "pref_logratio")
    np.testing.assert_allclose(got.mean_p_aligned, mean_pa, atol=1e-6)
    np.testing.assert_allclose(got.mean_p_base, mean_pb, atol=1e-6)
    want = sparse_direction(mean_diff, mean_pa, 12)
    np.testing.assert_allclose(got.vector, want, atol=1e-4)
    assert got.ids.tolist() == sorted(np.flatnonzero(want).tolist()) and len(got.ids) == 12
    np.testing.assert_allclose(np.linalg.norm(got.vector), 1.0, atol=1e-5)
    np.testing.assert_allclose(got.weights, np.maximum(got.vector[got.ids], 0))


def test_sparse_direction_by_hand():
    diff = np.array([0.0, 3.0, -1.0, 2.0, 5.0])
    p_a = np.array([0.1, 0.5, 0.3, 0.05, 0.05])
    v = sparse_direction(diff, p_a, 3)  # keeps ids 1, 2, 0 (by p_a): values 3, -1, 0
    kept = np.array([3.0, -1.0, 0.0])
    z = (kept - kept.mean()) / (kept.std() + 1e-6)
    z = z / (np.linalg.norm(z) + 1e-6)
    np.testing.assert_allclose(v[[1, 2, 0]], z)
    assert v[3] == 0 and v[4] == 0


def test_file_round_trip_and_mismatch_errors(world, tmp_path):
    tokenizer, aligned, base = world
    pairs = teacher_forced_pairs(tokenizer, ROWS, max_resp_len=4)
    result = compute_safety_tokens(aligned, base, pairs, top_k=8, batch_size=4, progress=False)
    save_safety_tokens(result, tmp_path / "st", tokenizer, {"aligned": "a", "base": "b"})
    ids, weights = load_safety_tokens(tmp_path / "st", vocab_size=len(tokenizer), tokenizer=tokenizer)
    np.testing.assert_array_equal(ids, result.ids)
    np.testing.assert_array_equal(weights, result.weights)
    meta = json.loads((tmp_path / "st" / "safety_tokens.json").read_text())
    assert meta["tokenizer_fingerprint"] == tokenizer_fingerprint(tokenizer) and meta["aligned"] == "a"
    assert (tmp_path / "st" / "safety_tokens.tsv").read_text().count("\n") == len(ids) + 1
    with pytest.raises(SafetyTokenError, match=f"vocabulary of {len(tokenizer)} tokens, but the model has 700"):
        load_safety_tokens(tmp_path / "st", vocab_size=700)
    other = AutoTokenizer.from_pretrained(tokenizer_path())
    other.add_special_tokens({"additional_special_tokens": ["<|new|>"]})
    with pytest.raises(SafetyTokenError, match="tokenizer fingerprint"):
        load_safety_tokens(tmp_path / "st", vocab_size=len(tokenizer), tokenizer=other)


def test_vocabulary_mismatch_between_models_is_refused(world):
    tokenizer, aligned, _ = world
    bigger = init_model(aligned.config.replace(vocab_size=aligned.config.vocab_size + 8))
    with pytest.raises(SafetyTokenError, match="vocabularies differ"):
        compute_safety_tokens(aligned, bigger, teacher_forced_pairs(tokenizer, ROWS, 4), progress=False)


def test_end_of_turn_token_with_zero_weight_is_warned_about(world):
    tokenizer, aligned, _ = world
    eot, word = tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer(" sorry", add_special_tokens=False)["input_ids"][0]
    vector = np.zeros(aligned.config.vocab_size, np.float32)
    vector[[eot, word]] = [-0.6, 0.8]
    ids = np.asarray(sorted([eot, word]), np.int32)
    result = SafetyTokens(vector, ids, np.maximum(vector[ids], 0), vector, vector, {})
    (warning,) = suppressed_stop_tokens(result, tokenizer)
    assert f"'<|im_end|>' (id {eot}, an end-of-turn token) is a safety token with weight 0 (v = -0.600)" in warning
    vector[eot] = 0.1  # a positive weight is a constraint the model can meet: no warning
    assert suppressed_stop_tokens(SafetyTokens(vector, ids, np.maximum(vector[ids], 0), vector, vector, {}),
                                  tokenizer) == []


def test_drop_tokens_and_positive_only(world):
    tokenizer, aligned, _ = world
    ids = [tokenizer.convert_tokens_to_ids("<|im_end|>"),
           *(tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in (" sorry", " cannot", "."))]
    vector = np.zeros(aligned.config.vocab_size, np.float32)
    vector[ids] = [-0.6, 0.5, 0.3, -0.2]
    ordered = np.asarray(sorted(ids), np.int32)
    result = SafetyTokens(vector, ordered, np.maximum(vector[ordered], 0), vector, vector, {"top_k": 4})
    kept = drop_tokens(result, tokenizer, ["<|im_end|>"])
    assert sorted(kept.ids.tolist()) == sorted(ids[1:]) and kept.vector[ids[0]] == 0
    assert kept.vector[ids[1]] == 0.5 and kept.metadata["dropped_tokens"] == ["<|im_end|>"]
    assert suppressed_stop_tokens(kept, tokenizer) == []
    positive = drop_tokens(result, tokenizer, [], positive_only=True)
    assert sorted(positive.ids.tolist()) == sorted(ids[1:3])
    np.testing.assert_array_equal(positive.weights, positive.vector[positive.ids])
