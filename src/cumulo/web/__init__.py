"""The web console: static files (HTML, CSS, JavaScript modules, no build step) served by the
API at `/`. The console only uses the public API, so what it does a script can do too.

xterm.js is vendored in static/vendor from npm (versions pinned by package.json and
package-lock.json beside this file, with its licence): nothing is fetched from elsewhere at
run time.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.types import Scope

STATIC = Path(__file__).parent / "static"

# Only this origin's scripts; the serial console's WebSocket is same-origin too. xterm.js adds
# <style> elements of its own, hence 'unsafe-inline' for styles (never for scripts).
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'self'"
)
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
           "Referrer-Policy": "no-referrer"}


class _Static(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(HEADERS)
        return response


def install(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=HEADERS)

    app.mount("/static", _Static(directory=STATIC), name="static")
