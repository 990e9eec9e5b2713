"""The per-key limits on their own: the token bucket, and the fair gate's turn order,
per-key cap, busy answer and cancelled waiters."""

from __future__ import annotations

import asyncio

import pytest

from gptstore.api.limits import FairGate, RateLimiter
from gptstore.errors import RateLimited, Unavailable


def test_the_bucket_passes_a_burst_then_refuses_with_the_wait(monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    now = [100.0]
    monkeypatch.setattr("gptstore.api.limits.time.monotonic", lambda: now[0])
    limiter = RateLimiter(per_minute=60)  # one a second, bursts of 15
    for _ in range(15):
        limiter.check("a")
    with pytest.raises(RateLimited) as refused:
        limiter.check("a")
    assert refused.value.retry_after == pytest.approx(1.0)
    limiter.check("b")  # another key: its own bucket
    now[0] += 1.0  # one token back
    limiter.check("a")
    with pytest.raises(RateLimited):
        limiter.check("a")
    limiter.check(None)  # the local single user has no limit
    RateLimiter(per_minute=0).check("a")  # 0: no limit


def test_freed_places_go_round_robin_across_keys() -> None:
    async def scenario() -> list[str]:
        gate = FairGate(slots=1, max_per_key=100, max_waiting=100)
        admitted: list[str] = []
        await gate.acquire("holder")

        async def request(key: str) -> None:
            await gate.acquire(key)
            admitted.append(key)
            await asyncio.sleep(0)
            gate.release(key)

        # the flooder queues five requests before two others queue one each
        tasks = [asyncio.create_task(request("flood")) for _ in range(5)]
        await asyncio.sleep(0)
        tasks += [asyncio.create_task(request(k)) for k in ("good1", "good2")]
        await asyncio.sleep(0)
        assert gate.waiting == 7
        gate.release("holder")
        await asyncio.gather(*tasks)
        assert gate.running == 0 and gate.waiting == 0
        return admitted

    # FIFO would admit flood x5 first; in turn, each key gets the next free place
    assert asyncio.run(scenario()) == ["flood", "good1", "good2", "flood", "flood", "flood",
                                       "flood"]


def test_per_key_cap_busy_gate_and_cancelled_waiters() -> None:
    async def scenario() -> None:
        gate = FairGate(slots=1, max_per_key=2, max_waiting=2)
        await gate.acquire("a")
        waiter = asyncio.create_task(gate.acquire("a"))
        await asyncio.sleep(0)
        with pytest.raises(RateLimited):  # a's two: one running, one waiting
            await gate.acquire("a")
        other = asyncio.create_task(gate.acquire("b"))
        await asyncio.sleep(0)
        with pytest.raises(Unavailable, match="busy"):  # two waiting in all
            await gate.acquire("c")
        waiter.cancel()  # a client that leaves gives its place in the line up
        await asyncio.gather(waiter, return_exceptions=True)
        assert gate.waiting == 1
        gate.release("a")
        await other  # b got the freed place
        assert gate.running == 1
        gate.release("b")
        assert gate.running == 0 and gate.waiting == 0
        await gate.acquire("a")  # a's count was given back
        assert gate.running == 1

    asyncio.run(scenario())


def test_one_key_holds_at_most_its_share_even_when_places_are_free() -> None:
    async def scenario() -> None:
        gate = FairGate(slots=4, max_per_key=10, max_waiting=10, max_running_per_key=2,
                        uncapped=frozenset({"local"}))
        await gate.acquire("flood")
        await gate.acquire("flood")
        third = asyncio.create_task(gate.acquire("flood"))  # at its cap: it waits
        await asyncio.sleep(0)
        assert gate.running == 2 and gate.waiting == 1 and not third.done()
        await gate.acquire("good")  # passes the flooder's waiter: a place is free
        assert gate.running == 3
        gate.release("flood")  # the flooder's waiter takes the freed place
        await third
        assert gate.running == 3 and gate.waiting == 0
        gate.release("good")
        gate.release("flood")
        gate.release("flood")
        assert gate.running == 0
        for _ in range(4):  # the local single user is not capped
            await gate.acquire("local")
        assert gate.running == 4

    asyncio.run(scenario())
