"""The OpenAI-compatible backend against the real local server (loopback only), with injected faults."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from distill.errors import DistillError
from distill.records import Prompt, Sampling
from distill.teacher.backends.openai_http import (OpenAIChatBackend, Pricing, TokenBucket, backoff_delay,
                                                  parse_retry_after, split_tokens)
from distill.teacher.serve import CANNED_COMPLETION, Faults, ServerConfig, ServerThread

try:
    from tiny_models import build_tiny_teacher
except ImportError:  # tests/ imported as a package
    from tests.tiny_models import build_tiny_teacher

REPO = Path(__file__).resolve().parents[1]


def prompts(k: int) -> list[Prompt]:
    return [Prompt(id=f"p{i:03d}", problem=f"What is {i} + {i + 1}?", answer=str(2 * i + 1)) for i in range(k)]


def backend(url: str, **kw) -> OpenAIChatBackend:
    kw.setdefault("api_key_env", None)
    kw.setdefault("backoff_base_s", 0.05)
    kw.setdefault("backoff_max_s", 0.5)
    kw.setdefault("name", "test-teacher")
    return OpenAIChatBackend(url, "local", **kw)


def check_complete(batches, ps: list[Prompt], n: int) -> None:
    """Every prompt exactly once, each with samples 0..n-1, no id twice."""
    seen = [b[0].prompt_id for b in batches]
    assert sorted(seen) == sorted(p.id for p in ps), "a prompt is missing or repeated"
    ids = [g.id for b in batches for g in b]
    assert len(ids) == len(set(ids)) == len(ps) * n
    for b in batches:
        assert [g.sample_index for g in b] == list(range(n))
        assert len({g.prompt_id for g in b}) == 1


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory) -> Path:
    return build_tiny_teacher(tmp_path_factory.mktemp("tiny-teacher"))


def test_model_server_with_faults_is_complete_and_counted(tiny_teacher):
    schedule = ["429", "500", "drop", "hang", "nonjson", "429", "500", "drop", "badschema", "hang"]
    faults = Faults(schedule=schedule, retry_after_s=1.0, hang_s=8.0)
    with ServerThread(ServerConfig(model_dir=str(tiny_teacher), faults=faults)) as srv:
        be = backend(srv.url, max_in_flight=8, timeout_s=3.0)
        ps = prompts(40)
        t0 = time.monotonic()
        batches = list(be.generate(ps, Sampling(temperature=0.8, top_p=0.95, max_new_tokens=8, n=2, seed=1)))
        elapsed = time.monotonic() - t0
        counts = dict(srv.server.counts)
    check_complete(batches, ps, 2)
    s = be.stats
    assert s.errors["rate_limited"] == 2 and s.errors["server_error"] == 2
    assert s.errors["connection"] == 2 and s.errors["bad_response"] == 2
    assert s.errors["timeout"] >= 2
    assert s.retries == sum(s.errors.values()) and s.failed == {}
    assert s.requests == counts["requests"] and s.in_flight == 0 and s.prompts_done == 40
    assert elapsed >= 1.0  # the 429's Retry-After was waited out
    # usage: the server's counts, re-added from the records, priced at R1 list prices
    assert s.prompt_tokens == sum(b[0].prompt_tokens for b in batches)
    assert s.completion_tokens == sum(g.completion_tokens for b in batches for g in b)
    assert s.cost_usd == pytest.approx(Pricing().cost(s.prompt_tokens, s.completion_tokens))
    g = batches[0][0]
    assert g.teacher == "test-teacher" and g.sampling["n"] == 2 and g.finish_reason in ("stop", "length")


def test_deepseek_shape_reasoning_content_cache_hits_and_cost():
    cfg = ServerConfig(latency_ms=5, reasoning_field="reasoning_content", deepseek_usage=True)
    with ServerThread(cfg) as srv:
        be = backend(srv.url, split_n=True, max_in_flight=16)
        ps = prompts(10)
        batches = list(be.generate(ps, Sampling(n=2, max_new_tokens=100)))
    check_complete(batches, ps, 2)
    for b in batches:
        for g in b:
            assert g.reasoning == "The two numbers add up to 4."
            assert g.answer == "The answer is \\boxed{4}."
            assert g.completion.startswith("<think>\nThe two numbers") and "</think>\n\nThe answer" in g.completion
            assert g.finish_reason == "stop"
    s = be.stats
    assert s.requests == 20  # split_n: one request per sample
    # the second request of each prompt is a cache hit on the whole prompt
    p_tok = sum(b[0].prompt_tokens for b in batches)
    c_tok = sum(g.completion_tokens for b in batches for g in b)
    assert s.cache_hit_tokens == p_tok and s.prompt_tokens == 2 * p_tok and s.completion_tokens == c_tok
    expected = (p_tok * 0.55 + p_tok * 0.14 + c_tok * 2.19) / 1e6
    assert s.cost_usd == pytest.approx(expected)


@pytest.mark.parametrize("field", ["reasoning", None])
def test_vllm_reasoning_field_and_inline_think(field):
    with ServerThread(ServerConfig(latency_ms=1, reasoning_field=field)) as srv:
        be = backend(srv.url, pricing=Pricing.free())
        batches = list(be.generate(prompts(3), Sampling(n=3, max_new_tokens=100)))
        cut = list(be.generate(prompts(2), Sampling(n=1, max_new_tokens=3)))
    for g in (g for b in batches for g in b):
        assert (g.reasoning, g.answer, g.finish_reason) == ("The two numbers add up to 4.",
                                                            "The answer is \\boxed{4}.", "stop")
    assert all(g.completion_tokens == len(CANNED_COMPLETION.split(" ")) for b in batches for g in b)
    for g in (g for b in cut for g in b):  # cut by max_tokens inside the think block: not a complete trace
        assert g.finish_reason == "length" and g.reasoning is None and g.completion.startswith("<think>\nThe two")
    assert be.stats.cost_usd == 0.0


def test_bad_key_fails_fast_without_leaking_it(monkeypatch, caplog):
    secret = "sk-test-DO-NOT-LEAK-8f3a91"
    monkeypatch.setenv("DISTILL_TEST_KEY", secret)
    caplog.set_level(logging.DEBUG)
    with ServerThread(ServerConfig(latency_ms=1, api_key="the-right-key")) as srv:
        be = backend(srv.url, api_key_env="DISTILL_TEST_KEY", max_in_flight=4, backoff_base_s=1.0)
        t0 = time.monotonic()
        with pytest.raises(DistillError) as info:
            list(be.generate(prompts(50), Sampling(n=1)))
        assert time.monotonic() - t0 < 5
        rejected = srv.server.counts["401"]
    msg = str(info.value)
    assert "401" in msg and "DISTILL_TEST_KEY" in msg and "rejected the API key" in msg
    assert be.stats.retries == 0 and rejected <= 4 + 8  # the first wave only, no retry storm
    for text in (msg, repr(info.value), repr(be), str(vars(be)), json.dumps(be.stats.to_dict()), caplog.text):
        assert secret not in text
    assert info.value.__cause__ is None


def test_missing_key_env_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("DISTILL_NO_SUCH_KEY", raising=False)
    with pytest.raises(DistillError, match="DISTILL_NO_SUCH_KEY is not set"):
        OpenAIChatBackend("http://127.0.0.1:9/v1", "m", api_key_env="DISTILL_NO_SUCH_KEY")


def test_non_json_responses_fail_prompts_not_the_run():
    with ServerThread(ServerConfig(latency_ms=1, faults=Faults(rates={"nonjson": 1.0}))) as srv:
        be = backend(srv.url, max_retries=2, backoff_base_s=0.01)
        batches = list(be.generate(prompts(5), Sampling(n=2)))
    assert batches == []
    s = be.stats
    assert s.failed_prompts == 5 and s.errors["bad_response"] == 15 and s.retries == 10
    assert all("not JSON" in r and "gave up after 3 attempts" in r for r in s.failed.values())


def test_rejected_request_is_not_retried_and_wrong_url_fails_fast():
    with ServerThread(ServerConfig(latency_ms=1)) as srv:
        be = backend(srv.url, extra_body={"max_tokens": "lots"})  # the server answers 400
        assert list(be.generate(prompts(3), Sampling(n=1))) == []
        assert be.stats.errors["bad_request"] == 3 and be.stats.retries == 0 and be.stats.requests == 3
        assert all("HTTP 400, not retried" in r for r in be.stats.failed.values())
        no_v1 = backend(srv.url.removesuffix("/v1"))
        with pytest.raises(DistillError, match="404.*/v1 suffix"):
            list(no_v1.generate(prompts(3), Sampling(n=1)))
        assert no_v1.stats.retries == 0


def test_requests_per_minute_limit_paces_the_client():
    with ServerThread(ServerConfig(latency_ms=1)) as srv:
        be = backend(srv.url, rpm=1200)  # 20/s with a burst of 20
        t0 = time.monotonic()
        assert len(list(be.generate(prompts(30), Sampling(n=1)))) == 30
        assert time.monotonic() - t0 >= 0.45


def test_deepseek_preset(monkeypatch):
    monkeypatch.setenv("DEEPSEEK_API_KEY", "sk-preset-secret")
    be = OpenAIChatBackend.deepseek()
    assert (be.url, be.model, be.split_n) == ("https://api.deepseek.com/chat/completions", "deepseek-reasoner", True)
    assert "sk-preset-secret" not in repr(be) + str(vars(be))
    assert be.pricing == Pricing(input=0.55, input_cache_hit=0.14, output=2.19)


def test_consumer_stopping_early_stops_the_client():
    with ServerThread(ServerConfig(latency_ms=50)) as srv:
        be = backend(srv.url, max_in_flight=4)
        gen = be.generate(prompts(100), Sampling(n=1))
        first = next(gen)
        t0 = time.monotonic()
        gen.close()
        assert time.monotonic() - t0 < 3
    assert len(first) == 1
    assert not [t for t in threading.enumerate() if t.name == "test-teacher-http"]
    assert be.stats.prompts_done < 100


def test_cli_server_in_a_subprocess():
    proc = subprocess.Popen([sys.executable, "-m", "distill.teacher.serve", "--latency-ms", "2", "--port", "0",
                             "--reasoning-field", "reasoning_content"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        line = proc.stdout.readline()
        assert "serving" in line, line
        url = line.split(" on ")[1].strip()
        assert url.startswith("http://127.0.0.1:")
        models = json.load(urllib.request.urlopen(url + "/models", timeout=5))
        assert models["data"][0]["id"] == "echo"
        batches = list(backend(url).generate(prompts(3), Sampling(n=2)))
        check_complete(batches, prompts(3), 2)
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize("served", ["accounts/fireworks/models/deepseek-r1", "deepseek-r1:7b"])
def test_a_served_model_name_is_sent_as_it_is(tmp_path, served):
    """Endpoint model names are neither folders nor Hub ids (Fireworks' have three slashes, Ollama's a colon); the
    generate stage refused the first as "model folder not found" before sending a request. Through the CLI."""
    from tests.conftest import run_cli

    with ServerThread(ServerConfig(latency_ms=1)) as srv:
        proc = run_cli("teacher", "generate", "tiny", "--out", str(tmp_path / "run"), "--set",
                       "teacher=openai-compatible", "--set", f"teacher.model={served}", "--set",
                       f"teacher.http.base_url={srv.url}", "--set", "teacher.sampling.n=1", "--set",
                       "data.train_size=3", timeout=120)
        answered = srv.server.counts["ok"]
    assert proc.returncode == 0, proc.stderr[-2000:]
    manifest = json.loads((tmp_path / "run" / "generations" / "manifest.json").read_text())
    assert manifest["counts"]["samples_total"] == answered == 3 and manifest["config"]["model"] == served


def test_a_served_teacher_is_evaluated_through_its_endpoint(tmp_path):
    """The eval stage scored the teacher by loading its model with transformers: an endpoint's model (or R1 under
    vLLM) is no local folder, so a run with a served teacher failed at eval, after generation and training. The
    teacher is now evaluated through its own backend; the students still load with transformers."""
    from distill.config import load_recipe
    from distill.evaluate.run import evaluate
    from distill.pipeline import eval_backend, eval_targets

    assert eval_backend(load_recipe("tiny", []), "teacher") is None  # the bundled teacher: transformers
    with ServerThread(ServerConfig(latency_ms=1)) as srv:
        recipe = load_recipe("tiny", ["teacher=openai-compatible", "teacher.model=deepseek-r1:7b",
                                      f"teacher.http.base_url={srv.url}"])
        assert eval_backend(recipe, "student") is None
        backend = eval_backend(recipe, "teacher")
        assert isinstance(backend, OpenAIChatBackend) and backend.model == "deepseek-r1:7b"
        bench = recipe.eval.benchmarks[0].model_copy(update={"limit": 2, "k": 1})
        results = evaluate(eval_targets(recipe, tmp_path)["teacher"], bench, tmp_path / "eval", name="teacher",
                           backend=backend)
        assert srv.server.counts["ok"] == 2
    assert results["model"] == "teacher" and results["stopped_fraction"] == 1.0


def test_a_random_student_needs_its_own_tokenizer_beside_a_served_teacher():
    """A student built from init_config takes the teacher's tokenizer; a served teacher has none here. Refused
    before the teacher generates (run_pipeline checks the student's inputs first), naming the key to set."""
    from distill.config import load_recipe
    from distill.pipeline import check_student_inputs

    served = ["teacher=openai-compatible", "teacher.model=accounts/fireworks/models/deepseek-r1"]
    with pytest.raises(DistillError, match=r"^student\.tokenizer: a student built from init_config takes its "
                                           r"tokenizer from the teacher, but teacher 'openai-compatible' is served"):
        check_student_inputs(load_recipe("tiny", served))
    check_student_inputs(load_recipe("tiny", [*served, "student.tokenizer=teachers/tiny-arith"]))


def test_distill_run_refuses_a_student_without_a_tokenizer_before_the_teacher_generates(tmp_path):
    from tests.conftest import run_cli

    proc = run_cli("run", "tiny", "--out", str(tmp_path / "run"), "--set", "teacher=openai-compatible",
                   "--set", "teacher.http.base_url=http://127.0.0.1:9/v1", timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error: student.tokenizer: a student built from"), \
        proc.stderr[-2000:]
    assert not (tmp_path / "run" / "generations").exists()


# --- pieces -----------------------------------------------------------------------------------------------------
def test_backoff_jitter_and_retry_after():
    import random
    rng = random.Random(0)
    delays = [backoff_delay(a, 0.5, 8.0, rng=rng) for a in range(10) for _ in range(20)]
    assert all(0 <= d <= 8.0 for d in delays) and len(set(delays)) > 100
    assert all(backoff_delay(0, 0.5, 8.0, retry_after=3.0, rng=rng) >= 3.0 for _ in range(20))
    assert parse_retry_after("2") == 2.0 and parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: retry now


def test_split_tokens_adds_up():
    assert split_tokens(10, ["aaaa", "a"]) == [8, 2]
    assert sum(split_tokens(101, ["x" * 7, "y" * 13, ""])) == 101


def test_token_bucket_paces_requests():
    async def go() -> float:
        bucket = TokenBucket(per_minute=1200)  # 20/s, burst of 20
        t0 = time.monotonic()
        for _ in range(30):
            await bucket.acquire(1)
        return time.monotonic() - t0
    assert 0.4 <= asyncio.run(go()) < 1.5
