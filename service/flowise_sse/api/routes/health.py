"""`/healthz` (the process is up) and `/readyz` (Flowise is reachable)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ...errors import GatewayError
from ..dependencies import ServicesDep
from ..schemas import Health, Readiness

router = APIRouter(tags=["health"])

_PUBLIC_REASON = {
    "upstream_unavailable": "Flowise is not reachable",
    "upstream_timeout": "Flowise did not answer in time",
    "unauthorized": "Flowise refused the gateway's credentials",
}


@router.get("/healthz", response_model=Health)
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}},
            response_model_exclude_none=True)
async def readyz(request: Request, services: ServicesDep) -> Any:
    """Flowise is reachable (and Redis, when configured); its version and the transport in use.
    Why it is not, in detail, only to a caller with a gateway key (the detail names internal
    addresses)."""
    flowise, manager, access = services.flowise, services.manager, services.access
    try:
        version = await flowise.version()
        if version.version is None:
            await flowise.ping()
    except GatewayError as exc:
        error = exc.to_dict()
        if access.open or not access.has_key(request):
            error["message"] = _PUBLIC_REASON.get(exc.code, "Flowise is not usable")
        else:  # an operator's check: which Flowise, too (the upstream's own messages never say)
            error["message"] = f"{exc.message}; FLOWISE_URL is {flowise.public_url}"
        return JSONResponse({"status": "unavailable", "error": error}, status_code=503)
    if manager.draining:
        return JSONResponse({"status": "draining"}, status_code=503)
    if manager.mirror is not None:
        try:
            await manager.mirror.ping(timeout=2.0)
        except GatewayError as exc:  # every stream would get 503 store_unavailable: not ready
            error = exc.to_dict()
            if access.open or not access.has_key(request):
                error["message"] = "Redis (FLOWISE_SSE_REDIS_URL) is not reachable"
            return JSONResponse({"status": "unavailable", "error": error}, status_code=503)
    return {"status": "ready", "flowiseVersion": version.version, "transport": version.transport}
