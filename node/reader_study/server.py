"""The reader-study web server: a FastAPI app over :class:`ReaderStudy` and :class:`Gallery`.

It shows real patient images, so it is locked down by default:

* it binds to loopback; any other address needs an access token (:func:`check_bind`), which
  the browser presents once in the URL (``/?token=…``) and then as an HttpOnly cookie;
* the Host header must name the bound host, so a web page elsewhere cannot reach the server
  through DNS rebinding; state-changing requests must be JSON, so a cross-site form cannot
  post answers;
* every response carries a Content-Security-Policy that lets the page load only from this
  server, and images are sent with ``Cache-Control: no-store``.

The page itself (``static/``) is plain HTML, CSS and JavaScript with no dependency.
"""

from __future__ import annotations

import hmac
import ipaddress
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, Field
from starlette.middleware.trustedhost import TrustedHostMiddleware

from node.errors import ReaderStudyError
from node.reader_study.gallery import Gallery, contact_sheet
from node.reader_study.session import ReaderStudy
from node.reader_study.storage import AlreadyAnsweredError
from shared.bundle import encode_png

MIN_TOKEN_CHARS = 16
COOKIE = "synthlearn_reader_token"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
       "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'")
STATIC = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
          "style.css": "text/css; charset=utf-8"}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve real images beyond this machine without an access token."""
    if is_loopback(host):
        if token is not None and len(token) < MIN_TOKEN_CHARS:
            raise ReaderStudyError(f"--token must be at least {MIN_TOKEN_CHARS} characters")
        return
    if not token:
        raise ReaderStudyError(
            f"refusing to bind to {host}: the reader study shows real patient images, so any "
            "address other than 127.0.0.1 needs an access token; add --token TOKEN (e.g. from "
            "`python -c 'import secrets; print(secrets.token_urlsafe(24))'`) and give readers "
            "the URL it prints")
    if len(token) < MIN_TOKEN_CHARS:
        raise ReaderStudyError(f"--token must be at least {MIN_TOKEN_CHARS} characters")


class AnswerIn(BaseModel):
    reader: str = Field(max_length=200)
    position: int = Field(ge=0)
    call: str = Field(max_length=20)
    class_name: str | None = Field(default=None, max_length=200)
    confidence: int | None = None


class GenerateIn(BaseModel):
    class_name: str = Field(max_length=200)
    n: int = Field(ge=1, le=64)
    truncation: float = Field(ge=0.0, le=1.0)
    seed: int | None = None


def _png(data: bytes, **headers: str) -> Response:
    return Response(data, media_type="image/png", headers={"Cache-Control": "no-store",
                                                            **headers})


def create_app(study: ReaderStudy, gallery: Gallery, *, host: str = "127.0.0.1",
               token: str | None = None) -> FastAPI:
    check_bind(host, token)
    app = FastAPI(title="synthlearn reader study", docs_url=None, redoc_url=None,
                  openapi_url=None)
    # Bound to every interface, readers arrive under whatever name the machine has; the token
    # (required there) is then the guard, since another site's page cannot hold our cookie.
    wildcard = host in ("0.0.0.0", "::", "[::]")
    allowed = ["*"] if wildcard else sorted({*LOOPBACK_NAMES, "[::1]", host})
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed)

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Response:
        if token is not None:
            given = request.cookies.get(COOKIE) or request.headers.get("x-reader-token") or ""
            if request.url.path == "/" and "token" in request.query_params:
                given = request.query_params["token"]
                if hmac.compare_digest(given.encode(), token.encode()):
                    resp = RedirectResponse("/", status_code=303)
                    resp.set_cookie(COOKIE, token, httponly=True, samesite="strict")
                    return resp
            if not hmac.compare_digest(given.encode(), token.encode()):
                return JSONResponse({"error": "access token required: open the address the "
                                     "admin gave you (it ends in /?token=…)"}, status_code=401)
        if request.method == "POST" and \
                request.headers.get("content-type", "").split(";")[0].strip() != \
                "application/json":
            return JSONResponse({"error": "send answers as application/json"}, status_code=415)
        response: Response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.exception_handler(ReaderStudyError)
    async def study_error(request: Request, exc: ReaderStudyError) -> JSONResponse:
        status = 409 if isinstance(exc, AlreadyAnsweredError) else 400
        return JSONResponse({"error": str(exc)}, status_code=status)

    def static(name: str) -> Response:
        body = resources.files("node.reader_study").joinpath("static", name).read_bytes()
        return Response(body, media_type=STATIC[name])

    @app.get("/")
    def index() -> Response:
        return static("index.html")

    @app.get("/static/{name}")
    def static_file(name: str) -> Response:
        if name not in STATIC:
            return JSONResponse({"error": "not found"}, status_code=404)
        return static(name)

    @app.get("/api/study")
    def study_info() -> dict[str, Any]:
        return {"study": study.name, "readers": study.readers(), "class_names": study.class_names,
                "images": study.counts()}

    @app.get("/api/reader/{reader}")
    def progress(reader: str) -> dict[str, Any]:
        return study.progress(reader)

    @app.get("/api/reader/{reader}/image/{position}.png")
    def study_image(reader: str, position: int) -> Response:
        return _png(encode_png(study.pixels(reader, position)))

    @app.post("/api/answer")
    def answer(a: AnswerIn) -> dict[str, Any]:
        stored = study.answer(a.reader, a.position, a.call, a.class_name, a.confidence)
        return {"stored": stored, "duplicate": not stored, **study.progress(a.reader)}

    @app.get("/api/results")
    def results() -> dict[str, Any]:
        return study.results(reveal_unfinished=False)

    @app.get("/api/gallery")
    def gallery_sets() -> dict[str, Any]:
        return {"sets": gallery.set_names()}

    @app.get("/api/gallery/{name}")
    def gallery_listing(name: str, class_name: str | None = None) -> dict[str, Any]:
        return gallery.listing(name, class_name)

    @app.get("/api/gallery/{name}/image/{index}.png")
    def gallery_image(name: str, index: int) -> Response:
        return _png(encode_png(gallery.image(name, index)))

    @app.get("/api/gallery/{name}/sheet.png")
    def gallery_sheet(name: str, class_name: str | None = None) -> Response:
        listing = gallery.listing(name, class_name)
        s = gallery.get(name)
        title = f"set {name}, class {class_name or 'all'}"
        if listing.get("truncation") is not None:
            title += f", psi {listing['truncation']}"
        data = contact_sheet(s.images[listing["indices"]], listing["labels"], title)
        filename = f"contact-sheet-{name}-{class_name or 'all'}.png".replace(" ", "_")
        safe = "".join(ch for ch in filename if ch.isalnum() or ch in "._-")
        return _png(data, **{"Content-Disposition": f'attachment; filename="{safe}"'})

    @app.post("/api/gallery/generate")
    def gallery_generate(g: GenerateIn) -> dict[str, Any]:
        name = gallery.generate(g.class_name, g.n, g.truncation, g.seed)
        return gallery.listing(name, None)

    return app


def serve(app: FastAPI, host: str, port: int) -> None:
    """Run until Ctrl-C. Every answer is already committed, so stopping loses nothing."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning")
