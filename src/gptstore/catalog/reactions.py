"""Likes and 1-5 star ratings: one of each per user and model.

A user is a string the API derives from the request's principal (`api/store/identity`);
this module does not know how. A like or a rating is a row keyed by (model, user), so a
second like or rating from the same user replaces the first; the model's `likes`,
`rating` (mean stars) and `rating_count` are updated in the same transaction, so the
listing's sort columns always agree with the rows.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from gptstore.catalog.access import Principal, readable_by
from gptstore.catalog.names import parse_ref
from gptstore.catalog.tables import Model, ModelLike, ModelRating, Namespace, utcnow
from gptstore.errors import InvalidRequest, NotFound
from gptstore.storage.db import Database


@dataclass(frozen=True)
class ReactionsInfo:
    """A model's likes and ratings, and the asking user's own."""

    likes: int
    rating: float  # mean stars, 0 when unrated
    rating_count: int
    histogram: dict[int, int]  # stars 1..5 -> ratings
    liked: bool  # by the asking user
    my_stars: int | None  # the asking user's rating


def _model_id(session: Session, name: str, principal: Principal) -> int:
    ref = parse_ref(name, allow_version=False)
    model_id = session.scalar(
        select(Model.id).join(Model.namespace)
        .where(Namespace.name == ref.namespace, Model.name == ref.name, readable_by(principal)))
    if model_id is None:
        raise NotFound(f"model {ref.full_name} is not in the store", param="model")
    return int(model_id)


def _refresh_counts(session: Session, model_id: int) -> None:
    session.flush()
    likes = session.scalar(select(func.count()).where(ModelLike.model_id == model_id))
    count, mean = session.execute(
        select(func.count(), func.avg(ModelRating.stars)).where(ModelRating.model_id == model_id)
    ).one()
    model = session.get(Model, model_id)
    assert model is not None
    model.likes = int(likes or 0)
    model.rating_count = int(count or 0)
    model.rating = round(float(mean or 0.0), 4)


def _read(session: Session, model_id: int, user: str | None) -> ReactionsInfo:
    model = session.get(Model, model_id)
    assert model is not None
    histogram = dict.fromkeys(range(1, 6), 0)
    for stars, count in session.execute(
            select(ModelRating.stars, func.count()).where(ModelRating.model_id == model_id)
            .group_by(ModelRating.stars)):
        histogram[int(stars)] = int(count)
    liked, mine = False, None
    if user is not None:
        liked = session.get(ModelLike, (model_id, user)) is not None
        rating = session.get(ModelRating, (model_id, user))
        mine = int(rating.stars) if rating is not None else None
    return ReactionsInfo(likes=model.likes, rating=float(model.rating or 0.0),
                         rating_count=model.rating_count or 0, histogram=histogram,
                         liked=liked, my_stars=mine)


class Reactions:
    """Likes and ratings over the catalog's database; every call names the model, the
    principal (who must be able to read it) and the user."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def get(self, name: str, principal: Principal, user: str | None) -> ReactionsInfo:
        with self.db.session() as session:
            return _read(session, _model_id(session, name, principal), user)

    def set_like(self, name: str, principal: Principal, user: str, liked: bool
                 ) -> ReactionsInfo:
        with self.db.session(write=True) as session:
            model_id = _model_id(session, name, principal)
            exists = session.get(ModelLike, (model_id, user)) is not None
            if liked and not exists:
                session.add(ModelLike(model_id=model_id, user_id=user))
            elif not liked and exists:
                session.execute(delete(ModelLike).where(ModelLike.model_id == model_id,
                                                        ModelLike.user_id == user))
            _refresh_counts(session, model_id)
            return _read(session, model_id, user)

    def set_rating(self, name: str, principal: Principal, user: str, stars: int | None
                   ) -> ReactionsInfo:
        """Rate with 1-5 stars, or withdraw the rating with None."""
        if stars is not None and (isinstance(stars, bool) or stars not in range(1, 6)):
            raise InvalidRequest(f"stars {stars!r} is out of range: rate with 1 to 5 stars",
                                 param="stars")
        with self.db.session(write=True) as session:
            model_id = _model_id(session, name, principal)
            rating = session.get(ModelRating, (model_id, user))
            if stars is None:
                if rating is not None:
                    session.delete(rating)
            elif rating is None:
                session.add(ModelRating(model_id=model_id, user_id=user, stars=stars))
            else:
                rating.stars = stars
                rating.updated_at = utcnow()
            _refresh_counts(session, model_id)
            return _read(session, model_id, user)
