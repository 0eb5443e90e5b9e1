"""Quality filters on the reasoning text: the R1 paper's (language mixing, long paragraphs, code blocks in
non-code reasoning) and the field's (repetition loops). Each returns ``None`` for a pass or a reason string.

Why heuristics and not models: these run on every sample (millions), in the verifier worker processes, so each is a
handful of C-speed regex passes over the text. They are tuned to be quiet on normal reasoning, including the
tiny-arith demo's four-line traces, and loud on the failure modes they name:

- language mixing: R1-Zero drifted into Chinese inside English reasoning (and back). We compare writing systems:
  the prompt's dominant script against the share of reasoning letters in other scripts. LaTeX commands, inline
  math and short Latin tokens (variables such as ``x`` or ``dx``) are ignored, so CJK reasoning about ``f(x)`` or
  Greek letters in formulas are not "mixed";
- repetition: a looping model repeats the same lines or long word n-grams; honest re-checking repeats a sentence
  now and then, far below the thresholds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Writing systems counted for language mixing (Greek is left out: it is math notation in most reasoning).
SCRIPTS: dict[str, re.Pattern[str]] = {
    "latin": re.compile(r"[A-Za-z\u00c0-\u024f]{3,}"),
    "cjk": re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff66-\uff9f]+"),
    "cyrillic": re.compile(r"[\u0400-\u04ff]{2,}"),
    "arabic": re.compile(r"[\u0600-\u06ff]{2,}"),
    "devanagari": re.compile(r"[\u0900-\u097f]{2,}"),
}
_MATH = re.compile(r"\$\$.*?\$\$|\$[^$\n]*\$|\\\(.*?\\\)|\\\[.*?\\\]|\\[A-Za-z]+|`[^`\n]*`", re.DOTALL)
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
_FENCE = re.compile(r"^[ \t]*```", re.MULTILINE)


@dataclass(frozen=True)
class QualityParams:
    """Plain thresholds (a picklable copy of ``QualityConfig``); ``None`` turns a filter off."""

    max_foreign_script_share: float | None = 0.1
    min_foreign_chars: int = 20
    max_paragraph_chars: int | None = 3000
    reject_code_blocks: bool = True
    repetition_ngram: int = 10
    max_repeated_ngram_share: float | None = 0.3
    max_repeated_line_share: float | None = 0.3
    min_lines: int = 10
    min_line_chars: int = 8


def script_counts(text: str) -> dict[str, int]:
    """Letters per writing system, after removing math and code spans."""
    text = _MATH.sub(" ", text)
    return {name: sum(map(len, pat.findall(text))) for name, pat in SCRIPTS.items()}


def dominant_script(counts: dict[str, int]) -> str | None:
    name, n = max(counts.items(), key=lambda kv: kv[1])
    return name if n > 0 else None


def check_language_mixing(problem: str, reasoning: str, p: QualityParams) -> str | None:
    """The reasoning should be written in the prompt's script: reject when too much of it is in other scripts."""
    if p.max_foreign_script_share is None:
        return None
    ours = dominant_script(script_counts(problem or ""))
    if ours == "latin" and reasoning.isascii():
        return None  # the common case, decided at C speed: ASCII holds no other script
    counts = script_counts(reasoning)
    total = sum(counts.values())
    if ours is None or total == 0:
        return None
    foreign = total - counts[ours]
    if foreign >= p.min_foreign_chars and foreign / total > p.max_foreign_script_share:
        return "language_mixing"
    return None


def check_paragraphs(reasoning: str, p: QualityParams) -> str | None:
    if p.max_paragraph_chars is None or len(reasoning) <= p.max_paragraph_chars:
        return None
    if any(len(par) > p.max_paragraph_chars for par in _PARAGRAPH_BREAK.split(reasoning)):
        return "long_paragraph"
    return None


def check_code_blocks(reasoning: str, domain: str, p: QualityParams) -> str | None:
    if not p.reject_code_blocks or domain == "code":
        return None
    return "code_in_reasoning" if _FENCE.search(reasoning) else None


def repeated_ngram_share(words: list[str], n: int) -> float:
    """Share of word n-gram positions whose n-gram already occurred earlier in the text."""
    total = len(words) - n + 1
    if total <= 0:
        return 0.0
    seen: set[int] = set()
    repeats = 0
    for i in range(total):
        h = hash(tuple(words[i:i + n]))
        if h in seen:
            repeats += 1
        else:
            seen.add(h)
    return repeats / total


def repeated_line_share(reasoning: str, p: QualityParams) -> float:
    lines = [ln.strip() for ln in reasoning.splitlines()]
    lines = [ln for ln in lines if len(ln) >= p.min_line_chars]
    if len(lines) < p.min_lines:
        return 0.0
    return 1.0 - len(set(lines)) / len(lines)


def check_repetition(reasoning: str, p: QualityParams) -> str | None:
    if p.max_repeated_line_share is not None and repeated_line_share(reasoning, p) > p.max_repeated_line_share:
        return "repetition_loop"
    if p.max_repeated_ngram_share is not None:
        if repeated_ngram_share(reasoning.split(), p.repetition_ngram) > p.max_repeated_ngram_share:
            return "repetition_loop"
    return None


def quality_checks(problem: str, reasoning: str, domain: str, p: QualityParams) -> dict[str, str | None]:
    """All quality checks, in report order: check name -> reason or None."""
    return {
        "language": check_language_mixing(problem, reasoning, p),
        "paragraphs": check_paragraphs(reasoning, p),
        "code_blocks": check_code_blocks(reasoning, domain, p),
        "repetition": check_repetition(reasoning, p),
    }
