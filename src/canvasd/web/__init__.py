"""The playground: static files (plain HTML, CSS and ES modules, no build step, no CDN) served at
``/``. The page talks only to the public API (/v1/models, /v1/images/*), with relative URLs so it
works behind a reverse proxy's path prefix too."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "static"


class RevalidatedFiles(StaticFiles):
    """Static files the browser revalidates on every load (ETag: cheap 304s), so a server upgrade
    never runs a stale module beside a new one."""

    def file_response(self, *args, **kwargs):  # type: ignore[override]
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "no-cache"
        return response


def mount_playground(app: FastAPI) -> None:
    """GET / is the page; its assets live under /web/. Mounted at /web rather than / so unknown
    paths keep the API's OpenAI-shaped 404."""
    index = STATIC_DIR / "index.html"

    async def page() -> FileResponse:
        return FileResponse(index, media_type="text/html", headers={"Cache-Control": "no-cache"})

    app.add_api_route("/", page, methods=["GET"], include_in_schema=False)
    app.mount("/web", RevalidatedFiles(directory=STATIC_DIR), name="playground")
