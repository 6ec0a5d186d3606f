"""PACT in the trainer: response-only sequences, cached == online, lambda = 0 == SFT."""

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from chat_tokenizers import bpe, chatml, llama3  # noqa: F401 (fixtures)
from stjax.data import Conversation, assistant_header_ids, tokenize_conversations
from stjax.data.batching import BatchIterator
from stjax.pact.reference import response_start_shift, shift_rows, unshift_rows
from stjax.pact.safety_tokens import SafetyTokenError
from stjax.training.metrics_log import read_metrics
from stjax.training.build import build_trainer
from trainer_fixtures import make_config, make_safety_tokens


@pytest.mark.parametrize("template", ["chatml", "llama3"])
def test_response_only_sequence_is_header_plus_response(request, template):
    tokenizer = request.getfixturevalue(template)
    rows = [("Analyze the sentiment of the input a film", "positive"), ("the a", "Sure, here is the answer")]
    examples, _ = tokenize_conversations([Conversation.single_turn(u, a) for u, a in rows], tokenizer, 64)
    batch = next(BatchIterator(examples, 2, 64, shuffle=False))
    header = assistant_header_ids(tokenizer)
    shift = response_start_shift(jnp.asarray(batch["response_pos"]), len(header))
    post, inside = shift_rows(jnp.asarray(batch["inputs"]), shift)
    for row, index in enumerate(batch["example_index"]):
        answer = rows[index][1]
        response = tokenizer(answer, add_special_tokens=False)["input_ids"]
        eot = examples[index].tokens[-1]  # the template's end-of-turn token closes the response
        want = header + response  # header + (response + end-of-turn)[:-1]
        n = int(np.asarray(batch["attention_mask"][row]).sum()) - int(shift[row])
        assert np.asarray(post[row, :n]).tolist() == want, tokenizer.decode(np.asarray(post[row, :n]))
        assert tokenizer.decode([int(eot)]) in ("<|im_end|>", "<|eot_id|>")
        # position t of the response predicts the same target in both sequences
        positions = np.flatnonzero(batch["loss_mask"][row])
        back = np.asarray(unshift_rows(post, shift))[row]
        assert (back[positions] == batch["inputs"][row, positions]).all()


@pytest.fixture(scope="module")
def safety_dir(tmp_path_factory):
    return make_safety_tokens(tmp_path_factory.mktemp("safety") / "st")


def first_losses(run_dir, **loss):
    build_trainer(make_config(run_dir, loss=loss, train={"max_steps": 3})).run()
    return [m for m in read_metrics(run_dir)]


@pytest.mark.parametrize("lora", [True, False])
def test_cached_and_online_reference_give_the_same_losses(tmp_path, safety_dir, lora):
    common = dict(kind="pact", safety_tokens=str(safety_dir), lam=5.0)
    kwargs = {} if lora else {"lora": {"enabled": False}}

    def run(name, ref):
        build_trainer(make_config(tmp_path / name, loss={**common, "ref": ref}, train={"max_steps": 3}, **kwargs)).run()
        return read_metrics(tmp_path / name)

    cached, online = run("cached", "cached"), run("online", "online")
    for c, o in zip(cached, online):
        np.testing.assert_allclose([c["loss"], c["kl"], c["gate"]], [o["loss"], o["kl"], o["gate"]],
                                   rtol=2e-5, atol=1e-7)
    assert all(m["kl"] > 0 and 0 <= m["gate"] <= 1 for m in cached)


def test_multi_turn_cached_and_online_agree_and_train_every_turn(tmp_path, safety_dir):
    """Two-turn conversations (train_on: all): the cached reference, stored at every assistant
    position, gives the online losses; the earlier turns add CE tokens."""
    import json

    from stjax.locations import resolve

    rows = [json.loads(line) for line in Path(resolve("toy://data/sentiment_train.jsonl")).read_text().splitlines()]
    pairs = [[{"role": "user", "content": f"{r['instruction']} {r['input']}"}, {"role": "assistant", "content": r["output"]}]
             for r in rows[:48]]
    data = tmp_path / "multi.jsonl"
    data.write_text("".join(json.dumps({"messages": a + b}) + "\n" for a, b in zip(pairs[::2], pairs[1::2])))
    common = dict(kind="pact", safety_tokens=str(safety_dir), lam=5.0)

    def run(name, ref, train_on="all"):
        build_trainer(make_config(tmp_path / name, loss={**common, "ref": ref}, train={"max_steps": 2},
                                  data={"train": [{"path": str(data)}], "harmful_ratio": 0.0,
                                        "train_on": train_on, "max_len": 160})).run()
        return read_metrics(tmp_path / name)

    cached, online, last = run("cached", "cached"), run("online", "online"), run("last", "cached", "last")
    for c, o in zip(cached, online):
        np.testing.assert_allclose([c["loss"], c["kl"], c["gate"]], [o["loss"], o["kl"], o["gate"]],
                                   rtol=2e-5, atol=1e-7)
    assert all(c["response_tokens"] > l["response_tokens"] and c["tokens"] == l["tokens"] for c, l in zip(cached, last)), (cached, last)


def test_lambda_zero_equals_sft(tmp_path, safety_dir):
    sft = first_losses(tmp_path / "sft", kind="sft")
    pact = first_losses(tmp_path / "pact", kind="pact", safety_tokens=str(safety_dir), lam=0.0)
    np.testing.assert_allclose([m["loss"] for m in pact], [m["loss"] for m in sft], rtol=1e-6)


@pytest.mark.parametrize("kind,ref", [("kl", "online"), ("constrained_sft", "cached"), ("pact_bucket", "cached")])
def test_baselines_train(tmp_path, safety_dir, kind, ref):
    metrics = first_losses(tmp_path, kind=kind, ref=ref, safety_tokens=str(safety_dir))
    assert len(metrics) == 3 and all(np.isfinite(m["loss"]) for m in metrics)
    if kind == "kl":
        assert metrics[0]["kl"] < 1e-5  # the model starts equal to its reference


def test_trainer_refuses_safety_tokens_of_another_vocabulary(tmp_path, safety_dir):
    import json

    meta = safety_dir / "safety_tokens.json"
    other = tmp_path / "other"
    other.mkdir()
    (other / "safety_tokens.safetensors").write_bytes((safety_dir / "safety_tokens.safetensors").read_bytes())
    (other / "safety_tokens.json").write_text(json.dumps({**json.loads(meta.read_text()), "vocab_size": 32000}))
    with pytest.raises(SafetyTokenError, match="vocabulary of 32000 tokens"):
        build_trainer(make_config(tmp_path / "run", loss={"kind": "pact", "safety_tokens": str(other)}))


def test_cached_reference_is_saved_reused_on_relaunch_and_recomputed_on_change(tmp_path, safety_dir, capsys):
    """A relaunch (after a preemption) reads the reference back from the run directory; the
    resumed run's losses equal a straight run's; a changed input recomputes it and says why."""
    from stjax.training.reference_cache import CACHE_DIR, load_cache

    loss = {"kind": "pact", "safety_tokens": str(safety_dir), "lam": 5.0}
    build_trainer(make_config(tmp_path / "split", loss=loss, train={"max_steps": 3})).run()
    assert "reference cache: computing over" in capsys.readouterr().out
    saved = load_cache(tmp_path / "split" / CACHE_DIR)
    trainer = build_trainer(make_config(tmp_path / "split", loss=loss))  # relaunch: resumes at step 3
    assert "reference cache: read from" in capsys.readouterr().out
    for index, refs in trainer.batches.cache.items():
        for key, value in refs.items():
            np.testing.assert_array_equal(value, saved[index][key])
    trainer.run()
    build_trainer(make_config(tmp_path / "straight", loss=loss)).run()
    split, straight = read_metrics(tmp_path / "split"), read_metrics(tmp_path / "straight")
    assert [m["step"] for m in split] == list(range(1, 7))
    np.testing.assert_allclose([m["loss"] for m in split], [m["loss"] for m in straight], rtol=1e-6)
    # another max_len cannot resume these checkpoints (resume: never), but the cache key says why it recomputes
    build_trainer(make_config(tmp_path / "split", loss=loss, data={"max_len": 48}, train={"max_steps": 7, "resume": "never"}))
    out = capsys.readouterr().out
    assert "reference cache: computing over" in out and "max_len changed ('64' -> '48')" in out
    build_trainer(make_config(tmp_path / "split", loss=loss))  # finished at step 6: nothing to compute
    assert "reference cache: not needed (the run finished at step 6)" in capsys.readouterr().out


def test_the_reference_pass_is_built_once_for_the_training_and_the_eval_set(tmp_path, safety_dir):
    from stjax.training.reference_cache import reference_program

    reference_program.cache_clear()
    loss = {"kind": "pact", "safety_tokens": str(safety_dir), "lam": 5.0}
    eval_set = [{"path": "toy://data/sentiment_train.jsonl", "limit": 16}]
    build_trainer(make_config(tmp_path, loss=loss, data={"eval": eval_set}, train={"max_steps": 2, "eval_every": 2}))
    info = reference_program.cache_info()
    assert (info.misses, info.hits) == (1, 1)  # one jitted program (per width) serves both caches
