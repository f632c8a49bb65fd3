"""The `flowise-sse` command: `serve` runs the gateway; `flows` lists the chatflows; `ask` streams one
answer to the terminal, from Flowise directly or through a gateway (`--gateway URL`).

Every command reads a `.env` file in the working directory when there is one (the environment
wins over it); `--env-file` names another.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any, Coroutine, Iterator, TypeVar

from . import __version__
from .errors import GatewayError
from .settings import Settings

T = TypeVar("T")

GATEWAY_ENV = "FLOWISE_SSE_GATEWAY"
API_KEY_ENV = "FLOWISE_SSE_API_KEY"
# The Flowise versions `serve --demo` can emulate: two socket.io ones, two SSE ones.
DEMO_VERSIONS = ("1.6.2", "2.0.7", "2.1.0", "3.1.4")


def main(argv: list[str] | None = None) -> int:
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
    ask.add_argument("question")
    ask.add_argument("--history", help='JSON array of {"role", "content"}')
    ask.add_argument("--chat-id", help="a chatId of your own (Flowise's memory keeps the conversation)")
    ask.add_argument("--events", action="store_true", help="print every event as a JSON line")
    _target_options(ask)

    commands.add_parser("openapi", help="print the OpenAPI document the app generates")

    args = parser.parse_args(argv)
    if args.command == "openapi":
        from .api import create_app

        print(json.dumps(create_app(Settings()).openapi(), indent=2, ensure_ascii=False))
        return 0
    try:
        settings = Settings(_env_file=args.env_file)  # type: ignore[call-arg]
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
    print(f"error: {message}", file=sys.stderr)
    return code


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
        (row["id"], row["name"], {True: "yes", False: "no", None: "?"}[row["streaming"]]) for row in rows
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
    return [{"id": f.get("id"), "name": f.get("name") or "", "streaming": v} for f, v in zip(flows, verdicts)]


def _gateway_flows(args: argparse.Namespace) -> list[dict[str, Any]]:
    with _gateway_client(args) as http:
        flows = _gateway_json(http, "GET", "/v1/chatflows")
        rows = []
        for flow in flows:
            try:
                streaming = _gateway_json(http, "GET", f"/v1/chatflows/{flow['id']}/streaming")["isStreaming"]
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
    try:
        if args.gateway:
            for name, data in _gateway_events(args, history):
                _show(args, name, data)
        else:
            _run(_ask_flowise(args, history, settings))
    except GatewayError as exc:
        if not args.events:
            sys.stdout.write("\n")
        return _fail(f"{exc.code}: {exc.message}")
    if not args.events:
        sys.stdout.write("\n")
    return 0


def _show(args: argparse.Namespace, name: str, data: Any) -> None:
    """Print one event; the gateway's `error` event fails the command like a raised error."""
    if args.events:
        print(json.dumps({"event": name, "data": data}, ensure_ascii=False), flush=True)
    elif name == "token":
        sys.stdout.write(data.get("text", "") if isinstance(data, dict) else "")
        sys.stdout.flush()
    if name == "error":
        failure = _Refused(str(data.get("message")))
        failure.code = str(data.get("code"))  # type: ignore[misc]
        raise failure


async def _ask_flowise(args: argparse.Namespace, history: Any, settings: Settings) -> None:
    """Straight to Flowise, on one event loop that `asyncio.run` closes cleanly: the library's
    generator, its sockets and tasks are all closed before the loop is."""
    from contextlib import aclosing

    from .library import astream_prediction

    async with aclosing(astream_prediction(args.chatflow_id, args.question, history=history,
                                           chat_id=args.chat_id, settings=settings)) as events:
        async for event in events:
            _show(args, event.event, event.data)


def _gateway_client(args: argparse.Namespace) -> Any:
    import httpx

    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    return httpx.Client(base_url=args.gateway.rstrip("/"), headers=headers,
                        timeout=httpx.Timeout(30.0, read=None))


def _gateway_json(http: Any, method: str, path: str, **kwargs: Any) -> Any:
    import httpx

    try:
        response = http.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        raise _Unreachable(f"the gateway is unreachable at {http.base_url}: {exc}") from None
    if response.status_code >= 400:
        raise _error_answer(response.status_code, response.content)
    try:
        return response.json()
    except ValueError:
        raise _Unreachable(f"{http.base_url} answered {path} with something that is not JSON: "
                           "is it a flowise-sse gateway?") from None


class _Unreachable(GatewayError):
    code, retryable = "gateway_unreachable", True


class _Refused(GatewayError):
    pass


def _error_answer(status: int, content: bytes) -> GatewayError:
    try:
        error = json.loads(content)["error"]
        failure = _Refused(str(error["message"]))
        failure.code = str(error["code"])  # type: ignore[misc]
    except (ValueError, KeyError, TypeError):
        failure = _Refused(f"HTTP {status}: {content[:200].decode('utf-8', 'replace')}")
        failure.code = f"http_{status}"  # type: ignore[misc]
    return failure


RECONNECTS = 5


def _gateway_events(args: argparse.Namespace, history: Any) -> Iterator[tuple[str, Any]]:
    """The gateway's SSE stream, parsed. A connection cut before `end`/`error` is resumed as
    `EventSource` would, with `Last-Event-ID`, by a GET of the stream's events: idempotent, so a
    proxy may send it to any replica (they share the stream through Redis)."""
    import httpx

    body: dict[str, Any] = {"question": args.question}
    if history:
        body["history"] = history
    if args.chat_id:
        body["chatId"] = args.chat_id
    last_id: str | None = None
    with _gateway_client(args) as http:
        for attempt in range(RECONNECTS + 1):
            if last_id is None:
                request = http.build_request("POST", f"/v1/chatflows/{args.chatflow_id}/stream", json=body,
                                             headers={"Accept": "text/event-stream"})
            else:
                stream_id = last_id.rsplit(":", 1)[0]
                request = http.build_request("GET", f"/v1/streams/{stream_id}/events",
                                             headers={"Accept": "text/event-stream", "Last-Event-ID": last_id})
            try:
                response = http.send(request, stream=True)
            except httpx.HTTPError as exc:
                if last_id is None:
                    raise _Unreachable(f"the gateway is unreachable at {http.base_url}: {exc}") from None
            else:
                try:
                    if response.status_code >= 400:
                        failure = _error_answer(response.status_code, response.read())
                        # While resuming, a replica going away (a proxy's 502, a 503) is worth a retry.
                        if last_id is None or response.status_code not in (502, 503, 504):
                            raise failure
                    else:
                        for event_id, name, data in _sse(response.iter_lines()):
                            last_id = event_id or last_id
                            yield name, data
                            if name in ("end", "error"):
                                return
                except httpx.HTTPError:
                    pass  # cut: resumed below
                finally:
                    response.close()
            if last_id is None or attempt == RECONNECTS:
                break
            time.sleep(min(2.0, 0.25 * 2 ** attempt))  # EventSource's retry, roughly
        raise _Unreachable("the stream was cut and could not be resumed")


def _sse(lines: Iterator[str]) -> Iterator[tuple[str | None, str, Any]]:
    event_id, name, data = None, "message", []
    for line in lines:
        if not line:
            if data:
                yield event_id, name, json.loads("\n".join(data))
            name, data = "message", []
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "data":
            data.append(value)
        elif field == "event":
            name = value
        elif field == "id":
            event_id = value
