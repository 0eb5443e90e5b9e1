"""Teacher backend for OpenAI-compatible chat-completions servers: the DeepSeek API, vLLM and SGLang.

Why it looks the way it does:

- Distilling R1 means hundreds of thousands of long requests, so the client keeps ``max_in_flight`` requests open
  at once (a pool of workers on one asyncio loop, aiohttp) and spends little CPU per request; ``generate`` stays a plain sync
  generator (the loop runs in a background thread) so the generate stage needs no asyncio.
- Servers shed load with 429/5xx, drop connections and hang. Those are retried with exponential backoff and full
  jitter, honouring ``Retry-After``; a prompt that still fails after ``max_retries`` is reported in ``stats.failed``
  and not yielded, so it is simply generated again on the next run (the stage resumes on missing ids).
- A rejected key (401/403), an unknown model/URL (404) or an empty balance (402) would fail every request: the first
  one stops the run with one DistillError instead of a storm of retries.
- The API key is read from the environment, lives in a ``_Secret`` that never prints, and is sent only in the
  ``Authorization`` header; server messages are scrubbed of it before they reach an exception or a log line.
- Reasoning comes back in three shapes: ``message.reasoning_content`` (DeepSeek API, vLLM/SGLang reasoning parser),
  ``message.reasoning`` (newer vLLM), or inline in ``content`` as ``...</think>answer`` (no parser; the ``<think>``
  opening tag is usually missing because the chat template pre-fills it). All end up in the same Generation.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import os
import queue
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

from ...chat_template import THINK_PREFILL, user_message
from ...errors import DistillError
from ...records import Generation, Prompt, Sampling
from .base import make_generation

log = logging.getLogger(__name__)

DEEPSEEK_BASE_URL = "https://api.deepseek.com"
RETRY_AFTER_CAP_S = 300.0


# --- money and counters ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pricing:
    """USD per 1M tokens. Defaults are DeepSeek-R1 list prices (cache miss, cache hit, output)."""

    input: float = 0.55
    input_cache_hit: float = 0.14
    output: float = 2.19

    @classmethod
    def free(cls) -> "Pricing":
        """For a self-hosted vLLM/SGLang server, where tokens cost nothing per request."""
        return cls(0.0, 0.0, 0.0)

    def cost(self, prompt_tokens: int, completion_tokens: int, cache_hit_tokens: int = 0) -> float:
        miss = max(prompt_tokens - cache_hit_tokens, 0)
        return (miss * self.input + cache_hit_tokens * self.input_cache_hit + completion_tokens * self.output) / 1e6


FAILURE_KINDS = ("rate_limited", "server_error", "timeout", "connection", "bad_response", "bad_request")


@dataclass
class HttpStats:
    """Live counters, written by the client loop and read by the stage for progress and the manifest.

    ``errors`` counts failed *attempts* by kind; ``failed`` maps a prompt id to the reason it was given up on.
    """

    requests: int = 0
    retries: int = 0
    prompts_done: int = 0
    errors: dict[str, int] = field(default_factory=lambda: {k: 0 for k in FAILURE_KINDS})
    failed: dict[str, str] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_hit_tokens: int = 0
    cost_usd: float = 0.0
    in_flight: int = 0

    @property
    def failed_prompts(self) -> int:
        return len(self.failed)

    def to_dict(self) -> dict[str, Any]:
        """A snapshot; safe to call from another thread while the client runs (plain dict copies are atomic)."""
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["errors"], d["failed"] = dict(self.errors), dict(self.failed)
        d["failed_prompts"] = len(d["failed"])
        return d


# --- small helpers --------------------------------------------------------------------------------------------------
class _Secret:
    """Holds the API key so that no repr, str, log line or stats dump can show it."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def scrub(self, text: str) -> str:
        return text.replace(self._value, "***") if self._value else text

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__

    def __reduce__(self):  # never pickled into a worker or a cache
        raise TypeError("the API key cannot be pickled")


class TokenBucket:
    """Token bucket for requests/min or tokens/min. The level may go negative: the tokens-per-minute bucket is
    charged an estimate before a request and corrected with the real usage after it, so waits follow real spend."""

    def __init__(self, per_minute: float, clock=time.monotonic):
        if per_minute <= 0:
            raise DistillError(f"rate limit must be positive, got {per_minute}")
        self.rate = per_minute / 60.0
        self.capacity = max(per_minute / 60.0, 1.0)  # at most one second's worth in a burst
        self.level = self.capacity
        self._clock = clock
        self._t = clock()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self.level = min(self.capacity, self.level + (now - self._t) * self.rate)
        self._t = now

    async def acquire(self, cost: float = 1.0) -> None:
        async with self._lock:  # FIFO: one waiter at a time drains the bucket
            need = min(cost, self.capacity)
            while True:
                self._refill()
                if self.level >= need:
                    self.level -= cost
                    return
                await asyncio.sleep((need - self.level) / self.rate)

    def charge(self, cost: float) -> None:
        self._refill()
        self.level -= cost


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds (a number, or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    try:
        return min(max(float(value), 0.0), RETRY_AFTER_CAP_S)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return min(max(when.timestamp() - time.time(), 0.0), RETRY_AFTER_CAP_S)


def backoff_delay(attempt: int, base_s: float, max_s: float, retry_after: float | None = None,
                  rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter (uniform in [0, min(max, base * 2**attempt)]), never shorter than a
    server's Retry-After."""
    delay = (rng or random).uniform(0.0, min(max_s, base_s * (2 ** attempt)))
    return max(delay, retry_after) if retry_after is not None else delay


def split_tokens(total: int, texts: list[str]) -> list[int]:
    """Share a request's completion tokens among its n choices in proportion to their text length.

    Servers report usage per request, not per choice; the shares add up to the exact total (largest remainder)."""
    if not texts:
        return []
    weights = [max(len(t), 1) for t in texts]
    s = sum(weights)
    raw = [total * w / s for w in weights]
    shares = [int(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: raw[i] - shares[i], reverse=True)[: total - sum(shares)]:
        shares[i] += 1
    return shares


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (vLLM and SGLang already depend on it): it roughly halves the event loop's CPU per
    request, which is what bounds a client holding 1,000 requests open on a few cores; asyncio's loop otherwise."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def raise_nofile_limit(wanted: int) -> None:
    """Each open request holds a socket; lift the soft open-files limit toward the hard one if it is too low."""
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ImportError, ValueError, OSError):
        pass


class _Fatal(Exception):
    """Every request would fail the same way (bad key, unknown model): stop the whole run."""


class _Retryable(Exception):
    def __init__(self, kind: str, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.kind, self.reason, self.retry_after = kind, reason, retry_after


class _GiveUp(Exception):
    """This prompt failed (retries exhausted or a request the server will never accept); others go on."""


@dataclass
class _Choice:
    completion: str
    reasoning: str | None
    finish_reason: str
    text_for_share: str


# --- the backend ----------------------------------------------------------------------------------------------------
class OpenAIChatBackend:
    """Generates with any OpenAI-compatible ``/chat/completions`` endpoint.

    ``base_url`` is what the OpenAI SDK takes (``https://api.deepseek.com``, ``http://127.0.0.1:8000/v1``).
    ``api_key_env`` names the environment variable holding the key (None: send no key, for a local server).
    ``split_n`` sends n requests with n=1 (seeds ``seed + i``) for APIs that ignore ``n`` (DeepSeek).
    ``rpm``/``tpm`` cap requests/tokens per minute. ``timeout_s`` bounds one request end to end: raise it for long
    ``max_new_tokens`` on slow APIs. ``max_retries`` counts retries after the first attempt. ``extra_body`` is merged
    into every request (e.g. ``{"top_k": -1}`` for vLLM). ``stats`` is live (see :class:`HttpStats`).
    """

    def __init__(self, base_url: str, model: str, *, api_key_env: str | None = "OPENAI_API_KEY",
                 max_in_flight: int = 1000, timeout_s: float = 600.0, max_retries: int = 8,
                 rpm: float | None = None, tpm: float | None = None, pricing: Pricing = Pricing(),
                 split_n: bool = False, name: str | None = None, backoff_base_s: float = 1.0,
                 backoff_max_s: float = 60.0, extra_body: dict[str, Any] | None = None):
        if max_in_flight < 1:
            raise DistillError(f"max_in_flight must be at least 1, got {max_in_flight}")
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/chat/completions"
        self.model = model
        self.name = name or model
        self.api_key_env = api_key_env
        self._key = _Secret("")
        if api_key_env:
            value = os.environ.get(api_key_env, "").strip()
            if not value:
                raise DistillError(f"environment variable {api_key_env} is not set; it must hold the API key "
                                   f"for {self.base_url}")
            self._key = _Secret(value)
        self.max_in_flight = max_in_flight
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.rpm, self.tpm = rpm, tpm
        self.pricing = pricing
        self.split_n = split_n
        self.backoff_base_s, self.backoff_max_s = backoff_base_s, backoff_max_s
        self.extra_body = dict(extra_body or {})
        self.stats = HttpStats()

    @classmethod
    def deepseek(cls, model: str = "deepseek-reasoner", **kw: Any) -> "OpenAIChatBackend":
        """The DeepSeek API: key in DEEPSEEK_API_KEY, one sample per request (the API has no ``n``)."""
        kw.setdefault("api_key_env", "DEEPSEEK_API_KEY")
        kw.setdefault("split_n", True)
        return cls(kw.pop("base_url", DEEPSEEK_BASE_URL), model, **kw)

    def __repr__(self) -> str:
        return (f"OpenAIChatBackend(base_url={self.base_url!r}, model={self.model!r}, "
                f"api_key_env={self.api_key_env!r}, max_in_flight={self.max_in_flight})")

    # --- sync surface ---------------------------------------------------------------------------------------------
    def generate(self, prompts: list[Prompt], sampling: Sampling) -> Iterator[list[Generation]]:
        """Yield each prompt's n generations as soon as they are all in; failed prompts are left out (see stats)."""
        results: queue.Queue = queue.Queue()
        loop = new_event_loop()
        main: dict[str, asyncio.Task] = {}

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                main["task"] = loop.create_task(self._run(list(prompts), sampling, results))
                loop.run_until_complete(main["task"])
            except asyncio.CancelledError:
                pass
            except BaseException as exc:  # surfaced in the caller's thread
                results.put(("error", exc))
            finally:
                try:
                    loop.run_until_complete(loop.shutdown_asyncgens())
                finally:
                    loop.close()
                results.put(("end", None))

        thread = threading.Thread(target=run, name=f"{self.name}-http", daemon=True)
        thread.start()
        try:
            while True:
                kind, item = results.get()
                if kind == "ok":
                    yield from item
                elif kind == "error":
                    raise item
                else:
                    return
        finally:
            if thread.is_alive():  # the consumer stopped early or failed: cancel what is still in flight
                def cancel() -> None:
                    if "task" in main:
                        main["task"].cancel()
                try:
                    loop.call_soon_threadsafe(cancel)
                except RuntimeError:
                    pass
                thread.join(timeout=30)

    # --- async core -------------------------------------------------------------------------------------------------
    async def _run(self, prompts: list[Prompt], sampling: Sampling, results: queue.Queue) -> None:
        import aiohttp
        import yarl

        raise_nofile_limit(self.max_in_flight * 2 + 256)
        self._sem = asyncio.Semaphore(self.max_in_flight)
        self._rpm = TokenBucket(self.rpm) if self.rpm else None
        self._tpm = TokenBucket(self.tpm) if self.tpm else None
        headers = {"Content-Type": "application/json"}
        if self._key.reveal():
            headers["Authorization"] = f"Bearer {self._key.reveal()}"
        # Plain http (a local vLLM/SGLang) needs no TLS context; building one costs ~40 ms of CPU per run.
        tls = None if self.url.startswith("https://") else False
        connector = aiohttp.TCPConnector(limit=self.max_in_flight, limit_per_host=0, ssl=tls)
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        # A fixed pool of workers, each taking the next prompt as soon as its last one is done: a finished request
        # is replaced within the same loop step, memory stays bounded for a million prompts, and a worker sleeping
        # out a backoff holds no connection. With split_n each worker has n requests open at once.
        per_prompt = sampling.n if self.split_n else 1
        n_workers = max(1, self.max_in_flight // per_prompt)
        self._yurl = yarl.URL(self.url)  # parsed once, not per request
        fatal: list[BaseException] = []
        pending = iter(prompts)
        loop = asyncio.get_running_loop()
        # Finished prompts go to the consumer thread in one batch per loop iteration, not one wake-up per prompt.
        ready: list[list[Generation]] = []

        def flush() -> None:
            results.put(("ok", ready[:]))
            ready.clear()

        async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers,
                                         json_serialize=json.dumps, raise_for_status=False,
                                         auto_decompress=True, trust_env=False,
                                         cookie_jar=aiohttp.DummyCookieJar()) as session:
            async def worker() -> None:
                for prompt in pending:  # one shared iterator: each prompt goes to exactly one worker
                    try:
                        gens = await self._prompt(session, prompt, sampling)
                    except _GiveUp as exc:
                        self.stats.failed[prompt.id] = str(exc)
                        log.warning("%s: prompt %s failed: %s", self.name, prompt.id, exc)
                        continue
                    except asyncio.CancelledError:
                        raise
                    except BaseException as exc:  # fatal (bad key...) or a bug: stop everyone
                        fatal.append(exc)
                        for w in workers:
                            if w is not asyncio.current_task():
                                w.cancel()
                        return
                    self.stats.prompts_done += 1
                    if self.stats.failed:  # it failed in an earlier generate() call and now made it
                        self.stats.failed.pop(prompt.id, None)
                    if not ready:
                        loop.call_soon(flush)
                    ready.append(gens)

            workers = [loop.create_task(worker()) for _ in range(n_workers)]
            try:
                await asyncio.gather(*workers, return_exceptions=True)
                await asyncio.sleep(0)  # let the last flush run
            finally:  # cancelled (the consumer stopped): leave no request behind
                for w in workers:
                    w.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
        if fatal:
            exc = fatal[0]
            if isinstance(exc, _Fatal):
                raise DistillError(str(exc)) from None
            raise exc

    async def _prompt(self, session, prompt: Prompt, sampling: Sampling) -> list[Generation]:
        messages = [{"role": "user", "content": user_message(prompt.problem)}]
        estimate = len(messages[0]["content"]) // 4 + 8
        if self.split_n and sampling.n > 1:
            parts = await asyncio.gather(*[
                self._request(session, messages, sampling, 1, sampling.seed + i, estimate)
                for i in range(sampling.n)], return_exceptions=True)
            for p in parts:
                if isinstance(p, BaseException):
                    raise p
            choices, p_tok, c_tok = [], 0, []
            for ch, pt, ct in parts:
                choices += ch
                p_tok = pt
                c_tok.append(ct)
        else:
            choices, p_tok, total = await self._request(session, messages, sampling, sampling.n, sampling.seed,
                                                        estimate)
            c_tok = split_tokens(total, [c.text_for_share for c in choices])
        return [make_generation(prompt, i, ch.completion, ch.finish_reason, prompt_tokens=p_tok,
                                completion_tokens=c_tok[i], teacher=self.name, sampling=sampling,
                                reasoning=ch.reasoning)
                for i, ch in enumerate(choices)]

    async def _request(self, session, messages: list[dict], sampling: Sampling, n: int, seed: int,
                       estimate: int) -> tuple[list[_Choice], int, int]:
        """One chat-completions call with retries. Returns (choices, prompt_tokens, completion_tokens)."""
        payload = {"model": self.model, "messages": messages, "temperature": sampling.temperature,
                   "top_p": sampling.top_p, "max_tokens": sampling.max_new_tokens, "n": n, "seed": seed,
                   "stream": False, **self.extra_body}
        body = json.dumps(payload).encode()
        for attempt in range(self.max_retries + 1):
            try:
                if self._rpm:
                    await self._rpm.acquire(1)
                if self._tpm:
                    await self._tpm.acquire(estimate)
                async with self._sem:
                    self.stats.requests += 1
                    self.stats.in_flight += 1
                    try:
                        parsed = await self._attempt(session, body, n)
                    finally:
                        self.stats.in_flight -= 1
                choices, p_tok, c_tok, hit = parsed
                self.stats.prompt_tokens += p_tok
                self.stats.completion_tokens += c_tok
                self.stats.cache_hit_tokens += hit
                self.stats.cost_usd += self.pricing.cost(p_tok, c_tok, hit)
                if self._tpm:
                    self._tpm.charge(p_tok + c_tok - estimate)
                return choices, p_tok, c_tok
            except _Retryable as err:
                self.stats.errors[err.kind] = self.stats.errors.get(err.kind, 0) + 1
                if attempt >= self.max_retries:
                    raise _GiveUp(f"gave up after {attempt + 1} attempts; last error: {err.reason}") from None
                self.stats.retries += 1
                delay = backoff_delay(attempt, self.backoff_base_s, self.backoff_max_s, err.retry_after)
                log.debug("%s: %s (%s), retrying in %.2fs", self.name, err.kind, err.reason, delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _attempt(self, session, body: bytes, n: int) -> tuple[list[_Choice], int, int, int]:
        import aiohttp

        try:
            async with session.post(self._yurl, data=body) as resp:
                status = resp.status
                raw = await resp.read()
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        except asyncio.TimeoutError:
            raise _Retryable("timeout", f"no complete response within {self.timeout_s:g}s") from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, ConnectionError) as exc:
            raise _Retryable("connection", f"{exc.__class__.__name__}: {self._key.scrub(str(exc))[:200]}") from None
        if status == 200:
            return self._parse(raw, n)
        snippet = self._key.scrub(raw[:300].decode("utf-8", "replace")).strip()
        if status in (401, 403):
            where = f"environment variable {self.api_key_env}" if self.api_key_env else "no key was sent"
            raise _Fatal(f"{self.base_url} rejected the API key (HTTP {status}; {where}): {snippet[:200]}")
        if status == 402:
            raise _Fatal(f"{self.base_url} refused the request for lack of credit (HTTP 402): {snippet[:200]}")
        if status == 404:
            raise _Fatal(f"{self.url} answered 404 for model {self.model!r}: check base_url (vLLM/SGLang need "
                         f"the /v1 suffix) and the model name: {snippet[:200]}")
        if status == 429:
            raise _Retryable("rate_limited", f"HTTP 429: {snippet[:200]}", retry_after)
        if status >= 500 or status == 408:
            raise _Retryable("server_error" if status >= 500 else "timeout", f"HTTP {status}: {snippet[:200]}",
                             retry_after)
        # 400/413/422...: this request will never be accepted (e.g. prompt longer than the context): give it up.
        self.stats.errors["bad_request"] += 1
        raise _GiveUp(f"HTTP {status}, not retried: {snippet[:300]}")

    def _parse(self, raw: bytes, n: int) -> tuple[list[_Choice], int, int, int]:
        """Validate and unpack a 200 response; anything off is a retryable ``bad_response`` with a clear reason."""
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, ValueError):
            preview = self._key.scrub(raw[:80].decode("utf-8", "replace"))
            raise _Retryable("bad_response", f"response body is not JSON (starts {preview!r})") from None
        try:
            if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
                raise ValueError("no 'choices' list")
            raw_choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
            if len(raw_choices) != n:
                raise ValueError(f"{len(raw_choices)} choices for n={n}")
            choices = [self._choice(c) for c in raw_choices]
            usage = data.get("usage") or {}
            p_tok = int(usage.get("prompt_tokens") or 0)
            c_tok = int(usage.get("completion_tokens") or 0)
            hit = usage.get("prompt_cache_hit_tokens")
            if hit is None:
                hit = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
            return choices, p_tok, c_tok, int(hit or 0)
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            raise _Retryable("bad_response", f"response JSON does not match the chat-completions schema: {exc}") \
                from None

    @staticmethod
    def _choice(c: dict[str, Any]) -> _Choice:
        msg = c["message"]
        if not isinstance(msg, dict):
            raise ValueError("'message' is not an object")
        content = msg.get("content")
        reasoning = msg.get("reasoning_content")
        if reasoning is None:
            reasoning = msg.get("reasoning")
        if content is not None and not isinstance(content, str) or reasoning is not None and \
                not isinstance(reasoning, str):
            raise ValueError("'content'/'reasoning_content' is not a string")
        finish = c.get("finish_reason") or "stop"
        if reasoning is None:
            text = content or ""
            return _Choice(text, None, finish, text)
        if content is None or (finish == "length" and not content.strip()):
            # The think block never closed (cut by max_tokens, or the parser found no </think>): keep it unclosed
            # so the record shows reasoning=None instead of a fake complete trace.
            return _Choice(THINK_PREFILL + reasoning, None, finish, reasoning)
        return _Choice(content, reasoning, finish, reasoning + content)
