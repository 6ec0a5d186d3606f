"""Readers that turn chat-shaped JSON, JSONL, CSV and parquet files and TFDS task sets
into `Conversation`s (the record shapes: stjax.data.formats).

File errors name the file, the line (JSONL, or where JSON fails to parse) or the record
index (JSON lists), and the shape that was expected, on one line, so a broken row in a
50k-row file is found at once.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from stjax.errors import MissingExtra
from stjax.data.formats import records_to_conversations
from stjax.data.records import Conversation, DataError

def read_conversations(path: str | Path, *, without_input: bool = False,
                       columns: Mapping[str, str] | None = None) -> list[Conversation]:
    """The records of a .jsonl, .json, .csv or .parquet file (`read_records`), keys renamed
    by `columns` first.

    without_input keeps only {instruction, output} records that have no `input`: in the
    PACT reference mixes (sst2_5k_p_0.1.json, ...) those are the harmful rows, which makes
    the harmful half of a mix reusable with another task (GSM8K).
    """
    return records_to_conversations(read_records(path), columns=columns, without_input=without_input)


def read_records(path: str | Path) -> list[tuple[object, str, str]]:
    """(record, origin, where-for-errors) of every record of a .jsonl (one a line, blank lines
    skipped), .csv (a header row), .parquet (a row a record) or .json (a list) file; malformed
    JSON is a DataError naming the file and line."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: a directory, not a data file (expected .json, .jsonl, .csv or .parquet; "
                        "a Hugging Face dataset folder goes in `hf:`)")
    if path.suffix == ".parquet":
        return _parquet_records(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte {e.start}: {e.object[e.start:e.start + 1]!r}); "
                        "save the file as UTF-8") from None
    if path.suffix == ".csv":  # quoted fields may span lines
        rows = csv.DictReader(io.StringIO(text))
        return [(row, f"{path.name}#{i}", f"{path}: row {i + 1}") for i, row in enumerate(rows)]
    return list(_jsonl_records(path, text) if path.suffix == ".jsonl" else _json_records(path, text))


def _parquet_records(path: Path) -> list[tuple[object, str, str]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise MissingExtra(f"{path}: parquet files need pyarrow: pip install 'stjax[datasets]' ({e})") from e
    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow's errors (ArrowInvalid, OSError) on a file that is not parquet
        raise DataError(f"{path}: not a readable parquet file ({str(e).splitlines()[0][:160]})") from None
    return [(row, f"{path.name}#{i}", f"{path}: row {i}") for i, row in enumerate(rows)]


def _json_records(path: Path, text: str) -> Iterator[tuple[object, str, str]]:
    """(record, origin, where-for-errors) of a .json list."""
    try:
        records = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg}, column {e.colno})") from None
    if not isinstance(records, list):
        raise DataError(f"{path}:1: expected a JSON list of records, got {type(records).__name__}")
    for index, record in enumerate(records):
        yield record, f"{path.name}#{index}", f"{path}: record {index}"


def _jsonl_records(path: Path, text: str) -> Iterator[tuple[object, str, str]]:
    """(record, origin, where-for-errors) of a .jsonl file, blank lines skipped."""
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: invalid JSON ({e.msg}, column {e.colno})") from None
        yield record, f"{path.name}:{lineno}", f"{path}:{lineno}"


SST2_PROMPT = "Analyze the sentiment of the input, and respond only positive or negative"
AG_NEWS_PROMPT = ("Categorize the news article given in the input into one of the 4 categories:"
                  "\n\nWorld\nSports\nBusiness\nSci/Tech\n")
SST2_LABELS = ("negative", "positive")
AG_NEWS_LABELS = ("World", "Sports", "Business", "Sci/Tech")


def _str(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _label(names: tuple[str, ...], row: Mapping) -> str:
    label = int(row["label"])
    if not 0 <= label < len(names):  # GLUE test splits carry label -1
        raise ValueError(f"label {label} is not one of 0..{len(names) - 1} (unlabelled split?)")
    return names[label]


def _sst2(row: Mapping) -> tuple[str, str]:
    return f"{SST2_PROMPT} {_str(row['sentence'])}", _label(SST2_LABELS, row)


def _ag_news(row: Mapping) -> tuple[str, str]:
    article = f"{_str(row['title'])} {_str(row['description'])}"
    return f"{AG_NEWS_PROMPT} {article}", _label(AG_NEWS_LABELS, row)


def _gsm8k(row: Mapping) -> tuple[str, str]:
    return _str(row["question"]), _str(row["answer"])


TFDS_TASKS: dict[str, Callable[[Mapping], tuple[str, str]]] = {
    "glue/sst2": _sst2,
    "ag_news_subset": _ag_news,
    "gsm8k": _gsm8k,
}
"""TFDS name -> row to (user prompt, assistant target), prompts as in the PACT reference."""


def tfds_conversations(name: str, split: str = "train", *, data_dir: str | None = None) -> list[Conversation]:
    """A TFDS task set as single-turn conversations, through `tfds.data_source`.

    `data_source` reads the prepared ArrayRecord files by random access, so neither
    TensorFlow nor a tf.data pipeline is needed.
    """
    if name not in TFDS_TASKS:
        raise DataError(f"unknown TFDS task {name!r}; known: {', '.join(TFDS_TASKS)}")
    try:
        import tensorflow_datasets as tfds
        import tensorflow_datasets.text  # registers glue and gsm8k
    except ImportError as e:
        raise MissingExtra(f"TFDS sources need tensorflow-datasets: pip install 'stjax[tfds]' ({e})") from e
    source = tfds.data_source(name, split=split, data_dir=data_dir)
    convert = TFDS_TASKS[name]
    conversations = []
    for index in range(len(source)):
        origin = f"{name}:{split}#{index}"
        try:
            conversations.append(Conversation.single_turn(*convert(source[index]), origin))
        except ValueError as e:
            raise DataError(f"{origin}: {e}") from None
    return conversations
