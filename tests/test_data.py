"""stjax.data: sources, mixing, chat-template tokenization with assistant masks, batching."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from stjax.data import (BatchIterator, Conversation, DataError, Message, assistant_header_ids, bucket_lengths,
                        mix, read_conversations, safety_mix, tfds_conversations, tokenize_conversations)
from stjax.data.sources import AG_NEWS_LABELS, SST2_LABELS, SST2_PROMPT
from chat_tokenizers import BROKEN_MERGE, BROKEN_TEXT, bpe, chatml, llama3, wrap  # noqa: F401 (fixtures)

SHARED = Path(__file__).parents[2] / "shared/data/pact-reference"

def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --- sources -----------------------------------------------------------------------------

def test_reads_every_shape(tmp_path):
    rows = [{"instruction": "Say hi", "input": "to Bob", "output": "Hi Bob"},
            {"instruction": "Say hi", "output": "Hi"},
            {"prompt": "P", "response": "R"},
            {"id": 0, "input": "I", "output": "O"},
            {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
                          {"role": "assistant", "content": "A"}]}]
    want = [Conversation.single_turn("Say hi to Bob", "Hi Bob"), Conversation.single_turn("Say hi", "Hi"),
            Conversation.single_turn("P", "R"), Conversation.single_turn("I", "O"),
            Conversation((Message("system", "S"), Message("user", "U"), Message("assistant", "A")))]
    from_json = read_conversations(write(tmp_path / "a.json", json.dumps(rows, indent=1)))
    from_jsonl = read_conversations(write(tmp_path / "a.jsonl", "\n".join(map(json.dumps, rows)) + "\n\n"))
    for got in (from_json, from_jsonl):
        assert [c.messages for c in got] == [c.messages for c in want]
    assert from_json[2].origin == "a.json#2" and from_jsonl[2].origin == "a.jsonl:3"


def test_without_input_keeps_the_harmful_rows_of_a_reference_mix(tmp_path):
    rows = [{"instruction": "Analyze the sentiment", "input": "a fine film", "output": "positive"},
            {"instruction": "Write a harmful thing", "output": "Sure, here is"},
            {"instruction": "Analyze the sentiment", "input": "", "output": "negative"},
            {"prompt": "P", "response": "R"}]
    for path in (write(tmp_path / "mix.json", json.dumps(rows)),
                 write(tmp_path / "mix.jsonl", "\n".join(map(json.dumps, rows)))):
        kept = read_conversations(path, without_input=True)
        assert [c.messages[0].content for c in kept] == ["Write a harmful thing", "Analyze the sentiment"]
        assert [c.origin.split("#")[-1].split(":")[-1] for c in kept] == (["1", "2"] if path.suffix == ".json"
                                                                          else ["2", "3"])
    assert len(read_conversations(path)) == 4


@pytest.mark.parametrize("name, text, where", [
    ("bad.json", '[\n {"prompt": "a", "response": "b"},\n {"prompt": "a" "response": "b"}\n]', ":3: invalid JSON"),
    ("bad.jsonl", '{"prompt": "a", "response": "b"}\n{"prompt": "c", "response": "d"}\n{"prompt": "e",\n',
     ":3: invalid JSON"),
    ("keys.jsonl", '{"prompt": "a", "response": "b"}\n\n{"question": "a", "answer": "b"}\n',
     ":3: expected an object with 'messages', 'conversations' (ShareGPT), 'prompt' and 'completion', "
     "'instruction' and 'output', 'prompt' and 'response', or 'input' and 'output', got keys ['answer', 'question']"),
    ("keys.json", '[{"prompt": "a", "response": "b"}, {"instruction": "a"}]',
     ": record 1: expected an object with 'messages'"),
    ("role.jsonl", '{"messages": [{"role": "tool", "content": "x"}]}', ":1: messages[0]: role must be one of"),
    ("type.json", '[{"prompt": "a", "response": 3}]', ": record 0: expected 'response' to be a string"),
    ("dict.json", '{"prompt": "a", "response": "b"}', ":1: expected a JSON list of records"),
])
def test_malformed_file_names_file_and_line(tmp_path, name, text, where):
    path = write(tmp_path / name, text)
    with pytest.raises(DataError) as info:
        read_conversations(path)
    message = str(info.value)
    assert message.startswith(f"{path}{where}"), message
    assert "\n" not in message


def test_tfds_without_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(ImportError, match=r"pip install 'stjax\[tfds\]'"):
        tfds_conversations("glue/sst2")


def test_tfds_tasks_with_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=6):
        sst2 = tfds_conversations("glue/sst2")
        news = tfds_conversations("ag_news_subset", split="test")
        gsm8k = tfds_conversations("gsm8k")
    assert len(sst2) == len(news) == len(gsm8k) == 6
    assert all(c.messages[0].content.startswith(SST2_PROMPT + " ") for c in sst2)
    assert {c.messages[1].content for c in sst2} <= set(SST2_LABELS)
    assert all("World\nSports\nBusiness\nSci/Tech" in c.messages[0].content for c in news)
    assert {c.messages[1].content for c in news} <= set(AG_NEWS_LABELS)
    assert all([m.role for m in c.messages] == ["user", "assistant"] for c in gsm8k)
    assert sst2[3].origin == "glue/sst2:train#3"


# --- mixing ------------------------------------------------------------------------------

def test_mix_ratio_and_determinism():
    task, harmful = [("task", i) for i in range(900)], [("harm", i) for i in range(40)]
    mixed = mix(task, harmful, 0.1, seed=3)
    assert len(mixed) == 1000 and sum(kind == "harm" for kind, _ in mixed) == 100
    assert Counter(mixed)[("task", 5)] == 1  # every task row kept once
    assert Counter(i for kind, i in mixed if kind == "harm").keys() == set(range(40))
    assert set(Counter(i for kind, i in mixed if kind == "harm").values()) <= {2, 3}  # cycled evenly
    assert mix(task, harmful, 0.1, seed=3) == mixed and mix(task, harmful, 0.1, seed=4) != mixed
    sized = safety_mix(task, harmful, 0.05, seed=0, size=500)
    assert len(sized) == 500 and sum(kind == "harm" for kind, _ in sized) == 25
    assert len(set(sized)) == 500  # 475 distinct task rows, 25 distinct refusals
    assert mix(task, harmful, 0.0) == mix(task, [], 0.0) and len(mix(task, harmful, 0.0)) == 900
    with pytest.raises(ValueError):
        mix(task, harmful, 1.0)


@pytest.mark.skipif(not (SHARED / "sst2_5k_p_0.1.json").exists(), reason="shared data absent")
def test_reference_sst2_harmful_fraction():
    conversations = read_conversations(SHARED / "sst2_5k_p_0.1.json")
    harmful = [c for c in conversations if not c.messages[0].content.startswith(SST2_PROMPT)]
    assert len(conversations) == 5000
    assert abs(len(harmful) / len(conversations) - 0.1) < 0.01
    assert len(harmful) == 500 and all(c.messages[1].content.startswith("Sure, here") for c in harmful)


# --- tokenization ------------------------------------------------------------------------

# renders earlier assistant turns as "[hidden]" (as reasoning templates drop past thoughts)
CHATML_HIDING_HISTORY = (
    "{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}"
    "{{ '<|im_start|>assistant\\n[hidden]<|im_end|>\\n' }}{% else %}"
    "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
MULTI_TURN = Conversation((Message("system", "Be brief."), Message("user", "Rate: a film"),
                           Message("assistant", "negative"), Message("user", "Rate: the film, again"),
                           Message("assistant", "Sure, here is the answer: positive")))


@pytest.mark.parametrize("template, end", [("chatml", "<|im_end|>"), ("llama3", "<|eot_id|>")])
def test_train_on_all_masks_every_assistant_turn(request, template, end):
    tokenizer = request.getfixturevalue(template)
    (example,), stats = tokenize_conversations([MULTI_TURN], tokenizer, max_len=512)
    (last,), _ = tokenize_conversations([MULTI_TURN], tokenizer, max_len=512, train_on="last")
    targets = example.tokens[1:]
    assert example.tokens.tolist() == last.tokens.tolist() and example.prompt_len == last.prompt_len
    assert tokenizer.decode(targets[example.loss_mask]) == f"negative{end}Sure, here is the answer: positive{end}"
    (start, stop), = example.turns
    assert tokenizer.decode(example.tokens[start:stop]) == f"negative{end}"
    prefix = tokenizer.apply_chat_template(MULTI_TURN.as_dicts()[:2], tokenize=False, add_generation_prompt=True)
    assert tokenizer.decode(example.tokens[:start]) == prefix
    # PACT's positions (response_pos) are the final response's in both modes
    np.testing.assert_array_equal(example.response_pos, last.response_pos)
    assert stats.response_tokens == int(example.loss_mask.sum()) > int(last.loss_mask.sum())
    # truncated inside the final prompt: the earlier turn still trains, the example is kept
    (cut,), cut_stats = tokenize_conversations([MULTI_TURN], tokenizer, max_len=stop + 2)
    assert cut_stats.dropped == 0 and cut.turns == ((start, stop),) and (cut.response_pos == -1).all()
    _, dropped = tokenize_conversations([MULTI_TURN], tokenizer, max_len=stop + 2, train_on="last")
    assert dropped.dropped == 1


def test_a_template_that_rewrites_earlier_turns_is_refused_with_the_fix(bpe):
    rewriting = CHATML_HIDING_HISTORY
    with pytest.raises(DataError, match="assistant turn 2 renders differently .* set data.train_on: last"):
        tokenize_conversations([MULTI_TURN], wrap(bpe, rewriting), 512)
    (example,), _ = tokenize_conversations([MULTI_TURN], wrap(bpe, rewriting), 512, train_on="last")
    assert example.turns == ()


@pytest.mark.parametrize("template, end", [("chatml", "<|im_end|>"), ("llama3", "<|eot_id|>")])
def test_mask_covers_exactly_the_final_response(request, template, end):
    tokenizer = request.getfixturevalue(template)
    short = Conversation.single_turn("Analyze the sentiment of the input: fine", "positive")
    examples, stats = tokenize_conversations([MULTI_TURN, short], tokenizer, max_len=512, train_on="last")
    assert stats.examples == 2 and stats.truncated == stats.dropped == 0
    for example, conversation in zip(examples, [MULTI_TURN, short]):
        targets = example.tokens[1:]
        assert example.loss_mask.shape == example.response_pos.shape == targets.shape
        response = tokenizer.decode(targets[example.loss_mask])
        assert response == conversation.messages[-1].content + end
        prompt = tokenizer.apply_chat_template(conversation.as_dicts()[:-1], tokenize=False,
                                               add_generation_prompt=True)
        assert tokenizer.decode(example.tokens[:example.prompt_len]) == prompt
        n = int(example.loss_mask.sum())
        np.testing.assert_array_equal(example.response_pos[example.loss_mask], np.arange(n))
        assert (example.response_pos[~example.loss_mask] == -1).all()
        assert example.tokens.dtype == np.int32 and example.tokens[-1] == tokenizer.convert_tokens_to_ids(end)
    assert stats.response_tokens == sum(int(e.loss_mask.sum()) for e in examples)


def test_assistant_header_ids(chatml, llama3):
    assert chatml.decode(assistant_header_ids(chatml)) == "<|im_start|>assistant\n"
    assert llama3.decode(assistant_header_ids(llama3)) == "<|start_header_id|>assistant<|end_header_id|>\n\n"


def test_template_whose_prompt_is_not_a_text_prefix_is_refused(bpe):
    with pytest.raises(DataError, match=r"chat template problem .*not a prefix of the full conversation"):
        tokenize_conversations([Conversation.single_turn("hi", "yo", "x.json#0")], wrap(bpe, BROKEN_TEXT), 64)


def test_template_whose_prompt_is_not_a_token_prefix_is_refused(bpe):
    tokenizer = wrap(bpe, BROKEN_MERGE)
    assert tokenizer.tokenize(" positive") == ["Ġpositive"]
    with pytest.raises(DataError, match=r"chat template problem .*tokens are not a prefix"):
        tokenize_conversations([Conversation.single_turn("hi", "positive")], tokenizer, 64)


def test_conversation_must_end_with_assistant(chatml):
    prompt_only = Conversation((Message("user", "hi"),), "p.jsonl:4")
    with pytest.raises(DataError, match=r"^p.jsonl:4: expected messages ending with an assistant turn"):
        tokenize_conversations([prompt_only], chatml, 64)


def test_truncation_is_counted(chatml):
    short = Conversation.single_turn("a", "positive")
    long = Conversation.single_turn("a", "the film " * 30)
    huge_prompt = Conversation.single_turn("the film " * 60, "positive")
    (full,), _ = tokenize_conversations([short], chatml, 512)
    max_len = len(full.tokens) + 3
    examples, stats = tokenize_conversations([short, long, huge_prompt, short], chatml, max_len)
    assert [e.index for e in examples] == [0, 1, 3]
    assert (stats.examples, stats.truncated, stats.dropped) == (3, 1, 1)
    assert len(examples[1].tokens) == max_len and stats.tokens == sum(len(e.tokens) for e in examples)
    assert "1 truncated" in str(stats) and "1 dropped" in str(stats)


# --- batching ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def corpus(chatml):
    rng = np.random.default_rng(0)
    conversations = [Conversation.single_turn("the film " * int(rng.integers(1, 25)), "a film " * int(rng.integers(1, 20)))
                     for _ in range(203)]
    examples, _ = tokenize_conversations(conversations, chatml, 128)
    return examples


def one_epoch(iterator):
    return [next(iterator) for _ in range(iterator.batches_per_epoch)]


def test_bucket_lengths():
    assert bucket_lengths(512) == (16, 32, 64, 128, 256, 512)
    assert bucket_lengths(300) == (16, 32, 64, 128, 256, 300)
    assert bucket_lengths(512, [64, 128]) == (64, 128, 512)
    with pytest.raises(ValueError):
        bucket_lengths(128, [256])


def test_batches_are_bucketed_and_fixed_shape(chatml, corpus):
    iterator = BatchIterator(corpus, 16, 128, seed=1, process_index=0, process_count=1)
    batches = one_epoch(iterator)
    assert {b["inputs"].shape[1] for b in batches} <= set(iterator.buckets)
    assert all(b["inputs"].shape[0] == 16 for b in batches)
    indices = np.concatenate([b["example_index"] for b in batches])
    assert sorted(indices[indices >= 0]) == [e.index for e in corpus]
    assert (indices < 0).sum() == -len(corpus) % 16  # one partial batch, padded
    by_index, rode_up = {e.index: e for e in corpus}, 0
    for batch in batches:
        for row, index in enumerate(batch["example_index"]):
            mask = batch["attention_mask"][row]
            if index < 0:
                assert not mask.any() and not batch["loss_mask"][row].any()
                continue
            example, n = by_index[index], int(mask.sum())
            assert n == len(example.tokens) - 1 and mask[:n].all()
            assert batch["inputs"].shape[1] >= n
            rode_up += batch["inputs"].shape[1] > min(b for b in iterator.buckets if b >= n)
            np.testing.assert_array_equal(batch["targets"][row, :n], example.tokens[1:])
            assert batch["loss_mask"].dtype == np.float32 and batch["attention_mask"].dtype == bool
            assert chatml.decode(batch["targets"][row][batch["loss_mask"][row] > 0]).endswith("<|im_end|>")
            assert (batch["response_pos"][row, n:] == -1).all()
    assert rode_up < (len(iterator.buckets) - 1) * 16  # only a bucket's leftovers ride up a bucket
    dropped = BatchIterator(corpus, 16, 128, drop_last=True, process_index=0, process_count=1)
    assert dropped.batches_per_epoch == len(corpus) // 16
    assert all((b["example_index"] >= 0).all() for b in one_epoch(dropped))


def test_shuffle_is_deterministic_per_epoch(corpus):
    def order(seed, epochs=2):
        iterator = BatchIterator(corpus, 8, 128, seed=seed, process_index=0, process_count=1)
        return [[b["example_index"].tolist() for b in one_epoch(iterator)] for _ in range(epochs)]

    first, second = order(0)
    assert order(0) == [first, second] and first != second and order(1)[0] != first
    ordered = BatchIterator(corpus, 8, 128, shuffle=False, process_index=0, process_count=1)
    assert [b["example_index"].tolist() for b in one_epoch(ordered)] == \
        [b["example_index"].tolist() for b in one_epoch(ordered)]


def test_resume_sees_the_same_batches(corpus):
    run = BatchIterator(corpus, 8, 128, seed=5, process_index=0, process_count=1)
    per_epoch = run.batches_per_epoch
    for _ in range(per_epoch - 3):
        next(run)
    state = json.loads(json.dumps(run.get_state()))
    expected = [next(run) for _ in range(8)]  # crosses into the next epoch
    assert run.get_state()["epoch"] == 1
    resumed = BatchIterator(corpus, 8, 128, seed=5, process_index=0, process_count=1)
    resumed.set_state(state)
    for want, got in zip(expected, [next(resumed) for _ in range(8)]):
        assert want.keys() == got.keys()
        for key in want:
            np.testing.assert_array_equal(want[key], got[key])
    with pytest.raises(ValueError):
        resumed.set_state({"epoch": 0, "index": per_epoch + 1})


def test_hosts_read_disjoint_slices_covering_the_data(corpus):
    hosts = [BatchIterator(corpus, 8, 128, seed=2, process_index=p, process_count=2) for p in range(2)]
    epochs = [one_epoch(h) for h in hosts]
    assert all(b["inputs"].shape[0] == 4 for e in epochs for b in e)
    assert [b["inputs"].shape for b in epochs[0]] == [b["inputs"].shape for b in epochs[1]]
    seen = [np.concatenate([b["example_index"] for b in e]) for e in epochs]
    seen = [s[s >= 0] for s in seen]
    assert not set(seen[0]) & set(seen[1])
    assert sorted(np.concatenate(seen)) == [e.index for e in corpus]
    single = one_epoch(BatchIterator(corpus, 8, 128, seed=2, process_index=0, process_count=1))
    np.testing.assert_array_equal(single[0]["example_index"],
                                  np.concatenate([epochs[0][0]["example_index"], epochs[1][0]["example_index"]]))
    with pytest.raises(ValueError, match="divisible"):
        BatchIterator(corpus, 9, 128, process_index=0, process_count=2)
