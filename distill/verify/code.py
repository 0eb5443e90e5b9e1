"""Judge a model's code answer by running its final program against the problem's tests in the sandbox.

Why: the filter stage keeps only samples whose program actually works, so the verdict must come from real
execution (``sandbox.run_program``), be tolerant of harmless formatting (whitespace, float rounding) and never
crash on odd records (no tests, no code block, unknown test format). Test formats accepted:

* APPS/TACO ``{"inputs": [...], "outputs": [...]}`` (stdin/stdout), with ``"fn_name"`` -> call-based; the
  APPS ``{"input_output": "<json>"}`` wrapper and JSON strings are unwrapped;
* LiveCodeBench ``[{"input", "output", "testtype": "stdin"|"functional"}]`` (functional needs ``fn_name``,
  given as an argument or as ``{"fn_name"|"func_name": ..., "tests": [...]}``);
* Codeforces-style ``[{"input", "output"}]``.
"""

from __future__ import annotations

import json
import math
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterable

from distill.verify.sandbox import RunResult, SandboxLimits, isolation_level, run_program

_FENCE = re.compile(r"```[ \t]*([\w+.-]*)[^\n]*\n(.*?)```", re.DOTALL)
_PY_TAGS = {"python", "py", "python3", "py3"}
FLOAT_TOL = 1e-6


@dataclass
class TestCase:
    """One normalised test: stdin text -> expected stdout, or JSON args -> expected return value."""

    kind: str  # "stdin" or "call"
    input: Any
    expected: Any
    fn_name: str | None = None


@dataclass
class TestVerdict:
    """Status: passed, wrong_answer, timeout, runtime_error, memory, output_limit, sandbox_error."""

    index: int
    status: str
    wall_s: float = 0.0
    detail: str = ""


@dataclass
class CodeVerdict:
    """Keep decision for one sample: ``passed`` iff ``pass_rate >= threshold`` (and there was something to run)."""

    passed: bool
    pass_rate: float
    reason: str
    per_test: list[TestVerdict] = field(default_factory=list)
    isolation: str = ""


def extract_code(answer_text: str) -> str | None:
    """The final program: the last ```python block, else the last ``` block (after ``</think>`` if present)."""
    if not answer_text:
        return None
    text = answer_text.rsplit("</think>", 1)[-1]
    blocks = [(m.group(1).lower(), m.group(2)) for m in _FENCE.finditer(text)]
    if not blocks:
        return None
    py = [body for tag, body in blocks if tag in _PY_TAGS]
    code = py[-1] if py else blocks[-1][1]
    return code if code.strip() else None


def _as_text(x: Any) -> str:
    if isinstance(x, list):
        return "\n".join(str(v) for v in x)
    return "" if x is None else str(x)


def normalize_tests(tests: Any, fn_name: str | None = None) -> list[TestCase]:
    """Turn any supported test format into ``TestCase``s; unknown shapes give an empty list, never an error."""
    if isinstance(tests, (str, bytes)):
        try:
            tests = json.loads(tests)
        except ValueError:
            return []
    if isinstance(tests, dict):
        if "input_output" in tests:
            return normalize_tests(tests["input_output"], fn_name or tests.get("fn_name"))
        fn_name = fn_name or tests.get("fn_name") or tests.get("func_name")
        if "tests" in tests:
            return normalize_tests(tests["tests"], fn_name)
        inputs, outputs = tests.get("inputs") or [], tests.get("outputs") or []
        if fn_name:
            return [TestCase("call", i if isinstance(i, list) else [i], o, fn_name) for i, o in zip(inputs, outputs)]
        return [TestCase("stdin", _as_text(i), _as_text(o)) for i, o in zip(inputs, outputs)]
    out: list[TestCase] = []
    if isinstance(tests, list):
        for t in tests:
            if not isinstance(t, dict) or "input" not in t or "output" not in t:
                continue
            if t.get("testtype") == "functional":
                if not (fn_name or t.get("fn_name")):
                    continue  # a functional test cannot run without the function's name
                try:
                    args = [json.loads(line) for line in str(t["input"]).splitlines() if line.strip()]
                    expected = json.loads(t["output"]) if isinstance(t["output"], str) else t["output"]
                except ValueError:
                    continue
                out.append(TestCase("call", args, expected, fn_name or t.get("fn_name")))
            else:
                out.append(TestCase("stdin", _as_text(t["input"]), _as_text(t["output"])))
    return out


def _is_float_token(tok: str) -> bool:
    try:
        float(tok)
    except ValueError:
        return False
    return any(c in tok for c in ".eEnN")  # pure integers must match exactly (no tolerance on 10**9+7)


def outputs_match(got: str, expected: str, tol: float = FLOAT_TOL) -> bool:
    """Whitespace-normalised token comparison; numeric tokens with a fractional part compare within ``tol``."""
    a, b = got.split(), expected.split()
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x == y:
            continue
        if (_is_float_token(x) or _is_float_token(y)) and _floats_close(x, y, tol):
            continue
        return False
    return True


def _floats_close(x: str, y: str, tol: float) -> bool:
    try:
        fx, fy = float(x), float(y)
    except ValueError:
        return False
    return math.isclose(fx, fy, rel_tol=tol, abs_tol=tol)


def values_match(got: Any, expected: Any, tol: float = FLOAT_TOL) -> bool:
    """Return-value comparison (JSON shapes: tuples arrive as lists); floats within ``tol``."""
    if isinstance(got, bool) or isinstance(expected, bool):
        return got is expected if isinstance(got, bool) and isinstance(expected, bool) else False
    if isinstance(got, (int, float)) and isinstance(expected, (int, float)):
        return got == expected or math.isclose(got, expected, rel_tol=tol, abs_tol=tol)
    if isinstance(got, list) and isinstance(expected, list):
        return len(got) == len(expected) and all(values_match(g, e, tol) for g, e in zip(got, expected))
    if isinstance(got, dict) and isinstance(expected, dict):
        return got.keys() == expected.keys() and all(values_match(got[k], expected[k], tol) for k in got)
    return got == expected


_DRIVER = '''\
import io as _io, json as _json, sys as _sys
_args = _json.loads(_sys.stdin.read())
_real_stdout, _sys.stdout = _sys.stdout, _io.StringIO()   # the solution's own prints must not pollute the result
_ns = {"__name__": "__solution__"}
exec(compile(%(src)r, "solution.py", "exec"), _ns)
_cls = _ns.get("Solution")
_fn = getattr(_cls(), %(fn)r) if _cls is not None and hasattr(_cls, %(fn)r) else _ns[%(fn)r]
_ret = _fn(*_args)
_sys.stdout = _real_stdout
_sys.stdout.write(_json.dumps(_ret, default=repr))
_sys.stdout.flush()
'''


def _judge(code: str, case: TestCase, limits: SandboxLimits) -> TestVerdict:
    if case.kind == "call":
        res = run_program(_DRIVER % {"src": code, "fn": case.fn_name}, json.dumps(case.input), limits)
    else:
        res = run_program(code, case.input, limits)
    return _verdict(res, case)


def _verdict(res: RunResult, case: TestCase) -> TestVerdict:
    if res.status != "ok":
        return TestVerdict(0, res.status, res.wall_s, res.stderr[-500:])
    if case.kind == "call":
        try:
            got = json.loads(res.stdout)
        except ValueError:
            return TestVerdict(0, "wrong_answer", res.wall_s, f"unparsable return: {res.stdout[:200]!r}")
        exp = case.expected
        ok = values_match(got, exp) or (isinstance(exp, list) and len(exp) == 1 and values_match(got, exp[0]))
    else:
        got, ok = res.stdout, outputs_match(res.stdout, case.expected)
    if ok:
        return TestVerdict(0, "passed", res.wall_s)
    return TestVerdict(0, "wrong_answer", res.wall_s, f"expected {str(case.expected)[:200]!r}, got {str(got)[:200]!r}")


def verify_code(answer_text: str, tests: dict | list | str | None, limits: SandboxLimits | None = None,
                threshold: float = 1.0, fn_name: str | None = None,
                stop_on_first_failure: bool = False) -> CodeVerdict:
    """Run the answer's final program on every test; ``stop_on_first_failure`` saves time when only keep matters."""
    limits = limits or SandboxLimits()
    cases = normalize_tests(tests, fn_name) if tests else []
    if not cases:
        return CodeVerdict(False, 0.0, "no_tests")
    code = extract_code(answer_text)
    if code is None:
        return CodeVerdict(False, 0.0, "no_code_block")
    per_test: list[TestVerdict] = []
    for i, case in enumerate(cases):
        v = _judge(code, case, limits)
        v.index = i
        per_test.append(v)
        if stop_on_first_failure and v.status != "passed":
            break
    n_pass = sum(v.status == "passed" for v in per_test)
    rate = n_pass / len(cases)
    keep = rate >= threshold
    first_fail = next((v.status for v in per_test if v.status != "passed"), None)
    reason = "passed" if keep else (first_fail or "below_threshold")
    return CodeVerdict(keep, rate, reason, per_test, isolation_level())


def verify_many(items: Iterable[tuple[str, Any]], limits: SandboxLimits | None = None, threshold: float = 1.0,
                workers: int = 2, **kw: Any) -> list[CodeVerdict]:
    """Verify ``(answer_text, tests)`` pairs with a bounded thread pool (each thread drives its own sandboxes)."""
    items = list(items)
    isolation_level()  # probe once before the threads race for it
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(verify_code, a, t, limits, threshold, **kw) for a, t in items]
        return [f.result() for f in futures]
