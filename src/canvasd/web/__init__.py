"""The playground: static files (plain HTML, CSS and ES modules, no build step, no CDN) served at
``/``. The page talks only to the public API (/v1/models, /v1/images/*), with relative URLs so it
works behind a reverse proxy's path prefix too."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "static"


def mount_playground(app: FastAPI) -> None:
    """GET / is the page; its assets live under /web/. Mounted at /web rather than / so unknown
    paths keep the API's OpenAI-shaped 404."""
    index = STATIC_DIR / "index.html"

    async def page() -> FileResponse:
        return FileResponse(index, media_type="text/html", headers={"Cache-Control": "no-cache"})

    app.add_api_route("/", page, methods=["GET"], include_in_schema=False)
    app.mount("/web", StaticFiles(directory=STATIC_DIR), name="playground")
