"""Prompt sources: local JSONL and Parquet with a field mapping, and the Hugging Face datasets path."""

from __future__ import annotations

import json

import pytest

from distill.config import DataConfig
from distill.data.prompts import load_prompts
from distill.errors import DistillError


def test_jsonl_with_field_mapping(tmp_path):
    (tmp_path / "train.jsonl").write_text(
        json.dumps({"question": "1+1?", "solution": "2", "uid": 7}) + "\n"
        + json.dumps({"question": "Write f", "solution": None, "tests": {"inputs": ["1"], "outputs": ["1"]},
                      "kind": "code"}) + "\n")
    cfg = DataConfig(name="mine", kind="jsonl", path=str(tmp_path / "{split}.jsonl"),
                     fields={"problem": "question", "answer": "solution", "id": "uid", "domain": "kind"})
    a, b = load_prompts(cfg, "train")
    assert (a.id, a.problem, a.answer, a.domain, a.source) == ("7", "1+1?", "2", "math", "mine")
    assert b.domain == "code" and b.tests == {"inputs": ["1"], "outputs": ["1"]} and b.answer is None


def test_missing_mapped_field_names_line(tmp_path):
    (tmp_path / "train.jsonl").write_text(json.dumps({"question": "x", "solution": "1"}) + "\n"
                                          + json.dumps({"q": "y"}) + "\n")
    cfg = DataConfig(kind="jsonl", path=str(tmp_path / "{split}.jsonl"), fields={"problem": "question"})
    with pytest.raises(DistillError, match=r"train\.jsonl:2: field 'question' \(mapped to problem\) is missing"):
        load_prompts(cfg, "train")


def test_parquet_and_limit(tmp_path):
    from datasets import Dataset

    Dataset.from_list([{"problem": f"p{i}", "answer": str(i)} for i in range(10)]).to_parquet(
        str(tmp_path / "train.parquet"))
    cfg = DataConfig(kind="parquet", path=str(tmp_path / "{split}.parquet"), limit=3)
    assert [p.answer for p in load_prompts(cfg, "train")] == ["0", "1", "2"]


def test_hf_dataset_path_loads_a_local_dataset_repo(tmp_path):
    """The `hf` kind goes through datasets.load_dataset; a local dataset folder stands in for a Hub id."""
    repo = tmp_path / "my-org" / "math-set"
    (repo / "data").mkdir(parents=True)
    (repo / "data" / "test.jsonl").write_text(json.dumps({"prompt": "2+2", "gold": "4"}) + "\n")
    cfg = DataConfig(kind="hf", hf_id=str(repo), fields={"problem": "prompt", "answer": "gold"})
    (p,) = load_prompts(cfg, "heldout")
    assert p.problem == "2+2" and p.answer == "4" and p.split == "heldout"


def test_unreachable_hub_dataset_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    cfg = DataConfig(kind="hf", hf_id="nobody-here/no-such-dataset-xyz")
    with pytest.raises(DistillError, match="nobody-here/no-such-dataset-xyz: cannot load dataset"):
        load_prompts(cfg, "train")
