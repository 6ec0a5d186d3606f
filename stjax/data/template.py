"""The model's chat template, rendered to token ids the way the model saw it in alignment.

Text is rendered by `tokenizer.apply_chat_template` and then tokenized without added
special tokens: templates write their own BOS (Llama-3's `{{ bos_token }}`), so adding
one again would shift every position.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from stjax.data.records import DataError

PROBE = [{"role": "user", "content": "Hi"}]


def render_text(tokenizer, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool,
                template_kwargs: Mapping | None = None) -> str:
    return tokenizer.apply_chat_template(list(messages), tokenize=False,
                                         add_generation_prompt=add_generation_prompt,
                                         **dict(template_kwargs or {}))


def encode(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of rendered texts (batched: the fast tokenizer runs them in parallel)."""
    return list(tokenizer(list(texts), add_special_tokens=False)["input_ids"])


def render_ids(tokenizer, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = False,
               template_kwargs: Mapping | None = None) -> list[int]:
    """One conversation as the token ids the model reads (e.g. a generation prompt)."""
    text = render_text(tokenizer, messages, add_generation_prompt=add_generation_prompt,
                       template_kwargs=template_kwargs)
    return encode(tokenizer, [text])[0]


def assistant_header_ids(tokenizer, template_kwargs: Mapping | None = None) -> list[int]:
    """The ids `add_generation_prompt` appends (e.g. `<|im_start|>assistant\\n`).

    Losses over "assistant header + response" sequences (scoring a response with no
    prompt) need them. Empty for templates without a generation prompt (Llama-2 style).
    """
    bare = render_ids(tokenizer, PROBE, add_generation_prompt=False, template_kwargs=template_kwargs)
    with_header = render_ids(tokenizer, PROBE, add_generation_prompt=True, template_kwargs=template_kwargs)
    if with_header[:len(bare)] != bare:
        raise DataError("chat template problem: the render with add_generation_prompt=True does not "
                        "start with the render without it, so the assistant header is not a suffix")
    return with_header[len(bare):]


def special_ids(tokenizer) -> frozenset[int]:
    """Ids of special tokens: named ones and added tokens marked special (`<|im_end|>`)."""
    added = {i for i, token in tokenizer.added_tokens_decoder.items() if token.special}
    return frozenset(added | set(tokenizer.all_special_ids))
