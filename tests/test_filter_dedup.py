"""Prompt dedup (exact and MinHash near-duplicates) and decontamination against benchmark files, with its report."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distill.config import DecontamConfig, DecontamSource, FilterConfig, PromptDedupConfig
from distill.errors import DistillError
from distill.filter.benchmarks import load_source
from distill.filter.decontam import build_index, ngrams
from distill.filter.dedup import PromptDeduper
from distill.filter.stage import filter_store
from distill.records import ShardedJsonlStore
from tests.test_filter_checks import record

LONG = ("Let triangle ABC have side lengths 13, 14 and 15. A circle is tangent to side BC and to the extensions "
        "of sides AB and AC. Find the radius of this circle, and give the answer as a common fraction in lowest "
        "terms, showing every step of the computation clearly.")
AIME_ITEM = ("Every morning Aya goes for a 9 kilometer long walk and stops at a coffee shop afterwards. When she "
             "walks at a constant speed of s kilometers per hour, the walk takes her 4 hours.")


def test_exact_and_near_duplicates_found_distinct_kept():
    d = PromptDeduper(threshold=0.8)
    assert d.check_and_add("a", LONG) is None
    exact = d.check_and_add("b", "  " + LONG.upper().replace(" ", "   "))
    assert exact.of == "a" and exact.match == "exact"
    near = d.check_and_add("c", LONG.replace("showing every step of the computation clearly.",
                                             "showing each step of the computation clearly."))
    assert near is not None and near.of == "a" and near.match == "minhash" and near.jaccard >= 0.8
    assert d.check_and_add("d", "A completely different question about prime numbers below one hundred.") is None
    # Same template, different numbers: related but distinct problems stay (default threshold 0.9).
    d2 = PromptDeduper(**PromptDedupConfig().model_dump())
    assert d2.check_and_add("x", "Mia has 7 apples. She buys 5 more, then gives away 4. How many apples does Mia "
                                 "have now?") is None
    assert d2.check_and_add("y", "Mia has 9 apples. She buys 2 more, then gives away 4. How many apples does Mia "
                                 "have now?") is None


def test_ngrams_are_lowercased_whitespace_normalised_and_short_texts_count_whole():
    assert ngrams("A  b\nC d", 2) == ["a b", "b c", "c d"]
    assert ngrams("Tiny text", 8) == ["tiny text"]
    assert ngrams("", 8) == []


def _write_gens(path: Path, recs: list[dict]) -> Path:
    with ShardedJsonlStore(path) as st:
        st.append(recs)
    return path


def test_decontamination_rejects_overlapping_prompts_and_reports_matches(tmp_path):
    bench = tmp_path / "aime.jsonl"
    bench.write_text(json.dumps({"id": "2024-I-1", "problem": AIME_ITEM}) + "\n"
                     + json.dumps({"id": "2024-I-2", "problem": "Something unrelated entirely here."}) + "\n")
    table = pa.table({"question": ["What is the largest prime factor of 2024 when written as a product of "
                                   "primes in increasing order?"], "unique_id": ["m-1"]})
    pq.write_table(table, tmp_path / "math.parquet")
    contaminated = "Solve this: " + AIME_ITEM.upper() + " Find the time."
    recs = [record("Think.", "\\boxed{8}", pid="clean", problem=LONG),
            record("Think.", "\\boxed{8}", pid="leak", problem=contaminated),
            record("Think.", "\\boxed{8}", pid="leak", idx=1, problem=contaminated),
            record("Think.", "\\boxed{8}", pid="leak2", problem="what is the largest prime factor of 2024 when "
                                                                "written as a product of primes, quickly?")]
    gens = _write_gens(tmp_path / "gens", recs)
    cfg = FilterConfig(workers=1, decontamination=DecontamConfig(benchmarks=[
        DecontamSource(name="aime", path=str(bench)),
        DecontamSource(name="math", path=str(tmp_path / "math.parquet"), field="question")]))
    counts = filter_store(gens, tmp_path / "out", cfg)
    assert counts["rejected"] == {"contaminated": 3} and counts["contaminated_prompts"] == 2
    rep = json.loads((tmp_path / "out" / "decontamination.json").read_text())
    assert rep["ngram"] == 8 and rep["contaminated_prompts"] == 2
    by_prompt = {m["prompt_id"]: m["matches"] for m in rep["matches"]}
    assert by_prompt["leak"][0]["benchmark"] == "aime" and by_prompt["leak"][0]["item_id"] == "2024-I-1"
    assert by_prompt["leak2"][0] == {"benchmark": "math", "item_id": "m-1",
                                     "ngram": "what is the largest prime factor of 2024"}
    assert {b["name"]: b["contaminated_prompts"] for b in rep["benchmarks"]} == {"aime": 1, "math": 1}
    rejected = list(ShardedJsonlStore(tmp_path / "out" / "rejected"))
    assert all(r["checks"]["prompt"]["reason"] == "contaminated" for r in rejected)


def test_hub_loading_path_reads_a_local_dataset_folder(tmp_path, monkeypatch):
    """The Hub path (datasets.load_dataset) for real, on a local dataset folder instead of a Hub id."""
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    folder = tmp_path / "gpqa"
    folder.mkdir()
    (folder / "train.jsonl").write_text(json.dumps({"Question": AIME_ITEM, "Record ID": "rec1"}) + "\n")
    texts = load_source(DecontamSource(name="gpqa", hf_id=str(folder), split="train", field="Question"))
    assert texts.texts == [AIME_ITEM] and texts.ids == ["rec1"]
    index = build_index([texts], 8)
    assert index.matches("x " + AIME_ITEM)[0].item_id == "rec1"


@pytest.mark.parametrize("content,match", [
    (None, "benchmark file not found"),
    (b"{not json\n", "cannot read benchmark file"),
    (b'{"text": "no problem field"}\n', "no field 'problem'"),
    (b"\xff\xfe garbage", "cannot read benchmark file"),
])
def test_unreadable_benchmark_file_names_the_file(tmp_path, content, match):
    path = tmp_path / "bench.jsonl"
    if content is not None:
        path.write_bytes(content)
    cfg = FilterConfig(workers=1, decontamination=DecontamConfig(
        benchmarks=[DecontamSource(name="b", path=str(path))]))
    gens = _write_gens(tmp_path / "gens", [record("Think.", "\\boxed{8}")])
    with pytest.raises(DistillError, match=match) as err:
        filter_store(gens, tmp_path / "out", cfg)
    assert str(path) in str(err.value)


def test_unknown_suite_and_unreachable_hub_id_are_clear_errors(tmp_path):
    with pytest.raises(DistillError, match="unknown benchmark suite 'aime1999'"):
        load_source("aime1999")
    with pytest.raises(DistillError, match="cannot load benchmark 'x'") as err:
        load_source(DecontamSource(name="x", hf_id=str(tmp_path / "missing-dataset")))
    assert "missing-dataset" in str(err.value)


def test_duplicate_prompts_rejected_in_the_stage_first_prompt_keeps_its_samples(tmp_path):
    recs = [record("Think.", "\\boxed{8}", pid="first", problem=LONG),
            record("Think again.", "\\boxed{8}", pid="copy", problem=LONG.replace("clearly.", "clearly!")),
            record("Think more.", "\\boxed{8}", pid="first", idx=1, problem=LONG)]
    gens = _write_gens(tmp_path / "gens", recs)
    counts = filter_store(gens, tmp_path / "out", FilterConfig(workers=1))
    assert counts["kept"] == 2 and counts["rejected"] == {"near_duplicate_prompt": 1}
    (rej,) = ShardedJsonlStore(tmp_path / "out" / "rejected")
    assert rej["prompt_id"] == "copy" and rej["checks"]["prompt"]["duplicate_of"] == "first"
    stats = [json.loads(line) for line in (tmp_path / "out" / "prompt_stats.jsonl").read_text().splitlines()]
    assert stats[1]["status"] == "near_duplicate_prompt" and stats[1]["duplicate_of"] == "first"
    assert stats[1]["pass_rate"] is None and stats[0]["pass_rate"] == 1.0
