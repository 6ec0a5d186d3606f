"""The chat record every source produces and every later stage consumes, and the data error."""

from __future__ import annotations

from dataclasses import dataclass

from stjax.errors import UserError

ROLES = ("system", "user", "assistant")


class DataError(UserError):
    """Bad input data or an unusable chat template; the message is one line that says where."""


@dataclass(frozen=True)
class Message:
    role: str
    content: str

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, got {self.role!r}")
        if not isinstance(self.content, str):
            raise ValueError(f"content must be a string, got {type(self.content).__name__}")


@dataclass(frozen=True)
class Conversation:
    """Messages in order; `origin` ("file.json#12", "glue/sst2:train#7") names it in errors."""

    messages: tuple[Message, ...]
    origin: str = ""

    @classmethod
    def single_turn(cls, user: str, assistant: str, origin: str = "") -> Conversation:
        return cls((Message("user", user), Message("assistant", assistant)), origin)

    def as_dicts(self) -> list[dict[str, str]]:
        """The {role, content} list that `tokenizer.apply_chat_template` takes."""
        return [{"role": m.role, "content": m.content} for m in self.messages]
