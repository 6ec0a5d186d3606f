"""How many examples and how wide a batch a config's local data gives, without tokenizing."""

from __future__ import annotations

from pathlib import Path

TFDS_SPLIT_SIZES = {  # the published sizes of the TFDS task sets stjax reads (stjax.data.sources)
    ("glue/sst2", "train"): 67349, ("glue/sst2", "validation"): 872,
    ("ag_news_subset", "train"): 120000, ("ag_news_subset", "test"): 7600,
    ("gsm8k", "train"): 7473, ("gsm8k", "test"): 1319,
}


def count_examples(config) -> int | None:
    """Training examples (after harmful/safety mixing) when every training source is a local
    file or a TFDS set of known size."""
    from stjax.data.sources import read_conversations

    def rows(source):
        if source.tfds is not None:
            n = TFDS_SPLIT_SIZES.get((source.tfds, source.split))
        elif Path(source.path).is_file():
            n = len(read_conversations(source.path, without_input=source.without_input))
        else:
            return None
        return min(n, source.limit) if n is not None and source.limit is not None else n

    counts = [rows(s) for s in config.data.train]
    if any(c is None for c in counts):
        return None
    n = sum(counts)
    for ratio, source in ((config.data.harmful_ratio, config.data.harmful), (config.data.safety_ratio, config.data.safety)):
        if source is not None and ratio > 0:
            n += round(ratio * n / (1.0 - ratio))
    return n


def estimate_seq_len(config, template_tokens: int = 40, chars_per_token: float = 4.0) -> float | None:
    """Mean padded batch width: each example's length estimated from its characters, rounded
    up to its bucket (the batch iterator groups examples by bucket)."""
    from stjax.data.batching import bucket_lengths
    from stjax.data.sources import read_conversations

    widths = []
    buckets = bucket_lengths(config.data.max_len, config.data.buckets)
    for source in config.data.train:
        if source.path is None:
            return None
        path = source.path
        if not Path(path).is_file():
            return None
        for c in read_conversations(path)[: source.limit]:
            n = template_tokens + sum(len(m.content) for m in c.messages) / chars_per_token
            widths.append(next((b for b in buckets if b >= n), buckets[-1]))
    return sum(widths) / len(widths) if widths else None
