"""Rendering prompts the way the model was trained: its chat template, or the plain
`role: content` fallback that training uses for tokenizers without one."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gptstore.errors import InvalidRequest


def render_chat_prompt(tokenizer: Any, messages: Sequence[dict[str, str]]) -> list[int]:
    """Token ids of `messages` followed by the assistant's generation prompt."""
    if getattr(tokenizer, "chat_template", None):
        try:
            text = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True,
                                                 tokenize=False)
        except Exception as exc:  # jinja raises TemplateError for odd role orders
            raise InvalidRequest(f"the model's chat template refused these messages: {exc}",
                                 param="messages") from exc
        # the template already holds the special tokens it wants
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    from gptstore.data.formats.chat import render_plain_chat

    text = render_plain_chat(messages, eos_token=tokenizer.eos_token, add_generation_prompt=True)
    return list(tokenizer(text)["input_ids"])


def render_raw_prompt(tokenizer: Any, prompt: str) -> list[int]:
    """Token ids of a raw prompt (with the tokenizer's own special tokens, as HF does)."""
    ids = list(tokenizer(prompt)["input_ids"])
    if not ids:
        raise InvalidRequest("the prompt is empty", param="prompt")
    return ids
