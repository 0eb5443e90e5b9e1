"""An LLM judge for answers the rule-based verifiers rejected (off by default).

Why: exact and symbolic matching reject many right answers written differently (units, words, an equivalent form
math-verify cannot parse); an LLM judge recovered many of these false negatives in the open reproductions
(REFERENCE.md). A judge is just ``(problem, gold, answer) -> bool``, so the filter does not care where it comes
from; ``openai_judge`` builds one for any OpenAI-compatible server (an API, vLLM, SGLang) with the standard library
only, POSTing to ``/v1/chat/completions``. The API key is read from the environment at call time and never logged.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from typing import Callable

from ..errors import DistillError

Judge = Callable[[str, str, str], bool]

SYSTEM = ("You grade answers to problems. Compare the student's final answer with the reference answer. "
          "They match if they are mathematically or semantically equivalent, even if written differently. "
          "Ignore the reasoning; judge only the final answer. Reply with exactly one word: CORRECT or INCORRECT.")
USER = "Problem:\n{problem}\n\nReference answer:\n{gold}\n\nStudent's answer:\n{answer}\n\nVerdict:"
RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
_VERDICT = re.compile(r"\b(INCORRECT|CORRECT)\b", re.IGNORECASE)


class JudgeError(RuntimeError):
    """The judge endpoint did not give a usable verdict (after retries)."""


def chat_url(base_url: str) -> str:
    """``http://host:8000`` and ``http://host:8000/v1`` both become ``.../v1/chat/completions``."""
    base = base_url.rstrip("/")
    if base.endswith("/chat/completions"):
        return base
    return base + ("/chat/completions" if base.endswith("/v1") else "/v1/chat/completions")


def parse_verdict(text: str) -> bool:
    """The last CORRECT/INCORRECT word in the reply (reasoning judges think before they answer)."""
    found = _VERDICT.findall(text.rsplit("</think>", 1)[-1] or "")
    if not found:
        raise JudgeError(f"no verdict in judge reply {text[:120]!r}")
    return found[-1].upper() == "CORRECT"


def openai_judge(base_url: str, model: str, *, api_key_env: str | None = "OPENAI_API_KEY", timeout_s: float = 60.0,
                 max_tokens: int = 16, retries: int = 3, backoff_s: float = 1.0,
                 max_answer_chars: int = 4000) -> Judge:
    """A judge backed by an OpenAI-compatible chat-completions endpoint (temperature 0)."""
    url = chat_url(base_url)

    def judge(problem: str, gold: str, answer: str) -> bool:
        body = {"model": model, "temperature": 0.0, "max_tokens": max_tokens,
                "messages": [{"role": "system", "content": SYSTEM},
                             {"role": "user", "content": USER.format(problem=problem, gold=gold,
                                                                    answer=answer[-max_answer_chars:])}]}
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(api_key_env) if api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        last = ""
        for attempt in range(retries):
            req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                    data = json.loads(resp.read().decode("utf-8"))
                msg = data["choices"][0]["message"]
                return parse_verdict(msg.get("content") or "")
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}"
                if exc.code not in RETRY_STATUS:
                    break
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                last = f"{exc.__class__.__name__}: {getattr(exc, 'reason', exc)}"
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                last = f"bad response ({exc.__class__.__name__})"
                break
            time.sleep(backoff_s * (2 ** attempt))
        raise JudgeError(f"judge at {url} failed: {last}")

    return judge


class JudgeRunner:
    """Runs a judge over rejected samples, counting outcomes; too many consecutive failures stop the stage (an
    unreachable judge must not silently turn into "everything stays rejected")."""

    def __init__(self, judge: Judge, *, workers: int = 8, max_consecutive_errors: int = 5, where: str = "judge"):
        self.judge, self.workers, self.max_errors, self.where = judge, max(1, workers), max_consecutive_errors, where
        self.asked = self.accepted = self.errors = 0
        self._consecutive = 0

    def run(self, items: list[tuple[str, str, str]]) -> list[bool | None]:
        """Verdict per (problem, gold, answer): True/False, or None when the judge failed on it."""
        if not items:
            return []
        from concurrent.futures import ThreadPoolExecutor

        def one(item: tuple[str, str, str]) -> bool | None:
            try:
                return self.judge(*item)
            except JudgeError:
                return None

        with ThreadPoolExecutor(max_workers=min(self.workers, len(items))) as pool:
            out = list(pool.map(one, items))
        for v in out:
            self.asked += 1
            if v is None:
                self.errors += 1
                self._consecutive += 1
                if self._consecutive >= self.max_errors:
                    raise DistillError(f"the LLM judge failed {self._consecutive} times in a row; check "
                                       "filter.judge.base_url / model, or turn the judge off", where=self.where)
            else:
                self._consecutive = 0
                self.accepted += v
        return out

    def stats(self) -> dict[str, int]:
        return {"asked": self.asked, "accepted": self.accepted, "errors": self.errors}
