"""Site: the web page's files under ``/ui/``, with the headers that keep it safe.

    GET /ui                  308 to /ui/ (relative, so a path prefix in front survives)
    GET /ui/                 index.html
    GET /ui/<file>           every file under static/ (scripts, stylesheet, vendor code)
    GET /ui/config.json      what the login page must know: registration mode, minimum
                             password length, whether authentication is on
    *   /ui/<anything else>  404 at the edge, like any path no route declares

The files are read once, when the app is built (~250 KB), and answered from memory
with an ETag, so a request touches no disk and a reload after an upgrade revalidates.
Every answer carries a Content-Security-Policy that allows the page's own scripts and
styles and nothing else: no inline script, no inline style, no eval, no framing, no
connection to another origin. With that policy and model output sanitised before it
becomes DOM (static/markdown.js), a model answering ``<script>`` cannot run anything.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from olbproxy.edge import MATCH, Route, route
from olbproxy.settings import Settings

STATIC = Path(__file__).with_name("static")
ROOT = "/ui"

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".json": "application/json",
    "": "text/plain; charset=utf-8",  # LICENSE, VERSIONS
}

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        # data: for the odd inline image a model writes; other origins stay out, so an
        # answer cannot make the browser call anywhere (no tracking pixels either).
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)

SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers that predate it
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
    # Revalidate every time (a 304 when unchanged): an upgrade shows at the next reload.
    "Cache-Control": "no-cache",
}


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def load_assets(directory: Path) -> dict[str, Asset]:
    """Every file under ``directory`` by its URL path; refuses a type it cannot name."""
    assets = {}
    for path in sorted(directory.rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        content_type = CONTENT_TYPES.get(path.suffix)
        if content_type is None:
            raise ValueError(f"{path}: no content type for {path.suffix!r} files")
        body = path.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        assets[f"{ROOT}/{path.relative_to(directory).as_posix()}"] = Asset(body, content_type, etag)
    return assets


class Site:
    """The ``/ui/`` routes; ``public_paths`` are served without credentials."""

    def __init__(self, settings: Settings, directory: Path = STATIC) -> None:
        self.assets = load_assets(directory)
        self.assets[f"{ROOT}/"] = self.assets[f"{ROOT}/index.html"]
        config = {
            "auth": settings.auth.enabled,
            "registration": settings.auth.registration,
            "min_password_length": settings.auth.min_password_length,
        }
        body = json.dumps(config).encode()
        etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        self.assets[f"{ROOT}/config.json"] = Asset(body, CONTENT_TYPES[".json"], etag)

    def routes(self) -> list[Route]:
        """Public: the page itself holds nothing secret; it calls the API like a client."""
        table = route(ROOT, "GET", self.redirect, "anonymous")
        for path in self.assets:
            table += route(path, "GET", self.file, "anonymous")
        return table

    async def redirect(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPPermanentRedirect("ui/", headers=SECURITY_HEADERS)

    async def file(self, request: web.Request) -> web.StreamResponse:
        asset = self.assets[request[MATCH].path]
        headers = {**SECURITY_HEADERS, "ETag": asset.etag}
        if asset.etag in request.headers.get("If-None-Match", ""):
            return web.Response(status=304, headers=headers)
        return web.Response(
            body=asset.body, headers={**headers, "Content-Type": asset.content_type}
        )
