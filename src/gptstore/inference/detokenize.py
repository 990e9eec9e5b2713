"""Token ids -> streamed text: incremental detokenisation and stop strings.

Two small state machines per request, both pure Python over a `transformers`
tokenizer, no torch:

* `IncrementalDetokenizer` turns each new token into the text it adds. Decoding one
  token alone is wrong for byte-level BPE (a multi-byte UTF-8 character split across
  tokens decodes to U+FFFD) and for SentencePiece (leading spaces depend on the previous
  token), so it decodes a short window of recent tokens and emits only the stable
  suffix, holding back text that still ends in an incomplete character. The window
  keeps each step O(window), not O(length) (the scheme of TGI and vLLM).
* `StopStringMatcher` holds back any text that could be the start of a stop string, so
  a stop string split over several tokens is still found and never shown.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

_PROMPT_CONTEXT = 6  # prompt tokens decoded along with the output, for correct spacing


class IncrementalDetokenizer:
    """Feed tokens one at a time with `push`; get back the newly stable text."""

    def __init__(self, tokenizer: Any, prompt_ids: Sequence[int]) -> None:
        self.tokenizer = tokenizer
        context = list(prompt_ids[-_PROMPT_CONTEXT:])
        self._ids: list[int] = context
        self._prefix_offset = 0  # start of the decode window
        self._read_offset = len(context)  # tokens before this are already emitted

    def _decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True,
                                          clean_up_tokenization_spaces=False))

    def push(self, token_id: int) -> str:
        self._ids.append(int(token_id))
        prefix_text = self._decode(self._ids[self._prefix_offset:self._read_offset])
        new_text = self._decode(self._ids[self._prefix_offset:])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            # The window decodes to something longer that does not end mid-character.
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)
            return new_text[len(prefix_text):]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the very end)."""
        prefix_text = self._decode(self._ids[self._prefix_offset:self._read_offset])
        new_text = self._decode(self._ids[self._prefix_offset:])
        self._prefix_offset = self._read_offset = len(self._ids)
        return new_text[len(prefix_text):] if len(new_text) > len(prefix_text) else ""


class StopStringMatcher:
    """Cut the output at the first stop string; hold back possible stop-string starts."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self._pending = ""  # decoded text not yet emitted

    def push(self, text: str) -> tuple[str, bool]:
        """Add decoded text; return (text safe to emit now, whether a stop was hit)."""
        if not self.stops:
            return text, False
        self._pending += text
        hit = min(((i, s) for s in self.stops if (i := self._pending.find(s)) >= 0),
                  default=None)
        if hit is not None:
            out = self._pending[:hit[0]]
            self._pending = ""
            return out, True
        hold = self._held_back_length()
        cut = len(self._pending) - hold
        out, self._pending = self._pending[:cut], self._pending[cut:]
        return out, False

    def flush(self) -> str:
        out, self._pending = self._pending, ""
        return out

    def _held_back_length(self) -> int:
        """Length of the longest suffix of the pending text that starts a stop string."""
        best = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(self._pending)), best, -1):
                if self._pending.endswith(stop[:n]):
                    best = n
                    break
        return best
