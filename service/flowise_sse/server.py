"""The server's lifecycle: start (optionally beside the demo emulator), serve, drain on SIGTERM.

On SIGTERM uvicorn stops accepting connections; the gateway then stops taking streams and lets
its readers go (at once when Redis holds the events, so clients resume on another replica;
otherwise when their stream ends or `shutdown_grace` passes). Lifespan shutdown then gives the
running upstreams what is left of the grace period and aborts the rest.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import uvicorn
from fastapi import FastAPI
from sse_starlette.sse import AppStatus

from .api import create_app
from .http_protocol import gateway_protocol
from .settings import Settings

log = logging.getLogger("flowise_sse")


class GatewayServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.app = app
        # The gateway decides when its SSE responses end on shutdown (see the module docstring).
        AppStatus.disable_automatic_graceful_drain()

    def handle_exit(self, sig: int, frame: Any) -> None:
        manager = getattr(self.app.state, "manager", None)
        if manager is not None:
            manager.begin_drain()
        super().handle_exit(sig, frame)


def gateway_config(app: FastAPI, settings: Settings, **options: Any) -> uvicorn.Config:
    """uvicorn as the gateway runs it: its connection limits (http_protocol.py) and timeouts."""
    return uvicorn.Config(
        app, proxy_headers=True,
        timeout_graceful_shutdown=int(settings.shutdown_grace) + 5,
        http=gateway_protocol(settings),
        timeout_keep_alive=max(1, round(settings.idle_connection_timeout)),
        h11_max_incomplete_event_size=settings.max_header_bytes,
        **options,
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


async def serve(settings: Settings, host: str, port: int, demo: bool = False, log_level: str = "info") -> None:
    emulator_server: uvicorn.Server | None = None
    emulator_task: asyncio.Task[None] | None = None
    if demo:
        from .emulator import DEMO_CHATFLOW_ID, EmulatorConfig, create_emulator_app

        emulator_port = free_port()
        # The demo runs as long as the gateway: few records (a long chat's request keeps ~120 KB).
        emulator = create_emulator_app(EmulatorConfig(token_delay=0.05, max_recorded_requests=100))
        emulator_server = uvicorn.Server(
            uvicorn.Config(emulator, host="127.0.0.1", port=emulator_port, log_level="warning", lifespan="off",
                           timeout_graceful_shutdown=2)
        )
        emulator_task = asyncio.create_task(emulator_server.serve())
        settings = settings.model_copy(update={"flowise_url": f"http://127.0.0.1:{emulator_port}"})
        log.warning(
            "DEMO MODE: an emulated Flowise %s (not a real one) answers at %s; try chatflow %s",
            emulator.config.version, settings.flowise_url, DEMO_CHATFLOW_ID,
        )
    app = create_app(settings)
    config = gateway_config(app, settings, host=host, port=port, log_level=log_level)
    try:
        await GatewayServer(config, app).serve()
    finally:
        if emulator_server and emulator_task:
            emulator_server.should_exit = True
            await emulator_task
