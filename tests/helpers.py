"""What the tests share besides servers (`servers.py`): the emulated LLM's reply, a free port, and
waits on conditions, so that no test stands a fixed sleep in for "until it has happened"."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any

# What the emulated Flowise's mock LLM answers: this prefix, then the question.
REPLY = "This is a deterministic mock reply. You said: "


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], Any], timeout: float = 5.0, what: str = "", interval: float = 0.02) -> float:
    """Poll `check` until it is true; the seconds that took. Past `timeout`, the test fails."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not reached within {timeout:g} s: {what or 'the condition'}")
        time.sleep(interval)
    return time.monotonic() - started


async def until(check: Callable[[], Any], timeout: float = 5.0, what: str = "", interval: float = 0.01) -> float:
    """`wait_until` for async tests: polls without blocking the event loop."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not check():
        if loop.time() - started > timeout:
            raise AssertionError(f"not reached within {timeout:g} s: {what or 'the condition'}")
        await asyncio.sleep(interval)
    return loop.time() - started


def read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    """Everything the peer sends until it closes (or resets, or `timeout` passes between reads)."""
    sock.settimeout(timeout)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            return data
        if not chunk:
            return data
        data += chunk
