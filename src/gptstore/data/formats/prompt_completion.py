"""Prompt/completion JSON Lines: `{"prompt": str, "completion": str}`; loss on the completion.

The pair is encoded raw, without the chat template, even when the tokenizer has one:
this format is what the OpenAI-style `/v1/completions` route serves (a raw prompt
continued by the model), so training sees exactly the tokens inference will. Chat
behaviour is what the chat format is for. The prompt is tokenised on its own with the
tokenizer's special tokens (a BOS where the model expects one), the completion on its
own, and the eos token is appended and trained so the model learns to stop. An empty
prompt is allowed (pure continuation); an empty completion is an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gptstore.data.formats.base import (
    DataFormat,
    EncodeResult,
    Issue,
    PromptCompletionRecord,
    Record,
    encode_texts,
    eos_ids,
    read_jsonl,
    require_str,
    warning,
)
from gptstore.data.types import IGNORE_INDEX, EncodedExample


class PromptCompletionFormat(DataFormat):
    name = "prompt-completion"
    task = "causal-lm"
    description = 'JSONL {"prompt": str, "completion": str}; loss on the completion'

    def sniff(self, first: dict[str, Any]) -> bool:
        return "prompt" in first or "completion" in first

    def parse(self, path: Path) -> tuple[list[Record], list[Issue]]:
        rows, issues = read_jsonl(path)
        records: list[Record] = []
        for line, obj in rows:
            before = len(issues)
            prompt = require_str(obj, "prompt", line, issues, empty_rule=None)
            completion = require_str(obj, "completion", line, issues,
                                     empty_rule="empty_content")
            if len(issues) == before and prompt is not None and completion is not None:
                records.append(PromptCompletionRecord(line, prompt, completion))
        return records, issues

    def encode(
        self,
        records: Sequence[Record],
        tokenizer: Any,
        max_length: int,
        *,
        label_names: Sequence[str] | None = None,
    ) -> EncodeResult:
        pairs = [r for r in records if isinstance(r, PromptCompletionRecord)]
        prompts = encode_texts(tokenizer, [r.prompt for r in pairs], add_special_tokens=True)
        completions = encode_texts(tokenizer, [r.completion for r in pairs],
                                   add_special_tokens=False)
        eos = eos_ids(tokenizer)
        result = EncodeResult()
        for record, prompt_ids, completion_ids in zip(pairs, prompts, completions, strict=True):
            answer = completion_ids + eos
            input_ids = prompt_ids + answer
            labels = [IGNORE_INDEX] * len(prompt_ids) + answer
            if len(input_ids) > max_length:
                result.truncated.append((record.line, len(input_ids)))
                input_ids, labels = input_ids[:max_length], labels[:max_length]
            if all(label == IGNORE_INDEX for label in labels):
                result.issues.append(warning(
                    "no_loss_after_truncation",
                    f"the prompt alone fills max_length={max_length}, no completion token "
                    "is left; the example is skipped (shorten the prompt)", record.line))
                continue
            result.examples.append(EncodedExample(input_ids=input_ids, labels=labels,
                                                  line=record.line))
        return result
