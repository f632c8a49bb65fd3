"""The HTTP API: routes -> stream runs -> SSE responses.

Read top to bottom: the app and its lifespan, error mapping, then the routes in the order a
client meets them (health, chatflows, streams, prediction).
"""


import asyncio
import json
import logging
from contextlib import asynccontextmanager
from importlib import resources
from typing import Annotated, Any, AsyncIterator
from uuid import UUID

from fastapi import Depends, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import TypeAdapter, ValidationError
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Mount
from starlette.types import Scope

from . import __version__
from .access import Access
from .errors import BadRequest, GatewayError, StreamNotFound
from .prediction import Prediction
from .schemas import (
    ERROR_RESPONSES,
    SSE_RESPONSE,
    ChatflowSummary,
    CreateStream,
    Health,
    HistoryItem,
    Readiness,
    StreamCreated,
    StreamEvent,
    StreamingCheck,
    StreamRequest,
)
from .settings import Settings
from .sse import parse_event_id
from .store import MemoryStore
from .streams import StreamManager
from .upstream import Upstream

log = logging.getLogger("flowise_sse")

KEEPALIVE = ServerSentEvent(comment="keep-alive", sep="\n")
LISTED_FIELDS = ("id", "name", "deployed", "isPublic", "category", "type", "updatedDate")
STREAM_ID = r"^[0-9a-f]{32}$"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    access = Access(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        upstream = Upstream(settings)
        manager = StreamManager(settings, upstream, MemoryStore(settings))
        app.state.upstream, app.state.manager = upstream, manager
        await manager.open()
        if access.open:
            log.warning("flowise-sse: no FLOWISE_SSE_API_KEYS set: the gateway is open to anyone who can reach it")
        warm = asyncio.create_task(_warm_up(upstream))
        try:
            yield
        finally:
            warm.cancel()
            await manager.close()
            await upstream.aclose()

    app = FastAPI(
        title="flowise-sse",
        version=__version__,
        summary="A Server-Sent Events gateway for Flowise chatflows: every Flowise version, one SSE contract.",
        lifespan=lifespan,
        responses=ERROR_RESPONSES,
    )
    app.state.settings = settings
    app.state.access = access
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
        )

    @app.exception_handler(GatewayError)
    async def gateway_error(request: Request, exc: GatewayError) -> JSONResponse:
        return JSONResponse({"error": exc.to_dict()}, status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        body = {"error": {"code": code, "message": str(exc.detail), "retryable": False}}
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {"loc": list(err.get("loc", ())), "msg": err.get("msg", "")} for err in exc.errors()
        ]
        message = "; ".join(f"{'.'.join(map(str, d['loc'][1:])) or 'body'}: {d['msg']}" for d in details)
        body = {"error": {"code": "invalid_request", "message": message, "retryable": False, "details": details}}
        return JSONResponse(body, status_code=422)

    # Dependencies are async: FastAPI runs plain functions in its threadpool, a hop per request.
    async def manager(request: Request) -> StreamManager:
        return request.app.state.manager

    async def keyed(request: Request) -> None:
        access.check_origin(request)
        access.require_key(request)

    async def events_response(mgr: StreamManager, stream_id: str, after: int) -> EventSourceResponse:
        return EventSourceResponse(
            await mgr.follow(stream_id, after),
            headers={"Cache-Control": "no-cache"},
            ping=settings.keepalive_interval,
            ping_message_factory=lambda: KEEPALIVE,
            sep="\n",
        )

    def resume_position(last_event_id: str | None, stream_id: str | None = None) -> tuple[str, int] | None:
        if not last_event_id:
            return None
        if stream_id is not None and last_event_id.isdigit():
            return stream_id, int(last_event_id)
        found, seq = parse_event_id(last_event_id)
        if stream_id is not None and found != stream_id:
            raise BadRequest("Last-Event-ID belongs to another stream")
        return found, seq

    async def open_stream(
        mgr: StreamManager, chatflow_id: UUID, body: StreamRequest, last_event_id: str | None
    ) -> EventSourceResponse:
        resume = resume_position(last_event_id)
        if resume:
            return await events_response(mgr, *resume)
        run = await mgr.start(str(chatflow_id), _prediction(body))
        return await events_response(mgr, run.id, 0)

    # --- health -----------------------------------------------------------------------------
    @app.get("/healthz", response_model=Health, tags=["health"])
    async def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", response_model=Readiness, tags=["health"], responses={503: {"model": Readiness}},
             response_model_exclude_none=True)
    async def readyz(request: Request) -> Any:
        """Flowise is reachable; its version and the transport in use."""
        try:
            version = await request.app.state.upstream.flowise.version()
            if version.version is None:
                await request.app.state.upstream.flowise.request("GET", "/api/v1/ping", "the ping", management=False)
        except GatewayError as exc:
            return JSONResponse({"status": "unavailable", "error": exc.to_dict()}, status_code=503)
        except Exception:
            pass  # /api/v1/ping answers text, not JSON: reachable is all that matters here
        if request.app.state.manager.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        return {"status": "ready", "flowiseVersion": version.version, "transport": version.transport}

    # --- chatflows --------------------------------------------------------------------------
    @app.get("/v1/chatflows", response_model=list[ChatflowSummary], tags=["chatflows"],
             dependencies=[Depends(keyed)], response_model_exclude_unset=True)
    async def list_chatflows(request: Request, full: bool = False) -> list[dict[str, Any]]:
        """Flowise's chatflows; `flowData` only with `?full=true`."""
        flows = await request.app.state.upstream.flowise.list_chatflows()
        fields = LISTED_FIELDS + (("flowData",) if full else ())
        return [{k: flow.get(k) for k in fields} for flow in flows if isinstance(flow, dict)]

    @app.get("/v1/chatflows/{chatflow_id}/streaming", response_model=StreamingCheck, tags=["chatflows"],
             dependencies=[Depends(keyed)])
    async def streaming_check(request: Request, chatflow_id: UUID) -> dict[str, bool]:
        """Whether Flowise can stream this chatflow (otherwise the stream carries one token)."""
        return {"isStreaming": await request.app.state.upstream.flowise.is_streaming(str(chatflow_id))}

    # --- streams ----------------------------------------------------------------------------
    @app.post("/v1/chatflows/{chatflow_id}/stream", tags=["streams"], dependencies=[Depends(keyed)],
              response_class=EventSourceResponse, responses=SSE_RESPONSE)
    async def stream_post(
        chatflow_id: UUID,
        body: StreamRequest,
        mgr: Annotated[StreamManager, Depends(manager)],
        last_event_id: Annotated[str | None, Header()] = None,
        lastEventId: str | None = None,
    ) -> EventSourceResponse:
        """Ask a chatflow and stream the answer. With `Last-Event-ID`, resume that stream instead."""
        return await open_stream(mgr, chatflow_id, body, last_event_id or lastEventId)

    @app.get("/v1/chatflows/{chatflow_id}/stream", tags=["streams"], dependencies=[Depends(keyed)],
             response_class=EventSourceResponse, responses=SSE_RESPONSE)
    async def stream_get(
        chatflow_id: UUID,
        mgr: Annotated[StreamManager, Depends(manager)],
        question: Annotated[str, Query(min_length=1)],
        history: Annotated[str | None, Query(description="JSON array of {role, content}")] = None,
        chatId: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9._:@-]{1,128}$")] = None,
        last_event_id: Annotated[str | None, Header()] = None,
        lastEventId: str | None = None,
    ) -> EventSourceResponse:
        """The same for `EventSource`, which can only GET. Its reconnects resume the stream."""
        body = StreamRequest(question=question, history=_history_param(history), chatId=chatId)
        return await open_stream(mgr, chatflow_id, body, last_event_id or lastEventId)

    @app.post("/v1/streams", status_code=201, response_model=StreamCreated, tags=["streams"],
              dependencies=[Depends(keyed)])
    async def create_stream(request: Request, body: CreateStream,
                            mgr: Annotated[StreamManager, Depends(manager)]) -> dict[str, str]:
        """Start a stream now, read it later (or from a browser) at `eventsUrl`."""
        run = await mgr.start(str(body.chatflowId), _prediction(body))
        url = request.url_for("stream_events", stream_id=run.id).include_query_params(token=access.token_for(run.id))
        return {"streamId": run.id, "chatId": run.prediction.chat_id, "eventsUrl": str(url)}

    @app.get("/v1/streams/{stream_id}/events", tags=["streams"], response_class=EventSourceResponse,
             responses=SSE_RESPONSE)
    async def stream_events(
        request: Request,
        stream_id: Annotated[str, Path(pattern=STREAM_ID)],
        mgr: Annotated[StreamManager, Depends(manager)],
        last_event_id: Annotated[str | None, Header()] = None,
        lastEventId: str | None = None,
        token: str | None = None,
    ) -> EventSourceResponse:
        """Replay a stream after `Last-Event-ID` (a bare seq is fine here), then follow it live."""
        access.check_origin(request)
        access.require_key_or_token(request, stream_id)
        resume = resume_position(last_event_id or lastEventId, stream_id)
        return await events_response(mgr, stream_id, resume[1] if resume else 0)

    @app.delete("/v1/streams/{stream_id}", status_code=204, tags=["streams"], dependencies=[Depends(keyed)])
    async def delete_stream(stream_id: Annotated[str, Path(pattern=STREAM_ID)],
                            mgr: Annotated[StreamManager, Depends(manager)]) -> Response:
        """Stop a stream: the upstream is closed, Flowise's abort called; readers get `error` `aborted`."""
        if not await mgr.stop(stream_id):
            raise StreamNotFound(f"stream {stream_id} is unknown or has expired")
        return Response(status_code=204)

    # --- prediction -------------------------------------------------------------------------
    @app.post("/v1/chatflows/{chatflow_id}/prediction", tags=["prediction"], dependencies=[Depends(keyed)])
    async def prediction(request: Request, chatflow_id: UUID, body: StreamRequest,
                         mgr: Annotated[StreamManager, Depends(manager)]) -> dict[str, Any]:
        """The whole answer at once, as Flowise's JSON."""
        flowise = request.app.state.upstream.flowise
        pred = _prediction(body)
        with mgr.chat_in_use(pred.chat_id, "a non-streaming prediction"):
            return await flowise.predict(str(chatflow_id), pred.body())

    static = resources.files("flowise_sse") / "static"
    if static.is_dir():
        app.router.routes.append(_Page("/", app=StaticFiles(directory=str(static), html=True), name="page"))

    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


class _Page(Mount):
    """The chat page at "/", but never for API paths (a wrong method there stays a 405)."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            return Match.NONE, {}
        return super().matches(scope)


def _prediction(body: StreamRequest) -> Prediction:
    return Prediction.build(
        body.question, [item.model_dump() for item in body.history], body.chatId, body.overrideConfig
    )


_HISTORY = TypeAdapter(list[HistoryItem])


def _history_param(raw: str | None) -> list[HistoryItem]:
    if not raw:
        return []
    try:
        return _HISTORY.validate_python(json.loads(raw))
    except (ValueError, ValidationError) as exc:
        raise BadRequest(f"history must be a JSON array of {{role, content}}: {str(exc)[:300]}") from None


async def _warm_up(upstream: Upstream) -> None:
    try:
        await upstream.warm_up()
    except GatewayError as exc:
        log.warning("flowise-sse: Flowise not reachable yet (%s); will retry per request", exc.message)


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document plus the SSE event models, which no route returns as JSON."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
    events = TypeAdapter(StreamEvent).json_schema(ref_template="#/components/schemas/{model}")
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(events.pop("$defs", {}))
    components["StreamEvent"] = events
    app.openapi_schema = schema
    return schema
