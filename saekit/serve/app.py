"""The FastAPI application: the ``/v1`` API, the explorer page at ``/``, each run's dashboard read-only under
``/runs/NAME/dashboard/``, the attribution graphs' pages under ``/graphs/KEY``, one-line JSON errors, the bearer
token, and the request-body limit.

FastAPI serves its own OpenAPI schema at ``/openapi.json``. :func:`create_app` is the factory; the server's
state lives on ``app.state.saekit``.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException

from saekit.errors import SaekitError
from saekit.serve import page
from saekit.serve.api import router, run_named
from saekit.serve.graphs import GraphService, load_graph_service
from saekit.serve.runs import ServedRun, load_runs
from saekit.serve.security import TOKEN_COOKIE, ApiError, BodyLimit, token_matches
from saekit.serve.settings import ServeSettings
from saekit.serve.state import ServerState

PAGE_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; "
               "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.S)  # executable blocks; the JSON data block has a type


def graph_page_policy(html: str) -> str:
    """The graph page is self-contained (its script and style inline): allow exactly its own scripts, by hash,
    and nothing from the network."""
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()}'"
                      for body in INLINE_SCRIPT.findall(html))
    return (f"default-src 'none'; script-src {hashes or 'none'}; style-src 'unsafe-inline'; img-src data:; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _validation_message(err: RequestValidationError) -> str:
    first = err.errors()[0]
    if first.get("type") == "json_invalid":
        reason = first.get("ctx", {}).get("error", "parse error")
        return f"request body is not valid JSON ({reason}); send a JSON object"
    where = ".".join(str(part) for part in first.get("loc", ())[1:]) or "body"
    return f"{where}: {first.get('msg', 'invalid value')}"


def _add_error_handlers(app: FastAPI) -> None:
    async def api_error(request: Request, err: ApiError) -> JSONResponse:
        return _error(err.status, str(err))

    async def saekit_error(request: Request, err: SaekitError) -> JSONResponse:
        return _error(400, str(err).splitlines()[0])

    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        return _error(422, _validation_message(err))

    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        return _error(err.status_code, f"{err.detail}: {request.method} {request.url.path}")

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(SaekitError, saekit_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(HTTPException, http_error)


def _add_auth(app: FastAPI, token: str | None) -> None:
    """Every route wants the token when one is set: as ``Authorization: Bearer``, or the cookie the page sets
    after it was opened once as ``/?token=TOKEN``."""

    @app.middleware("http")
    async def headers_and_token(request: Request, call_next):  # noqa: ANN001, ANN202 (Starlette's signature)
        if token is not None:
            query = request.query_params.get("token")
            if request.url.path == "/" and query is not None and token_matches(token, f"Bearer {query}", None):
                response: Response = RedirectResponse("/", status_code=303)
                response.set_cookie(TOKEN_COOKIE, query, httponly=True, samesite="strict")
                return response
            if not token_matches(token, request.headers.get("authorization"), request.cookies.get(TOKEN_COOKIE)):
                return _error(401, "missing or wrong token; send Authorization: Bearer TOKEN (the page: open "
                                   "/?token=TOKEN once)")
        response = await call_next(request)
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


def _dashboard_file(run: ServedRun, path: str) -> Path:
    """A file inside the run's dashboard folder, never outside it (``..``, links out and absolute paths: 404)."""
    if run.dashboard is None:
        raise ApiError(404, f"run {run.name!r} has no dashboard; build it with saekit dashboard and restart")
    target = (run.dashboard / (path or "index.html")).resolve()
    if not target.is_relative_to(run.dashboard) or not target.is_file():
        raise ApiError(404, f"no file {path!r} in run {run.name!r}'s dashboard")
    return target


def _graph_page(graph: GraphService | None, key: str) -> str:
    """A graph page this server built (looked up by its key, never read from a path the request names)."""
    html = None if graph is None else graph.page_html(key)
    if html is None:
        raise ApiError(404, f"no graph {key!r} on this server; POST /v1/graph/generate builds one")
    return html


def _add_pages(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    def index() -> Response:
        return Response(page.HTML, media_type="text/html; charset=utf-8",
                        headers={"Content-Security-Policy": PAGE_POLICY})

    @app.get("/static/app.js", include_in_schema=False)
    def script() -> Response:
        return Response(page.SCRIPT, media_type="text/javascript; charset=utf-8")

    @app.get("/static/app.css", include_in_schema=False)
    def style() -> Response:
        return Response(page.CSS, media_type="text/css; charset=utf-8")

    @app.get("/graphs/{key}", include_in_schema=False)
    def graph(key: str, request: Request) -> Response:
        html = _graph_page(request.app.state.saekit.graph, key)
        return Response(html, media_type="text/html; charset=utf-8",
                        headers={"Content-Security-Policy": graph_page_policy(html)})

    @app.get("/runs/{name}/dashboard/{path:path}", include_in_schema=False)
    def dashboard(name: str, path: str, request: Request) -> FileResponse:
        run = run_named(request.app.state.saekit, name, "run")
        return FileResponse(_dashboard_file(run, path))


def create_app(runs: dict[str, ServedRun], settings: ServeSettings | None = None,
               graph: GraphService | None = None) -> FastAPI:
    """The explorer over ``runs`` (from :func:`load_runs`), limits and token from ``settings``; attribution
    graphs over ``graph``'s transcoders when given (from :func:`load_graph_service`)."""
    settings = (settings or ServeSettings()).validate()
    app = FastAPI(title="saekit serve", version="1",
                  description="saekit's live explorer: Neuronpedia-compatible activation, steering, tokenize, "
                              "explanation-search and graph-generation routes over local runs")
    app.state.saekit = ServerState.build(runs, settings, graph)
    _add_error_handlers(app)
    _add_auth(app, settings.token)
    _add_pages(app)
    app.include_router(router)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    return app


def app_for_runs(run_dirs: list[Path], settings: ServeSettings | None = None,
                 graph_transcoders: Path | None = None) -> FastAPI:
    """Load the graph transcoders first (a set that misses an MLP is refused before any run loads), then the
    runs (each distinct model once; a run on the transcoders' float32 model shares it), and build the app."""
    settings = (settings or ServeSettings()).validate()
    graph = None if graph_transcoders is None else load_graph_service(graph_transcoders)
    models = {} if graph is None else {graph.model_key: graph.loaded}
    return create_app(load_runs(run_dirs, models), settings, graph)
