"""The Python (and curl) SSE clients of the interoperability suite, each used the way its docs
show, each with the reconnect loop a user writes: resume with the id of the last event it got.

Line readers (aiohttp, requests.iter_lines, curl -N) have no SSE parser of their own: `LineParser`
is the one docs/user-guide/clients.md gives for them (dispatch on the blank line, take the id at
dispatch).
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httpx
import requests
import sseclient
from httpx_sse import connect_sse

DEADLINE = 40.0
ATTEMPTS = 6


@dataclass
class Result:
    status: int | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    connects: int = 0
    body: str | None = None

    def add(self, event: str, data: str, id: str | None) -> bool:
        """Record one event; True once it is the gateway's terminal event."""
        self.events.append({"event": event or "message", "data": data, "id": id})
        return event in ("end", "error") and data != ""

    @property
    def last_id(self) -> str | None:
        ids = [e["id"] for e in self.events if e["id"]]
        return ids[-1] if ids else None


def _headers(result: Result, extra: dict[str, str] | None) -> dict[str, str]:
    headers = {"Accept": "text/event-stream", **(extra or {})}
    if result.last_id:
        headers["Last-Event-ID"] = result.last_id
    return headers


class LineParser:
    """The spec's dispatch rules over lines: fields gather until a blank line dispatches them;
    comments are skipped; the id becomes the last event id only on dispatch."""

    def __init__(self, result: Result) -> None:
        self.result = result
        self.reset()

    def reset(self) -> None:
        self.event, self.data, self.id = "", [], None

    def line(self, line: str) -> bool:
        if line == "":
            done = False
            if self.data:
                done = self.result.add(self.event, "\n".join(self.data), self.id or self.result.last_id)
            self.reset()
            return done
        if line.startswith(":"):
            return False
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self.event = value
        elif name == "data":
            self.data.append(value)
        elif name == "id":
            self.id = value
        return False


def httpx_sse_client(url: str, headers: dict[str, str] | None) -> Result:
    result = Result()
    with httpx.Client(timeout=DEADLINE) as client:
        for _ in range(ATTEMPTS):
            try:
                with connect_sse(client, "GET", url, headers=_headers(result, headers)) as source:
                    result.connects += 1
                    result.status = source.response.status_code
                    if result.status != 200:
                        result.body = source.response.read().decode()
                        return result
                    for sse in source.iter_sse():
                        if result.add(sse.event, sse.data, sse.id):
                            return result
            except httpx.HTTPError as exc:
                result.error = repr(exc)
    return result


def sseclient_py_client(url: str, headers: dict[str, str] | None) -> Result:
    result = Result()
    for _ in range(ATTEMPTS):
        try:
            response = requests.get(url, stream=True, headers=_headers(result, headers), timeout=DEADLINE)
            result.connects += 1
            result.status = response.status_code
            if result.status != 200:
                result.body = response.text
                return result
            for event in sseclient.SSEClient(response).events():
                if result.add(event.event, event.data, event.id):
                    return result
        except requests.RequestException as exc:
            result.error = repr(exc)
    return result


def _requests_lines(decode_unicode: bool) -> Callable[[str, dict[str, str] | None], Result]:
    def client(url: str, headers: dict[str, str] | None) -> Result:
        result = Result()
        for _ in range(ATTEMPTS):
            parser = LineParser(result)
            try:
                with requests.get(url, stream=True, headers=_headers(result, headers), timeout=DEADLINE) as response:
                    result.connects += 1
                    result.status = response.status_code
                    if result.status != 200:
                        result.body = response.text
                        return result
                    response.encoding = "utf-8"
                    # chunk_size=None: lines as their bytes arrive. The default (512) holds
                    # back a live stream until 512 bytes have come (docs/user-guide/clients.md).
                    for line in response.iter_lines(chunk_size=None, decode_unicode=decode_unicode):
                        if parser.line(line if decode_unicode else line.decode("utf-8")):
                            return result
            except requests.RequestException as exc:
                result.error = repr(exc)
        return result
    return client


def aiohttp_client(url: str, headers: dict[str, str] | None) -> Result:
    async def run() -> Result:
        result = Result()
        # aiohttp's line reading refuses lines longer than its buffer (2 x read_bufsize, 128 KiB by
        # default: "Chunk too big"); a 200 KB token is one line.
        # docs/user-guide/clients.md: raise read_bufsize.
        async with aiohttp.ClientSession(read_bufsize=2**20, timeout=aiohttp.ClientTimeout(total=DEADLINE)) as session:
            for _ in range(ATTEMPTS):
                parser = LineParser(result)
                try:
                    async with session.get(url, headers=_headers(result, headers)) as response:
                        result.connects += 1
                        result.status = response.status
                        if response.status != 200:
                            result.body = await response.text()
                            return result
                        async for raw in response.content:
                            if parser.line(raw.decode("utf-8").rstrip("\n").removesuffix("\r")):
                                return result
                except aiohttp.ClientError as exc:
                    result.error = repr(exc)
        return result
    return asyncio.run(run())


def curl_client(url: str, headers: dict[str, str] | None) -> Result:
    result = Result()
    for _ in range(ATTEMPTS):
        argv = ["curl", "-sN", "--max-time", str(int(DEADLINE)), "-w", "\n%{http_code}", url]
        for name, value in _headers(result, headers).items():
            argv[1:1] = ["-H", f"{name}: {value}"]
        out = subprocess.run(argv, capture_output=True, timeout=DEADLINE + 5).stdout
        body, _, status = out.rpartition(b"\n")
        result.connects += 1
        result.status = int(status) if status.isdigit() else None
        if result.status != 200:
            result.body = body.decode("utf-8", "replace")
            return result
        parser = LineParser(result)
        # curl -N writes the bytes as they come; split them the way the spec does.
        lines = body.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n").split("\n")
        for line in lines[:-1]:  # the last piece has no line end: cut, not a line
            if parser.line(line):
                return result
    return result


CLIENTS: dict[str, Callable[[str, dict[str, str] | None], Result]] = {
    "httpx-sse": httpx_sse_client,
    "sseclient-py": sseclient_py_client,
    "requests-bytes": _requests_lines(False),
    "requests-unicode": _requests_lines(True),
    "aiohttp": aiohttp_client,
    "curl": curl_client,
}


def names(events: Iterable[dict[str, Any]]) -> list[str]:
    return [e["event"] for e in events]
