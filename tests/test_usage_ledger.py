"""Spend across resumed runs: every token the teacher billed and saved is counted once, in a crash-safe ledger."""

from __future__ import annotations

import json

from distill.records import ShardedJsonlStore
from distill.teacher.backends.openai_http import Pricing
from distill.teacher.ledger import LEDGER_NAME, UsageLedger, flatten_counters
from distill.teacher.serve import ServerConfig, ServerThread
from tests.conftest import run_cli, sigkill_cli_when


def test_ledger_adds_growth_once_and_survives_a_torn_line(tmp_path):
    with UsageLedger(tmp_path) as ledger:
        assert ledger.record({"prompt_tokens": 10, "cost_usd": 0.5, "in_flight": 3, "errors": {"timeout": 1}}) == {
            "prompt_tokens": 10, "cost_usd": 0.5, "errors.timeout": 1}
        assert ledger.record({"prompt_tokens": 10, "cost_usd": 0.5, "in_flight": 7, "errors": {"timeout": 1}}) == {}
        ledger.record({"prompt_tokens": 25, "cost_usd": 0.75, "in_flight": 0, "errors": {"timeout": 1}})
    with open(tmp_path / LEDGER_NAME, "a") as fh:  # a crash in the middle of a write
        fh.write('{"run": "x", "delta": {"prompt_tok')
    with UsageLedger(tmp_path) as second:  # a resumed run starts its own counters at zero
        assert second.totals() == {"cost_usd": 0.75, "errors.timeout": 1, "prompt_tokens": 25}
        second.record({"prompt_tokens": 5, "cost_usd": 0.25})
    ledger = UsageLedger(tmp_path)
    assert ledger.totals() == {"cost_usd": 1.0, "errors.timeout": 1, "prompt_tokens": 30}
    assert ledger.runs() == 2
    assert flatten_counters({"failed": {"p1": "gave up"}, "failed_prompts": 1, "ok": True, "n": 2}) == {"n": 2}


def test_spend_adds_up_across_a_sigkill_and_a_resume(tmp_path):
    """A priced endpoint (R1 list prices), a run killed mid-way, a rerun: the manifest's spend is both runs' spend,
    never more than the server billed, never less than the samples kept."""
    out = tmp_path / "run"
    gens = out / "generations"
    with ServerThread(ServerConfig(latency_ms=150, deepseek_usage=True)) as srv:
        args = ["teacher", "generate", "tiny", "--out", str(out), "--set", "teacher=openai-compatible",
                "--set", f"teacher.http.base_url={srv.url}", "--set", "teacher.http.max_in_flight=2",
                "--set", "teacher.http.pricing.input=0.55", "--set", "teacher.http.pricing.input_cache_hit=0.14",
                "--set", "teacher.http.pricing.output=2.19", "--set", "teacher.sampling.n=2",
                "--set", "teacher.sampling.max_new_tokens=64", "--set", "data.train_size=60"]
        sigkill_cli_when(args, gens, records=20, timeout=120)
        first = UsageLedger(gens).totals()
        assert first["requests"] >= 10 and first["cost_usd"] > 0
        rerun = run_cli(*args)
        assert rerun.returncode == 0, rerun.stderr
        billed = dict(srv.server.counts)

    records = list(ShardedJsonlStore(gens))
    assert len(records) == len({r["id"] for r in records}) == 120
    manifest = json.loads((gens / "manifest.json").read_text())
    total, this_run = manifest["tokens"], manifest["tokens_this_run"]
    assert manifest["counts"]["runs"] == 2 and total == UsageLedger(gens).totals()
    # Each saved sample was paid for once; at most the two requests in flight at the kill are missing.
    kept = sum(r["completion_tokens"] for r in records)
    assert kept <= total["completion_tokens"] <= billed["completion_tokens"]
    assert billed["ok"] - 2 <= total["requests"] <= billed["ok"]
    assert total["requests"] == first["requests"] + this_run["requests"]
    assert abs(total["cost_usd"] - first["cost_usd"] - this_run["cost_usd"]) < 1e-6
    price = Pricing(input=0.55, input_cache_hit=0.14, output=2.19)
    expected = price.cost(total["prompt_tokens"], total["completion_tokens"], total["cache_hit_tokens"])
    assert abs(total["cost_usd"] - expected) < 1e-6
