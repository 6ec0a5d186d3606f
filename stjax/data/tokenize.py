"""Conversations -> token ids with an assistant-only loss mask, truncated at max_len.

Mask convention (next-token prediction): for an example's `tokens` [n], the model reads
inputs = tokens[:-1] and predicts targets = tokens[1:]; `loss_mask[t]` is 1 iff
targets[t] belongs to an assistant turn: the final response, which runs from the first
response token through the template's end-of-turn token (`<|im_end|>`, `<|eot_id|>`): the
last special token the template writes after the response, and (train_on="all", the
default) every earlier assistant turn, delimited the same way; with train_on="last"
earlier turns are context only. Whitespace a template writes after the end-of-turn token
(ChatML's "\\n") is dropped from the final turn, since generation stops at it.
`response_pos[t]` counts the final response's targets from 0 (-1 elsewhere): PACT's KL and
the losses that weight the first response tokens act on the final response.

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
    turns: tuple[tuple[int, int], ...] = ()  # token spans [start, end) of earlier assistant turns (targets)

    @property
    def loss_mask(self) -> np.ndarray:
        """bool [n - 1]: targets[t] is an assistant token (the final response or an earlier turn)."""
        t = np.arange(1, len(self.tokens))
        mask = t >= self.prompt_len
        for start, end in self.turns:
            mask |= (t >= start) & (t < end)
        return mask

    @property
    def response_pos(self) -> np.ndarray:
        """int32 [n - 1]: 0, 1, 2, ... over response targets, -1 over prompt targets."""
        pos = np.arange(1, len(self.tokens), dtype=np.int32) - self.prompt_len
        return np.where(pos >= 0, pos, -1).astype(np.int32)


@dataclass
class TokenizeStats:
    """What tokenization kept: `examples` kept (of which `truncated` cut at max_len),
    `dropped` with no target token left, kept `tokens` and `response_tokens` (assistant targets)."""

    examples: int = 0
    truncated: int = 0
    dropped: int = 0
    tokens: int = 0
    response_tokens: int = 0

    def __str__(self) -> str:
        return (f"{self.examples} examples ({self.truncated} truncated at max_len; {self.dropped} "
                f"dropped, no target token left), {self.tokens} tokens, "
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


def _render_pair(tokenizer, conversation: Conversation, messages: list[dict], upto: int,
                 template_kwargs) -> tuple[str, str]:
    """(messages[:upto] with the generation prompt, messages[:upto + 1]): the text before
    assistant turn `upto` and the text through it."""
    try:
        return (render_text(tokenizer, messages[:upto], add_generation_prompt=True, template_kwargs=template_kwargs),
                render_text(tokenizer, messages[:upto + 1], add_generation_prompt=False,
                            template_kwargs=template_kwargs))
    except jinja2.TemplateError as e:
        raise DataError(f"{conversation.origin or 'conversation'}: chat template error: {e}") from None


def _render(tokenizer, conversation: Conversation, template_kwargs) -> tuple[str, str]:
    prompt, full = _split(conversation)
    prompt_text, full_text = _render_pair(tokenizer, conversation, full, len(prompt), template_kwargs)
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


def _earlier_turns(conversations: Sequence[Conversation], tokenizer, full_ids: list[list[int]],
                   specials: frozenset[int], template_kwargs) -> list[list[tuple[int, int]]]:
    """Per conversation, the token spans [start, end) of its assistant turns before the final
    one, each rendered alone (generation prompt, then the turn through its end-of-turn
    token) and checked to be where the whole conversation has it."""
    jobs = []
    for ci, conversation in enumerate(conversations):
        messages = conversation.as_dicts()
        jobs += [(ci, turn, *_render_pair(tokenizer, conversation, messages, turn, template_kwargs))
                 for turn in range(1, len(messages) - 1) if messages[turn]["role"] == "assistant"]
    spans: list[list[tuple[int, int]]] = [[] for _ in conversations]
    if not jobs:
        return spans
    before_ids, through_ids = encode(tokenizer, [j[2] for j in jobs]), encode(tokenizer, [j[3] for j in jobs])
    for (ci, turn, _, _), before, through in zip(jobs, before_ids, through_ids):
        end = _response_end(through, len(before), specials)
        if through[:len(before)] != before or through[:end] != full_ids[ci][:end]:
            raise DataError(
                f"chat template problem ({conversations[ci].origin or f'example {ci}'}): assistant turn {turn} "
                "renders differently inside the conversation than on its own (templates that rewrite earlier "
                "turns, e.g. drop their reasoning), so its mask cannot be placed; set data.train_on: last")
        spans[ci].append((len(before), end))
    return spans


def tokenize_conversations(conversations: Sequence[Conversation], tokenizer, max_len: int, *,
                           template_kwargs: Mapping | None = None, train_on: str = "all"
                           ) -> tuple[list[TokenizedExample], TokenizeStats]:
    """Tokenize with the model's chat template; keep at most `max_len` tokens each.

    train_on: "all" assistant turns are targets, or only the "last" (earlier ones are
    context). Truncation keeps the start (the prompt and the first response tokens, the
    ones that matter most for safety); an example left without any target token is
    dropped and counted. `template_kwargs` reach the template (e.g. Qwen3's `enable_thinking`).
    """
    if train_on not in ("all", "last"):
        raise DataError(f"train_on: expected 'all' or 'last', got {train_on!r}")
    rendered = [_render(tokenizer, c, template_kwargs) for c in conversations]
    prompt_ids = encode(tokenizer, [p for p, _ in rendered])
    full_ids = encode(tokenizer, [f for _, f in rendered])
    specials = special_ids(tokenizer)
    turns = (_earlier_turns(conversations, tokenizer, full_ids, specials, template_kwargs) if train_on == "all"
             else [[] for _ in conversations])
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
        spans = tuple((start, min(stop, kept)) for start, stop in turns[index] if start < kept)
        if kept <= len(prompt) and not spans:
            stats.dropped += 1
            continue
        example = TokenizedExample(np.asarray(full[:kept], np.int32), min(len(prompt), kept), index, spans)
        stats.truncated += kept < end
        stats.examples += 1
        stats.tokens += kept
        stats.response_tokens += int(example.loss_mask.sum())
        examples.append(example)
    return examples, stats
