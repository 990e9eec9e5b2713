"""`GET /api/files/{id}/preview`: the first examples of a training file exactly as a base
model will see them, for the fine-tune wizard.

The file is parsed and encoded by the same code training uses (`data/encode.py` and
the format's `encode`, with the base's tokenizer and chat template), then each example's
tokens are cut into runs that do or do not carry the loss (labels not IGNORE_INDEX)
and decoded, so the page can show the template's special tokens and mark what the
model learns to produce.
"""

from __future__ import annotations

import threading
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import Field

from gptstore.api.deps import CatalogDep, OwnerDep, PrincipalDep
from gptstore.api.openai.files import owned
from gptstore.api.store.catalog import NOT_FOUND
from gptstore.api.store.schemas import StoreBaseModel, TokenCounts
from gptstore.data.types import IGNORE_INDEX

router = APIRouter(tags=["store front"])

#: tokenizers kept loaded, by manifest digest (the wizard previews one base many times)
_TOKENIZERS: dict[str, Any] = {}
_TOKENIZERS_MAX = 4
_lock = threading.Lock()


class Segment(StoreBaseModel):
    text: str
    loss: bool = Field(description="Whether these tokens are training targets.")


class PreviewExample(StoreBaseModel):
    line: int = Field(description="1-based line (or CSV row) of the file.")
    tokens: int
    segments: list[Segment] = Field(description="The example's text as the model sees "
                                                "it (chat template applied), in runs.")
    label: str | None = Field(default=None, description="Classification: the target.")


class FilePreview(StoreBaseModel):
    id: str
    base: str = Field(description="`namespace/name@N` whose tokenizer encoded the file.")
    format: str | None
    task: str | None
    examples: list[PreviewExample]
    tokens: TokenCounts | None = Field(
        default=None, description="Tokens per example over the whole file, for this base.")
    truncated: int | None = Field(
        default=None, description="Examples longer than the context, cut in training.")
    estimated_seconds_per_epoch: float | None = Field(
        default=None, description="Total tokens / the expected LoRA throughput on this "
                                  "base (`gptstore data validate`'s estimate).")
    estimate_basis: str | None = Field(
        default=None, description="What the throughput rests on: this store's finished "
                                  "LoRA fine-tunes of the base, or a reference figure.")


def _tokenizer(catalog: Any, version: Any) -> Any:
    from gptstore.inference.loader import load_tokenizer

    with _lock:
        cached = _TOKENIZERS.get(version.manifest_digest)
    if cached is not None:
        return cached
    tokenizer = load_tokenizer(catalog, version)
    with _lock:
        if len(_TOKENIZERS) >= _TOKENIZERS_MAX:
            _TOKENIZERS.pop(next(iter(_TOKENIZERS)))
        _TOKENIZERS[version.manifest_digest] = tokenizer
    return tokenizer


def _segments(tokenizer: Any, input_ids: list[int], labels: list[int] | None
              ) -> list[Segment]:
    if labels is None:
        return [Segment(text=tokenizer.decode(input_ids), loss=False)]
    runs: list[tuple[bool, list[int]]] = []
    for token, label in zip(input_ids, labels, strict=True):
        loss = label != IGNORE_INDEX
        if runs and runs[-1][0] == loss:
            runs[-1][1].append(token)
        else:
            runs.append((loss, [token]))
    return [Segment(text=tokenizer.decode(ids), loss=loss) for loss, ids in runs]


@router.get("/files/{file_id}/preview", response_model=FilePreview, responses=NOT_FOUND,
            summary="The first examples of a training file as a base model sees them")
def preview_file(
    file_id: str, catalog: CatalogDep, owner: OwnerDep, principal: PrincipalDep,
    base: Annotated[str, Query(description="The base model whose tokenizer and chat "
                                           "template encode the file.")],
    limit: Annotated[int, Query(ge=1, le=20)] = 3,
) -> FilePreview:
    from gptstore.data.encode import default_max_length, parse_file
    from gptstore.data.report import validate_file
    from gptstore.training.estimate import estimate_report

    file = owned(catalog, file_id, owner)
    version = catalog.resolve(base, principal=principal)
    parsed = parse_file(catalog.files.path(file))
    examples: list[PreviewExample] = []
    measured: dict[str, Any] = {}
    if parsed.format is not None and parsed.records:
        tokenizer = _tokenizer(catalog, version)
        # the whole file's token counts and time estimate, as `gptstore data validate`
        report = validate_file(parsed.path, tokenizer=tokenizer)
        estimate_report(catalog, version, report)
        if report.tokens is not None:
            measured = {"tokens": TokenCounts(**report.tokens.to_dict()),
                        "truncated": report.truncated,
                        "estimated_seconds_per_epoch": report.estimated_training_seconds,
                        "estimate_basis": report.estimate_basis}
        result = parsed.format.encode(parsed.records[:limit], tokenizer,
                                      default_max_length(tokenizer))
        for example in result.examples:
            label = None
            if example.label is not None and result.label_names:
                label = result.label_names[example.label]
            examples.append(PreviewExample(
                line=example.line, tokens=len(example.input_ids), label=label,
                segments=_segments(tokenizer, example.input_ids, example.labels)))
    return FilePreview(id=file.id, base=version.ref,
                       format=parsed.format.name if parsed.format else None,
                       task=parsed.task, examples=examples, **measured)
