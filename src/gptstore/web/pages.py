"""The store front's pages: one HTML shell for every page path, and the static files.

Each page is drawn in the browser by `static/app.js` from the JSON API (the routes the
SDK uses, plus `/api/search`, `/api/categories`, ...), so the UI needs nothing the API
does not offer. The shell is the same for every path; the script reads the path. The
page routes are listed one by one (not a catch-all), so an unknown path still answers
the API's 404 envelope.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from gptstore import __version__

STATIC_DIR = Path(__file__).resolve().parent / "static"

#: the paths the app draws (FastAPI path syntax); models may carry `@version`
PAGE_PATHS = (
    "/",
    "/search",
    "/models/{namespace}/{name}",
    "/compare",
    "/leaderboards",
    "/leaderboards/{suite}",
    "/finetune",
    "/jobs/{job_id}",
    "/me/models",
    "/me/files",
    "/me/jobs",
    "/me/keys",
    "/login",
)


def shell() -> str:
    version = __version__
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>gptstore</title>
<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/static/style.css">
<script type="module" src="/static/app.js"></script>
</head>
<body>
<a class="skip" href="#main">Skip to content</a>
<header class="top">
  <a class="brand" href="/">gptstore</a>
  <nav aria-label="Main">
    <a href="/search">Models</a>
    <a href="/compare">Compare</a>
    <a href="/leaderboards">Leaderboards</a>
    <a href="/finetune">Fine-tune</a>
    <a href="/me/models">My models</a>
    <a href="/me/files">Files</a>
    <a href="/me/jobs">Jobs</a>
    <a href="/me/keys">Keys</a>
    <span id="account-slot"></span>
  </nav>
</header>
<main id="main" tabindex="-1">
  <noscript><p class="error">The store front needs JavaScript. The same store is
  reachable with the <code>gptstore</code> CLI and the HTTP API at <a href="/docs">/docs</a>.
  </p></noscript>
  <p class="muted" id="loading">Loading…</p>
</main>
<footer class="foot">gptstore {version} · <a href="/docs">HTTP API</a></footer>
</body>
</html>
"""


def install(app: FastAPI) -> None:
    """Serve the shell at every page path and the static files under `/static`."""
    page = shell()

    async def render() -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    for path in PAGE_PATHS:
        app.add_api_route(path, render, methods=["GET"], response_class=HTMLResponse,
                          include_in_schema=False)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
