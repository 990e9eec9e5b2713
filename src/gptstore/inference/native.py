"""gptstore's native decode kernels (kernels/*.c): built on first use, loaded with ctypes.

- `gemv`: 1-2 row products with bf16 weights. Single-stream decoding is a pass over
  every weight per token, and on AVX2 CPUs ATen's bf16 GEMV streams weights at about
  half the rate memory delivers them (gemv_bf16.c says why). Its AVX-512 path (the same
  bits, with a software prefetch) is a kernel of its own to the machine's profile,
  which times both. Steps of several rows run on the loop the profile measured fastest
  (`rows_loop`): AVX-512's bf16 dot product, FMAs, or AMX tiles where the CPU has them.
- `gemv_q4`: the same with 4-bit weights (`int4` serving), where PyTorch's int4 kernel
  streams them at under half that rate (gemv_q4.c; AVX2, and AVX-512 VNNI where the
  CPU has it, chosen at run time).
- `decode_attention`: attention of decode rows over the slot KV cache, where PyTorch's
  flash-attention kernel spends most of its time on setup (decode_attention.c).
- `rms_norm`, `silu_mul`: a Llama layer's small operations in a decode step, one call each
  instead of several PyTorch kernels (elementwise.c).
- `LlamaDecodeStep`: a Llama layer stack's decode step (1-2 rows, or as many as the
  native GEMV serves) as one call that runs the kernels above back to back
  (decode_step.c), instead of ~8 Python calls a layer.
- `refine_top`: bf16 logits widened, with each row's top candidates recomputed in fp32,
  in one pass instead of six PyTorch kernels (logits.c).

They are C, not a PyTorch extension: no PyTorch headers, so the first build takes about
a second with the system's C compiler instead of the ~minute a
`torch.utils.cpp_extension` build takes, and they are called through `ctypes` on the
tensors' data pointers (a few microseconds a call, about what ATen's dispatch costs).

Built once per machine kind: the shared object is cached under
`$XDG_CACHE_HOME/gptstore/kernels` (else `~/.cache/gptstore/kernels`; a temporary
folder where that is not writable), named by a digest of the source, the compiler and
its flags, and written to a temporary name, then renamed (two processes building at
once each produce a whole file). Where the CPU lacks AVX2 or FMA, no C compiler is
found, the build fails, or `GPTSTORE_NATIVE_KERNELS=0`, `library()` returns None and
`unavailable_reason()` says why; the engine then keeps PyTorch's kernels. Whether a
kernel is used at all is measured (precision.py: each is timed against PyTorch's per
machine), never assumed.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sysconfig
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch  # loaded before the kernels, so they share its libgomp (one OpenMP runtime)
import torch.nn.functional as F

from gptstore.inference.cpu import cpu_flag_set
from gptstore.inference.types import ROWS_AMX, ROWS_DOT, ROWS_FMA
from gptstore.settings import NATIVE_KERNELS_ENV

#: the weights' block shape in the packed layout (the C file's ROWS and CHUNK)
BLOCK_ROWS, CHUNK = 8, 16
#: inputs per 4-bit group (gemv_q4.c's Q4_GROUP; its Q4_ROWS is BLOCK_ROWS)
Q4_GROUP = 32
#: rows of the steps the GEMVs are made for (single- and two-stream decoding): the 4-bit
#: one serves these with the int4 kernel "native", any with "native-all"
MAX_ROWS = 2
KERNELS = Path(__file__).with_name("kernels")
SOURCES = tuple(KERNELS / name for name in ("gemv_bf16.c", "gemv_q4.c", "decode_attention.c",
                                            "elementwise.c", "logits.c", "decode_step.c"))
HEADERS = (KERNELS / "simd.h", KERNELS / "kernels.h")
#: head sizes the attention kernel takes: whole AVX vectors, at most 32 of them
MAX_HEAD_DIM = 256
# -ffp-contract=off: fused multiply-adds only where the source writes them, so the
# rotary embedding rounds as PyTorch's does (decode_attention.c)
FLAGS = ("-O3", "-mavx2", "-mfma", "-ffp-contract=off", "-fopenmp", "-shared", "-fPIC",
         "-std=c11")
BUILD_TIMEOUT_S = 120
DISABLE_ENV = NATIVE_KERNELS_ENV

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
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"the kernel is x86-64 code; this machine is {platform.machine()}"
    missing = {"avx2", "fma"} - cpu_flag_set()
    if missing:
        return f"the CPU lacks {', '.join(sorted(missing))}"
    return None


@functools.cache
def source_digest() -> str:
    """A digest of the kernels' source and flags: what a machine's profile measured
    (precision.py measures again when it changes)."""
    return hashlib.sha256(b"\0".join([*(path.read_bytes() for path in SOURCES + HEADERS),
                                      " ".join(FLAGS).encode()])).hexdigest()[:16]


def _build(cc: str) -> Path:
    """The shared object for this source and compiler, built unless already cached."""
    version = subprocess.run([cc, "--version"], capture_output=True, text=True,
                             timeout=30).stdout.splitlines()[:1]
    digest = hashlib.sha256(f"{source_digest()} {''.join(version)}".encode()).hexdigest()[:16]
    for folder in (_cache_dir(), Path(tempfile.gettempdir()) / f"gptstore-kernels-{os.getuid()}"):
        target = folder / f"gptstore-kernels-{digest}.so"
        if target.exists():
            return target
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".build-", suffix=".so")
            os.close(fd)
        except OSError:
            continue  # not writable: the next folder
        try:
            done = subprocess.run([cc, *FLAGS, *map(str, SOURCES), "-o", tmp],
                                  capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
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
    library = ctypes.CDLL(str(_build(cc)))
    i64, ptr, c_int = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    library.gptstore_gemv_bf16.restype = c_int
    library.gptstore_gemv_q4.restype = c_int
    library.gptstore_gemv_q4.argtypes = [ptr, i64, i64, ptr, i64, i64, ptr, ptr, ptr, c_int,
                                         c_int]
    library.gptstore_gemv_bf16.restype = c_int  # the q4 kernel's arguments and rows_loop
    library.gptstore_gemv_bf16.argtypes = [*library.gptstore_gemv_q4.argtypes, c_int]
    library.gptstore_gemv_bf16_avx512.restype = c_int
    library.gptstore_gemv_bf16_avx512.argtypes = library.gptstore_gemv_bf16.argtypes
    library.gptstore_gemv_bf16_avx512_supported.restype = c_int
    library.gptstore_gemv_bf16_avx512_supported.argtypes = []
    library.gptstore_amx_supported.restype = c_int
    library.gptstore_amx_supported.argtypes = []
    library.gptstore_gemv_q4_use_vnni.restype = c_int
    library.gptstore_gemv_q4_use_vnni.argtypes = [c_int]
    library.gptstore_gemv_q4_vnni.restype = c_int
    library.gptstore_gemv_q4_vnni.argtypes = []
    library.gptstore_attention_rows.restype = c_int
    library.gptstore_attention_rows.argtypes = [ptr, i64, i64, ptr, ptr, ptr, ptr, ptr, ptr,
                                                ptr, i64, i64, ptr, i64, ptr, i64, i64, i64,
                                                i64, ctypes.c_float, ptr, c_int, c_int]
    library.gptstore_rms_norm.restype = None
    library.gptstore_rms_norm.argtypes = [ptr, i64, i64, ptr, i64, ctypes.c_float, ptr, c_int]
    library.gptstore_silu_mul.restype = None
    library.gptstore_silu_mul.argtypes = [ptr, i64, i64, i64, ptr, c_int, c_int]
    library.gptstore_llama_decode.restype = c_int
    library.gptstore_llama_decode.argtypes = [ptr, i64, i64, i64, ptr, c_int, i64, i64, i64,
                                              i64, ctypes.c_float, ptr, ptr, i64, i64, i64,
                                              ptr, ptr, ctypes.c_float, ptr, ptr, ptr, c_int,
                                              c_int, c_int]
    library.gptstore_refine_top.restype = c_int
    library.gptstore_refine_top.argtypes = [ptr, i64, i64, i64, ptr, i64, i64, c_int, ptr, i64,
                                            c_int, ptr, i64, c_int]
    return library


def library() -> Any:
    """The loaded kernels (a `ctypes.CDLL`), or None where they cannot run here (built
    and loaded once per process)."""
    if "library" in _state:  # the hot path: no lock once loaded (or refused)
        return _state["library"]
    with _lock:
        if "library" not in _state:
            try:
                _state["reason"] = None
                _state["library"] = _load()
            except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
                _state["reason"] = str(exc)
                _state["library"] = None
        return _state["library"]


def _required() -> Any:
    """`library()`, or a RuntimeError saying why there is none."""
    lib = library()
    if lib is None:
        raise RuntimeError(f"the native kernels are not available: {unavailable_reason()}")
    return lib


def unavailable_reason() -> str | None:
    """Why `library()` is None (None when it is available)."""
    library()
    return _state.get("reason")


def fits(n_in: int) -> bool:
    return n_in % CHUNK == 0


def pack(weight: Any) -> Any:
    """A [out, in] weight as the kernel reads it: bf16, rows padded with zeros to a
    multiple of 8, laid out [out / 8][in / 16][8][16] (contiguous)."""
    n_out, n_in = weight.shape
    if not fits(n_in):
        raise ValueError(f"the native GEMV needs in_features divisible by {CHUNK}, got {n_in}")
    w = weight.detach().to(torch.bfloat16)
    pad = -n_out % BLOCK_ROWS
    if pad:
        w = F.pad(w, (0, 0, 0, pad))
    blocks = w.reshape(-1, BLOCK_ROWS, n_in // CHUNK, CHUNK)
    return blocks.permute(0, 2, 1, 3).contiguous()


def gemv(x: Any, packed: Any, n_out: int, bias: Any = None, residual: Any = None, *,
         avx512: bool = False, rows_loop: str = ROWS_DOT) -> Any:
    """`x @ W^T (+ bias) (+ residual)` for rows of x ([rows, in], fp32 or bf16, its rows
    may be strided): made for 1-2 rows (on AVX2 rows go in pairs over each weight block,
    which the next pair finds in cache), served for more where the machine measured that faster
    than the batched products (`MachineProfile.gemv_rows`). The result has x's dtype,
    and so must bias and residual. `avx512`: the AVX-512 path (the same bits; where
    `gemv_avx512_supported`). `rows_loop` (types.ROWS_LOOPS), for two or more rows on an
    AVX-512 CPU: "bf16-dot", bf16 rows on its bf16 dot product where the CPU has
    avx512_bf16, four rows at a time; "fma", AVX-512 FMAs, four rows per widened weight
    vector (the same bits); "amx", bf16 rows from 4 on AMX tiles where `amx_supported`
    (a row's bits may differ from the other loops' in the last place, never with the
    rows beside it), fewer on the FMAs. What the machine measured fastest:
    precision.py `rows_loop`. Rows of fp32 activations on an AVX-512 CPU always take
    the FMAs."""
    lib = _required()
    function = lib.gptstore_gemv_bf16_avx512 if avx512 else lib.gptstore_gemv_bf16
    return _gemv(function, x, packed, n_out, bias, residual, rows_loop_code(rows_loop))


#: the C kernels' codes of the rows loops (kernels.h ROWS_LOOP_*)
ROWS_LOOP_CODES = {ROWS_DOT: 0, ROWS_FMA: 1, ROWS_AMX: 2}


def rows_loop_code(rows_loop: str) -> int:
    try:
        return ROWS_LOOP_CODES[rows_loop]
    except KeyError:
        raise ValueError(f"unknown rows loop {rows_loop!r} (known: "
                         f"{', '.join(ROWS_LOOP_CODES)})") from None


def gemv_avx512_supported() -> bool:
    """Whether `gemv(..., avx512=True)` runs here (the kernels build and the CPU has
    AVX-512)."""
    library_ = library()
    return library_ is not None and bool(library_.gptstore_gemv_bf16_avx512_supported())


def amx_supported() -> bool:
    """Whether `gemv(..., rows_loop="amx")` multiplies on AMX here: the kernels build
    with a compiler that knows AMX, the CPU has its tiles and bf16 products, and Linux
    (5.16 or later) lets the process use them."""
    library_ = library()
    return library_ is not None and bool(library_.gptstore_amx_supported())


def fits_q4(n_in: int) -> bool:
    return n_in % Q4_GROUP == 0


def pack_q4(q: Any, scale: Any, low: Any) -> Any:
    """4-bit weights as `gemv_q4` reads them, from q [out, in] (integers 0..15) and each
    group of 32 inputs' scale and min [out, in / 32] (w = q * scale + min): bf16 scales
    and mins, rows padded with zeros to a multiple of 8, as [out / 8][in / 32] records of
    160 bytes (gemv_q4.c)."""
    n_out, n_in = q.shape
    if not fits_q4(n_in):
        raise ValueError(f"the native int4 GEMV needs in_features divisible by {Q4_GROUP}, "
                         f"got {n_in}")
    groups = n_in // Q4_GROUP
    if scale.shape != (n_out, groups) or low.shape != (n_out, groups):
        raise ValueError(f"scale and min must be [{n_out}, {groups}]")
    pad = -n_out % BLOCK_ROWS
    q = F.pad(q.to(torch.uint8), (0, 0, 0, pad)).reshape(-1, groups, Q4_GROUP)
    nibbles = q[..., :Q4_GROUP // 2] | (q[..., Q4_GROUP // 2:] << 4)  # [out, groups, 16]

    def by_block(t: Any) -> Any:  # [out, groups, width] -> [out / 8, groups, 8 * width]
        blocks = t.reshape(-1, BLOCK_ROWS, groups, t.shape[-1]).permute(0, 2, 1, 3)
        return blocks.reshape(blocks.shape[0], groups, -1)

    def bf16_bytes(t: Any) -> Any:  # [out, groups] -> [out, groups, 2] bf16 bytes
        t = F.pad(t.to(torch.bfloat16), (0, 0, 0, pad))
        return t.contiguous().view(torch.uint8).reshape(t.shape[0], groups, 2)

    return torch.cat([by_block(nibbles), by_block(bf16_bytes(scale)),
                      by_block(bf16_bytes(low))], dim=-1).contiguous()


def gemv_q4(x: Any, packed: Any, n_out: int, bias: Any = None, residual: Any = None) -> Any:
    """`x @ W^T (+ bias) (+ residual)` for any number of rows of x with `pack_q4`'s
    weights; each group of 32 activations is quantised to int8 (gemv_q4.c), as
    llama.cpp's Q4_1 product does. Activations as `gemv`'s."""
    return _gemv(_required().gptstore_gemv_q4, x, packed, n_out, bias, residual)


def q4_use_vnni(enable: bool = True) -> bool:
    """Let `gemv_q4` use its AVX-512 VNNI path where the CPU has one (the default), or
    keep it on AVX2 (the tests and benchmarks time both); returns whether VNNI is used."""
    return bool(_required().gptstore_gemv_q4_use_vnni(int(enable)))


def _gemv(function: Any, x: Any, packed: Any, n_out: int, bias: Any, residual: Any,
          *kernel_args: int) -> Any:
    """Call a GEMV kernel of gemv_bf16.c's or gemv_q4.c's arguments (`kernel_args`:
    the bf16 kernel's trailing ones)."""
    rows, n_in = x.shape
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
                      int(act_bf16), torch.get_num_threads(), *kernel_args)
    if status == -3:
        raise ValueError("the native GEMV's AVX-512 path needs a CPU with AVX-512 "
                         "(gemv_avx512_supported() is False here)")
    if status != 0:
        raise MemoryError("the native GEMV could not allocate its scratch row")
    return y


def attention_fits(head_dim: int) -> bool:
    return head_dim % 8 == 0 and head_dim <= MAX_HEAD_DIM


class DecodeAttention:
    """One group of decode rows' attention, prepared once per step (its checks and the
    lengths as a C array) and run once per layer: per call only q's and the caches'
    pointers change, so a call costs little more than the kernel.

    Rows sit on consecutive cache slots from `slot0`; row r attends to its first
    `lengths[r]` positions, its new token's included. The caches are one layer's
    [slots, kv_heads, cap, head_dim] (kv_cache.py).

    `one_slot`: the rows are a prompt chunk's tokens, all on slot `slot0` (row r at
    position lengths[r] - 1): the caller writes their keys and values first, since
    each row reads the others'.

    `slots`: row r on slot slots[r] instead (`slot0` unused): decode rows and prompt
    chunks in one group, a chunk's tokens as rows of one slot at consecutive positions
    (a step of both in one native call, `LlamaDecodeStep`); the kernel writes every
    row's new key and value before any row attends."""

    def __init__(self, slot0: int, lengths: Sequence[int], n_heads: int, n_kv: int,
                 head_dim: int, *, one_slot: bool = False,
                 slots: Sequence[int] | None = None) -> None:
        self.function = _required().gptstore_attention_rows
        self.one_slot = one_slot
        if not attention_fits(head_dim) or n_heads % n_kv:
            raise ValueError(f"the native attention cannot take head_dim {head_dim} with "
                             f"{n_heads} query and {n_kv} kv heads")
        if not lengths or min(lengths) < 1 or slot0 < 0:
            raise ValueError("each row needs a slot and at least one cached position")
        if slots is not None and (one_slot or len(slots) != len(lengths) or min(slots) < 0):
            raise ValueError("one slot per row, for rows not all of one chunk")
        self.slot0, self.rows, self.longest = slot0, len(lengths), max(lengths)
        self.row_slots = None if slots is None else (ctypes.c_int64 * self.rows)(*slots)
        # one past the last slot the rows read
        self.slot_end = max(slots) + 1 if slots is not None else \
            slot0 + (1 if one_slot else self.rows)
        self.n_heads, self.n_kv, self.head_dim = n_heads, n_kv, head_dim
        self.counts = (ctypes.c_int64 * self.rows)(*lengths)

    def __call__(self, q: Any, k_cache: Any, v_cache: Any, scale: float,
                 k_new: Any = None, v_new: Any = None,
                 rotary: tuple[Any, Any] | None = None) -> Any:
        """q [rows, heads, head_dim] (unit stride along head_dim) -> [rows, heads *
        head_dim] in q's dtype. With `k_new`, `v_new` ([rows, kv_heads, head_dim], unit
        stride along head_dim) the kernel first writes them at each row's last
        position. With `rotary` (a Llama runner's cos and sign-folded sin tables,
        contiguous [positions, head_dim] of q's dtype), q and `k_new` arrive unrotated
        and the kernel rotates them at each row's position."""
        slots, n_kv, cap, head_dim = k_cache.shape
        if q.shape != (self.rows, self.n_heads, self.head_dim) or n_kv != self.n_kv \
                or head_dim != self.head_dim or v_cache.shape != k_cache.shape \
                or self.slot_end > slots or self.longest > cap:
            raise ValueError("q or the caches do not match the prepared attention")
        dtype = q.dtype
        if dtype not in (torch.float32, torch.bfloat16) or k_cache.dtype != dtype \
                or v_cache.dtype != dtype or not k_cache.is_contiguous() \
                or not v_cache.is_contiguous():
            raise ValueError("q and the caches must all be fp32 or all bf16, the caches "
                             "contiguous")
        if q.stride(-1) != 1:
            q = q.contiguous()
        if self.row_slots is not None and k_new is None:
            raise ValueError("rows of named slots are attended with their new keys and "
                             "values (the kernel writes them all first)")
        if self.one_slot and (k_new is not None or v_new is not None or rotary is not None):
            raise ValueError("a chunk's rows read each other's keys: write them first")
        new_k = new_v = strides = None
        if k_new is not None and v_new is not None:
            if k_new.shape != (self.rows, self.n_kv, self.head_dim) \
                    or v_new.shape != k_new.shape or k_new.stride(-1) != 1 \
                    or v_new.stride(-1) != 1 or k_new.dtype != dtype or v_new.dtype != dtype:
                raise ValueError("k_new and v_new must be [rows, kv_heads, head_dim] of "
                                 "q's dtype, unit stride along head_dim")
            new_k, new_v = k_new.data_ptr(), v_new.data_ptr()
            strides = (ctypes.c_int64 * 4)(k_new.stride(0), k_new.stride(1),
                                           v_new.stride(0), v_new.stride(1))
        cos = sin = None
        if rotary is not None:
            if new_k is None:
                raise ValueError("rotary needs k_new and v_new (the kernel rotates the keys "
                                 "it writes)")
            for table in rotary:
                if table.dtype != dtype or not table.is_contiguous() or table.dim() != 2 \
                        or table.shape[1] != head_dim or table.shape[0] < self.longest:
                    raise ValueError(f"the rotary tables must be contiguous [>= "
                                     f"{self.longest}, {head_dim}] tensors of {dtype}")
            cos, sin = rotary[0].data_ptr(), rotary[1].data_ptr()
        out = torch.empty(self.rows, self.n_heads * self.head_dim, dtype=dtype)
        status = self.function(q.data_ptr(), q.stride(0), q.stride(1), new_k, new_v,
                               strides, cos, sin, k_cache.data_ptr(),
                               v_cache.data_ptr(), self.slot0, 1 - self.one_slot,
                               self.row_slots, self.rows, self.counts, self.n_heads, self.n_kv,
                               self.head_dim, cap, scale, out.data_ptr(),
                               int(dtype == torch.bfloat16), torch.get_num_threads())
        if status != 0:
            raise MemoryError("the native attention could not allocate its scratch memory")
        return out


def decode_attention(q: Any, k_cache: Any, v_cache: Any, slot0: int,
                     lengths: Sequence[int], scale: float) -> Any:
    """`DecodeAttention` prepared and run once (the caches already hold the new keys)."""
    return DecodeAttention(slot0, lengths, q.shape[1], k_cache.shape[1], q.shape[2])(
        q, k_cache, v_cache, scale)


def _activations(x: Any, what: str) -> bool:
    """Whether `x` ([rows, dim], unit stride along dim) holds bf16 (else fp32)."""
    if x.dim() != 2 or x.stride(-1) != 1 or x.dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"{what} must be [rows, dim] fp32 or bf16 with unit stride along dim")
    return bool(x.dtype == torch.bfloat16)


def rms_norm(x: Any, weight: Any, eps: float) -> Any:
    """Llama's RMSNorm of x [rows, dim] (rows may be strided) with `weight` [dim] of x's
    dtype, as transformers computes it; one call instead of PyTorch's several kernels."""
    lib = _required()
    bf16 = _activations(x, "x")
    rows, dim = x.shape
    if weight.shape != (dim,) or weight.dtype != x.dtype or not weight.is_contiguous():
        raise ValueError(f"weight must be a contiguous [{dim}] tensor of {x.dtype}")
    out = torch.empty(rows, dim, dtype=x.dtype)
    lib.gptstore_rms_norm(x.data_ptr(), rows, x.stride(0), weight.data_ptr(), dim, eps,
                          out.data_ptr(), int(bf16))
    return out


def silu_mul(gate_up: Any, inter: int) -> Any:
    """SiLU(gate) * up for gate_up [rows, 2 * inter] (gate first): [rows, inter]."""
    lib = _required()
    bf16 = _activations(gate_up, "gate_up")
    rows, width = gate_up.shape
    if width != 2 * inter:
        raise ValueError(f"gate_up has {width} columns, not 2 x {inter}")
    out = torch.empty(rows, inter, dtype=gate_up.dtype)
    lib.gptstore_silu_mul(gate_up.data_ptr(), rows, gate_up.stride(0), inter,
                          out.data_ptr(), int(bf16), torch.get_num_threads() if rows >= 8 else 1)
    return out


#: the products' kernels `LlamaDecodeStep` runs (decode_step.c's enum)
DECODE_STEP_KERNELS = {"native": 0, "native-avx512": 1, "q4": 2}
#: a layer's LoRA sites in decode_step.c's order, the most target modules one site
#: stacks (q, k, v), and the most rows of x A^T one site may have (all of them summed)
LORA_SITES = ("qkv", "o", "gate_up", "down")
LORA_MAX_BLOCKS = 3
LORA_MAX_RANKS = 768
_LORA_SITE_FIELDS = 4 + 5 * LORA_MAX_BLOCKS


class LoraTable:
    """One LoRA adapter's sites as `LlamaDecodeStep` takes them (decode_step.c's site
    records): built once per adapter and runner, keeping the tensors it points at."""

    def __init__(self, sites: dict[tuple[int, str], Any], n_layers: int, dtype: Any) -> None:
        """`sites`: models/lora.py `LoraAdapter.sites`. Raises ValueError for what the
        native step cannot take (a site outside the layers' four, more stacked modules
        or ranks than it holds, tensors of another dtype); the runner then keeps the
        step of separate calls for that adapter."""
        fields = [0] * (n_layers * len(LORA_SITES) * _LORA_SITE_FIELDS)
        kept: list[Any] = []
        for (layer, name), site in sites.items():
            if layer == -1 and name == "lm_head":
                continue  # the head's: the runner adds it after the layers
            if name not in LORA_SITES or not 0 <= layer < n_layers:
                raise ValueError(f"LoRA site {name!r} of layer {layer} is not one of a "
                                 "decode step's")
            tensors = [site.A, *(block.B for block in site.blocks)]
            if site.bias is not None:
                tensors.append(site.bias)
            if len(site.blocks) > LORA_MAX_BLOCKS or site.A.shape[0] > LORA_MAX_RANKS or \
                    any(t.dtype != dtype or not t.is_contiguous() for t in tensors):
                raise ValueError(f"LoRA site {name!r} of layer {layer} does not fit the "
                                 f"native step (at most {LORA_MAX_BLOCKS} modules, "
                                 f"{LORA_MAX_RANKS} ranks, contiguous {dtype})")
            at = (layer * len(LORA_SITES) + LORA_SITES.index(name)) * _LORA_SITE_FIELDS
            record = [site.A.data_ptr(), site.A.shape[0], len(site.blocks),
                      0 if site.bias is None else site.bias.data_ptr()]
            for block in site.blocks:
                width, rank = block.B.shape
                record += [block.offset, width, block.r0, rank, block.B.data_ptr()]
            fields[at:at + len(record)] = record
            kept += tensors
        self.kept = kept  # the addresses stay valid
        self.table = (ctypes.c_int64 * len(fields))(*fields)
        self.n_layers, self.dtype = n_layers, dtype


class LlamaDecodeStep:
    """A Llama layer stack's decode step (rows decoding one token each) in one native call
    (decode_step.c):
    per layer the kernels the separate calls would run (`rms_norm`, `gemv` or `gemv_q4`,
    `DecodeAttention` writing and rotating, `silu_mul`), in the same order on the same
    kind of buffers, so it gives their bits without their ~8 Python calls a layer.

    Built once per runner from each layer's weights, which it keeps alive: per layer
    (norm1, qkv, qkv_bias, o, o_bias, norm2, gate_up, gate_up_bias, down, down_bias), the
    products packed for `kernel` ("native" or "native-avx512": `pack`; "q4": `pack_q4`),
    biases None or of the activations' dtype, norms [dim]. `rows_loop`: as for `gemv`."""

    def __init__(self, layers: Sequence[Sequence[Any]], kernel: str, *, dim: int,
                 n_heads: int, n_kv: int, head_dim: int, inter: int, eps: float,
                 scale: float, dtype: Any, rows_loop: str = ROWS_DOT) -> None:
        self.function = _required().gptstore_llama_decode
        self.rows_loop = rows_loop_code(rows_loop)
        if kernel not in DECODE_STEP_KERNELS:
            raise ValueError(f"unknown decode step kernel {kernel!r} (known: "
                             f"{', '.join(DECODE_STEP_KERNELS)})")
        if dtype not in (torch.float32, torch.bfloat16) or (kernel == "q4"
                                                             and dtype != torch.bfloat16):
            raise ValueError(f"activations of {dtype} cannot run on the {kernel} kernel")
        if not attention_fits(head_dim) or n_heads % n_kv:
            raise ValueError(f"the native attention cannot take head_dim {head_dim} with "
                             f"{n_heads} query and {n_kv} kv heads")
        qkv_width = (n_heads + 2 * n_kv) * head_dim
        shapes = ((dim, qkv_width), (n_heads * head_dim, dim), (dim, 2 * inter), (inter, dim))
        addresses: list[int] = []
        for i, layer in enumerate(layers):
            norm1, qkv, qkv_bias, o, o_bias, norm2, gate_up, gate_up_bias, down, down_bias = layer
            for norm in (norm1, norm2):
                if norm.shape != (dim,) or norm.dtype != dtype or not norm.is_contiguous():
                    raise ValueError(f"layer {i}: a norm weight is not a contiguous [{dim}] "
                                     f"tensor of {dtype}")
            for (n_in, n_out), weights, bias in zip(shapes, (qkv, o, gate_up, down),
                                                    (qkv_bias, o_bias, gate_up_bias, down_bias),
                                                    strict=True):
                blocks = -(-n_out // BLOCK_ROWS)
                expected = blocks * (n_in // Q4_GROUP) * (BLOCK_ROWS * Q4_GROUP // 2
                                                          + 4 * BLOCK_ROWS) \
                    if kernel == "q4" else blocks * BLOCK_ROWS * n_in
                if weights.numel() != expected or not weights.is_contiguous():
                    raise ValueError(f"layer {i}: a {n_in} -> {n_out} product's weights are "
                                     f"not packed for the {kernel} kernel")
                if bias is not None and (bias.shape != (n_out,) or bias.dtype != dtype
                                         or not bias.is_contiguous()):
                    raise ValueError(f"layer {i}: a bias is not a contiguous [{n_out}] "
                                     f"tensor of {dtype}")
            addresses.extend(0 if t is None else t.data_ptr() for t in layer)
        self.kept = [list(layer) for layer in layers]  # the addresses stay valid
        self.table = (ctypes.c_int64 * len(addresses))(*addresses)
        self.n_layers, self.kernel = len(layers), DECODE_STEP_KERNELS[kernel]
        self.dim, self.n_heads, self.n_kv, self.head_dim = dim, n_heads, n_kv, head_dim
        self.inter, self.eps, self.scale, self.dtype = inter, eps, scale, dtype

    def __call__(self, x: Any, k_cache: Any, v_cache: Any, attention: DecodeAttention,
                 rotary: tuple[Any, Any],
                 lora: Sequence[LoraTable | None] | None = None) -> None:
        """Run the layers on x ([rows, dim], contiguous, the embeddings), in place: x
        ends as the last layer's output. The caches are the runner's [layers, slots,
        kv_heads, cap, head_dim]; `attention` holds the rows' slots and lengths
        (prepared for this step); `rotary` the cos and sign-folded sin tables; `lora`
        each row's adapter (None for a row without one), if any row has one."""
        rows_lora = None
        if lora is not None:
            if len(lora) != x.shape[0] or any(
                    t is not None and (t.n_layers != self.n_layers or t.dtype != self.dtype)
                    for t in lora):
                raise ValueError("one LoRA table (or None) per row, built for these layers "
                                 "and this dtype")
            rows_lora = (ctypes.c_int64 * len(lora))(
                *(0 if t is None else ctypes.addressof(t.table) for t in lora))
        rows = x.shape[0]
        if x.shape != (rows, self.dim) or x.dtype != self.dtype or not x.is_contiguous() \
                or rows < 1 or attention.rows != rows:
            raise ValueError(f"x must be a contiguous [rows, {self.dim}] tensor of "
                             f"{self.dtype}, one row per prepared attention row")
        layers, slots, n_kv, cap, head_dim = k_cache.shape
        if layers != self.n_layers or n_kv != self.n_kv or head_dim != self.head_dim \
                or v_cache.shape != k_cache.shape or k_cache.dtype != self.dtype \
                or v_cache.dtype != self.dtype or not k_cache.is_contiguous() \
                or not v_cache.is_contiguous() or attention.slot_end > slots \
                or attention.longest > cap or attention.one_slot:
            raise ValueError("the caches do not match the layers or the prepared attention")
        for table in rotary:
            if table.dtype != self.dtype or not table.is_contiguous() \
                    or table.shape[1:] != (head_dim,) or table.shape[0] < attention.longest:
                raise ValueError(f"the rotary tables must be contiguous [>= "
                                 f"{attention.longest}, {head_dim}] tensors of {self.dtype}")
        status = self.function(x.data_ptr(), rows, self.dim, self.n_layers, self.table,
                               self.kernel, self.n_heads, self.n_kv, self.head_dim, self.inter,
                               self.eps, k_cache.data_ptr(), v_cache.data_ptr(), slots, cap,
                               attention.slot0, attention.row_slots, attention.counts,
                               self.scale,
                               rotary[0].data_ptr(), rotary[1].data_ptr(),
                               rows_lora,
                               int(self.dtype == torch.bfloat16), torch.get_num_threads(),
                               self.rows_loop)
        if status == -3:
            raise ValueError("the native GEMV's AVX-512 path needs a CPU with AVX-512")
        if status != 0:
            raise MemoryError("the native decode step could not allocate its scratch memory")


#: the most candidates `refine_top` recomputes per row (logits.c's MAX_K)
REFINE_MAX_K = 64


def refine_top(logits: Any, hidden: Any, weight: Any, k: int) -> Any:
    """fp32 logits [rows, vocab] from bf16 `logits`, each row's k largest recomputed as
    fp32 products of `hidden` [rows, dim] and their rows of `weight` [vocab, dim] (both
    bf16 or fp32, unit stride along dim)."""
    lib = _required()
    if logits.dim() != 2 or logits.dtype != torch.bfloat16 or logits.stride(-1) != 1:
        raise ValueError("logits must be [rows, vocab] bf16 with unit stride along vocab")
    rows, vocab = logits.shape
    hidden_bf16 = _activations(hidden, "hidden")
    weight_bf16 = _activations(weight, "weight")
    dim = hidden.shape[1]
    if hidden.shape[0] != rows or weight.shape != (vocab, dim):
        raise ValueError(f"hidden must be [{rows}, dim] and weight [{vocab}, dim]")
    if not 1 <= k <= min(REFINE_MAX_K, vocab):
        raise ValueError(f"k must be in [1, {min(REFINE_MAX_K, vocab)}], got {k}")
    out = torch.empty(rows, vocab, dtype=torch.float32)
    lib.gptstore_refine_top(logits.data_ptr(), rows, vocab, logits.stride(0),
                            hidden.data_ptr(), dim, hidden.stride(0), int(hidden_bf16),
                            weight.data_ptr(), weight.stride(0), int(weight_bf16),
                            out.data_ptr(), k, torch.get_num_threads() if rows >= 4 else 1)
    return out
