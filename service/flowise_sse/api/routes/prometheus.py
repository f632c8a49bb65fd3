"""`GET /metrics`: the Prometheus text exposition of `metrics.py`."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request, Response

from ... import metrics
from ...errors import NotAuthenticated
from ..dependencies import ServicesDep

router = APIRouter(tags=["operations"])


# Documented as text/plain: the exact version parameter depends on the prometheus-client installed.
@router.get("/metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                             "description": "The Prometheus text exposition format"}})
async def prometheus_metrics(request: Request, services: ServicesDep) -> Response:
    """Prometheus metrics. With `FLOWISE_SSE_METRICS_TOKEN` set, `Authorization: Bearer <that
    token>`; otherwise a gateway API key, as everywhere (none when the gateway is open)."""
    settings = services.settings
    if settings.metrics_token is not None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        expected = settings.metrics_token.get_secret_value().encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
            raise NotAuthenticated("/metrics needs Authorization: Bearer <FLOWISE_SSE_METRICS_TOKEN>")
    else:
        services.access.caller(request)
    return Response(metrics.exposition(), media_type=metrics.CONTENT_TYPE_LATEST)
