"""The R1-Distill prompt format, kept in one place so every stage renders text the same way.

Why this module exists (REFERENCE.md pitfalls 1-3):
- The official R1-Distill chat template strips everything up to ``</think>`` from assistant turns, so training
  data rendered through it silently loses its reasoning. Our template keeps the whole assistant turn being
  trained (and strips only earlier turns of a conversation, as DeepSeek's does).
- The generation prompt pre-fills ``<think>\\n``: generated text does not start with ``<think>``, so the prefill
  is put back before any format check (:func:`completion_to_response`).
- The assistant turn ends with the end-of-sentence token, which is also the tokenizer's ``eos_token`` and the
  generation config's ``eos_token_id``; a student trained on it stops after its answer.
"""

from __future__ import annotations

from typing import Any

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"
PAD = "<｜▁pad▁｜>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
THINK_PREFILL = THINK_OPEN + "\n"

SPECIAL_TOKENS = [BOS, EOS, USER, ASSISTANT, PAD]
ADDED_TOKENS = [THINK_OPEN, THINK_CLOSE]



def marker_in_text(text: str, think_tags: bool = True) -> str | None:
    """The first of the format's markers that ``text`` holds as plain text (the think tags too, unless
    ``think_tags`` is False), or None. A tokenizer reads such text as the control token itself, so a trace or a
    generation holding one would teach a student to stop, open a turn or close its reasoning there."""
    return next((m for m in SPECIAL_TOKENS + (ADDED_TOKENS if think_tags else []) if m in text), None)


def own_control_tokens(tokenizer: Any) -> list[str]:
    """The control tokens ``tokenizer`` holds beyond the R1 format's markers: a Qwen2.5 base's ``<|im_end|>`` and
    ``<|endoftext|>``, a Llama-3 base's ``<|eot_id|>`` and reserved tokens. Text holding one is tokenized as that
    token, as the markers are (:func:`marker_in_text`)."""
    ours = set(SPECIAL_TOKENS + ADDED_TOKENS)
    return sorted({t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values()
                   if t.special and len(t.content) > 1 and t.content not in ours})


def token_in_text(text: str, tokens: list[str]) -> str | None:
    """The first of ``tokens`` found in ``text``, or None.

    Why not ``any(t in text ...)``: a Llama-3 tokenizer holds ~256 control tokens and 800k traces run to 30k
    characters each; they share a few two-character openings ("<|"), so each opening is searched for once and the
    tokens are compared only where it occurs (rarely, in real text)."""
    by_opening: dict[str, list[str]] = {}
    for token in tokens:
        by_opening.setdefault(token[:2], []).append(token)
    for opening, candidates in by_opening.items():
        at = text.find(opening)
        while at != -1:
            if hit := next((t for t in candidates if text.startswith(t, at)), None):
                return hit
            at = text.find(opening, at + 1)
    return None


MATH_SUFFIX = "Please reason step by step, and put your final answer within \\boxed{}."

# R1-Distill layout. The assistant turn being trained (the last message, no generation prompt) is rendered whole;
# earlier assistant turns lose their think block, as in DeepSeek's template and API (a served multi-turn chat would
# otherwise carry every past reasoning, thousands of tokens a turn). A role the layout has no place for (tool,
# developer) is an error, not silently dropped text.
R1_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}"
    "{% elif message['role'] == 'user' %}" + USER + "{{ message['content'] }}"
    "{% elif message['role'] == 'assistant' %}{% set content = message['content'] %}"
    "{% if (add_generation_prompt or not loop.last) and '" + THINK_CLOSE + "' in content %}"
    "{% set content = content.split('" + THINK_CLOSE + "')[-1].lstrip() %}{% endif %}"
    + ASSISTANT + "{{ content }}" + EOS +
    "{% else %}{{ raise_exception('the R1 chat format has no place for a message with role ' + message['role']) }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}" + ASSISTANT + THINK_PREFILL + "{% endif %}"
)


def user_message(problem: str, suffix: str | None = MATH_SUFFIX) -> str:
    """The R1 protocol puts every instruction in the user turn (no system prompt)."""
    problem = problem.strip()
    return f"{problem}\n{suffix}" if suffix else problem


def assistant_content(reasoning: str, answer: str) -> str:
    """The full assistant turn: the think block followed by the visible answer."""
    return f"{THINK_OPEN}\n{reasoning.strip()}\n{THINK_CLOSE}\n\n{answer.strip()}"


def completion_to_response(completion: str) -> str:
    """Put the pre-filled ``<think>\\n`` back in front of a generated completion (pitfall 3)."""
    if completion.lstrip().startswith(THINK_OPEN):
        return completion
    return THINK_PREFILL + completion


def split_response(response: str) -> tuple[str | None, str]:
    """Split a response into (reasoning, answer). Reasoning is None when the think block is not closed."""
    text = response
    start = text.find(THINK_OPEN)
    end = text.find(THINK_CLOSE)
    if end == -1:
        return None, ""
    body_start = start + len(THINK_OPEN) if 0 <= start < end else 0
    return text[body_start:end].strip(), text[end + len(THINK_CLOSE):].strip()


def render_prompt(tokenizer: Any, problem: str, suffix: str | None = MATH_SUFFIX) -> str:
    """The text a model is given: chat template with the generation prompt (ends in ``<think>\\n``)."""
    messages = [{"role": "user", "content": user_message(problem, suffix)}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


class TemplateError(ValueError):
    """The tokenizer's chat template would corrupt training data."""


def render_training_pair(tokenizer: Any, problem: str, reasoning: str, answer: str,
                         suffix: str | None = MATH_SUFFIX) -> tuple[str, str]:
    """Render one sample as (prompt, completion) text for completion-only SFT.

    The completion is the full rendering minus the prompt rendering. This fails loudly when the template would
    drop the reasoning (pitfall 2) or when the prompt is not a prefix of the full text, instead of training on
    corrupted data.
    """
    messages = [{"role": "user", "content": user_message(problem, suffix)}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(
        messages + [{"role": "assistant", "content": assistant_content(reasoning, answer)}],
        tokenize=False,
    )
    if reasoning.strip() and reasoning.strip() not in full:
        raise TemplateError("the chat template drops the reasoning from assistant turns "
                            "(like the official R1-Distill template); use distill's R1 template")
    if not full.startswith(prompt):
        raise TemplateError("the chat template's generation prompt is not a prefix of the rendered assistant turn")
    completion = full[len(prompt):]
    eos = tokenizer.eos_token
    if not eos or not completion.endswith(eos):
        raise TemplateError(f"the rendered assistant turn does not end with the tokenizer's eos token ({eos!r})")
    return prompt, completion
