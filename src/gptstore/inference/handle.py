"""`RequestHandle`: the caller's end of one running request.

The scheduler thread pushes `TokenEvent`s in; the caller reads them as a synchronous
iterator (CLI, tests) or an asynchronous one (the FastAPI layer, without blocking its
event loop), or waits for the whole `Completion`. `cancel()` frees the request's slot
before the next engine step. Leaving an iteration early (break, client disconnect)
cancels the request too: nobody will read the rest, so it should not cost a slot.
Knows nothing of models or HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator

from gptstore.inference.types import Completion, FinishReason, TokenEvent, TopLogprob, Usage


class Wakeups:
    """Asynchronous readers to wake, collected over one engine step and woken with one
    `call_soon_threadsafe` per event loop. Why: each call writes to the loop's self-pipe
    and wakes it, so 16 streams each woken on its own cost 16 system calls and loop
    turns a step on the engine's thread and the server's, where one does."""

    def __init__(self) -> None:
        self._by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Event]] = {}

    def add_all(self, waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]]) -> None:
        for loop, ready in waiters:
            self._by_loop.setdefault(loop, []).append(ready)

    def deliver(self) -> None:
        for loop, readies in self._by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nothing to wake
                loop.call_soon_threadsafe(_set_all, readies)
        self._by_loop.clear()


def _set_all(readies: list[asyncio.Event]) -> None:
    for ready in readies:
        ready.set()


class RequestHandle:
    """Events of one request, produced by the engine thread, consumed by anyone."""

    def __init__(self, request_id: str, prompt_tokens: int,
                 on_cancel: Callable[[RequestHandle], None] | None = None) -> None:
        self.request_id = request_id
        self.prompt_tokens = prompt_tokens
        self._events: list[TokenEvent] = []
        self._cond = threading.Condition()
        self._async_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self._on_cancel = on_cancel
        self.cancelled = False
        self.finished = False

    # -- producer side (engine thread) ---------------------------------------------

    def _push(self, event: TokenEvent, wakeups: Wakeups | None = None) -> None:
        """Add an event and wake its readers: asynchronous ones now, or with `wakeups`
        when the caller delivers them (once for a whole engine step)."""
        with self._cond:
            if self.finished:
                return
            self._events.append(event)
            if event.finish_reason is not None:
                self.finished = True
            self._cond.notify_all()
            waiters = list(self._async_waiters)
        pending = wakeups if wakeups is not None else Wakeups()
        pending.add_all(waiters)
        if wakeups is None:
            pending.deliver()

    def _fail(self, error: BaseException) -> None:
        self._push(TokenEvent(token_id=None, text="", finish_reason="error", error=error,
                              usage=Usage(self.prompt_tokens, self._completion_tokens())))

    def _completion_tokens(self) -> int:
        return sum(1 for e in self._events if e.token_id is not None)

    # -- consumer side --------------------------------------------------------------

    def cancel(self) -> None:
        """Stop generating; the slot is free before the next engine step."""
        if self.finished or self.cancelled:
            return
        self.cancelled = True
        if self._on_cancel is not None:
            self._on_cancel(self)

    def __iter__(self) -> Iterator[TokenEvent]:
        cursor = 0
        try:
            while True:
                with self._cond:
                    while cursor >= len(self._events):
                        self._cond.wait()
                    batch = self._events[cursor:]
                cursor += len(batch)
                for event in batch:
                    _raise_if_error(event)
                    yield event
                    if event.finish_reason is not None:
                        return
        finally:
            if not self.finished:
                self.cancel()

    async def __aiter__(self) -> AsyncIterator[TokenEvent]:
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        with self._cond:
            self._async_waiters.append((loop, ready))
        cursor = 0
        try:
            while True:
                ready.clear()
                with self._cond:
                    batch = self._events[cursor:]
                if not batch:
                    await ready.wait()
                    continue
                cursor += len(batch)
                for event in batch:
                    _raise_if_error(event)
                    yield event
                    if event.finish_reason is not None:
                        return
        finally:
            with self._cond:
                self._async_waiters.remove((loop, ready))
            if not self.finished:
                self.cancel()

    def result(self, timeout: float | None = None) -> Completion:
        """Block until the request finishes and return all of its output."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.finished, timeout=timeout):
                raise TimeoutError(f"request {self.request_id} did not finish in {timeout} s")
            events = list(self._events)
        return self._collect(events)

    async def aresult(self) -> Completion:
        async for _ in self:
            pass
        with self._cond:
            return self._collect(list(self._events))

    def _collect(self, events: list[TokenEvent]) -> Completion:
        for event in events:
            _raise_if_error(event)
        tokens = [e.token_id for e in events if e.token_id is not None]
        last = events[-1]
        want_logprobs = any(e.logprob is not None for e in events)
        want_top = any(e.top_logprobs is not None for e in events)
        finish: FinishReason = last.finish_reason or "stop"
        token_events = [e for e in events if e.token_id is not None]
        top: list[list[TopLogprob]] | None = None
        if want_top:
            top = [e.top_logprobs or [] for e in token_events]
        return Completion(
            request_id=self.request_id,
            token_ids=tokens,
            text="".join(e.text for e in events),
            finish_reason=finish,
            usage=last.usage or Usage(self.prompt_tokens, len(tokens)),
            logprobs=[e.logprob or 0.0 for e in token_events] if want_logprobs else None,
            top_logprobs=top,
            prompt_logprobs=next((e.prompt_logprobs for e in events
                                  if e.prompt_logprobs is not None), None),
        )


def _raise_if_error(event: TokenEvent) -> None:
    if event.error is not None:
        raise event.error
