"""Packed rows (`data.packing`): the packer places every example once an epoch within the
row's token, loss-token and segment budgets, reproducibly and resumably; a packed row's
hidden states equal each example's alone (grouped-query heads, a sliding window, biases);
every objective that packs (SFT, the full-vocabulary KL, constrained SFT, PACT with and
without the end-of-turn KL; online, and PACT and constrained SFT with the cached reference)
gives the same summed loss and gradients over packed rows as over the same examples unpacked,
on one device and sharded over 8; and `stjax train` runs with it."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hf_fixtures import make_hf_model
from stjax.data.batching import BatchIterator
from stjax.data.packing import PackedBatchIterator
from stjax.data.tokenize import TokenizedExample
from stjax.models import from_pretrained
from stjax.pact.objective import pact
from stjax.training.objectives import constrained_sft, kl_baseline, sft
from stjax.training.step import Frozen, forward, make_reference

VOCAB = 160
TINY = Path(__file__).parents[1] / "configs" / "tiny_sft.yaml"


def examples(n=30, seed=0, longest=40):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        prompt, response = int(rng.integers(3, longest // 2)), int(rng.integers(2, longest // 2))
        if i % 7 == 5:
            prompt = 1  # shorter than the assistant header: its first input already predicts the response
        turns = ((1, 3),) if i % 4 == 0 else ()  # an earlier assistant turn, trained on too
        out.append(TokenizedExample(rng.integers(1, VOCAB, prompt + response).astype(np.int32), prompt, 100 + i, turns))
    return out


def one_packed_batch(items, width, empty_rows=0):
    """Every example, packed into rows of `width`, in one batch (in order, no shuffle), with
    `empty_rows` padding rows after them."""
    rows = PackedBatchIterator(items, 1, width, shuffle=False, process_index=0, process_count=1).batches_per_epoch
    batch = next(PackedBatchIterator(items, rows + empty_rows, width, shuffle=False, process_index=0, process_count=1))
    assert not batch["attention_mask"][rows:].any()
    return batch


def test_the_segment_budget_caps_rows_of_short_examples():
    items = [TokenizedExample(np.array([5, 6, 7, 8], np.int32), 2, i) for i in range(40)]  # 3 positions each
    items.append(TokenizedExample(np.arange(1, 5, dtype=np.int32), 1, 40))  # 3 positions, 3 of them loss
    it = PackedBatchIterator(items, 2, 32, shuffle=False, process_index=0, process_count=1)
    assert it.max_segments == 32 // 3 == 10
    batch = next(it)
    assert (batch["segment_ids"].max(axis=1) <= 10).all() and batch["segment_ids"].max() == 10


def test_every_example_is_packed_once_an_epoch_within_the_budgets():
    items = examples(200, longest=60)
    it = PackedBatchIterator(items, 4, 64, seed=3, process_index=0, process_count=1)
    lengths = {e.index: len(e.tokens) - 1 for e in items}
    for epoch in range(2):
        seen = []
        for _ in range(it.batches_per_epoch):
            batch = next(it)
            assert batch["inputs"].shape == (4, 64) and batch["loss_index"].shape == (4, it.loss_width)
            assert batch["example_index"].shape == (4, it.max_segments) == (4, 64 // min(lengths.values()))
            for row in range(4):
                members = [int(i) for i in batch["example_index"][row] if i >= 0]
                seen += members
                assert sum(lengths[i] for i in members) == batch["attention_mask"][row].sum() <= 64
                assert batch["loss_mask"][row].sum() <= it.loss_width
                assert batch["segment_ids"][row].max(initial=0) == len(members)
                at = 0
                for segment, index in enumerate(members, 1):  # positions restart in each segment
                    n = lengths[index]
                    assert (batch["segment_ids"][row, at:at + n] == segment).all()
                    assert (batch["positions"][row, at:at + n] == np.arange(n)).all()
                    at += n
        assert sorted(seen) == sorted(lengths), f"epoch {epoch}"
    unpacked = BatchIterator(items, 4, 64, process_index=0, process_count=1)
    assert it.batches_per_epoch < unpacked.batches_per_epoch
    assert sum(lengths.values()) / (it.batches_per_epoch * 4 * 64) > 0.85  # rows are mostly real tokens


def test_packing_is_reproducible_resumable_and_split_over_processes():
    items = examples(120)
    first = PackedBatchIterator(items, 4, 64, seed=1, process_index=0, process_count=1)
    epoch0 = first.batches_per_epoch  # (each epoch packs anew: its count may differ by a batch)
    run = [next(first) for _ in range(epoch0 + 3)]  # into the second epoch
    again = PackedBatchIterator(items, 4, 64, seed=1, process_index=0, process_count=1)
    again.set_state({"epoch": 1, "index": 2})
    np.testing.assert_array_equal(next(again)["inputs"], run[epoch0 + 2]["inputs"])
    assert not np.array_equal(run[0]["inputs"], run[epoch0]["inputs"])  # epochs reshuffle
    halves = [next(PackedBatchIterator(items, 4, 64, seed=1, process_index=p, process_count=2)) for p in (0, 1)]
    for key in run[0]:
        np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), run[0][key])


@pytest.mark.parametrize("family", ["llama3", "mistral", "qwen2"])
def test_a_packed_row_gives_each_example_the_hidden_states_it_has_alone(tmp_path, family):
    make_hf_model(family).save_pretrained(tmp_path)
    model = from_pretrained(tmp_path)
    items = examples(6, seed=2)
    batch = one_packed_batch(items, 64)
    packed, _ = model.hidden_states(jnp.asarray(batch["inputs"]), attention_mask=jnp.asarray(batch["attention_mask"]),
                                    segment_ids=jnp.asarray(batch["segment_ids"]))  # positions from the segments
    by_index = {e.index: e for e in items}
    checked = 0
    for row in range(batch["inputs"].shape[0]):
        at = 0
        for index in (int(i) for i in batch["example_index"][row] if i >= 0):
            tokens = jnp.asarray(by_index[index].tokens[:-1])[None]
            alone, _ = model.hidden_states(tokens)
            n = tokens.shape[1]
            np.testing.assert_allclose(np.asarray(packed[row, at:at + n]), np.asarray(alone[0]), atol=2e-5)
            at, checked = at + n, checked + 1
    assert checked == 6 and batch["segment_ids"].max() > 1  # some row holds several examples


SAFETY = np.array([3, 7, 11, 19, 23]), np.array([0.5, 0.2, 0.1, 0.1, 0.1], np.float32)
HEADER = 2
OBJECTIVES = {
    "sft": lambda: sft(chunk_tokens=24),
    "kl": lambda: kl_baseline(lam=0.7, chunk_tokens=24),
    "constrained_sft": lambda: constrained_sft(chunk_tokens=24),
    "pact": lambda: pact(*SAFETY, HEADER, lam=2.0, chunk_tokens=24),
    "pact, no KL at end": lambda: pact(*SAFETY, HEADER, at_end=False, chunk_tokens=24),
}


def loss_sums(model_dir, batch, objective, mesh=None, cached=False):
    """An objective's summed loss and token count, and their gradients, for a batch (LoRA off:
    every weight trained; the reference is the initial weights: run online, or read from the
    batch when `cached`, as the cached reference delivers it)."""
    from stjax.models import make_mesh

    mesh = mesh or make_mesh(data=1, devices=jax.devices()[:1])
    model = from_pretrained(model_dir, mesh=mesh)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    frozen = Frozen(rest, jax.tree.map(jnp.copy, params))
    device = {k: jnp.asarray(v) for k, v in batch.items()}

    @jax.jit
    def value_and_grad(params, device):
        def total(params):
            online = objective.needs_reference and not cached
            refs = objective.reference_fn(make_reference(graphdef, params, frozen), device) if online else device
            loss, count, _ = objective.loss(forward(graphdef, params, frozen, device, jax.random.key(0)), device, refs)
            return loss, count
        return jax.value_and_grad(total, has_aux=True)(params)

    with jax.set_mesh(mesh):
        (loss, count), grads = value_and_grad(params, device)
    return float(loss), float(count), jax.tree.map(np.asarray, grads)


def assert_same(a, b):
    (loss_a, count_a, grads_a), (loss_b, count_b, grads_b) = a, b
    assert count_a == count_b > 0
    np.testing.assert_allclose(loss_b, loss_a, rtol=2e-5)
    for x, y in zip(jax.tree.leaves(grads_a), jax.tree.leaves(grads_b)):  # float32 summation order: 1e-6 of the scale
        np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-6 * max(1.0, float(np.abs(x).max())))


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama3")
    make_hf_model("llama3").save_pretrained(path)
    return path


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_packed_rows_give_the_loss_and_gradients_of_the_same_examples_unpacked(llama_dir, name):
    items = examples(16, seed=4)
    unpacked = next(BatchIterator(items, 16, 64, buckets=[64], shuffle=False, process_index=0, process_count=1))
    packed = one_packed_batch(items, 64, empty_rows=2)  # a final partial batch's padding rows too
    assert packed["inputs"].shape[0] < 16
    objective = OBJECTIVES[name]()
    want = loss_sums(llama_dir, unpacked, objective)
    assert want[1] == sum(e.loss_mask.sum() for e in items)
    assert_same(want, loss_sums(llama_dir, packed, objective))


@pytest.mark.parametrize("name", ["pact", "constrained_sft"])
def test_the_cached_reference_scattered_into_packed_rows_equals_the_online_one(llama_dir, name):
    from stjax.training.reference_cache import CachedBatches, precompute_reference

    items = examples(16, seed=6)
    objective = OBJECTIVES[name]()
    graphdef, params, rest = nnx.split(from_pretrained(llama_dir), nnx.Param, ...)
    cache = precompute_reference(objective.reference_fn, graphdef, params, Frozen(rest), items, batch_size=8,
                                 max_len=64, buckets=None, put_batch=lambda b: {k: jnp.asarray(v) for k, v in b.items()},
                                 progress=False)  # over unpacked rows, as the trainer computes it
    rows = PackedBatchIterator(items, 1, 64, shuffle=False, process_index=0, process_count=1).batches_per_epoch
    packed = next(CachedBatches(PackedBatchIterator(items, rows, 64, shuffle=False, process_index=0,
                                                    process_count=1), cache))
    assert_same(loss_sums(llama_dir, one_packed_batch(items, 64), objective),
                loss_sums(llama_dir, packed, objective, cached=True))


@pytest.mark.parametrize("name", ["sft", "pact"])
def test_packed_rows_sharded_over_8_devices_equal_one_device(llama_dir, name):
    from stjax.models import make_mesh

    if len(jax.devices()) < 8:
        pytest.skip("needs 8 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)")
    batch = next(PackedBatchIterator(examples(40, seed=5), 8, 64, shuffle=False, process_index=0, process_count=1))
    objective = OBJECTIVES[name]()
    assert_same(loss_sums(llama_dir, batch, objective),
                loss_sums(llama_dir, batch, objective, mesh=make_mesh(data=2, fsdp=2, tensor=2)))


def test_stjax_train_packs_rows_and_refuses_packing_for_pact_bucket(tmp_path, capsys):
    from stjax.cli import train as train_cli
    from stjax.cli.common import run_cli
    from stjax.training.metrics_log import read_metrics

    args = ["--config", str(TINY), f"train.run_dir={tmp_path / 'run'}", "logging.progress=false",
            "data.packing=true", "data.max_len=128", "train.batch_size=8", "train.max_steps=3"]
    assert run_cli("stjax train", train_cli.main, args) == 0
    metrics = read_metrics(tmp_path / "run")
    assert metrics and all(np.isfinite(m["loss"]) for m in metrics)
    assert metrics[-1]["tokens"] > 8 * 64  # rows hold several examples: more real tokens than half the width
    capsys.readouterr()
    code = run_cli("stjax train", train_cli.main, args + ["loss.kind=pact_bucket", f"train.run_dir={tmp_path / 'b'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "'data.packing': not for loss.kind pact_bucket" in err[0], err


def test_turning_packing_on_in_a_run_is_a_changed_config_but_old_records_still_resume():
    from stjax.training.checkpointing import config_changes

    old = {"data": {"max_len": 128, "packing": False}, "train": {"batch_size": 8}}
    assert config_changes(old, {"data": {"max_len": 128, "packing": True}, "train": {"batch_size": 8}}) == [
        "data.packing: False -> True"]
    before_packing_existed = {"data": {"max_len": 128}, "train": {"batch_size": 8}}  # such runs were unpacked
    assert config_changes(before_packing_existed, {"data": {"max_len": 128, "packing": False},
                                                   "train": {"batch_size": 8}}) == []
    assert config_changes(before_packing_existed, {"data": {"max_len": 128, "packing": True},
                                                   "train": {"batch_size": 8}}) == ["data.packing: False -> True"]
    assert config_changes(before_packing_existed, {"data": {"max_len": 64, "packing": False},
                                                   "train": {"batch_size": 8}}) == ["data.max_len: 128 -> 64"]
