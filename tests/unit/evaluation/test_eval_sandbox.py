"""The code sandbox, with real processes: verdicts, limits, and each isolation layer.

Tests of a kernel layer run the program with the Python guard off, so that the layer
alone has to stop it; they are skipped (saying why) where `probe_isolation` shows that
this machine does not grant the layer. The guard-on tests run everywhere.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from gptstore.errors import InvalidRequest
from gptstore.evaluation.sandbox import (
    IsolationReport,
    Outcome,
    SandboxConfig,
    probe_isolation,
    run_program,
    run_programs,
)

FAST = SandboxConfig(wall_seconds=2.0, cpu_seconds=2, memory_bytes=256 << 20,
                     file_bytes=1 << 20)
KERNEL_ONLY = replace(FAST, guard=False)

CORRECT = "def add(a, b):\n    return a + b\n\nassert add(2, 3) == 5\n"
WRONG = "def add(a, b):\n    return a - b\n\nassert add(2, 3) == 5\n"


@pytest.fixture(scope="module")
def isolation() -> IsolationReport:
    return probe_isolation(FAST)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A TCP server on 127.0.0.1 that a sandboxed program must not reach."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.5)
    yield server
    server.close()


def assert_nobody_connected(server: socket.socket) -> None:
    with pytest.raises(TimeoutError):
        server.accept()


# ------------------------------------------------------------------ verdicts


def test_correct_program_passes_and_wrong_one_fails() -> None:
    passed = run_program(CORRECT + "print('ok')\n", FAST)
    assert passed.outcome is Outcome.PASSED and passed.passed
    assert passed.stdout_tail == "ok\n"
    failed = run_program(WRONG, FAST)
    assert failed.outcome is Outcome.FAILED and not failed.passed
    assert failed.exit_code == 1
    # the tail shows the program's own line, not the sandbox's frames
    assert 'File "program.py", line 4' in failed.stderr_tail
    assert "assert add(2, 3) == 5" in failed.stderr_tail
    assert failed.stderr_tail.rstrip().endswith("AssertionError")


def test_syntax_error_fails_with_its_message() -> None:
    result = run_program("def f(:\n    pass\n", FAST)
    assert result.outcome is Outcome.FAILED
    assert "SyntaxError" in result.stderr_tail


def test_exiting_early_does_not_skip_the_tests() -> None:
    # a completion's main block would exit before the asserts: it must not run
    main_block = "if __name__ == '__main__':\n    raise SystemExit(0)\nassert False\n"
    assert run_program(main_block, FAST).outcome is Outcome.FAILED
    # an explicit sys.exit(0) before the asserts is a failure, not a pass
    early_exit = "import sys\nsys.exit(0)\nassert False\n"
    result = run_program(early_exit, FAST)
    assert result.outcome is Outcome.FAILED
    assert "before its tests finished" in result.stderr_tail


def test_fresh_temp_dir_empty_environment_removed_afterwards() -> None:
    program = ("import os, sys\n"
               "print(os.getcwd())\n"
               "print(sorted(os.environ))\n"
               "open('scratch.txt', 'w').write('x')\n")
    result = run_program(program, FAST)
    assert result.passed, result.stderr_tail
    cwd, env = result.stdout_tail.splitlines()
    assert Path(cwd).name == "work" and Path(cwd).parent.name.startswith("gptstore-sandbox-")
    assert not Path(cwd).parent.exists()  # removed, with the file the program wrote
    # nothing from our environment; Python itself may add LC_CTYPE (PEP 538 coercion)
    assert set(eval(env)) <= {"LC_CTYPE"}


# ------------------------------------------------------------------ time


def test_infinite_loop_is_stopped_and_the_rest_of_the_batch_scored() -> None:
    # a sleeping loop uses no CPU: only the wall-time limit can stop it
    sleeper = ("import os, sys, time\n"
               "print(os.getpid(), flush=True)\n"
               "while True:\n    time.sleep(0.05)\n")
    config = replace(FAST, wall_seconds=1.0, workers=2)
    start = time.monotonic()
    results = run_programs([sleeper, CORRECT, WRONG], config)
    elapsed = time.monotonic() - start
    assert [r.outcome for r in results] == [Outcome.TIMEOUT, Outcome.PASSED, Outcome.FAILED]
    assert "wall-time limit of 1.0 s" in results[0].detail
    assert 1.0 <= results[0].seconds < 2.0
    assert elapsed < 4.0
    pid = int(results[0].stdout_tail.split()[0])
    with pytest.raises(ProcessLookupError):  # the whole group was killed and reaped
        os.kill(pid, 0)


def test_busy_loop_is_stopped_by_the_cpu_limit() -> None:
    result = run_program("while True:\n    pass\n",
                         replace(FAST, cpu_seconds=1, wall_seconds=10.0))
    assert result.outcome is Outcome.TIMEOUT
    assert "CPU-time limit of 1 s" in result.detail
    assert result.seconds < 5.0


def test_progress_callback_sees_every_result() -> None:
    seen: list[int] = []
    results = run_programs([CORRECT, WRONG, CORRECT], FAST,
                           on_result=lambda index, _: seen.append(index))
    assert sorted(seen) == [0, 1, 2]
    assert [r.passed for r in results] == [True, False, True]


# ------------------------------------------------------------------ processes

FORK_BOMB = "import os\nwhile True:\n    os.fork()\n"


def test_fork_bomb_is_stopped_by_the_guard() -> None:
    result = run_program(FORK_BOMB, FAST)
    assert result.outcome is Outcome.FAILED
    assert "os.fork is disabled in the gptstore sandbox" in result.stderr_tail
    shell = run_program("import subprocess\nsubprocess.run(['sh', '-c', 'echo hi'])\n", FAST)
    assert shell.outcome is Outcome.FAILED
    assert "subprocess.Popen is disabled" in shell.stderr_tail


def test_fork_bomb_is_stopped_by_rlimit_nproc(isolation: IsolationReport) -> None:
    if not isolation.fork_blocked:
        pytest.skip("RLIMIT_NPROC does not hold here (programs run as root): "
                    "only the guard stops fork")
    result = run_program(FORK_BOMB, KERNEL_ONLY)
    assert result.outcome is Outcome.FAILED
    assert "BlockingIOError" in result.stderr_tail  # EAGAIN from fork(2)
    threads = run_program("import threading\nthreading.Thread(target=print).start()\n",
                          KERNEL_ONLY)
    assert "can't start new thread" in threads.stderr_tail


# ------------------------------------------------------------------ memory and files


def test_unbounded_allocation_is_stopped_by_the_memory_limit() -> None:
    hog = "chunks = []\nwhile True:\n    chunks.append(bytearray(10_000_000))\n"
    # time limits far above what filling 256 MiB takes, so on a loaded machine too it is
    # the memory limit that stops it (a MemoryError, not a timeout)
    result = run_program(hog, replace(FAST, wall_seconds=60.0, cpu_seconds=60))
    assert result.outcome is Outcome.FAILED
    assert result.stderr_tail.rstrip().endswith("MemoryError")


def test_a_large_file_outside_the_temp_dir_cannot_persist() -> None:
    # /tmp is writable by everyone, nobody included: only RLIMIT_FSIZE (1 MiB here) stops
    # a 4 MiB file there
    target = Path(tempfile.gettempdir()) / f"gptstore-fsize-test-{uuid.uuid4().hex}"
    program = f"open({str(target)!r}, 'wb').write(b'x' * (4 << 20))\n"
    try:
        result = run_program(program, KERNEL_ONLY)
        assert result.outcome is Outcome.FAILED
        assert "File too large" in result.stderr_tail
        assert not target.exists() or target.stat().st_size <= FAST.file_bytes
    finally:
        target.unlink(missing_ok=True)


def test_files_of_the_invoking_user_cannot_be_written(
        isolation: IsolationReport, tmp_path: Path) -> None:
    if isolation.uid == os.getuid():
        pytest.skip("programs run as our own uid here (no root to drop): our files are theirs")
    victim = tmp_path / "victim.txt"
    victim.write_text("original")
    tmp_path.chmod(0o755)  # reachable, but not writable, by others
    program = f"open({str(victim)!r}, 'w').write('changed')\n"
    result = run_program(program, KERNEL_ONLY)
    assert result.outcome is Outcome.FAILED
    assert "Permission denied" in result.stderr_tail
    assert victim.read_text() == "original"


# ------------------------------------------------------------------ network


def connect_program(port: int) -> str:
    return ("import socket\n"
            f"s = socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
            "s.sendall(b'leak')\n")


def test_sockets_are_refused_by_the_guard(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    result = run_program(connect_program(port), FAST)
    assert result.outcome is Outcome.FAILED
    assert "socket.create_connection is disabled" in result.stderr_tail
    low_level = run_program("import _socket\n_socket.socket()\n", FAST)
    assert low_level.outcome is Outcome.FAILED
    assert_nobody_connected(listener)


def test_network_namespace_blocks_even_loopback(
        isolation: IsolationReport, listener: socket.socket) -> None:
    if not isolation.network_namespace:
        pytest.skip("no network namespace here (neither root nor unprivileged user "
                    "namespaces): only the guard refuses sockets")
    port = listener.getsockname()[1]
    result = run_program(connect_program(port), KERNEL_ONLY)
    assert result.outcome is Outcome.FAILED
    assert "Network is unreachable" in result.stderr_tail
    assert_nobody_connected(listener)


def test_program_holds_no_capabilities(isolation: IsolationReport) -> None:
    # with CAP_NET_ADMIN it could bring the namespace's loopback up; with any
    # capability it could get around the limits
    if isolation.uid == 0:
        pytest.skip("programs run as root here: the uid switch was not possible")
    program = ("caps = [l.split() for l in open('/proc/self/status') if l.startswith('Cap')]\n"
               "print({name: int(value, 16) for name, value in caps})\n")
    result = run_program(program, KERNEL_ONLY)
    assert result.passed, result.stderr_tail
    caps = eval(result.stdout_tail)
    assert caps["CapEff:"] == 0 and caps["CapPrm:"] == 0


# ------------------------------------------------------------------ what we got


def test_probe_reports_the_configured_limits(isolation: IsolationReport) -> None:
    assert isolation.limits["RLIMIT_AS"] == (FAST.memory_bytes, FAST.memory_bytes)
    assert isolation.limits["RLIMIT_FSIZE"] == (FAST.file_bytes, FAST.file_bytes)
    assert isolation.limits["RLIMIT_CPU"] == (FAST.cpu_seconds, FAST.cpu_seconds + 1)
    assert isolation.limits["RLIMIT_NPROC"] == (0, 0)
    assert isolation.limits["RLIMIT_CORE"] == (0, 0)
    if os.geteuid() == 0 and isolation.uid == 0:
        pytest.fail("running as root but the sandbox did not switch to nobody; "
                    "see the stderr line of any program for the unreadable path")


def test_config_errors_name_the_field() -> None:
    with pytest.raises(InvalidRequest, match="wall_seconds must be > 0"):
        SandboxConfig(wall_seconds=0)
    with pytest.raises(InvalidRequest, match="memory_bytes must be >= 32 MiB"):
        SandboxConfig(memory_bytes=1 << 20)
    with pytest.raises(InvalidRequest, match="not an executable Python"):
        SandboxConfig(python="/no/such/python")
