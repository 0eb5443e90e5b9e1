"""A small OpenAI-compatible chat-completions server for a local transformers model, with fault injection.

Why it exists: the HTTP teacher backend must be tested against a real server that misbehaves the way production
APIs do (429 with Retry-After, 500, dropped connections, hung requests, HTML error pages) and benchmarked at 1,000
concurrent requests, all on loopback without a GPU or network. It is a test and development tool; use vLLM or SGLang
to serve a real teacher.

Modes:
- ``--model DIR``: generate with a transformers causal LM (chat template with ``add_generation_prompt=True``; n,
  temperature, top_p, max_tokens and seed honoured; one generation at a time in a worker thread).
- ``--latency-ms MS`` without ``--model``: "echo" mode; every request gets a canned R1-style completion after a fixed
  delay, with no model (for the client benchmark).

``--reasoning-field`` mimics a reasoning parser (``reasoning_content`` like DeepSeek/vLLM, ``reasoning`` like newer
vLLM); ``--deepseek`` also reports DeepSeek's ``prompt_cache_hit_tokens`` (a prompt seen before counts as a hit).

Run: ``python -m distill.teacher.serve --model DIR --port 8000`` and point the backend at ``http://127.0.0.1:8000/v1``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ..chat_template import THINK_CLOSE, THINK_OPEN
from .backends.openai_http import new_event_loop

FAULT_KINDS = ("429", "500", "drop", "hang", "nonjson", "badschema")
CANNED_COMPLETION = "The two numbers add up to 4.\n</think>\n\nThe answer is \\boxed{4}."


@dataclass
class Faults:
    """Which requests misbehave. ``schedule`` is consumed in arrival order (``ok`` or a fault kind per request);
    after it, each fault kind happens with probability ``rates[kind]``."""

    schedule: list[str] = field(default_factory=list)
    rates: dict[str, float] = field(default_factory=dict)
    retry_after_s: float = 1.0
    hang_s: float = 3600.0
    seed: int = 0

    def __post_init__(self) -> None:
        bad = [k for k in list(self.schedule) + list(self.rates) if k not in FAULT_KINDS + ("ok",)]
        if bad:
            raise ValueError(f"unknown fault kind(s) {bad}; known: {', '.join(FAULT_KINDS)}")
        self._rng = random.Random(self.seed)
        self._pos = 0

    def next(self) -> str:
        if self._pos < len(self.schedule):
            self._pos += 1
            return self.schedule[self._pos - 1]
        x = self._rng.random()
        for kind, rate in self.rates.items():
            if x < rate:
                return kind
            x -= rate
        return "ok"


@dataclass
class ServerConfig:
    model_dir: str | None = None
    served_model_name: str = "local"
    latency_ms: float = 0.0
    latency_jitter: float = 0.0  # each delay is latency_ms * uniform(1 - j, 1 + j): same mean, no lock-step waves
    reasoning_field: str | None = None  # None, "reasoning_content" or "reasoning"
    deepseek_usage: bool = False
    api_key: str | None = None
    faults: Faults = field(default_factory=Faults)


class _LocalModel:
    """A transformers causal LM behind one worker thread (the model is not re-entrant, and CPU is the limit)."""

    def __init__(self, model_dir: str):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tok = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        self.eos_id = self.tok.eos_token_id
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.eos_id

    def prompt_tokens(self, messages: list[dict]) -> list[int]:
        text = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def complete(self, messages: list[dict], n: int, temperature: float, top_p: float, max_tokens: int,
                 seed: int | None) -> tuple[int, list[tuple[str, str, int]]]:
        """Returns (prompt_tokens, [(text, finish_reason, completion_tokens)] * n)."""
        torch = self.torch
        ids = torch.tensor([self.prompt_tokens(messages)])
        kw: dict[str, Any] = {"max_new_tokens": max_tokens, "num_return_sequences": n, "pad_token_id": self.pad_id,
                              "eos_token_id": self.eos_id}
        if temperature > 0:
            kw.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
        else:
            kw.update(do_sample=False)
        if seed is not None:
            torch.manual_seed(seed)
        with torch.no_grad():
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), **kw)
        choices = []
        for row in out[:, ids.shape[1]:].tolist():
            if self.eos_id in row:
                cut = row.index(self.eos_id)
                choices.append((self.tok.decode(row[:cut], skip_special_tokens=True), "stop", cut + 1))
            else:
                choices.append((self.tok.decode(row, skip_special_tokens=True), "length", len(row)))
        return ids.shape[1], choices


def _canned(messages: list[dict], n: int, max_tokens: int) -> tuple[int, list[tuple[str, str, int]]]:
    words = CANNED_COMPLETION.split(" ")
    prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in messages) + 4
    if max_tokens < len(words):
        return prompt_tokens, [(" ".join(words[:max_tokens]), "length", max_tokens)] * n
    return prompt_tokens, [(CANNED_COMPLETION, "stop", len(words))] * n


class ChatServer:
    """The aiohttp application and its state (request and fault counters, the DeepSeek-style prefix cache)."""

    def __init__(self, config: ServerConfig):
        self.config = config
        self.model = _LocalModel(config.model_dir) if config.model_dir else None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="serve-model")
        self.counts: dict[str, int] = {"requests": 0, "ok": 0, **{k: 0 for k in FAULT_KINDS}, "401": 0,
                                       "prompt_tokens": 0, "completion_tokens": 0}
        self._seen_prompts: set[str] = set()
        self.app = web.Application(client_max_size=64 * 1024 * 1024)
        self.app.router.add_post("/v1/chat/completions", self.chat)
        self.app.router.add_get("/v1/models", self.models)

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": self.config.served_model_name, "object": "model", "owned_by": "distill"}]})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        self.counts["requests"] += 1
        cfg = self.config
        if cfg.api_key is not None:
            auth = request.headers.get("Authorization", "")
            if auth != f"Bearer {cfg.api_key}":
                self.counts["401"] += 1
                given = auth.removeprefix("Bearer ")
                # Echoes the key like some real APIs do, so tests prove the client scrubs it.
                return web.json_response({"error": {"message": f"Incorrect API key provided: {given}",
                                                    "type": "authentication_error"}}, status=401)
        fault = cfg.faults.next()
        if fault != "ok":
            self.counts[fault] += 1
            return await self._fault(request, fault)
        try:
            req = await request.json()
            messages = req["messages"]
            n = int(req.get("n") or 1)
            max_tokens = int(req.get("max_tokens") or 256)
            temperature = float(req.get("temperature", 1.0))
            top_p = float(req.get("top_p", 1.0))
            seed = req.get("seed")
            if req.get("stream"):
                raise ValueError("stream=true is not supported by this server")
        except (ValueError, KeyError, TypeError) as exc:
            return web.json_response({"error": {"message": f"bad request: {exc}", "type": "invalid_request"}},
                                     status=400)
        if cfg.latency_ms:
            j = cfg.latency_jitter
            await asyncio.sleep(cfg.latency_ms / 1000 * (random.uniform(1 - j, 1 + j) if j else 1.0))
        if self.model is not None:
            loop = asyncio.get_running_loop()
            prompt_tokens, outs = await loop.run_in_executor(
                self._pool, self.model.complete, messages, n, temperature, top_p, max_tokens, seed)
        else:
            prompt_tokens, outs = _canned(messages, n, max_tokens)
        self.counts["ok"] += 1
        return web.json_response(self._body(req, messages, prompt_tokens, outs), dumps=json.dumps)

    async def _fault(self, request: web.Request, fault: str) -> web.StreamResponse:
        if fault == "429":
            return web.json_response({"error": {"message": "rate limit reached", "type": "rate_limit"}},
                                     status=429, headers={"Retry-After": f"{self.config.faults.retry_after_s:g}"})
        if fault == "500":
            return web.json_response({"error": {"message": "internal error", "type": "server_error"}}, status=500)
        if fault == "drop":
            request.transport.close()  # no status line at all, like a crashed worker or a reset by a proxy
            return web.Response(status=500)
        if fault == "hang":
            await asyncio.sleep(self.config.faults.hang_s)
            return web.Response(status=504)
        if fault == "nonjson":
            return web.Response(text="<html><body><h1>502 Bad Gateway</h1></body></html>", content_type="text/html")
        return web.json_response({"object": "error", "detail": "upstream said no"})  # badschema

    def _body(self, req: dict, messages: list[dict], prompt_tokens: int, outs: list[tuple[str, str, int]]) -> dict:
        field_name = self.config.reasoning_field
        choices = []
        for i, (text, finish, _) in enumerate(outs):
            msg: dict[str, Any] = {"role": "assistant", "content": text}
            if field_name:
                head, sep, tail = text.partition(THINK_CLOSE)
                head = head.strip()
                if head.startswith(THINK_OPEN):
                    head = head[len(THINK_OPEN):].strip()
                msg = {"role": "assistant", "content": tail.lstrip() if sep else None, field_name: head}
            choices.append({"index": i, "message": msg, "finish_reason": finish, "logprobs": None})
        completion_tokens = sum(o[2] for o in outs)
        self.counts["prompt_tokens"] += prompt_tokens  # what the server billed, for tests of the client's ledger
        self.counts["completion_tokens"] += completion_tokens
        usage: dict[str, Any] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                 "total_tokens": prompt_tokens + completion_tokens}
        if self.config.deepseek_usage:
            key = hashlib.sha1(json.dumps(messages, sort_keys=True).encode()).hexdigest()
            hit = prompt_tokens if key in self._seen_prompts else 0
            self._seen_prompts.add(key)
            usage.update(prompt_cache_hit_tokens=hit, prompt_cache_miss_tokens=prompt_tokens - hit)
        return {"id": f"chatcmpl-{uuid.uuid4().hex[:16]}", "object": "chat.completion", "created": int(time.time()),
                "model": req.get("model") or self.config.served_model_name, "choices": choices, "usage": usage}


async def _start(server: ChatServer, host: str, port: int) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(server.app, access_log=None, handle_signals=False)
    await runner.setup()
    # A short shutdown_timeout: hung-request faults must not hold a stopping server for a minute.
    site = web.TCPSite(runner, host, port, backlog=4096, reuse_address=True, shutdown_timeout=1.0)
    await site.start()
    return runner, runner.addresses[0][1]


class ServerThread:
    """Runs a ChatServer on its own loop in a daemon thread, for tests that want no subprocess start-up cost."""

    def __init__(self, config: ServerConfig, host: str = "127.0.0.1", port: int = 0):
        self.server = ChatServer(config)
        self._loop = new_event_loop()
        self._error: BaseException | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, args=(host, port), name="chat-server", daemon=True)
        self._thread.start()
        self._ready.wait(60)
        if self._error is not None:
            raise self._error
        self.url = f"http://{host}:{self.port}/v1"

    def _main(self, host: str, port: int) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._runner, self.port = self._loop.run_until_complete(_start(self.server, host, port))
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            self._loop.close()
            return
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        pending = asyncio.all_tasks(self._loop)  # handlers of hung-request faults
        for task in pending:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.close()

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)

    def __enter__(self) -> "ServerThread":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m distill.teacher.serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="folder with a transformers causal LM and its tokenizer")
    p.add_argument("--served-model-name", default=None, help="model id reported by /v1/models")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed on start)")
    p.add_argument("--latency-ms", type=float, default=0.0, help="delay added to each answer; alone: echo mode")
    p.add_argument("--latency-jitter", type=float, default=0.0,
                   help="spread each delay uniformly over latency*(1 +- J), keeping the mean")
    p.add_argument("--reasoning-field", choices=["none", "reasoning_content", "reasoning"], default="none")
    p.add_argument("--deepseek", action="store_true",
                   help="DeepSeek API shape: reasoning_content plus prompt_cache_hit_tokens in usage")
    p.add_argument("--api-key-env", default=None, help="require 'Bearer $VAR' (the key is read from this variable)")
    p.add_argument("--fault-schedule", default="", help="comma list of ok|" + "|".join(FAULT_KINDS))
    for kind in FAULT_KINDS:
        p.add_argument(f"--fault-{kind}", type=float, default=0.0, help=f"fraction of requests that get {kind}")
    p.add_argument("--retry-after", type=float, default=1.0, help="Retry-After seconds sent with 429")
    p.add_argument("--hang-s", type=float, default=3600.0, help="how long a hung request sleeps")
    p.add_argument("--fault-seed", type=int, default=0)
    a = p.parse_args(argv)
    if not a.model and not a.latency_ms:
        p.error("give --model DIR, or --latency-ms for echo mode")
    return a


def main(argv: list[str] | None = None) -> None:
    import os
    a = _parse_args(argv)
    faults = Faults(schedule=[s.strip() for s in a.fault_schedule.split(",") if s.strip()],
                    rates={k: getattr(a, f"fault_{k}") for k in FAULT_KINDS if getattr(a, f"fault_{k}")},
                    retry_after_s=a.retry_after, hang_s=a.hang_s, seed=a.fault_seed)
    api_key = os.environ.get(a.api_key_env) if a.api_key_env else None
    if a.api_key_env and not api_key:
        sys.exit(f"error: environment variable {a.api_key_env} is not set")
    field_name = "reasoning_content" if a.deepseek else (None if a.reasoning_field == "none" else a.reasoning_field)
    cfg = ServerConfig(model_dir=a.model, served_model_name=a.served_model_name or (a.model or "echo"),
                       latency_ms=a.latency_ms, latency_jitter=a.latency_jitter, reasoning_field=field_name, deepseek_usage=a.deepseek,
                       api_key=api_key, faults=faults)
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65536, hard))
    except (ImportError, ValueError, OSError):
        pass
    server = ChatServer(cfg)

    async def serve() -> None:
        runner, port = await _start(server, a.host, a.port)
        print(f"serving {cfg.served_model_name} on http://{a.host}:{port}/v1", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            runner.run(serve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
