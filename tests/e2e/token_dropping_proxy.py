"""A reverse proxy in front of a real Flowise that drops every `token` event from its SSE streams.

It puts a real Flowise (>= 2.1, SSE) into the state of Flowise's no-token bug (#4926, #5253,
#5193, #5592): the stream carries `metadata` and `end` but no tokens, while the answer is stored
in Flowise's database as usual. Everything else (other routes, other events, headers, status)
passes through unchanged. Runs in-process on 127.0.0.1, like the mock LLM.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from ..servers import ServerThread

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "content-encoding"}


def _is_token_frame(frame: bytes) -> bool:
    # Flowise writes `message:\ndata:{"event":"token","data":...}` (no space after the colon).
    return b'data:{"event":"token"' in frame


class TokenDroppingProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.dropped = 0
        self.port = 0
        self._client = httpx.AsyncClient(base_url=self.upstream, timeout=httpx.Timeout(120, connect=5))
        self._server: ServerThread | None = None
        self.app = Starlette(routes=[Route("/{path:path}", self._forward,
                                           methods=["GET", "POST", "PUT", "DELETE", "PATCH"])])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _forward(self, request: Request) -> Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        upstream = await self._client.send(
            self._client.build_request(request.method, request.url.path, params=request.query_params,
                                       headers=headers, content=await request.body()),
            stream=True,
        )
        response_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP}
        body = (self._without_tokens(upstream.aiter_raw())
                if upstream.headers.get("content-type", "").startswith("text/event-stream") else upstream.aiter_raw())
        return StreamingResponse(body, status_code=upstream.status_code, headers=response_headers,
                                 background=BackgroundTask(upstream.aclose))

    async def _without_tokens(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        buffer = b""
        async for chunk in chunks:
            buffer += chunk
            *frames, buffer = buffer.split(b"\n\n")
            kept = []
            for frame in frames:
                if _is_token_frame(frame):
                    self.dropped += 1
                else:
                    kept.append(frame + b"\n\n")
            if kept:
                yield b"".join(kept)
        if buffer:
            yield buffer

    def start(self) -> TokenDroppingProxy:
        self._server = ServerThread(self.app, lifespan="off").__enter__()
        self.port = self._server.port
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.__exit__()
