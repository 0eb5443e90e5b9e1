"""Per-sample checks that need no model: truncation, the think-block format, token caps.

Each check returns ``None`` when the sample passes, or a short reason string (the key used in reports).
"""

from __future__ import annotations

from typing import Any, Callable

from ..chat_template import THINK_CLOSE, THINK_OPEN, marker_in_text

Check = Callable[[dict[str, Any]], "str | None"]


def check_truncated(gen: dict[str, Any]) -> str | None:
    """A sample cut by the token limit has no trustworthy ending, even when an answer happens to be there."""
    return "truncated" if gen.get("finish_reason") == "length" else None


def check_format(gen: dict[str, Any]) -> str | None:
    """The think block is present, closed and non-empty, and an answer follows it.

    ``completion`` already carries the ``<think>\\n`` prefill (put back by the backend), so a response that skipped
    thinking shows up as an empty block, not as a missing one. A completion that holds one of the chat format's
    markers as text (a teacher decoded with its special tokens that ran on past its EOS into a new turn) is
    ``chat_marker_in_text``: the student's template would tokenize it as the control token and teach the student
    to stop, or to open a turn, mid-trace.
    """
    text = gen.get("completion") or ""
    if THINK_OPEN not in text:
        return "no_think_block"
    if THINK_CLOSE not in text:
        return "think_not_closed"
    if text.count(THINK_OPEN) > 1 or text.count(THINK_CLOSE) > 1:
        return "multiple_think_blocks"
    if marker_in_text(text, think_tags=False):  # the think tags: counted above
        return "chat_marker_in_text"
    if not (gen.get("reasoning") or "").strip():
        return "empty_think"
    if not (gen.get("answer") or "").strip():
        return "no_answer_after_think"
    return None


def make_length_check(max_tokens: int) -> Check:
    def check_length(gen: dict[str, Any]) -> str | None:
        return "too_long" if gen.get("completion_tokens", 0) > max_tokens else None
    return check_length


def normalised_text(gen: dict[str, Any]) -> str:
    return " ".join((gen.get("completion") or "").split())
