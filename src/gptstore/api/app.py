"""The FastAPI app factory: `build_app(settings)`; no import-time side effects.

The lifespan opens the catalog (and runs pending migrations) and closes it on shutdown;
shared state lives on `app.state` and reaches routes through `deps`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from gptstore import __version__
from gptstore.api.errors import install_error_handlers
from gptstore.settings import Settings


def build_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from gptstore.catalog.repository import Catalog

        app.state.settings = settings
        app.state.catalog = Catalog(settings)
        app.state.engine = None  # built on first use: see deps.get_serving
        app.state.serving = None
        app.state.worker = None
        if settings.workers > 0:  # the in-process worker runs queued fine-tuning jobs
            from gptstore.jobs.worker import Worker

            app.state.worker = Worker(settings, concurrency=settings.workers)
            app.state.worker.start()
        try:
            yield
        finally:
            if app.state.worker is not None:
                app.state.worker.stop()  # running jobs checkpoint and go back to the queue
            if app.state.engine is not None:
                app.state.engine.shutdown()
            app.state.catalog.close()

    app = FastAPI(title="gptstore", version=__version__, lifespan=lifespan)
    install_error_handlers(app)

    from gptstore.api.openai import files as openai_files
    from gptstore.api.openai import fine_tuning as openai_fine_tuning
    from gptstore.api.openai import models as openai_models
    from gptstore.api.openai import routes as openai_routes
    from gptstore.api.store import models as store_models

    @app.get("/healthz", tags=["meta"])
    def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    @app.get("/api/engine", tags=["meta"])
    def engine_stats() -> dict[str, object]:
        """What the inference engine is doing: running / waiting requests, loaded models."""
        engine = app.state.engine
        return {"started": engine is not None, **(engine.stats() if engine else {})}

    app.include_router(store_models.router, prefix="/api")
    app.include_router(openai_models.router, prefix="/v1")
    app.include_router(openai_routes.router, prefix="/v1")
    app.include_router(openai_files.router, prefix="/v1")
    app.include_router(openai_files.store_router, prefix="/api")
    app.include_router(openai_fine_tuning.router, prefix="/v1")
    return app
