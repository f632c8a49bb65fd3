"""A refusal sent before the request was read whole reaches the client, every time.

The gateway answers an oversized body (413) or oversized headers (431) while the client is still
sending. Closing the socket then would make the kernel answer the unread bytes with a reset, which
can destroy the answer before the client reads it (before the lingering close, 14 of 40 chunked
posts from httpx and 40 of 40 from a raw socket got "connection reset"). Each case here runs 100
times on a real gateway on loopback, and must get its JSON answer 100 times.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections import Counter

import httpx
import pytest

from .helpers import free_port, read_until_closed

STREAM = "/v1/chatflows/3c9866f3-f7de-4cf0-bcca-26807ac532c4/stream"
TRIES = 100
BODY = b'{"question": "' + b"q" * 200_000 + b'"}'  # over the 64 KiB cap below, in 8 KiB pieces
HEAD = b"POST " + STREAM.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"


@pytest.fixture
def gateway(gateways):
    # The refusals come before any upstream call: no Flowise is needed behind it. The stream route
    # takes uploads: its cap is max_upload_bytes.
    return gateways(f"http://127.0.0.1:{free_port()}", max_body_bytes=64 * 1024, max_upload_bytes=64 * 1024,
                    max_header_bytes=16 * 1024)


def pieces(data: bytes, size: int = 8192) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


async def httpx_outcome(client: httpx.AsyncClient, chunked: bool, headers: dict[str, str] | None = None) -> str:
    async def chunks():
        for piece in pieces(BODY):
            yield piece

    try:
        r = await client.post(STREAM, content=chunks() if chunked else BODY,
                              headers={"content-type": "application/json", **(headers or {})})
    except httpx.HTTPError as exc:
        return type(exc).__name__
    return f"{r.status_code} {r.json()['error']['code']}"


def raw_outcome(port: int, head: bytes, body: list[bytes]) -> str:
    """Sends the whole request without reading, as a client that keeps sending does, then reads."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(head)
            for piece in body:
                sock.sendall(piece)
        except OSError as exc:
            return type(exc).__name__
        answer = read_until_closed(sock, 10)
    if not answer:
        return "nothing (reset or closed)"
    status = answer.split(b"\r\n", 1)[0].decode()
    code = answer.rpartition(b'"code":"')[2].partition(b'"')[0].decode()
    return f"{status} {code}"


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content-length"])
async def test_oversizedBody_fromHttpx_then413JsonEveryTime(gateway, chunked):
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        outcomes = Counter([await httpx_outcome(client, chunked) for _ in range(TRIES)])
    assert outcomes == {"413 payload_too_large": TRIES}


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content-length"])
async def test_oversizedBody_fromARawSocketThatKeepsSending_then413JsonEveryTime(gateway, chunked):
    if chunked:
        head = HEAD + b"Transfer-Encoding: chunked\r\n\r\n"
        body = [b"%x\r\n%s\r\n" % (len(p), p) for p in pieces(BODY)] + [b"0\r\n\r\n"]
    else:
        head, body = HEAD + b"Content-Length: %d\r\n\r\n" % len(BODY), pieces(BODY)
    outcomes = Counter([await asyncio.to_thread(raw_outcome, gateway.port, head, body) for _ in range(TRIES)])
    assert outcomes == {"HTTP/1.1 413 Request Entity Too Large payload_too_large": TRIES}


async def test_oversizedHeaders_fromHttpx_then431JsonEveryTime(gateway):
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        outcomes = Counter([await httpx_outcome(client, False, {"x-big": "a" * 40_000}) for _ in range(TRIES)])
    assert outcomes == {"431 headers_too_large": TRIES}


async def test_oversizedHeaders_fromARawSocketThatKeepsSending_then431JsonEveryTime(gateway):
    head = HEAD + b"X-Big: " + b"a" * 40_000 + b"\r\nContent-Length: %d\r\n\r\n" % len(BODY)
    outcomes = Counter([await asyncio.to_thread(raw_outcome, gateway.port, head, pieces(BODY))
                        for _ in range(TRIES)])
    assert outcomes == {"HTTP/1.1 431 Request Header Fields Too Large headers_too_large": TRIES}


def test_refusedClient_whenItTricklesForever_thenItGetsTheAnswerAndIsClosedAtTheLingerTimeout(gateways):
    # The stream route takes uploads: its cap is max_upload_bytes (as in the fixture above).
    gateway = gateways(f"http://127.0.0.1:{free_port()}", max_body_bytes=1024, max_upload_bytes=1024,
                       linger_timeout=1.0)
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(HEAD + b"Content-Length: 100000\r\n\r\n")
        sock.settimeout(5)
        answer = b""
        while not answer.endswith(b"}}"):
            answer += sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 413")
        assert sock.recv(65536) == b""  # the answer's end: the write side is shut
        started = time.monotonic()
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            while time.monotonic() - started < 5:  # a trickle the gateway drops, until it closes
                sock.sendall(b"x" * 100)
                time.sleep(0.05)
    assert 0.5 < time.monotonic() - started < 3


def test_refusedClient_whenItSendsPastMaxLingerBytes_thenClosedWithoutWaitingForTheTimeout(gateways):
    gateway = gateways(f"http://127.0.0.1:{free_port()}", max_body_bytes=1024, max_upload_bytes=1024,
                       linger_timeout=60, max_linger_bytes=1024 * 1024)
    sent = 0
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(HEAD + b"Content-Length: 1000000000\r\n\r\n")
        started = time.monotonic()
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            while sent < 64 * 1024 * 1024:
                sock.sendall(b"x" * 65536)
                sent += 65536
    assert sent < 8 * 1024 * 1024 and time.monotonic() - started < 5


def test_bodyTimeout_whenTheBodyTrickles_then408ThenClosedAtTheLingerTimeout(gateways):
    gateway = gateways(f"http://127.0.0.1:{free_port()}", body_timeout=0.5, linger_timeout=0.5)
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(HEAD + b"Content-Length: 100000\r\n\r\n{")
        started = time.monotonic()
        answer = b""
        try:
            while time.monotonic() - started < 5 and b"}}" not in answer:
                sock.sendall(b" ")
                sock.settimeout(0.05)
                with contextlib.suppress(TimeoutError):
                    answer += sock.recv(65536)
            while time.monotonic() - started < 5:
                sock.sendall(b" ")
                time.sleep(0.05)
        except (BrokenPipeError, ConnectionResetError):
            pass
    assert answer.startswith(b"HTTP/1.1 408") and b'"request_timeout"' in answer
    assert time.monotonic() - started < 3


async def test_getStream_whenItsHistoryOutgrowsAUrl_then431JsonPointingToThePostRoute(gateway):
    history = [{"role": "user", "content": "x" * 400}] * 50  # a long chat, as a page would resend it
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        r = await client.get(STREAM, params={"question": "next", "history": json.dumps(history)})
    assert r.status_code == 431 and r.json()["error"]["code"] == "headers_too_large"
    assert "POST /v1/streams" in r.json()["error"]["message"] and "chatId" in r.json()["error"]["message"]
