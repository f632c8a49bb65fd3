"""The upstream adapter: one prediction from Flowise, whatever its version, as normalized events.

`Upstream` owns what is shared between predictions (the Flowise client and its HTTP pool, the
socket.io pool, the remembered version), picks the transport per version and bounds the time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from contextlib import aclosing

from ..events import TERMINAL, Event
from ..settings import Settings
from .flowise_client import FlowiseClient
from .prediction import Prediction
from .socketio_transport import SocketPool, stream_socketio
from .sse_transport import stream_sse
from .timeouts import bounded


class Upstream:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.flowise = FlowiseClient(settings)
        self.sockets = SocketPool(self.flowise, settings.socketio_pool_size)
        self._aborts: set[asyncio.Task[None]] = set()

    async def warm_up(self) -> None:
        """Learn the transport and, for socket.io, connect the pool, before the first request."""
        if (await self.flowise.version()).transport == "socketio":
            self.sockets.warm()

    async def aclose(self) -> None:
        await asyncio.gather(*self._aborts, return_exceptions=True)
        await self.sockets.close()
        await self.flowise.aclose()

    async def stream(self, chatflow_id: str, prediction: Prediction) -> AsyncGenerator[Event, None]:
        """Yield `start`, tokens and relayed events, then `end`; raise a `GatewayError` on failure.

        Closing the generator early closes the upstream connection and asks Flowise to abort.
        """
        finished = False
        sent = [False]  # the prediction reached Flowise: only then is there anything to abort
        try:
            async with aclosing(self._open(chatflow_id, prediction, sent)) as events:
                async for event in bounded(events, self.settings):
                    finished = event.event in TERMINAL
                    yield event
        finally:
            if not finished and sent[0]:
                self.abort_upstream(chatflow_id, prediction.chat_id)

    def abort_upstream(self, chatflow_id: str, chat_id: str) -> None:
        task = asyncio.get_running_loop().create_task(self.flowise.abort(chatflow_id, chat_id))
        self._aborts.add(task)
        task.add_done_callback(self._aborts.discard)

    async def _open(
        self, chatflow_id: str, prediction: Prediction, sent: list[bool]
    ) -> AsyncGenerator[Event, None]:
        version = await self.flowise.version()
        prediction.check_supported(version)  # before `start`: a field this Flowise lacks is a 400
        streams = await self.flowise.check_chatflow(chatflow_id)
        sent[0] = True
        if version.transport == "sse":
            events = stream_sse(self.flowise, chatflow_id, prediction)
        else:
            events = stream_socketio(self.flowise, chatflow_id, prediction, self.sockets, streams)
        async with aclosing(events):
            async for event in events:
                yield event
