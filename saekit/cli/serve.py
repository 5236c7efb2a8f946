"""The ``serve`` subcommand: the live explorer (web page and Neuronpedia-compatible API) over runs, via uvicorn."""

from __future__ import annotations

import argparse
from pathlib import Path

from saekit.cli.argtypes import DEFAULTS_NOTE
from saekit.cli.imports import NAME_HELP, add_dictionary_flags, run_dirs
from saekit.serve.settings import ServeSettings
from saekit.settings import add_flags, from_args


def add_serve_parser(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser(
        "serve", help="a local web page and Neuronpedia-compatible JSON API over runs: activations, search, steering",
        description="Load each run's model once and serve, on 127.0.0.1 unless --host says otherwise: the explorer "
                    "page at /, the /v1 API (activation/all, activation/topk-by-token, tokenize, steer/completion, "
                    "explanation/search, and graph/generate with --graph-transcoders; schema at /openapi.json) and "
                    "each run's dashboard under /runs/NAME/dashboard/. Runs are addressed by their directory names.")
    serve.add_argument("runs", nargs="+", metavar="RUN", help=NAME_HELP)
    serve.add_argument("--graph-transcoders", type=Path, default=None, metavar="PATH",
                       help="transcoders for every MLP (a CLT run, or a directory of per-layer transcoder runs, as "
                            "saekit attribute takes): serve attribution graphs of typed prompts (POST "
                            "/v1/graph/generate, the page's graph button) [none]")
    add_flags(serve, ServeSettings, title="server settings (defaults in [])", note=DEFAULTS_NOTE)
    add_dictionary_flags(serve)
    serve.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from saekit.serve.app import app_for_runs

    settings = from_args(ServeSettings, args).validate()  # a non-loopback host without a token fails here
    app = app_for_runs(run_dirs(args, args.runs), settings, args.graph_transcoders)
    state = app.state.saekit
    graphs = "" if state.graph is None else f"; graphs over {state.graph.name} (POST /v1/graph/generate)"
    print(f"serving {', '.join(state.runs)} on http://{settings.host}:{settings.port}/ (API under /v1, schema at "
          f"/openapi.json{graphs}); Ctrl-C stops")
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")
    return 0
