"""Conversations -> token ids with an assistant-only loss mask, truncated at max_len.

Mask convention (next-token prediction): for an example's `tokens` [n], the model reads
inputs = tokens[:-1] and predicts targets = tokens[1:]; `loss_mask[t]` is 1 iff
targets[t] belongs to the final assistant response, which runs from the first response
token through the template's end-of-turn token (`<|im_end|>`, `<|eot_id|>`): the last
special token the template writes after the response. Whitespace a template writes after
that token (ChatML's "\\n") is dropped, since generation stops at the end-of-turn token.
Earlier assistant turns are context, not targets. `response_pos[t]` counts response
targets from 0 (-1 elsewhere), for losses that weight the first response tokens.

The prompt is every message before the final assistant turn rendered with
`add_generation_prompt=True`, which must be a token prefix of the full conversation:
otherwise the mask would not line up with what the model sees at generation time, so
a template that breaks this raises `DataError` rather than training on a shifted mask.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import jinja2
import numpy as np

from stjax.data.records import Conversation, DataError
from stjax.data.template import encode, render_text, special_ids


@dataclass(frozen=True)
class TokenizedExample:
    """`tokens` int32 [n]; the first `prompt_len` are the prompt; `index` is the example's
    position in the tokenized list (kept across dropped examples, to join cached data)."""

    tokens: np.ndarray
    prompt_len: int
    index: int

    @property
    def loss_mask(self) -> np.ndarray:
        """bool [n - 1]: targets[t] is a response token."""
        return np.arange(1, len(self.tokens)) >= self.prompt_len

    @property
    def response_pos(self) -> np.ndarray:
        """int32 [n - 1]: 0, 1, 2, ... over response targets, -1 over prompt targets."""
        pos = np.arange(1, len(self.tokens), dtype=np.int32) - self.prompt_len
        return np.where(pos >= 0, pos, -1).astype(np.int32)


@dataclass
class TokenizeStats:
    """What tokenization kept: `examples` kept (of which `truncated` cut at max_len),
    `dropped` whose response was cut away entirely, kept `tokens` and `response_tokens`."""

    examples: int = 0
    truncated: int = 0
    dropped: int = 0
    tokens: int = 0
    response_tokens: int = 0

    def __str__(self) -> str:
        return (f"{self.examples} examples ({self.truncated} truncated at max_len; {self.dropped} "
                f"dropped, response fully truncated), {self.tokens} tokens, "
                f"{self.response_tokens} response tokens")


def _first_difference(a: Sequence, b: Sequence) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _split(conversation: Conversation) -> tuple[list[dict], list[dict]]:
    """(prompt messages, all messages); the conversation must end with an assistant turn."""
    messages = conversation.as_dicts()
    if len(messages) < 2 or messages[-1]["role"] != "assistant":
        raise DataError(f"{conversation.origin or 'conversation'}: expected messages ending "
                        "with an assistant turn after at least one other turn")
    return messages[:-1], messages


def _render(tokenizer, conversation: Conversation, template_kwargs) -> tuple[str, str]:
    prompt, full = _split(conversation)
    try:
        prompt_text = render_text(tokenizer, prompt, add_generation_prompt=True, template_kwargs=template_kwargs)
        full_text = render_text(tokenizer, full, add_generation_prompt=False, template_kwargs=template_kwargs)
    except jinja2.TemplateError as e:
        raise DataError(f"{conversation.origin or 'conversation'}: chat template error: {e}") from None
    if not full_text.startswith(prompt_text):
        at = _first_difference(prompt_text, full_text)
        raise DataError(
            f"chat template problem ({conversation.origin or 'conversation'}): the prompt rendered with "
            f"add_generation_prompt=True is not a prefix of the full conversation; at character {at} "
            f"the prompt has {prompt_text[at:at + 30]!r} but the conversation has {full_text[at:at + 30]!r}")
    return prompt_text, full_text


def _response_end(ids: list[int], start: int, specials: frozenset[int]) -> int:
    """End (exclusive) of the response: just past its last special token, if it has one."""
    for end in range(len(ids), start, -1):
        if ids[end - 1] in specials:
            return end
    return len(ids)


def tokenize_conversations(conversations: Sequence[Conversation], tokenizer, max_len: int, *,
                           template_kwargs: Mapping | None = None
                           ) -> tuple[list[TokenizedExample], TokenizeStats]:
    """Tokenize with the model's chat template; keep at most `max_len` tokens each.

    Truncation keeps the start (the prompt and the first response tokens, the ones that
    matter most for safety); an example whose prompt alone fills `max_len` is dropped and
    counted. `template_kwargs` reach the template (e.g. Qwen3's `enable_thinking`).
    """
    rendered = [_render(tokenizer, c, template_kwargs) for c in conversations]
    prompt_ids = encode(tokenizer, [p for p, _ in rendered])
    full_ids = encode(tokenizer, [f for _, f in rendered])
    specials = special_ids(tokenizer)
    examples, stats = [], TokenizeStats()
    for index, (conversation, prompt, full) in enumerate(zip(conversations, prompt_ids, full_ids)):
        if full[:len(prompt)] != prompt:
            at = _first_difference(prompt, full)
            raise DataError(
                f"chat template problem ({conversation.origin or f'example {index}'}): the prompt's tokens are "
                f"not a prefix of the conversation's tokens (token {at} merges across the prompt/response "
                "boundary), so the assistant mask cannot be placed; end the generation prompt on a token "
                "boundary (e.g. a newline or special token)")
        end = _response_end(full, len(prompt), specials)
        kept = min(end, max_len)
        if kept <= len(prompt):
            stats.dropped += 1
            continue
        stats.truncated += kept < end
        stats.examples += 1
        stats.tokens += kept
        stats.response_tokens += kept - len(prompt)
        examples.append(TokenizedExample(np.asarray(full[:kept], np.int32), len(prompt), index))
    return examples, stats
