"""Precision by measurement: measured once per machine key, cached atomically in the
home, chosen per use, and overridden by explicit settings."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest

from gptstore.errors import InvalidRequest
from gptstore.inference import native, precision
from gptstore.inference.precision import MachineProfile, choose, machine_key, machine_profile
from gptstore.inference.store import engine_config
from gptstore.inference.types import GEMV_ROWS_ALL
from gptstore.settings import Settings


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """No profile remembered from other tests, and a machine that counts as quiet (the
    shared test machine is often busy, and a busy measurement is never cached)."""
    monkeypatch.setattr(precision, "_memo", {})
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))


@pytest.fixture
def measured(monkeypatch: pytest.MonkeyPatch) -> list[MachineProfile]:
    """Every real measurement taken during the test, in order (a spy around `measure`)."""
    calls: list[MachineProfile] = []
    real = precision.measure

    def spy() -> MachineProfile:
        calls.append(real())
        return calls[-1]

    monkeypatch.setattr(precision, "measure", spy)
    return calls


def profile_doc(choices: dict[str, str], key: str | None = None,
                gemv: str = "aten") -> dict[str, Any]:
    """A cached profile as the file holds it, with rates that agree with `choices`."""
    rates = {use: {"fp32": 100.0, "bf16": 300.0 if c == "bf16" else 50.0}
             for use, c in choices.items()}
    return MachineProfile(key=key or machine_key(), cpu="test CPU", torch="x", threads=1,
                          flags=[], gflops=rates, choices=choices, gemv=gemv).to_dict()


def write_cache(home: Path, *docs: dict[str, Any]) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / precision.CACHE_FILE).write_text(json.dumps({d["key"]: d for d in docs}))


def test_first_use_measures_every_use_in_both_dtypes_quickly(tmp_path, measured):
    profile = machine_profile(tmp_path)
    assert len(measured) == 1
    assert set(profile.gflops) == {"training", "batched", "decode"}
    for rates in profile.gflops.values():
        assert rates["fp32"] > 0 and rates["bf16"] > 0
    assert profile.choices == choose(profile.gflops)
    assert profile.key == machine_key() and profile.cpu in profile.key
    # the few-row rule: timed where the native GEMV is the 1-row kernel, else 1-2 rows
    assert profile.gemv_rows in (2, *precision.GEMV_ROWS_TIMED, *precision.PREFILL_TOKENS_TIMED,
                                 GEMV_ROWS_ALL)
    if profile.gemv in ("native", "native-avx512"):
        assert profile.gemv_rows_us[f"native_{max(precision.GEMV_ROWS_TIMED)}"] > 0
    else:
        assert profile.gemv_rows == 2 and not profile.gemv_rows_us
    assert profile.rows_loop in ("bf16-dot", "fma", "amx")
    # "well under a second" on a quiet machine; the test machine is shared, so allow 3 s
    assert profile.seconds < 3.0


def test_the_timed_llamas_layers_each_hold_their_own_weights() -> None:
    """One layer is initialised and copied (`_rows_model`): each copy must sit in its own
    memory, or a step would read one layer's weights from cache and time less than a
    model's pass; and the model must be the same each time."""
    import torch

    for layers in (None, precision.LONG_CHUNK_LAYERS):
        model = precision._rows_model(torch.bfloat16, layers)
        count = layers or precision.ROWS_MODEL["num_hidden_layers"]
        stack = model.model.layers
        assert len(stack) == model.config.num_hidden_layers == count
        assert [layer.self_attn.layer_idx for layer in stack] == list(range(count))
        pointers = {p.data_ptr() for layer in stack for p in layer.parameters()}
        assert len(pointers) == count * len(list(stack[0].parameters()))
        assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    first, again = (precision._rows_model(torch.bfloat16).state_dict() for _ in range(2))
    assert first.keys() == again.keys()
    assert all(torch.equal(first[name], again[name]) for name in first)


def test_one_row_bf16_is_timed_in_every_kernel_here_and_the_fastest_is_kept(tmp_path, measured):
    """Which kernel serves a bf16 row fastest differs between CPUs (ATen's GEMV on one,
    packed oneDNN on an AMX Sapphire Rapids, the native one on an AVX2 EPYC), so each
    one this machine can run is timed; the profile keeps the fastest, and bf16's decode
    rate is that kernel's."""
    profile = machine_profile(tmp_path)
    decode = profile.gflops["decode"]
    kernels = precision.decode_kernels()
    assert kernels[0] == "aten"
    if len(kernels) == 1:
        assert profile.gemv == "aten" and not any(k.startswith("bf16_") for k in decode)
        return
    timed = {k: decode[f"bf16_{k}"] for k in kernels}
    assert all(rate > 0 for rate in timed.values())
    assert set(k for k in decode if k.startswith("bf16_")) == {f"bf16_{k}" for k in kernels}
    assert decode["bf16"] == max(timed.values())
    assert profile.gemv == precision.gemv_kernel(profile.gflops) == max(timed, key=timed.get)


def test_the_kernel_choice_takes_the_fastest_of_those_timed() -> None:
    rates = {"decode": {"fp32": 5.0, "bf16_aten": 8.0, "bf16_onednn": 6.0, "bf16_native": 14.0}}
    assert precision.gemv_kernel(rates) == "native"
    rates["decode"]["bf16_onednn"] = 20.0
    assert precision.gemv_kernel(rates) == "onednn"
    assert precision.gemv_kernel({"decode": {"fp32": 5.0, "bf16": 8.0}}) == "aten"
    rates["decode"]["bf16_native-avx512"] = 21.0  # the native kernel's two paths compete
    assert precision.gemv_kernel(rates) == "native-avx512"


def test_the_native_kernels_avx512_path_is_timed_where_the_cpu_has_it() -> None:
    from gptstore.inference import native

    kernels = precision.decode_kernels()
    assert ("native-avx512" in kernels) == native.gemv_avx512_supported()
    if native.library() is None:
        assert "native" not in kernels


def _assert_faster_kernel_kept(times: dict[str, float], chosen: str, baseline: str,
                               choose: Any) -> None:
    """A kernel choice timed against PyTorch's: the baseline always timed, the native one
    where it builds here, the faster kept; and the rule on made-up times."""
    from gptstore.inference import native

    assert times[baseline] > 0
    if native.library() is None:
        assert chosen == baseline and "native" not in times
    else:
        assert times["native"] > 0 and chosen == min(times, key=times.get)
    assert choose({baseline: 300.0, "native": 200.0}) == "native"
    assert choose({baseline: 200.0, "native": 300.0}) == baseline
    assert choose({baseline: 200.0}) == baseline


def test_decode_attention_is_timed_in_each_kernel_and_the_faster_is_kept(tmp_path, measured):
    profile = machine_profile(tmp_path)
    _assert_faster_kernel_kept(profile.attention_us, profile.attention, "sdpa",
                               precision.attention_kernel)
    write_cache(tmp_path / "home", {**profile.to_dict(), "attention": "native"})
    assert engine_config(Settings(home=tmp_path / "home")).decode_attention == "native"
    text = "\n".join(precision.report_lines(profile))
    assert "decode attention: 1 + 16 rows" in text


def test_int4_kernels_are_timed_on_first_use_and_the_faster_is_kept(tmp_path, measured,
                                                                    monkeypatch):
    from gptstore.errors import InvalidRequest
    from gptstore.inference import EngineConfig

    profile = machine_profile(tmp_path)
    assert profile.int4_us == {}  # int4 is opt-in: not part of the first-use timing
    timed = []
    real = precision._time_int4
    monkeypatch.setitem(precision.ROWS_MODEL, "num_hidden_layers", 2)  # quick
    monkeypatch.setattr(precision, "LONG_CHUNK_LAYERS", 1)
    monkeypatch.setattr(precision, "_time_int4",
                        lambda attention: timed.append(attention) or real(attention))
    profile = precision.int4_profile(tmp_path)
    again = precision.int4_profile(tmp_path)
    assert len(timed) == (1 if profile.quiet else 2)  # cached once measured (when quiet)
    assert timed[0] == profile.attention  # the steps run on the profile's attention kernel
    if profile.quiet:
        assert again == profile and machine_profile(tmp_path).int4_us == profile.int4_us
    assert profile.int4_gemv == precision.int4_kernel(profile.int4_us)
    one_row = {k: v for k, v in profile.int4_us.items() if not k.endswith("_batched")}
    chosen = "native" if profile.int4_gemv == "native-all" else profile.int4_gemv
    _assert_faster_kernel_kept(one_row, chosen, "torch", lambda t: precision.int4_kernel(t))
    assert profile.int4_us["torch_batched"] > 0
    # every step natively only where the native kernel was also faster at 16 rows
    fast, slow = {"torch": 300.0, "native": 200.0}, {"torch": 200.0, "native": 300.0}
    assert precision.int4_kernel({**fast, "torch_batched": 900.0,
                                  "native_batched": 400.0}) == "native-all"
    assert precision.int4_kernel({**fast, "torch_batched": 400.0,
                                  "native_batched": 900.0}) == "native"
    assert precision.int4_kernel({**slow, "torch_batched": 900.0,
                                  "native_batched": 400.0}) == "torch"
    write_cache(tmp_path / "home", {**profile.to_dict(), "int4_gemv": "native"})
    config = engine_config(Settings(home=tmp_path / "home", inference_dtype="int4"))
    assert (config.quantize, config.int4_gemv) == ("int4", "native")  # cached: no timing
    # an explicit kernel wins over the measured one, without timing anything
    monkeypatch.setattr(precision, "_time_int4", lambda attention: pytest.fail("timed"))
    forced = engine_config(Settings(home=tmp_path / "other", inference_dtype="int4",
                                    int4_kernel="native-all"))
    assert forced.int4_gemv == "native-all"
    text = "\n".join(precision.report_lines(profile))
    assert "int4 kernels" in text and f"-> {profile.int4_gemv}" in text
    assert "1 row: PyTorch" in text and "16 rows: PyTorch" in text
    with pytest.raises(InvalidRequest, match="int4 kernel"):
        EngineConfig(int4_gemv="fbgemm")


def test_engines_use_the_measured_kernel_for_single_rows_whatever_the_dtype(tmp_path):
    home = tmp_path / "home"
    choices = {"training": "bf16", "batched": "bf16", "decode": "bf16"}
    write_cache(home, profile_doc(choices, gemv="onednn"))
    for dtype in ("auto", "bfloat16", "float32", "int4"):
        assert engine_config(Settings(home=home, inference_dtype=dtype)).gemv == "onednn"
    assert engine_config(Settings(home=home), gemv="aten").gemv == "aten"
    write_cache(home, profile_doc(choices, gemv="aten"))
    assert engine_config(Settings(home=home)).gemv == "aten"


def test_decode_steps_of_a_few_rows_go_native_as_far_as_it_measures_faster(monkeypatch):
    """`gemv_rows`: the most of 16, 8 and 4 rows at which a runner's decode step with the
    native GEMV took no longer than with the batched products (most first, so it stops at
    the first win); 2 where none won, or where the native kernel is not the profile's
    1-row kernel. The native side's step is the one native call the engine makes (with
    the native attention), the batched side's the separate calls."""
    from gptstore.inference import native

    if native.library() is None:
        pytest.skip("the native kernels do not build here")
    base = MachineProfile.from_dict(profile_doc(
        {"training": "fp32", "batched": "fp32", "decode": "bf16"}, gemv="native"))
    assert base.decode_copy
    timed: list[int] = []
    one_calls: list[int] = []
    step_call = native.LlamaDecodeStep.__call__

    def counted(self: Any, x: Any, *args: Any, **kwargs: Any) -> None:
        one_calls.append(x.shape[0])
        step_call(self, x, *args, **kwargs)

    monkeypatch.setattr(native.LlamaDecodeStep, "__call__", counted)

    def fake(native_faster_from: int) -> Any:
        def best(passes: dict[str, Any], **_: Any) -> dict[str, float]:
            one_calls.clear()
            rows = int(passes["batched"]().shape[0])  # each pass returns its logits
            assert not one_calls  # separate calls
            assert passes["native"]().shape[0] == rows and one_calls == [rows]
            timed.append(rows)
            native_s = 1.0 if rows <= native_faster_from else 2.0
            return {"native": native_s, "batched": 1.5}
        return best

    monkeypatch.setitem(precision.ROWS_MODEL, "num_hidden_layers", 2)  # quick
    monkeypatch.setattr(precision, "LONG_CHUNK_LAYERS", 1)
    monkeypatch.setattr(precision, "_alternating_best", fake(8))
    rows, times = precision._time_gemv_rows(base, "native")
    assert rows == 8 and timed == [16, 8]
    assert set(times) == {"native_16", "batched_16", "native_8", "batched_8"}
    timed.clear()
    monkeypatch.setattr(precision, "_alternating_best", fake(1))
    assert precision._time_gemv_rows(base, "native")[0] == 2 and timed == [16, 8, 4]
    assert precision._time_gemv_rows(dataclasses.replace(base, gemv="aten"), "native") \
        == (2, {})
    text = precision.gemv_rows_text(dataclasses.replace(base, gemv_rows=8, gemv_rows_us={
        "native_16": 2000.0, "batched_16": 1500.0, "native_8": 1000.0, "batched_8": 1500.0}))
    assert text == ("16 rows: batched 1.5 ms, native 2.0 ms; 8 rows: batched 1.5 ms, "
                    "native 1.0 ms -> native up to 8 rows")


def test_steps_of_several_rows_take_the_loop_measured_fastest(monkeypatch):
    """`rows_loop`: where the native GEMV serves and the CPU has AVX-512 and its bf16
    dot product, a 16-row product is timed on the dot product, on the FMA loop (the
    same bits) and, where the kernels can use AMX here, on AMX tiles, and the fastest
    is kept; untimed elsewhere: "fma" on an AVX-512 CPU without the dot product (its
    only loop), "bf16-dot" (unused) without AVX-512 or where the native GEMV does not
    serve."""
    if native.library() is None or not native.gemv_avx512_supported():
        pytest.skip("the native kernels' AVX-512 path does not run here")
    base = MachineProfile.from_dict(profile_doc(
        {"training": "fp32", "batched": "bf16", "decode": "bf16"}, gemv="native-avx512"))
    loops: list[set[str]] = []

    def fake(fma_s: float, amx_s: float = 3.0) -> Any:
        def best(passes: dict[str, Any], **_: Any) -> dict[str, float]:
            for run in passes.values():  # each runs its 16-row products
                out = run()
                assert len(out) == precision.COPIES["decode"]
                assert out[0].shape == (16, precision.SHAPES["batched"][2])
            loops.append(set(passes))
            return {name: seconds for name, seconds in
                    (("bf16-dot", 1.0), ("fma", fma_s), ("amx", amx_s)) if name in passes}
        return best

    monkeypatch.setattr(precision, "cpu_flag_set", lambda: {"avx512f", "avx512_bf16"})
    monkeypatch.setattr(precision, "COPIES", {**precision.COPIES, "decode": 2})  # quick
    monkeypatch.setattr(native, "amx_supported", lambda: False)
    monkeypatch.setattr(precision, "_alternating_best", fake(0.5))
    assert precision._time_rows_loop(base) == ("fma", {"bf16-dot": 1e6, "fma": 5e5})
    monkeypatch.setattr(precision, "_alternating_best", fake(2.0))
    assert precision._time_rows_loop(base)[0] == "bf16-dot"
    assert loops == [{"bf16-dot", "fma"}] * 2
    # where AMX can run, it is timed too (its loop falls back to FMAs where it cannot,
    # so the passes run on any machine)
    monkeypatch.setattr(native, "amx_supported", lambda: True)
    monkeypatch.setattr(precision, "_alternating_best", fake(0.5, 0.25))
    assert precision._time_rows_loop(base) == (
        "amx", {"bf16-dot": 1e6, "fma": 5e5, "amx": 2.5e5})
    monkeypatch.setattr(precision, "_alternating_best", fake(0.5, 0.75))
    assert precision._time_rows_loop(base)[0] == "fma"
    assert loops[2:] == [{"bf16-dot", "fma", "amx"}] * 2
    loops.clear()
    assert precision._time_rows_loop(dataclasses.replace(base, gemv="aten")) \
        == ("bf16-dot", {})
    monkeypatch.setattr(precision, "cpu_flag_set", lambda: {"avx512f"})
    assert precision._time_rows_loop(base) == ("fma", {})
    assert not loops  # neither timed
    text = precision.rows_loop_text(dataclasses.replace(
        base, rows_loop="fma", rows_loop_us={"bf16-dot": 5200.0, "fma": 3900.0}))
    assert text == "16 rows: bf16 dot product 5.2 ms, FMA 3.9 ms -> fma"
    text = precision.rows_loop_text(dataclasses.replace(
        base, rows_loop="amx", rows_loop_us={"bf16-dot": 5200.0, "fma": 3900.0,
                                             "amx": 2100.0}))
    assert text == "16 rows: bf16 dot product 5.2 ms, FMA 3.9 ms, AMX 2.1 ms -> amx"
    assert precision.rows_loop_text(base) is None


def test_engines_run_several_rows_on_the_measured_loop(tmp_path):
    home = tmp_path / "home"
    doc = profile_doc({"training": "fp32", "batched": "bf16", "decode": "bf16"},
                      gemv="native-avx512")
    write_cache(home, {**doc, "rows_loop": "fma"})
    assert engine_config(Settings(home=home)).rows_loop == "fma"
    write_cache(home, doc)
    assert engine_config(Settings(home=home)).rows_loop == "bf16-dot"
    assert engine_config(Settings(home=home), rows_loop="fma").rows_loop == "fma"
    with pytest.raises(InvalidRequest, match="unknown rows loop"):
        engine_config(Settings(home=home), rows_loop="avx-1024")


def test_where_native_wins_the_most_rows_prompt_chunks_decide_how_many_more(monkeypatch):
    """Served bf16 (or fp32 with a bf16 copy) and the native GEMV faster at 16 rows:
    prompt chunks of `PREFILL_TOKENS_TIMED` tokens are timed, shortest first, on a
    runner whose native GEMV serves every step against the batched products; native no
    slower on all of them gives `GEMV_ROWS_ALL`, on the first ones alone the longest of
    those chunks, on none 16; the longest chunk (on `LONG_CHUNK_LAYERS` layers) only
    where native won the one before it by `LONG_CHUNK_MARGIN`. Not timed where fp32 is
    served without the copy (the native kernel does not serve its steps)."""
    if native.library() is None:
        pytest.skip("the native kernels do not build here")
    base = MachineProfile.from_dict(profile_doc(
        {"training": "fp32", "batched": "bf16", "decode": "bf16"}, gemv="native"))
    assert base.serving == "bf16"
    chunks = precision.PREFILL_TOKENS_TIMED
    timed: list[str] = []

    def fake(prompt_native_s: tuple[float, ...]) -> Any:
        def best(passes: dict[str, Any], **_: Any) -> dict[str, float]:
            rows = int(passes["batched"]().shape[0])  # logits: one row per decode row
            assert int(passes["native"]().shape[0]) == rows
            if rows > 1:
                timed.append(f"{rows} rows")
                return {"native": 1.0, "batched": 1.5}
            timed.append("prompt")
            return {"native": prompt_native_s[timed.count("prompt") - 1], "batched": 1.5}
        return best

    monkeypatch.setitem(precision.ROWS_MODEL, "num_hidden_layers", 2)  # quick
    monkeypatch.setattr(precision, "LONG_CHUNK_LAYERS", 1)
    monkeypatch.setattr(precision, "_alternating_best", fake((1.0, 1.0, 1.5)))
    rows, times = precision._time_gemv_rows(base, "native")
    assert rows == GEMV_ROWS_ALL and timed == ["16 rows"] + ["prompt"] * len(chunks)
    assert set(times) == {"native_16", "batched_16"} | {
        f"{side}_prompt_{tokens}" for side in ("native", "batched") for tokens in chunks}
    assert precision.gemv_rows_text(dataclasses.replace(
        base, gemv_rows=rows, gemv_rows_us=times)) == (
        "16 rows: batched 1500.0 ms, native 1000.0 ms; " + "; ".join(
            f"a {tokens}-token prompt ({'1 layer' if tokens == chunks[-1] else '2 layers'}):"
            f" batched 1500.0 ms, native {1500.0 if tokens == chunks[-1] else 1000.0} ms"
            for tokens in chunks)
        + " -> native every step")
    timed.clear()
    monkeypatch.setattr(precision, "_alternating_best", fake((1.0, 1.6)))
    rows, times = precision._time_gemv_rows(base, "native")
    assert rows == chunks[0] and timed == ["16 rows", "prompt", "prompt"]
    assert precision.gemv_rows_text(dataclasses.replace(
        base, gemv_rows=rows, gemv_rows_us=times)).endswith(
        f"-> native up to {chunks[0]} rows")
    timed.clear()
    # no slower on the chunk before the longest, but not by the margin: that one wins
    monkeypatch.setattr(precision, "_alternating_best", fake((1.0, 1.45)))
    rows, _times = precision._time_gemv_rows(base, "native")
    assert rows == chunks[-2] and timed == ["16 rows", "prompt", "prompt"]
    timed.clear()
    monkeypatch.setattr(precision, "_alternating_best", fake((2.0,)))
    assert precision._time_gemv_rows(base, "native")[0] == 16
    assert timed == ["16 rows", "prompt"]  # the longer chunks are not timed after a loss
    timed.clear()
    copy = dataclasses.replace(base, choices={**base.choices, "batched": "fp32"},
                               gflops={**base.gflops, "batched": {"fp32": 300.0,
                                                                  "bf16": 50.0}})
    assert copy.serving == "fp32" and copy.decode_copy
    monkeypatch.setattr(precision, "_alternating_best", fake((1.0, 1.6)))
    assert precision._time_gemv_rows(copy, "native")[0] == chunks[0]
    assert timed == ["16 rows", "prompt", "prompt"]
    timed.clear()
    exact = dataclasses.replace(copy, choices={**copy.choices, "decode": "fp32"})
    assert exact.serving == "fp32" and not exact.decode_copy
    assert precision._time_gemv_rows(exact, "native")[0] == 16 and timed == ["16 rows"]


def test_engines_serve_the_measured_rows_on_the_native_kernel(tmp_path):
    home = tmp_path / "home"
    doc = profile_doc({"training": "fp32", "batched": "fp32", "decode": "bf16"},
                      gemv="native")
    write_cache(home, {**doc, "gemv_rows": 8})
    assert engine_config(Settings(home=home)).gemv_rows == 8
    write_cache(home, doc)
    assert engine_config(Settings(home=home)).gemv_rows == 2


def test_a_profile_of_an_older_layout_is_measured_again(tmp_path, measured):
    old = profile_doc({"training": "fp32", "batched": "fp32", "decode": "fp32"})
    del old["layout"], old["gemv"]  # what the cache held before kernels were timed
    write_cache(tmp_path, old)
    profile = machine_profile(tmp_path)
    assert len(measured) == 1 and profile.cpu != "test CPU"
    doc = json.loads((tmp_path / precision.CACHE_FILE).read_text())
    assert doc[machine_key()]["layout"] == precision.LAYOUT


def test_a_profile_of_other_native_kernels_is_measured_again(tmp_path, measured):
    """A new build of the kernels changes what they cost (a faster many-row GEMV moves
    `gemv_rows`): a profile that measured other kernels is not trusted."""
    doc = profile_doc({"training": "fp32", "batched": "fp32", "decode": "bf16"},
                      gemv="native")
    write_cache(tmp_path, {**doc, "kernels": "0123456789abcdef"})
    profile = machine_profile(tmp_path)
    assert len(measured) == 1 and profile.cpu != "test CPU"
    cached = json.loads((tmp_path / precision.CACHE_FILE).read_text())[machine_key()]
    assert cached["kernels"] == native.source_digest()
    precision._memo.clear()
    assert machine_profile(tmp_path) == profile and len(measured) == 1


def test_profile_is_cached_in_the_home_and_read_back_without_measuring(tmp_path, measured):
    first = machine_profile(tmp_path)
    doc = json.loads((tmp_path / precision.CACHE_FILE).read_text())
    assert list(doc) == [machine_key()]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".precision-")]
    precision._memo.clear()  # a new process: only the file remembers
    again = machine_profile(tmp_path)
    assert len(measured) == 1
    assert again == first


def test_one_process_measures_once_for_many_homes(tmp_path, measured):
    machine_profile(tmp_path / "a")
    machine_profile(tmp_path / "b")
    assert len(measured) == 1
    assert (tmp_path / "b" / precision.CACHE_FILE).exists()


def test_profile_is_keyed_by_cpu_and_torch_version(tmp_path, measured, monkeypatch):
    other = profile_doc({"training": "bf16", "batched": "bf16", "decode": "bf16"},
                        key="Some Other CPU | torch 2.13.0")
    write_cache(tmp_path, other)
    mine = machine_profile(tmp_path)  # another machine's entry does not count
    assert len(measured) == 1 and mine.key == machine_key()
    doc = json.loads((tmp_path / precision.CACHE_FILE).read_text())
    assert set(doc) == {other["key"], machine_key()}  # both machines' entries kept
    monkeypatch.setattr("torch.__version__", "9.9.9")
    precision._memo.clear()
    machine_profile(tmp_path)  # a new torch version: measured again
    assert len(measured) == 2


@pytest.mark.parametrize("change", ["flags", "cpus"])
def test_a_cpu_of_the_same_name_with_other_flags_or_cores_is_measured_again(
        tmp_path, measured, monkeypatch, change):
    """Two EPYC kinds here both call themselves "AMD EPYC", one without AVX-512 (where
    bf16 has no arithmetic): a home moved between them, or to more cores, must not reuse
    the other's choices."""
    monkeypatch.setattr(precision, "cpu_model", lambda: "AMD EPYC")
    monkeypatch.setattr(precision, "cpu_flag_set", lambda: {"avx2", "fma", "avx512f",
                                                            "avx512_bf16"})
    monkeypatch.setattr(precision, "usable_cpus", lambda: 2)
    zen4 = profile_doc({"training": "bf16", "batched": "bf16", "decode": "bf16"})
    write_cache(tmp_path, zen4)
    assert machine_profile(tmp_path).choices["training"] == "bf16" and not measured
    precision._memo.clear()
    if change == "flags":
        monkeypatch.setattr(precision, "cpu_flag_set", lambda: {"avx2", "fma"})
    else:
        monkeypatch.setattr(precision, "usable_cpus", lambda: 8)
    assert machine_key() != zen4["key"] and machine_key().startswith("AMD EPYC | ")
    machine_profile(tmp_path)
    assert len(measured) == 1
    assert set(json.loads((tmp_path / precision.CACHE_FILE).read_text())) == {
        zen4["key"], machine_key()}


def test_damaged_cache_is_measured_again_and_rewritten(tmp_path, measured):
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / precision.CACHE_FILE).write_text("{not json")
    machine_profile(tmp_path)
    assert len(measured) == 1
    assert machine_key() in json.loads((tmp_path / precision.CACHE_FILE).read_text())


def test_busy_measurement_serves_the_process_but_is_not_cached(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "getloadavg", lambda: (64.0, 64.0, 64.0))
    profile = machine_profile(tmp_path)
    assert not profile.quiet
    assert not (tmp_path / precision.CACHE_FILE).exists()


def test_remeasure_replaces_the_cached_profile(tmp_path, measured):
    write_cache(tmp_path, profile_doc({"training": "bf16", "batched": "bf16",
                                       "decode": "bf16"}))
    assert machine_profile(tmp_path).cpu == "test CPU"
    fresh = machine_profile(tmp_path, remeasure=True)
    assert len(measured) == 1 and fresh.cpu != "test CPU"
    assert json.loads((tmp_path / precision.CACHE_FILE).read_text())[machine_key()]["cpu"] \
        == fresh.cpu


def test_bf16_is_chosen_only_with_a_clear_margin():
    rates = {"training": {"fp32": 100.0, "bf16": 480.0},  # AMD EPYC-like: 4.8x
             "batched": {"fp32": 321.0, "bf16": 160.0},  # SPR without AMX: 0.5x
             "decode": {"fp32": 34.0, "bf16": 36.0}}  # within noise of a tie
    assert choose(rates) == {"training": "bf16", "batched": "fp32", "decode": "fp32"}


def test_served_weights_follow_both_serving_shapes():
    def served(batched: tuple[float, float], decode: tuple[float, float]) -> str:
        rates = {"training": {"fp32": 1.0, "bf16": 1.0},
                 "batched": dict(zip(("fp32", "bf16"), batched, strict=True)),
                 "decode": dict(zip(("fp32", "bf16"), decode, strict=True))}
        return MachineProfile(key="k", cpu="c", torch="t", threads=1, flags=[],
                              gflops=rates, choices=choose(rates)).serving

    assert served((100, 300), (10, 40)) == "bf16"
    assert served((300, 100), (40, 10)) == "fp32"
    # they disagree: the dtype whose 1-row + 16-row step takes less time wins; a 1-row
    # step is 16x fewer FLOPs, so at these rates the 16-row step's time decides
    assert served((100, 300), (40, 30)) == "bf16"
    # ... and here the slow 1-row bf16 pass costs more than the 16-row one saves
    assert served((100, 130), (40, 3)) == "fp32"


def test_serving_dtype_auto_is_the_measured_one_and_explicit_settings_win(tmp_path):
    home = tmp_path / "home"
    write_cache(home, profile_doc({"training": "fp32", "batched": "bf16", "decode": "bf16"}))
    assert engine_config(Settings(home=home, inference_dtype="auto")).dtype == "bfloat16"
    assert engine_config(Settings(home=home, inference_dtype="float32")).dtype == "float32"
    assert engine_config(Settings(home=home, inference_dtype="int4")).quantize == "int4"
    auto = Settings(home=home, inference_dtype="auto")
    assert engine_config(auto, dtype="float32").dtype == "float32"
    write_cache(home, profile_doc({"training": "bf16", "batched": "fp32", "decode": "fp32"}))
    assert engine_config(Settings(home=home, inference_dtype="auto")).dtype == "float32"
    assert precision.precision_for("training", home) == "bf16"


def test_single_rows_get_a_bf16_copy_where_only_they_measured_bf16_faster(tmp_path):
    """An AVX2-only EPYC: bf16 batches at a quarter of fp32's speed, one row faster in
    bf16 (half the bytes). Served weights stay fp32, with a bf16 copy for 1-2 row steps;
    an explicit dtype, or bf16 served anyway, keeps no copy."""
    home = tmp_path / "home"
    write_cache(home, profile_doc({"training": "fp32", "batched": "fp32", "decode": "bf16"}))
    config = engine_config(Settings(home=home, inference_dtype="auto"))
    assert (config.dtype, config.decode_dtype) == ("float32", "bfloat16")
    assert engine_config(Settings(home=home, inference_dtype="float32")).decode_dtype is None
    write_cache(home, profile_doc({"training": "fp32", "batched": "bf16", "decode": "bf16"}))
    config = engine_config(Settings(home=home, inference_dtype="auto"))
    assert (config.dtype, config.decode_dtype) == ("bfloat16", None)


def test_doctor_prints_the_measurements_and_the_choices(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from gptstore.cli.app import app

    home = tmp_path / "home"
    monkeypatch.setenv("GPTSTORE_HOME", str(home))
    monkeypatch.delenv("GPTSTORE_INFERENCE_DTYPE")
    monkeypatch.delenv("GPTSTORE_TRAINING_PRECISION")
    monkeypatch.setattr(precision, "BANDWIDTH_BYTES", 16 * 1024**2)  # quick
    result = CliRunner().invoke(app, ["doctor", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["key"] == machine_key() and doc["bandwidth_gbs"] > 0
    assert set(doc["choices"]) == {"training", "batched", "decode"}
    assert doc["serving"] in ("bf16", "fp32")
    assert doc["decode_copy"] == (doc["serving"] == "fp32" and doc["choices"]["decode"] == "bf16")
    assert doc["gemv"] in precision.decode_kernels()
    assert doc["attention"] in ("sdpa", "native") and doc["attention_us"]["sdpa"] > 0
    assert doc["settings"] == {"GPTSTORE_INFERENCE_DTYPE": "auto",
                               "GPTSTORE_TRAINING_PRECISION": "auto"}
    text = CliRunner().invoke(app, ["doctor"]).output
    assert "GFLOP/s" in text and "memory read" in text and "decode" in text


# ------------------------------------------------------------------ step threads


def _fake_mm_times(monkeypatch: pytest.MonkeyPatch, speedup: float) -> list[int]:
    """`_best_time` answering as if `threads` threads ran the matmul `speedup` times
    faster than one; returns the thread counts it was timed with."""
    import torch

    seen: list[int] = []

    def fake(_fn: Any, **_kw: Any) -> float:
        threads = torch.get_num_threads()
        seen.append(threads)
        return 1.0 if threads == 1 else 1.0 / speedup

    monkeypatch.setattr(precision, "_best_time", fake)
    return seen


@pytest.mark.parametrize(("speedup", "chosen"), [(1.9, 2), (1.15, 2), (1.05, 1), (0.8, 1)])
def test_step_threads_splits_only_where_it_measures_faster(
        monkeypatch: pytest.MonkeyPatch, speedup: float, chosen: int) -> None:
    import torch

    before = torch.get_num_threads()
    seen = _fake_mm_times(monkeypatch, speedup)
    assert precision.step_threads(16, 64, 256, torch.float32, 2) == chosen
    assert set(seen) == {1, 2}  # both timed ...
    assert torch.get_num_threads() == before  # ... and the caller's setting restored


def test_step_threads_measures_nothing_for_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    seen = _fake_mm_times(monkeypatch, 2.0)
    assert precision.step_threads(16, 64, 256, torch.float32, 1) == 1
    assert seen == []


def _threads_of_steps(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The intra-op threads each engine step ran with, as the steps run (each on the
    engine's thread)."""
    import threading

    import torch

    from gptstore.inference.scheduler import Scheduler

    stepped_with: list[int] = []
    real_step = Scheduler._step_base

    def spy(self: Scheduler, seqs: Any) -> None:
        real_step(self, seqs)
        stepped_with.append(torch.get_num_threads())
        assert threading.current_thread() is self._thread

    monkeypatch.setattr(Scheduler, "_step_base", spy)
    return stepped_with


def test_the_engine_steps_a_base_with_its_measured_threads(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A base measured not worth splitting runs its steps on one thread, greedy tokens
    unchanged; a configured thread count wins over the measurement."""
    from gptstore.inference import Engine, EngineConfig, GenerationRequest, SamplingParams
    from gptstore.testing.tiny import make_tiny_model

    folder = make_tiny_model("llama", tmp_path / "tiny", seed=0)
    from inference_helpers import causal_spec

    stepped_with = _threads_of_steps(monkeypatch)
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    outputs = []
    for config, measured_threads in ((EngineConfig(num_threads=2), None),
                                     (EngineConfig(), 1)):
        if measured_threads is not None:
            monkeypatch.setattr(precision, "step_threads",
                                lambda *_a, n=measured_threads, **_kw: n)
        stepped_with.clear()
        with Engine(lambda _name: causal_spec(folder), config) as engine:
            outputs.append(engine.submit(GenerationRequest([5, 6, 7], "m", params))
                           .result(timeout=30).token_ids)
        assert set(stepped_with) == {config.num_threads or measured_threads}
    assert outputs[0] == outputs[1]


def test_the_engine_checks_a_bases_threads_on_its_steps(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A base measured on loading to run on one thread is checked on its decode steps
    (threads.py): a few run on the engine's threads, the faster side is kept, the greedy
    tokens are those of a base that never changed threads, and the stats show it."""
    import functools

    import torch

    from gptstore.inference import Engine, EngineConfig, GenerationRequest, SamplingParams, registry
    from gptstore.inference.threads import StepThreads
    from gptstore.testing.tiny import make_tiny_model

    if torch.get_num_threads() < 2:
        pytest.skip("one intra-op thread here: nothing to check")
    folder = make_tiny_model("llama", tmp_path / "tiny", seed=0)
    from inference_helpers import causal_spec

    stepped_with = _threads_of_steps(monkeypatch)
    monkeypatch.setattr(precision, "step_threads", lambda *_a, **_kw: 1)
    monkeypatch.setattr(registry, "StepThreads",
                        functools.partial(StepThreads, first_check=3, samples=2))
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    outputs = []
    for config in (EngineConfig(num_threads=1), EngineConfig()):
        stepped_with.clear()
        with Engine(lambda _name: causal_spec(folder), config) as engine:
            outputs.append(engine.submit(GenerationRequest([5, 6, 7], "m", params))
                           .result(timeout=30).token_ids)
            (key, chosen), = engine.stats()["step_threads"].items()
            base = engine.registry._bases[key]
        if config.num_threads:
            assert set(stepped_with) == {1} and base.threads.checks == 0
        else:
            most = torch.get_num_threads()
            assert stepped_with[:4] == [1, 1, 1, 1]  # the prompt, then 3 decode steps
            assert sorted(stepped_with[4:8]) == [1, 1, most, most]  # the check
            assert base.threads.checks == 1 and chosen in (1, most)
            assert set(stepped_with[8:]) == {chosen}
    assert outputs[0] == outputs[1]


def test_a_timing_whose_order_is_clear_stops_after_one_round() -> None:
    """`_alternating_best(decided=...)`: one round after the warm-up where every pass is
    the fastest or that many times slower (a bf16 matmul without bf16 arithmetic); the
    rounds asked for where the passes are close."""
    import time as _time

    calls = {"fast": 0, "slow": 0, "close": 0}

    def counted(name: str, seconds: float) -> Any:
        def run() -> None:
            calls[name] += 1
            _time.sleep(seconds)
        return run

    precision._alternating_best({"fast": counted("fast", 0.0), "slow": counted("slow", 0.02)},
                                min_reps=3, budget_s=0.0, cap_s=5.0, decided=4.0)
    assert calls["fast"] == calls["slow"] == 2  # the warm-up and one round
    calls.update(fast=0)
    precision._alternating_best({"fast": counted("fast", 0.005),
                                 "close": counted("close", 0.006)},
                                min_reps=3, budget_s=0.0, cap_s=5.0, decided=4.0)
    assert calls["fast"] == calls["close"] == 4  # the warm-up and three rounds
