"""The contract every teacher backend meets, and the one place a raw completion becomes a Generation record."""

from __future__ import annotations

from dataclasses import asdict
from typing import Iterator, Protocol

from ...chat_template import completion_to_response, split_response
from ...records import Generation, Prompt, Sampling, generation_id


class TeacherBackend(Protocol):
    """Generates ``sampling.n`` samples for each prompt.

    ``generate`` yields one list per prompt holding all its samples, in whatever order prompts finish. The generate
    stage appends each list as soon as it arrives, so a prompt is either fully on disk or not at all: that is what
    makes resume exact.
    """

    name: str

    def generate(self, prompts: list[Prompt], sampling: Sampling) -> Iterator[list[Generation]]: ...


def make_generation(prompt: Prompt, sample_index: int, completion: str, finish_reason: str, *,
                    prompt_tokens: int, completion_tokens: int, teacher: str, sampling: Sampling,
                    reasoning: str | None = None) -> Generation:
    """Build a Generation from raw completion text.

    ``completion`` is what the engine produced after the ``<think>\\n`` prefill; the prefill is put back before
    splitting (pitfall 3). APIs that return the reasoning separately (``reasoning_content``) pass it as
    ``reasoning`` and the visible answer as ``completion``.
    """
    if reasoning is not None:
        answer = completion.strip()
        think, response = reasoning.strip(), f"<think>\n{reasoning.strip()}\n</think>\n\n{answer}"
    else:
        response = completion_to_response(completion)
        think, answer = split_response(response)
    if finish_reason not in ("stop", "length"):
        finish_reason = "length" if finish_reason in ("max_tokens", "max_length") else "stop"
    return Generation(
        id=generation_id(prompt.id, sample_index), prompt_id=prompt.id, sample_index=sample_index,
        problem=prompt.problem, gold_answer=prompt.answer, completion=response, reasoning=think,
        answer=answer, finish_reason=finish_reason, prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens, teacher=teacher, sampling=asdict(sampling),
        domain=prompt.domain, source=prompt.source, tests=prompt.tests, choices=prompt.choices,
    )
