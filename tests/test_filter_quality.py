"""Quality filters: each one rejects the failure it names and stays quiet on normal reasoning (incl. the demo's)."""

from __future__ import annotations

import pytest

from distill.config import FilterConfig, QualityConfig
from distill.filter.quality import (QualityParams, check_code_blocks, check_language_mixing, check_paragraphs,
                                    check_repetition, quality_checks, repeated_ngram_share)
from distill.filter.stage import verdicts
from distill.tasks.arithmetic import make_examples
from tests.test_filter_checks import record

P = QualityParams(**QualityConfig().model_dump())
TINY = "Mia starts with 7 apples.\nShe buys 5 more: 7 + 5 = 12.\nSo Mia has 12 apples."
EN_PROBLEM = "Find all real x such that x^2 - 5x + 6 = 0. Put the final answer in a box."
ZH_PROBLEM = "求所有满足 $x^2 - 5x + 6 = 0$ 的实数 $x$，并把最终答案放在方框里。"
EN_REASONING = ("We need the roots of x^2 - 5x + 6. Factor it: (x - 2)(x - 3) = 0, so x = 2 or x = 3.\n\n"
                "Check: 4 - 10 + 6 = 0 and 9 - 15 + 6 = 0. Both work.")


def test_demo_reasoning_passes_every_quality_check():
    assert quality_checks("Mia has 7 apples. She buys 5 more. How many apples does Mia have now?", TINY, "math",
                          P) == {"language": None, "paragraphs": None, "code_blocks": None, "repetition": None}
    for prompt, reasoning, _ in make_examples("train", 50):
        assert set(quality_checks(prompt.problem, reasoning, "math", P).values()) == {None}


def test_language_mixing_chinese_drift_in_english_reasoning():
    drift = EN_REASONING + "\n\n让我们再检查一下这个方程的两个根是否都满足原来的条件，确认答案无误。所以答案是二和三。"
    assert check_language_mixing(EN_PROBLEM, drift, P) == "language_mixing"
    assert check_language_mixing(EN_PROBLEM, EN_REASONING, P) is None


def test_language_mixing_ignores_math_and_short_names():
    zh_reasoning = ("我们需要求 $x^2 - 5x + 6 = 0$ 的根。因式分解得 $(x-2)(x-3)=0$，所以 x = 2 或 x = 3。"
                    "验证：\\frac{4}{2} 代入后成立，两个根都满足条件。")
    assert check_language_mixing(ZH_PROBLEM, zh_reasoning, P) is None
    # A few foreign letters (a quoted name) stay under min_foreign_chars.
    assert check_language_mixing(EN_PROBLEM, EN_REASONING + " (见 王)", P) is None
    # Greek letters are notation, not a language.
    assert check_language_mixing(EN_PROBLEM, EN_REASONING + " Let α = β + γ and θ = 2π.", P) is None


def test_english_reasoning_for_chinese_prompt_is_mixing():
    assert check_language_mixing(ZH_PROBLEM, EN_REASONING * 2, P) == "language_mixing"


def test_long_paragraph():
    assert check_paragraphs("word " * 700, P) == "long_paragraph"
    assert check_paragraphs(("word " * 500 + "\n\n") * 4, P) is None
    assert check_paragraphs("word " * 700, QualityParams(max_paragraph_chars=None)) is None


def test_code_blocks_only_rejected_outside_code_prompts():
    reasoning = "Let me compute it.\n```python\nprint(2 + 3)\n```\nSo it is 5."
    assert check_code_blocks(reasoning, "math", P) == "code_in_reasoning"
    assert check_code_blocks(reasoning, "code", P) is None
    assert check_code_blocks("Inline `x = 2` is fine.", "math", P) is None


def test_repetition_loops():
    loop = EN_REASONING + "\n" + "\n".join(["Wait, let me recompute the discriminant again carefully."] * 30)
    assert check_repetition(loop, P) == "repetition_loop"
    words_loop = EN_REASONING + " " + "so the answer is three and we are done here " * 60
    assert check_repetition(words_loop, P) == "repetition_loop"
    assert check_repetition(EN_REASONING, P) is None
    assert repeated_ngram_share("a b c d e f g h i j k".split(), 10) == 0.0


def test_quality_rejections_carry_their_reason_through_the_stage():
    cfg = FilterConfig(workers=1)
    recs = [
        record(TINY.replace("7 + 5 = 12", "7 + 1 = 8").replace("12 apples", "8 apples"), "\\boxed{8}", idx=0),
        record("We add.\n```python\nprint(7 + 1)\n```\nSo 8.", "\\boxed{8}", idx=1),
        record("Seven plus one is eight. " + "让我们再检查一下这个答案是否正确，确认答案无误，所以答案是八。" * 2, "\\boxed{8}",
               idx=2),
    ]
    out = list(verdicts(iter(recs), cfg))
    assert [v["reject_reason"] for v in out] == [None, "code_in_reasoning", "language_mixing"]
    # The answer was still checked: pass rates count correct samples whatever their quality.
    assert all(v["checks"]["correctness"]["passed"] for v in out)


@pytest.mark.parametrize("key", ["max_foreign_script_share", "max_paragraph_chars", "max_repeated_ngram_share",
                                 "max_repeated_line_share"])
def test_each_threshold_can_be_turned_off(key):
    assert QualityConfig(**{key: None}).model_dump()[key] is None
