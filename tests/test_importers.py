"""Importers for published trace datasets, on small local files in each dataset's own layout."""

from __future__ import annotations

import json

import pytest

from distill.data.importers import import_traces
from distill.errors import DistillError
from distill.records import ShardedJsonlStore
from tests.conftest import run_cli


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


OPENR1 = {"problem": "What is $1+1$?", "answer": "2", "problem_type": "Algebra",
          "generations": ["<think>\n1 plus 1 is 2.\n</think>\n\nSo \\boxed{2}.", "<think>\nhmm\n</think>\n\n\\boxed{3}",
                          "<think>\nlong and cut"],
          "finish_reasons": ["stop", "stop", "length"], "correctness_math_verify": [True, False, False]}
STRATOS = {"system": "Your role as an assistant involves thoroughly exploring questions...",
           "conversations": [{"from": "user", "value": "Return your final response within \\boxed{}. 2+3?"},
                             {"from": "assistant", "value": "<|begin_of_thought|>\n\n2 and 3 make 5.\n\n"
                              "<|end_of_thought|>\n\n<|begin_of_solution|>\n\n\\boxed{5}\n\n<|end_of_solution|>"}]}
S1K = {"question": "Compute 6*7.", "solution": "The product is 42.", "cot_type": "math",
       "deepseek_thinking_trajectory": "6 times 7 is 42.", "deepseek_attempt": "**Answer:** \\boxed{42}"}


def test_openr1_math(tmp_path):
    gens = list(import_traces("openr1-math", write_jsonl(tmp_path / "o.jsonl", [OPENR1])))
    assert [g.sample_index for g in gens] == [0, 1, 2]
    assert gens[0].reasoning == "1 plus 1 is 2." and gens[0].answer == "So \\boxed{2}." and gens[0].gold_answer == "2"
    assert gens[2].finish_reason == "length" and gens[2].reasoning is None
    assert len({g.prompt_id for g in gens}) == 1


@pytest.mark.parametrize("fmt", ["openthoughts", "bespoke-stratos"])
def test_openthoughts_layout(tmp_path, fmt):
    (g,) = import_traces(fmt, write_jsonl(tmp_path / "s.jsonl", [STRATOS]))
    assert g.reasoning == "2 and 3 make 5." and g.answer == "\\boxed{5}" and g.problem.endswith("2+3?")
    assert g.completion.startswith("<think>\n") and g.source == fmt


def test_s1k(tmp_path):
    (g,) = import_traces("s1k", write_jsonl(tmp_path / "s1k.jsonl", [S1K]))
    assert g.reasoning == "6 times 7 is 42." and g.gold_answer == "The product is 42."


def test_parquet_source(tmp_path):
    from datasets import Dataset

    Dataset.from_list([S1K]).to_parquet(str(tmp_path / "s1k.parquet"))
    assert len(list(import_traces("s1k", str(tmp_path / "s1k.parquet")))) == 1


def test_wrong_layout_is_named(tmp_path):
    with pytest.raises(DistillError, match="row 1 does not look like s1k"):
        list(import_traces("s1k", write_jsonl(tmp_path / "x.jsonl", [{"other": 1}])))


def test_import_then_filter_via_cli(tmp_path):
    src = write_jsonl(tmp_path / "o.jsonl", [OPENR1])
    run = tmp_path / "run"
    proc = run_cli("teacher", "import", "openr1-math", src, "--out", str(run))
    assert proc.returncode == 0 and "imported 3 traces" in proc.stdout, proc.stderr
    proc = run_cli("teacher", "filter", "tiny", "--out", str(run))
    assert proc.returncode == 0, proc.stderr
    kept = list(ShardedJsonlStore(run / "filtered" / "kept"))
    rejected = {r["reject_reason"] for r in ShardedJsonlStore(run / "filtered" / "rejected")}
    assert [k["sample_index"] for k in kept] == [0] and rejected == {"wrong_answer", "truncated"}
