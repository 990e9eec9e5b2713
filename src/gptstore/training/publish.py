"""Publishing a finished run as a new store model version.

`publish_run(catalog, record, folder)` publishes the folder the method wrote (an
adapter or a full model) under the run's name, with the lineage and metrics of its
`RunRecord` (which the catalog renders into the model card). `Catalog.publish` stores
it atomically, so a failure at any point leaves no half-published model.

Reads only the record: no live model, no loop state.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gptstore.catalog.repository import Catalog, VersionInfo
from gptstore.training.record import RunRecord


def _plain(doc: dict[str, Any]) -> dict[str, Any]:
    """JSON types only (the catalog stores JSON; the card renders YAML)."""
    return json.loads(json.dumps(doc, default=str))


def publish_run(catalog: Catalog, record: RunRecord, folder: Path, *, name: str | None = None,
                description: str | None = None, checkpoint: bool = False) -> VersionInfo:
    """Publish `folder` as the new model `record.config.name` (or `name`: a mid-run
    checkpoint of it, tagged `checkpoint`)."""
    cfg = record.config
    description = description or cfg.description or (
        f"{record.task} fine-tune ({record.method}) of {record.base} on "
        f"{record.train_data.name}.")
    lineage = record.lineage()
    if checkpoint:
        lineage["checkpoint_of"] = cfg.name
    tags = [*cfg.tags, "fine-tuned", record.method, *(["checkpoint"] if checkpoint else [])]
    return catalog.publish(
        name or cfg.name, folder, task=record.task, kind=record.kind, base=record.base,
        description=description, tags=tags, license=cfg.license, lineage=_plain(lineage),
        metrics=_plain(record.metrics()), new_model=True, visibility=cfg.visibility)
