"""The code verifier, run for real: correct/incorrect programs are judged right, and hostile programs are judged
failed AND contained (each test checks the machine after the run, not just the verdict)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from distill.verify import sandbox
from distill.verify.code import extract_code, outputs_match, verify_code, verify_many
from distill.verify.sandbox import SandboxLimits, isolation_level, run_program

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="the sandbox is Linux-only")

FAST = SandboxLimits(wall_s=1.5, cpu_s=1.5)
ECHO_TESTS = {"inputs": ["1 2\n", "10 -3\n"], "outputs": ["3\n", "7\n"]}
GOOD = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"


def answer(src: str) -> str:
    return f"<think>let me hack</think>\n```python\n{src}\n```"


def sandbox_uids() -> set[int]:
    return {sandbox.NOBODY_UID, *(sandbox.EXTRA_UID_BASE + i for i in range(1, sandbox.MAX_CONCURRENT))}


def sandbox_procs() -> list[int]:
    uids = sandbox_uids()
    return [p for p in map(int, filter(str.isdigit, os.listdir("/proc"))) if _uid(p) in uids]


def _uid(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def scratch_dirs() -> set[str]:
    return {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("distill-sbx-")}


def assert_gone(snapshot, before=frozenset(), within: float = 6.0) -> None:
    """What ``snapshot()`` shows now (beyond ``before``) must be gone soon. Tolerates sandboxes that another test
    process runs at the same moment (they end within their own limits); a leaked daemon would stay."""
    left = set(snapshot()) - set(before)
    deadline = time.monotonic() + within
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left &= set(snapshot())
    assert not left, f"left behind: {sorted(left)}"


def needs(feature: str):
    return pytest.mark.skipif(feature not in isolation_level(), reason=f"isolation here lacks {feature!r}")


# ---------------------------------------------------------------------------------------------- correctness
def test_correct_stdin_program_passes_in_every_format():
    assert verify_code(GOOD, ECHO_TESTS).passed
    lcb = [{"input": "1 2\n", "output": "3\n", "testtype": "stdin"}]
    cf = [{"input": "4 5", "output": "9"}]
    v = verify_code(GOOD, lcb)
    assert v.passed and v.pass_rate == 1.0 and v.reason == "passed" and v.isolation
    assert verify_code(GOOD, cf).passed
    assert verify_code(GOOD, {"input_output": '{"inputs": ["2 2\\n"], "outputs": ["4\\n"]}'}).passed


def test_wrong_answer_fails_with_per_test_verdicts():
    v = verify_code(answer("a, b = map(int, input().split())\nprint(a - b)"), ECHO_TESTS)
    assert not v.passed and v.reason == "wrong_answer" and v.pass_rate == 0.0
    assert [t.status for t in v.per_test] == ["wrong_answer", "wrong_answer"]
    half = verify_code(answer("a, b = map(int, input().split())\nprint(3)"), ECHO_TESTS, threshold=0.5)
    assert half.passed and half.pass_rate == 0.5
    assert not verify_code(answer("a, b = map(int, input().split())\nprint(3)"), ECHO_TESTS).passed


def test_call_based_apps_and_livecodebench():
    apps = {"fn_name": "add", "inputs": [[1, 2], [5, 5]], "outputs": [[3], 10]}
    assert verify_code(answer("def add(a, b):\n    print('debug')\n    return a + b"), apps).passed
    assert verify_code(answer("def add(a, b):\n    return a * b"), apps).reason == "wrong_answer"
    # exiting early or writing around the driver does not fake a result
    assert verify_code(answer("import sys\ndef add(a, b):\n    sys.exit(0)"), apps).reason == "wrong_answer"
    sneaky = "import sys\ndef add(a, b):\n    sys.__stdout__.write('3')\n    return 0"
    assert not verify_code(answer(sneaky), apps).passed
    lcb = [{"input": "[1, 2, 3]\n2", "output": "[3, 4, 5]", "testtype": "functional"}]
    sol = "class Solution:\n    def shift(self, nums, k):\n        return [x + k for x in nums]"
    assert verify_code(answer(sol), lcb, fn_name="shift").passed
    assert verify_code(answer(sol), {"func_name": "shift", "tests": lcb}).passed


def test_float_tolerance_and_whitespace():
    assert outputs_match("0.3333333  \n1\n", "0.333333333 1")
    assert outputs_match("1e-9", "0.0")
    assert not outputs_match("1000000007", "1000000008")  # integers are exact
    assert not outputs_match("1 2", "1 2 3")
    v = verify_code(answer("print(1/3)"), [{"input": "", "output": "0.33333333"}])
    assert v.passed


def test_no_code_block_and_no_tests():
    assert verify_code("I think the answer is 3.", ECHO_TESTS).reason == "no_code_block"
    for empty in (None, [], {}, {"inputs": [], "outputs": []}):
        v = verify_code(GOOD, empty)
        assert not v.passed and v.reason == "no_tests"


def test_extract_code_takes_last_python_block():
    text = "```python\nprint(1)\n```\n</think>\n```text\nnot code\n```\n```python\nprint(2)\n```\n```\nprint(3)\n```"
    assert extract_code(text).strip() == "print(2)"
    assert extract_code("```\nprint(3)\n```").strip() == "print(3)"


def test_runtime_error_and_timeout_reasons():
    assert verify_code(answer("raise ValueError"), ECHO_TESTS, FAST).reason == "runtime_error"
    v = verify_code(answer("while True: pass"), ECHO_TESTS, FAST, stop_on_first_failure=True)
    assert v.reason == "timeout" and len(v.per_test) == 1


@needs("user-drop")
def test_program_runs_unprivileged_with_scrubbed_env(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_fake_secret_not_for_kids")
    r = run_program("import os, json\nprint(json.dumps([os.getuid(), os.getgid(), os.getgroups(), dict(os.environ)]))")
    assert r.status == "ok", r.stderr
    uid, gid, groups, env = __import__("json").loads(r.stdout)
    assert uid != 0 and gid != 0 and groups == [] and set(env) <= {"PATH", "LANG", "HOME"}


@needs("user-drop")
def test_nothing_outside_scratch_is_writable_by_the_program():
    """Walk the filesystem as the sandbox user and list everything it may write (outside its own cwd)."""
    walker = r'''
import os, stat
cwd = os.getcwd()
bad = []
skip = ("/proc", "/sys", "/dev")
for top in ["/"] + ["/dev/shm", "/dev/mqueue"]:
    for root, dirs, files in os.walk(top):
        if root == cwd or root.startswith(cwd + "/") or (top == "/" and root.startswith(skip)):
            dirs[:] = []
            continue
        for name in dirs + files:
            p = os.path.join(root, name)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            if p != cwd and (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)) and os.access(p, os.W_OK):
                bad.append(p)
        if os.access(root, os.W_OK):
            bad.append(root)
print(sorted(set(bad))[:50])
'''
    r = run_program(walker, limits=SandboxLimits(wall_s=40, cpu_s=40))
    assert r.status == "ok", r.stderr
    found = eval(r.stdout)
    if "mount" not in isolation_level():  # without a mount namespace, sticky world-writable dirs remain
        found = [p for p in found if p not in ("/tmp", "/var/tmp", "/run/lock", "/dev/shm")]
    assert found == []


# ---------------------------------------------------------------------------------------------- hostile suite
@pytest.fixture(scope="module")
def sleeper():
    p = subprocess.Popen(["sleep", "600"])
    yield p
    p.kill()
    p.wait()


@pytest.fixture(scope="module")
def listener():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    s.setblocking(False)
    yield s
    s.close()


@pytest.fixture
def world(tmp_path, sleeper, listener, monkeypatch):
    """Things the hostile programs go after; checked again after each run."""
    monkeypatch.setenv("HF_TOKEN", "hf_SECRET_abc123")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-SECRET-xyz")
    keep = tmp_path / "keep.txt"
    keep.write_text("precious")
    expected = tmp_path / "expected_outputs.json"
    expected.write_text('["3", "7"]')
    fd, direct = tempfile.mkstemp(prefix="distill-target-", dir="/tmp")
    os.write(fd, b"original")
    os.close(fd)
    os.chmod(direct, 0o644)
    tmp_path.chmod(0o755)
    w = {"keep": str(keep), "expected": str(expected), "direct": direct, "dir": str(tmp_path),
         "new": str(tmp_path / "created-by-sandbox"), "new_tmp": direct + ".new", "port": listener.getsockname()[1],
         "sleeper": sleeper.pid, "me": os.getpid()}
    yield w
    os.unlink(direct)


def _fmt(src: str, w: dict) -> str:
    for k, v in w.items():
        src = src.replace("{" + k + "}", str(v))
    return src


HOSTILE = {
    "fork_bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
    "thread_bomb": "import threading, time\nwhile True:\n    threading.Thread(target=time.sleep, args=(60,)).start()",
    "memory_hog": "x = []\nwhile True:\n    x.append(bytearray(50_000_000))",
    "infinite_loop": "while True:\n    pass",
    "sleep_forever": "import time\ntime.sleep(3600)",
    "busy_loop_with_output": "i = 0\nwhile True:\n    i += 1\n    print(i, flush=True)",
    "huge_output": "import sys\nsys.stdout.write('A' * 50_000_000)",
    "huge_stderr": "import sys\nwhile True:\n    sys.stderr.write('E' * 100_000)",
    "network": "import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\ns.sendall(b'hi')\nprint(3)",
    "write_outside_scratch": (
        "for p in ['{direct}', '{keep}', '{new}']:\n    open(p, 'w').write('pwned')\n"
        "open('{new_tmp}', 'w').write('pwned')\nprint(3)"),
    "change_expected_outputs": "open('{expected}', 'w').write('[\"pwned\"]')\nprint('pwned')",
    "env_secret": (
        "import os, glob\nprint(dict(os.environ))\n"
        "for p in glob.glob('/proc/*/environ') + ['/proc/{me}/environ', '/proc/1/environ']:\n"
        "    try:\n        print(open(p, 'rb').read())\n    except OSError:\n        pass"),
    "signal_parent": (
        "import os, signal\nfor pid in (os.getppid(), {me}, {sleeper}, 1):\n"
        "    try:\n        os.kill(pid, signal.SIGKILL)\n    except OSError as e:\n        print(e)\n"
        "os.kill(os.getppid(), signal.SIGKILL)"),
    "kill_minus_one": "import os, signal\nos.kill(-1, signal.SIGKILL)\nos.kill(-1, signal.SIGTERM)\nprint('pwned')",
    "delete_files": "import os, shutil\nos.remove('{keep}')\nshutil.rmtree('{dir}')\nprint(3)",
    "daemon": (
        "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
        "        for fd in (0, 1, 2):\n            os.close(fd)\n        time.sleep(60)\n    os._exit(0)\n"
        "time.sleep(0.2)\nprint('left a daemon behind')"),
    "sys_exit_tricks": (
        "import atexit, os, sys\nprint(1)\natexit.register(lambda: os._exit(0))\n"
        "sys.stdout.flush()\nraise SystemExit(0)"),
    "read_private_files": (
        "import os\nfor p in ['/root', '/etc/shadow', '/root/.bash_history', '/home']:\n"
        "    print(p, os.listdir(p) if os.path.isdir(p) else open(p).read())"),
    "fill_disk": "i = 0\nwhile True:\n    open(f'fill{i}', 'wb').write(b'x' * 10_000_000)\n    i += 1",
    "fd_exhaustion": "fs = []\nwhile True:\n    fs.append(open('/dev/null'))",
    "escalate": (
        "import os, subprocess\nos.setuid(0)\n"
        "subprocess.run(['mount', '-t', 'tmpfs', 'x', '/mnt'], check=True)\nprint(3)"),
}


# Containment needs the privilege drop (never run hostile code as the test's own user); some attacks also need
# a namespace (without one the run is still judged, but containment is not promised).
REQUIRES = {"network": "net"}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_program_is_failed_and_contained(name, world, sleeper, listener):
    for feature in ("user-drop", REQUIRES.get(name, "")):
        if feature not in isolation_level():
            pytest.skip(f"isolation {isolation_level()!r} lacks {feature!r}")
    before_scratch = scratch_dirs()
    disk_before = shutil.disk_usage("/").free
    src = _fmt(HOSTILE[name], world)
    t0 = time.monotonic()
    v = verify_code(answer(src), {"inputs": ["1 2\n"], "outputs": ["3\n"]}, FAST)
    took = time.monotonic() - t0

    # judged failed, within the limits
    assert not v.passed, (name, v)
    assert took < FAST.wall_s + 4, took
    # contained: the machine is as we left it
    assert sleeper.poll() is None, "the sleeper was killed"
    assert Path(world["keep"]).read_text() == "precious"
    assert Path(world["expected"]).read_text() == '["3", "7"]'
    assert Path(world["direct"]).read_bytes() == b"original"
    assert not Path(world["new"]).exists() and not Path(world["new_tmp"]).exists()
    with pytest.raises(BlockingIOError):
        listener.accept()
    assert "SECRET" not in "".join(t.detail for t in v.per_test)
    assert_gone(sandbox_procs)  # no process of a sandbox uid outlived the run
    assert_gone(scratch_dirs, before_scratch)  # scratch dirs are removed
    assert disk_before - shutil.disk_usage("/").free < 200_000_000
    # and the verifier carries on
    assert verify_code(GOOD, ECHO_TESTS).passed


@needs("user-drop")
def test_hostile_statuses_are_specific(world):
    assert run_program(HOSTILE["infinite_loop"], limits=FAST).status == "timeout"
    assert run_program(HOSTILE["sleep_forever"], limits=FAST).status == "timeout"
    assert run_program(HOSTILE["memory_hog"], limits=FAST).status == "memory"
    r = run_program(HOSTILE["huge_output"], limits=FAST)
    assert r.status == "output_limit" and len(r.stdout) <= FAST.output_bytes
    r = run_program(_fmt(HOSTILE["env_secret"], world), limits=FAST)
    assert "SECRET" not in r.stdout + r.stderr
    r = run_program(HOSTILE["fill_disk"], limits=FAST)
    if "mount" in isolation_level():  # the scratch is a size-capped tmpfs; otherwise only RLIMIT_FSIZE per file
        assert r.status == "runtime_error" and "No space" in r.stderr, r.stderr
    assert r.status != "ok"
    r = run_program("open('big', 'wb').write(b'x' * 20_000_000)", limits=FAST)
    assert r.status == "runtime_error" and "File too large" in r.stderr, r.stderr


@needs("net")
def test_network_namespace_has_no_network(listener):
    r = run_program(f"import socket\nsocket.create_connection(('127.0.0.1', {listener.getsockname()[1]}), timeout=1)",
                    limits=FAST)
    assert r.status == "runtime_error" and ("unreachable" in r.stderr or "refused" in r.stderr), r.stderr
    with pytest.raises(BlockingIOError):
        listener.accept()


@needs("pid")
def test_pid_namespace_hides_host_processes(sleeper):
    r = run_program("import os\nprint(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))")
    assert r.status == "ok" and str(sleeper.pid) not in r.stdout.split(", ")


@needs("user-drop")
def test_parallel_pool_keeps_runs_apart(sleeper):
    """A fork bomb and a kill(-1) run next to good programs: the good ones still pass."""
    items = [(answer(HOSTILE["fork_bomb"]), ECHO_TESTS), (GOOD, ECHO_TESTS), (answer(HOSTILE["kill_minus_one"]),
             ECHO_TESTS), (GOOD, ECHO_TESTS), (GOOD, ECHO_TESTS)]
    res = verify_many(items, FAST, workers=2, stop_on_first_failure=True)
    assert [r.passed for r in res] == [False, True, False, True, True]
    assert sleeper.poll() is None
    assert_gone(sandbox_procs)
