"""Prompt formats: how an evaluation example is put to a model, and how its answer is read.

Owns `PromptFormat` (a template per task, chat or raw, k in-context examples, the
verbalisers of a classifier) and the two shapes a prompt takes:

- raw text, for base models and for classification by the next token: the k shots, each
  `template(example) + " " + answer`, separated by blank lines, then the question's
  `template(example)`;
- chat messages, for instruct models: each shot a user turn and an assistant turn, then
  the question as a user turn; the model's chat template renders them (the same path as
  the HTTP API).

`answer_of` turns a generation into the answer scored: its first non-empty line for QA
and translation (a model that goes on to a second question is not penalised for it),
the fenced block or the whole text for code.

Knows no tokenizer and no model: the runner renders chat messages with the model's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from gptstore.errors import InvalidRequest
from gptstore.evaluation.datasets import (
    EvalTask,
    LabelledText,
    QAExample,
    TranslationExample,
)
from gptstore.evaluation.formats import CodeProblem

#: the default template of each task; fields are the example's
DEFAULT_TEMPLATES: dict[str, str] = {
    "classification": "{text}",
    "qa": "Question: {question}\nAnswer:",
    "qa-context": "Passage: {context}\nQuestion: {question}\nAnswer with a few words "
                  "copied from the passage.\nAnswer:",
    "translation": "Translate into German:\n{source}\nTranslation:",
    "code": "{prompt}",
}
TEMPLATE_FIELDS: dict[str, tuple[str, ...]] = {
    "classification": ("text",),
    "qa": ("question", "context"),
    "translation": ("source",),
    "code": ("prompt",),
}
Message = dict[str, str]


@dataclass(frozen=True)
class PromptFormat:
    """How examples of a task are asked. Stored with a suite and with each result.

    `template` uses the example's fields in braces ({text}, {question}, {context},
    {source}, {prompt}); None picks the task's default. `chat` None means: chat for
    generation tasks on a model with a chat template, raw for classification. `shots`
    in-context examples come from the start of the file (and are then not scored).
    """

    template: str | None = None
    chat: bool | None = None
    shots: int = 0
    system: str | None = None
    verbalizers: Mapping[str, str] = field(default_factory=dict)
    max_tokens: int = 64

    def __post_init__(self) -> None:
        if self.shots < 0:
            raise InvalidRequest(f"shots must be >= 0, got {self.shots}", param="shots")
        if self.max_tokens < 1:
            raise InvalidRequest(f"max_tokens must be >= 1, got {self.max_tokens}",
                                 param="max_tokens")

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["verbalizers"] = dict(self.verbalizers)
        return doc

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any] | None) -> PromptFormat:
        doc = dict(doc or {})
        unknown = sorted(set(doc) - {f for f in cls.__dataclass_fields__})
        if unknown:
            raise InvalidRequest(f"unknown prompt fields {unknown}; known: "
                                 f"{sorted(cls.__dataclass_fields__)}", param="prompt")
        return cls(**doc)

    def template_for(self, task: EvalTask, example: Any) -> str:
        if self.template is not None:
            return self.template
        if task == "qa" and getattr(example, "context", None):
            return DEFAULT_TEMPLATES["qa-context"]
        return DEFAULT_TEMPLATES[task]


def fill(template: str, task: EvalTask, example: Any) -> str:
    """The template with the example's fields; an unknown field is named in the error."""
    values = fields_of(example)
    try:
        return template.format(**values)
    except (KeyError, IndexError) as exc:
        known = ", ".join("{" + k + "}" for k in TEMPLATE_FIELDS.get(task, ()))
        raise InvalidRequest(f"prompt template {template!r} uses {exc}, which a {task} "
                             f"example does not have; use {known}", param="template") from exc


def fields_of(example: Any) -> dict[str, str]:
    if isinstance(example, LabelledText):
        return {"text": example.text}
    if isinstance(example, QAExample):
        return {"question": example.question, "context": example.context or ""}
    if isinstance(example, TranslationExample):
        return {"source": example.source}
    if isinstance(example, CodeProblem):
        return {"prompt": example.prompt}
    raise TypeError(f"not an evaluation example: {type(example).__name__}")


def gold_answer(example: Any) -> str:
    """What a shot shows as the answer: the first gold answer / reference / solution."""
    if isinstance(example, QAExample):
        return example.answers[0]
    if isinstance(example, TranslationExample):
        return example.references[0]
    if isinstance(example, CodeProblem):
        return f"```python\n{example.reference_completion.strip()}\n```"
    raise TypeError(f"no answer for {type(example).__name__}")


def raw_prompt(prompt: PromptFormat, task: EvalTask, example: Any,
               shots: Sequence[Any], answer: Any = gold_answer) -> str:
    """Raw text: each shot with its answer, then the question (see the module docstring).

    `answer(shot)` is the answer text of a shot (a classification verbaliser, or the
    gold answer of a generation task)."""
    parts = [f"{fill(prompt.template_for(task, s), task, s)} {answer(s)}" for s in shots]
    parts.append(fill(prompt.template_for(task, example), task, example))
    text = "\n\n".join(parts)
    return f"{prompt.system}\n\n{text}" if prompt.system else text


def chat_messages(prompt: PromptFormat, task: EvalTask, example: Any,
                  shots: Sequence[Any], answer: Any = gold_answer) -> list[Message]:
    """Chat turns: the system message, shots as user / assistant pairs, the question."""
    messages: list[Message] = [{"role": "system", "content": prompt.system}] \
        if prompt.system else []
    for shot in shots:
        messages.append({"role": "user",
                         "content": fill(prompt.template_for(task, shot), task, shot)})
        messages.append({"role": "assistant", "content": str(answer(shot))})
    messages.append({"role": "user",
                     "content": fill(prompt.template_for(task, example), task, example)})
    return messages


_FENCE = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)
_ANSWER_PREFIX = re.compile(r"^(answer|translation)\s*:\s*", re.IGNORECASE)


def answer_of(task: EvalTask, generated: str) -> str:
    """The part of a generation that is scored (see the module docstring)."""
    if task == "code":
        match = _FENCE.search(generated)
        return match.group(1) if match else generated
    for line in generated.splitlines():
        if line.strip():
            return _ANSWER_PREFIX.sub("", line.strip()).strip()
    return ""
