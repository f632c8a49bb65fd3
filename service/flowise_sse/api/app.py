"""The app factory: settings in, a FastAPI app out, with its lifespan, middleware and routers.

The lifespan owns the long-lived objects (the `Upstream` with its connection pools, the
`StreamManager` with its stores); routes reach them through `dependencies.py`.
"""

from __future__ import annotations

import asyncio
import logging
import os
from contextlib import asynccontextmanager
from typing import AsyncIterator

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from .. import __version__, metrics
from ..errors import GatewayError
from ..settings import Settings, unknown_variables
from ..streams import MemoryStore, StreamManager
from ..upstream import Upstream
from .access import Access
from .chat_page import mount_chat_page
from .docs_page import mount_docs
from .error_handlers import install_error_handlers
from .guards import Guard
from .openapi import openapi_document
from .redaction import install_log_redaction
from .request_context import RequestContext
from .routes import chatflows, detached_streams, health, openai_compat, prometheus
from .schemas import ERROR_RESPONSES

logger = logging.getLogger("flowise_sse")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    access = Access(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        upstream = Upstream(settings)
        manager = StreamManager(settings, upstream, MemoryStore(settings))
        app.state.upstream, app.state.manager = upstream, manager
        install_log_redaction()  # again: uvicorn configured its loggers after create_app
        await manager.open()
        if access.open:
            logger.warning("flowise-sse: no FLOWISE_SSE_API_KEYS set: the gateway is open to anyone who can reach it")
        if unknown := unknown_variables(os.environ):
            logger.warning("flowise-sse: unknown settings ignored (misspelt, or not of this version): %s",
                           ", ".join(unknown))
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
        docs_url=None,  # docs_page.py: Swagger UI from installed files, not a CDN
        redoc_url=None,
    )
    install_log_redaction()
    app.state.settings = settings
    app.state.access = access
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID", "X-Flowise-Chat-Id", "X-Request-ID"],
            expose_headers=["X-Flowise-Stream-Id", "X-Flowise-Chat-Id", "X-Flowise-Ignored-Params", "X-Request-ID"],
        )
    # Nothing runs for a request with a wrong Host, a body too big or too slow.
    app.add_middleware(Guard, settings=settings)
    app.add_middleware(RequestContext)  # outermost: every answer, the guard's too, gets its id
    metrics.set_build_info(__version__)
    install_error_handlers(app)
    for router in (health.router, chatflows.router, detached_streams.router, openai_compat.router,
                   prometheus.router):
        app.include_router(router)
    mount_docs(app)
    mount_chat_page(app)
    app.openapi = lambda: openapi_document(app)  # type: ignore[method-assign]
    return app


async def _warm_up(upstream: Upstream) -> None:
    try:
        await upstream.warm_up()
    except GatewayError as exc:
        logger.warning("flowise-sse: Flowise not reachable yet (%s); will retry per request", exc.message)
