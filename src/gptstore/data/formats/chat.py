"""Chat JSON Lines in OpenAI's fine-tuning format; loss on assistant turns only.

Each line is `{"messages": [{"role": "system"|"user"|"assistant", "content": str,
"weight": 0|1 (optional, assistant only)}, ...]}`. Content may also be OpenAI's list of
text parts (`[{"type": "text", "text": ...}]`), which is joined.

Encoding renders the conversation with the tokenizer's chat template and finds the
character span of each trained assistant turn by rendering prefixes: the prompt before
turn i is `render(messages[:i], add_generation_prompt=True)` (exactly what inference
sends) and the text through turn i is `render(messages[:i+1])`. The span between them,
minus trailing whitespace, is the answer plus its end-of-turn token (`<|im_end|>`),
which is trained so the model learns to stop. The conversation is then tokenised
segment by segment (prompt text, answer text, ...) so a prompt is tokenised exactly as
at inference time and no token straddles a trained/untrained boundary.

A tokenizer without a chat template gets the documented plain format of
`render_plain_chat`. Owns nothing outside this format.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gptstore.data.formats.base import (
    ChatRecord,
    DataFormat,
    EncodeResult,
    Issue,
    Message,
    Record,
    bos_prefix,
    encode_texts,
    error,
    json_type,
    read_jsonl,
    warning,
)
from gptstore.data.types import IGNORE_INDEX, EncodedExample

ROLES = ("system", "user", "assistant")

#: a trained segment boundary: (start, end) character offsets into the rendered text
Span = tuple[int, int]


class ChatFormat(DataFormat):
    name = "chat"
    task = "causal-lm"
    description = 'JSONL {"messages": [{"role", "content"}, ...]} (OpenAI); loss on assistant turns'

    def sniff(self, first: dict[str, Any]) -> bool:
        return "messages" in first

    def parse(self, path: Path) -> tuple[list[Record], list[Issue]]:
        rows, issues = read_jsonl(path)
        records: list[Record] = []
        for line, obj in rows:
            record = parse_chat_object(obj, line, issues)
            if record is not None:
                records.append(record)
        return records, issues

    def encode(
        self,
        records: Sequence[Record],
        tokenizer: Any,
        max_length: int,
        *,
        label_names: Sequence[str] | None = None,
    ) -> EncodeResult:
        result = EncodeResult()
        # 1. render every conversation to text + trained spans
        rendered: list[tuple[int, list[tuple[str, bool]]]] = []
        for record in records:
            assert isinstance(record, ChatRecord)
            try:
                text, spans = render_with_spans(tokenizer, record.messages)
            except ChatTemplateError as exc:
                result.issues.append(error("template_error", str(exc), record.line))
                continue
            rendered.append((record.line, split_segments(text, spans)))
        # 2. tokenise all segments in one batched call, then reassemble
        flat = [segment for _, segments in rendered for segment, _ in segments]
        ids_per_segment = iter(encode_texts(tokenizer, flat, add_special_tokens=False))
        # a chat template writes its own BOS; the plain format gets the tokenizer's
        prefix = [] if has_chat_template(tokenizer) else bos_prefix(tokenizer)
        for line, segments in rendered:
            input_ids: list[int] = list(prefix)
            labels: list[int] = [IGNORE_INDEX] * len(prefix)
            for _, trained in segments:
                ids = list(next(ids_per_segment))
                input_ids += ids
                labels += ids if trained else [IGNORE_INDEX] * len(ids)
            # 3. cut at the context length, keeping the start
            if len(input_ids) > max_length:
                result.truncated.append((line, len(input_ids)))
                input_ids, labels = input_ids[:max_length], labels[:max_length]
            if all(label == IGNORE_INDEX for label in labels):
                result.issues.append(warning(
                    "no_loss_after_truncation",
                    f"no assistant token is left within max_length={max_length}; the "
                    "example is skipped (shorten it or raise max_length)", line))
                continue
            result.examples.append(EncodedExample(input_ids=input_ids, labels=labels,
                                                  line=line))
        return result


# ---------------------------------------------------------------------------- parse


def parse_chat_object(obj: dict[str, Any], line: int, issues: list[Issue]) -> ChatRecord | None:
    """A `ChatRecord`, or None with the reasons appended to `issues`."""
    if "messages" not in obj:
        issues.append(error("missing_key", "missing key 'messages'; each line must be "
                            '{"messages": [...]}', line))
        return None
    raw = obj["messages"]
    if not isinstance(raw, list):
        issues.append(error("wrong_type", f"'messages' must be an array, got {json_type(raw)}",
                            line))
        return None
    if not raw:
        issues.append(error("no_messages", "'messages' is empty; add the conversation", line))
        return None
    found: list[Issue] = []
    messages = [parse_message(m, i, line, found) for i, m in enumerate(raw)]
    if not found:
        roles = [m.role for m in messages if m is not None]
        if "assistant" not in roles:
            found.append(error("no_assistant", "no assistant message: nothing to learn; add "
                               'at least one {"role": "assistant", ...} turn', line))
        elif not any(m is not None and m.trained for m in messages):
            found.append(error("no_trained_turn", "every assistant message has weight 0: "
                               "nothing to learn; set weight 1 on at least one", line))
    issues.extend(found)
    if found:
        return None
    return ChatRecord(line=line, messages=tuple(m for m in messages if m is not None))


def parse_message(raw: object, index: int, line: int, issues: list[Issue]) -> Message | None:
    where = f"messages[{index}]"
    if not isinstance(raw, dict):
        issues.append(error("wrong_type", f"{where} must be an object, got {json_type(raw)}",
                            line))
        return None
    ok = True
    role = raw.get("role")
    if "role" not in raw:
        issues.append(error("missing_key", f"{where} has no 'role'; use one of "
                            f"{', '.join(ROLES)}", line))
        ok = False
    elif role not in ROLES:
        issues.append(error("unknown_role", f"{where} has role {role!r}; use one of "
                            f"{', '.join(ROLES)}", line))
        ok = False
    content = _content_text(raw, where, line, issues)
    ok = ok and content is not None
    weight = raw.get("weight")
    if weight is not None:
        if isinstance(weight, bool) or weight not in (0, 1):
            issues.append(error("bad_weight", f"{where} 'weight' must be 0 or 1, got "
                                f"{weight!r}", line))
            ok = False
        elif role != "assistant":
            issues.append(error("bad_weight", f"{where} has a 'weight' but only assistant "
                                "messages can carry one; remove it", line))
            ok = False
    if not ok:
        return None
    assert isinstance(role, str) and content is not None
    return Message(role=role, content=content, weight=None if weight is None else int(weight))


def _content_text(raw: dict[str, Any], where: str, line: int, issues: list[Issue]) -> str | None:
    if "content" not in raw:
        issues.append(error("missing_key", f"{where} has no 'content'; add the text", line))
        return None
    content = raw["content"]
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        for p in content
    ):
        content = "".join(p["text"] for p in content)
    if not isinstance(content, str):
        issues.append(error("wrong_type", f"{where} 'content' must be a string, got "
                            f"{json_type(content)}", line))
        return None
    if not content.strip():
        issues.append(error("empty_content", f"{where} has empty content; give it text or "
                            "remove the message", line))
        return None
    return content


# --------------------------------------------------------------------------- render


class ChatTemplateError(ValueError):
    """The tokenizer's chat template cannot render this conversation."""


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_plain_chat(
    messages: Sequence[Message | dict[str, str]],
    *,
    eos_token: str | None,
    add_generation_prompt: bool = False,
) -> str:
    """The fallback chat format for tokenizers without a chat template.

    One line per turn, `role: content`; an assistant turn ends with the eos token
    before its newline, so the model learns to stop::

        system: Be brief.
        user: Hi
        assistant: Hello!<eos>

    With `add_generation_prompt` it ends with `assistant: ` for the model to continue.
    Inference must render prompts with this same function for such models.
    """
    text, _ = _plain_with_spans(messages, eos_token=eos_token)
    return text + ("assistant: " if add_generation_prompt else "")


def _plain_with_spans(
    messages: Sequence[Message | dict[str, str]], *, eos_token: str | None
) -> tuple[str, list[Span]]:
    parts: list[str] = []
    spans: list[Span] = []
    size = 0
    for m in messages:
        msg = m if isinstance(m, Message) else Message(m["role"], m["content"])
        head = f"{msg.role}: "
        body = msg.content + (eos_token or "" if msg.role == "assistant" else "")
        if msg.trained:
            spans.append((size + len(head), size + len(head) + len(body)))
        parts.append(head + body + "\n")
        size += len(head) + len(body) + 1
    return "".join(parts), spans


def render_with_spans(tokenizer: Any, messages: Sequence[Message]) -> tuple[str, list[Span]]:
    """The rendered conversation and the character spans of its trained turns."""
    if not has_chat_template(tokenizer):
        return _plain_with_spans(messages, eos_token=getattr(tokenizer, "eos_token", None))

    def render(upto: int, generation_prompt: bool) -> str:
        convo = [{"role": m.role, "content": m.content} for m in messages[:upto]]
        try:
            out = tokenizer.apply_chat_template(
                convo, tokenize=False, add_generation_prompt=generation_prompt)
        except Exception as exc:  # jinja raise_exception(), missing variables, ...
            raise ChatTemplateError(f"the chat template rejects this conversation: {exc}; "
                                    "check the order of roles") from exc
        return str(out)

    full = render(len(messages), False)
    spans: list[Span] = []
    cursor = 0
    for i, msg in enumerate(messages):
        if not msg.trained:
            continue
        span = _prefix_span(render, full, i)
        if span is None or span[0] < cursor:
            span = _search_span(tokenizer, full, msg.content, cursor)
        start, end = span
        end = start + len(full[start:end].rstrip())  # the newline after <|im_end|> is not
        spans.append((start, end))
        cursor = end
    return full, spans


def _prefix_span(render: Any, full: str, i: int) -> Span | None:
    """Span of turn i from prefix renders, when the template is prefix-stable."""
    try:
        before = render(i, True)
        through = render(i + 1, False)
    except ChatTemplateError:
        return None
    if full.startswith(through) and through.startswith(before) and len(through) > len(before):
        return len(before), len(through)
    return None


def _search_span(tokenizer: Any, full: str, content: str, cursor: int) -> Span:
    """Fallback for templates whose renders are not prefixes of each other: find the
    answer's text and take any special token (end of turn) right after it."""
    start = full.find(content, cursor)
    if start < 0:
        raise ChatTemplateError("the chat template does not reproduce an assistant message "
                                "verbatim, so its tokens cannot be located")
    end = start + len(content)
    specials = sorted(getattr(tokenizer, "all_special_tokens", []) or [], key=len, reverse=True)
    for token in specials:
        if token and full.startswith(token, end):
            end += len(token)
            break
    return start, end


def split_segments(text: str, spans: Sequence[Span]) -> list[tuple[str, bool]]:
    """`text` cut into consecutive (segment, trained) pieces along `spans`."""
    segments: list[tuple[str, bool]] = []
    pos = 0
    for start, end in spans:
        if start > pos:
            segments.append((text[pos:start], False))
        if end > start:
            segments.append((text[start:end], True))
        pos = max(pos, end)
    if pos < len(text):
        segments.append((text[pos:], False))
    return segments
