"""`flowise-sse serve` runs the gateway; `flowise-sse ask` streams one answer to the terminal."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from typing import Any, Coroutine

from .errors import GatewayError
from .settings import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="flowise-sse", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP gateway (settings from the environment)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--demo", action="store_true",
                       help="serve a built-in EMULATED Flowise chatflow instead of proxying FLOWISE_URL")
    serve.add_argument("--log-level", default="info")

    ask = commands.add_parser("ask", help="stream one answer from FLOWISE_URL to stdout")
    ask.add_argument("chatflow_id")
    ask.add_argument("question")
    ask.add_argument("--history", help='JSON array of {"role", "content"}')
    ask.add_argument("--events", action="store_true", help="print every event as a JSON line")

    commands.add_parser("openapi", help="print the OpenAPI document the app generates")

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "openapi":
        from .api import create_app

        print(json.dumps(create_app(Settings()).openapi(), indent=2, ensure_ascii=False))
        return 0
    if args.command == "serve":
        from .server import serve

        _run(serve(Settings(), args.host, args.port, demo=args.demo, log_level=args.log_level))
        return 0
    return _ask(args)


def _run(main: Coroutine[Any, Any, None]) -> None:
    """On uvloop where it is installed (uvicorn[standard] brings it): it carries twice the streams
    of the stdlib loop at the same delay (bench/). uvicorn's own loop choice applies only to loops
    it creates itself."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def _ask(args: argparse.Namespace) -> int:
    from .library import stream_prediction

    try:
        history = json.loads(args.history) if args.history else None
        for event in stream_prediction(args.chatflow_id, args.question, history=history, settings=Settings()):
            if args.events:
                print(json.dumps({"event": event.event, "data": event.data}, ensure_ascii=False), flush=True)
            elif event.event == "token":
                sys.stdout.write(event.text)
                sys.stdout.flush()
        if not args.events:
            sys.stdout.write("\n")
        return 0
    except GatewayError as exc:
        print(f"\nerror: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    except json.JSONDecodeError as exc:
        print(f"error: --history is not JSON: {exc}", file=sys.stderr)
        return 2
