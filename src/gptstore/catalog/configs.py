"""Facts read off a model's transformers config, for every layer that needs them.

Architectures name the same fact differently (Llama's `max_position_embeddings`,
GPT-2's `n_positions`, ...); this module is the one place that knows the spellings. It
works on any object with the attributes (a `PretrainedConfig` or a plain namespace), so
it imports nothing heavy.
"""

from __future__ import annotations

from typing import Any

#: config attributes that hold the context length, by architecture family
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "seq_length")


def context_length(config: Any) -> int | None:
    """The longest sequence the model's positions cover, or None when the config
    does not say (the text config of a multimodal model is looked into)."""
    text_config = getattr(config, "get_text_config", None)
    if callable(text_config):
        config = text_config()
    for key in CONTEXT_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None
