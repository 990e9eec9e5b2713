"""`gptstore generate` and `gptstore chat`: talk to a store model in the terminal, through
the same inference engine as the HTTP API."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.markup import escape

from gptstore.cli.common import console, open_catalog, settings
from gptstore.errors import InvalidRequest

ModelArg = Annotated[str, typer.Argument(help="Model: namespace/name[@VERSION].")]
MaxTokens = Annotated[int, typer.Option(min=1, help="Most new tokens per answer.")]
Temperature = Annotated[float, typer.Option(min=0.0, max=2.0, help="0 = greedy.")]
TopP = Annotated[float, typer.Option(min=0.0, max=1.0, help="Nucleus sampling.")]
Seed = Annotated[int | None, typer.Option(help="Seed for reproducible sampling.")]


@contextmanager
def local_engine() -> Iterator[Any]:
    """An in-process engine over the store (one request at a time is all a CLI needs)."""
    from gptstore.inference.loader import collection_paused
    from gptstore.inference.store import build_engine

    with open_catalog() as catalog:
        with collection_paused():  # it imports torch and the engine (loader.py)
            engine = build_engine(settings(), catalog, max_running=4)
        try:
            yield engine
        finally:
            engine.shutdown()


def _params(max_tokens: int, temperature: float, top_p: float, seed: int | None) -> Any:
    from gptstore.inference.types import SamplingParams

    # strict, as the server holds a request's own max_tokens: both ways tell the same
    # when the conversation and --max-tokens no longer fit the context
    return SamplingParams(max_tokens=max_tokens, temperature=temperature,
                          top_p=top_p if temperature > 0 else 1.0, seed=seed,
                          max_tokens_strict=True)


def _write(pieces: Iterator[str]) -> str:
    """Print the answer's text as it comes; return all of it."""
    out = []
    for text in pieces:
        sys.stdout.write(text)
        sys.stdout.flush()
        out.append(text)
    return "".join(out)


def _stream(engine: Any, name: str, prompt_ids: list[int], params: Any) -> str:
    from gptstore.inference.types import GenerationRequest

    handle = engine.submit(GenerationRequest(prompt_ids=prompt_ids, model=name, params=params))
    return _write(event.text for event in handle if event.text)


class _Answers:
    """Where a command's answers come from: the running `gptstore serve` of this store
    (cli/remote.py) while it serves this client, else an engine in this process,
    started on the first answer that needs it."""

    def __init__(self, name: str, params: Any, local: bool) -> None:
        from contextlib import ExitStack

        from gptstore.api.runtime import running_server

        self.name, self.params = name, params
        self.url = None if local else running_server(settings().home)
        self._stack = ExitStack()
        self._engine: Any = None

    def __enter__(self) -> _Answers:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def engine(self) -> Any:
        if self._engine is None:
            self._engine = self._stack.enter_context(local_engine())
        return self._engine

    def answer(self, *, messages: list[dict[str, str]] | None = None,
               raw: str | None = None) -> str:
        """Stream the answer to `messages` (chat template) or to the `raw` prompt."""
        if self.url is not None:
            from dataclasses import asdict

            from gptstore.cli.remote import Refused, stream_text

            params = {k: v for k, v in asdict(self.params).items()
                      if k in ("max_tokens", "temperature", "top_p", "seed")}
            try:
                return _write(stream_text(self.url, self.name, params, messages=messages,
                                          prompt=raw))
            except Refused:  # wants another key, or gone since the probe: our own engine
                self.url = None
        from gptstore.inference.prompts import render_chat_prompt, render_raw_prompt

        engine = self.engine()
        tokenizer = engine.tokenizer(self.name)
        ids = render_raw_prompt(tokenizer, raw) if messages is None else \
            render_chat_prompt(tokenizer, messages)
        return _stream(engine, self.name, ids, self.params)


Local = Annotated[bool, typer.Option(
    "--local", help="Run the model in this process even where a `gptstore serve` of this "
    "store is running (by default the command asks that server, which has it loaded, "
    "sending GPTSTORE_API_KEY where it is set; a server that refuses the key leaves the "
    "command to run the model itself).")]


def generate(
    name: ModelArg,
    prompt: Annotated[str, typer.Argument(help="The prompt (a user message, unless --raw).")],
    max_tokens: MaxTokens = 256,
    temperature: Temperature = 0.7,
    top_p: TopP = 0.95,
    seed: Seed = None,
    raw: Annotated[bool, typer.Option(help="Do not apply the chat template.")] = False,
    local: Local = False,
) -> None:
    """Generate text, streaming tokens to the terminal."""
    with _Answers(name, _params(max_tokens, temperature, top_p, seed), local) as answers:
        if raw:
            answers.answer(raw=prompt)
        else:
            answers.answer(messages=[{"role": "user", "content": prompt}])
    sys.stdout.write("\n")


def chat(
    name: ModelArg,
    system: Annotated[str | None, typer.Option(help="A system message to start with.")] = None,
    max_tokens: MaxTokens = 512,
    temperature: Temperature = 0.7,
    top_p: TopP = 0.95,
    seed: Seed = None,
    local: Local = False,
) -> None:
    """Chat with a model: the conversation is kept; /reset clears it, /exit or Ctrl-D ends."""
    messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    with _Answers(name, _params(max_tokens, temperature, top_p, seed), local) as answers:
        if answers.url is None:
            answers.engine().tokenizer(name)  # load now: a missing model fails before input
        where = f" through the server at {answers.url}" if answers.url else ""
        console.print(f"[dim]chatting with {name}{where}; /reset clears, /exit ends[/]")
        while True:
            try:
                line = console.input("[bold green]> [/]")
            except EOFError:
                break
            if line.strip() in {"/exit", "/quit"}:
                break
            if line.strip() == "/reset":
                messages = messages[:1] if system else []
                console.print("[dim]conversation cleared[/]")
                continue
            if not line.strip():
                continue
            messages.append({"role": "user", "content": line})
            try:
                answer = answers.answer(messages=messages)
            except InvalidRequest as exc:  # the turn is dropped; the conversation goes on
                messages.pop()
                console.print(f"[red]error:[/red] {escape(exc.message)}"
                              + ("; /reset starts over" if exc.param in (None, "messages")
                                 else ""), highlight=False, soft_wrap=True)
                continue
            sys.stdout.write("\n")
            messages.append({"role": "assistant", "content": answer})
