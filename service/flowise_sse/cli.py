"""The `flowise-sse` command: `serve` runs the gateway; `flows` lists the chatflows; `ask` streams one
answer to the terminal, from Flowise directly or through a gateway (`--gateway URL`).

Every command reads a `.env` file in the working directory when there is one (the environment
wins over it); `--env-file` names another.

Answers and chatflow names are printed with their control characters shown as escapes (`\x1b`),
so that text from an LLM cannot drive the terminal; `--events` and `--json` print JSON, whose
own escapes do the same. A reader that goes away (`ask ... | head`) ends the command quietly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

from . import __version__
from .errors import GatewayError
from .settings import Settings

T = TypeVar("T")

GATEWAY_ENV = "FLOWISE_SSE_GATEWAY"
API_KEY_ENV = "FLOWISE_SSE_API_KEY"
# The Flowise versions `serve --demo` can emulate: two socket.io ones, two SSE ones.
DEMO_VERSIONS = ("1.6.2", "2.0.7", "2.1.0", "3.1.4")


def main(argv: list[str] | None = None) -> int:
    try:
        code = _main(argv)
        sys.stdout.flush()  # here, so that a closed pipe is caught here, not at exit
        return code
    except BrokenPipeError:
        # The reader went away (`ask ... | head`): stop quietly, as Unix tools do. Python would
        # still try to flush stdout at exit and report that it cannot: point it at /dev/null.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + 13  # what a shell reports for a tool ended by SIGPIPE


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="flowise-sse", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"flowise-sse {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP gateway (settings from the environment and .env)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--demo", action="store_true",
                       help="serve a built-in EMULATED Flowise instead of proxying FLOWISE_URL")
    serve.add_argument("--flowise-version", choices=DEMO_VERSIONS, default="3.1.4",
                       help="with --demo: the Flowise version emulated (<= 2.0.7 stream over socket.io)")
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    serve.add_argument("--workers", type=_worker_count, metavar="N",
                       help="gateway processes on the one port, one per core to use every core "
                            "(default: FLOWISE_SSE_WORKERS, else 1); above 1 needs FLOWISE_SSE_REDIS_URL")
    _env_file_option(serve)

    flows = commands.add_parser("flows", help="list the chatflows: id, name, whether they stream")
    _target_options(flows)
    flows.add_argument("--json", action="store_true", help="print them as JSON")

    ask = commands.add_parser("ask", help="stream one answer to stdout")
    ask.add_argument("chatflow_id")
    ask.add_argument("question", nargs="?", help="optional with --form, --proceed/--reject or an audio --upload")
    ask.add_argument("--history", help='JSON array of {"role", "content"}')
    ask.add_argument("--chat-id", help="a chatId of your own (Flowise's memory keeps the conversation)")
    ask.add_argument("--session-id", help="a memory session apart from the chat (Flowise's sessionId)")
    ask.add_argument("--upload", action="append", default=[], metavar="PATH",
                     help="send a file (an image, audio for speech-to-text, any file); repeatable")
    ask.add_argument("--image-url", action="append", default=[], metavar="URL", help="send an image by URL")
    ask.add_argument("--form", metavar="JSON", help="start an Agentflow's form with these values")
    reply = ask.add_mutually_exclusive_group()
    reply.add_argument("--proceed", action="store_true", help="continue a run stopped for input")
    reply.add_argument("--reject", action="store_true", help="reject a run stopped for input")
    ask.add_argument("--feedback", help="with --proceed/--reject: text for the stopped node")
    ask.add_argument("--lead-email", help="a lead's e-mail, stored with the message")
    ask.add_argument("--events", action="store_true", help="print every event as a JSON line")
    _target_options(ask)

    commands.add_parser("openapi", help="print the OpenAPI document the app generates")

    args = parser.parse_args(argv)
    if args.command == "openapi":
        from .api import create_app

        print(json.dumps(create_app(Settings()).openapi(), indent=2, ensure_ascii=False))
        return 0
    try:
        settings = Settings(_env_file=args.env_file)
    except ValueError as exc:
        print(f"error: invalid settings: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        return _serve(args, settings)
    if getattr(args, "flowise_url", None):
        settings = settings.model_copy(update={"flowise_url": args.flowise_url})
    try:
        if args.command == "flows":
            return _flows(args, settings)
        return _ask(args, settings)
    except KeyboardInterrupt:
        return 130


def _env_file_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env-file", default=".env", metavar="PATH",
                        help="settings file read when it exists (default: .env; the environment wins)")


def _target_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gateway", metavar="URL", default=os.environ.get(GATEWAY_ENV),
                        help=f"go through a flowise-sse gateway at URL (env {GATEWAY_ENV}) instead of to Flowise")
    parser.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                        help=f"the gateway's API key (env {API_KEY_ENV})")
    parser.add_argument("--flowise-url", help="straight to this Flowise (default FLOWISE_URL)")
    _env_file_option(parser)


def _worker_count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"{count}: at least 1 worker process is needed")
    return count


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from .api import check_settings
    from .logging_setup import configure

    try:
        check_settings(settings)
    except ValueError as exc:
        return _fail(f"invalid settings: {exc}", 2)

    workers = args.workers or settings.workers
    if workers > 1:
        from .workers import redis_required, supervise

        if (problem := redis_required(settings, workers)) is not None:
            return _fail(problem, 2)
        configure(settings.log_format, args.log_level)
        return _run(supervise(settings, args.host, args.port, workers, demo=args.demo, log_level=args.log_level,
                              flowise_version=args.flowise_version))
    from .server import serve

    configure(settings.log_format, args.log_level)
    _run(serve(settings, args.host, args.port, demo=args.demo, log_level=args.log_level,
               flowise_version=args.flowise_version))
    return 0


def _run(main: Coroutine[Any, Any, T]) -> T:
    """On uvloop where it is installed (uvicorn[standard] brings it): it carries twice the streams
    of the stdlib loop at the same delay (bench/). uvicorn's own loop choice applies only to loops
    it creates itself."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def _fail(message: str, code: int = 1) -> int:
    print(f"error: {printable(message, keep_lines=False)}", file=sys.stderr)
    return code


# C0 and C1 controls but newline and tab, DEL, and the bidirectional overrides and isolates
# ("Trojan Source"): what can move the cursor, retitle the window, hide or reorder text.
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_LINE_CONTROLS = re.compile(_CONTROLS.pattern[:-1] + r"\n\t]")


def printable(text: str, *, keep_lines: bool = True) -> str:
    """`text` with its control characters shown as escapes (ESC as `\\x1b`), for a terminal.
    `keep_lines`: newlines and tabs stay (an answer's lines), and so does the CR of a CRLF;
    otherwise they are escaped too (a table cell, a one-line message)."""
    if keep_lines:
        text = text.replace("\r\n", "\n")
    pattern = _CONTROLS if keep_lines else _LINE_CONTROLS
    return pattern.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}", text)


# --- flows ---------------------------------------------------------------------------------------
def _flows(args: argparse.Namespace, settings: Settings) -> int:
    try:
        rows = _gateway_flows(args) if args.gateway else _run(_flowise_flows(settings))
    except GatewayError as exc:
        return _fail(f"{exc.code}: {exc.message}")
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return 0
    table = [("ID", "NAME", "STREAMING")] + [
        (printable(str(row["id"]), keep_lines=False), printable(str(row["name"]), keep_lines=False),
         {True: "yes", False: "no", None: "?"}[row["streaming"]]) for row in rows
    ]
    widths = [max(len(str(line[i])) for line in table) for i in range(2)]
    for flow_id, name, streaming in table:
        print(f"{flow_id:<{widths[0]}}  {name:<{widths[1]}}  {streaming}")
    return 0


async def _flowise_flows(settings: Settings) -> list[dict[str, Any]]:
    from .upstream.flowise_client import FlowiseClient

    flowise = FlowiseClient(settings)
    try:
        flows = [f for f in await flowise.list_chatflows() if isinstance(f, dict)]

        async def streaming(flow_id: str) -> bool | None:
            try:
                return await flowise.is_streaming(flow_id)
            except GatewayError:
                return None

        verdicts = await asyncio.gather(*(streaming(str(f.get("id"))) for f in flows))
    finally:
        await flowise.aclose()
    return [{"id": f.get("id"), "name": f.get("name") or "", "streaming": v}
            for f, v in zip(flows, verdicts, strict=True)]


def _gateway_flows(args: argparse.Namespace) -> list[dict[str, Any]]:
    from .client import GatewayClient

    with GatewayClient(args.gateway, api_key=args.api_key) as gateway:
        rows = []
        for flow in gateway.list_chatflows():
            try:
                streaming: bool | None = gateway.is_streaming(str(flow["id"]))
            except GatewayError:
                streaming = None
            rows.append({"id": flow["id"], "name": flow.get("name") or "", "streaming": streaming})
    return rows


# --- ask -----------------------------------------------------------------------------------------
def _ask(args: argparse.Namespace, settings: Settings) -> int:
    try:
        history = json.loads(args.history) if args.history else None
    except json.JSONDecodeError as exc:
        return _fail(f"--history is not JSON: {exc}", 2)
    shown = _Shown(args.events)
    try:
        args.fields = _ask_fields(args)
    except (OSError, ValueError) as exc:
        return _fail(str(exc), 2)
    try:
        if args.gateway:
            _ask_gateway(args, history, shown)
        else:
            _run(_ask_flowise(args, history, settings, shown))
    except GatewayError as exc:
        shown.failed(exc)
        return _fail(f"{exc.code}: {exc.message}")
    shown.close()
    return 0


class _Shown:
    """What `ask` prints: the answer as it streams, or (`--events`) every event as a JSON line."""

    def __init__(self, events: bool) -> None:
        self.events = events
        self.count = 0

    def show(self, name: str, data: Any) -> None:
        self.count += 1
        if self.events:
            print(json.dumps({"event": name, "data": data}, ensure_ascii=False), flush=True)
        elif name == "token":
            sys.stdout.write(printable(data.get("text", "")) if isinstance(data, dict) else "")
            sys.stdout.flush()

    def failed(self, exc: GatewayError) -> None:
        """A failure ends the output: as the stream's `error` event once it had started."""
        if self.events:
            if self.count:
                self.show("error", exc.to_dict())
        else:
            sys.stdout.write("\n")

    def close(self) -> None:
        if not self.events:
            sys.stdout.write("\n")


def _ask_fields(args: argparse.Namespace) -> dict[str, Any]:
    """`ask`'s options as Flowise's prediction fields, as the library's (and the gateway
    client's) keyword arguments."""
    import base64
    import mimetypes
    from pathlib import Path

    fields: dict[str, Any] = {}
    uploads = []
    for path in args.upload:
        mime = mimetypes.guess_type(path)[0] or "application/octet-stream"
        data = base64.b64encode(Path(path).read_bytes()).decode()
        uploads.append({"type": "audio" if mime.startswith("audio/") else "file", "name": Path(path).name,
                        "mime": mime, "data": f"data:{mime};base64,{data}"})
    for url in args.image_url:
        name = url.rstrip("/").rpartition("/")[2] or "image"
        uploads.append({"type": "url", "name": name, "mime": mimetypes.guess_type(name)[0] or "image/png", "data": url})
    if uploads:
        fields["uploads"] = uploads
    if args.form:
        try:
            fields["form"] = json.loads(args.form)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--form is not JSON: {exc}") from None
    if args.proceed or args.reject:
        fields["human_input"] = {"type": "proceed" if args.proceed else "reject"}
        if args.feedback:
            fields["human_input"]["feedback"] = args.feedback
    if args.session_id:
        fields["session_id"] = args.session_id
    if args.lead_email:
        fields["lead_email"] = args.lead_email
    return fields


def _ask_gateway(args: argparse.Namespace, history: Any, shown: _Shown) -> None:
    """Through a gateway, with its client: a cut stream is resumed with `Last-Event-ID`, on any
    replica (they share it through Redis)."""
    from .client import GatewayClient

    stream_id = None
    with GatewayClient(args.gateway, api_key=args.api_key) as gateway:
        try:
            for event in gateway.stream(args.chatflow_id, args.question, history=history, chat_id=args.chat_id,
                                        **args.fields):
                if event.event == "start" and isinstance(event.data, dict):
                    stream_id = event.data.get("streamId")
                shown.show(event.event, event.data)
        except (BrokenPipeError, KeyboardInterrupt):
            # Nobody reads the answer any more: stop it rather than let Flowise run on for nobody.
            if stream_id:
                with contextlib.suppress(GatewayError):
                    gateway.delete_stream(str(stream_id))
            raise


async def _ask_flowise(args: argparse.Namespace, history: Any, settings: Settings, shown: _Shown) -> None:
    """Straight to Flowise, on one event loop that `asyncio.run` closes cleanly: the library's
    generator, its sockets and tasks are all closed before the loop is."""
    from contextlib import aclosing

    from .library import astream_prediction

    async with aclosing(astream_prediction(args.chatflow_id, args.question, history=history, chat_id=args.chat_id,
                                           settings=settings, **args.fields)) as events:
        async for event in events:
            shown.show(event.event, event.data)
