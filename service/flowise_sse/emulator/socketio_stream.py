"""Up to 2.0.x: Flowise's socket.io server; a prediction streams its events to the socket it names.

The POST carries `socketIOClientId`; the events go to that socket, and the HTTP JSON answer follows
(`prediction_run.answer_json`).
"""

from __future__ import annotations

import asyncio
from typing import Any

import socketio
from starlette.types import ASGIApp

from .mock_llm import Plan, handler_events
from .quirks import Quirks
from .records import Records


class SocketioStream:
    """The socket.io server beside the HTTP routes; counts the sockets in `records`."""

    def __init__(self, quirks: Quirks, records: Records, answer_lag: float) -> None:
        """`answer_lag`: seconds between the `end` frame and the HTTP JSON answer."""
        self._quirks = quirks
        self._records = records
        self._answer_lag = answer_lag
        self._sio = socketio.AsyncServer(async_mode="asgi", cors_allowed_origins="*")
        self._sio.on("connect", self._on_connect)
        self._sio.on("disconnect", self._on_disconnect)

    def mount(self, http_app: ASGIApp) -> ASGIApp:
        """The app serving `/socket.io/` and passing every other request to `http_app`."""
        return socketio.ASGIApp(self._sio, other_asgi_app=http_app)

    async def stream_to(self, sid: str, plan: Plan) -> None:
        """Runs the LLM with the socket `sid` listening, then waits out the lag before the JSON answer."""
        emit = self._sio.emit
        async for event, data in handler_events(plan, self._quirks):
            await emit(event, data, to=sid)
        await emit("end", to=sid)
        await asyncio.sleep(self._answer_lag)

    async def _on_connect(self, sid: str, *_: Any) -> None:
        self._records.connected_sockets += 1
        self._records.socket_connects += 1

    async def _on_disconnect(self, sid: str, *_: Any) -> None:
        self._records.connected_sockets -= 1
