"""The record shapes fine-tuners use (TRL, ShareGPT, OpenAI messages), parquet and CSV files,
Hugging Face `datasets` sources and the chat-template override, all offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stjax.data import Conversation, DataError, Message, read_conversations, tokenize_conversations
from stjax.data.sections import SourceSection
from chat_tokenizers import CHATML, bpe, chatml, wrap  # noqa: F401 (fixtures)

SYSTEM, USER, ASSISTANT = Message("system", "S"), Message("user", "U"), Message("assistant", "A")
MULTI = (USER, ASSISTANT, Message("user", "U2"), Message("assistant", "A2"))
SHAPES = [  # record, the conversation it must give
    ({"prompt": "U", "completion": "A"}, (USER, ASSISTANT)),
    ({"prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}],
      "completion": [{"role": "assistant", "content": "A"}]}, (SYSTEM, USER, ASSISTANT)),
    ({"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "U"},
                        {"from": "gpt", "value": "A"}]}, (SYSTEM, USER, ASSISTANT)),
    ({"conversations": [{"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}]}, (USER, ASSISTANT)),
    ({"messages": [{"role": m.role, "content": m.content} for m in MULTI]}, MULTI),
    ({"instruction": "U", "output": "A"}, (USER, ASSISTANT)),
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_every_record_shape_gives_its_conversation(tmp_path):
    got = read_conversations(write_jsonl(tmp_path / "a.jsonl", [r for r, _ in SHAPES]))
    assert [c.messages for c in got] == [want for _, want in SHAPES]


@pytest.mark.parametrize("record,message", [
    ({"prompt": "U", "completion": [{"role": "assistant", "content": "A"}]}, "two strings or two lists"),
    ({"prompt": [{"role": "user", "content": "U"}], "completion": [{"role": "user", "content": "A"}]},
     "assistant turns only"),
    ({"conversations": [{"from": "robot", "value": "U"}]}, "conversations[0].from: expected one of"),
    ({"conversations": [{"from": "human"}]}, "expected conversations[0] to be an object with 'from' and 'value'"),
    ({"messages": [{"role": "user", "content": 3}]}, "messages[0]: content must be a string"),
    ({"question": "U"}, "expected an object with 'messages', 'conversations' (ShareGPT), 'prompt' and 'completion'"),
])
def test_bad_records_name_the_file_line_and_shape(tmp_path, record, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "U", "completion": "A"}, record])
    with pytest.raises(DataError, match="bad.jsonl:2: ") as e:
        read_conversations(path)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_parquet_and_csv_with_column_mapping_equal_jsonl(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    rows = [{"question": f"q{i}", "answer": f"a{i}", "id": i} for i in range(5)]
    columns = {"question": "prompt", "answer": "completion"}
    want = [Conversation.single_turn(f"q{i}", f"a{i}").messages for i in range(5)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "t.parquet")
    (tmp_path / "t.csv").write_text("question,answer,id\n" + "".join(f'"q{i}","a{i}",{i}\n' for i in range(5)))
    for name in ("t.parquet", "t.csv"):
        assert [c.messages for c in read_conversations(tmp_path / name, columns=columns)] == want
    with pytest.raises(DataError, match=r"t.csv: row 1: columns: no key 'query'"):
        read_conversations(tmp_path / "t.csv", columns={"query": "prompt"})
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match="broken.parquet: not a readable parquet file"):
        read_conversations(tmp_path / "broken.parquet")


def test_hf_datasets_source_from_a_dataset_folder(tmp_path):
    pytest.importorskip("datasets")
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    from stjax.data.pipeline import load_source

    data = tmp_path / "my-dataset" / "data"  # the layout of a Hub dataset repository
    data.mkdir(parents=True)
    splits = {"train": [{"q": f"train {i}", "a": "yes"} for i in range(6)], "test": [{"q": "held out", "a": "no"}]}
    for split, rows in splits.items():
        pq.write_table(pa.Table.from_pylist(rows), data / f"{split}-00000-of-00001.parquet")
    source = SourceSection(hf=str(tmp_path / "my-dataset"), split="test", columns={"q": "prompt", "a": "completion"})
    source.check("data.train[0]")
    assert [c.messages for c in load_source(source)] == [Conversation.single_turn("held out", "no").messages]
    train = load_source(SourceSection(hf=str(tmp_path / "my-dataset"), columns={"q": "prompt", "a": "completion"},
                                      limit=4))
    assert [c.messages[0].content for c in train] == [f"train {i}" for i in range(4)]
    assert train[0].origin.endswith(":train#0")
    with pytest.raises(DataError, match=r"data source hf: .*my-dataset:nope: cannot be loaded"):
        load_source(SourceSection(hf=str(tmp_path / "my-dataset"), split="nope"))
    with pytest.raises(DataError, match=r"my-dataset:train#0: columns: no key 'question'"):
        load_source(SourceSection(hf=str(tmp_path / "my-dataset"), columns={"question": "prompt"}))


def test_chat_template_override_for_a_tokenizer_without_one(tmp_path, bpe):
    from stjax.models.sections import chat_template_text, load_tokenizer

    bare = wrap(bpe, None)
    folder = tmp_path / "tok"
    bare.save_pretrained(folder)
    with pytest.raises(Exception, match="no chat_template: use an instruct model's tokenizer or set model.chat_template"):
        load_tokenizer(str(folder))
    (tmp_path / "t.jinja").write_text(CHATML)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHATML}))
    conversation = [Conversation.single_turn("hi", "positive")]
    want, _ = tokenize_conversations(conversation, wrap(bpe, CHATML), 64)
    for setting in (CHATML, str(tmp_path / "t.jinja"), str(tmp_path / "tokenizer_config.json")):
        tokenizer = load_tokenizer(str(folder), setting)
        got, _ = tokenize_conversations(conversation, tokenizer, 64)
        assert got[0].tokens.tolist() == want[0].tokens.tolist() and got[0].prompt_len == want[0].prompt_len
    with pytest.raises(FileNotFoundError, match="neither a Jinja template nor an existing file"):
        chat_template_text(str(tmp_path / "missing.jinja"))
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(Exception, match="expected a JSON object with a 'chat_template' string"):
        chat_template_text(str(tmp_path / "other.json"))
