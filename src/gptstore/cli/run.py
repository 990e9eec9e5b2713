"""`gptstore generate` and `gptstore chat`: talk to a store model in the terminal, through
the same inference engine as the HTTP API."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer

from gptstore.cli.common import console, open_catalog, settings

ModelArg = Annotated[str, typer.Argument(help="Model: namespace/name[@VERSION].")]
MaxTokens = Annotated[int, typer.Option(min=1, help="Most new tokens per answer.")]
Temperature = Annotated[float, typer.Option(min=0.0, max=2.0, help="0 = greedy.")]
TopP = Annotated[float, typer.Option(min=0.0, max=1.0, help="Nucleus sampling.")]
Seed = Annotated[int | None, typer.Option(help="Seed for reproducible sampling.")]


@contextmanager
def local_engine() -> Iterator[Any]:
    """An in-process engine over the store (one request at a time is all a CLI needs)."""
    from gptstore.inference.store import build_engine

    with open_catalog() as catalog:
        engine = build_engine(settings(), catalog, max_running=4)
        try:
            yield engine
        finally:
            engine.shutdown()


def _params(max_tokens: int, temperature: float, top_p: float, seed: int | None) -> Any:
    from gptstore.inference.types import SamplingParams

    return SamplingParams(max_tokens=max_tokens, temperature=temperature,
                          top_p=top_p if temperature > 0 else 1.0, seed=seed)


def _stream(engine: Any, name: str, prompt_ids: list[int], params: Any) -> str:
    from gptstore.inference.types import GenerationRequest

    handle = engine.submit(GenerationRequest(prompt_ids=prompt_ids, model=name, params=params))
    pieces = []
    for event in handle:
        if event.text:
            sys.stdout.write(event.text)
            sys.stdout.flush()
            pieces.append(event.text)
    return "".join(pieces)


def generate(
    name: ModelArg,
    prompt: Annotated[str, typer.Argument(help="The prompt (a user message, unless --raw).")],
    max_tokens: MaxTokens = 256,
    temperature: Temperature = 0.7,
    top_p: TopP = 0.95,
    seed: Seed = None,
    raw: Annotated[bool, typer.Option(help="Do not apply the chat template.")] = False,
) -> None:
    """Generate text, streaming tokens to the terminal."""
    from gptstore.inference.prompts import render_chat_prompt, render_raw_prompt

    with local_engine() as engine:
        tokenizer = engine.tokenizer(name)
        ids = render_raw_prompt(tokenizer, prompt) if raw else \
            render_chat_prompt(tokenizer, [{"role": "user", "content": prompt}])
        _stream(engine, name, ids, _params(max_tokens, temperature, top_p, seed))
    sys.stdout.write("\n")


def chat(
    name: ModelArg,
    system: Annotated[str | None, typer.Option(help="A system message to start with.")] = None,
    max_tokens: MaxTokens = 512,
    temperature: Temperature = 0.7,
    top_p: TopP = 0.95,
    seed: Seed = None,
) -> None:
    """Chat with a model: the conversation is kept; /reset clears it, /exit or Ctrl-D ends."""
    from gptstore.inference.prompts import render_chat_prompt

    messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    with local_engine() as engine:
        tokenizer = engine.tokenizer(name)
        console.print(f"[dim]chatting with {name}; /reset clears, /exit ends[/]")
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
            ids = render_chat_prompt(tokenizer, messages)
            answer = _stream(engine, name, ids, _params(max_tokens, temperature, top_p, seed))
            sys.stdout.write("\n")
            messages.append({"role": "assistant", "content": answer})
