"""The training config's data section -> tokenized examples and their batch iterator."""

from __future__ import annotations

import dataclasses

from stjax.data.batching import BatchIterator
from stjax.data.packing import PackedBatchIterator
from stjax.data.mixing import mix
from stjax.data.records import Conversation, DataError, Message
from stjax.data.sources import read_conversations, tfds_conversations
from stjax.data.template import assistant_header_ids
from stjax.data.tokenize import TokenizedExample, TokenizeStats, tokenize_conversations


@dataclasses.dataclass
class TrainingData:
    examples: list[TokenizedExample]
    stats: TokenizeStats
    batches: BatchIterator
    header_ids: list[int]  # the template's assistant header (PACT's response-only sequences)


def load_source(source) -> list[Conversation]:
    """A SourceSection (local file, TFDS name or Hugging Face dataset) -> conversations, first `limit`."""
    if source.path:
        rows = read_conversations(source.path, without_input=source.without_input, columns=source.columns)
    elif source.hf:
        from stjax.data.hf_datasets import hf_conversations

        rows = hf_conversations(source.hf, split=source.split, subset=source.subset, revision=source.revision,
                                columns=source.columns, without_input=source.without_input)
    else:
        rows = tfds_conversations(source.tfds, source.split)
    return rows[: source.limit] if source.limit is not None else rows


def with_system_prompt(conversations: list[Conversation], prompt: str | None) -> list[Conversation]:
    if prompt is None:
        return conversations
    system = Message("system", prompt)
    return [dataclasses.replace(c, messages=(system, *c.messages)) for c in conversations]


def _tokenized(key: str, conversations: list[Conversation], tokenizer, data) -> tuple[list[TokenizedExample],
                                                                                   TokenizeStats]:
    """Tokenized examples, or one line saying why none is left (an empty source, or max_len)."""
    if not conversations:
        raise DataError(f"{key}: the sources hold no conversation (empty files or limit 0?)")
    examples, stats = tokenize_conversations(conversations, tokenizer, data.max_len, train_on=data.train_on)
    if not examples:
        raise DataError(f"{key}: no example left after tokenization: all {stats.dropped} of {len(conversations)} "
                        f"have no target token within data.max_len={data.max_len} (their prompts fill it); "
                        "raise data.max_len")
    return examples, stats


def build_eval_data(config, tokenizer) -> TrainingData | None:
    """The validation sets (data.eval) tokenized like the training data, in a fixed order; None without any."""
    data = config.data
    if not data.eval:
        return None
    conversations = with_system_prompt([row for source in data.eval for row in load_source(source)], data.system_prompt)
    examples, stats = _tokenized("data.eval", conversations, tokenizer, data)
    batches = BatchIterator(examples, config.train.batch_size, data.max_len, buckets=data.buckets, shuffle=False,
                            loss_index=data.gather_loss_positions)
    return TrainingData(examples, stats, batches, assistant_header_ids(tokenizer))


def build_training_data(config, tokenizer) -> TrainingData:
    data = config.data
    conversations = [row for source in data.train for row in load_source(source)]
    if data.harmful is not None and data.harmful_ratio > 0:
        conversations = mix(conversations, load_source(data.harmful), data.harmful_ratio, seed=data.mix_seed)
    if data.safety is not None and data.safety_ratio > 0:
        conversations = mix(conversations, load_source(data.safety), data.safety_ratio, seed=data.mix_seed + 1)
    conversations = with_system_prompt(conversations, data.system_prompt)
    examples, stats = _tokenized("data.train", conversations, tokenizer, data)
    if data.packing:
        batches = PackedBatchIterator(examples, config.train.batch_size, data.max_len, seed=config.train.seed,
                                      loss_index=data.gather_loss_positions)
    else:
        batches = BatchIterator(examples, config.train.batch_size, data.max_len, buckets=data.buckets,
                                seed=config.train.seed, loss_index=data.gather_loss_positions)
    return TrainingData(examples, stats, batches, assistant_header_ids(tokenizer))
