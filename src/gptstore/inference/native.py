"""The native bf16 GEMV (kernels/gemv_bf16.c): built on first use, loaded with ctypes.

Single-stream decoding is a pass over every weight per token, and on AVX2 CPUs ATen's
bf16 GEMV streams weights at about half the rate memory delivers them (the C file says
why). The kernel is C, not a PyTorch extension: it needs no PyTorch headers, so the
first build takes well under a second with the system's C compiler instead of the
~minute a `torch.utils.cpp_extension` build takes, and it is called through `ctypes`
on the tensors' data pointers (a few microseconds a call, about what ATen's dispatch
costs).

Built once per machine kind: the shared object is cached under
`$XDG_CACHE_HOME/gptstore/kernels` (else `~/.cache/gptstore/kernels`; a temporary
folder where that is not writable), named by a digest of the source, the compiler and
its flags, and written to a temporary name, then renamed (two processes building at
once each produce a whole file). Where the CPU lacks AVX2 or FMA, no C compiler is
found, the build fails, or `GPTSTORE_NATIVE_KERNELS=0`, `kernel()` returns None and
`unavailable_reason()` says why; the engine then keeps ATen's kernels. Whether the
kernel is used at all is measured (precision.py: it is one of the 1-row kernels timed
per machine), never assumed.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sysconfig
import tempfile
import threading
from pathlib import Path
from typing import Any

#: the weights' block shape in the packed layout (the C file's ROWS and CHUNK)
BLOCK_ROWS, CHUNK = 8, 16
#: the most rows one call takes (single-stream and two-stream decode steps)
MAX_ROWS = 2
SOURCE = Path(__file__).with_name("kernels") / "gemv_bf16.c"
FLAGS = ("-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC", "-std=c11")
BUILD_TIMEOUT_S = 120
DISABLE_ENV = "GPTSTORE_NATIVE_KERNELS"

_lock = threading.Lock()
_state: dict[str, Any] = {}


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gptstore" / "kernels"


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), sysconfig.get_config_var("CC"), "cc", "gcc"):
        if name:
            path = shutil.which(str(name).split()[0])
            if path:
                return path
    return None


def _cpu_supports() -> str | None:
    """None if this CPU can run the kernel, else why not."""
    from gptstore.inference.precision import cpu_flag_set

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"the kernel is x86-64 code; this machine is {platform.machine()}"
    missing = {"avx2", "fma"} - cpu_flag_set()
    if missing:
        return f"the CPU lacks {', '.join(sorted(missing))}"
    return None


def _build(cc: str) -> Path:
    """The shared object for this source and compiler, built unless already cached."""
    source = SOURCE.read_bytes()
    version = subprocess.run([cc, "--version"], capture_output=True, text=True,
                             timeout=30).stdout.splitlines()[:1]
    digest = hashlib.sha256(b"\0".join([source, " ".join(FLAGS).encode(),
                                        "".join(version).encode()])).hexdigest()[:16]
    for folder in (_cache_dir(), Path(tempfile.gettempdir()) / f"gptstore-kernels-{os.getuid()}"):
        target = folder / f"gemv_bf16-{digest}.so"
        if target.exists():
            return target
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".build-", suffix=".so")
            os.close(fd)
        except OSError:
            continue  # not writable: the next folder
        try:
            done = subprocess.run([cc, *FLAGS, str(SOURCE), "-o", tmp], capture_output=True,
                                  text=True, timeout=BUILD_TIMEOUT_S)
            if done.returncode != 0:
                raise RuntimeError(f"{cc} failed: {done.stderr.strip()[-500:]}")
            os.replace(tmp, target)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return target
    raise RuntimeError("no writable folder for the built kernel")


def _load() -> Any:
    if os.environ.get(DISABLE_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        raise RuntimeError(f"{DISABLE_ENV}={os.environ[DISABLE_ENV]}")
    reason = _cpu_supports()
    if reason:
        raise RuntimeError(reason)
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set CC, or install gcc)")
    import torch  # noqa: F401  (its libgomp is loaded first, so the kernel shares it)

    library = ctypes.CDLL(str(_build(cc)))
    function = library.gptstore_gemv_bf16
    function.restype = ctypes.c_int
    function.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
                         ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
                         ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    return function


def kernel() -> Any:
    """The loaded kernel function, or None where it cannot run here (built and loaded
    once per process)."""
    with _lock:
        if "function" not in _state:
            try:
                _state["function"], _state["reason"] = _load(), None
            except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
                _state["function"], _state["reason"] = None, str(exc)
        return _state["function"]


def unavailable_reason() -> str | None:
    """Why `kernel()` is None (None when it is available)."""
    kernel()
    return _state.get("reason")


def fits(n_in: int) -> bool:
    return n_in % CHUNK == 0


def pack(weight: Any) -> Any:
    """A [out, in] weight as the kernel reads it: bf16, rows padded with zeros to a
    multiple of 8, laid out [out / 8][in / 16][8][16] (contiguous)."""
    import torch
    import torch.nn.functional as F

    n_out, n_in = weight.shape
    if not fits(n_in):
        raise ValueError(f"the native GEMV needs in_features divisible by {CHUNK}, got {n_in}")
    w = weight.detach().to(torch.bfloat16)
    pad = -n_out % BLOCK_ROWS
    if pad:
        w = F.pad(w, (0, 0, 0, pad))
    blocks = w.reshape(-1, BLOCK_ROWS, n_in // CHUNK, CHUNK)
    return blocks.permute(0, 2, 1, 3).contiguous()


def gemv(x: Any, packed: Any, n_out: int, bias: Any = None, residual: Any = None) -> Any:
    """`x @ W^T (+ bias) (+ residual)` for 1-2 rows of x ([rows, in], fp32 or bf16, its
    rows may be strided); the result has x's dtype, and so must bias and residual."""
    import torch

    function = kernel()
    if function is None:
        raise RuntimeError(f"the native GEMV is not available: {unavailable_reason()}")
    rows, n_in = x.shape
    if rows > MAX_ROWS:
        raise ValueError(f"the native GEMV takes 1-{MAX_ROWS} rows, got {rows}")
    act_bf16 = x.dtype == torch.bfloat16
    if not act_bf16 and x.dtype != torch.float32:
        raise ValueError(f"the native GEMV takes fp32 or bf16 activations, not {x.dtype}")
    if x.stride(-1) != 1:
        x = x.contiguous()
    for name, t in (("bias", bias), ("residual", residual)):
        if t is not None and t.dtype != x.dtype:
            raise ValueError(f"{name} is {t.dtype}, the activations {x.dtype}")
    bias = None if bias is None else bias.contiguous()
    residual = None if residual is None else residual.contiguous()
    y = torch.empty(rows, n_out, dtype=x.dtype)
    status = function(x.data_ptr(), rows, x.stride(0), packed.data_ptr(), n_in, n_out,
                      None if bias is None else bias.data_ptr(),
                      None if residual is None else residual.data_ptr(), y.data_ptr(),
                      int(act_bf16), torch.get_num_threads())
    if status != 0:
        raise MemoryError("the native GEMV could not allocate its scratch row")
    return y
