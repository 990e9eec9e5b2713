"""What an owner may change of a model's store listing after publishing: its description
and tags. Versions (files, card, lineage, metrics) stay immutable; the listing is the
model row, and the search index follows it in the same transaction.

Who may edit is the caller's business: `PATCH /api/models/{namespace}/{name}` lets the
namespace's writers edit the listing and its admins change the visibility (publish /
unpublish, `Catalog.set_visibility`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from sqlalchemy import select

from gptstore.catalog.names import parse_ref
from gptstore.catalog.search import card_of, index_model
from gptstore.catalog.tables import Model, ModelSearch, Namespace, utcnow
from gptstore.errors import InvalidRequest, NotFound
from gptstore.storage.db import Database

MAX_DESCRIPTION_CHARS = 2_000
MAX_TAGS = 20
_TAG = re.compile(r"^[a-z0-9][a-z0-9._+-]{0,47}$")


def check_tags(tags: Sequence[str]) -> list[str]:
    """Tags lower-cased and de-duplicated, each 1-48 of `a-z 0-9 . _ + -`."""
    cleaned = list(dict.fromkeys(t.strip().lower() for t in tags if t.strip()))
    if len(cleaned) > MAX_TAGS:
        raise InvalidRequest(f"{len(cleaned)} tags is too many: keep at most {MAX_TAGS}",
                             param="tags")
    for tag in cleaned:
        if not _TAG.match(tag):
            raise InvalidRequest(
                f"tag {tag!r} is not valid: use 1-48 letters, digits, '.', '_', '+' or '-', "
                "starting with a letter or digit", param="tags")
    return cleaned


def update_listing(db: Database, name: str, *, description: str | None = None,
                   tags: Sequence[str] | None = None) -> None:
    """Change the description and / or tags of model `name` and reindex it."""
    ref = parse_ref(name, allow_version=False)
    if description is not None and len(description) > MAX_DESCRIPTION_CHARS:
        raise InvalidRequest(f"the description has {len(description)} characters: keep it "
                             f"under {MAX_DESCRIPTION_CHARS}", param="description")
    new_tags = check_tags(tags) if tags is not None else None
    with db.session(write=True) as session:
        model = session.scalars(select(Model).join(Model.namespace).where(
            Namespace.name == ref.namespace, Model.name == ref.name)).first()
        if model is None:
            raise NotFound(f"model {ref.full_name} is not in the store", param="model")
        if description is not None:
            model.description = description.strip()
        if new_tags is not None:
            model.tags = new_tags
        model.updated_at = utcnow()
        row = session.get(ModelSearch, model.id)  # the card's text stays in the document
        card = card_of(row.document) if row is not None else ""
        index_model(session, model, ref.namespace, card=card, base_model=model.base_model)
