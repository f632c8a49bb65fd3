from collections.abc import Callable
from typing import Any

import engineio
from starlette.types import ASGIApp as _ASGIApp
from starlette.types import Receive, Scope, Send

from . import exceptions as exceptions

class AsyncClient:
    connected: bool
    def __init__(
        self,
        reconnection: bool = True,
        reconnection_attempts: int = 0,
        reconnection_delay: float = 1,
        reconnection_delay_max: float = 5,
        randomization_factor: float = 0.5,
        logger: Any = False,
        serializer: str = "default",
        json: Any = None,
        handle_sigint: bool = True,
        **kwargs: Any,
    ) -> None: ...
    def on(self, event: str, handler: Callable[..., Any] | None = None, namespace: str | None = None) -> Any: ...
    async def connect(
        self,
        url: str,
        headers: dict[str, str] = ...,
        auth: Any = None,
        transports: list[str] | None = None,
        namespaces: list[str] | None = None,
        socketio_path: str = "socket.io",
        wait: bool = True,
        wait_timeout: float = 1,
        retry: bool = False,
    ) -> None: ...
    async def disconnect(self) -> None: ...
    def get_sid(self, namespace: str | None = None) -> str | None: ...
    def _engineio_client_class(self) -> type[engineio.AsyncClient]: ...

class AsyncServer:
    def __init__(
        self,
        client_manager: Any = None,
        logger: Any = False,
        json: Any = None,
        async_handlers: bool = True,
        namespaces: Any = None,
        **kwargs: Any,
    ) -> None: ...
    def on(self, event: str, handler: Callable[..., Any] | None = None, namespace: str | None = None) -> Any: ...
    async def emit(
        self,
        event: str,
        data: Any = None,
        to: str | None = None,
        room: str | None = None,
        skip_sid: str | None = None,
        namespace: str | None = None,
        callback: Callable[..., Any] | None = None,
        ignore_queue: bool = False,
    ) -> None: ...

class ASGIApp:
    def __init__(
        self,
        socketio_server: AsyncServer,
        other_asgi_app: _ASGIApp | None = None,
        static_files: dict[str, Any] | None = None,
        socketio_path: str = "socket.io",
        on_startup: Callable[[], Any] | None = None,
        on_shutdown: Callable[[], Any] | None = None,
    ) -> None: ...
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None: ...
