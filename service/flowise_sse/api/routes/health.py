"""`/healthz` (the process is up) and `/readyz` (Flowise is reachable)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from ...errors import GatewayError
from ..dependencies import Flowise, Manager
from ..schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}},
            response_model_exclude_none=True)
async def readyz(flowise: Flowise, manager: Manager) -> Any:
    """Flowise is reachable; its version and the transport in use."""
    try:
        version = await flowise.version()
        if version.version is None:
            await flowise.request("GET", "/api/v1/ping", "the ping", operation="ping", management=False)
    except GatewayError as exc:
        return JSONResponse({"status": "unavailable", "error": exc.to_dict()}, status_code=503)
    except Exception:
        pass  # /api/v1/ping answers text, not JSON: reachable is all that matters here
    if manager.draining:
        return JSONResponse({"status": "draining"}, status_code=503)
    return {"status": "ready", "flowiseVersion": version.version, "transport": version.transport}
