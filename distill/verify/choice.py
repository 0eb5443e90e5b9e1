"""Multiple-choice answers (GPQA style): find the letter the model chose and compare it with the gold letter.

Why a module of its own: math-verify would read ``\\boxed{C}`` as the symbol ``C`` and compare it symbolically,
and a gold answer may be given as the text of the correct option instead of its letter. Extraction looks for the
most explicit form first, so a letter mentioned in passing ("option A is wrong, ...") never beats the final one:

1. ``\\boxed{C}`` (also ``\\boxed{\\text{(C)}}``, ``\\boxed{C. 42}``), the last one;
2. ``Answer: C`` / ``the answer is (C)`` / ``the correct option is C``, the last one;
3. a lone ``(C)`` or ``**C**``, the last one.

Letters are upper case outside brackets (``the answer is a prime`` is not option A) and limited to the options
the question has (A-D for four choices; A-J when the choices are unknown).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_LETTERS = "ABCDEFGHIJ"

_BOXED = re.compile(r"\\boxed\s*\{((?:[^{}]|\{[^{}]*\})*)\}")
_LATEX_CMD = re.compile(r"\\(?:text|textbf|mathrm|mathbf|textit|mbox)\s*\{([^{}]*)\}")
_INSIDE = re.compile(r"^\s*\(?\s*([A-Za-z])\s*\)?\s*(?:$|[.:)\s])")
_STATED = re.compile(
    r"(?:answer|option|choice)(?:\s+(?:is|would be|should be|must be))?\s*(?:is\s*)?[:：]?\s*"
    r"(?:\*\*)?\s*(?:\(([A-Za-z])\)|\b([A-Z])\b)", re.IGNORECASE)
_PAREN = re.compile(r"\(([A-Z])\)|\*\*([A-Z])\*\*")


@dataclass
class ChoiceVerdict:
    correct: bool
    reason: str | None  # None when correct; "no_gold_answer", "unparsable_answer", "wrong_answer"
    extracted: str | None


def letters_for(choices: list[str] | None) -> str:
    return DEFAULT_LETTERS[: len(choices)] if choices else DEFAULT_LETTERS


def extract_choice(text: str, letters: str = DEFAULT_LETTERS) -> str | None:
    """The option letter the answer settles on, or None."""
    if not text:
        return None
    for body in reversed(_BOXED.findall(text)):
        body = _LATEX_CMD.sub(r"\1", body)
        m = _INSIDE.match(body)
        if m and m.group(1).upper() in letters:
            return m.group(1).upper()
    for m in reversed(list(_STATED.finditer(text))):
        letter = m.group(1) or m.group(2)
        # An unbracketed letter must be upper case in the text itself ("the answer is a ..." is prose).
        if m.group(1):
            letter = letter.upper()
        if letter in letters:
            return letter
    for m in reversed(list(_PAREN.finditer(text))):
        letter = m.group(1) or m.group(2)
        if letter in letters:
            return letter
    return None


def _norm(s: str) -> str:
    return " ".join(s.lower().split()).strip(" .")


def gold_letter(gold: str | None, choices: list[str] | None) -> str | None:
    """The gold answer as a letter: given as a letter ("C", "(C)"), or as the text of one of the choices."""
    if gold is None or not str(gold).strip():
        return None
    gold = str(gold).strip()
    letters = letters_for(choices)
    m = re.fullmatch(r"\(?\s*([A-Za-z])\s*\)?\.?", gold)
    if m and m.group(1).upper() in letters:
        return m.group(1).upper()
    if choices:
        target = _norm(gold)
        for letter, choice in zip(letters, choices):
            if _norm(str(choice)) == target:
                return letter
    return None


def check_choice(gold: str | None, answer_text: str, choices: list[str] | None = None) -> ChoiceVerdict:
    letter = gold_letter(gold, choices)
    if letter is None:
        return ChoiceVerdict(False, "no_gold_answer", None)
    got = extract_choice(answer_text or "", letters_for(choices))
    if got is None:
        return ChoiceVerdict(False, "unparsable_answer", None)
    return ChoiceVerdict(got == letter, None if got == letter else "wrong_answer", got)
