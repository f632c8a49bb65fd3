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
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI
from sse_starlette.sse import AppStatus

from . import __version__
from .api import app_services, create_app, flowise_problem
from .http_protocol import gateway_protocol
from .logging_setup import configure, quiet
from .settings import Settings

log = logging.getLogger("flowise_sse")


class GatewayServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.app = app
        # The gateway decides when its SSE responses end on shutdown (see the module docstring).
        AppStatus.disable_automatic_graceful_drain()

    def handle_exit(self, sig: int, frame: Any) -> None:
        services = app_services(self.app)
        if services is not None:  # None: a signal before the lifespan started
            services.manager.begin_drain()
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
        return int(sock.getsockname()[1])  # (host, port): typed Any


@asynccontextmanager
async def demo_flowise(flowise_version: str) -> AsyncIterator[tuple[str, str]]:
    """The demo's emulated Flowise on a free loopback port, quiet, for as long as the block runs:
    yields its URL and the warning line the banner shows beside the gateway's."""
    from .emulator import DEMO_CHATFLOW_ID, EmulatorConfig, create_emulator_app

    port = free_port()
    # The demo runs as long as the gateway: few records (a long chat's request keeps ~120 KB).
    emulator = create_emulator_app(EmulatorConfig(version=flowise_version, token_delay=0.05,
                                                  max_recorded_requests=100))
    server = uvicorn.Server(
        uvicorn.Config(emulator, host="127.0.0.1", port=port, log_config=None, lifespan="off",
                       timeout_graceful_shutdown=2)
    )
    with quiet():  # its tasks inherit the quiet: no startup or access lines of its own
        task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                await task  # it failed to start: say why
                raise RuntimeError("the demo's emulated Flowise did not start")
            await asyncio.sleep(0.01)
        # Its URL is in the banner: the library examples talk to it directly (FLOWISE_URL).
        url = f"http://127.0.0.1:{port}"
        yield url, (
            f"DEMO MODE: the chatflows come from an emulated Flowise {flowise_version} at {url} (not a "
            f"real one, no LLM); try chatflow {DEMO_CHATFLOW_ID}"
        )
    finally:
        server.should_exit = True
        await task


def gateway_server(settings: Settings, log_level: str = "info", **options: Any) -> GatewayServer:
    """One process's gateway: the app and uvicorn as the gateway configures it."""
    app = create_app(settings)
    return GatewayServer(gateway_config(app, settings, log_level=log_level, log_config=None, **options), app)


async def serve(settings: Settings, host: str, port: int, demo: bool = False, log_level: str = "info",
                flowise_version: str = "3.1.4") -> None:
    """One process: it listens, serves and drains itself (`workers.py` runs several)."""
    if not logging.getLogger().handlers:  # called from code rather than the CLI: log as it would
        configure(settings.log_format, log_level)
    async with AsyncExitStack() as stack:
        demo_line = ""
        if demo:
            flowise_url, demo_line = await stack.enter_async_context(demo_flowise(flowise_version))
            settings = settings.model_copy(update={"flowise_url": flowise_url})
        server = gateway_server(settings, log_level, host=host, port=port)
        banner = asyncio.create_task(_banner(server, host, port, demo_line))
        try:
            await server.serve()
        finally:
            banner.cancel()


async def _banner(server: GatewayServer, host: str, port: int, demo_line: str) -> None:
    while not server.started:
        await asyncio.sleep(0.02)
    show_banner(host, port, demo_line, problem=await startup_problem(server))


async def startup_problem(server: GatewayServer) -> str | None:
    """Why Flowise is not usable once the gateway listens, or None (then it is "ready")."""
    services = app_services(server.app)  # the server has started: its lifespan made them
    return await flowise_problem(server.app, services.settings.connect_timeout + 5 if services else 0)


def show_banner(host: str, port: int, demo_line: str, workers: str = "", problem: str | None = None) -> None:
    """One clear line once the gateway listens (and the demo's warning, loud, beside it): "ready"
    only when Flowise answered."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    base = f"http://{shown}:{port}"
    if problem is None:
        log.info("flowise-sse %s ready on %s%s: chat page %s/, API docs %s/docs, metrics %s/metrics",
                 __version__, base, workers, base, base, base)
    else:
        log.warning("flowise-sse %s listening on %s%s, but Flowise is not usable (%s): streams fail until it is",
                    __version__, base, workers, problem)
    if demo_line:
        log.warning(demo_line)
