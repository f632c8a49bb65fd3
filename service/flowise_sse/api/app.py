"""The app factory: settings in, a FastAPI app out, with its lifespan, middleware and routers.

The lifespan owns the long-lived objects (the `Upstream` with its connection pools, the
`StreamManager` with its stores), gathered in one `Services` that routes reach through
`dependencies.py`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from .. import __version__, metrics
from ..settings import Settings
from ..streams import MemoryStore, StreamManager
from ..upstream import Upstream
from .access import Access
from .chat_page import mount_chat_page
from .dependencies import Services
from .docs_page import mount_docs
from .error_handlers import install_error_handlers
from .guards import Guard
from .openapi import GatewayApp
from .override_policy import OverridePolicy
from .redaction import install_log_redaction
from .request_context import RequestContext
from .response_records import ResponseRecords
from .routes import chatflows, conversation, detached_streams, health, openai_compat, openai_responses, prometheus
from .schemas import ERROR_RESPONSES
from .startup_report import report_startup

logger = logging.getLogger("flowise_sse")


def check_settings(settings: Settings) -> None:
    """Raises ValueError saying what is wrong with the settings that only the app reads (the keys
    file, the override policy): `serve` calls it before it starts anything."""
    Access(settings)
    OverridePolicy(settings.override_config)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    access = Access(settings)
    override_policy = OverridePolicy(settings.override_config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        upstream = Upstream(settings)
        manager = StreamManager(settings, upstream, MemoryStore(settings))
        app.state.services = Services(settings, access, override_policy, upstream, manager, ResponseRecords(manager))
        install_log_redaction()  # again: uvicorn configured its loggers after create_app
        await manager.open()
        # What works and what does not, said once; the banner waits for it (flowise_problem).
        warm = app.state.startup = asyncio.create_task(report_startup(settings, access, override_policy, upstream))
        try:
            yield
        finally:
            warm.cancel()
            await manager.close()
            await upstream.aclose()

    app = GatewayApp(
        title="flowise-sse",
        version=__version__,
        summary="A Server-Sent Events gateway for Flowise chatflows: every Flowise version, one SSE contract.",
        lifespan=lifespan,
        responses=ERROR_RESPONSES,
        docs_url=None,  # docs_page.py: Swagger UI from installed files, not a CDN
        redoc_url=None,
    )
    install_log_redaction()
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID", "X-Flowise-Chat-Id", "X-Request-ID"],
            expose_headers=["X-Flowise-Stream-Id", "X-Flowise-Chat-Id", "X-Flowise-Ignored-Params", "X-Request-ID"],
        )
    # Nothing runs for a request with a wrong Host, a body too big or too slow.
    app.add_middleware(Guard, settings=settings)
    app.add_middleware(RequestContext)  # outermost: every answer, the guard's too, gets its id
    metrics.set_build_info(__version__)
    install_error_handlers(app)
    for router in (health.router, chatflows.router, conversation.router, detached_streams.router,
                   openai_compat.router, openai_responses.router, prometheus.router):
        app.include_router(router)
    mount_docs(app)
    mount_chat_page(app)
    return app


def app_services(app: FastAPI) -> Services | None:
    """The app's parts, once its lifespan has made them (None before it starts)."""
    services: Services | None = getattr(app.state, "services", None)
    return services


async def flowise_problem(app: FastAPI, wait: float) -> str | None:
    """Why Flowise is not usable, once the start-up report knows (None: it answered); waits up to
    `wait` seconds for the report."""
    task: asyncio.Task[str | None] | None = getattr(app.state, "startup", None)
    if task is None:
        return None
    try:
        return await asyncio.wait_for(asyncio.shield(task), wait)
    except TimeoutError:
        return f"it did not answer within {wait:g} s"
