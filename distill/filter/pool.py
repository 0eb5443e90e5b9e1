"""A process pool in which every item has a hard deadline: a worker that overruns it is killed and replaced.

Why not ``ProcessPoolExecutor``: math-verify bounds its own work with ``signal.alarm`` (so it must run in a
process's main thread, REFERENCE.md pitfall 6), but an alarm only fires between bytecodes; an answer such as
``9^{9^{9^{9}}}`` or a deeply nested ``\\frac`` can keep a worker inside one C call (a huge integer power, a
recursive parser) far past the alarm, and a stock pool then waits forever. Here the parent knows which item each
worker is on and since when; past ``hard_timeout_s`` it SIGKILLs that worker, answers the item with
``on_fail(item, "timeout")``, re-queues the worker's other items and forks a fresh worker. A worker that dies on
its own (OOM killer, segfault) is handled the same way with ``"crashed"``.

Design points:

- workers are forked (they inherit the loaded verifier libraries and ``fn`` without pickling); items go out in
  chunks over a pipe enlarged to 1 MiB, results come back one message per item (so the parent always knows the
  item in progress);
- the parent never blocks on a busy worker: while a worker works, only as many bytes are queued to it as its pipe
  holds (a larger item waits until the worker is idle, i.e. reading), so a stuck worker cannot stall the parent's
  deadline checks;
- ``imap`` pulls its input lazily and keeps at most ``window`` items in flight, so a stream of millions of samples
  is verified in bounded memory, in input order, while the parent prepares the next items;
- an item's clock starts when the parent sees its predecessor finish (never earlier than the real start), and all
  finished results are read before deadlines are checked, so a busy parent cannot cause a false timeout;
- an optional address-space cap per worker (``memory_mb`` above the forked size) turns a runaway allocation into
  a ``MemoryError`` inside the worker instead of pressure on the whole machine.
"""

from __future__ import annotations

import fcntl
import multiprocessing as mp
import os
import pickle
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Generic, Iterable, Iterator, TypeVar

C = TypeVar("C")
PIPE_BYTES = 1 << 20


@dataclass
class _Failed:
    """A worker-side exception (``fn`` is expected to catch its own errors; this is the backstop)."""

    error: str


def _vm_size_bytes() -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _enlarge(conn: Connection) -> int:
    """Grow a pipe to PIPE_BYTES where the kernel allows; returns the bytes that may sit in it unread."""
    try:
        fcntl.fcntl(conn.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        size = fcntl.fcntl(conn.fileno(), fcntl.F_GETPIPE_SZ)
    except (OSError, AttributeError):
        size = 65536
    return size * 3 // 4


def _worker_main(inbox: Connection, outbox: Connection, fn: Callable[[Any], Any], memory_mb: int | None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it then closes the pool
    if memory_mb:
        import resource

        cap = _vm_size_bytes() + memory_mb * 1024 * 1024
        try:
            resource.setrlimit(resource.RLIMIT_AS, (cap, resource.getrlimit(resource.RLIMIT_AS)[1]))
        except (ValueError, OSError):
            pass
    while True:
        try:
            chunk = inbox.recv()
        except (EOFError, OSError):
            return
        if chunk is None:
            return
        for seq, blob in chunk:
            try:
                res = fn(pickle.loads(blob))
            except Exception as exc:  # noqa: BLE001 - reported to the parent, which calls on_fail
                res = _Failed(f"{exc.__class__.__name__}: {exc}"[:300])
            outbox.send((seq, res))


@dataclass
class _Worker:
    proc: Any
    inbox: Connection   # parent -> worker
    outbox: Connection  # worker -> parent
    capacity: int       # bytes that may wait unread in ``inbox``
    queue: deque = field(default_factory=deque)      # seqs sent and not yet answered, in order
    unread: deque = field(default_factory=deque)     # (first seq, bytes) of chunks the worker may not have read
    head_start: float | None = None

    def unread_bytes(self) -> int:
        return sum(n for _, n in self.unread)


class GuardedPool(Generic[C]):
    """``with GuardedPool(fn, workers=2, hard_timeout_s=20, on_fail=f) as pool: pool.imap(...)``."""

    def __init__(self, fn: Callable[[Any], Any], *, workers: int = 0, hard_timeout_s: float = 30.0,
                 on_fail: Callable[[Any, str], Any], memory_mb: int | None = None, chunk: int = 8,
                 queue_per_worker: int = 32):
        self.fn, self.on_fail, self.memory_mb = fn, on_fail, memory_mb
        self.n_workers = workers or os.cpu_count() or 1
        self.hard_timeout_s = hard_timeout_s
        self.chunk = max(1, chunk)
        self.queue_per_worker = max(self.chunk, queue_per_worker)  # room for at least one whole chunk
        self.window = self.n_workers * self.queue_per_worker * 2
        self.workers: list[_Worker] = []
        self.killed = 0  # items that ended in a kill (timeout or crash)
        self._ctx = mp.get_context("fork")

    # --- lifecycle ---------------------------------------------------------------------------------------------
    def _spawn(self) -> _Worker:
        in_r, in_w = self._ctx.Pipe(duplex=False)
        out_r, out_w = self._ctx.Pipe(duplex=False)
        capacity = _enlarge(in_w)
        proc = self._ctx.Process(target=_worker_main, args=(in_r, out_w, self.fn, self.memory_mb), daemon=True)
        proc.start()
        in_r.close()
        out_w.close()
        return _Worker(proc, in_w, out_r, capacity)

    def __enter__(self) -> "GuardedPool[C]":
        self.workers = [self._spawn() for _ in range(self.n_workers)]
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for w in self.workers:
            if w.queue:  # still busy (an abandoned imap): do not wait for it
                w.proc.kill()
            else:
                try:
                    w.inbox.send(None)
                except OSError:
                    pass
        deadline = time.monotonic() + 2.0
        for w in self.workers:
            w.proc.join(max(0.0, deadline - time.monotonic()))
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join()
            w.inbox.close()
            w.outbox.close()
        self.workers = []

    def _replace(self, i: int) -> None:
        w = self.workers[i]
        if w.proc.is_alive():
            os.kill(w.proc.pid, signal.SIGKILL)
        w.proc.join()
        w.inbox.close()
        w.outbox.close()
        self.workers[i] = self._spawn()

    # --- work --------------------------------------------------------------------------------------------------
    def map(self, items: Iterable[Any]) -> list[Any]:
        return [res for _, res in self.imap((None, it) for it in items)]

    def imap(self, pairs: Iterable[tuple[C, Any]]) -> Iterator[tuple[C, Any]]:
        """Yield ``(context, fn(item))`` in input order. ``context`` stays in the parent; an item of ``None``
        is not sent anywhere and yields ``(context, None)``."""
        if not self.workers:
            raise RuntimeError("GuardedPool used outside its with-block")
        source = iter(pairs)
        pending: deque[tuple[int, bytes]] = deque()
        contexts: dict[int, C] = {}
        results: dict[int, Any] = {}
        items: dict[int, Any] = {}
        next_seq = next_out = 0
        exhausted = False
        while True:
            # Pull a whole chunk at a time (when a chunk's worth of the window is free), so chunks keep their
            # boundaries and consecutive items travel together (see _dispatch).
            while not exhausted and next_seq - next_out <= self.window - self.chunk:
                for _ in range(self.chunk):
                    try:
                        ctx, item = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    contexts[next_seq] = ctx
                    if item is None:
                        results[next_seq] = None
                    else:
                        pending.append((next_seq, pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)))
                        items[next_seq] = item
                    next_seq += 1
            self._dispatch(pending, partial=exhausted)
            while next_out in results:
                yield contexts.pop(next_out), results.pop(next_out)
                next_out += 1
            if exhausted and next_out == next_seq:
                return
            busy = [w for w in self.workers if w.queue]
            if not busy:
                continue  # only pass-through items so far: pull more
            timeout = max(0.0, min(w.head_start + self.hard_timeout_s for w in busy) - time.monotonic())
            wait([w.outbox for w in busy], timeout)
            self._collect(results, items, pending)

    def _dispatch(self, pending: deque, partial: bool = False) -> None:
        """Give each worker items up to its queue size; a busy worker only gets what its pipe holds.

        Workers are refilled in whole chunks: consecutive items (a prompt's samples share their gold answer and
        often the same answer text) then stay in one worker, where math-verify's parse cache hits; topping queues
        up one item at a time would deal them out alternately and cost ~25% more CPU per answer. A short chunk
        goes out only at the end of the input (``partial``) or to an idle worker."""
        for w in self.workers:
            while pending and len(w.queue) + self.chunk <= self.queue_per_worker and (
                    len(pending) >= self.chunk or partial or not w.queue):
                idle = not w.queue
                budget = float("inf") if idle else w.capacity - w.unread_bytes()
                chunk, size = [], 0
                while (pending and len(chunk) < self.chunk and len(w.queue) + len(chunk) < self.queue_per_worker
                       and (size + len(pending[0][1]) <= budget or (idle and not chunk))):
                    seq, blob = pending.popleft()
                    chunk.append((seq, blob))
                    size += len(blob)
                if not chunk:
                    break
                if idle:
                    w.head_start = time.monotonic()
                else:
                    w.unread.append((chunk[0][0], size))
                w.queue.extend(seq for seq, _ in chunk)
                w.inbox.send(chunk)

    def _collect(self, results: dict[int, Any], items: dict[int, Any], pending: deque) -> None:
        """Read every finished result, then enforce deadlines and replace dead workers."""
        for i, w in enumerate(self.workers):
            dead = False
            try:
                while w.queue and w.outbox.poll():
                    seq, res = w.outbox.recv()
                    head = w.queue.popleft()
                    assert head == seq, (head, seq)
                    while w.unread and w.unread[0][0] <= seq:
                        w.unread.popleft()
                    item = items.pop(seq)
                    results[seq] = self.on_fail(item, f"error: {res.error}") if isinstance(res, _Failed) else res
                    w.head_start = time.monotonic() if w.queue else None
            except (EOFError, OSError):
                dead = True
            if not w.queue:
                w.unread.clear()
                continue
            overdue = w.head_start is not None and time.monotonic() - w.head_start > self.hard_timeout_s
            if dead or overdue or not w.proc.is_alive():
                seq = w.queue.popleft()
                results[seq] = self.on_fail(items.pop(seq), "timeout" if overdue and not dead else "crashed")
                self.killed += 1
                # The worker's other items go back to the front of the line, in order, as fresh pickles.
                pending.extendleft(reversed([(s, pickle.dumps(items[s], protocol=pickle.HIGHEST_PROTOCOL))
                                             for s in w.queue]))
                w.queue.clear()
                w.unread.clear()
                self._replace(i)
