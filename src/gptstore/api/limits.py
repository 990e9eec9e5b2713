"""Per-key limits of the HTTP server: requests per minute, and fair admission of
inference requests across keys.

- `RateLimiter`: a token bucket per key, refilled continuously at the per-minute limit
  and holding 15 seconds' worth (`BURST_S`): a burst of a quarter of the limit passes at
  once, a steady flood gets 429 with the seconds until its next token in
  `Retry-After`. (A bucket of a whole minute would let a flooder send twice the limit in
  its first minute.)
- `FairGate`: inference requests take one of `slots` places (the engine's batch) before
  they reach the engine. When all are taken, waiting requests queue per key and a freed
  place goes to the next key in turn (round robin), not to the oldest request: one
  client with a hundred requests waiting holds one turn among the keys, not a hundred.
  One key holds at most `max_running_per_key` places (half the batch by default) even
  when the rest are free: the others stay open for other keys, whose requests then
  start at once instead of waiting for one of the flooder's to end. A key with
  `max_per_key` requests running or waiting gets 429 at once; when
  `max_waiting` requests wait in all, the server is busy: 503 with Retry-After, as the
  engine's own full queue answers.

Why here and not in the engine's scheduler: the engine knows requests, not callers,
and stays free of HTTP notions; the gate keeps the engine's own queue short (it admits
at most `slots` at a time), so the engine's FIFO order no longer decides who waits.
Both are in-process: several server processes each apply their own limits.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import OrderedDict, deque

from gptstore.errors import RateLimited, Unavailable

#: seconds of requests a full bucket holds
BURST_S = 15.0
#: buckets idle this long are forgotten (a full bucket is the same as no bucket)
_IDLE_S = 120.0


class RateLimiter:
    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, key: str | None) -> None:
        """Count one request of `key`; `RateLimited` when its bucket is empty."""
        if key is None or self.per_minute <= 0:
            return
        rate = self.per_minute / 60.0  # tokens per second
        capacity = max(1.0, rate * BURST_S)
        now = time.monotonic()
        with self._lock:
            tokens, at = self._buckets.pop(key, (capacity, now))
            tokens = min(capacity, tokens + (now - at) * rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                wait = (1.0 - tokens) / rate
                raise RateLimited(f"more than {self.per_minute} requests a minute from this "
                                  f"key; retry in {math.ceil(wait)} s "
                                  "(GPTSTORE_REQUESTS_PER_MINUTE)", retry_after=wait)
            self._buckets[key] = (tokens - 1.0, now)
            while self._buckets:  # the oldest entries first: drop idle ones
                oldest, (_, seen) = next(iter(self._buckets.items()))
                if now - seen < _IDLE_S:
                    break
                del self._buckets[oldest]


class FairGate:
    """Round-robin admission across keys (see the module docstring). Used from the
    event loop only."""

    def __init__(self, slots: int, max_per_key: int, max_waiting: int,
                 max_running_per_key: int | None = None,
                 uncapped: frozenset[str] = frozenset()) -> None:
        self.slots = slots
        self.max_per_key = max_per_key
        self.max_waiting = max_waiting
        #: places one key may hold at once, even when the others are free: the rest are
        #: kept for other keys, so a newcomer never waits behind a flooder's long
        #: requests (None: no cap); keys in `uncapped` (the local single user) have none
        self.max_running_per_key = max_running_per_key
        self.uncapped = uncapped
        self.running = 0
        self._running: dict[str, int] = {}  # places held, per key
        self._per_key: dict[str, int] = {}  # running + waiting, per key
        self._waiting: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._waiting.values())

    def _may_run(self, key: str) -> bool:
        cap = None if key in self.uncapped else self.max_running_per_key
        return cap is None or self._running.get(key, 0) < cap

    def _admit(self, key: str) -> None:
        self.running += 1
        self._running[key] = self._running.get(key, 0) + 1

    async def acquire(self, key: str) -> None:
        held = self._per_key.get(key, 0)
        if held >= self.max_per_key:
            raise RateLimited(f"this key already has {held} inference requests running or "
                              f"waiting, the most allowed (GPTSTORE_MAX_STREAMS_PER_KEY); "
                              "wait for one to finish", retry_after=1.0)
        # waiters that could run would hold the free places already: any left are keys
        # at their cap, so a key under its cap may pass them
        if self.running < self.slots and self._may_run(key):
            self._per_key[key] = held + 1
            self._admit(key)
            return
        waiting = self.waiting
        if waiting >= self.max_waiting:
            error = Unavailable(f"the server is busy: {self.running} requests running and "
                                f"{waiting} waiting; retry in a second")
            error.retry_after = 1.0  # type: ignore[attr-defined]
            raise error
        self._per_key[key] = held + 1
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, deque()).append(future)
        try:
            await future
        except BaseException:
            if future.done() and not future.cancelled():
                self.release(key)  # the place was handed over as we were cancelled
            else:
                self._forget(key, future)
                self._done(key)
            raise

    def release(self, key: str) -> None:
        self._done(key)
        self.running -= 1
        left = self._running.get(key, 1) - 1
        if left > 0:
            self._running[key] = left
        else:
            self._running.pop(key, None)
        self._dispatch()

    def _dispatch(self) -> None:
        """Hand free places to waiting keys in turn, skipping keys at their cap."""
        while self.running < self.slots:
            for next_key in list(self._waiting):
                if self._may_run(next_key):
                    break
            else:
                return  # nobody waiting, or only keys at their cap
            queue = self._waiting.pop(next_key)  # to the back of the turn order ...
            future = queue.popleft()
            if queue:
                self._waiting[next_key] = queue  # ... with the rest of its queue
            if not future.done():
                self._admit(next_key)
                future.set_result(None)

    def _done(self, key: str) -> None:
        left = self._per_key.get(key, 1) - 1
        if left > 0:
            self._per_key[key] = left
        else:
            self._per_key.pop(key, None)

    def _forget(self, key: str, future: asyncio.Future[None]) -> None:
        queue = self._waiting.get(key)
        if queue is not None and future in queue:
            queue.remove(future)
            if not queue:
                del self._waiting[key]
