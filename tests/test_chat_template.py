"""The R1-Distill chat template: prefill, reasoning kept in training text (pitfall 2), EOS at the end (pitfall 1)."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from distill.chat_template import (EOS, MATH_SUFFIX, R1_CHAT_TEMPLATE, TemplateError, render_prompt,
                                   render_training_pair)
from tests.conftest import TINY_TEACHER

# The official R1-Distill template strips every assistant turn, the trained one too: content.split("</think>")[-1].
STRIPPING_TEMPLATE = R1_CHAT_TEMPLATE.replace("(add_generation_prompt or not loop.last) and ", "")  # every turn
assert STRIPPING_TEMPLATE != R1_CHAT_TEMPLATE


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(TINY_TEACHER)


def test_prompt_prefills_think_and_has_no_system_prompt(tokenizer):
    text = render_prompt(tokenizer, "What is 2 + 2?")
    assert text.endswith("<｜Assistant｜><think>\n")
    assert text == f"<｜begin▁of▁sentence｜><｜User｜>What is 2 + 2?\n{MATH_SUFFIX}<｜Assistant｜><think>\n"


def test_training_pair_keeps_reasoning_and_ends_with_eos(tokenizer):
    prompt, completion = render_training_pair(tokenizer, "What is 2 + 2?", "2 + 2 = 4.", "\\boxed{4}")
    assert prompt.endswith("<think>\n")
    assert completion == "2 + 2 = 4.\n</think>\n\n\\boxed{4}" + tokenizer.eos_token
    # Token by token: the completion tokens decode back to the same text, EOS last.
    ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    assert ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids) == completion


def test_stripping_template_is_refused(tokenizer):
    tokenizer = AutoTokenizer.from_pretrained(TINY_TEACHER)
    tokenizer.chat_template = STRIPPING_TEMPLATE
    with pytest.raises(TemplateError, match="drops the reasoning"):
        render_training_pair(tokenizer, "What is 2 + 2?", "2 + 2 = 4.", "\\boxed{4}")


def test_generation_config_eos_matches_template(tokenizer):
    from transformers import GenerationConfig

    gc = GenerationConfig.from_pretrained(TINY_TEACHER)
    eos = gc.eos_token_id if isinstance(gc.eos_token_id, list) else [gc.eos_token_id]
    assert tokenizer.eos_token == EOS and tokenizer.eos_token_id in eos
    assert gc.temperature == 0.6 and gc.top_p == 0.95


def test_earlier_turns_lose_their_reasoning_and_the_trained_turn_keeps_it(tokenizer):
    """DeepSeek's layout for a conversation: past assistant turns are sent back without their think block (the
    served student would otherwise re-read every past reasoning); the turn being trained keeps all of it."""
    first = "<think>\nLONG REASONING OF TURN 1\n</think>\n\n4"
    history = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": first},
               {"role": "user", "content": "and 3+3?"}]
    prompt = tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
    assert prompt == ("<｜begin▁of▁sentence｜><｜User｜>2+2?<｜Assistant｜>4<｜end▁of▁sentence｜>"
                      "<｜User｜>and 3+3?<｜Assistant｜><think>\n")
    trained = tokenizer.apply_chat_template(history + [{"role": "assistant", "content": "<think>\nR2\n</think>\n\n6"}],
                                            tokenize=False)
    assert "LONG REASONING" not in trained and trained.endswith("<｜Assistant｜><think>\nR2\n</think>\n\n6" + EOS)


@pytest.mark.parametrize("role", ["tool", "developer"])
def test_a_role_the_format_cannot_place_is_an_error(tokenizer, role):
    from jinja2.exceptions import TemplateError as JinjaTemplateError

    with pytest.raises(JinjaTemplateError, match=f"no place for a message with role {role}"):
        tokenizer.apply_chat_template([{"role": role, "content": "x"}, {"role": "user", "content": "2+2?"}],
                                      tokenize=False, add_generation_prompt=True)


def test_vllm_prompts_carry_one_bos_with_a_tokenizer_that_adds_its_own(tokenizer):
    """DeepSeek's R1 tokenizers prepend BOS to every text and their template writes it too; a text prompt given to
    vLLM's generate carried two. The backend sends token ids: exactly one BOS, then the rendered prompt."""
    from distill.records import Prompt
    from distill.teacher.backends.vllm_backend import engine_prompts

    r1_like = AutoTokenizer.from_pretrained(TINY_TEACHER)
    r1_like.add_bos_token = True  # as in DeepSeek-R1's tokenizer_config.json
    text = render_prompt(r1_like, "What is 2 + 2?")
    assert r1_like(text)["input_ids"][:2] == [r1_like.bos_token_id] * 2  # what a text prompt became
    prompts = [Prompt(id="p0", problem="What is 2 + 2?", answer="4"), Prompt(id="p1", problem="3 * 5?", answer="15")]
    sent = engine_prompts(r1_like, prompts)
    assert [list(s) for s in sent] == [["prompt_token_ids"]] * 2
    ids = sent[0]["prompt_token_ids"]
    assert ids.count(r1_like.bos_token_id) == 1 and ids[0] == r1_like.bos_token_id
    assert r1_like.decode(ids) == text
    assert engine_prompts(tokenizer, prompts) == sent  # the same ids as from a tokenizer that adds nothing
