"""The batching loop: one background thread that steps every running sequence together.

Continuous batching: requests join and leave between steps. Each step, per loaded
base, the scheduler

1. drops cancelled sequences (their KV slot is free before this step computes),
2. admits queued requests while fewer than `max_running` sequences run (one whose
   prefix a prompt ending its prefill in this step will cache waits for the next
   step, once: `_awaits_prefix`),
3. builds one batch of rows ordered by KV slot: every decoding sequence contributes its
   last token, newcomers contribute their prompt (chunked so one step prefills at most
   `max_step_tokens` prompt tokens, and while others decode only as many as keep the
   step within about twice a decode step: pacing.py), a newcomer's prompt starting
   after its longest cached prefix (prefix_cache.py), and a finished prompt offered
   to that cache,
4. runs the runner's forward once, samples each row with its own parameters, and
   streams a `TokenEvent` to each request's handle (detokenised, stop strings handled);
   a finished request offers its prompt and answer to the prefix cache, as the history
   of the chat's next turn.

Classification jobs run on the same thread between steps, so one thread owns the CPU's
matrix units and nothing races on a model. Knows no HTTP and no store names: sequences
arrive with their base and adapter already loaded by the registry.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch

from gptstore.errors import Unavailable
from gptstore.inference.detokenize import IncrementalDetokenizer, StopStringMatcher
from gptstore.inference.handle import RequestHandle, Wakeups
from gptstore.inference.kv_cache import Slot
from gptstore.inference.lora import LoraBatch
from gptstore.inference.models import RowInput
from gptstore.inference.pacing import PrefillPacer
from gptstore.inference.prefix_cache import BlockScores, PrefixBlock, ScoresReader
from gptstore.inference.registry import LoadedAdapter, LoadedBase, ModelRegistry
from gptstore.inference.sampling import SamplerState, sample
from gptstore.inference.types import (
    EngineConfig,
    FinishReason,
    GenerationRequest,
    PromptLogprobs,
    TokenEvent,
    TopLogprob,
    Usage,
)

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Sequence:
    """A request in flight: its tokens, cache slot and streaming state."""

    request: GenerationRequest
    handle: RequestHandle
    base: LoadedBase
    adapter: LoadedAdapter | None
    max_new_tokens: int
    stop_ids: frozenset[int]
    sampler: SamplerState
    detok: IncrementalDetokenizer
    stopper: StopStringMatcher
    output: list[int] = field(default_factory=list)
    slot: Slot | None = None
    computed: int = 0  # tokens whose keys/values are in the cache
    cached: int = 0  # prompt tokens the prefix cache gave it (not computed)
    chunked: bool = False  # its prompt is being prefilled in paced chunks (pacing.py)
    cancelled: bool = False
    held: bool = False  # held in the queue for a prefix another prompt computed
    # the prompt's own scores, filled chunk by chunk when SamplingParams.prompt_logprobs
    # asks for them; sent with the request's first event
    prompt_scores: PromptLogprobs | None = None

    @property
    def prompt(self) -> list[int]:
        return self.request.prompt_ids

    def usage(self) -> Usage:
        return Usage(len(self.prompt), len(self.output), self.cached)

    @property
    def scores_prompt(self) -> bool:
        return self.request.params.prompt_logprobs is not None


class Scheduler:
    """Owns the queue, the running batches and the thread that steps them."""

    def __init__(self, config: EngineConfig, registry: ModelRegistry) -> None:
        self.config = config
        self.registry = registry
        self._cond = threading.Condition()
        self._waiting: deque[Sequence] = deque()
        self._running: dict[str, list[Sequence]] = {}
        self._jobs: deque[tuple[Callable[[], None], Future[Any]]] = deque()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._threads = 0  # torch intra-op threads the loop runs with now
        self._pacers: dict[str, PrefillPacer] = {}  # per base key
        self.steps = 0  # forward steps run so far (tests and stats)

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name="gptstore-engine",
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._cond:
            leftovers = list(self._waiting) + [s for seqs in self._running.values() for s in seqs]
            jobs = list(self._jobs)
            self._jobs.clear()
            self._waiting.clear()
            self._running.clear()
        with torch.inference_mode():  # releasing slots moves cache tensors made in it
            for seq in leftovers:
                self._finish(seq, "cancelled")
        for _job, future in jobs:  # never run: their callers must not wait forever
            if future.set_running_or_notify_cancel():
                future.set_exception(Unavailable("the engine shut down before this ran"))

    # -- called from any thread ---------------------------------------------------------

    def add(self, seq: Sequence) -> None:
        with self._cond:
            if self._stopping:
                raise Unavailable("the engine is shutting down; retry on another server")
            if len(self._waiting) >= self.config.max_queue:
                error = Unavailable(
                    f"the engine is busy: {self.running_count} requests running and "
                    f"{len(self._waiting)} queued; retry in {self.config.retry_after_s:g} s",
                )
                error.retry_after = self.config.retry_after_s  # type: ignore[attr-defined]
                raise error
            self._waiting.append(seq)
            self._cond.notify_all()

    def cancel(self, seq: Sequence) -> None:
        with self._cond:
            seq.cancelled = True
            queued = seq in self._waiting
            if queued:
                self._waiting.remove(seq)
            self._cond.notify_all()
        if queued:
            self._finish(seq, "cancelled")
        else:  # the consumer returns now; the slot is freed before the next step
            seq.handle._push(TokenEvent(token_id=None, text="", finish_reason="cancelled",
                                        usage=seq.usage()))

    def run_job(self, job: Callable[[], Any]) -> Future[Any]:
        """Run `job` on the engine thread between steps; its result comes as a Future."""
        future: Future[Any] = Future()

        def wrapped() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(job())
            except BaseException as error:  # delivered to the caller, not raised here
                future.set_exception(error)

        with self._cond:
            if self._stopping:
                raise Unavailable("the engine is shutting down; retry on another server")
            self._jobs.append((wrapped, future))
            self._cond.notify_all()
        return future

    @property
    def on_engine_thread(self) -> bool:
        """Whether the caller is the engine thread (or no engine thread runs)."""
        return self._thread is None or threading.current_thread() is self._thread

    @property
    def running_count(self) -> int:
        return sum(len(seqs) for seqs in self._running.values())

    @property
    def waiting_count(self) -> int:
        return len(self._waiting)

    # -- the loop ---------------------------------------------------------------------

    def _loop(self) -> None:
        if self.config.num_threads:
            torch.set_num_threads(self.config.num_threads)
        self._threads = torch.get_num_threads()
        while True:
            with self._cond:
                while not (self._stopping or self._waiting or self._jobs or self._running):
                    self._cond.wait()
                if self._stopping:
                    return
                jobs = list(self._jobs)
                self._jobs.clear()
            try:
                for job, _future in jobs:
                    job()  # never raises: run_job hands its error to the caller
                self._drop_cancelled()
                self._admit()
                for key in list(self._running):
                    seqs = self._running.get(key)
                    if seqs:
                        self._step_safely(seqs)
                    if not self._running.get(key):
                        self._running.pop(key, None)
            except Exception as error:
                # the last resort: a fault outside a step that the parts above do not
                # take on themselves (a failed admission fails its request alone, a
                # failed release is logged): the running requests fail, and the loop
                # goes on. Were it to end, every request after it would wait forever.
                log.exception("engine loop failed")
                for key in list(self._running):
                    self._fail(self._running.pop(key), error)

    def _step_safely(self, seqs: list[Sequence]) -> None:
        """A failing step fails the requests of that base, never the engine thread."""
        try:
            with torch.inference_mode():
                self._step_base(seqs)
        except Exception as error:
            log.exception("engine step failed")
            self._fail(seqs, error)

    def _fail(self, seqs: list[Sequence], error: Exception) -> None:
        """Fail each of `seqs` (removing it from the list) with `error`, then give back
        its slot and its base (`_release`): the caller hears of the error first."""
        # in inference mode: releasing a slot moves another in the cache's tensors
        with torch.inference_mode():
            for seq in list(seqs):
                seqs.remove(seq)
                seq.handle._fail(error)
                self._release(seq)

    def _drop_cancelled(self) -> None:
        with torch.inference_mode():  # releasing a slot moves another in the cache
            for seqs in self._running.values():
                for seq in [s for s in seqs if s.cancelled]:
                    seqs.remove(seq)
                    self._release(seq)

    def _admit(self) -> None:
        """Move waiting requests into free slots, their cached prefixes copied in. A
        request whose admission fails (a slot or a prefix copy that raises) fails alone;
        the others keep their places."""
        admitted: list[Sequence] = []
        failed: list[tuple[Sequence, Exception]] = []
        with self._cond:
            # held for a prefix another prompt computes now; they keep their places
            # (the capacity they will take is not given to requests behind them)
            later: list[Sequence] = []
            try:
                while self._waiting and \
                        self.running_count + len(later) < self.config.max_running:
                    seq = self._waiting.popleft()
                    try:
                        runner = seq.base.runner
                        if runner.free_slots <= sum(s.base is seq.base for s in later):
                            self._waiting.appendleft(seq)  # no slot left (held counted)
                            break
                        if not seq.held and self._awaits_prefix(seq):
                            seq.held = True  # once: its blocks are cached next step
                            later.append(seq)
                            continue
                        seq.slot = runner.allocate()
                    except Exception as error:
                        failed.append((seq, error))
                        continue
                    self._running.setdefault(seq.base.key, []).append(seq)
                    admitted.append(seq)
            finally:
                self._waiting.extendleft(reversed(later))
        # outside the lock (copying tensors must not block submit()), in inference mode
        # (the cache tensors were made in it, and only there may they be written)
        with torch.inference_mode():
            for seq in admitted:
                try:
                    self._load_prefix(seq)
                except Exception as error:
                    self._running[seq.base.key].remove(seq)
                    failed.append((seq, error))
        for seq, error in failed:
            log.exception("admitting a request failed", exc_info=error)
            self._fail([seq], error)

    @staticmethod
    def _load_prefix(seq: Sequence) -> None:
        """Copy the cached part of an admitted request's prompt into its slot."""
        assert seq.slot is not None
        k = seq.request.params.prompt_logprobs
        blocks = seq.base.runner.load_prefix(seq.slot, seq.prompt, _namespace(seq), k)
        seq.computed = sum(block.n_tokens for block in blocks)
        if seq.scores_prompt:
            seq.prompt_scores = _cached_scores(seq, blocks)
            # the last cached position runs again: its logits score the token after the
            # blocks, which another prompt may have had different
            seq.computed = seq.slot.length = max(0, seq.computed - 1)
        seq.cached = seq.computed

    def _awaits_prefix(self, seq: Sequence) -> bool:
        """Whether a prompt that finishes its prefill in the coming step (same base and
        adapter) will cache more of `seq`'s prefix than the cache holds: `seq` then
        waits in the queue for that step rather than computing the same keys/values
        (and scores) beside it. Many requests with one new system prompt, or every
        choice of a multiple-choice question, arrive together; SGLang's scheduler holds
        such requests back the same way (its in-batch prefix caching). The steps are
        compute-bound, so the wait costs `seq` about what computing the shared part
        itself would have; a prompt whose prefill needs more than the coming step is
        not waited for, and a request is held once at most."""
        cache = seq.base.runner.prefix_cache
        if cache is None:
            return False
        size, namespace = cache.block_tokens, _namespace(seq)
        k = seq.request.params.prompt_logprobs
        tokens = seq.prompt[:len(seq.prompt) - 1]  # a lookup keeps one token for logits
        if len(tokens) < size:
            return False
        have = cache.cached_blocks(namespace, tokens, k)
        running = self._running.get(seq.base.key, [])
        pacer, budget = self._prefill_budget(seq.base, running)
        for other in running:
            remaining = len(other.prompt) - other.computed
            # the rule of _step_base: a short prompt whole, a long one in budget chunks
            ends = remaining <= budget or (not other.chunked and
                                           pacer.takes_whole(remaining, 0))
            if remaining <= 0 or not ends or _namespace(other) != namespace:
                continue
            other_k = other.request.params.prompt_logprobs
            if k is not None and (other_k is None or other_k < k):
                continue  # its blocks will keep no scores for this prompt
            if _shared_blocks(tokens, other.prompt, size) > have:
                return True
        return False

    def _prefill_budget(self, base: LoadedBase, seqs: list[Sequence]) -> tuple[PrefillPacer, int]:
        """The pacer of `base` and how many prompt tokens its next step may prefill
        beside its running `seqs` (a short prompt may exceed it: pacing.py)."""
        pacer = self._pacers.get(base.key)
        if pacer is None:
            pacer = self._pacers[base.key] = PrefillPacer(
                self.config.max_step_tokens, fast_rows=base.runner.fast_step_rows)
        if not self.config.paced_prefill:
            return pacer, self.config.max_step_tokens
        decoding = sum(1 for s in seqs if s.computed >= len(s.prompt) - 1)
        return pacer, pacer.budget(decoding)

    def _step_base(self, seqs: list[Sequence]) -> None:
        """One forward step for the running sequences of one base."""
        seqs.sort(key=lambda s: s.slot.index if s.slot else 0)
        rows: list[RowInput] = []
        stepped: list[Sequence] = []
        pacer, budget = self._prefill_budget(seqs[0].base, seqs)
        prefill_tokens = 0
        for seq in seqs:
            total = len(seq.prompt) + len(seq.output)
            if seq.computed < len(seq.prompt) - 1:  # (the rest of) the prompt, chunked
                remaining = len(seq.prompt) - seq.computed
                # a short prompt whole (pacing.py); a long one in the budget's chunks, to
                # its end (its last chunk is not a short prompt)
                whole = not seq.chunked and pacer.takes_whole(remaining, prefill_tokens)
                n = remaining if whole else min(remaining, budget)
                if n <= 0:
                    continue
                seq.chunked = seq.chunked or n < remaining
                budget -= n
                prefill_tokens += n
                tokens = seq.prompt[seq.computed:seq.computed + n]
            else:  # decoding: the one token not yet in the cache
                n = 1
                tokens = [seq.output[-1] if seq.output else seq.prompt[-1]]
            rows.append(RowInput(seq.slot, tokens, seq.computed,
                                 want_logits=seq.computed + n == total,
                                 all_logits=seq.scores_prompt and seq.computed < len(seq.prompt)))
            stepped.append(seq)
        if not rows:
            return
        adapters = [s.adapter.adapter if s.adapter else None for s in stepped]
        lora = LoraBatch.build(
            [a for a, r in zip(adapters, rows, strict=True) for _ in r.token_ids],
            [a for a, r in zip(adapters, rows, strict=True) for _ in range(r.n_outputs)],
        )
        runner, threads = stepped[0].base.runner, stepped[0].base.threads
        decode_rows = len(rows) - sum(1 for r in rows if len(r.token_ids) > 1)
        step_threads = threads.next(prefill_tokens, decode_rows)
        if step_threads != self._threads:  # per base: measured, then checked (threads.py)
            self._threads = step_threads
            torch.set_num_threads(step_threads)
        started = time.perf_counter()
        logits = runner.forward(rows, lora)
        seconds = time.perf_counter() - started
        if self._threads == threads.chosen:  # a check's other side would mislead the pacer
            pacer.observe(seconds, prefill_tokens, decode_rows)
        threads.observe(self._threads, seconds, prefill_tokens, decode_rows)
        self.steps += 1
        sampled: list[Sequence] = []
        sample_rows: list[int] = []  # each sampled sequence's row of `logits`
        # (sequence, its prompt's scores): taken from the sequence by its first event
        prompts_done: list[tuple[Sequence, PromptLogprobs | None]] = []
        finished: list[Sequence] = []
        out = 0
        for seq, row in zip(stepped, rows, strict=True):
            before = seq.computed
            seq.computed += len(row.token_ids)
            if seq.slot is not None:
                seq.slot.length = seq.computed
                if before < len(seq.prompt) <= seq.computed:  # the prompt is all cached now
                    prompts_done.append((seq, seq.prompt_scores))
            if row.all_logits:
                _score_prompt(seq, logits[out:out + row.n_outputs], before)
            out += row.n_outputs
            if row.want_logits and seq.max_new_tokens == 0:  # scored, nothing to generate
                finished.append(seq)
                self._finish(seq, "length", release=False)
            elif row.want_logits:
                sampled.append(seq)
                sample_rows.append(out - 1)
        if sampled:
            if len(sample_rows) < logits.shape[0]:
                logits = logits[sample_rows]
            result = sample(logits, [s.sampler for s in sampled])
            wakeups = Wakeups()  # the step's streams woken together
            try:
                for i, seq in enumerate(sampled):
                    reason = self._emit(seq, result.token_ids[i], result.logprobs[i],
                                        result.top_logprobs[i], wakeups)
                    if reason is not None:
                        finished.append(seq)
            finally:
                wakeups.deliver()
        # the prompts' keys/values go to the prefix cache after the first tokens are out
        # (copying them must not delay those), before a finished sequence frees its slot
        for seq, scores in prompts_done:
            assert seq.slot is not None
            read_scores = None
            if scores is not None and len(scores.logprobs) == len(seq.prompt):
                read_scores = _scores_reader(scores, seq.request.params.prompt_logprobs or 0)
            runner.store_prefix(seq.slot, seq.prompt, _namespace(seq), read_scores)
        for seq in finished:
            # the answer's keys/values too: a chat's next turn sends it back as history
            if seq.slot is not None and seq.computed > len(seq.prompt) and not seq.cancelled:
                tokens = (seq.prompt + seq.output)[:seq.computed]
                runner.store_prefix(seq.slot, tokens, _namespace(seq))
            seqs.remove(seq)
            self._release(seq)

    # -- per-token bookkeeping ----------------------------------------------------------

    def _emit(self, seq: Sequence, token: int, logprob: float | None,
              top: list[tuple[int, float]] | None,
              wakeups: Wakeups | None = None) -> FinishReason | None:
        seq.output.append(token)
        reason: FinishReason | None = None
        if token in seq.stop_ids:
            reason = "stop"
            text = self._flush(seq)  # the eos token itself adds no text
        else:
            text, hit = seq.stopper.push(seq.detok.push(token))
            if hit:
                reason = "stop"
            elif (len(seq.output) >= seq.max_new_tokens
                  or len(seq.prompt) + len(seq.output) >= seq.base.runner.context_length):
                reason = "length"
                text += self._flush(seq)
        tokenizer = seq.base.tokenizer
        top_list = None
        if top is not None:
            top_list = [TopLogprob(t, tokenizer.decode([t]), lp) for t, lp in top]
        usage = seq.usage() if reason else None
        if seq.cancelled:
            return reason or "cancelled"
        seq.handle._push(TokenEvent(token_id=token, text=text, logprob=logprob,
                                    top_logprobs=top_list, finish_reason=reason, usage=usage,
                                    prompt_logprobs=self._take_scores(seq)),
                         wakeups)
        return reason

    @staticmethod
    def _take_scores(seq: Sequence) -> PromptLogprobs | None:
        """The prompt's scores, once, for the request's first event; none while part of
        the prompt is unscored (a request stopped in its prefill)."""
        scores, seq.prompt_scores = seq.prompt_scores, None
        if scores is not None and len(scores.logprobs) < len(seq.prompt):
            return None
        return scores

    @staticmethod
    def _flush(seq: Sequence) -> str:
        """Text held back at the end (an incomplete character, a stop-string prefix)."""
        tail, hit = seq.stopper.push(seq.detok.flush())
        return tail if hit else tail + seq.stopper.flush()

    def _release(self, seq: Sequence) -> None:
        """Give back a sequence's cache slot and its pins on its base and adapter. A
        slot whose release raises is logged and stays taken (one slot fewer until the
        base is reloaded), not raised: the pins still go, and the engine goes on."""
        try:
            if seq.slot is not None:
                seq.base.runner.release(seq.slot)
        except Exception:
            log.exception("releasing a cache slot failed; it stays taken")
        finally:
            seq.slot = None
            self.registry.release(seq.base, seq.adapter)

    def _finish(self, seq: Sequence, reason: FinishReason, release: bool = True) -> None:
        if release:
            self._release(seq)
        seq.handle._push(TokenEvent(token_id=None, text="", finish_reason=reason,
                                    usage=seq.usage(),
                                    prompt_logprobs=self._take_scores(seq)))


#: prompt positions scored at once: [rows, vocab] fp32 log-softmax stays within ~25 MB
_SCORE_ROWS = 128


def _score_prompt(seq: Sequence, logits: torch.Tensor, start: int) -> None:
    """Add the scores of the prompt tokens that follow positions start.. (one row of
    `logits` each): the token's logprob under the model's own distribution (log-softmax
    of the raw logits, as sampled tokens report theirs) and the k most likely tokens."""
    scores = seq.prompt_scores
    assert scores is not None
    k = seq.request.params.prompt_logprobs or 0
    targets = seq.prompt[start + 1:start + 1 + logits.shape[0]]  # the last may have none
    decode = seq.base.tokenizer.decode
    for first in range(0, len(targets), _SCORE_ROWS):
        block = targets[first:first + _SCORE_ROWS]
        logprobs = torch.log_softmax(logits[first:first + len(block)].float(), dim=-1)
        own = logprobs.gather(1, torch.tensor(block)[:, None])[:, 0].tolist()
        scores.logprobs.extend(own)
        if k:
            values, indices = logprobs.topk(k, dim=-1)
            for vs, ids in zip(values.tolist(), indices.tolist(), strict=True):
                scores.top_logprobs.append([TopLogprob(t, decode([t]), v)
                                            for t, v in zip(ids, vs, strict=True)])
        else:
            scores.top_logprobs.extend([] for _ in block)


def _cached_scores(seq: Sequence, blocks: list[PrefixBlock]) -> PromptLogprobs:
    """The scores of the prompt tokens in cached blocks (the first token has none)."""
    scores = PromptLogprobs([None], [None])
    k = seq.request.params.prompt_logprobs or 0
    decode = seq.base.tokenizer.decode
    for i, block in enumerate(blocks):
        cached = block.scores
        assert cached is not None  # the lookup took scored blocks only
        first = 1 if i == 0 else 0
        scores.logprobs.extend(cached.logprobs[first:].tolist())
        for ids, values in zip(cached.top_ids[first:, :k].tolist(),
                               cached.top_logprobs[first:, :k].tolist(), strict=True):
            scores.top_logprobs.append([TopLogprob(t, decode([t]), v)
                                        for t, v in zip(ids, values, strict=True)])
    return scores


def _scores_reader(scores: PromptLogprobs, k: int) -> ScoresReader:
    """Positions [start, end) of a whole prompt's scores, as a prefix block keeps them."""

    def read(start: int, end: int) -> BlockScores:
        tops = [top or [] for top in scores.top_logprobs[start:end]]  # the first: None
        return BlockScores(
            torch.tensor([math.nan if x is None else x for x in scores.logprobs[start:end]],
                         dtype=torch.float32),
            torch.tensor([[t.token_id for t in top] or [0] * k for top in tops],
                         dtype=torch.int32).reshape(end - start, k),
            torch.tensor([[t.logprob for t in top] or [math.nan] * k for top in tops],
                         dtype=torch.float32).reshape(end - start, k))

    return read


def _shared_blocks(a: list[int], b: list[int], size: int) -> int:
    """How many whole blocks of `size` tokens `a` and `b` start with in common."""
    n = 0
    while (n + 1) * size <= min(len(a), len(b)) and \
            a[n * size:(n + 1) * size] == b[n * size:(n + 1) * size]:
        n += 1
    return n


def _namespace(seq: Sequence) -> str:
    """Whose keys/values the sequence computes: its adapter's, or the base's ("")."""
    return seq.adapter.adapter.key if seq.adapter is not None else ""
