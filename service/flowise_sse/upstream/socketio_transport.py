"""Flowise <= 2.0.7: tokens over socket.io, the answer on the prediction POST.

Flowise emits to the socket named in `socketIOClientId` and its events carry no chat id, so
each prediction gets a socket of its own. The HTTP answer, not `end` (sent once per LLM call),
says the prediction is over; the streamed text is then reconciled with the answer's `text`.

Its engine.io client overrides a private method of engine.io's, put in through a private hook of
python-socketio's: see "Divergences from upstream" in ARCHITECTURE.md and
tests/contracts/test_engineio_contract.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine
from typing import Any

import engineio
import socketio

from .. import metrics
from ..errors import GatewayError, UpstreamUnavailable
from ..events import END, TOKEN, Event, token
from .flowise_client import FlowiseClient
from .normalizer import Normalizer, closing_events
from .prediction import Prediction

logger = logging.getLogger(__name__)

class _Marker:
    """A queue entry of the gateway's own, beside Flowise's events: an object, never a string, so
    that no event name Flowise (or anything on its socket) sends can pass for one."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


# Flowise's events (name, payload) and the gateway's own markers, in arrival order.
_EventQueue = asyncio.Queue[tuple[str | _Marker, Any]]

_ANSWER = _Marker("answer")  # the HTTP answer (or its failure) has arrived
_DROPPED = _Marker("dropped")  # the socket went away mid-prediction


class _InlineEngineIOClient(engineio.AsyncClient):
    """engine.io's client hands each incoming message to its handler in a task of its own, ~10 µs
    per relayed token (bench/RESULTS.md, profiles). The handler here only decodes the socket.io
    packet and queues the event (`_Socket._on_event`), so it runs inline, in arrival order."""

    async def _receive_packet(self, pkt: engineio.packet.Packet) -> None:
        if pkt.packet_type == engineio.packet.MESSAGE:
            await self._trigger_event("message", pkt.data, run_async=False)
        else:
            await super()._receive_packet(pkt)


class _SocketIOClient(socketio.AsyncClient):
    def _engineio_client_class(self) -> type[engineio.AsyncClient]:
        return _InlineEngineIOClient


class _Socket:
    """One connected socket.io client whose events all land in one queue."""

    def __init__(self) -> None:
        self.client = _SocketIOClient(reconnection=False)
        self.queue: _EventQueue = asyncio.Queue()
        self.client.on("*", self._on_event)
        self.client.on("disconnect", self._on_disconnect)

    def _on_event(self, name: str, *args: Any) -> None:
        self.queue.put_nowait((name, args[0] if args else None))

    def _on_disconnect(self, *args: Any) -> None:
        self.queue.put_nowait((_DROPPED, None))

    async def close(self) -> None:
        # A socket that is already gone has nothing left to close.
        with contextlib.suppress(Exception):
            await self.client.disconnect()


class SocketPool:
    """Pre-connected sockets, so the socket.io handshake (about 2 ms of CPU) is off a prediction's
    critical path.

    A socket serves one prediction at a time. After a prediction that ended cleanly it rests for
    `REST` seconds and goes back to the pool only if no frame arrived meanwhile, so no late frame of
    one prediction can reach the next; any other socket is closed and replaced in the background.
    """

    REST = 1.0

    def __init__(self, flowise: FlowiseClient, size: int) -> None:
        self.flowise = flowise
        self.size = size
        self._ready: list[_Socket] = []
        self._connecting = 0
        self._resting = 0
        self._resting_socks: set[_Socket] = set()  # closed by `close` even if their task never ran
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self.connects_on_path = 0  # leases that found no ready socket and connected themselves

    async def _connect(self) -> _Socket:
        url, path = self.flowise.socketio_url_and_path
        sock = _Socket()
        started = asyncio.get_running_loop().time()
        try:
            await sock.client.connect(
                url,
                transports=["websocket"],
                socketio_path=path,
                wait_timeout=self.flowise.settings.connect_timeout,
            )
        except (TimeoutError, socketio.exceptions.ConnectionError, OSError) as exc:
            await sock.close()
            metrics.upstream_call("socketio_connect", asyncio.get_running_loop().time() - started,
                                  UpstreamUnavailable.code)
            # python-socketio says no more than "Connection error": the client reads what failed,
            # the log where (like `FlowiseClient`'s own calls).
            logger.warning("Flowise call 'socketio_connect' at %s failed (%s): %s: %s",
                           self.flowise.redact(url + path), UpstreamUnavailable.code, type(exc).__name__,
                           self.flowise.redact(str(exc)))
            reason = "no connection in time" if isinstance(exc, asyncio.TimeoutError) else "connection failed"
            raise UpstreamUnavailable(f"Flowise's socket.io is unreachable ({reason})") from None
        except BaseException:
            await sock.close()
            raise
        metrics.upstream_call("socketio_connect", asyncio.get_running_loop().time() - started)
        return sock

    def _refill(self) -> None:
        # Resting sockets do not count: they come back in a second at best, and a lease that finds
        # the pool empty meanwhile connects on its prediction's path (a handshake, ~2 ms).
        while not self._closed and len(self._ready) + self._connecting < self.size:
            self._connecting += 1
            self._spawn(self._add_one())

    async def _add_one(self) -> None:
        try:
            sock = await self._connect()
        except GatewayError:
            return  # Flowise is down; the next lease connects directly and reports it
        finally:
            self._connecting -= 1
        if self._closed:
            await sock.close()
        else:
            self._ready.append(sock)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def warm(self) -> None:
        self._refill()

    async def lease(self) -> _Socket:
        while self._ready:
            sock = self._ready.pop()
            if sock.client.connected and sock.queue.empty():
                return sock
            await sock.close()
        self.connects_on_path += 1
        return await self._connect()

    async def release(self, sock: _Socket, clean: bool) -> None:
        """After the prediction: rest a clean socket, close any other; replacements come after
        the prediction, not during it (they would take the CPU it needs)."""
        if clean and not self._closed:
            self._resting += 1
            self._resting_socks.add(sock)
            self._spawn(self._rest(sock))
        else:
            await sock.close()
        self._refill()

    async def _rest(self, sock: _Socket) -> None:
        try:
            await asyncio.sleep(self.REST)  # cancelled: the pool is closing, and closes it
        finally:
            self._resting -= 1
        self._resting_socks.discard(sock)
        if sock.client.connected and sock.queue.empty() and len(self._ready) < self.size and not self._closed:
            self._ready.append(sock)
        else:
            await sock.close()
            self._refill()

    async def close(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        ready, self._ready = self._ready, []
        resting, self._resting_socks = self._resting_socks, set()
        await asyncio.gather(*(sock.close() for sock in (*ready, *resting)))


async def stream_socketio(
    flowise: FlowiseClient, chatflow_id: str, prediction: Prediction, pool: SocketPool, streams: bool
) -> AsyncGenerator[Event, None]:
    """`streams` is Flowise's own verdict on the chatflow: one that cannot stream sends no socket
    events at all, so it is asked plainly, without a socket."""
    normalizer = Normalizer(chatflow_id, prediction, "socketio")
    sock = await pool.lease() if streams else None
    body = prediction.encoded_body(socketIOClientId=sock.client.get_sid("/")) if sock else prediction.encoded_body()
    queue: _EventQueue = sock.queue if sock else asyncio.Queue()
    post = asyncio.get_running_loop().create_task(_post(flowise, chatflow_id, body, queue))
    clean = False
    try:
        yield normalizer.start()
        while True:
            name, data = await queue.get()
            if isinstance(name, _Marker):
                if name is _DROPPED:
                    raise UpstreamUnavailable("Flowise's socket.io connection dropped mid-prediction")
                answer = data
                break
            if name in (END, "abort"):  # `end` fires once per LLM call: not the end
                continue
            event = normalizer.feed(name, data)
            if event is not None:
                yield event
        grace = flowise.settings.socketio_late_frames
        if isinstance(answer, GatewayError):  # `_post` queues its failure as one
            async for event in _late_frames({}, normalizer, queue, grace):  # tokens sent before it failed
                yield event
            raise prediction.client_error(answer)
        async for event in _late_frames(answer, normalizer, queue, grace):
            yield event
        for event in closing_events(answer, normalizer.relayed_names, None, normalizer.action):
            yield event
        clean = True
    finally:
        if not post.done():
            post.cancel()
        if sock:
            await pool.release(sock, clean)


async def _late_frames(
    answer: dict[str, Any], normalizer: Normalizer, queue: _EventQueue, grace: float
) -> AsyncIterator[Event]:
    """The answer and the socket frames travel on different connections: wait briefly for frames
    still in flight, then emit whatever the stream missed of the answer's text. Without an answer
    (Flowise failed) take whatever tokens arrive within the grace period."""
    text = answer.get("text")
    if not isinstance(text, str):
        text = ""
    deadline = asyncio.get_running_loop().time() + grace
    while not answer or (len(normalizer.text) < len(text) and text.startswith(normalizer.text)):
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            break
        try:
            async with asyncio.timeout(remaining):
                name, data = await queue.get()
        except TimeoutError:
            break
        if name == TOKEN and (event := normalizer.feed(TOKEN, data)):
            yield event
    streamed = normalizer.text
    if len(streamed) < len(text) and text.startswith(streamed):
        yield token(text[len(streamed):])


async def _post(flowise: FlowiseClient, chatflow_id: str, body: bytes, queue: _EventQueue) -> None:
    """The prediction POST; its outcome (the answer, or its failure) joins the socket events in
    the same queue. Unbounded here: the stream's own timeouts apply."""
    outcome: dict[str, Any] | GatewayError
    try:
        outcome = await flowise.predict(chatflow_id, body, timeout=None)
    except GatewayError as exc:
        outcome = exc
    except Exception as exc:  # a bug of ours must still end the stream, not leave it to a timeout
        outcome = GatewayError(f"the prediction request failed: {type(exc).__name__}")
    queue.put_nowait((_ANSWER, outcome))
