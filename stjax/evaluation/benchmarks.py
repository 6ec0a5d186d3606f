"""Benchmark items: prompts (and references) from local files, the Hub or TFDS.

Every benchmark becomes a list of `Item`s with stable ids (the row index in its source),
which key the generation cache. Known benchmarks carry their canonical source and size;
any of them, or a new one, can instead be read from a local JSON/JSONL/CSV file, which is
how machines without Hub access (and the tests) run them.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Literal

from stjax.data.records import DataError
from stjax.data.formats import record_to_conversation
from stjax.data.sources import read_records

Kind = Literal["safety", "sst2", "ag_news", "gsm8k"]
PROMPT_KEYS = ("prompt", "goal", "Goal", "forbidden_prompt", "question", "instruction")
REFERENCE_KEYS = ("reference", "answer", "label", "output", "response", "target")


@dataclasses.dataclass(frozen=True)
class Item:
    id: str
    prompt: str  # the user turn
    reference: str | None = None  # label word / GSM8K solution; None for safety prompts


@dataclasses.dataclass(frozen=True)
class HubSource:
    """A Hugging Face dataset, read with `datasets.load_dataset`; `keep` filters rows."""

    dataset: str
    split: str
    column: str
    config: str | None = None
    keep: tuple[str, object] | None = None  # (column, value) a row must have


@dataclasses.dataclass(frozen=True)
class TfdsSource:
    """A task of `stjax.data.sources.TFDS_TASKS` (prompts as in the PACT reference)."""

    name: str
    split: str


@dataclasses.dataclass(frozen=True)
class KnownBenchmark:
    kind: Kind
    source: HubSource | TfdsSource
    size: int | None  # rows in the source (after `keep`), where the benchmark fixes it
    limit: int | None = None  # default number of items evaluated


KNOWN: dict[str, KnownBenchmark] = {
    "advbench": KnownBenchmark("safety", HubSource("walledai/AdvBench", "train", "prompt"), 520),
    "harmbench": KnownBenchmark("safety", HubSource("walledai/HarmBench", "train", "prompt", "standard"), 200),
    "strongreject": KnownBenchmark("safety", HubSource("walledai/StrongREJECT", "train", "prompt"), 313),
    # the walledai mirror of JBB-Behaviors holds 100 harmful and 100 benign behaviors
    "jailbreakbench": KnownBenchmark(
        "safety", HubSource("walledai/JailbreakBench", "train", "prompt", keep=("subset", "harmful")), 100),
    "beavertails": KnownBenchmark(
        "safety", HubSource("PKU-Alignment/BeaverTails", "30k_test", "prompt", keep=("is_safe", False)), None,
        limit=1000),
    "sst2": KnownBenchmark("sst2", TfdsSource("glue/sst2", "validation"), 872),
    "ag_news": KnownBenchmark("ag_news", TfdsSource("ag_news_subset", "test"), 7600, limit=1000),
    "gsm8k": KnownBenchmark("gsm8k", TfdsSource("gsm8k", "test"), 1319),
}


# ----------------------------------------------------------------------------- local files
def read_rows(path: str | Path) -> list[dict]:
    """Records of a .jsonl, .json (a list) or .csv (header row) file."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: benchmark file not found")
    return [record for record, _, _ in read_records(path)]


def row_to_item(row: object, item_id: str) -> Item:
    """A chat-shaped record (as training reads it) or a prompt-only one.

    Chat records give the last user turn as the prompt and the final assistant turn as the
    reference, so the toy and PACT-reference SST-2 files score against their labels.
    """
    try:
        messages = record_to_conversation(row).messages
    except ValueError:
        if isinstance(row, dict):
            prompt = next((row[k] for k in PROMPT_KEYS if isinstance(row.get(k), str)), None)
            if prompt is not None:
                reference = next((row[k] for k in REFERENCE_KEYS if row.get(k) is not None), None)
                return Item(item_id, prompt, None if reference is None else str(reference))
        raise ValueError(f"expected a chat record or one of the keys {', '.join(PROMPT_KEYS)}") from None
    users = [m for m in messages if m.role == "user"]
    reference = messages[-1].content if messages[-1].role == "assistant" else None
    return Item(item_id, users[-1].content, reference)


def local_items(path: str | Path) -> list[Item]:
    items = []
    for index, row in enumerate(read_rows(path)):
        try:
            items.append(row_to_item(row, str(index)))
        except ValueError as e:
            raise DataError(f"{path}: record {index}: {e}") from None
    return items


# ----------------------------------------------------------------------------- remote sources
def hub_items(source: HubSource) -> list[Item]:
    try:
        import datasets
    except ImportError:
        raise DataError(f"Hub benchmark {source.dataset} needs the 'datasets' package (pip install datasets), "
                        "or give the benchmark a local 'path'") from None
    try:
        rows = datasets.load_dataset(source.dataset, source.config, split=source.split)
    except Exception as e:  # noqa: BLE001 -- offline, gated, renamed: one line, not a network traceback
        raise DataError(f"could not load {source.dataset} ({type(e).__name__}: {e}); "
                        "give the benchmark a local 'path' instead") from None
    if source.keep is not None:
        column, value = source.keep
        rows = [row for row in rows if row[column] == value]
    return [Item(str(i), row[source.column]) for i, row in enumerate(rows)]


def tfds_items(source: TfdsSource) -> list[Item]:
    from stjax.data.sources import tfds_conversations

    try:
        conversations = tfds_conversations(source.name, source.split)
    except ImportError as e:
        raise DataError(str(e)) from None
    return [Item(str(i), c.messages[0].content, c.messages[-1].content) for i, c in enumerate(conversations)]


def load_items(name: str, path: str | None, limit: int | None) -> list[Item]:
    """The first `limit` items (default: the known benchmark's) of a local file or of a known
    benchmark's canonical source."""
    known = KNOWN.get(name)
    if path is not None:
        items = local_items(path)
    else:
        items = hub_items(known.source) if isinstance(known.source, HubSource) else tfds_items(known.source)
        if known.size is not None and len(items) != known.size:  # a changed mirror, or a stale filter
            warnings.warn(f"{name}: {len(items)} rows in {known.source}, the published benchmark has {known.size}")
    if limit is None and known is not None:
        limit = known.limit
    return items[:limit] if limit is not None else items
