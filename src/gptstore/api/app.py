"""The FastAPI app factory: `build_app(settings)`; no import-time side effects.

The lifespan opens the catalog (and runs pending migrations) and closes it on shutdown;
shared state lives on `app.state` and reaches routes through `deps`.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from gptstore import __version__
from gptstore.api.deps import PrincipalDep
from gptstore.api.errors import install_error_handlers
from gptstore.api.runtime import forget_server, record_server
from gptstore.settings import Settings

#: what /api/engine shows every caller; which models are loaded (digests and snapshot
#: folders, which name them) only the local admin and store administrators see
PUBLIC_ENGINE_STATS = ("running", "waiting", "steps")

log = logging.getLogger(__name__)


#: CPython's gen-0 collection runs every 700 net allocations by default; a request that
#: builds a page of 50 models allocates tens of thousands of objects, so it ran several
#: collections, and every tenth of those scanned the older generations too. Measured with
#: benchmarks/search.py (100,000 models, SQLite, a quiet 2-core machine): the searches'
#: p99 102-122 ms with the defaults against p50s of 9-27 ms; 45-100 ms with these.
GC_THRESHOLDS = (50_000, 20, 100)


def _tune_gc() -> None:
    """Collect less often in the server, and move what startup built (modules, the
    settings, the catalog) out of the collector's sight (`gc.freeze`), so collections
    stop rescanning it: the server's latency tails are mostly collection pauses."""
    gc.set_threshold(*GC_THRESHOLDS)
    gc.freeze()


def preload_problem(catalog: Any, names: list[str]) -> str | None:
    """Why `GPTSTORE_PRELOAD` cannot be served from `catalog`, or None."""
    from gptstore.errors import GptStoreError

    for name in names:
        try:
            catalog.resolve(name)
        except GptStoreError as exc:
            return (f"GPTSTORE_PRELOAD names {name!r}: {exc.message} (the names of "
                    "`gptstore models list`, comma-separated)")
    return None


def _start_preload(state: Any, names: list[str]) -> threading.Thread | None:
    """Load the models of `GPTSTORE_PRELOAD` on a background thread: the server answers
    meanwhile, and a request for one of them waits for its load as it would without
    preloading. A model that fails to load is logged and left to load (and fail) on
    first use; its name was checked at start (`preload_problem`)."""
    if not names:
        return None

    def preload() -> None:
        from gptstore.api.deps import build_serving

        try:
            build_serving(state)
            for name in names:
                started = time.monotonic()
                state.engine.load(name)
                log.info("preloaded %s in %.1f s", name, time.monotonic() - started)
        except Exception:
            log.exception("preloading %s failed; the models load on first use", names)

    thread = threading.Thread(target=preload, name="gptstore-preload", daemon=True)
    thread.start()
    return thread


def build_app(settings: Settings | None = None, *, record: bool = False) -> FastAPI:
    """The application. `record`: while it runs, keep the record of where it listens in
    the home (api/runtime.py), as `gptstore serve` does, so the CLI of the same store asks
    it; an app that does not listen on `settings.host` and `settings.port` (a test's
    client) must not."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from gptstore.accounts.store import AccountStore
        from gptstore.api.auth import Authenticator, startup_problem
        from gptstore.api.limits import FairGate, RateLimiter
        from gptstore.catalog.repository import Catalog
        from gptstore.catalog.usage import UsageCounter
        from gptstore.errors import InvalidRequest

        app.state.settings = settings
        app.state.catalog = Catalog(settings)
        accounts = AccountStore(app.state.catalog.db)
        problem = startup_problem(settings, accounts.has_users())
        if problem:
            app.state.catalog.close()
            raise InvalidRequest(problem, param="host")
        problem = preload_problem(app.state.catalog, settings.preload_models)
        if problem:
            app.state.catalog.close()
            raise InvalidRequest(problem, param="preload")
        app.state.accounts = accounts
        app.state.auth = Authenticator(settings, accounts)
        app.state.rate_limiter = RateLimiter(settings.requests_per_minute)
        app.state.gate = FairGate(
            settings.max_batch, settings.max_streams_per_key, settings.max_queue,
            max_running_per_key=settings.max_running_per_key or max(1, settings.max_batch // 2),
            uncapped=frozenset({"local"}))  # the single local user shares with nobody
        app.state.usage = UsageCounter(app.state.catalog.db)  # batched usage writes
        app.state.usage.start()
        app.state.engine = None  # built on first use: see deps.get_serving
        app.state.serving = None
        app.state.worker = None
        if settings.workers > 0:  # the in-process worker runs queued fine-tuning jobs
            from gptstore.jobs.worker import Worker

            app.state.worker = Worker(settings, concurrency=settings.workers)
            app.state.worker.start()
        preloader = _start_preload(app.state, settings.preload_models)
        _tune_gc()
        # `gptstore generate` and `chat` of this store ask this server while it runs
        # (cli/remote.py); the record goes first when it stops. Here, not around
        # uvicorn.run: uvicorn re-raises SIGTERM once it has shut down, so nothing after
        # it runs.
        runtime = record_server(settings.home, settings.host, settings.port) if record \
            else None
        try:
            yield
        finally:
            forget_server(runtime)
            if preloader is not None:  # a load in progress finishes before the engine stops
                preloader.join()
            if app.state.worker is not None:
                app.state.worker.stop()  # running jobs checkpoint and go back to the queue
            if app.state.engine is not None:
                app.state.engine.shutdown()
            app.state.usage.stop()  # writes the counts not yet written
            app.state.catalog.close()

    app = FastAPI(title="gptstore", version=__version__, lifespan=lifespan)
    install_error_handlers(app)
    from gptstore.api.auth import EarlyRateLimit
    from gptstore.api.middleware import RequestGuard

    app.add_middleware(EarlyRateLimit)  # inside RequestGuard: its 429s carry the request id
    app.add_middleware(RequestGuard, max_body=settings.max_request_bytes)

    from gptstore.api.openai import files, fine_tuning, model_objects, routes
    from gptstore.api.store import catalog as store_catalog
    from gptstore.api.store import leaderboards
    from gptstore.api.store.schemas import EngineStats, Health

    @app.get("/healthz", tags=["meta"], response_model=Health)
    def healthz() -> Health:
        return Health(version=__version__)

    # exclude_none: before the engine starts, the answer is only {"started": false}
    @app.get("/api/engine", tags=["meta"], response_model=EngineStats,
             response_model_exclude_none=True)
    def engine_stats(principal: PrincipalDep) -> EngineStats:
        """What the inference engine is doing: running / waiting requests; the loaded
        models for administrators."""
        engine = app.state.engine
        stats = engine.stats() if engine else {}
        if engine is not None:  # requests waiting at the fair gate wait for the engine too
            stats["waiting"] = stats.get("waiting", 0) + app.state.gate.waiting
        if not principal.sees_everything:
            stats = {k: v for k, v in stats.items() if k in PUBLIC_ENGINE_STATS}
        return EngineStats(started=engine is not None, **stats)

    from gptstore.api.store import front as store_front
    from gptstore.api.store import preview as store_preview
    from gptstore.api.store import session as store_session

    app.include_router(store_front.router, prefix="/api")
    app.include_router(store_preview.router, prefix="/api")
    app.include_router(store_session.router, prefix="/api")
    app.include_router(store_catalog.router, prefix="/api")
    app.include_router(files.store_router, prefix="/api")
    app.include_router(leaderboards.router, prefix="/api")
    app.include_router(model_objects.router, prefix="/v1")
    app.include_router(routes.router, prefix="/v1")
    app.include_router(files.router, prefix="/v1")
    app.include_router(fine_tuning.router, prefix="/v1")
    from gptstore.web import pages

    pages.install(app)  # the store front at / (after the API, whose paths win)
    return app
