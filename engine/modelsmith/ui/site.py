"""The dashboard: the pages served read-only over HTTP (Starlette).

Only GET and HEAD: every other method gets a 405. With a token, a request needs
``Authorization: Bearer <token>`` or the session cookie that opening any page with
``?token=<token>`` once sets (a browser cannot send the header on a link); both are
compared in constant time. Pages are rendered on worker threads, from a
:class:`~.source.Source` that reads the log's tip on every request.
"""

from __future__ import annotations

import hmac
import sys
from collections.abc import Callable
from functools import cache
from importlib import resources
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Route

from .pages import NotFound, Page, pages
from .render import View, environment
from .source import Source

COOKIE = "modelsmith_ui"
#: Scripts and styles from the dashboard itself only (Plotly sets inline styles on charts).
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "style-src 'self' 'unsafe-inline'; script-src 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}


@cache
def asset(name: str) -> bytes | None:
    """A file of ``assets/`` or ``plotly.min.js`` (from the plotly package), else None."""
    if name == "plotly.min.js":
        from plotly.offline import get_plotlyjs

        return get_plotlyjs().encode()
    folder = resources.files("modelsmith.ui") / "assets"
    if "/" in name or name.startswith(".") or not (folder / name).is_file():
        return None
    return (folder / name).read_bytes()


def assets() -> list[str]:
    """The names :func:`asset` serves."""
    folder = resources.files("modelsmith.ui") / "assets"
    return [*sorted(p.name for p in folder.iterdir() if p.is_file()), "plotly.min.js"]


def _page(status: int, title: str, message: str) -> HTMLResponse:
    html = environment().from_string(
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{{ t }}</title>'
        '<link rel="stylesheet" href="/assets/style.css"><link rel="icon" href="data:,">'
        '</head><body><main><h1>{{ t }}</h1>'
        '<p>{{ m }}</p><p><a href="/">Fleet</a></p></main></body></html>').render(
            t=title, m=message)
    return HTMLResponse(html, status, headers=SECURITY_HEADERS)


def build_app(source: Source, *, token: str | None = None) -> Starlette:
    """The dashboard's ASGI app over ``source``."""
    secret = token.encode() if token else None

    def allowed(request: Request) -> bool:
        if secret is None:
            return True
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        offered = [value.strip()] if scheme.lower() == "bearer" else []
        offered.append(request.cookies.get(COOKIE, ""))
        offered.append(request.query_params.get("token", ""))
        return any(hmac.compare_digest(o.encode(), secret) for o in offered if o)

    def guarded(fn: Callable[[Request], Response]) -> Callable[[Request], Response]:
        def endpoint(request: Request) -> Response:
            if not allowed(request):
                return _page(401, "Token needed", "This dashboard needs its token: open it "
                             "with ?token=... once, or send Authorization: Bearer.")
            if secret is not None and request.query_params.get("token"):
                # Take the token out of the address bar (and history), keep it as a cookie.
                query = urlencode([(k, v) for k, v in request.query_params.multi_items()
                                   if k != "token"])
                answer = RedirectResponse(request.url.path + (f"?{query}" if query else ""),
                                          303)
                answer.set_cookie(COOKIE, token or "", httponly=True, samesite="strict",
                                  path="/")
                return answer
            try:
                return fn(request)
            except NotFound as exc:
                return _page(404, "Not found", str(exc))
            except Exception as exc:  # one line on stderr; the page says what failed
                print(f"modelsmith ui: {request.url.path}: {type(exc).__name__}: {exc}",
                      file=sys.stderr)
                return _page(500, "This page failed", f"{type(exc).__name__}: {exc}")
        return endpoint

    def page_endpoint(page: Page) -> Callable[[Request], Response]:
        def show(request: Request) -> Response:
            view = View(request.url.path, query=dict(request.query_params))
            html = page.render(source, view, dict(request.path_params))
            return HTMLResponse(html, headers=SECURITY_HEADERS)
        return show

    def tip(_request: Request) -> Response:
        return JSONResponse({"tip": source.tip()}, headers={"Cache-Control": "no-store"})

    def status(_request: Request) -> Response:
        return JSONResponse(source.status(), headers={"Cache-Control": "no-store"})

    def static(request: Request) -> Response:
        name = request.path_params["name"]
        data = asset(name)
        if data is None:
            return _page(404, "Not found", f"no asset {name!r}")
        kind = TYPES.get(name[name.rfind("."):], "application/octet-stream")
        return Response(data, media_type=kind,
                        headers={"Cache-Control": "max-age=3600",
                                 "X-Content-Type-Options": "nosniff"})

    def healthz(_request: Request) -> Response:
        return PlainTextResponse("ok\n")

    methods = ["GET", "HEAD"]
    routes = [Route("/healthz", healthz, methods=methods),
              Route("/api/tip", guarded(tip), methods=methods),
              Route("/api/status", guarded(status), methods=methods),
              Route("/assets/{name}", static, methods=methods)]
    routes += [Route(p.pattern, guarded(page_endpoint(p)), methods=methods, name=p.name)
               for p in pages()]
    app = Starlette(routes=routes)

    async def not_found(_request: Request, _exc: Exception) -> Response:
        return _page(404, "Not found", "No page here.")

    async def not_allowed(_request: Request, _exc: Exception) -> Response:
        answer = _page(405, "Read-only", "The dashboard only reads: GET and HEAD.")
        answer.headers["Allow"] = "GET, HEAD"
        return answer

    app.add_exception_handler(404, not_found)
    app.add_exception_handler(405, not_allowed)
    return app
