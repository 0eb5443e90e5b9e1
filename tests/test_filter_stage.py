"""The whole filter stage on a store: selection per prompt, pass rates, bad records, reports, determinism."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from distill.config import FilterConfig, SelectionConfig
from distill.filter.stage import filter_store
from distill.records import ShardedJsonlStore
from distill.tasks.arithmetic import make_examples
from tests.test_filter_checks import record

PROBLEMS = {p: f"Question {p}: how many marbles are left after the {p} game of the season tonight?"
            for p in ("a", "b", "c")}


def _store(path: Path, recs: list[dict], per_shard: int = 50_000) -> Path:
    with ShardedJsonlStore(path, records_per_shard=per_shard) as st:
        st.append(recs)
    return path


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _interleaved() -> list[dict]:
    """Prompts a (5 samples, 4 correct), b (2 samples, 1 correct) and c (2 wrong); a's samples are NOT contiguous."""
    recs = []
    for i in range(5):
        right = i != 3
        recs.append(record(f"Step {i}: 7 + 1 = {8 if right else 9}.", f"\\boxed{{{8 if right else 9}}}", pid="a",
                           idx=i, problem=PROBLEMS["a"], tokens=100 - 10 * i, source="s1"))
        if i < 2:
            recs.append(record(f"Try {i}.", f"\\boxed{{{8 if i == 0 else 7}}}", pid="b", idx=i, problem=PROBLEMS["b"],
                               tokens=50, source="s2"))
            recs.append(record(f"Guess {i}.", "\\boxed{1}", pid="c", idx=i, problem=PROBLEMS["c"], source="s2"))
    return recs


@pytest.mark.parametrize("strategy,expect_a", [
    ("all", {0, 1, 2, 4}),
    ("shortest", {4, 2}),  # tokens 60 and 80
])
def test_selection_strategies_on_non_contiguous_prompts(tmp_path, strategy, expect_a):
    gens = _store(tmp_path / "gens", _interleaved(), per_shard=4)
    cfg = FilterConfig(workers=2, selection=SelectionConfig(strategy=strategy, k=2))
    counts = filter_store(gens, tmp_path / "out", cfg)
    kept = list(ShardedJsonlStore(tmp_path / "out" / "kept"))
    assert {r["sample_index"] for r in kept if r["prompt_id"] == "a"} == expect_a
    over = 2 if strategy != "all" else 0
    assert counts["rejected"].get("over_k_per_prompt", 0) == over
    assert counts["rejected"]["wrong_answer"] == 4
    assert counts["kept"] + sum(counts["rejected"].values()) == counts["generated"] == 9
    stats = {r["prompt_id"]: r for r in _rows(tmp_path / "out" / "prompt_stats.jsonl")}
    assert (stats["a"]["samples"], stats["a"]["correct"], stats["a"]["pass_rate"]) == (5, 4, 0.8)
    assert stats["b"]["pass_rate"] == 0.5 and stats["c"]["pass_rate"] == 0.0 and stats["c"]["kept"] == 0
    assert stats["a"]["kept"] == len(expect_a)
    assert counts["by_source"]["s1"] == {"generated": 5, "kept": len(expect_a), "rejected": 5 - len(expect_a),
                                         "prompts": 1, "prompts_with_a_kept_sample": 1, "mean_pass_rate": 0.8}
    assert counts["by_source"]["s2"]["mean_pass_rate"] == 0.25
    assert counts["prompts_with_a_kept_sample"] == 2 and counts["mean_pass_rate"] == pytest.approx(0.4333, 1e-3)


def test_random_selection_is_seeded_and_order_independent(tmp_path):
    recs = _interleaved()
    cfg = FilterConfig(workers=1, selection=SelectionConfig(strategy="random", k=2, seed=7))

    def chosen(order: list[dict], name: str) -> set[int]:
        filter_store(_store(tmp_path / f"g-{name}", order), tmp_path / f"o-{name}", cfg)
        return {r["sample_index"] for r in ShardedJsonlStore(tmp_path / f"o-{name}" / "kept") if r["prompt_id"] == "a"}

    forward, backward = chosen(recs, "f"), chosen(recs[::-1], "b")
    assert forward == backward and len(forward) == 2 and 3 not in forward
    seeds = set()
    for seed in range(4):
        other = FilterConfig(workers=1, selection=SelectionConfig(strategy="random", k=2, seed=seed))
        filter_store(tmp_path / "g-f", tmp_path / f"o-s{seed}", other)
        seeds.add(frozenset(r["sample_index"] for r in ShardedJsonlStore(tmp_path / f"o-s{seed}" / "kept")
                            if r["prompt_id"] == "a"))
    assert len(seeds) > 1  # the seed matters


def test_bad_records_are_rejections_not_crashes(tmp_path):
    good = record("7 + 1 = 8.", "\\boxed{8}", pid="g", problem=PROBLEMS["a"])
    no_gold = record("7 + 1 = 8.", "\\boxed{8}", pid="n", gold=None, problem=PROBLEMS["b"])
    surrogate = record("7 + 1 = 8.", "\\boxed{8}", pid="s", idx=0, problem=PROBLEMS["c"])
    lines = [json.dumps(good), json.dumps(no_gold),
             json.dumps(surrogate).replace("7 + 1 = 8.", "7 + 1 = 8. \\ud800"),
             json.dumps(record("x", "\\boxed{8}", pid="s", idx=1, problem=PROBLEMS["c"]))]
    raw = "\n".join(lines).encode() + b"\n"
    raw += json.dumps(record("Bad bytes here.", "\\boxed{8}", pid="u", problem="Bytes?")).encode().replace(
        b"Bad bytes", b"Bad \xff\xfe bytes") + b"\n"
    raw += b'{"truncated json\n' + b"[1, 2, 3]\n" + b"\n"
    (tmp_path / "gens").mkdir()
    (tmp_path / "gens" / "shard-00000.jsonl").write_bytes(raw)
    counts = filter_store(tmp_path / "gens", tmp_path / "out", FilterConfig(workers=1))
    assert counts["generated"] == 7 and counts["kept"] == 2
    assert counts["rejected"] == {"invalid_utf8": 2, "malformed_record": 2, "no_gold_answer": 1}
    rejected = {r["id"]: r for r in ShardedJsonlStore(tmp_path / "out" / "rejected")}
    assert "\ufffd" in rejected["s/0"]["reasoning"] and rejected["s/0"]["checks"]["record"]["reason"] == "invalid_utf8"
    assert "\ufffd" in rejected["u/0"]["completion"]
    assert rejected["malformed:shard-00000.jsonl:6"]["reject_reason"] == "malformed_record"
    assert rejected["n/0"]["checks"]["correctness"]["reason"] == "no_gold_answer"


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix != ".png"}


def test_demo_data_rerun_is_identical_and_reports_are_written(tmp_path):
    """Tiny-arith reference traces (two samples per prompt, one wrong), filtered twice into the same folder."""
    recs = []
    for prompt, reasoning, answer in make_examples("train", 40):
        recs.append(record(reasoning, answer, pid=prompt.id, problem=prompt.problem, gold=prompt.answer,
                           source="tiny-arith", tokens=60))
        wrong = answer.replace("{", "{1")
        recs.append(record(reasoning, wrong, pid=prompt.id, idx=1, problem=prompt.problem, gold=prompt.answer,
                           source="tiny-arith", tokens=61))
    gens = _store(tmp_path / "gens", recs, per_shard=30)
    cfg = FilterConfig()
    first = filter_store(gens, tmp_path / "out", cfg)
    snap = _digest(tmp_path / "out")
    second = filter_store(gens, tmp_path / "out", cfg)
    assert first == second and _digest(tmp_path / "out") == snap
    assert first["kept"] == 40 and first["rejected"] == {"wrong_answer": 40} and first["mean_pass_rate"] == 0.5
    png = tmp_path / "out" / "filter_report.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert not (tmp_path / "out" / ".selection-spool.jsonl").exists()
    assert len(_rows(tmp_path / "out" / "prompt_stats.jsonl")) == 40
    assert not (tmp_path / "out" / "decontamination.json").exists()  # no benchmarks listed
