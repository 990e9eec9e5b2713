"""The OpenAI serving layer: validates wire requests, renders prompts, resolves the
model, drives the engine and builds responses and SSE chunks.

It is a translation (as Ollama's OpenAI middleware is): wire types from protocol.py in,
the engine's plain `GenerationRequest` / `SamplingParams` out, and back. The routers only
parse HTTP and pick JSON or SSE; the engine knows no HTTP.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from gptstore.api.openai.protocol import (
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionChunkChoice,
    ChatCompletionMessage,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChoiceLogprobs,
    ClassificationRequest,
    ClassificationResponse,
    ClassificationResult,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    DeltaMessage,
    LabelScore,
    LogprobEntry,
    SamplingFields,
    TopLogprobEntry,
    UsageInfo,
    new_id,
    now,
)
from gptstore.errors import GptStoreError, InvalidRequest

# OpenAI's default temperature (top_p defaults to 1.0 where it is read); we keep it.
DEFAULT_TEMPERATURE = 1.0


@dataclass
class _Choice:
    """One engine request behind one response choice."""

    index: int
    handle: Any  # RequestHandle
    prompt_text: str = ""
    prompt_ids: list[int] | None = None


def _unsupported(field: str, value: Any) -> None:
    if value:
        raise InvalidRequest(f"{field} is not supported by gptstore yet; leave it out",
                             param=field)


def sampling_params(req: SamplingFields, *, max_tokens: int | None, logprobs: bool,
                    top_logprobs: int, index: int, strict: bool = False,
                    prompt_logprobs: int | None = None) -> Any:
    """The engine's SamplingParams of one choice. `strict`: max_tokens is the client's
    own number, so prompt and max_tokens must fit the context (OpenAI's 400
    context_length_exceeded); a server default is capped instead."""
    from gptstore.inference.types import SamplingParams

    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    seed = None if req.seed is None else req.seed + index  # n choices must differ
    return SamplingParams(
        max_tokens=max_tokens,
        max_tokens_strict=strict,
        prompt_logprobs=prompt_logprobs,
        temperature=DEFAULT_TEMPERATURE if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        top_k=req.top_k or 0,
        seed=seed,
        stop=stop,
        repetition_penalty=req.repetition_penalty or 1.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        presence_penalty=req.presence_penalty or 0.0,
        logprobs=logprobs,
        top_logprobs=top_logprobs,
        ignore_eos=req.ignore_eos,
        logit_bias=dict(req.logit_bias or {}),
    )


def _asked(request: Any, *fields: str) -> bool:
    """Whether the client gave one of `fields` itself (with a value): its own number is
    held to the context (OpenAI's rule); a default (completions' 16, the server's cap)
    is capped at what the context leaves."""
    return any(field in request.model_fields_set and getattr(request, field) is not None
               for field in fields)


def _finish(reason: str | None) -> Any:
    return "length" if reason == "length" else ("stop" if reason else None)


def _token_text(tokenizer: Any, token_id: int) -> str:
    return str(tokenizer.decode([token_id]))


def _chat_logprobs(tokenizer: Any, events: Sequence[Any]) -> ChoiceLogprobs:
    entries = []
    for e in events:
        if e.token_id is None or e.logprob is None:
            continue
        text = _token_text(tokenizer, e.token_id)
        entries.append(LogprobEntry(
            token=text, logprob=e.logprob, bytes=list(text.encode()),
            top_logprobs=[TopLogprobEntry(token=t.text, logprob=t.logprob,
                                          bytes=list(t.text.encode()))
                          for t in (e.top_logprobs or [])],
        ))
    return ChoiceLogprobs(content=entries)


async def _results(choices: list[_Choice]) -> list[Any]:
    """Every choice's final result; if the wait is cancelled (the client went away),
    the engine stops their sequences at once, as a closed stream does."""
    try:
        return list(await asyncio.gather(*(c.handle.aresult() for c in choices)))
    except BaseException:
        for choice in choices:
            choice.handle.cancel()
        raise


def sse(payload: Any) -> str:
    body = payload.model_dump_json(exclude_unset=False) if hasattr(payload, "model_dump_json") \
        else json.dumps(payload)
    return f"data: {body}\n\n"


class OpenAIServing:
    """Chat, completions and classifications over one engine."""

    def __init__(self, engine: Any, *, max_tokens: int | None = None) -> None:
        self.engine = engine
        #: the deployment's cap on new tokens per choice (GPTSTORE_MAX_TOKENS)
        self.max_tokens = max_tokens

    def _max_tokens(self, asked: int | None, param: str) -> int | None:
        """The request's max_tokens, refused above the deployment's cap (OpenAI answers
        400 for a max_tokens it cannot give); left out, the cap itself."""
        if self.max_tokens is None:
            return asked
        if asked is not None and asked > self.max_tokens:
            raise InvalidRequest(f"{param} is {asked}, over this server's limit of "
                                 f"{self.max_tokens} new tokens (GPTSTORE_MAX_TOKENS); ask "
                                 "for fewer", param=param)
        return asked if asked is not None else self.max_tokens

    # -- helpers ----------------------------------------------------------------------

    async def _tokenizer(self, model: str) -> Any:
        # may load the model (seconds): keep the event loop free
        return await asyncio.to_thread(self.engine.tokenizer, model)

    async def _submit(self, model: str, prompt_ids: list[int], params: Any,
                      prompt_param: str) -> Any:
        from gptstore.inference.types import GenerationRequest

        try:
            return await asyncio.to_thread(
                self.engine.submit,
                GenerationRequest(prompt_ids=prompt_ids, model=model, params=params),
            )
        except InvalidRequest as exc:
            if exc.param in (None, "prompt", "messages"):
                exc.param = prompt_param
            raise

    async def _start(self, model: str, prompts: list[list[int]], n: int, params_for: Any,
                     prompt_param: str, prompt_texts: list[str] | None = None) -> list[_Choice]:
        choices: list[_Choice] = []
        try:
            for p, ids in enumerate(prompts):
                for j in range(n):
                    index = p * n + j
                    handle = await self._submit(model, ids, params_for(index), prompt_param)
                    choices.append(_Choice(index, handle,
                                           prompt_texts[p] if prompt_texts else "", ids))
        except BaseException:
            for choice in choices:
                choice.handle.cancel()
            raise
        return choices

    # -- chat -------------------------------------------------------------------------

    def render_chat(self, tokenizer: Any, request: ChatCompletionRequest) -> list[int]:
        from gptstore.inference.prompts import render_chat_prompt

        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in request.messages]
        return render_chat_prompt(tokenizer, messages)

    async def chat(self, request: ChatCompletionRequest) -> Any:
        """A `ChatCompletionResponse`, or an async iterator of SSE lines when streaming."""
        _unsupported("tools", request.tools)
        if request.response_format and request.response_format.get("type") not in (None, "text"):
            _unsupported("response_format", True)
        tokenizer = await self._tokenizer(request.model)
        prompt_ids = self.render_chat(tokenizer, request)
        asked = request.max_completion_tokens or request.max_tokens
        max_tokens = self._max_tokens(
            asked, "max_completion_tokens" if request.max_completion_tokens else "max_tokens")
        top = request.top_logprobs or 0
        if top and not request.logprobs:
            raise InvalidRequest("top_logprobs needs logprobs: true", param="top_logprobs")
        choices = await self._start(
            request.model, [prompt_ids], request.n,
            lambda i: sampling_params(request, max_tokens=max_tokens, logprobs=request.logprobs,
                                      top_logprobs=top, index=i,
                                      strict=_asked(request, "max_completion_tokens",
                                                    "max_tokens")),
            "messages",
        )
        if request.stream:
            return self._chat_stream(request, tokenizer, choices)
        results = await _results(choices)
        usage = UsageInfo(prompt_tokens=len(prompt_ids))
        usage.prompt_tokens_details.cached_tokens = _cached_tokens(
            request.n, {c.index: r.usage.cached_tokens
                        for c, r in zip(choices, results, strict=True)})
        out = []
        for choice, result in zip(choices, results, strict=True):
            usage.completion_tokens += result.usage.completion_tokens
            logprobs = None
            if request.logprobs:
                events = _events_from(result)
                logprobs = _chat_logprobs(tokenizer, events)
            out.append(ChatCompletionChoice(
                index=choice.index, message=ChatCompletionMessage(content=result.text),
                finish_reason=_finish(result.finish_reason), logprobs=logprobs))
        usage.total_tokens = usage.prompt_tokens + usage.completion_tokens
        return ChatCompletionResponse(model=request.model, choices=out, usage=usage)

    async def _chat_stream(self, request: ChatCompletionRequest, tokenizer: Any,
                           choices: list[_Choice]) -> AsyncIterator[str]:
        chunk_id, created = new_id("chatcmpl"), now()
        include_usage = bool(request.stream_options and request.stream_options.include_usage)

        def chunk(index: int, delta: DeltaMessage, finish: Any = None,
                  logprobs: ChoiceLogprobs | None = None) -> str:
            return sse(ChatCompletionChunk(
                id=chunk_id, created=created, model=request.model,
                choices=[ChatCompletionChunkChoice(index=index, delta=delta,
                                                   finish_reason=finish, logprobs=logprobs)]))

        usage = UsageInfo()
        cached: dict[int, int] = {}  # choice index -> its prompt tokens from the cache
        try:
            for choice in choices:
                yield chunk(choice.index, DeltaMessage(role="assistant", content=""))
            async for index, event in _merge(choices):
                if event.token_id is not None and (event.text or request.logprobs):
                    logprobs = _chat_logprobs(tokenizer, [event]) if request.logprobs else None
                    yield chunk(index, DeltaMessage(content=event.text), None, logprobs)
                elif event.text:
                    yield chunk(index, DeltaMessage(content=event.text))
                if event.finish_reason is not None:
                    if event.usage is not None:
                        usage.prompt_tokens = event.usage.prompt_tokens
                        usage.completion_tokens += event.usage.completion_tokens
                        cached[index] = event.usage.cached_tokens
                    yield chunk(index, DeltaMessage(), _finish(event.finish_reason))
            if include_usage:
                usage.total_tokens = usage.prompt_tokens + usage.completion_tokens
                usage.prompt_tokens_details.cached_tokens = _cached_tokens(request.n, cached)
                yield sse(ChatCompletionChunk(id=chunk_id, created=created, model=request.model,
                                              choices=[], usage=usage))
            yield "data: [DONE]\n\n"
        except GptStoreError as exc:
            yield _sse_error(exc)
        finally:
            for choice in choices:  # a closed stream frees the slots at once
                choice.handle.cancel()

    # -- completions --------------------------------------------------------------------

    def _completion_prompts(self, tokenizer: Any, prompt: Any) -> tuple[list[list[int]],
                                                                         list[str]]:
        if isinstance(prompt, str):
            prompts: list[Any] = [prompt]
        elif prompt and all(isinstance(t, int) for t in prompt):
            prompts = [prompt]
        else:
            prompts = list(prompt)
        if not prompts:
            raise InvalidRequest("prompt is empty", param="prompt")
        ids, texts = [], []
        vocab = len(tokenizer)
        for p in prompts:
            if isinstance(p, str):
                tokens = list(tokenizer(p)["input_ids"])
                texts.append(p)
            else:
                tokens = [int(t) for t in p]
                if any(t < 0 or t >= vocab for t in tokens):
                    raise InvalidRequest(f"prompt token ids must be in [0, {vocab})",
                                         param="prompt")
                texts.append(tokenizer.decode(tokens))
            if not tokens:
                raise InvalidRequest("prompt is empty", param="prompt")
            ids.append(tokens)
        return ids, texts

    async def completion(self, request: CompletionRequest) -> Any:
        _unsupported("suffix", request.suffix)
        if request.best_of is not None and request.best_of != request.n:
            raise InvalidRequest("best_of must equal n (or be left out)", param="best_of")
        if request.max_tokens == 0 and not request.echo:
            raise InvalidRequest("max_tokens 0 generates nothing: use it with echo: true to "
                                 "get the prompt back scored (with logprobs), or ask for at "
                                 "least 1 token", param="max_tokens")
        if _asked(request, "max_tokens"):
            max_tokens = self._max_tokens(request.max_tokens, "max_tokens")
        else:  # OpenAI's default (the field's 16), within the server's cap
            default = request.max_tokens if request.max_tokens is not None else 16
            max_tokens = default if self.max_tokens is None else min(default, self.max_tokens)
        tokenizer = await self._tokenizer(request.model)
        prompts, texts = self._completion_prompts(tokenizer, request.prompt)
        want_logprobs = request.logprobs is not None
        # echo + logprobs: the prompt's tokens are scored too (OpenAI's legacy behaviour)
        prompt_logprobs = request.logprobs if request.echo and want_logprobs else None
        choices = await self._start(
            request.model, prompts, request.n,
            lambda i: sampling_params(request, max_tokens=max_tokens,
                                      logprobs=want_logprobs, top_logprobs=request.logprobs or 0,
                                      index=i, strict=_asked(request, "max_tokens"),
                                      prompt_logprobs=prompt_logprobs),
            "prompt", texts,
        )
        if request.stream:
            return self._completion_stream(request, tokenizer, choices,
                                           sum(len(p) for p in prompts))
        results = await _results(choices)
        usage = UsageInfo(prompt_tokens=sum(len(p) for p in prompts))
        usage.prompt_tokens_details.cached_tokens = _cached_tokens(
            request.n, {c.index: r.usage.cached_tokens
                        for c, r in zip(choices, results, strict=True)})
        out = []
        for choice, result in zip(choices, results, strict=True):
            usage.completion_tokens += result.usage.completion_tokens
            text = (choice.prompt_text if request.echo else "") + result.text
            logprobs = None
            if want_logprobs:
                logprobs = _prompt_logprobs(tokenizer, choice, result.prompt_logprobs) \
                    if request.echo else CompletionLogprobs()
                _completion_logprobs(tokenizer, _events_from(result),
                                     len(choice.prompt_text) if request.echo else 0, logprobs)
            out.append(CompletionChoice(index=choice.index, text=text, logprobs=logprobs,
                                        finish_reason=_finish(result.finish_reason)))
        usage.total_tokens = usage.prompt_tokens + usage.completion_tokens
        return CompletionResponse(model=request.model, choices=out, usage=usage)

    async def _completion_stream(self, request: CompletionRequest, tokenizer: Any,
                                 choices: list[_Choice], prompt_tokens: int
                                 ) -> AsyncIterator[str]:
        cmpl_id, created = new_id("cmpl"), now()
        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        want_logprobs = request.logprobs is not None
        usage = UsageInfo(prompt_tokens=prompt_tokens)

        def chunk(index: int, text: str, finish: Any = None,
                  logprobs: CompletionLogprobs | None = None) -> str:
            return sse(CompletionResponse(id=cmpl_id, created=created, model=request.model,
                                          choices=[CompletionChoice(index=index, text=text,
                                                                    finish_reason=finish,
                                                                    logprobs=logprobs)]))

        by_index = {choice.index: choice for choice in choices}
        cached: dict[int, int] = {}  # choice index -> its prompt tokens from the cache
        try:
            if request.echo and not want_logprobs:
                for choice in choices:
                    yield chunk(choice.index, choice.prompt_text)
            async for index, event in _merge(choices):
                if event.prompt_logprobs is not None:  # echo + logprobs: the scored prompt
                    choice = by_index[index]
                    yield chunk(index, choice.prompt_text, None,
                                _prompt_logprobs(tokenizer, choice, event.prompt_logprobs))
                if event.text or (want_logprobs and event.token_id is not None):
                    lp = _completion_logprobs(tokenizer, [event], 0) if want_logprobs else None
                    yield chunk(index, event.text, None, lp)
                if event.finish_reason is not None:
                    if event.usage is not None:
                        usage.completion_tokens += event.usage.completion_tokens
                        cached[index] = event.usage.cached_tokens
                    yield chunk(index, "", _finish(event.finish_reason))
            if include_usage:
                usage.total_tokens = usage.prompt_tokens + usage.completion_tokens
                usage.prompt_tokens_details.cached_tokens = _cached_tokens(request.n, cached)
                yield sse(CompletionResponse(id=cmpl_id, created=created, model=request.model,
                                             choices=[], usage=usage))
            yield "data: [DONE]\n\n"
        except GptStoreError as exc:
            yield _sse_error(exc)
        finally:
            for choice in choices:
                choice.handle.cancel()

    # -- classifications ----------------------------------------------------------------

    async def classify(self, request: ClassificationRequest) -> ClassificationResponse:
        texts = [request.input] if isinstance(request.input, str) else list(request.input)
        results = await asyncio.to_thread(self.engine.classify, request.model, texts)
        tokenizer = await self._tokenizer(request.model)
        prompt_tokens = sum(len(tokenizer(t)["input_ids"]) for t in texts)
        data = []
        for i, probs in enumerate(results):
            ranked = sorted(probs, key=lambda lp: lp[1], reverse=True)
            data.append(ClassificationResult(
                index=i, label=ranked[0][0],
                probabilities=[LabelScore(label=label, probability=p) for label, p in ranked]))
        return ClassificationResponse(model=request.model, data=data,
                                      usage=UsageInfo(prompt_tokens=prompt_tokens,
                                                      total_tokens=prompt_tokens))


def _cached_tokens(n: int, cached: dict[int, int]) -> int:
    """A response's `cached_tokens` from its choices' (index -> prompt tokens the prefix
    cache gave it; choice p * n + j is prompt p's j-th): per prompt, the fewest any of
    its choices was given (the prompt is counted once in `prompt_tokens`), summed."""
    fewest: dict[int, int] = {}
    for index, tokens in cached.items():
        fewest[index // n] = min(tokens, fewest.get(index // n, tokens))
    return sum(fewest.values())


def _events_from(result: Any) -> list[Any]:
    """Rebuild per-token events (id, logprob, top) from a finished `Completion`."""
    from gptstore.inference.types import TokenEvent

    logprobs = result.logprobs or [None] * len(result.token_ids)
    tops = result.top_logprobs or [None] * len(result.token_ids)
    return [TokenEvent(token_id=t, text="", logprob=lp, top_logprobs=top)
            for t, lp, top in zip(result.token_ids, logprobs, tops, strict=True)]


def _prompt_logprobs(tokenizer: Any, choice: _Choice, scores: Any) -> CompletionLogprobs:
    """The echoed prompt's tokens with their scores (the engine's PromptLogprobs): the
    first token null, as OpenAI reports it, each other's alternatives with the token
    itself among them."""
    out = CompletionLogprobs()
    if scores is None:  # the request ended before its prompt was scored
        return out
    offset = 0
    for i, token in enumerate(choice.prompt_ids or []):
        text = _token_text(tokenizer, token)
        own = scores.logprobs[i]
        out.tokens.append(text)
        out.token_logprobs.append(own)
        top = None
        if own is not None:
            top = {t.text: t.logprob for t in scores.top_logprobs[i] or []}
            top.setdefault(text, own)
        out.top_logprobs.append(top)
        out.text_offset.append(offset)
        offset += len(text)
    return out


def _completion_logprobs(tokenizer: Any, events: Sequence[Any], offset: int,
                         out: CompletionLogprobs | None = None) -> CompletionLogprobs:
    """The generated tokens' logprobs, appended to `out` (after an echoed prompt's)."""
    out = out if out is not None else CompletionLogprobs()
    for e in events:
        if e.token_id is None:
            continue
        text = _token_text(tokenizer, e.token_id)
        out.tokens.append(text)
        out.token_logprobs.append(e.logprob)
        # OpenAI's `logprobs` parameter: "The API will always return the `logprob` of the
        # sampled token, so there may be up to `logprobs+1` elements"; with logprobs=0 that
        # is the sampled token alone, never null (the schema wants an object per token)
        top = {t.text: t.logprob for t in e.top_logprobs or []}
        if e.logprob is not None:
            top.setdefault(text, e.logprob)
        out.top_logprobs.append(top)
        out.text_offset.append(offset)
        offset += len(text)
    return out


async def _merge(choices: list[_Choice]) -> AsyncIterator[tuple[int, Any]]:
    """Interleave the events of several handles as they arrive."""
    if len(choices) == 1:
        async for event in choices[0].handle:
            yield choices[0].index, event
        return
    queue: asyncio.Queue[tuple[int, Any] | None] = asyncio.Queue()

    async def pump(choice: _Choice) -> None:
        try:
            async for event in choice.handle:
                await queue.put((choice.index, event))
        except BaseException as exc:  # re-raised in the consumer
            await queue.put((choice.index, exc))
        finally:
            await queue.put(None)

    tasks = [asyncio.create_task(pump(c)) for c in choices]
    try:
        done = 0
        while done < len(tasks):
            item = await queue.get()
            if item is None:
                done += 1
                continue
            if isinstance(item[1], BaseException):
                raise item[1]
            yield item
    finally:
        for task in tasks:
            task.cancel()


def _sse_error(exc: GptStoreError) -> str:
    from gptstore.api.errors import envelope

    return f"data: {json.dumps(envelope(exc.message, exc.type, exc.param))}\n\n"
