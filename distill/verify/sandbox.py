"""Run one untrusted Python program in a throwaway sandbox and report what it did.

Why it is built this way (we run as root, and model-written code is hostile by accident or design):

* Root is not bound by RLIMIT_NPROC and root's ``kill(-1)`` hits every process on the machine, so the program
  always runs as an unprivileged uid with ``setgroups([])``, ``no_new_privs`` and all capabilities gone, under
  RLIMIT_CPU/AS/NPROC/FSIZE/NOFILE and CORE=0. Concurrent runs lease distinct uids (``nobody``, then unnamed
  uids that own no file), so one run's fork bomb cannot eat another run's RLIMIT_NPROC budget.
* Where the kernel allows, ``unshare`` gives the run its own PID namespace (``kill(-1)`` only reaches the sandbox,
  and when its init exits the kernel kills every leftover process), a network namespace (only a down loopback),
  a mount namespace (a size-capped private tmpfs as ``/tmp`` = cwd = HOME, the other world-writable dirs and
  home/data dirs masked) and IPC/UTS namespaces. A probe on first use picks the strongest level that works and
  ``isolation_level()`` reports it; weaker levels fall back to uid-wide cleanup.
* No ``preexec_fn``: the verifier runs in thread pools, so all privileged set-up happens in a tiny
  single-threaded init process (``_INIT``) that forks the program, drops privileges in the child, waits, and
  kills whatever is left before it exits. The parent only enforces wall time and output size, and kills the
  whole process group (``os.killpg``) as a backstop.
* The environment is scrubbed to PATH, LANG and HOME so tokens such as HF_TOKEN never reach the program.
"""

from __future__ import annotations

import ast
import fcntl
import functools
import math
import os
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

NOBODY_UID = 65534
# Extra unnamed uids for concurrent runs (nothing is created system-wide: a uid is just a number to the kernel).
EXTRA_UID_BASE = 1_990_000_000
MAX_CONCURRENT = 64
STDERR_KEEP = 32_768
# Directories the program must not see or write in the mount-namespace level (missing ones are skipped); the
# project checkout is masked too, so a program cannot read expected outputs from data files next to it.
MASKED_DIRS = ("/var/tmp", "/dev/shm", "/run/lock", "/var/lock", "/dev/mqueue", "/root", "/home", "/mnt",
               "/media", "/srv", "/work")
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# World-writable places a program can drop files into when there is no mount namespace (cleaned after a run).
SHARED_TMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")

_NS_FULL = ["--pid", "--fork", "--kill-child", "--net", "--mount", "--mount-proc", "--ipc", "--uts"]
_NS_PIDNET = ["--pid", "--fork", "--kill-child", "--net"]
_NS_NET = ["--net"]


@dataclass(frozen=True)
class SandboxLimits:
    """Per-run limits. ``wall_s`` is enforced by the init and the parent, ``cpu_s`` by RLIMIT_CPU."""

    wall_s: float = 4.0
    cpu_s: float = 4.0
    memory_mb: int = 512
    output_bytes: int = 1_000_000
    nproc: int = 16
    fsize_mb: int = 16
    nofile: int = 128
    scratch_mb: int = 64


@dataclass
class RunResult:
    """What one program run did. ``status``: ok, runtime_error, timeout, memory, output_limit, sandbox_error."""

    stdout: str
    stderr: str
    returncode: int | None
    status: str
    wall_s: float
    cpu_s: float = 0.0
    isolation: str = ""


# --------------------------------------------------------------------------------------------------------------
# The init: runs as root (inside the namespaces when available), single-threaded, stdlib only.
_INIT = r'''
import ctypes, os, resource, signal, sys, time
cfg = eval(sys.argv[1], {"__builtins__": {}}, {})   # a dict literal written by our parent (json/re cost 8 ms)
sfd = cfg["status_fd"]
os.set_inheritable(sfd, False)
libc = ctypes.CDLL(None, use_errno=True)
SIGS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
signal.pthread_sigmask(signal.SIG_BLOCK, SIGS)
libc.prctl(36, 1, 0, 0, 0)                      # PR_SET_CHILD_SUBREAPER: orphans come back to us
libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)     # PR_SET_PDEATHSIG: parent gone -> clean up and leave
uid, gid = cfg["uid"], cfg["gid"]

def mount(src, dst, fstype, flags, data):
    if libc.mount(src.encode(), dst.encode(), fstype.encode(), flags, data.encode()) != 0:
        raise OSError(ctypes.get_errno(), "mount " + dst)

def report(**kw):
    try:
        os.write(sfd, (repr(kw) + "\n").encode())
    except OSError:
        pass

def procs_of(u):
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open("/proc/%s/status" % p) as f:
                    for line in f:
                        if line.startswith("Uid:"):
                            if int(line.split()[1]) == u:
                                out.append(int(p))
                            break
            except OSError:
                pass
    return out

def reap():
    while True:
        try:
            p, st, ru = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if p == 0:
            return
        if p == child:
            done.append((st, ru))

def kill_all():
    """Kill every process of the sandbox uid (as that uid, so kill(-1) cannot reach anything else).
    In a PID namespace nothing to do: when this init (pid 1) exits the kernel kills the rest."""
    if cfg["pidns"]:
        return
    if cfg["drop"]:
        for _ in range(50):
            if not procs_of(uid):
                break
            k = os.fork()
            if k == 0:
                try:
                    os.setgroups([]); os.setresgid(gid, gid, gid); os.setresuid(uid, uid, uid)
                    for _ in range(3):
                        os.kill(-1, signal.SIGKILL)
                finally:
                    os._exit(0)
            os.waitpid(k, 0)
            reap()
            time.sleep(0.002)
    else:
        try:
            os.kill(child, signal.SIGKILL)
        except OSError:
            pass
    reap()

work = cfg["scratch"]
src = open(os.path.join(work, "prog.py"), "rb").read()
fs = "host"
if cfg["mount"]:
    MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
    try:
        for name in ("prog.py", "stdin.txt"):      # the host copy is no longer needed (stdin is already open):
            os.unlink(os.path.join(work, name))    # remove it now, so even a SIGKILLed parent leaves nothing
        os.rmdir(work)
        mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV,
              "size=%dm,mode=0700,uid=%d,gid=%d" % (cfg["scratch_mb"], uid, gid))
        for d in cfg["masked"]:
            if os.path.isdir(d) and not os.path.islink(d):
                mount("tmpfs", d, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k,mode=0555")
        work = "/tmp"
        with open("/tmp/prog.py", "wb") as f:
            f.write(src)
        os.chmod("/tmp/prog.py", 0o444)
        fs = "tmpfs"
    except OSError as e:
        report(setup_error="mount failed: %s" % e)
        os._exit(0)
os.chdir(work)
env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": work}
done = []
child = os.fork()
if child == 0:
    try:
        lim = cfg["limits"]
        for name, val in (("RLIMIT_CPU", (lim["cpu"], lim["cpu"] + 1)), ("RLIMIT_AS", (lim["as"],) * 2),
                          ("RLIMIT_FSIZE", (lim["fsize"],) * 2), ("RLIMIT_CORE", (0, 0)),
                          ("RLIMIT_NOFILE", (lim["nofile"],) * 2), ("RLIMIT_NPROC", (lim["nproc"],) * 2)):
            if val[0] is not None:
                resource.setrlimit(getattr(resource, name), val)
        if cfg["drop"]:
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            if os.getuid() != uid or os.geteuid() != uid:
                raise OSError("privilege drop failed")
        libc.prctl(38, 1, 0, 0, 0)                  # PR_SET_NO_NEW_PRIVS: no setuid binaries
        for s in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        os.execve(cfg["python"], [cfg["python"], "-I", "-B", "prog.py"], env)
    except BaseException as e:
        try:
            os.write(sfd, (repr({"setup_error": repr(e)}) + "\n").encode())
        finally:
            os._exit(127)
t0 = time.monotonic()
deadline = t0 + cfg["wall_s"]
killed_by = None
while not done:
    left = deadline - time.monotonic()
    if left <= 0:
        killed_by = "timeout"
        break
    info = signal.sigtimedwait(SIGS, left)
    if info is None:
        continue
    if info.si_signo == signal.SIGCHLD:
        reap()
    else:
        killed_by = "signal"
        break
wall = time.monotonic() - t0
kill_all()
if done:
    st, ru = done[0]
    code = os.waitstatus_to_exitcode(st)
    cpu = ru.ru_utime + ru.ru_stime
else:
    code, cpu = None, None
report(final=True, returncode=code, cpu_s=cpu, wall_s=wall, killed_by=killed_by, fs=fs)
os._exit(0)
'''


# --------------------------------------------------------------------------------------------------------------
class _UidLeases:
    """Hands each concurrent run its own uid, so nproc limits and uid-wide cleanup never cross runs.

    Threads coordinate through a condition; other verifier processes on the machine through ``flock`` on one
    lock file per uid (root-only directory), so two processes never hand out the same uid at once.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._held: dict[int, int] = {}
        self._dir = os.path.join(tempfile.gettempdir(), "distill-sandbox-locks")

    def _try_lock(self, uid: int) -> int | None:
        os.makedirs(self._dir, mode=0o700, exist_ok=True)
        fd = os.open(os.path.join(self._dir, f"uid-{uid}.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except OSError:
            os.close(fd)
            return None

    def acquire(self, pool: list[int]) -> int:
        with self._cond:
            while True:
                for uid in pool:
                    if uid not in self._held:
                        fd = self._try_lock(uid)
                        if fd is not None:
                            self._held[uid] = fd
                            return uid
                self._cond.wait(0.05)

    def release(self, uid: int) -> None:
        with self._cond:
            os.close(self._held.pop(uid))
            self._cond.notify()


_LEASES = _UidLeases()
_PROBE_LOCK = threading.Lock()
_MODE: dict | None = None


def _world_accessible(path: str) -> bool:
    """True if an unprivileged user can execute ``path`` (every directory on the way must be o+x)."""
    real = os.path.realpath(path)
    parts = real.split("/")
    for i in range(2, len(parts)):
        try:
            if not os.stat("/".join(parts[:i])).st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
    try:
        mode = os.stat(real).st_mode
    except OSError:
        return False
    return bool(mode & stat.S_IXOTH and mode & stat.S_IROTH)


@functools.lru_cache(maxsize=None)
def program_python() -> str:
    """The interpreter the program runs under: ours if 'nobody' can reach it (a venv under /root is not)."""
    env = os.environ.get("DISTILL_SANDBOX_PYTHON")
    for cand in (env, sys.executable, "/usr/bin/python3", "/usr/local/bin/python3", shutil.which("python3")):
        if cand and _world_accessible(cand):
            return os.path.realpath(cand)
    return sys.executable


def _candidates() -> list[dict]:
    """Isolation levels to try, strongest first."""
    out = []
    unshare = shutil.which("unshare", path="/usr/bin:/bin:/usr/sbin:/sbin")
    if os.geteuid() == 0:
        if unshare and os.environ.get("DISTILL_SANDBOX_NO_NAMESPACES") != "1":
            out.append({"label": "pid+net+mount+ipc+user-drop", "prefix": [unshare, *_NS_FULL, "--"],
                        "mount": True, "drop": True, "pidns": True})
            out.append({"label": "pid+net+user-drop", "prefix": [unshare, *_NS_PIDNET, "--"],
                        "mount": False, "drop": True, "pidns": True})
            out.append({"label": "net+user-drop", "prefix": [unshare, *_NS_NET, "--"], "mount": False, "drop": True,
                        "pidns": False})
        out.append({"label": "user-drop only", "prefix": [], "mount": False, "drop": True, "pidns": False})
    out.append({"label": "rlimits only", "prefix": [], "mount": False, "drop": False, "pidns": False})
    return out


def _uid_pool(mode: dict) -> list[int]:
    """Uids a run may get. Without a PID namespace, leftovers are killed uid-wide, which must never hit a
    process that merely shares the uid, so 'nobody' (shared with system daemons) is then left out."""
    extra = [EXTRA_UID_BASE + i for i in range(1, MAX_CONCURRENT)]
    return [NOBODY_UID, *extra] if mode["pidns"] else extra


def _mode() -> dict:
    """Probe once (thread-safe) which isolation level really works here, by running a tiny program through it."""
    global _MODE
    with _PROBE_LOCK:
        if _MODE is None:
            errors = []
            for cand in _candidates():
                res = _run(cand, "import os\nprint(os.getuid())\n", "", SandboxLimits(wall_s=10, cpu_s=5))
                want = set(map(str, _uid_pool(cand))) if cand["drop"] else {str(os.getuid())}
                if res.status == "ok" and res.stdout.strip() in want:
                    _MODE = dict(cand, errors=errors)
                    break
                errors.append(f"{cand['label']}: {res.status} {res.stderr.strip()[-200:]}")
            else:
                _MODE = dict(_candidates()[-1], errors=errors)
    return _MODE


def isolation_level() -> str:
    """The isolation this machine gives, e.g. ``"pid+net+mount+ipc+user-drop"`` or ``"user-drop only"``."""
    return _mode()["label"]


def run_program(source: str, stdin: str = "", limits: SandboxLimits | None = None) -> RunResult:
    """Run ``source`` with ``python3 -I`` in a fresh sandbox, feeding ``stdin``; never raises for program faults."""
    return _run(_mode(), source, stdin, limits or SandboxLimits())


def _procs_of(uid: int) -> list[int]:
    """Pids whose real uid is ``uid`` (used to prove and enforce that nothing outlives a run)."""
    pids = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                if os.stat(f"/proc/{p}").st_uid == uid:
                    pids.append(int(p))
            except OSError:
                pass
    return pids


def _sweep(uid: int) -> None:
    """Backstop: kill leftovers of ``uid`` as that uid (never as root, so kill(-1) stays inside the uid)."""
    for _ in range(20):
        if not _procs_of(uid):
            return
        subprocess.run([program_python(), "-I", "-S", "-c", "import os\nfor _ in range(3): os.kill(-1, 9)"],
                       user=uid, group=uid, extra_groups=[],
                       env={"PATH": "/usr/bin:/bin"}, cwd="/", check=False)
        time.sleep(0.01)


def _run(mode: dict, source: str, stdin: str, limits: SandboxLimits) -> RunResult:
    drop = mode["drop"]
    uid = _LEASES.acquire(_uid_pool(mode)) if drop else os.getuid()
    gid = uid if drop else os.getgid()  # nobody's group is nogroup = 65534 too
    scratch = None
    proc = None
    rfd = wfd = -1
    t0, wall_t0 = time.monotonic(), time.time()
    try:
        scratch = tempfile.mkdtemp(prefix="distill-sbx-")
        with open(os.path.join(scratch, "prog.py"), "w", encoding="utf-8") as f:
            f.write(source)
        with open(os.path.join(scratch, "stdin.txt"), "w", encoding="utf-8") as f:
            f.write(stdin)
        if drop and not mode["mount"]:
            # The program works in the host scratch dir: it must own it, and only it (0700).
            os.chown(scratch, uid, gid)
            os.chmod(os.path.join(scratch, "prog.py"), 0o444)
        mb = 1024 * 1024
        nproc = limits.nproc
        if not drop:  # RLIMIT_NPROC counts all processes of our own uid here
            nproc = len(_procs_of(os.getuid())) + limits.nproc
        cfg = {
            "uid": uid, "gid": gid, "drop": drop, "mount": mode["mount"], "pidns": mode["pidns"], "scratch": scratch,
            "scratch_mb": max(limits.scratch_mb, limits.fsize_mb), "masked": list(_masked_dirs()),
            "python": program_python(), "wall_s": limits.wall_s,
            "limits": {"cpu": max(1, math.ceil(limits.cpu_s)), "as": limits.memory_mb * mb,
                       "fsize": limits.fsize_mb * mb, "nofile": limits.nofile, "nproc": nproc},
        }
        rfd, wfd = os.pipe()
        cfg["status_fd"] = wfd
        # The init needs only the stdlib; the system interpreter starts faster than a venv one.
        cmd = [*mode["prefix"], cfg["python"], "-I", "-S", "-c", _INIT, repr(cfg)]
        with open(os.path.join(scratch, "stdin.txt"), "rb") as stdin_f:
            proc = subprocess.Popen(cmd, stdin=stdin_f, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    cwd=scratch, env={"PATH": "/usr/bin:/bin:/usr/sbin:/sbin"},
                                    start_new_session=True, pass_fds=(wfd,))
        os.close(wfd)
        wfd = -1
        out, err, status_lines, stop = _collect(proc, rfd, limits)
        rfd = -1
        return _result(out, err, status_lines, stop, time.monotonic() - t0, mode["label"], limits)
    except OSError as e:
        return RunResult("", f"sandbox: {e!r}", None, "sandbox_error", time.monotonic() - t0,
                         isolation=mode["label"])
    finally:
        for fd in (rfd, wfd):
            if fd >= 0:
                os.close(fd)
        if proc is not None and proc.poll() is None:
            _kill_group(proc)
        if drop:
            if not mode["pidns"]:  # with a PID namespace the kernel already killed everything
                _sweep(uid)
            if not mode["mount"]:
                _remove_droppings(uid, wall_t0)
            _LEASES.release(uid)
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)


@functools.lru_cache(maxsize=None)
def _masked_dirs() -> tuple[str, ...]:
    """Masked dirs, minus any that hold the program's interpreter (masking those would break the run)."""
    py = program_python()
    dirs = [*MASKED_DIRS, PROJECT_ROOT] if PROJECT_ROOT.count("/") >= 2 else list(MASKED_DIRS)
    return tuple(dict.fromkeys(d for d in dirs if not (py + "/").startswith(d.rstrip("/") + "/")))


def _remove_droppings(uid: int, since: float) -> None:
    """Without a mount namespace the program could leave files in /tmp and friends: delete what this run's uid
    created there (the uid's processes are all dead by now, so nothing races the removal)."""
    for d in SHARED_TMP_DIRS:
        try:
            entries = list(os.scandir(d))
        except OSError:
            continue
        for e in entries:
            try:
                st = e.stat(follow_symlinks=False)
                if st.st_uid != uid or st.st_ctime < since - 1:
                    continue
                if e.is_dir(follow_symlinks=False):
                    shutil.rmtree(e.path, ignore_errors=True)
                else:
                    os.unlink(e.path)
            except OSError:
                pass


def _kill_group(proc: subprocess.Popen) -> None:
    """TERM the group (the init then cleans up), then KILL it; with a PID namespace that ends every process."""
    for sig, wait in ((signal.SIGTERM, 1.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _collect(proc: subprocess.Popen, rfd: int, limits: SandboxLimits):
    """Read stdout/stderr/status until the init reports, enforcing the output cap and a backstop deadline."""
    sel = selectors.DefaultSelector()
    bufs = {"out": bytearray(), "err": bytearray(), "status": bytearray()}
    err_total = 0
    sel.register(proc.stdout, selectors.EVENT_READ, "out")
    sel.register(proc.stderr, selectors.EVENT_READ, "err")
    status_f = os.fdopen(rfd, "rb", buffering=0)
    sel.register(status_f, selectors.EVENT_READ, "status")
    deadline = time.monotonic() + limits.wall_s + 3.0
    stop = None  # why the parent had to stop the run: "output_limit" or "timeout"
    drain_until = None
    try:
        while sel.get_map():
            now = time.monotonic()
            if drain_until is None and now > deadline:
                stop = stop or "timeout"
            if drain_until is None and stop:
                _kill_group(proc)
                drain_until = time.monotonic() + 1.0
            if drain_until is not None and now > drain_until:
                break
            if "status" not in [k.data for k in sel.get_map().values()] and drain_until is None:
                drain_until = now + 0.5  # init is done: remaining pipes must close promptly
            timeout = 0.1 if drain_until is None else max(0.0, drain_until - now)
            for key, _ in sel.select(timeout):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                name = key.data
                if name == "out":
                    bufs["out"] += chunk
                    if len(bufs["out"]) > limits.output_bytes:
                        del bufs["out"][limits.output_bytes:]
                        stop = "output_limit"
                elif name == "err":
                    err_total += len(chunk)
                    if len(bufs["err"]) < STDERR_KEEP:
                        bufs["err"] += chunk[: STDERR_KEEP - len(bufs["err"])]
                    if err_total > limits.output_bytes:
                        stop = "output_limit"
                else:
                    bufs["status"] += chunk
    finally:
        sel.close()
        status_f.close()
        proc.stdout.close()
        proc.stderr.close()
        if proc.poll() is None:
            try:
                proc.wait(2.0)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
    lines = []
    for line in bufs["status"].decode(errors="replace").splitlines():
        try:
            lines.append(ast.literal_eval(line))
        except (ValueError, SyntaxError):
            pass
    return bytes(bufs["out"]), bytes(bufs["err"]), lines, stop


def _result(out: bytes, err: bytes, lines: list[dict], stop: str | None, wall: float, label: str,
            limits: SandboxLimits) -> RunResult:
    """Turn the init's report into a status."""
    stdout = out.decode("utf-8", errors="replace")
    stderr = err.decode("utf-8", errors="replace")
    final = next((x for x in lines if x.get("final")), None)
    setup = next((x.get("setup_error") for x in lines if "setup_error" in x), None)
    if setup:
        return RunResult(stdout, f"sandbox setup failed: {setup}\n{stderr}", None, "sandbox_error", wall,
                         isolation=label)
    if stop:
        status = stop
    elif final is None:
        status = "sandbox_error"
    elif final.get("killed_by") == "timeout":
        status = "timeout"
    else:
        rc = final.get("returncode")
        if rc == 0:
            status = "ok"
        elif rc == -signal.SIGXCPU or (rc == -signal.SIGKILL and (final.get("cpu_s") or 0) >= limits.cpu_s):
            status = "timeout"  # RLIMIT_CPU: SIGXCPU at the soft limit, SIGKILL at the hard one
        elif "MemoryError" in stderr[-2000:]:
            status = "memory"
        else:
            status = "runtime_error"
    rc = final.get("returncode") if final else None
    cpu = (final.get("cpu_s") or 0.0) if final else 0.0
    return RunResult(stdout, stderr, rc, status, wall, cpu, label)
