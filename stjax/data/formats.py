"""The record shapes fine-tuning data comes in, each turned into a `Conversation`.

Accepted, in this order of precedence:
- `messages`: [{role, content}, ...] (OpenAI / TRL conversational), any number of turns;
- `conversations`: [{from, value}, ...] (ShareGPT: human / gpt / system);
- `prompt` + `completion` (TRL prompt-completion): two strings, or two message lists
  (the conversational form: the prompt's turns, then the completion's assistant turns);
- `instruction` + `output` with an optional `input` (Alpaca; the PACT reference's sets:
  the user turn is `instruction + " " + input`, so the reference prompts are reproduced);
- `prompt` + `response`, `input` + `output`.
`columns` renames a source's keys first (e.g. {question: prompt, answer: completion}).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from stjax.data.records import Conversation, DataError, Message

EXPECTED = ("expected an object with 'messages', 'conversations' (ShareGPT), 'prompt' and 'completion', "
            "'instruction' and 'output', 'prompt' and 'response', or 'input' and 'output'")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "model": "assistant", "chatgpt": "assistant", "bing": "assistant", "bard": "assistant",
                  "system": "system"}


def rename_columns(record: object, columns: Mapping[str, str] | None) -> object:
    """The record with source keys renamed to stjax's (missing source keys are an error)."""
    if not columns or not isinstance(record, Mapping):
        return record
    missing = [key for key in columns if key not in record]
    if missing:
        raise ValueError(f"columns: no key {missing[0]!r} in the record (keys: {sorted(record)})")
    renamed = {k: v for k, v in record.items() if k not in columns}
    renamed.update({new: record[old] for old, new in columns.items()})
    return renamed


def records_to_conversations(records: Iterable[tuple[object, str, str]], *, columns: Mapping[str, str] | None = None,
                             without_input: bool = False) -> list[Conversation]:
    """(record, origin, where-for-errors) triples -> conversations, keys renamed by `columns`
    first; `without_input` keeps only {instruction, output} records without `input`. A bad
    record is a DataError naming where it is."""
    conversations = []
    for record, origin, where in records:
        try:
            record = rename_columns(record, columns)
            if without_input and not has_no_input(record):
                continue
            conversations.append(record_to_conversation(record, origin))
        except ValueError as e:
            raise DataError(f"{where}: {e}") from None
    return conversations


def has_no_input(record: object) -> bool:
    """An {instruction, output} record without `input`: a PACT mix's harmful rows."""
    return isinstance(record, Mapping) and "instruction" in record and not record.get("input")


def _text(record: Mapping, key: str) -> str:
    value = record[key]
    if not isinstance(value, str):
        raise ValueError(f"expected '{key}' to be a string, got {type(value).__name__}")
    return value


def _messages(turns: object, key: str, role_key: str = "role", content_key: str = "content",
              roles: Mapping[str, str] | None = None) -> tuple[Message, ...]:
    if not isinstance(turns, list) or not turns:
        raise ValueError(f"expected '{key}' to be a non-empty list of {{{role_key}, {content_key}}} objects")
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, Mapping) or role_key not in turn or content_key not in turn:
            raise ValueError(f"expected {key}[{i}] to be an object with '{role_key}' and '{content_key}'")
        role = turn[role_key]
        if roles is not None:
            if role not in roles:
                raise ValueError(f"{key}[{i}].{role_key}: expected one of {', '.join(sorted(roles))}, got {role!r}")
            role = roles[role]
        try:
            messages.append(Message(role, turn[content_key]))
        except ValueError as e:
            raise ValueError(f"{key}[{i}]: {e}") from None
    return tuple(messages)


def _prompt_completion(record: Mapping, origin: str) -> Conversation:
    prompt, completion = record["prompt"], record["completion"]
    if isinstance(prompt, str) and isinstance(completion, str):
        return Conversation.single_turn(prompt, completion, origin)
    if isinstance(prompt, list) and isinstance(completion, list):
        answer = _messages(completion, "completion")
        if any(m.role != "assistant" for m in answer):
            raise ValueError("expected 'completion' to hold assistant turns only")
        return Conversation(_messages(prompt, "prompt") + answer, origin)
    raise ValueError("expected 'prompt' and 'completion' to be two strings or two lists of {role, content} "
                     f"objects, got {type(prompt).__name__} and {type(completion).__name__}")


def record_to_conversation(record: object, origin: str = "", columns: Mapping[str, str] | None = None
                           ) -> Conversation:
    """One record in any supported shape; raises ValueError saying what was expected."""
    record = rename_columns(record, columns)
    if not isinstance(record, Mapping):
        raise ValueError(f"{EXPECTED}, got {type(record).__name__}")
    if "messages" in record:
        return Conversation(_messages(record["messages"], "messages"), origin)
    if "conversations" in record:
        turns = record["conversations"]
        if isinstance(turns, list) and turns and all(isinstance(t, Mapping) and "role" in t for t in turns):
            return Conversation(_messages(turns, "conversations"), origin)
        return Conversation(_messages(turns, "conversations", "from", "value", SHAREGPT_ROLES), origin)
    if "prompt" in record and "completion" in record:
        return _prompt_completion(record, origin)
    if "instruction" in record and "output" in record:
        prompt = _text(record, "instruction")
        if record.get("input"):
            prompt = f"{prompt} {_text(record, 'input')}"
        return Conversation.single_turn(prompt, _text(record, "output"), origin)
    for user, assistant in (("prompt", "response"), ("input", "output")):
        if user in record and assistant in record:
            return Conversation.single_turn(_text(record, user), _text(record, assistant), origin)
    raise ValueError(f"{EXPECTED}, got keys {sorted(record)}")
