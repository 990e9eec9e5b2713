"""The store front's catalog parts on SQLite and PostgreSQL: full-text search over names,
descriptions, tags and cards; filters; the trending / rating / newest sorts with keyset
pages; batched usage counters and decayed trending; likes and ratings, one per user."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from gptstore.catalog.access import ANONYMOUS, SYSTEM
from gptstore.catalog.reactions import Reactions
from gptstore.catalog.repository import Catalog
from gptstore.catalog.tables import Model, ModelUsage
from gptstore.catalog.usage import UsageCounter, day_weight, record_usage, refresh_trending, today
from gptstore.errors import InvalidRequest, NotFound


def _publish(catalog: Catalog, tmp_path: Path, name: str, **kwargs: object) -> None:
    folder = tmp_path / name.replace("/", "__")
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_bytes(b"{}")
    catalog.publish(name, folder, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def seeded(catalog: Catalog, tmp_path: Path) -> Catalog:
    _publish(catalog, tmp_path, "acme/base", description="A small base model.", tags=["base"],
             license="apache-2.0")
    _publish(catalog, tmp_path, "acme/sentiment-reviews", task="classification",
             description="Classifies movie reviews.", tags=["sentiment", "en"],
             license="mit", base="acme/base",
             lineage={"dataset": {"name": "sst2", "digest": "sha256:00"}},
             metrics={"final": {"accuracy": 0.9}})
    _publish(catalog, tmp_path, "zeta/pirate_chat", description="Talks like a pirate.",
             tags=["chat"], license="mit", base="acme/base@1")
    _publish(catalog, tmp_path, "zeta/translator", description="English to German.",
             tags=["translation"])
    return catalog


def _names(catalog: Catalog, **kwargs: object) -> list[str]:
    return sorted(m.name for m in catalog.search_models(**kwargs).models)  # type: ignore[arg-type]


def test_full_text_search_finds_words_as_prefixes(seeded: Catalog) -> None:
    assert _names(seeded, text="pirate") == ["zeta/pirate_chat"]
    assert _names(seeded, text="PIRATE talks") == ["zeta/pirate_chat"]  # every word, any case
    assert _names(seeded, text="sentim") == ["acme/sentiment-reviews"]  # a prefix (typing)
    assert _names(seeded, text="review") == ["acme/sentiment-reviews"]  # description / stem
    assert _names(seeded, text="translation") == ["zeta/translator"]  # a tag
    assert _names(seeded, text="sst2") == ["acme/sentiment-reviews"]  # the card's lineage
    # the pirate's card names its base, acme/base@1
    assert _names(seeded, text="acme") == ["acme/base", "acme/sentiment-reviews",
                                           "zeta/pirate_chat"]
    assert _names(seeded, text="pirate german") == []  # all words must match
    # query syntax of either database is only text here
    assert _names(seeded, text='pirate" * ^:( -') == ["zeta/pirate_chat"]
    assert _names(seeded, text="'); DROP TABLE models; --") == []
    assert len(_names(seeded, text="  ")) == 4  # no words: no filter


def test_filters(seeded: Catalog) -> None:
    assert _names(seeded, base="acme/base") == ["acme/sentiment-reviews", "zeta/pirate_chat"]
    assert _names(seeded, base="acme/base@1") == ["acme/sentiment-reviews", "zeta/pirate_chat"]
    assert _names(seeded, tag="sentiment") == ["acme/sentiment-reviews"]
    assert _names(seeded, license="mit") == ["acme/sentiment-reviews", "zeta/pirate_chat"]
    assert _names(seeded, owner="zeta") == ["zeta/pirate_chat", "zeta/translator"]
    assert _names(seeded, owner="zeta", license="mit", text="pirate") == ["zeta/pirate_chat"]
    assert _names(seeded, task="classification", tag="chat") == []


def test_a_republished_model_is_reindexed_and_a_removed_one_is_gone(
        seeded: Catalog, tmp_path: Path) -> None:
    folder = tmp_path / "v2"
    folder.mkdir()
    (folder / "config.json").write_bytes(b'{"v": 2}')
    seeded.publish("zeta/translator", folder, new_model=False, base="acme/base")
    assert _names(seeded, base="acme/base") == [
        "acme/sentiment-reviews", "zeta/pirate_chat", "zeta/translator"]
    seeded.delete_model("zeta/translator")
    assert _names(seeded, text="german") == []
    assert _names(seeded, tag="translation") == []


def test_usage_counts_are_batched_and_make_trending(seeded: Catalog) -> None:
    counter = UsageCounter(seeded.db, interval=3600)
    for _ in range(5):
        counter.count_request("zeta/translator")
    counter.count_request("zeta/pirate_chat@1")
    counter.count_download("zeta/pirate_chat")
    counter.count_request("gone/model")  # not in the store: dropped at the flush
    assert counter.pending() == 8
    assert seeded.get_model("zeta/translator").requests == 0  # nothing written yet
    counter.flush()
    assert counter.pending() == 0
    translator = seeded.get_model("zeta/translator")
    assert (translator.requests, translator.downloads) == (5, 0)
    pirate = seeded.get_model("zeta/pirate_chat")
    assert (pirate.requests, pirate.downloads) == (1, 1)
    page = seeded.search_models(sort="trending")
    assert [m.name for m in page.models][:2] == ["zeta/translator", "zeta/pirate_chat"]

    # an old burst weighs less than a fresh one, and ages out of the window
    record_usage(seeded.db, {"acme/base": (20, 0)}, on=today() - timedelta(days=4))
    refresh_trending(seeded.db)
    with seeded.db.session() as session:
        scores = dict(session.execute(select(Model.name, Model.trending)).all())
        days = session.scalars(select(ModelUsage.day)).all()
    assert scores["base"] == pytest.approx(20 * day_weight(4))  # 5.0
    assert scores["translator"] == pytest.approx(5.0)
    assert len(days) == 3
    refresh_trending(seeded.db, on=today() + timedelta(days=7))
    with seeded.db.session() as session:
        assert set(session.scalars(select(Model.trending))) == {0.0}


def test_the_counter_writes_at_stop(seeded: Catalog) -> None:
    counter = UsageCounter(seeded.db, interval=3600)
    counter.start()
    counter.count_request("zeta/translator")
    counter.stop()
    assert seeded.get_model("zeta/translator").requests == 1


def test_likes_and_ratings_one_per_user(seeded: Catalog) -> None:
    reactions = Reactions(seeded.db)
    name = "zeta/pirate_chat"
    assert reactions.set_like(name, ANONYMOUS, "ann", True).likes == 1
    assert reactions.set_like(name, ANONYMOUS, "ann", True).likes == 1  # once per user
    info = reactions.set_like(name, ANONYMOUS, "bob", True)
    assert (info.likes, info.liked) == (2, True)
    assert reactions.set_like(name, ANONYMOUS, "bob", False).likes == 1
    reactions.set_rating(name, ANONYMOUS, "ann", 5)
    reactions.set_rating(name, ANONYMOUS, "bob", 2)
    info = reactions.set_rating(name, ANONYMOUS, "bob", 4)  # bob changes his mind
    assert (info.rating, info.rating_count, info.my_stars) == (4.5, 2, 4)
    assert info.histogram == {1: 0, 2: 0, 3: 0, 4: 1, 5: 1}
    assert reactions.get(name, ANONYMOUS, "cid").my_stars is None
    assert reactions.get(name, ANONYMOUS, "ann").liked
    reactions.set_rating("zeta/translator", ANONYMOUS, "ann", 3)
    page = seeded.search_models(sort="rating", limit=1)
    assert [m.name for m in page.models] == [name]
    assert (page.models[0].rating, page.models[0].rating_count) == (4.5, 2)
    rest = seeded.search_models(sort="rating", limit=10, cursor=page.next_cursor)
    assert next(m.name for m in rest.models) == "zeta/translator"
    assert seeded.search_models(sort="likes").models[0].name == name
    with pytest.raises(InvalidRequest, match="1 to 5"):
        reactions.set_rating(name, ANONYMOUS, "ann", 6)
    assert reactions.set_rating(name, ANONYMOUS, "ann", None).rating_count == 1


def test_private_models_cannot_be_liked_by_who_cannot_read_them(seeded: Catalog) -> None:
    with seeded.db.session(write=True) as session:
        model = session.scalars(select(Model).where(Model.name == "translator")).one()
        model.visibility = "private"
    reactions = Reactions(seeded.db)
    with pytest.raises(NotFound):
        reactions.set_like("zeta/translator", ANONYMOUS, "ann", True)
    assert reactions.set_like("zeta/translator", SYSTEM, "ann", True).likes == 1


@pytest.mark.parametrize("sort", ["trending", "rating", "newest"])
def test_new_sorts_page_through_every_model_once(seeded: Catalog, sort: str) -> None:
    seen, cursor = [], None
    while True:
        page = seeded.search_models(sort=sort, limit=1, cursor=cursor)
        seen += [m.name for m in page.models]
        if not page.has_more:
            break
        cursor = page.next_cursor
    assert sorted(seen) == ["acme/base", "acme/sentiment-reviews", "zeta/pirate_chat",
                            "zeta/translator"]
    if sort == "newest":
        assert seen[0] == "zeta/translator"
