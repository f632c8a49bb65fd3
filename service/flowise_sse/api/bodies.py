"""Bodies that may carry uploads (up to FLOWISE_SSE_MAX_UPLOAD_BYTES), read so that the gateway
holds one copy of them, and only until Flowise has them.

FastAPI's own body reading keeps the raw bytes and the parsed JSON on the `Request`, which lives
as long as its response: for a streamed answer, the whole stream, with two copies of every image
besides the model's. Here the body is read once into one buffer (sized from Content-Length, so
it is not copied as it grows), parsed straight into its model (pydantic's JSON parser, no dict
in between) and the buffer dropped; the model's strings are what the prediction sends, and
`Prediction.encoded_body` lets go of them once they are encoded. The size is bounded before a
byte of it is read (`guards.py` counts it as it arrives, up to `max_upload_bytes` on these
routes); once read, a body past `max_body_bytes` must carry uploads (`check_body_size`): the
larger limit is for files, not for anything else a body may hold.
"""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from ..errors import BadRequest, PayloadTooLarge

M = TypeVar("M", bound=BaseModel)


async def read_model(request: Request, model: type[M]) -> M:
    """The request's JSON body as `model`; a 422 like FastAPI's for a body that does not fit."""
    content_type = request.headers.get("content-type", "application/json").partition(";")[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise BadRequest(f"the body must be application/json, not {content_type[:100]}")
    buffer = await _read(request)
    request.state.body_bytes = len(buffer)  # for `check_body_size`, once the model says what it carries
    try:
        return model.model_validate_json(buffer)
    except ValidationError as exc:
        errors: list[dict[str, Any]] = [
            {**error, "loc": ("body", *error.get("loc", ()))} for error in exc.errors(include_url=False)
        ]
        raise RequestValidationError(errors) from None
    finally:
        del buffer


def check_body_size(request: Request, max_body: int, has_uploads: bool) -> None:
    """The guard lets an upload route's body up to `max_upload_bytes`: one that carries no
    upload keeps `max_body_bytes` (its size as read, else as declared)."""
    size = getattr(request.state, "body_bytes", None)
    if size is None:
        declared = request.headers.get("content-length", "")
        size = int(declared) if declared.isdigit() else 0
    if not has_uploads and size > max_body:
        raise PayloadTooLarge(f"the request body is {size} bytes, over the limit of {max_body} without uploads, "
                              "images or audio (FLOWISE_SSE_MAX_BODY_BYTES)")


async def _read(request: Request) -> bytearray:
    declared = request.headers.get("content-length", "")
    size = int(declared) if declared.isdigit() else 0
    # The guard checked a declared length against the cap: this allocation is bounded by it.
    buffer = bytearray(size)
    filled = 0
    async for chunk in request.stream():
        end = filled + len(chunk)
        if end <= size:
            buffer[filled:end] = chunk
        else:
            del buffer[filled:]
            buffer += chunk
        filled = end
    if filled < len(buffer):
        del buffer[filled:]
    return buffer
