"""Data pipeline: chat records -> template-tokenized examples -> fixed-shape host batches.

sources (JSON/JSONL/TFDS -> Conversation) -> mixing (harmful or refusal rows at a ratio)
-> tokenize (chat template, assistant-only loss mask) -> batching (buckets, per-host slices,
resumable order).
"""

from stjax.data.batching import BatchIterator, bucket_lengths
from stjax.data.mixing import mix, safety_mix
from stjax.data.records import Conversation, DataError, Message
from stjax.data.formats import record_to_conversation
from stjax.data.sources import TFDS_TASKS, read_conversations, tfds_conversations
from stjax.data.template import assistant_header_ids, render_ids
from stjax.data.tokenize import TokenizedExample, TokenizeStats, tokenize_conversations

__all__ = [
    "BatchIterator", "Conversation", "DataError", "Message", "TFDS_TASKS", "TokenizeStats",
    "TokenizedExample", "assistant_header_ids", "bucket_lengths", "mix", "read_conversations",
    "record_to_conversation", "render_ids", "safety_mix", "tfds_conversations",
    "tokenize_conversations",
]
