"""A client for a flowise-sse gateway, async and blocking twins, on httpx and httpx-sse.

    async with AsyncGatewayClient("http://127.0.0.1:8080") as gateway:
        async for event in gateway.stream(chatflow_id, "Hello"):
            print(event.text, end="")

    with GatewayClient("http://127.0.0.1:8080") as gateway:     # the blocking twin
        for event in gateway.stream(chatflow_id, "Hello"):
            print(event.text, end="")

A stream is read to its end across dropped connections: the client reconnects with
`Last-Event-ID` (what `EventSource` does) and skips what it already has, so each event reaches
the caller exactly once; `end` finishes the iteration, an `error` event raises its error type
(`flowise_sse.errors`), as does a refusal before the stream (the gateway's JSON error body). Events
are the library's `Event`s, with the gateway's SSE id in `Event.id`.

The OpenAI-compatible routes (`/v1/chat/completions`, `/v1/models`) are the openai SDK's to call.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
from collections.abc import AsyncGenerator, Awaitable, Iterator, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypedDict, TypeVar, Unpack
from urllib.parse import quote

import httpx
from httpx_sse import EventSource, SSEError

from .errors import GatewayError, error_from_event
from .events import END, ERROR, Event

T = TypeVar("T")

# Between reconnects: 0.25 s, doubling, at most the gateway's `retry:` hint (2 s by default).
FIRST_RECONNECT_DELAY = 0.25
# While resuming, these mean "that replica is going or gone" (a proxy's answer, a draining
# gateway), not "this stream failed": try again.
RESUME_RETRY_STATUSES = frozenset({502, 503, 504})


class GatewayUnreachable(GatewayError):
    """No answer from the gateway: it could not be reached, or the stream was cut and could not
    be resumed."""

    code, status, retryable = "gateway_unreachable", 502, True


class UnexpectedResponse(GatewayError):
    """An answer that is not a flowise-sse gateway's (an HTML error page, another service)."""

    code, status = "unexpected_response", 502


class GatewayRefused(GatewayError):
    """A refusal whose code has no type of its own here (`invalid_request`, `method_not_allowed`,
    ...): the code and status are the gateway's."""

    def __init__(self, message: str, code: str, status: int, retryable: bool = False) -> None:
        super().__init__(message)
        self.code, self.status, self.retryable = code, status, retryable  # type: ignore[misc]


@dataclass(frozen=True, slots=True)
class CreatedStream:
    """`POST /v1/streams`' answer: read it with `events(stream_id)`; `events_url` carries a
    short-lived read token for clients without the key (a browser's `EventSource`)."""

    stream_id: str
    chat_id: str
    events_url: str


def gateway_error(data: Any, status: int = 0) -> GatewayError:
    """The gateway's `{code, message, retryable}` (a JSON error body's, an `error` event's) as
    its error type."""
    data = data if isinstance(data, dict) else {}
    failure = error_from_event(data)
    code = data.get("code")
    if isinstance(code, str) and code != failure.code:  # a code with no type of its own
        return GatewayRefused(failure.message, code, status or failure.status, bool(data.get("retryable")))
    return failure


class PredictionFields(TypedDict, total=False):
    """Flowise's prediction fields beyond the question, named as the library names them
    (`astream_prediction`); the gateway checks them as it checks its HTTP API's."""

    session_id: str
    uploads: Sequence[Mapping[str, Any]]
    form: Mapping[str, Any]
    human_input: Mapping[str, Any]
    action: Mapping[str, Any]
    lead_email: str
    stop_node_id: str


_FLOWISE_NAMES = {"session_id": "sessionId", "uploads": "uploads", "form": "form", "human_input": "humanInput",
                  "action": "action", "lead_email": "leadEmail", "stop_node_id": "stopNodeId"}


def _prediction(question: str | None, history: Sequence[Mapping[str, Any]] | None, chat_id: str | None,
                override_config: Mapping[str, Any] | None, fields: PredictionFields) -> dict[str, Any]:
    body: dict[str, Any] = {} if question is None else {"question": question}
    if history:
        body["history"] = [dict(item) for item in history]
    if chat_id is not None:
        body["chatId"] = chat_id
    if override_config is not None:
        body["overrideConfig"] = dict(override_config)
    for name, value in fields.items():
        if value is not None:
            body[_FLOWISE_NAMES[name]] = value
    return body


def _seq(event_id: str | None) -> int:
    """The seq of `<streamId>:<seq>` (0 for none)."""
    if not event_id:
        return 0
    try:
        return int(event_id.rsplit(":", 1)[-1])
    except ValueError:
        return 0


class AsyncGatewayClient:
    """A flowise-sse gateway at `base_url`, with its API key when it has keys.

    `timeout`: seconds to connect and for a JSON answer; `read_timeout`: seconds a stream may
    stay silent before its connection counts as dead and is resumed (the gateway sends a
    keep-alive every 15 s); `reconnects`: attempts in a row to resume a cut stream.
    """

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout: float = 30.0,
                 read_timeout: float = 60.0, reconnects: int = 5) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self.reconnects = reconnects
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=headers,
                                       timeout=httpx.Timeout(timeout, read=read_timeout))

    async def __aenter__(self) -> AsyncGatewayClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # --- JSON routes ----------------------------------------------------------------------

    async def list_chatflows(self) -> list[dict[str, Any]]:
        """Flowise's chatflows: `[{id, name, deployed, isPublic, category, type, updatedDate}]`."""
        flows = await self._json("GET", "/v1/chatflows")
        if not isinstance(flows, list):
            raise UnexpectedResponse(f"{self.base_url}/v1/chatflows did not answer with a list")
        return flows

    async def is_streaming(self, chatflow_id: str) -> bool:
        """Whether Flowise streams this chatflow (otherwise its stream carries one token)."""
        answer = await self._json("GET", f"/v1/chatflows/{quote(chatflow_id, safe='')}/streaming")
        return bool(answer.get("isStreaming")) if isinstance(answer, dict) else False

    async def create_stream(self, chatflow_id: str, question: str | None, *,
                            history: Sequence[Mapping[str, Any]] | None = None, chat_id: str | None = None,
                            override_config: Mapping[str, Any] | None = None,
                            **fields: Unpack[PredictionFields]) -> CreatedStream:
        """Start a stream now (`POST /v1/streams`), read it later with `events()`, from here or
        elsewhere. `fields`: Flowise's other prediction fields (`PredictionFields`)."""
        body = {"chatflowId": chatflow_id, **_prediction(question, history, chat_id, override_config, fields)}
        created = await self._json("POST", "/v1/streams", json=body)
        try:
            return CreatedStream(str(created["streamId"]), str(created["chatId"]), str(created["eventsUrl"]))
        except (KeyError, TypeError):
            raise UnexpectedResponse(f"{self.base_url}/v1/streams answered without a stream id") from None

    async def delete_stream(self, stream_id: str) -> None:
        """Stop a stream: Flowise's run is aborted; its readers get `error` `aborted`
        (`StreamAborted`)."""
        await self._json("DELETE", f"/v1/streams/{quote(stream_id, safe='')}")

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        if response.status_code >= 400:
            raise self._failure(response.status_code, response.content, path)
        if response.status_code == 204:
            return None
        try:
            return response.json()
        except ValueError:
            raise UnexpectedResponse(f"{self.base_url}{path} answered with something that is not JSON: "
                                     "is it a flowise-sse gateway?") from None

    def _unreachable(self, exc: httpx.HTTPError) -> GatewayUnreachable:
        reason = str(exc) or type(exc).__name__
        return GatewayUnreachable(f"the gateway is unreachable at {self.base_url}: {reason}")

    def _failure(self, status: int, content: bytes, path: str) -> GatewayError:
        try:
            error = json.loads(content)["error"]
            if not isinstance(error.get("message"), str):
                raise TypeError
        except (ValueError, KeyError, TypeError, AttributeError):
            text = content[:200].decode("utf-8", "replace").strip()
            return UnexpectedResponse(f"HTTP {status} from {self.base_url}{path}: {text or 'no body'}")
        return gateway_error(error, status)

    # --- streams --------------------------------------------------------------------------

    def stream(
        self, chatflow_id: str, question: str | None, *, history: Sequence[Mapping[str, Any]] | None = None,
        chat_id: str | None = None, override_config: Mapping[str, Any] | None = None,
        **fields: Unpack[PredictionFields],
    ) -> AsyncGenerator[Event, None]:
        """Ask a chatflow and yield the answer's events (`POST /v1/chatflows/{id}/stream`):
        `start`, `token`s and relayed Flowise events, `end`. A connection cut after the first
        event is resumed; one cut before it raises `GatewayUnreachable` (the stream's id is not
        known yet: `create_stream` + `events` has no such gap). `fields`: Flowise's other
        prediction fields (`PredictionFields`); `question` may be None when one stands in for it."""
        body = _prediction(question, history, chat_id, override_config, fields)
        return self._read(None, None, f"/v1/chatflows/{quote(chatflow_id, safe='')}/stream", body)

    def events(self, stream_id: str, *, last_event_id: str | None = None) -> AsyncGenerator[Event, None]:
        """A stream's events after `last_event_id` (from its first without), live to its end."""
        return self._read(stream_id, last_event_id, None, None)

    async def _read(self, stream_id: str | None, last_id: str | None, ask_path: str | None,
                    body: dict[str, Any] | None) -> AsyncGenerator[Event, None]:
        """One stream, over as many connections as it takes: the first asks (`ask_path`) or reads
        (`stream_id`); each next one resumes after the last event yielded."""
        at = _Position(stream_id, last_id)
        failures = 0
        while True:
            try:
                async with aclosing(self._connection(at, ask_path, body)) as events:
                    async for event in events:
                        failures = 0
                        yield event
                return  # a connection ends quietly only after `end`, or past the stream's end
            except _Cut as cut:
                if at.stream_id is None:  # nothing to resume yet: maybe nothing was asked
                    raise GatewayUnreachable(f"the gateway at {self.base_url} {cut}") from None
            failures += 1
            if failures > self.reconnects:
                raise GatewayUnreachable(f"stream {at.stream_id} was cut and could not be resumed "
                                         f"({self.reconnects} attempts)")
            await asyncio.sleep(min(at.retry_cap, FIRST_RECONNECT_DELAY * 2 ** (failures - 1)))

    async def _connection(self, at: _Position, ask_path: str | None, body: dict[str, Any] | None
                          ) -> AsyncGenerator[Event, None]:
        """The events of one connection after `at`, moving `at` along. Raises `_Cut` when the
        connection fails or ends early, the error types for the gateway's refusals and `error`."""
        headers = {"Accept": "text/event-stream"}
        if at.stream_id is None:
            request = self._http.build_request("POST", ask_path or "", json=body, headers=headers)
        else:
            if at.last_id:
                headers["Last-Event-ID"] = at.last_id
            request = self._http.build_request("GET", f"/v1/streams/{quote(at.stream_id, safe='')}/events",
                                               headers=headers)
        try:
            response = await self._http.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise _Cut(f"is unreachable: {str(exc) or type(exc).__name__}") from None
        try:
            if response.status_code == 204:
                return  # nothing after the last id: the stream is over
            if response.status_code >= 400:
                failure = self._failure(response.status_code, await response.aread(), request.url.path)
                if at.stream_id is not None and response.status_code in RESUME_RETRY_STATUSES:
                    raise _Cut(f"answered {response.status_code}")
                raise failure
            # Closed here, not by the garbage collector: its finaliser would run as a task on a
            # loop the blocking client may be closing by then.
            async with aclosing(EventSource(response).aiter_sse()) as frames:
                async for sse in frames:
                    if sse.retry:
                        at.retry_cap = sse.retry / 1000
                    if not sse.data:  # httpx-sse's data-less dispatch after a comment
                        continue
                    seq = _seq(sse.id)
                    if at.stream_id is None and sse.id:
                        at.stream_id = sse.id.rsplit(":", 1)[0]
                    if seq and seq <= at.seen:
                        continue  # replayed: the caller has it already
                    at.seen, at.last_id = seq or at.seen, sse.id or at.last_id
                    data = json.loads(sse.data)
                    if sse.event == ERROR:
                        raise gateway_error(data)
                    yield Event(sse.event, data, sse.id or None)
                    if sse.event == END:
                        return
        except SSEError:
            raise UnexpectedResponse(f"{self.base_url}{request.url.path} did not answer with an event stream: "
                                     "is it a flowise-sse gateway?") from None
        except httpx.TransportError as exc:
            raise _Cut(f"closed the connection: {str(exc) or type(exc).__name__}") from None
        finally:
            await response.aclose()
        raise _Cut("closed the stream before its end")


@dataclass(slots=True)
class _Position:
    """Where a reader is in a stream: its id once known, the last event's id and seq, and the
    longest wait between reconnects (the gateway's `retry:` hint)."""

    stream_id: str | None
    last_id: str | None
    seen: int = 0
    retry_cap: float = 2.0

    def __post_init__(self) -> None:
        self.seen = _seq(self.last_id)


class _Cut(Exception):
    """A connection failed or ended before the stream did: resume."""


class GatewayClient:
    """The blocking twin of `AsyncGatewayClient`: the same methods and errors, each call waiting
    for its answer.

    As python-socketio's sync clients do, one background thread runs the async client on its
    own event loop for the client's lifetime; a stream's events come to the caller through a
    queue. Close it (or use `with`) to stop the thread.
    """

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout: float = 30.0,
                 read_timeout: float = 60.0, reconnects: int = 5) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="flowise-sse-client", daemon=True)
        self._thread.start()

        async def make() -> AsyncGatewayClient:
            return AsyncGatewayClient(base_url, api_key=api_key, timeout=timeout, read_timeout=read_timeout,
                                      reconnects=reconnects)

        self._client = self._call(make())
        self.base_url = self._client.base_url

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections, then the loop the way `asyncio.run` does: what is still
        pending is cancelled and awaited first, so nothing is "destroyed but pending"."""
        if self._loop.is_closed():
            return

        async def finish() -> None:
            await self._client.aclose()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._loop.shutdown_asyncgens()

        try:
            self._call(finish())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def _call(self, work: Awaitable[T]) -> T:
        async def run() -> T:
            return await work

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result()

    def list_chatflows(self) -> list[dict[str, Any]]:
        return self._call(self._client.list_chatflows())

    def is_streaming(self, chatflow_id: str) -> bool:
        return self._call(self._client.is_streaming(chatflow_id))

    def create_stream(self, chatflow_id: str, question: str | None, *,
                      history: Sequence[Mapping[str, Any]] | None = None, chat_id: str | None = None,
                      override_config: Mapping[str, Any] | None = None,
                      **fields: Unpack[PredictionFields]) -> CreatedStream:
        return self._call(self._client.create_stream(chatflow_id, question, history=history, chat_id=chat_id,
                                                     override_config=override_config, **fields))

    def delete_stream(self, stream_id: str) -> None:
        self._call(self._client.delete_stream(stream_id))

    def stream(self, chatflow_id: str, question: str | None, *, history: Sequence[Mapping[str, Any]] | None = None,
               chat_id: str | None = None, override_config: Mapping[str, Any] | None = None,
               **fields: Unpack[PredictionFields]) -> Iterator[Event]:
        return self._iterate(self._client.stream(chatflow_id, question, history=history, chat_id=chat_id,
                                                 override_config=override_config, **fields))

    def events(self, stream_id: str, *, last_event_id: str | None = None) -> Iterator[Event]:
        return self._iterate(self._client.events(stream_id, last_event_id=last_event_id))

    def _iterate(self, events: AsyncGenerator[Event, None]) -> Iterator[Event]:
        """The async iterator's events, through a queue, from one task on the client's loop. A
        caller that stops early (break, close, an exception) cancels it: its connection closes."""
        handoff: queue.Queue[Event | _Outcome] = queue.Queue()
        finished = threading.Event()

        async def pump() -> None:
            try:
                async for event in events:
                    handoff.put(event)
                handoff.put(_Outcome(None))
            except BaseException as exc:  # the caller's to see, in its thread; cancellation too
                handoff.put(_Outcome(exc))
                if isinstance(exc, asyncio.CancelledError):
                    raise
            finally:
                await events.aclose()
                finished.set()

        task = asyncio.run_coroutine_threadsafe(pump(), self._loop)
        try:
            while True:
                item = handoff.get()
                if isinstance(item, _Outcome):
                    if item.failure is not None:
                        raise item.failure
                    return
                yield item
        finally:
            if not finished.is_set():
                task.cancel()
                finished.wait(10)


@dataclass(slots=True)
class _Outcome:
    failure: BaseException | None
