from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from flowise_sse.api import create_app
from flowise_sse.emulator import EmulatorConfig, create_emulator_app
from flowise_sse.server import gateway_config
from flowise_sse.settings import Settings
from flowise_sse.streams import memory_store

from .servers import ServerThread, stop_all

SOCKETIO_VERSIONS = ["1.6.2", "2.0.7"]
SSE_VERSIONS = ["2.1.0", "3.1.4"]
VERSIONS = SOCKETIO_VERSIONS + SSE_VERSIONS
TRANSPORT = {"1.6.2": "socketio", "2.0.7": "socketio", "2.1.0": "sse", "3.1.4": "sse"}
# For what the gateway does above the transport: the newest emulated version of each. Versions
# differ in auth, error bodies, end/error framing, history replay, lookups (emulator/quirks.py);
# a test of one of those takes all four (the `version` fixture).
ONE_PER_TRANSPORT = ["2.0.7", "3.1.4"]


@pytest.fixture(scope="session")
def emulators() -> Iterator[Callable[..., ServerThread]]:
    """Emulated Flowise servers, one per distinct configuration, shared by the whole session."""
    running: dict[tuple, ServerThread] = {}

    def get(version: str = "3.1.4", **options: Any) -> ServerThread:
        key = (version, tuple(sorted(options.items())))
        if key not in running:
            app = create_emulator_app(EmulatorConfig(version=version, **options))
            running[key] = ServerThread(app, lifespan="off").__enter__()
        return running[key]

    yield get
    stop_all(running.values())


@pytest.fixture(params=VERSIONS)
def version(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def flowise(emulators: Callable[..., ServerThread], version: str) -> ServerThread:
    server = emulators(version)
    server.app.requests.clear()
    server.app.aborts.clear()
    return server


@pytest.fixture
def gateways() -> Iterator[Callable[..., ServerThread]]:
    """Start a gateway (a real uvicorn server) in front of a Flowise URL, with settings overrides."""
    started: list[ServerThread] = []

    def start(flowise_url: str, **overrides: Any) -> ServerThread:
        settings = Settings(flowise_url=flowise_url, **{"keepalive_interval": 15.0, **overrides})
        app = create_app(settings)
        # uvicorn as `flowise-sse serve` sets it up (its connection limits), on a free port.
        config = gateway_config(app, settings, host="127.0.0.1", port=0, log_level="warning")
        config.timeout_graceful_shutdown = 3
        server = ServerThread(app, config=config).__enter__()
        started.append(server)
        return server

    yield start
    stop_all(started)


@pytest.fixture
def gateway(gateways: Callable[..., ServerThread], flowise: ServerThread) -> ServerThread:
    return gateways(flowise.url)


class Clock:
    """`time.monotonic` for the memory store, moved by hand (expiry and eviction order)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(memory_store, "time", clock)
    return clock


# The longest runs first (a group, or tests of half a minute), so that under pytest-xdist no worker
# starts one of them when the others are nearly done; a module's tests stay together, in order.
LONGEST_FIRST = ["tests/e2e/", "tests/test_redis_topologies.py", "tests/test_soak.py", "tests/interop/",
                 "tests/test_api_schema.py", "tests/test_workers.py", "tests/test_deploy.py", "tests/test_cli.py"]


def _rank(item: pytest.Item) -> int:
    path = item.nodeid.split("::", 1)[0]
    return next((rank for rank, prefix in enumerate(LONGEST_FIRST) if path.startswith(prefix)), len(LONGEST_FIRST))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The e2e tests run one real Flowise at a time (a core and a gigabyte each): under
    pytest-xdist (`-n`, with `--dist loadgroup`) they all go to one worker, in their order, while
    the other tests share the rest."""
    for item in items:
        if item.get_closest_marker("e2e"):
            item.add_marker(pytest.mark.xdist_group("e2e"))
    items.sort(key=_rank)
