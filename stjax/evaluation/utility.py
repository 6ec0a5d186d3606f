"""Task scoring of free-form outputs: SST-2 labels, AG News categories, GSM8K numbers.

The rules follow the fine-tuning-attack literature (Vaccine, Lisa, Booster, PACT) so that
accuracies are comparable: SST-2 demands the bare label, AG News only that the label word
appears, GSM8K compares the final number.
"""

from __future__ import annotations

import re
from collections.abc import Callable

AG_NEWS_ALIASES = {
    "World": ("world",),
    "Sports": ("sports",),
    "Business": ("business",),
    "Sci/Tech": ("sci/tech", "sci", "tech", "technology"),
}
# "1,234.5" is one number; "$" and a sentence's final period are not part of it; "3-4" is 3 and 4.
_NUMBER = re.compile(r"(?:(?<!\w)-)?(?:\$\s?)?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?")
_ANSWER_MARKERS = re.compile(r"####|the final answer is", re.IGNORECASE)


def sst2_correct(output: str, label: str) -> bool:
    """Correct only when the whole stripped output is the label (any case)."""
    return output.strip().lower() == label.strip().lower()


def ag_news_correct(output: str, label: str) -> bool:
    """Correct when the label, or an alias of it, appears as a word (any case)."""
    if label not in AG_NEWS_ALIASES:
        raise ValueError(f"unknown AG News label {label!r}; expected one of {list(AG_NEWS_ALIASES)}")
    text = output.lower()
    return any(re.search(rf"(?<!\w){re.escape(alias)}(?!\w)", text) for alias in AG_NEWS_ALIASES[label])


def final_number(text: str) -> float | None:
    """The number after the first "####" or "The final answer is", else the last number."""
    marker = _ANSWER_MARKERS.search(text)
    if marker:
        found = _NUMBER.search(text, marker.end())
        if found:
            return _to_float(found.group())
    numbers = _NUMBER.findall(text)
    return _to_float(numbers[-1]) if numbers else None


def _to_float(number: str) -> float:
    return float(number.replace("$", "").replace(",", "").replace(" ", ""))


def gsm8k_correct(output: str, answer: str) -> bool:
    """`answer` is GSM8K's reference solution (ending in "#### N") or a bare number."""
    expected, got = final_number(answer), final_number(output)
    if expected is None:
        raise ValueError(f"GSM8K reference has no number: {answer[-60:]!r}")
    return got is not None and abs(got - expected) < 1e-6 * max(1.0, abs(expected))


SCORERS: dict[str, Callable[[str, str], bool]] = {
    "sst2": sst2_correct,
    "ag_news": ag_news_correct,
    "gsm8k": gsm8k_correct,
}
"""Benchmark kind -> correct(output, reference)."""
