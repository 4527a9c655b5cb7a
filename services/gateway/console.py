"""The operator console (docs/console.md): static files served at `/console`.

The console is plain HTML, CSS and JavaScript modules in `console/` beside this file, with
no build step. It is a client of the public HTTP API like any other: the files are public,
and every call they make sends the access key the user signed in with, so the console adds
no way in that the API does not already have. Its pages get a Content-Security-Policy that
allows nothing but this origin: no CDN, no inline script or style, no framing.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from starlette.exceptions import HTTPException
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONSOLE_DIR = Path(__file__).with_name("console")
PREFIX = "/console"
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "connect-src 'self'",
        "font-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
HEADERS = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    # Files change with the gateway's release: revalidate rather than run a stale module.
    (b"cache-control", b"no-cache"),
)


class SecurityHeaders:
    """Adds the console's headers (CSP first) to every answer of the wrapped app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name for name, _ in HEADERS}
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in names]
                message["headers"] = [*kept, *HEADERS]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except HTTPException as exc:
            # StaticFiles' 404 (or 405), answered here so that it carries the headers too,
            # as the API's JSON error.
            answer = JSONResponse({"detail": exc.detail}, exc.status_code, exc.headers)
            await answer(scope, receive, sending)


def mount_console(app: FastAPI, directory: Path = CONSOLE_DIR) -> None:
    """Serve the console at `/console` and `/console/` (index.html) and its files below."""
    index = directory / "index.html"
    headers = {name.decode(): value.decode() for name, value in HEADERS}

    async def console_page(request: Request) -> FileResponse:
        return FileResponse(index, media_type="text/html", headers=headers)

    # `/console` itself answers the page too (it links its files by absolute paths), rather
    # than a redirect to `/console/`; neither is part of the API's OpenAPI document.
    app.add_api_route(PREFIX, console_page, methods=["GET", "HEAD"], include_in_schema=False)
    app.mount(PREFIX, SecurityHeaders(StaticFiles(directory=directory, html=True)), name="console")
