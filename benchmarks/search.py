"""Search latency of the store front at catalog scale (SQLite and PostgreSQL).

Seeds a store with N models (default 100,000) across 1,000 namespaces: each with one
version (headline metrics), 1-3 tags, a task, a license, a description of 8-20 words
from a 5,000-word vocabulary (Zipf-like frequencies), a base for 30% of them, and
counters (downloads, likes, ratings); 20% were used on 1-7 of the last 7 days (rows of
`model_usage`, from which trending is computed as the server does). Rows are written
with bulk inserts through the migrated schema, so the search index (FTS5 / tsvector +
GIN) is built by the same triggers and generated columns as in a real store.

Then times, in-process through the FastAPI app (routing, the queries, serialisation;
no network), p50 / p99 over `--repeats` requests each:

- a word query:     GET /api/search?q=<a word found in ~4% of descriptions>
- a filtered query: GET /api/search?task=classification&tag=<tag>&license=mit
- a sorted page:    GET /api/search?sort=downloads (page 1, then page 2 by cursor)
- the home page's API: GET /api/categories (five shelves)
- a model page's API:  GET /api/models/{name}, .../reactions, /api/search?base=...

    .venv/bin/python benchmarks/search.py [--models 100000]
        [--database-url postgresql://postgres@127.0.0.1:5432/bench]

Target (issue 11): p99 under 100 ms for the searches; the home and model pages' API
under 300 ms.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert

from gptstore.catalog.search import search_document
from gptstore.catalog.tables import (
    Model,
    ModelSearch,
    ModelTag,
    ModelUsage,
    Namespace,
    Version,
)
from gptstore.catalog.usage import refresh_trending

TAGS = [f"tag{i}" for i in range(50)] + ["qa", "translation", "code", "sentiment", "chat"]
LICENSES = ["mit", "apache-2.0", "cc-by-4.0", "llama3", "other"]
CHUNK = 5_000


def vocabulary(rng: random.Random, size: int = 5_000) -> list[str]:
    syllables = ["ka", "lo", "mi", "ne", "ru", "ta", "so", "vi", "de", "po", "ghe", "xu",
                 "bra", "cle", "fin", "qua", "zor", "yel", "wim", "hon"]
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(syllables) for _ in range(rng.randint(2, 4))))
    return sorted(words)


def seed(catalog: Any, n: int, rng: random.Random) -> dict[str, str]:
    """Bulk-insert `n` models; returns example values to query for."""
    words = vocabulary(rng)
    weights = [1.0 / (rank + 1) for rank in range(len(words))]  # Zipf-like
    now = datetime.now(UTC)
    today = now.date()
    with catalog.db.session(write=True) as session:
        session.execute(insert(Namespace), [
            {"id": i + 1, "name": f"org{i}", "kind": "user", "created_at": now}
            for i in range(1000)])
    base_names: list[str] = []
    next_id = 1
    while next_id <= n:
        ids = range(next_id, min(n, next_id + CHUNK - 1) + 1)
        models, versions, tags, documents, usage = [], [], [], [], []
        for model_id in ids:
            namespace = f"org{model_id % 1000}"
            name = f"model-{model_id}"
            description = " ".join(rng.choices(words, weights, k=rng.randint(8, 20)))
            model_tags = rng.sample(TAGS, rng.randint(1, 3))
            base = rng.choice(base_names) if base_names and rng.random() < 0.3 else None
            downloads = int(rng.paretovariate(1.2)) - 1
            ratings = rng.randint(0, 20)
            created = now - timedelta(minutes=rng.randint(0, 500_000))
            models.append({
                "id": model_id, "namespace_id": model_id % 1000 + 1, "name": name,
                "task": "classification" if rng.random() < 0.3 else "causal-lm",
                "description": description, "tags": model_tags,
                "license": rng.choice(LICENSES), "visibility": "public",
                "created_at": created, "updated_at": created, "downloads": downloads,
                "likes": rng.randint(0, 50), "base_model": base,
                "requests": rng.randint(0, 10_000),
                "rating": round(rng.uniform(1, 5), 2) if ratings else 0.0,
                "rating_count": ratings, "trending": 0.0})
            if rng.random() < 0.2:  # used this week: trending comes from these rows
                for age in rng.sample(range(7), rng.randint(1, 7)):
                    usage.append({"model_id": model_id, "day": today - timedelta(days=age),
                                  "requests": int(rng.paretovariate(1.0)),
                                  "downloads": rng.randint(0, 3)})
            versions.append({
                "id": model_id, "model_id": model_id, "number": 1,
                "manifest_digest": "sha256:" + "0" * 64, "kind": "full", "lineage": {},
                "metrics": {"final": {"accuracy": round(rng.random(), 3)}},
                "size": 1000, "created_at": created})
            tags += [{"model_id": model_id, "tag": t} for t in model_tags]
            documents.append({"model_id": model_id, "document": search_document(
                namespace, name, description, model_tags)})
            if rng.random() < 0.01:
                base_names.append(f"{namespace}/{name}")
        with catalog.db.session(write=True) as session:
            session.execute(insert(Model), models)
            session.execute(insert(Version), versions)
            session.execute(insert(ModelTag), tags)
            session.execute(insert(ModelSearch), documents)
            if usage:
                session.execute(insert(ModelUsage), usage)
        next_id = ids[-1] + 1
    refresh_trending(catalog.db)  # as the server's counter does once a day
    # the 41st most frequent word: in ~4% of descriptions (1/41 of the top word's weight)
    return {"word": words[40], "base": max(set(base_names), key=base_names.count),
            "model": "org7/model-7", "tag": "tag3"}


def timed(call: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """(p50, p99) in milliseconds, after one warm-up call."""
    call()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1,
                                                   round(0.99 * (len(samples) - 1)))]


def get(client: Any, url: str, **params: Any) -> Callable[[], Any]:
    def call() -> Any:
        response = client.get(url, params=params)
        assert response.status_code == 200, response.text
        return response.json()
    return call


def cases(client: Any, values: dict[str, str]) -> Iterator[tuple[str, Callable[[], Any]]]:
    yield "word query", get(client, "/api/search", q=values["word"])
    yield "filtered query", get(client, "/api/search", task="classification",
                                tag=values["tag"], license="mit")
    yield "word + filter + sort", get(client, "/api/search", q=values["word"],
                                      task="causal-lm", sort="rating")
    yield "sorted page 1", get(client, "/api/search", sort="downloads")
    cursor = client.get("/api/search", params={"sort": "downloads"}).json()["next_cursor"]
    yield "sorted page 2", get(client, "/api/search", sort="downloads", cursor=cursor)
    yield "home (/api/categories)", get(client, "/api/categories")
    namespace, name = values["model"].split("/")

    def model_page() -> None:
        get(client, f"/api/models/{namespace}/{name}")()
        get(client, f"/api/models/{namespace}/{name}/reactions")()
        get(client, "/api/search", base=values["base"], sort="downloads", limit=12)()
    yield "model page (3 calls)", model_page


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--database-url", default=None,
                        help="postgresql://... (an empty database, reset here); "
                             "default: SQLite in a temp home")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from fastapi.testclient import TestClient

    from gptstore.api.app import build_app
    from gptstore.catalog.repository import Catalog
    from gptstore.settings import Settings

    home = Path(tempfile.mkdtemp(prefix="gptstore-search-bench-"))
    settings = Settings(home=home, offline=True, workers=0,
                        **({"database_url": args.database_url} if args.database_url else {}))
    if args.database_url:
        import psycopg

        with psycopg.connect(args.database_url, autocommit=True) as conn:
            conn.execute("DROP SCHEMA public CASCADE")
            conn.execute("CREATE SCHEMA public")
    catalog = Catalog(settings)
    start = time.perf_counter()
    values = seed(catalog, args.models, random.Random(args.seed))
    seeded = time.perf_counter() - start
    catalog.close()
    database = "postgresql" if args.database_url else "sqlite"
    results = {}
    with TestClient(build_app(settings)) as client:
        if args.database_url:  # fresh statistics, as autovacuum would have made
            with client.app.state.catalog.db.engine.begin() as conn:  # type: ignore[attr-defined]
                conn.exec_driver_sql("ANALYZE")
        hits = client.get("/api/search", params={"q": values["word"], "limit": 200}).json()
        for label, call in cases(client, values):
            p50, p99 = timed(call, args.repeats)
            results[label] = {"p50_ms": round(p50, 2), "p99_ms": round(p99, 2)}
    if args.json:
        print(json.dumps({"database": database, "models": args.models,
                          "seed_seconds": round(seeded, 1), "results": results}, indent=1))
        return
    print(f"{database}: {args.models} models seeded in {seeded:.1f} s; word "
          f"{values['word']!r} matches {'200+' if hits['has_more'] else len(hits['data'])}")
    print(f"{'request':28} {'p50 ms':>8} {'p99 ms':>8}")
    for label, figures in results.items():
        print(f"{label:28} {figures['p50_ms']:8.1f} {figures['p99_ms']:8.1f}")


if __name__ == "__main__":
    main()
