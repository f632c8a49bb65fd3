"""A Flowise that misbehaves on request: the fault suite's upstream.

It claims 3.1.4 (so the gateway streams over SSE) and answers each prediction by the fault named
in its question: answers that lie about their type or shape, hangs, half frames, endless frames,
huge answers, connection resets. Raw ASGI, so every byte and every pause is the test's choice.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

CHATFLOW = "3c9866f3-f7de-4cf0-bcca-26807ac532c4"


def _deep(levels: int) -> bytes:
    # Written by hand: orjson refuses to encode past 255 levels (and so the gateway cannot).
    return b'{"d":' * levels + b'"bottom"' + b"}" * levels


class FaultyFlowise:
    def __init__(self) -> None:
        self.open_predictions = 0  # requests the gateway has not closed yet
        self.predictions = 0
        self.listing: Any = [{"id": CHATFLOW, "name": "faulty"}]

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/api/v1/version":
            return await _json(send, {"version": "3.1.4"})
        if path == "/api/v1/ping":
            return await _plain(send, b"pong", b"text/plain")
        if path.startswith("/api/v1/chatflows-streaming/"):
            return await _json(send, {"isStreaming": True})
        if path == "/api/v1/chatflows":
            return await _json(send, self.listing)
        if path.startswith("/api/v1/chatmessage/abort/"):
            return await _json(send, {"status": 200})
        if path.startswith("/api/v1/prediction/"):
            body = b""
            while True:
                message = await receive()
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
            request = orjson.loads(body)
            self.predictions += 1
            self.open_predictions += 1
            try:
                await self._predict(request, receive, send)
            finally:
                self.open_predictions -= 1
            return
        await _plain(send, b"not found", b"text/plain", 404)

    async def _predict(self, request: dict, receive: Any, send: Any) -> None:
        fault = request["question"]
        streaming = bool(request.get("streaming"))
        if fault == "ok":
            if streaming:
                await _start(send, b"text/event-stream")
                await _chunk(send, b'message:\ndata:{"event":"token","data":"fine"}\n\n')
                await _chunk(send, b'message:\ndata:{"event":"end","data":"[DONE]"}\n\n', more=False)
            else:
                await _json(send, {"text": "fine"})
            return
        if fault == "json-not-json":
            return await _plain(send, b"{this is not json", b"application/json")
        if fault == "html":
            return await _plain(send, b"<html><body>Login</body></html>", b"text/html")
        if fault == "numeric-event":
            await _start(send, b"text/event-stream")
            await _chunk(send, b'message:\ndata:{"event":7,"data":"x"}\n\n')
            return await _hold(receive)
        if fault == "deep-data":
            frame = b'{"event":"sourceDocuments","data":' + _deep(300) + b"}"
            if not streaming:
                return await _plain(send, b'{"text":"t","json":' + _deep(300) + b"}", b"application/json")
            await _start(send, b"text/event-stream")
            await _chunk(send, b"message:\ndata:" + frame + b"\n\n")
            return await _hold(receive)
        if fault == "endless-frame":  # one frame that never ends, 64 KB at a time
            await _start(send, b"text/event-stream")
            await _chunk(send, b'message:\ndata:{"event":"token","data":"')
            await _until_gone(receive, send, b"x" * 65536)
            return
        if fault == "huge-answer":  # a JSON answer far over any sane size, sent as it is made
            await _start(send, b"application/json")
            await _chunk(send, b'{"text":"')
            await _until_gone(receive, send, b"y" * 65536)
            return
        if fault == "hang":  # not even the response headers
            return await _hold(receive)
        if fault == "stall":  # the event stream opens, then nothing comes
            await _start(send, b"text/event-stream")
            await _chunk(send, b"")
            return await _hold(receive)
        if fault == "half-frame":  # half a frame, then the connection ends cleanly
            await _start(send, b"text/event-stream")
            await _chunk(send, b'message:\ndata:{"event":"token","data":"fine"}\n\n')
            await _chunk(send, b'message:\ndata:{"event":"tok', more=False)
            return
        if fault == "reset":  # a token, then the server dies mid-answer
            await _start(send, b"text/event-stream")
            await _chunk(send, b'message:\ndata:{"event":"token","data":"fine"}\n\n')
            raise RuntimeError("the faulty Flowise resets the connection")
        raise AssertionError(f"unknown fault {fault!r}")


async def _until_gone(receive: Any, send: Any, piece: bytes) -> None:
    """Send `piece` after `piece` until the gateway hangs up (uvicorn's send does not say)."""
    gone = asyncio.ensure_future(_hold(receive))
    try:
        while not gone.done():
            await _chunk(send, piece)
            await asyncio.sleep(0.001)
    finally:
        gone.cancel()


async def _hold(receive: Any) -> None:
    """Answer nothing more until the gateway hangs up."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def _start(send: Any, content_type: bytes, status: int = 200) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", content_type)]})


async def _chunk(send: Any, body: bytes, more: bool = True) -> None:
    await send({"type": "http.response.body", "body": body, "more_body": more})


async def _plain(send: Any, body: bytes, content_type: bytes, status: int = 200) -> None:
    await _start(send, content_type, status)
    await _chunk(send, body, more=False)


async def _json(send: Any, value: Any) -> None:
    await _plain(send, orjson.dumps(value), b"application/json")
