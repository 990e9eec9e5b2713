"""gptstore's own decode kernels (native.py): the bf16 GEMV's products and the decode
attention's outputs against PyTorch, the runners on them, and what happens where they
cannot be built."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gptstore.inference import native
from gptstore.inference.models import RowInput, build_runner
from gptstore.inference.models.base import Linear
from gptstore.inference.types import GEMV_ROWS_ALL

PROMPTS = [[5, 6, 7, 8, 9, 10, 11, 12, 13], [40, 41], [100, 101, 102]]


@pytest.fixture
def kernel():  # type: ignore[no-untyped-def]
    """The built kernel. This project's machines are x86-64 with AVX2 and gcc: a kernel
    that fails to build there is a failure, not a skip."""
    from gptstore.inference.cpu import cpu_flag_set

    if not {"avx2", "fma"} <= cpu_flag_set():
        pytest.skip("the native GEMV needs AVX2 and FMA")
    assert native.library() is not None, native.unavailable_reason()
    return native.library()


@pytest.fixture
def unbuilt(monkeypatch, tmp_path):  # type: ignore[no-untyped-def]
    """No kernel loaded in this process yet, and an empty build cache."""
    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(native.tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()


@pytest.mark.parametrize("n_out", [13, 64, 1000])
@pytest.mark.parametrize("rows", [1, 2])
def test_products_equal_fp32_arithmetic_on_the_bf16_weights(kernel, n_out, rows):
    """fp32 activations: the exact product of x with the bf16-rounded weights, plus bias
    and residual (n_out 13 and 1000: a last block of 5 rows and of 0)."""
    generator = torch.Generator().manual_seed(n_out + rows)
    n_in = 96
    weight = torch.randn(n_out, n_in, generator=generator)
    # x as the runner passes it: the first half of RMSNorm's [x, -x] (a row stride of 2 in)
    x = torch.randn(rows, 2 * n_in, generator=generator)[:, :n_in]
    bias, residual = torch.randn(n_out, generator=generator), torch.randn(rows, n_out,
                                                                          generator=generator)
    packed = native.pack(weight)
    assert packed.shape == (-(-n_out // 8), n_in // 16, 8, 16)
    exact = x.double() @ weight.bfloat16().double().t()
    got = native.gemv(x, packed, n_out)
    assert got.dtype == torch.float32 and got.shape == (rows, n_out)
    assert torch.allclose(got.double(), exact, rtol=1e-5, atol=1e-4)
    got = native.gemv(x, packed, n_out, bias, residual)
    assert torch.allclose(got.double(), exact + bias.double() + residual.double(),
                          rtol=1e-5, atol=1e-4)


def test_bf16_activations_round_once_to_nearest(kernel):
    generator = torch.Generator().manual_seed(3)
    weight = torch.randn(40, 64, generator=generator)
    x = torch.randn(2, 64, generator=generator).bfloat16()
    bias, residual = torch.randn(40).bfloat16(), torch.randn(2, 40).bfloat16()
    got = native.gemv(x, native.pack(weight), 40, bias, residual)
    exact = (x.double() @ weight.bfloat16().double().t() + bias.double() + residual.double())
    assert got.dtype == torch.bfloat16
    # one rounding of the fp32 sum: within half a bf16 step (2^-8 relative) plus the
    # summation order's fp32 error
    assert ((got.double() - exact).abs() <= exact.abs() * 2**-8 + 1e-5).all()
    # a NaN stays a NaN
    x[0, 3] = float("nan")
    assert native.gemv(x, native.pack(weight), 40)[0].isnan().all()


@pytest.fixture
def avx512(kernel):  # type: ignore[no-untyped-def]
    """The GEMV's AVX-512 path, where this machine's CPU has AVX-512."""
    if not native.gemv_avx512_supported():
        pytest.skip("this CPU has no AVX-512: the GEMV runs its AVX2 path only")
    return kernel


@pytest.mark.parametrize("act", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 2])
@pytest.mark.parametrize("n_out", [13, 64, 1000])
def test_the_avx512_path_gives_the_avx2_paths_bits(avx512, n_out, rows, act):
    """Each 256-bit half of the AVX-512 loop does the AVX2 loop's arithmetic for its
    row in the same order: equal outputs, bias and residual included (n_out 13: a last
    block of 5 rows, so a pair with one row past the end)."""
    generator = torch.Generator().manual_seed(7 * n_out + rows)
    n_in = 4000  # long rows: the prefetch runs past blocks and past the end
    n_in -= n_in % 16
    weight = torch.randn(n_out, n_in, generator=generator)
    x = torch.randn(rows, 2 * n_in, generator=generator)[:, :n_in].to(act)
    bias = torch.randn(n_out, generator=generator).to(act)
    residual = torch.randn(rows, n_out, generator=generator).to(act)
    packed = native.pack(weight)
    for extra in ((), (bias, residual)):
        narrow = native.gemv(x, packed, n_out, *extra)
        wide = native.gemv(x, packed, n_out, *extra, avx512=True)
        assert wide.dtype == act and torch.equal(wide, narrow)


def test_a_linear_on_the_avx512_kernel_matches_the_avx2_one(avx512):
    weight, bias = torch.randn(48, 32), torch.randn(48)
    linears = {gemv: Linear.of(weight, bias, decode_dtype=torch.bfloat16, gemv=gemv)
               for gemv in ("native", "native-avx512")}
    assert linears["native-avx512"].native_avx512 and not linears["native"].native_avx512
    for rows in (1, 2):
        x = torch.randn(rows, 32)
        assert torch.equal(linears["native"](x), linears["native-avx512"](x))


def test_inputs_it_cannot_take_are_refused_by_name(kernel):
    with pytest.raises(ValueError, match="divisible by 16"):
        native.pack(torch.randn(8, 40))
    packed = native.pack(torch.randn(8, 32))
    with pytest.raises(ValueError, match="fp32 or bf16"):
        native.gemv(torch.randn(1, 32).half(), packed, 8)
    with pytest.raises(ValueError, match="residual"):
        native.gemv(torch.randn(1, 32), packed, 8, residual=torch.randn(1, 8).bfloat16())


@pytest.mark.parametrize("rows_loop", ["bf16-dot", "fma"])
@pytest.mark.parametrize("wide", [False, True], ids=["avx2", "avx512"])
@pytest.mark.parametrize("act", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("rows", "n_out"), [(16, 40), (5, 13), (7, 13), (6, 24), (9, 100)])
def test_many_rows_give_each_rows_own_bits(kernel, act, rows, n_out, wide, rows_loop):
    """A decode step of several rows (`MachineProfile.gemv_rows`) gives each row the bits
    of that row alone, though the AVX2 loop takes rows two at a time, and on an AVX-512
    CPU the bf16 dot products (bf16 rows from either entry, on a CPU with avx512_bf16)
    and the FMA loop (`rows_loop="fma"`, fp32 rows, a CPU without the dot product) four (5
    rows: two pairs and one alone, or four and one; 7 and 6: four and three, four and
    two; 13 outputs: a last weight block of 5 rows; 9 rows of 100: three passes over
    each of 13 blocks, the first bringing in the block two ahead)."""
    if wide and not native.gemv_avx512_supported():
        pytest.skip("this CPU has no AVX-512: the GEMV runs its AVX2 path only")
    generator = torch.Generator().manual_seed(11)
    weight = torch.randn(n_out, 64, generator=generator)
    # rows strided as the runner passes them (RMSNorm's [x, -x])
    x = torch.randn(rows, 128, generator=generator)[:, :64].to(act)
    bias = torch.randn(n_out, generator=generator).to(act)
    residual = torch.randn(rows, n_out, generator=generator).to(act)
    packed = native.pack(weight)
    together = native.gemv(x, packed, n_out, bias, residual, avx512=wide, rows_loop=rows_loop)
    alone = torch.cat([native.gemv(x[i:i + 1], packed, n_out, bias, residual[i:i + 1],
                                   avx512=wide) for i in range(rows)])
    assert torch.equal(together, alone)
    # and the bits of the AVX2 path, one row at a time
    narrow = torch.cat([native.gemv(x[i:i + 1], packed, n_out, bias, residual[i:i + 1])
                        for i in range(rows)])
    assert torch.equal(together, narrow)


@pytest.mark.parametrize("wide", [False, True], ids=["avx2", "avx512"])
@pytest.mark.parametrize(("rows", "n_in", "n_out"),
                         [(4, 64, 40), (16, 64, 13), (17, 96, 100), (40, 1536, 48)])
def test_rows_on_amx_tiles_match_the_other_loops_and_ignore_their_neighbours(
        kernel, rows, n_in, n_out, wide):
    """`rows_loop="amx"`: bf16 rows from 4 on AMX tiles (groups of 16 rows, weight blocks
    three at a time; 17 and 40 rows: a last group part empty; 13 and 100 outputs: a
    last block of 5 rows, blocks left over after the threes). The tile unit adds in its
    own order, so a value may differ from the FMA loop's in the last place (both are
    within half a bf16 step of the exact sum, plus the fp32 sums' error), but a row's
    bits are its own: the same with other rows beside it, at another place in its
    group. Fewer rows, and fp32 rows, take the FMA loop (its bits)."""
    if not native.amx_supported():
        pytest.skip("no AMX here (CPU, compiler or kernel)")
    if wide and not native.gemv_avx512_supported():
        pytest.skip("this CPU has no AVX-512")
    generator = torch.Generator().manual_seed(13)
    weight = torch.randn(n_out, n_in, generator=generator) / n_in ** 0.5
    x = torch.randn(rows, 2 * n_in, generator=generator)[:, :n_in].bfloat16()  # strided
    bias = torch.randn(n_out, generator=generator).bfloat16()
    residual = torch.randn(rows, n_out, generator=generator).bfloat16()
    packed = native.pack(weight)

    def gemv(x: torch.Tensor, residual: torch.Tensor, loop: str) -> torch.Tensor:
        return native.gemv(x, packed, n_out, bias, residual, avx512=wide, rows_loop=loop)

    tiles, fma = gemv(x, residual, "amx"), gemv(x, residual, "fma")
    w64 = weight.bfloat16().double()
    exact = x.double() @ w64.t() + bias.double() + residual.double()
    # half a bf16 step of the result, and fp32's rounding over every term added
    bound = exact.abs() * 2.0 ** -8 + (n_in + 2) * 2.0 ** -24 * (
        x.double().abs() @ w64.abs().t() + bias.double().abs() + residual.double().abs())
    for out in (tiles, fma):
        assert ((out.double() - exact).abs() <= bound).all()
    assert not torch.equal(tiles, torch.zeros_like(tiles))
    # each row's bits whatever rows are beside it, wherever it sits in its group
    flipped = gemv(x.flip(0), residual.flip(0), "amx").flip(0)
    assert torch.equal(flipped, tiles)
    others = torch.randn(rows, n_in, generator=generator).bfloat16()
    others[0] = x[0]
    assert torch.equal(gemv(others, residual, "amx")[0], tiles[0])
    # fewer rows than AMX takes, and fp32 rows: the FMA loop
    assert torch.equal(gemv(x[:3], residual[:3], "amx"), gemv(x[:3], residual[:3], "fma"))
    x32, r32 = x.float(), residual.float()
    assert torch.equal(native.gemv(x32, packed, n_out, bias.float(), r32, avx512=wide,
                                   rows_loop="amx"),
                       native.gemv(x32, packed, n_out, bias.float(), r32, avx512=wide,
                                   rows_loop="fma"))


def test_an_unknown_rows_loop_is_refused_by_name(kernel):
    with pytest.raises(ValueError, match="unknown rows loop 'avx-1024'"):
        native.gemv(torch.randn(4, 32), native.pack(torch.randn(8, 32)), 8,
                    rows_loop="avx-1024")


def test_a_linear_serves_as_many_rows_natively_as_it_is_told(kernel):
    """`gemv_rows`: steps of up to that many rows run on the bf16 copy in the native
    kernel (logits refined, as for 1-2 rows: `decodes_low`), more on the fp32 weights."""
    weight, bias = torch.randn(48, 32), torch.randn(48)
    linear = Linear.of(weight, bias, decode_dtype=torch.bfloat16, gemv="native", gemv_rows=8)
    assert linear.decodes_low(8) and not linear.decodes_low(9)
    x = torch.randn(9, 32)
    assert torch.allclose(linear(x[:8]), x[:8] @ weight.bfloat16().float().t() + bias,
                          atol=1e-4)
    assert torch.allclose(linear(x), x @ weight.t() + bias, atol=1e-5)  # fp32 weights
    assert not torch.allclose(linear(x)[:8], linear(x[:8]), atol=1e-6)  # not the copy


def test_a_linear_on_the_native_kernel_serves_one_and_two_rows_and_batches_as_before(kernel):
    weight, bias = torch.randn(48, 32), torch.randn(48)
    linear = Linear.of(weight, bias, decode_dtype=torch.bfloat16, gemv="native")
    assert linear.decode_native is not None and linear.decode_weight_t is None
    assert linear.extra_nbytes == 48 * 32 * 2  # the packed bf16 copy, nothing twice
    assert linear.decodes_low(2) and not linear.decodes_low(3)
    for rows in (1, 2):
        x = torch.randn(rows, 32)
        expected = x @ weight.bfloat16().float().t() + bias
        assert torch.allclose(linear(x), expected, atol=1e-4)
    x = torch.randn(3, 32)
    assert torch.allclose(linear(x), x @ weight.t() + bias, atol=1e-5)  # fp32 weights


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_runner_single_rows_on_the_native_kernel_match_aten(tiny_dirs, arch, dtype, kernel):
    """An fp32 model's bf16 decode copy, or a bf16 model's own weights, in the native
    kernel: batches unchanged (fp32: within fp32 rounding, as the top layer's 3-row
    products run on the packed copy beside a native copy, on the plain weights beside
    ATen's), single rows within bf16 rounding of ATen's GEMV and the same greedy token."""
    from transformers import AutoModelForCausalLM

    def load():  # type: ignore[no-untyped-def]
        return AutoModelForCausalLM.from_pretrained(tiny_dirs[arch], dtype=dtype).eval()

    decode_dtype = torch.bfloat16 if dtype == torch.float32 else None
    runners = [build_runner(load(), max_slots=4, decode_dtype=decode_dtype, gemv=gemv)
               for gemv in ("aten", "native")]
    assert all(layer.decode_native is not None for layer in runners[1]._linears)
    outputs = []
    for runner in runners:
        slots = [runner.allocate() for _ in PROMPTS]
        batch = runner.forward([RowInput(s, p, 0) for s, p in zip(slots, PROMPTS, strict=True)])
        one = runner.forward([RowInput(slots[0], [7], len(PROMPTS[0]))])
        two = runner.forward([RowInput(slots[1], [8], len(PROMPTS[1])),
                              RowInput(slots[2], [9], len(PROMPTS[2]))])
        outputs.append((batch, one, two))
    (batch_a, one_a, two_a), (batch_b, one_b, two_b) = outputs
    if dtype == torch.float32:
        torch.testing.assert_close(batch_a, batch_b, rtol=1e-5, atol=1e-5)
    else:
        assert torch.equal(batch_a, batch_b)
    for a, b in ((one_a, one_b), (two_a, two_b)):
        assert (a - b).abs().max() < 0.15
        assert torch.equal(a.argmax(-1), b.argmax(-1))


def test_where_it_is_switched_off_engines_keep_atens_gemv(unbuilt, monkeypatch):
    monkeypatch.setenv(native.DISABLE_ENV, "0")
    assert native.library() is None
    assert native.DISABLE_ENV in (native.unavailable_reason() or "")
    from gptstore.inference import precision

    assert "native" not in precision.decode_kernels()
    linear = Linear.of(torch.randn(16, 32), decode_dtype=torch.bfloat16, gemv="native")
    assert linear.decode_native is None and linear.decode_weight_t is not None
    x = torch.randn(1, 32)
    assert linear(x).shape == (1, 16)


def test_a_compiler_that_fails_is_reported_not_raised(unbuilt, monkeypatch, tmp_path):
    from gptstore.inference.cpu import cpu_flag_set

    if not {"avx2", "fma"} <= cpu_flag_set():
        pytest.skip("the CPU check refuses before the compiler runs")
    failing = tmp_path / "broken-cc"
    failing.write_text("#!/bin/sh\necho 'cc1: out of memory' >&2\nexit 1\n")
    failing.chmod(0o755)
    monkeypatch.setenv("CC", str(failing))
    assert native.library() is None
    assert "out of memory" in (native.unavailable_reason() or "")
    # nothing half-built is left where a later process would load it
    assert not list((tmp_path / "cache").rglob("*.so"))


def test_the_build_is_cached_and_reused(unbuilt, monkeypatch, tmp_path, kernel):
    monkeypatch.setattr(native, "_state", {})
    assert native.library() is not None
    built = list((tmp_path / "cache" / "gptstore" / "kernels").glob("gptstore-kernels-*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    monkeypatch.setattr(native, "_state", {})

    def no_compiler(*args, **kwargs):  # type: ignore[no-untyped-def]
        if args and "--version" not in args[0]:
            raise AssertionError("compiled again")
        return real_run(*args, **kwargs)

    real_run = native.subprocess.run
    monkeypatch.setattr(native.subprocess, "run", no_compiler)
    assert native.library() is not None
    assert built[0].stat().st_mtime_ns == stamp


# ------------------------------------------------------------------ decode attention


def _reference_attention(q, k_cache, v_cache, slot0, lengths, scale):  # type: ignore[no-untyped-def]
    """Row by row, in fp64, with transformers' pairing of query and kv heads."""
    _, n_heads, head_dim = q.shape
    n_kv = k_cache.shape[1]
    outs = []
    for r, length in enumerate(lengths):
        keys = k_cache[slot0 + r, :, :length].double().repeat_interleave(n_heads // n_kv, 0)
        values = v_cache[slot0 + r, :, :length].double().repeat_interleave(n_heads // n_kv, 0)
        weights = torch.softmax(q[r].double()[:, None, :] @ keys.transpose(1, 2) * scale, -1)
        outs.append((weights @ values).reshape(n_heads * head_dim))
    return torch.stack(outs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("n_heads", "n_kv", "head_dim"),
                         [(9, 3, 16), (4, 4, 32), (8, 1, 16), (6, 2, 24)])
def test_decode_attention_matches_softmax_attention_and_writes_the_new_keys(
        kernel, dtype, n_heads, n_kv, head_dim):
    """Rows of different lengths (1, a vector's worth, a partial vector, the whole
    capacity) on consecutive slots, q a strided view of a fused projection as the
    runner passes it; the new keys/values land at each row's last position. Groups of
    up to 4 query heads with head_dim a multiple of 16 take the paired loop, the others
    (8 heads a group, head_dim 24) the general one."""
    generator = torch.Generator().manual_seed(n_heads)
    cap, lengths = 40, [1, 8, 13, 40]
    k_cache = torch.randn(6, n_kv, cap, head_dim, generator=generator).to(dtype)
    v_cache = torch.randn(6, n_kv, cap, head_dim, generator=generator).to(dtype)
    fused = torch.randn(4, n_heads + 2 * n_kv, head_dim, generator=generator).to(dtype)
    q, k, v = fused[:, :n_heads], fused[:, n_heads:n_heads + n_kv], fused[:, n_heads + n_kv:]
    expected_k, expected_v = k_cache.clone(), v_cache.clone()
    for r, length in enumerate(lengths):
        expected_k[1 + r, :, length - 1] = k[r]
        expected_v[1 + r, :, length - 1] = v[r]
    attention = native.DecodeAttention(1, lengths, n_heads, n_kv, head_dim)
    out = attention(q, k_cache, v_cache, 0.25, k, v)
    assert torch.equal(k_cache, expected_k) and torch.equal(v_cache, expected_v)
    assert out.dtype == dtype and out.shape == (4, n_heads * head_dim)
    exact = _reference_attention(q, k_cache, v_cache, 1, lengths, 0.25)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2
    assert (out.double() - exact).abs().max() < tolerance
    # the same with the keys already written (a step that also prefills a prompt)
    assert torch.equal(native.decode_attention(q, k_cache, v_cache, 1, lengths, 0.25), out)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [16, 24])  # halves of whole vectors, and not
def test_decode_attention_rotates_q_and_the_new_keys_as_the_runner_does(kernel, dtype,
                                                                         head_dim):
    """With the rotary tables, unrotated q and keys in: the keys written are bit for bit
    what the runner's PyTorch rotary gives at each row's position, and the output is
    the attention of the PyTorch-rotated q."""
    generator = torch.Generator().manual_seed(7)
    n_heads, n_kv, cap, lengths = 6, 2, 24, [3, 17]
    half = head_dim // 2
    angles = torch.arange(cap)[:, None] * (1e4 ** (-torch.arange(half) / half))[None]
    cos = torch.cat([angles.cos(), angles.cos()], -1).to(dtype)
    sin = angles.sin()
    sin_signed = torch.cat([-sin, sin], -1).to(dtype)
    k_cache = torch.randn(2, n_kv, cap, head_dim, generator=generator).to(dtype)
    v_cache = torch.randn(2, n_kv, cap, head_dim, generator=generator).to(dtype)
    fused = torch.randn(2, n_heads + 2 * n_kv, head_dim, generator=generator).to(dtype)
    qk, v = fused[:, :n_heads + n_kv], fused[:, n_heads + n_kv:]
    positions = torch.tensor(lengths) - 1
    at_cos, at_sin = cos[positions][:, None], sin_signed[positions][:, None]
    swapped = qk.unflatten(-1, (2, half)).flip(-2).flatten(-2)
    rotated = torch.addcmul(qk * at_cos, swapped, at_sin)  # the runner's PyTorch path
    expected_k, expected_v = k_cache.clone(), v_cache.clone()
    attention = native.DecodeAttention(0, lengths, n_heads, n_kv, head_dim)
    expected = attention(rotated[:, :n_heads], expected_k, expected_v, 0.25,
                         rotated[:, n_heads:], v)
    out = attention(qk[:, :n_heads], k_cache, v_cache, 0.25, qk[:, n_heads:], v,
                    (cos, sin_signed))
    assert torch.equal(k_cache, expected_k) and torch.equal(v_cache, expected_v)
    assert torch.equal(out, expected)
    with pytest.raises(ValueError, match="rotary tables"):
        attention(qk[:, :n_heads], k_cache, v_cache, 0.25, qk[:, n_heads:], v,
                  (cos[:10], sin_signed[:10]))
    with pytest.raises(ValueError, match="rotary needs k_new"):
        attention(qk[:, :n_heads], k_cache, v_cache, 0.25, rotary=(cos, sin_signed))


def test_decode_attention_refuses_what_it_cannot_take(kernel):
    with pytest.raises(ValueError, match="head_dim 12"):
        native.DecodeAttention(0, [3], 4, 2, 12)
    with pytest.raises(ValueError, match="at least one"):
        native.DecodeAttention(0, [3, 0], 4, 2, 16)
    attention = native.DecodeAttention(0, [5, 9], 4, 2, 16)
    q = torch.randn(2, 4, 16)
    short = torch.zeros(2, 2, 8, 16)  # 8 positions: the second row needs 9
    with pytest.raises(ValueError, match="do not match"):
        attention(q, short, short.clone(), 0.25)
    cache = torch.zeros(2, 2, 16, 16)
    with pytest.raises(ValueError, match="fp32 or all bf16"):
        attention(q, cache.bfloat16(), cache.bfloat16(), 0.25)
    with pytest.raises(ValueError, match="k_new"):
        attention(q, cache, cache.clone(), 0.25, torch.randn(2, 2, 8), torch.randn(2, 2, 8))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_runner_decodes_the_same_tokens_with_the_native_attention(tiny_dirs, arch, kernel):
    """Greedy decoding of three rows of different lengths, a long prompt's chunks
    arriving meanwhile (steps that mix prefill and decode rows: the cache written
    first, then the kernel), and a row leaving (slots compacted): the same tokens and
    logits within fp32 rounding as with SDPA."""
    from transformers import AutoModelForCausalLM

    def run(attention: str) -> tuple[list[list[int]], list[torch.Tensor]]:
        model = AutoModelForCausalLM.from_pretrained(tiny_dirs[arch], dtype=torch.float32)
        runner = build_runner(model.eval(), max_slots=4, attention=attention)
        assert runner.native_attention == (attention == "native")
        slots = [runner.allocate() for _ in PROMPTS]
        logits = runner.forward([RowInput(s, p, 0) for s, p in zip(slots, PROMPTS, strict=True)])
        tokens = [[int(t)] for t in logits.argmax(-1)]
        lengths = [len(p) for p in PROMPTS]
        seen = [logits]
        late, late_prompt = runner.allocate(), list(range(60, 90))
        for step in range(12):
            if step == 6:  # the second row finishes; the last slot moves into its place
                runner.release(slots[1])
                slots, tokens_live = [slots[0], slots[2]], [0, 2]
            else:
                tokens_live = [0, 1, 2] if step < 6 else [0, 2]
            rows = [RowInput(slots[i], [tokens[k][-1]], lengths[k])
                    for i, k in enumerate(tokens_live)]
            if step in (2, 3):  # a long prompt, 15 tokens a step, beside the decode rows
                start = 15 * (step - 2)
                rows.append(RowInput(late, late_prompt[start:start + 15], start,
                                     want_logits=step == 3))
            out = runner.forward(rows)
            seen.append(out)
            for i, k in enumerate(tokens_live):
                tokens[k].append(int(out[i].argmax()))
                lengths[k] += 1
        return tokens, seen

    (tokens_a, logits_a), (tokens_b, logits_b) = run("sdpa"), run("native")
    assert tokens_a == tokens_b
    for a, b in zip(logits_a, logits_b, strict=True):
        assert (a - b).abs().max() < 1e-4


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_few_tokens_after_a_cached_prefix_attend_on_the_native_kernel(tiny_dirs, arch,
                                                                         dtype, kernel):
    """A scored continuation of 2 to `CHUNK_NATIVE_ROWS` tokens after 23 cached
    positions, beside a decode row of another slot: each token a decode row of its
    slot on the native kernel (its neighbours' keys written first), every position's
    logits as with SDPA's masked attention; one token more stays on SDPA."""
    from transformers import AutoModelForCausalLM

    from gptstore.inference.models.base import CHUNK_NATIVE_ROWS

    prefix, other = list(range(10, 33)), [5, 6, 7, 8]

    def run(attention: str, n: int) -> tuple[torch.Tensor, list[bool]]:
        model = AutoModelForCausalLM.from_pretrained(tiny_dirs[arch], dtype=dtype)
        runner = build_runner(model.eval(), max_slots=4, attention=attention)
        a, b = runner.allocate(), runner.allocate()
        runner.forward([RowInput(a, prefix, 0), RowInput(b, other, 0)])
        rows = [RowInput(b, [9], len(other)),
                RowInput(a, list(range(40, 40 + n)), len(prefix), all_logits=True)]
        kinds = [g.native is not None and not g.decode for g in runner.plan(rows).groups]
        return runner.forward(rows), kinds

    tolerance = 1e-4 if dtype == torch.float32 else 0.05
    for n in (2, 5, CHUNK_NATIVE_ROWS, CHUNK_NATIVE_ROWS + 1):
        (expected, _), (got, kinds) = run("sdpa", n), run("native", n)
        assert kinds == [False, n <= CHUNK_NATIVE_ROWS]
        assert got.shape == expected.shape == (1 + n, expected.shape[-1])
        assert (got - expected).abs().max() < tolerance * max(1.0, expected.abs().max())
        assert torch.equal(got.argmax(-1), expected.argmax(-1))


def test_bf16_llama_steps_on_the_native_kernels_follow_pytorchs(tiny_dirs, kernel):
    """A bf16 Llama decoding 16 rows a step with the native attention (which then also
    rotates q and k, and runs RMSNorm and SwiGLU natively) against SDPA with PyTorch's
    rotary and norms, the same tokens fed to both: the logits agree within bf16
    rounding at every step. A wrong rotation or position would move them by whole
    units."""
    from transformers import AutoModelForCausalLM

    generator = torch.Generator().manual_seed(5)
    prompts = [torch.randint(3, 60, (int(n),), generator=generator).tolist()
               for n in torch.randint(2, 12, (16,), generator=generator)]
    fed = torch.randint(3, 60, (6, 16), generator=generator).tolist()

    def run(attention: str) -> list[torch.Tensor]:
        model = AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"], dtype=torch.bfloat16)
        runner = build_runner(model.eval(), max_slots=16, attention=attention)
        slots = [runner.allocate() for _ in prompts]
        seen = [runner.forward([RowInput(s, p, 0) for s, p in zip(slots, prompts,
                                                                    strict=True)])]
        lengths = [len(p) for p in prompts]
        for tokens in fed:
            seen.append(runner.forward([RowInput(s, [t], n) for s, t, n in
                                        zip(slots, tokens, lengths, strict=True)]))
            lengths = [n + 1 for n in lengths]
        return seen

    for a, b in zip(run("sdpa"), run("native"), strict=True):
        assert (a - b).abs().max() < 0.05 * a.abs().max() + 0.05


#: runner settings whose every product runs on one native kernel: fp32 weights with the
#: bf16 decode copy, bf16 weights, the same on the AVX-512 path, 4-bit weights
DECODE_STEP_CASES = {
    "fp32": (torch.float32, {"decode_dtype": torch.bfloat16, "gemv": "native"}),
    "fp32-4-rows": (torch.float32, {"decode_dtype": torch.bfloat16, "gemv": "native",
                                    "gemv_rows": 4}),
    "bf16": (torch.bfloat16, {"gemv": "native"}),
    "bf16-avx512": (torch.bfloat16, {"gemv": "native-avx512"}),
    "bf16-avx512-fma-4-rows": (torch.bfloat16, {"gemv": "native-avx512", "gemv_rows": 4,
                                                "rows_loop": "fma"}),
    "bf16-avx512-amx-4-rows": (torch.bfloat16, {"gemv": "native-avx512", "gemv_rows": 4,
                                                "rows_loop": "amx"}),
    "int4": (torch.bfloat16, {"quantize": "int4", "int4_gemv": "native"}),
}


@pytest.mark.parametrize("case", DECODE_STEP_CASES)
@pytest.mark.parametrize("bias", [False, True])
def test_a_decode_step_in_one_call_gives_the_separate_calls_bits(kernel, tmp_path, case, bias):
    """Two rows decoding (one of them alone every third step; four where the GEMV
    serves four) on the native kernels: the layers in one call
    (`native.LlamaDecodeStep`) and in the runner's separate calls give equal logits and
    caches at every step, biases (Qwen2's q/k/v) included."""
    from transformers import AutoModelForCausalLM

    from gptstore.testing.tiny import make_tiny_model

    dtype, settings = DECODE_STEP_CASES[case]
    rows = settings.get("gemv_rows", 2)  # the most rows a step of the one call has
    if settings.get("gemv") == "native-avx512" and not native.gemv_avx512_supported():
        pytest.skip("this CPU has no AVX-512: the GEMV runs its AVX2 path only")
    folder = make_tiny_model("llama", tmp_path / "model", seed=3, initializer_range=0.2,
                             attention_bias=bias, mlp_bias=bias)

    def run(one_call: bool) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor, int]:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
        runner = build_runner(model, max_slots=4, attention="native", **settings)
        assert runner.decode_step is not None
        calls = []
        step = runner.decode_step

        def counted(*args):  # type: ignore[no-untyped-def]
            calls.append(args[0].shape[0])
            return step(*args)

        runner.decode_step = counted if one_call else None
        prompts = [[5, 6, 7, 8, 9], [40, 41, 42], [7, 8], [50, 51, 52, 53]][:rows]
        slots = [runner.allocate() for _ in prompts]
        seen = [runner.forward([RowInput(s, p, 0) for s, p in zip(slots, prompts,
                                                                    strict=True)])]
        lengths, last = [len(p) for p in prompts], seen[0].argmax(-1).tolist()
        for n in range(12):
            live = [0] if n % 3 == 0 else list(range(rows))
            out = runner.forward([RowInput(slots[i], [last[i]], lengths[i]) for i in live])
            seen.append(out)
            for j, i in enumerate(live):
                last[i], lengths[i] = int(out[j].argmax()), lengths[i] + 1
        return seen, runner.kv.k, runner.kv.v, len(calls)

    (ours, k_ours, v_ours, calls), (theirs, k_theirs, v_theirs, _) = run(True), run(False)
    assert calls == 12  # every decode step took the one call; the prefill did not
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(k_ours, k_theirs) and torch.equal(v_ours, v_theirs)


#: runner settings whose one call takes 16 rows, by the kernel of their products
MIXED_STEP_CASES = {
    "bf16-amx": (torch.bfloat16, {"gemv": "native-avx512", "gemv_rows": 16,
                                  "rows_loop": "amx"}),
    "bf16-fma": (torch.bfloat16, {"gemv": "native", "gemv_rows": 16, "rows_loop": "fma"}),
    "fp32": (torch.float32, {"decode_dtype": torch.bfloat16, "gemv": "native",
                             "gemv_rows": 16}),
    "int4": (torch.bfloat16, {"quantize": "int4", "int4_gemv": "native-all"}),
    "bf16-2-rows": DECODE_STEP_CASES["bf16"],  # only the scattered 2-row step fits
}


@pytest.mark.parametrize("case", MIXED_STEP_CASES)
def test_decode_rows_and_prompt_chunks_share_the_one_call(kernel, tmp_path, case):
    """Steps that are not one run of decode rows on consecutive slots (decode rows on
    scattered slots, a new prompt's chunks beside them, from position 0 and after its
    first chunk) run in the one native call too (`DecoderRunner.step_attention`), where every
    row's key is written before any row attends: their logits match the separate
    calls' within the rounding of another attention kernel and product order (both fed
    the tokens the one call chose; each choice the other's greedy token or within
    rounding of it), and the caches hold the same keys."""
    from transformers import AutoModelForCausalLM

    from gptstore.testing.tiny import make_tiny_model

    dtype, settings = MIXED_STEP_CASES[case]
    if settings.get("gemv") == "native-avx512" and not native.gemv_avx512_supported():
        pytest.skip("this CPU has no AVX-512: the GEMV runs its AVX2 path only")
    folder = make_tiny_model("llama", tmp_path / "model", seed=3, initializer_range=0.2)

    def run(one_call: bool, fed: list[int] | None = None
            ) -> tuple[list[torch.Tensor], list[int], torch.Tensor, int]:
        chosen: list[int] = []

        def pick(logits: torch.Tensor) -> int:  # this run's greedy token, or the fed one
            token = int(logits.argmax()) if fed is None else fed[len(chosen)]
            chosen.append(token)
            return token

        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
        runner = build_runner(model, max_slots=6, attention="native", **settings)
        assert runner.decode_step is not None
        calls: list[int] = []
        step = runner.decode_step

        def counted(*args):  # type: ignore[no-untyped-def]
            calls.append(args[0].shape[0])
            return step(*args)

        runner.decode_step = counted if one_call else None
        slots = [runner.allocate() for _ in range(6)]
        seen = [runner.forward([RowInput(slots[i], p, 0) for i, p in
                                ((0, [5, 6, 7]), (2, [40, 41]), (4, [7, 8, 9, 10]))])]
        last = {i: pick(seen[0][j]) for j, i in enumerate((0, 2, 4))}
        lengths = {0: 3, 2: 2, 4: 4}
        new_prompt = [11, 12, 13, 14, 15, 16, 17]
        steps = [((0, 2, 4), None), ((0, 4), (0, 4)), ((0, 2, 4), (4, 7)), ((2, 4), None)]
        for live, chunk in steps:
            rows = [RowInput(slots[i], [last[i]], lengths[i]) for i in live]
            if chunk is not None:  # the new prompt on slot 5, in two chunks
                a, b = chunk
                rows.append(RowInput(slots[5], new_prompt[a:b], a, want_logits=b == 7))
            out = runner.forward(rows)
            seen.append(out)
            for j, i in enumerate(live):
                last[i], lengths[i] = pick(out[j]), lengths[i] + 1
        return seen, chosen, runner.kv.k, len(calls)

    ours, tokens, k_ours, calls = run(True)
    theirs, _, k_theirs, _ = run(False, tokens)
    # every step took the one call, the three prompts' first included, where it takes
    # that many rows
    assert calls == (1 if case == "bf16-2-rows" else 5)
    for a, b in zip(ours, theirs, strict=True):
        assert a.shape == b.shape
        tolerance = 0.05 * a.abs().max() + 0.05
        assert (a - b).abs().max() < tolerance
        # the one call's greedy tokens: the separate calls' too, or within its rounding
        picked = b.gather(-1, a.argmax(-1, keepdim=True)).squeeze(-1)
        assert (picked >= b.max(-1).values - 2 * tolerance).all()
    assert (k_ours.float() - k_theirs.float()).abs().max() < \
        0.05 * k_theirs.float().abs().max() + 0.05


@pytest.mark.parametrize("case", ["fp32", "fp32-4-rows", "bf16", "int4"])
@pytest.mark.parametrize("mix", ["one adapter", "mixed"])
def test_a_decode_step_in_one_call_applies_each_rows_adapter(kernel, tmp_path, case, mix):
    """Rows with LoRA adapters keep the one native call, which adds each row's delta
    where models/lora.py would between separate calls: the same logits (within the
    float error of another summation order) on the same tokens, and caches. "mixed":
    rows of two adapters and none, one of them on q and v only (k's columns of the
    fused q/k/v get nothing) with PEFT's LoRA bias; an adapter changes the outputs."""
    from transformers import AutoModelForCausalLM

    from gptstore.inference.lora import LoraBatch, load_lora_adapter
    from gptstore.testing.tiny import make_tiny_adapter, make_tiny_model

    dtype, settings = DECODE_STEP_CASES[case]
    rows = settings.get("gemv_rows", 2)
    folder = make_tiny_model("llama", tmp_path / "model", seed=3, initializer_range=0.2)
    every = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    folders = [make_tiny_adapter(folder, tmp_path / "a", seed=4, r=4, target_modules=every),
               make_tiny_adapter(folder, tmp_path / "b", seed=5, r=8,
                                 target_modules=("q_proj", "v_proj"), lora_bias=True)]

    def run(one_call: bool, tokens: list[list[int]] | None, plain: bool = False
            ) -> tuple[list[torch.Tensor], list[list[int]], torch.Tensor, int]:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
        runner = build_runner(model, max_slots=4, attention="native", **settings)
        a, b = (load_lora_adapter(f, f.name, runner.site_of, dtype) for f in folders)
        adapters = [None] * rows if plain else [a] * rows if mix == "one adapter" \
            else [a, None, b, a][:rows] if rows > 2 else [b, a]
        step, calls = runner.decode_step, []

        def counted(*args):  # type: ignore[no-untyped-def]
            calls.append(args[-1] is not None)
            return step(*args)

        runner.decode_step = counted if one_call else None
        prompts = [[5, 6, 7, 8, 9], [40, 41, 42], [7, 8], [50, 51, 52, 53]][:rows]
        slots = [runner.allocate() for _ in prompts]
        first = runner.forward(
            [RowInput(s, p, 0) for s, p in zip(slots, prompts, strict=True)],
            LoraBatch.build([ad for ad, p in zip(adapters, prompts, strict=True) for _ in p],
                            adapters))
        seen, chosen = [first], [first.argmax(-1).tolist()]
        lengths = [len(p) for p in prompts]
        for n in range(8):
            last = tokens[n] if tokens is not None else chosen[-1]
            out = runner.forward([RowInput(slots[i], [last[i]], lengths[i])
                                  for i in range(rows)], LoraBatch.build(adapters, adapters))
            seen.append(out)
            chosen.append(out.argmax(-1).tolist())
            lengths = [n + 1 for n in lengths]
        return seen, chosen, runner.kv.k, sum(calls)

    theirs, tokens, k_theirs, _ = run(False, None)
    ours, _, k_ours, with_lora = run(True, tokens)
    assert with_lora == 8  # every decode step took the one call, with the adapters
    tolerance = 1e-4 if dtype == torch.float32 else 0.05
    for a, b in zip(ours, theirs, strict=True):
        assert (a - b).abs().max() <= tolerance * (1 + b.abs().max())
    assert (k_ours.float() - k_theirs.float()).abs().max() <= tolerance * (
        1 + k_theirs.float().abs().max())
    plain, _, _, _ = run(True, tokens, plain=True)
    assert (plain[-1] - ours[-1]).abs().max() > 0.1  # the adapters change the outputs


def test_a_decode_step_is_taken_only_where_every_part_is_native(tiny_dirs, kernel):
    """PyTorch's attention or a product on ATen's GEMV leaves the step to the separate
    calls, and weights that are not what the kernel reads are refused by name."""
    from transformers import AutoModelForCausalLM

    def runner(**settings):  # type: ignore[no-untyped-def]
        model = AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"],
                                                     dtype=torch.bfloat16).eval()
        return build_runner(model, max_slots=2, **settings)

    assert runner(attention="sdpa", gemv="native").decode_step is None
    assert runner(attention="native", gemv="aten").decode_step is None
    step = runner(attention="native", gemv="native").decode_step
    assert step is not None
    layers = [list(layer) for layer in step.kept]
    layers[1][3] = layers[1][3][:1]  # layer 1's output product: one block of its four
    with pytest.raises(ValueError, match="layer 1: a 32 -> 32 product's weights are not "
                                         "packed for the native kernel"):
        native.LlamaDecodeStep(layers, "native", dim=32, n_heads=4, n_kv=2, head_dim=8,
                               inter=64, eps=1e-6, scale=0.35, dtype=torch.bfloat16)


def _steps_of_every_size(runner):  # type: ignore[no-untyped-def]
    """Prompts of 1 to 8 tokens in one step, then decode steps of 1 to 8 rows: the
    outputs, the slots and their lengths after."""
    slots = [runner.allocate() for _ in range(8)]
    prompts = [list(range(3 + i, 4 + 2 * i)) for i in range(8)]
    seen = [runner.forward([RowInput(s, p, 0) for s, p in zip(slots, prompts, strict=True)])]
    lengths = [len(p) for p in prompts]
    for rows in range(1, 9):
        seen.append(runner.forward([RowInput(slots[i], [7 + i], lengths[i])
                                    for i in range(rows)]))
        lengths[:rows] = [n + 1 for n in lengths[:rows]]
    return seen, slots, lengths


@pytest.mark.parametrize("gemv_rows", [2, 4])
def test_fused_weights_are_freed_where_the_packed_and_native_copies_serve_every_step(
        tiny_dirs, kernel, monkeypatch, gemv_rows):
    """bf16 Llama with oneDNN-packed batches and native steps of 1 to `gemv_rows` rows:
    the fused q/k/v and gate/up weights the runner made are freed, the model's modules
    keep the checkpoint's own, and steps of every size still run (none reaches the freed
    weights: `Linear` raises if one does) and give the bits of a runner that keeps them.
    Where a product still reads them (ATen's GEMV for 1-2 rows, fp32 weights) they stay;
    4-bit layers never read them, nor PyTorch's 4-bit copy where the native 4-bit kernel
    takes every step."""
    from transformers import AutoModelForCausalLM

    from gptstore.inference.models.base import can_pack

    if not can_pack(torch.bfloat16):
        pytest.skip("oneDNN cannot pack bf16 weights on this CPU: every step may read them")

    def load(dtype=torch.bfloat16):  # type: ignore[no-untyped-def]
        return AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"], dtype=dtype).eval()

    model = load()
    lean = build_runner(model, max_slots=8, gemv="native", gemv_rows=gemv_rows)
    assert not any(layer.qkv.holds_plain or layer.gate_up.holds_plain
                   for layer in lean.layers)
    assert all(layer.o.holds_plain and layer.down.holds_plain for layer in lean.layers)
    assert lean.layers[0].qkv.weight_t.shape == (32, 64)  # q 32 + k 16 + v 16 outputs
    for name, tensor in load().state_dict().items():  # the modules were left alone
        assert torch.equal(model.state_dict()[name], tensor), name

    with monkeypatch.context() as patched:
        patched.setattr(Linear, "drop_plain", lambda self: None)
        full = build_runner(load(), max_slots=8, gemv="native", gemv_rows=gemv_rows)
    assert all(layer.qkv.holds_plain for layer in full.layers)
    assert full.extra_nbytes == lean.extra_nbytes  # the copies beside them are the same

    for a, b in zip(_steps_of_every_size(lean)[0], _steps_of_every_size(full)[0],
                    strict=True):
        assert torch.equal(a, b)

    aten = build_runner(load(), max_slots=2, gemv="aten")
    assert all(layer.qkv.holds_plain for layer in aten.layers)
    fp32 = build_runner(load(torch.float32), max_slots=2, decode_dtype=torch.bfloat16,
                        gemv="aten")  # ATen's GEMV on the bf16 copy: 3-row steps read them
    assert all(layer.qkv.holds_plain for layer in fp32.layers)
    int4 = build_runner(load(), max_slots=2, quantize="int4", int4_gemv="native")
    assert not any(layer.qkv.holds_plain for layer in int4.layers)
    assert all(layer.qkv.qweight is not None for layer in int4.layers)  # 3+ row steps
    every_step = build_runner(load(), max_slots=2, quantize="int4", int4_gemv="native-all")
    assert all(layer.qkv.qweight is None for layer in every_step.layers)  # never read
    assert every_step.extra_nbytes < int4.extra_nbytes


def test_an_fp32_models_bf16_copy_serves_larger_steps_only_where_it_is_exact(kernel):
    """fp32 weights with a bf16 copy on the native kernel and `gemv_rows` past the decode
    steps (a prompt chunk beside 15 decode rows): where every weight is a bf16 value (a
    bf16 checkpoint loaded in fp32) the copy serves those steps, with the fp32 products
    but for the order of the adds; where not, it serves the decode steps alone and the
    larger ones keep the exact fp32 products."""
    from gptstore.inference.types import GEMV_DECODE_ROWS

    generator = torch.Generator().manual_seed(3)
    exact_w = torch.randn(48, 64, generator=generator).to(torch.bfloat16).float()
    lossy_w = torch.randn(48, 64, generator=generator)
    x = torch.randn(40, 64, generator=generator)
    for weight, rows in ((exact_w, 64), (lossy_w, GEMV_DECODE_ROWS)):
        linear = Linear.of(weight, pack=True, decode_dtype=torch.bfloat16, gemv="native",
                           gemv_rows=64)
        assert linear.native_rows == rows
        assert linear.decodes_low(GEMV_DECODE_ROWS) and \
            linear.decodes_low(40) == (weight is exact_w)
        expected = x.double() @ weight.double().T
        assert (linear(x).double() - expected).abs().max() < 1e-4
        if weight is lossy_w:  # past the decode steps: the plain fp32 product's bits
            assert torch.equal(linear(x[:20]), Linear.of(weight, pack=True)(x[:20]))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_where_the_native_kernel_serves_every_step_prompts_run_on_it_alone(
        tiny_dirs, kernel, arch):
    """`gemv_rows` at `GEMV_ROWS_ALL` (bf16 weights, where the machine measured the
    native kernel faster for a prompt chunk too): every product of every step runs on
    it, so no oneDNN copy is made and no projection keeps its plain weights (the head
    keeps them for its refined logits; a product that reached them would raise), and
    prompts read whole, in chunks or beside another prompt, and the decode steps after
    them, give the tokens of the runner that serves prompts on oneDNN (within bf16
    rounding)."""
    from transformers import AutoModelForCausalLM

    def load():  # type: ignore[no-untyped-def]
        return AutoModelForCausalLM.from_pretrained(tiny_dirs[arch],
                                                    dtype=torch.bfloat16).eval()

    every = build_runner(load(), max_slots=4, gemv="native", gemv_rows=GEMV_ROWS_ALL,
                         release_weights=True)
    head = every.default_head().linear
    for linear in every._linears:
        assert linear.packed is None and linear.native_serves_all
        assert linear.holds_plain == (linear is head)
    usual = build_runner(load(), max_slots=4, gemv="native", gemv_rows=2)
    from gptstore.inference.models.base import can_pack

    if can_pack(torch.bfloat16):  # else the usual runner has no oneDNN copy either
        assert every.extra_nbytes < usual.extra_nbytes
    else:
        assert every.extra_nbytes == usual.extra_nbytes

    prompt = [5, 9, 2, 7, 11, 3, 8, 4, 6, 10, 1, 12, 13, 14, 15, 16, 17, 18, 19, 20]
    other = [21, 22, 23, 24, 25, 26, 27, 28]

    def read(runner, chunks, beside=False):  # type: ignore[no-untyped-def]
        slot, at, logits = runner.allocate(), 0, None
        extra = runner.allocate() if beside else None
        for n in chunks:
            rows = [RowInput(slot, prompt[at:at + n], at)]
            if extra is not None:
                rows.append(RowInput(extra, other[:n], 0))
            logits = runner.forward(rows)[:1]
            at += n
        steps = [logits]
        for i in range(3):  # decode steps after it
            steps.append(runner.forward([RowInput(slot, [30 + i], at + i)]))
        runner.release(slot)
        if extra is not None:
            runner.release(extra)
        return steps

    reference = read(usual, [20])
    for chunks, beside in (([20], False), ([20], True), ([7, 7, 6], False), ([12, 8], True)):
        for a, b in zip(reference, read(every, chunks, beside), strict=True):
            assert torch.equal(a.argmax(-1), b.argmax(-1))
            assert torch.allclose(a, b, atol=0.05 * a.abs().max().item() + 0.05)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_an_fp32_model_with_packed_and_native_copies_gives_up_its_plain_weights(
        tiny_dirs, kernel, arch):
    """fp32 weights with a bf16 native decode copy and a packed copy: the packed one
    serves every step the native one does not, exact steps of 1-3 rows included, so a
    runner built to release the model's weights leaves every projection's module
    without storage and keeps no plain copy, and still gives the bits of a runner that
    keeps them (nothing reads what was released): prompts, decode steps of 1 to 8 rows,
    scored prompts of 1 to 3 tokens and a classification-sized exact step. What stays is
    what is read: the embeddings and the LM head (its top candidates' logits are
    recomputed from its fp32 weights)."""
    from transformers import AutoModelForCausalLM

    from gptstore.inference.models.base import can_pack, exact_products
    from gptstore.inference.registry import _model_bytes

    if not can_pack(torch.float32):
        pytest.skip("oneDNN cannot pack fp32 weights here")

    def load():  # type: ignore[no-untyped-def]
        return AutoModelForCausalLM.from_pretrained(tiny_dirs[arch],
                                                    dtype=torch.float32).eval()

    def runner(model, release):  # type: ignore[no-untyped-def]
        return build_runner(model, max_slots=8, decode_dtype=torch.bfloat16, gemv="native",
                            gemv_rows=4, release_weights=release)

    model, kept = load(), load()
    lean, full = runner(model, True), runner(kept, False)
    layers = lean._linears[:-1]  # every projection but the head
    assert layers and all(layer.decode_native is not None and not layer.holds_plain
                          for layer in layers)
    projections = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                   "down_proj", "c_attn", "c_proj", "c_fc"}
    released = {name for name, p in model.named_parameters() if p.is_meta}
    assert released == {f"{name}.weight" for name, _ in model.named_modules()
                        if name.rsplit(".", 1)[-1] in projections}
    assert not model.get_input_embeddings().weight.is_meta
    assert lean._linears[-1].holds_plain  # the head
    freed = sum(p.numel() * p.element_size() for p in model.parameters() if p.is_meta)
    assert _model_bytes(model) == _model_bytes(load()) - freed  # what the engine counts
    assert not any(p.is_meta for p in kept.parameters())  # not asked to: left alone

    def steps(runner):  # type: ignore[no-untyped-def]
        seen, slots, lengths = _steps_of_every_size(runner)
        for tokens in range(1, 4):  # scored continuations behind a slot's history
            seen.append(runner.forward([RowInput(slots[0], list(range(20, 20 + tokens)),
                                                 lengths[0], all_logits=True)]))
        with exact_products():  # a two-token text, as classification runs it
            seen.append(runner.forward([RowInput(None, [11, 12], 0)]))
        return seen

    for a, b in zip(steps(lean), steps(full), strict=True):
        assert torch.equal(a, b)


def test_engine_config_names_the_kernels_it_knows():
    from gptstore.errors import InvalidRequest
    from gptstore.inference.types import EngineConfig

    with pytest.raises(InvalidRequest, match="attention kernel 'flash'"):
        EngineConfig(decode_attention="flash")
    with pytest.raises(InvalidRequest, match=r"gemv kernel 'mkl'.*native"):
        EngineConfig(gemv="mkl")
    assert EngineConfig(gemv="native", decode_attention="native").gemv == "native"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 2, 16])  # 16: a decode step of 16 streams (threaded)
def test_rms_norm_and_swiglu_match_transformers(kernel, dtype, rows):
    """Llama's RMSNorm (transformers' LlamaRMSNorm on a strided row, as the runner
    passes the residual stream) and SiLU(gate) * up, dims with a partial vector."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    generator = torch.Generator().manual_seed(rows)
    dim, inter = 44, 37
    x = torch.randn(rows, 2 * dim, generator=generator).to(dtype)[:, :dim]
    norm = LlamaRMSNorm(dim, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(dim, generator=generator))
    norm = norm.to(dtype)
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    with torch.no_grad():
        expected = norm(x)
    got = native.rms_norm(x, norm.weight.detach(), 1e-5)
    assert got.dtype == dtype and (got.float() - expected.float()).abs().max() < tolerance
    gate_up = (3 * torch.randn(rows, 2 * inter, generator=generator)).to(dtype)
    expected = F.silu(gate_up[:, :inter]) * gate_up[:, inter:]
    got = native.silu_mul(gate_up, inter)
    assert got.shape == (rows, inter)
    # bf16: PyTorch rounds silu's output, then the product; one rounding here (2 ulps)
    slack = expected.float().abs() * (2**-6 if dtype == torch.bfloat16 else 1e-6) + 1e-5
    assert ((got.float() - expected.float()).abs() <= slack).all()
    with pytest.raises(ValueError, match="not 2 x 36"):
        native.silu_mul(gate_up, 36)
    with pytest.raises(ValueError, match="weight must be"):
        native.rms_norm(x, torch.ones(dim + 1, dtype=dtype), 1e-5)


def test_bf16_results_round_to_nearest_even_as_pytorch_casts(kernel):
    """The vectorised rounding of bf16 outputs, exactly: SiLU(24) is 24 in fp32, so
    SwiGLU gives 24 * up rounded once, as PyTorch casts it (ties to even, NaN and
    infinities kept), in whole vectors and the tail."""
    generator = torch.Generator().manual_seed(3)
    rows, inter = 16, 37
    up = torch.randn(rows, inter, generator=generator).bfloat16()
    up[0, :4] = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0])
    gate_up = torch.cat([torch.full((rows, inter), 24.0).bfloat16(), up], dim=1)
    expected = (24 * up.float()).bfloat16()
    assert torch.equal(native.silu_mul(gate_up, inter).isnan(), expected.isnan())
    assert torch.equal(native.silu_mul(gate_up, inter).nan_to_num(), expected.nan_to_num())


def test_a_layer_the_kernel_cannot_take_keeps_atens_gemv(kernel):
    """An input width that is not a multiple of 16: that layer keeps the plain bf16
    decode copy and ATen's GEMV, the model still serves."""
    weight = torch.randn(24, 40)
    linear = Linear.of(weight, decode_dtype=torch.bfloat16, gemv="native")
    assert linear.decode_native is None and linear.decode_weight_t is not None
    x = torch.randn(1, 40)
    expected = x.bfloat16().float() @ weight.bfloat16().float().t()  # bf16 in and out
    assert torch.allclose(linear(x), expected, rtol=1e-2, atol=1e-2)
    assert not native.attention_fits(12) and native.attention_fits(64)


@pytest.mark.parametrize("weight_dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize(("rows", "vocab", "k"), [(1, 5003, 32), (16, 4096, 32), (3, 77, 64),
                                                  (2, 40, 1)])
def test_refine_top_equals_pytorchs_refinement(kernel, weight_dtype, rows, vocab, k):
    """The native refinement against `_refine_top`'s PyTorch path: the same widened
    logits, the k largest per row recomputed in fp32 up to summation order (among equal
    bf16 values at the k-th place either may be taken), vocabularies in whole vectors
    and not, the first vector holding more than k."""
    from gptstore.inference.models.base import _refine_top

    generator = torch.Generator().manual_seed(rows * vocab + k)
    dim = 72  # not a multiple of 16: the dot product's 8-wide and scalar tails
    weight = (torch.randn(vocab, dim, generator=generator) * 0.5).to(weight_dtype)
    hidden = torch.randn(rows, dim, generator=generator).to(
        torch.bfloat16 if weight_dtype == torch.bfloat16 else torch.float32)
    exact = hidden.float() @ weight.float().t()
    logits = exact.bfloat16()  # as the bf16 head gives them
    widened = logits.float()
    linear = Linear.of(weight)
    theirs = _refine_top(logits, hidden, linear, k=k)
    ours = _refine_top(logits, hidden, linear, k=k, native_kernel=True)
    assert ours.dtype == torch.float32 and ours.shape == (rows, vocab)
    kth = widened.topk(k, dim=-1).values[:, -1:]  # [R, 1]
    refined = ours != widened
    assert torch.equal(refined.sum(-1), torch.full((rows,), k))
    assert bool((widened[refined.logical_not()] <= kth.expand(-1, vocab)[
        refined.logical_not()]).all())  # nothing left out that beats the k-th
    assert torch.allclose(ours[refined], exact[refined], atol=1e-5, rtol=0)
    assert torch.equal(ours[~refined], widened[~refined])
    both = refined & (theirs != widened)
    assert int(both.sum()) >= rows * (k - 2)
    assert torch.allclose(ours[both], theirs[both], atol=1e-5, rtol=0)


def test_refine_top_takes_k_of_equal_logits_and_refuses_bad_input(kernel):
    """Ties at the k-th place: k candidates, the larger values all among them; what the
    kernel cannot take is refused by name, before anything runs."""
    weight = torch.ones(50, 16, dtype=torch.bfloat16)
    hidden = torch.ones(1, 16, dtype=torch.bfloat16)
    logits = torch.zeros(1, 50, dtype=torch.bfloat16)
    logits[0, 10:13] = 1.0
    out = native.refine_top(logits, hidden, weight, 4)
    assert bool((out[0, 10:13] == 16.0).all())
    assert int((out[0] == 16.0).sum()) == 4  # the three ones and one of the zeros
    with pytest.raises(ValueError, match="k must be"):
        native.refine_top(logits, hidden, weight, native.REFINE_MAX_K + 1)
    with pytest.raises(ValueError, match="logits must be"):
        native.refine_top(logits.float(), hidden, weight, 4)
    with pytest.raises(ValueError, match="hidden must be"):
        native.refine_top(logits, hidden[:, :8], weight, 4)


def test_every_file_the_build_reads_ships_in_the_package():
    """An installed wheel builds the kernels from its own copy of the sources: each
    source and header must match pyproject's package data (the header once did not)."""
    import fnmatch
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["gptstore"]
    package = root / "src" / "gptstore"
    for path in native.SOURCES + native.HEADERS:
        relative = path.resolve().relative_to(package).as_posix()
        assert any(fnmatch.fnmatch(relative, pattern) for pattern in patterns), relative


# ------------------------------------------------------------------ 4-bit GEMV


def _q4_parts(n_out: int, n_in: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """q [out, in] in 0..15, and per group of 32 inputs a scale and a min [out, in / 32]."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (n_out, n_in), generator=gen)
    scale = torch.rand(n_out, n_in // 32, generator=gen) * 0.02 + 0.001
    low = torch.randn(n_out, n_in // 32, generator=gen) * 0.1
    return q, scale, low


def _q4_reference(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor,
                  low: torch.Tensor) -> torch.Tensor:
    """gemv_q4.c's arithmetic in float64: each group of 32 activations quantised to int8
    (d = max|x| / 127, round half to even), exact integer dot products, bf16 scales and
    mins, the min term on the unquantised activations."""
    rows, n_in = x.shape
    xg = x.double().reshape(rows, n_in // 32, 32)
    d = xg.abs().amax(-1) / 127
    x8 = torch.where(d[..., None] > 0, torch.round(xg / d[..., None].clamp_min(1e-30)), 0.0)
    dots = torch.einsum("rgj,ogj->rog", x8, q.double().reshape(q.shape[0], n_in // 32, 32))
    s = scale.bfloat16().double()[None]
    m = low.bfloat16().double()[None]
    return (dots * s * d[:, None, :]).sum(-1) + (m * xg.sum(-1)[:, None, :]).sum(-1)


@pytest.fixture(params=["avx2", "vnni"])
def q4_path(request, kernel):  # type: ignore[no-untyped-def]
    """gemv_q4 on its AVX2 path, then on its AVX-512 VNNI path where this CPU has one."""
    if native.q4_use_vnni(request.param == "vnni") != (request.param == "vnni"):
        native.q4_use_vnni(True)
        pytest.skip("this CPU has no AVX-512 VNNI")
    yield request.param
    native.q4_use_vnni(True)  # the default: VNNI where the CPU has it


@pytest.mark.parametrize("n_out", [13, 64, 1000])
@pytest.mark.parametrize("rows", [1, 2, 7])  # 7: 3 pairs and 1 (AVX2), 4 and 3 (VNNI)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_q4_products_equal_their_int8_activation_arithmetic(q4_path, n_out, rows, dtype):
    n_in = 96
    q, scale, low = _q4_parts(n_out, n_in)
    packed = native.pack_q4(q, scale, low)
    x = (torch.randn(rows, n_in) * 3).to(dtype)
    bias, residual = torch.randn(n_out).to(dtype), torch.randn(rows, n_out).to(dtype)
    got = native.gemv_q4(x, packed, n_out, bias, residual)
    assert got.dtype == dtype and got.shape == (rows, n_out)
    expected = _q4_reference(x.float(), q, scale, low) + bias.double() + residual.double()
    # fp32: the kernel's fp32 sums; bf16: one rounding of the output
    tolerance = 1e-5 if dtype == torch.float32 else 4e-3
    assert (got.double() - expected).abs().max() <= tolerance * expected.abs().max()
    # and close to the exact product on those 4-bit weights: int8 activations lose
    # about 1% (as llama.cpp's Q4_1 x Q8 product does)
    weight = q * scale.bfloat16().float().repeat_interleave(32, 1) + \
        low.bfloat16().float().repeat_interleave(32, 1)
    exact = x.float() @ weight.t() + bias.float() + residual.float()
    assert (got.float() - exact).abs().max() <= 0.03 * exact.abs().max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_q4_many_rows_give_each_rows_own_bits(q4_path, dtype):
    """A step of many rows (the int4 kernel "native-all") gives each row the bits of that
    row alone, though the AVX2 path takes rows in pairs (5: two pairs and one alone)."""
    q, scale, low = _q4_parts(13, 96, seed=5)
    packed = native.pack_q4(q, scale, low)
    x = (torch.randn(5, 96, generator=torch.Generator().manual_seed(6)) * 3).to(dtype)
    bias, residual = torch.randn(13).to(dtype), torch.randn(5, 13).to(dtype)
    together = native.gemv_q4(x, packed, 13, bias, residual)
    alone = torch.cat([native.gemv_q4(x[i:i + 1], packed, 13, bias, residual[i:i + 1])
                       for i in range(5)])
    assert torch.equal(together, alone)


def test_q4_zero_and_equal_activations_are_exact(q4_path):
    """A group of zeros (d = 0) adds nothing; a group of one value quantises exactly."""
    q, scale, low = _q4_parts(8, 64, seed=3)
    packed = native.pack_q4(q, scale, low)
    x = torch.zeros(1, 64)
    x[0, 32:] = 0.5
    weight = q * scale.bfloat16().float().repeat_interleave(32, 1) + \
        low.bfloat16().float().repeat_interleave(32, 1)
    got = native.gemv_q4(x, packed, 8)
    assert torch.allclose(got, x @ weight.t(), rtol=1e-5, atol=1e-6)


def test_q4_inputs_it_cannot_take_are_refused_by_name(kernel):
    q, scale, low = _q4_parts(8, 64)
    with pytest.raises(ValueError, match="divisible by 32"):
        native.pack_q4(q[:, :48], scale, low)
    with pytest.raises(ValueError, match="scale and min"):
        native.pack_q4(q, scale[:, :1], low)
    packed = native.pack_q4(q, scale, low)
    with pytest.raises(ValueError, match="residual"):
        native.gemv_q4(torch.zeros(1, 64), packed, 8, residual=torch.zeros(1, 8).bfloat16())


def test_an_int4_linear_on_the_native_kernel_serves_rows_as_pytorchs_does(q4_path):
    from gptstore.inference.models.base import Int4Linear

    gen = torch.Generator().manual_seed(0)
    weight_t = torch.randn(128, 48, generator=gen).bfloat16()
    ours, theirs = Int4Linear(weight_t, kernel="native"), Int4Linear(weight_t)
    assert ours.decode_q4 is not None and theirs.decode_q4 is None
    assert ours.extra_nbytes > theirs.extra_nbytes  # the copy in the kernel's order
    for rows in (1, 2):
        x = torch.randn(rows, 128, generator=gen).bfloat16()
        a, b = ours(x).float(), theirs(x).float()
        # two approximations of one product (int8 activations here, bf16 offsets
        # there), each ~1-2% of the largest output on random weights; a misread scale,
        # offset or nibble order is off by tens of percent
        assert (a - b).abs().max() <= 0.05 * b.abs().max()
    x = torch.randn(5, 128, generator=gen).bfloat16()  # more rows: PyTorch's kernel
    assert torch.equal(ours(x), theirs(x))
    every = Int4Linear(weight_t, kernel="native-all")  # every step, on either path
    assert every.q4_max_rows is None
    assert (every(x).float() - theirs(x).float()).abs().max() <= \
        0.05 * theirs(x).float().abs().max()
    with pytest.raises(ValueError, match="int4 kernel"):
        Int4Linear(weight_t, kernel="fbgemm")


def test_runner_decodes_int4_on_the_native_kernel_near_pytorchs(tiny_dirs, kernel):
    from transformers import AutoModelForCausalLM

    def load():  # type: ignore[no-untyped-def]
        return AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"],
                                                    dtype=torch.bfloat16).eval()

    theirs = build_runner(load(), max_slots=2, quantize="int4")
    ours = build_runner(load(), max_slots=2, quantize="int4", int4_gemv="native")
    every = build_runner(load(), max_slots=2, quantize="int4", int4_gemv="native-all")
    assert any(getattr(layer, "decode_q4", None) is not None for layer in ours._linears)
    logits = []
    for runner in (theirs, ours, every):
        slot = runner.allocate()
        runner.forward([RowInput(slot, PROMPTS[0], 0)])  # prefill: 9 rows
        logits.append(runner.forward([RowInput(slot, [7], len(PROMPTS[0]))]))  # one row
    for other in logits[1:]:  # prefill on PyTorch's kernel, or on the native one too
        cosine = F.cosine_similarity(logits[0].float(), other.float(), dim=-1)
        assert (cosine > 0.99).all(), cosine
