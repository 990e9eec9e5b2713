"""Full-text search and the store front's filters, as SQL conditions on `models`.

`Catalog.search_models` is the one method that lists models; it takes its conditions
from here. The text index is the database's own (migration 0005):

- SQLite: an FTS5 table over `model_search.document` (porter stemmer), queried with
  `MATCH`;
- PostgreSQL: a generated `tsvector` column (english config) with a GIN index, queried
  with `@@ to_tsquery`.

Both see the same document (`search_document`: names, description, tags and the card's
text) and the same query: every word the user typed must occur, each as a prefix
(`sent` finds `sentiment`), so a search box works while typing. Words are cut out of
the query with a regular expression, so nothing the user types reaches either query
language as syntax.

`index_model` writes a model's document and tags; `Catalog.publish` calls it in the
transaction that publishes a version, so the index never lags the catalog.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from sqlalchemy import ColumnElement, Integer, bindparam, column, delete, select, text
from sqlalchemy.orm import Session

from gptstore.catalog.tables import Model, ModelSearch, ModelTag, Namespace

#: a card longer than this is indexed by its beginning (a page of text is plenty to be
#: found by, and the index stays small)
MAX_CARD_CHARS = 20_000
#: words of a query beyond this many are ignored (each is one more index lookup)
MAX_QUERY_WORDS = 16
_WORD = re.compile(r"\w+", re.UNICODE)


def query_words(query: str) -> list[str]:
    """The words of a search box's text, lower-cased; punctuation separates words, as the
    indexes' tokenisers do (`chat_bot` is `chat` and `bot`)."""
    words = [w.lower() for w in _WORD.findall(query.replace("_", " "))]
    return list(dict.fromkeys(words))[:MAX_QUERY_WORDS]


#: between a document's listing part and its card (a form feed: whitespace to both
#: tokenisers), so the card can be kept when only the listing changes
CARD_SEPARATOR = "\n\x0c\n"


def search_document(namespace: str, name: str, description: str, tags: Iterable[str],
                    card: str = "") -> str:
    """What a model is found by."""
    listing = "\n".join([f"{namespace} {name} {namespace}/{name}", description or "",
                         " ".join(tags)])
    return listing + CARD_SEPARATOR + card[:MAX_CARD_CHARS]


def card_of(document: str) -> str:
    """The card part of a `search_document`."""
    return document.split(CARD_SEPARATOR, 1)[1] if CARD_SEPARATOR in document else ""


def index_model(session: Session, model: Model, namespace: str, *, card: str = "",
                base_model: str | None = None) -> None:
    """(Re)write `model`'s search document, tag rows and base in `session`'s
    transaction."""
    tags = list(dict.fromkeys(str(t)[:96] for t in (model.tags or [])))
    session.execute(delete(ModelTag).where(ModelTag.model_id == model.id))
    session.add_all(ModelTag(model_id=model.id, tag=tag) for tag in tags)
    document = search_document(namespace, model.name, model.description, tags, card)
    row = session.get(ModelSearch, model.id)
    if row is None:
        session.add(ModelSearch(model_id=model.id, document=document))
    else:
        row.document = document
    model.base_model = base_model


def text_condition(session: Session, query: str) -> ColumnElement[bool] | None:
    """Models whose document holds every word of `query` (as a prefix); None when the
    query has no words (then nothing is filtered)."""
    words = query_words(query)
    if not words:
        return None
    if session.get_bind().dialect.name == "postgresql":
        # to_tsquery syntax: 'word':* is a prefix; & is AND. Words are \w+ only, quoted.
        tsquery = " & ".join(f"'{w}':*" for w in words)
        matching = text(
            "SELECT model_id FROM model_search "
            "WHERE tsv @@ to_tsquery('english', :tsquery)"
        ).bindparams(bindparam("tsquery", tsquery)).columns(column("model_id", Integer))
    else:
        # FTS5 syntax: "word"* is a prefix; terms side by side are ANDed.
        match = " ".join(f'"{w}"*' for w in words)
        matching = text(
            "SELECT rowid FROM model_search_fts WHERE model_search_fts MATCH :match"
        ).bindparams(bindparam("match", match)).columns(column("rowid", Integer))
    return Model.id.in_(matching)


def filter_conditions(*, base: str | None = None, tag: str | None = None,
                      license: str | None = None, owner: str | None = None
                      ) -> list[ColumnElement[bool]]:
    """Equality filters of the store front; each is one index lookup (migration 0005)."""
    conditions: list[ColumnElement[bool]] = []
    if base:
        # a version part is ignored: the fine-tunes of any version of the base
        conditions.append(Model.base_model == base.split("@", 1)[0])
    if tag:
        # IN, not a correlated EXISTS: the planner may start from the tag's index rows
        conditions.append(Model.id.in_(select(ModelTag.model_id).where(ModelTag.tag == tag)))
    if license:
        conditions.append(Model.license == license)
    if owner:
        conditions.append(Namespace.name == owner)
    return conditions
