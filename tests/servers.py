"""Real servers for the tests: uvicorn in a thread of its own, the gateway in a process, redis-server;
all on loopback. And SSE reading."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import orjson
import redis
import uvicorn
from httpx_sse import EventSource

from .helpers import free_port, wait_until

T = TypeVar("T")


class ServerThread:
    """A uvicorn server on 127.0.0.1 (a free port), with its own event loop in its own thread."""

    def __init__(self, app: Any, *, lifespan: str = "on", config: uvicorn.Config | None = None) -> None:
        self.app = app
        config = config or uvicorn.Config(
            app, host="127.0.0.1", port=0, log_level="warning", lifespan=lifespan,
            timeout_graceful_shutdown=3,
        )
        self.server = uvicorn.Server(config)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.server.serve())
        # What the app left behind (sse-starlette's shutdown watcher, for one) ends with the loop.
        leftovers = asyncio.all_tasks(self.loop)
        for task in leftovers:
            task.cancel()
        self.loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
        self.loop.close()

    def __enter__(self) -> ServerThread:
        self.thread.start()
        wait_until(lambda: self.server.started or not self.thread.is_alive(), timeout=10, interval=0.01,
                   what="uvicorn starts")
        if not self.server.started:
            raise RuntimeError("server did not start")
        return self

    def __exit__(self, *exc: Any) -> None:
        stop_all([self])

    @property
    def port(self) -> int:
        return self.server.servers[0].sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run a coroutine on the server's loop (to look at its tasks, its state)."""
        return asyncio.run_coroutine_threadsafe(fn(), self.loop).result(10)


def stop_all(servers: Iterable[ServerThread]) -> None:
    """Stop servers together: each takes uvicorn's shutdown ticks (about 0.15 s) in its own
    thread, so asking them all first and then waiting costs one shutdown, not one each."""
    servers = list(servers)
    for server in servers:
        server.server.should_exit = True
    for server in servers:
        server.thread.join(10)


@dataclass
class Sse:
    event: str
    id: str
    data: Any


def parse_sse(response: httpx.Response) -> list[Sse]:
    # httpx-sse dispatches a data-less "event" after a comment once an id was seen: skip those.
    return [Sse(e.event, e.id, orjson.loads(e.data)) for e in EventSource(response).iter_sse() if e.data]


async def aread_sse(response: httpx.Response, limit: int | None = None) -> list[Sse]:
    events: list[Sse] = []
    async for e in EventSource(response).aiter_sse():
        if not e.data:
            continue
        events.append(Sse(e.event, e.id, orjson.loads(e.data)))
        if limit and len(events) >= limit:
            break
    return events


def joined(events: list[Sse]) -> str:
    return "".join(e.data["text"] for e in events if e.event == "token")


class GatewayProcess:
    """The gateway as users run it: `python -m flowise_sse serve` in a process of its own."""

    def __init__(self, env: dict[str, str], *, log_level: str = "warning", stderr: Any = None,
                 args: tuple[str, ...] = ()) -> None:
        """`stderr`: a path to write the process's log to (default: inherited); `args`: more of
        `serve`'s options (`--workers 2`)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **env}
        self.argv = [sys.executable, "-m", "flowise_sse", "serve", "--host", "127.0.0.1",
                     "--port", str(self.port), "--log-level", log_level, *args]
        self.stderr_path = stderr
        self._stderr: Any = None
        self.proc: Any = None

    def __enter__(self) -> GatewayProcess:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.__exit__()
            raise
        return self

    def start(self) -> None:
        if self.stderr_path is not None:
            self._stderr = open(self.stderr_path, "ab")  # noqa: SIM115  (held for the process; __exit__ closes it)
        self.proc = subprocess.Popen(self.argv, env=self.env, stderr=self._stderr)

    def wait_ready(self) -> None:
        def up_or_dead() -> bool:
            if self.proc.poll() is not None:
                return True
            try:
                return httpx.get(self.url + "/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up_or_dead, timeout=20, interval=0.05, what="the gateway process answers /healthz")
        if self.proc.poll() is not None:
            raise RuntimeError(f"the gateway process exited with {self.proc.returncode}")

    def __exit__(self, *exc: Any) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self._stderr:
            self._stderr.close()


@contextmanager
def started_together(*processes: GatewayProcess) -> Iterator[tuple[GatewayProcess, ...]]:
    """`with GatewayProcess(a) as a, GatewayProcess(b) as b`, but both start at once: each spends
    most of a second importing before it answers, and they need not take turns."""
    with ExitStack() as stack:
        for process in processes:
            stack.push(process.__exit__)
            process.start()
        for process in processes:
            process.wait_ready()
        yield processes


class RedisServer:
    """A redis-server on 127.0.0.1 (a free port), without persistence; ready once it answers PING."""

    def __init__(self) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            raise RuntimeError("redis-server is not installed (tests/setup.sh installs it)")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: Any = None

    def __enter__(self) -> RedisServer:
        self.proc = subprocess.Popen([self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no"], stdout=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=1)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return self.proc.poll() is not None  # dead: stop waiting, fail below

        try:
            wait_until(answers, timeout=10, what="redis-server answers PING")
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
        except BaseException:
            self.__exit__()
            raise
        finally:
            client.close()
        return self

    def stop(self) -> None:
        """Shut it down, as a crash or an operator would, while the test goes on."""
        self.proc.terminate()
        self.proc.wait(10)

    def __exit__(self, *exc: Any) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
