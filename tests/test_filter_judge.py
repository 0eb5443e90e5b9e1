"""The LLM judge against a real HTTP server on 127.0.0.1 speaking the chat-completions protocol."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from distill.config import FilterConfig, JudgeConfig
from distill.errors import DistillError
from distill.filter.judge import JudgeError, chat_url, openai_judge, parse_verdict
from distill.filter.stage import filter_store
from distill.records import ShardedJsonlStore
from tests.test_filter_checks import record


class _Handler(BaseHTTPRequestHandler):
    """Says CORRECT when the student's answer spells the reference in words ("eight" for 8)."""

    WORDS = {"8": "eight", "9": "nine"}

    def do_POST(self):  # noqa: N802 - http.server's naming
        server = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        if server.fail:
            self.send_response(500)
            self.end_headers()
            return
        user = body["messages"][-1]["content"]
        gold = user.split("Reference answer:\n", 1)[1].split("\n", 1)[0]
        answer = user.split("Student's answer:\n", 1)[1]
        verdict = "CORRECT" if self.WORDS.get(gold, "\0") in answer.lower() else "INCORRECT"
        out = json.dumps({"id": "x", "object": "chat.completion", "model": body["model"],
                          "choices": [{"index": 0, "finish_reason": "stop",
                                       "message": {"role": "assistant", "content": verdict}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.requests, srv.fail = [], False
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _url(srv) -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}"


def test_url_and_verdict_parsing():
    assert chat_url("http://h:8000") == "http://h:8000/v1/chat/completions"
    assert chat_url("http://h:8000/v1/") == "http://h:8000/v1/chat/completions"
    assert parse_verdict("CORRECT") and not parse_verdict("Incorrect.")
    assert parse_verdict("<think>maybe INCORRECT?</think>\nCORRECT")
    with pytest.raises(JudgeError):
        parse_verdict("I cannot tell")


def test_judge_posts_chat_completions_with_the_key_from_the_environment(server, monkeypatch):
    monkeypatch.setenv("JUDGE_TEST_KEY", "sk-test")
    judge = openai_judge(_url(server) + "/v1", "judge-model", api_key_env="JUDGE_TEST_KEY")
    assert judge("What is 7 + 1?", "8", "It is eight.") is True
    assert judge("What is 7 + 1?", "8", "It is nine.") is False
    req = server.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sk-test"
    assert req["body"]["model"] == "judge-model" and req["body"]["temperature"] == 0.0


def test_judged_samples_are_kept_and_marked(server, tmp_path):
    recs = [record("7 + 1 = 8.", "The result is eight.", gold="8", idx=0),       # unparsable -> judged correct
            record("7 + 1 = 9.", "The result is nine.", gold="8", idx=1),        # unparsable -> judged wrong
            record("7 + 1 = 8.", "\\boxed{8}", gold="8", idx=2),                 # correct: never judged
            record("7 + 1 = 9.", "\\boxed{9}", gold="8", idx=3, finish="length")]  # truncated: never judged
    with ShardedJsonlStore(tmp_path / "gens") as st:
        st.append(recs)
    cfg = FilterConfig(workers=1, judge=JudgeConfig(enabled=True, base_url=_url(server), model="m", workers=2))
    counts = filter_store(tmp_path / "gens", tmp_path / "out", cfg)
    assert counts["kept"] == 2 and counts["rejected"] == {"truncated": 1, "unparsable_answer": 1}
    assert counts["judge"] == {"asked": 2, "accepted": 1, "errors": 0}
    assert len(server.requests) == 2
    kept = {r["sample_index"]: r for r in ShardedJsonlStore(tmp_path / "out" / "kept")}
    assert kept[0]["judged"] is True and kept[0]["checks"]["correctness"]["judged"] is True
    assert kept[2]["judged"] is False
    (rej,) = [r for r in ShardedJsonlStore(tmp_path / "out" / "rejected") if r["sample_index"] == 1]
    assert rej["checks"]["judge"] == {"passed": False, "reason": "judge_rejected"}
    # Judged-correct samples count as solved for the difficulty estimate.
    (stat,) = [json.loads(line) for line in (tmp_path / "out" / "prompt_stats.jsonl").read_text().splitlines()]
    assert stat["correct"] == 2 and stat["pass_rate"] == 0.5


def test_a_failing_judge_stops_the_stage_instead_of_silently_rejecting(server, tmp_path):
    server.fail = True
    recs = [record("7 + 1 = 9.", "The result is nine.", gold="8", idx=i) for i in range(3)]
    with ShardedJsonlStore(tmp_path / "gens") as st:
        st.append(recs)
    cfg = FilterConfig(workers=1, dedup=False, judge=JudgeConfig(enabled=True, base_url=_url(server), model="m",
                                                                  max_consecutive_errors=3))
    judge = openai_judge(_url(server), "m", retries=2, backoff_s=0.01)
    with pytest.raises(DistillError, match="judge failed 3 times in a row"):
        filter_store(tmp_path / "gens", tmp_path / "out", cfg, judge=judge)
    assert len(server.requests) == 6  # 3 samples x 2 attempts: 500 is retried


def test_enabled_judge_needs_an_endpoint():
    with pytest.raises(ValueError, match="base_url and model"):
        JudgeConfig(enabled=True)
