"""Generation: greedy parity with transformers, stopping, sampling, buckets, sharding."""

import pytest
import torch

from hf_fixtures import make_hf_model
from stjax.data.batching import bucket
from stjax.generation import _generate_ids, generate
from stjax.models import from_pretrained, make_mesh

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [20, 21, 22], list(range(30, 47)), [99]]


@pytest.fixture(scope="module", params=["llama3", "qwen2", "mistral"])
def models(request, tmp_path_factory):
    hf = make_hf_model(request.param, seed=3)
    path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(path)
    return hf, path


def hf_greedy(hf, prompt, n, eos=None):
    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False,
                          eos_token_id=eos, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def test_greedy_matches_transformers_for_a_ragged_batch(models):
    hf, path = models
    got = generate(from_pretrained(path), PROMPTS, max_new_tokens=24)
    for prompt, tokens in zip(PROMPTS, got.tokens):
        assert tokens == hf_greedy(hf, prompt, 24)
    assert got.finished == [False] * len(PROMPTS)


def test_stops_at_stop_id_and_excludes_it(models):
    hf, path = models
    model = from_pretrained(path)
    free = generate(model, PROMPTS[:2], max_new_tokens=24).tokens
    stop = free[0][5]  # a token the first row emits at step 5
    got = generate(model, PROMPTS[:2], max_new_tokens=24, stop_ids=[stop])
    assert got.tokens[0] == free[0][: free[0].index(stop)]
    assert got.finished[0]
    reference = hf_greedy(hf, PROMPTS[0], 24, eos=stop)
    assert reference[-1] == stop and got.tokens[0] == reference[:-1]


def test_sampling_is_seeded_and_tiny_top_p_is_greedy(models):
    _, path = models
    model = from_pretrained(path)
    a = generate(model, PROMPTS, max_new_tokens=12, temperature=1.0, seed=7).tokens
    b = generate(model, PROMPTS, max_new_tokens=12, temperature=1.0, seed=7).tokens
    c = generate(model, PROMPTS, max_new_tokens=12, temperature=1.0, seed=8).tokens
    assert a == b and a != c
    greedy = generate(model, PROMPTS, max_new_tokens=12).tokens
    assert generate(model, PROMPTS, max_new_tokens=12, temperature=1.0, top_p=1e-6, seed=7).tokens == greedy


def test_one_program_per_shape_bucket(models):
    _, path = models
    model = from_pretrained(path)
    _generate_ids.clear_cache()
    generate(model, [[1, 2, 3]], max_new_tokens=8)
    generate(model, [[4, 5, 6, 7, 8, 9]], max_new_tokens=8)  # same bucket (1 x 16)
    assert _generate_ids._cache_size() == 1
    generate(model, [[1] * 17], max_new_tokens=8)  # prompt bucket 32
    assert _generate_ids._cache_size() == 2
    assert [bucket(n) for n in (1, 16, 17, 33)] == [16, 16, 32, 64]


def test_sharded_generation_equals_single_device(models):
    _, path = models
    mesh = make_mesh(2, 2, 2)
    single = generate(from_pretrained(path), PROMPTS, max_new_tokens=16).tokens
    sharded = generate(from_pretrained(path, mesh=mesh), PROMPTS, max_new_tokens=16, mesh=mesh).tokens
    assert sharded == single
