"""Session fixtures for the real-Flowise e2e tests: the mock LLM, Flowise 1.6.2 and 3.1.4 set up
with chatflows and keys, and gateways started as subprocesses in front of them.

Everything listens on 127.0.0.1 and lives in pytest's tmp folders; every process started here is
stopped at teardown, and dies with pytest if pytest itself is killed (see flowise_harness.spawn).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from ..helpers import free_port
from .flowise_harness import (
    FlowiseDeployment,
    Gateway,
    GatewayFactory,
    Major,
    ensure_installed,
    spawn,
    start_v1,
    start_v3,
    stop,
    wait_until,
)
from .mock_llm import MockLLM

REPO_ROOT = Path(__file__).resolve().parents[2]

# Reported at the end of the run (pytest_terminal_summary below).
_timings: dict[str, float] = {}


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _timings:
        terminalreporter.section("e2e timings")
        for name, seconds in _timings.items():
            terminalreporter.write_line(f"{name:<40} {seconds:7.1f} s")


def pytest_collection_finish(session: pytest.Session) -> None:
    """Install Flowise (first run only) before any e2e test starts.

    Not a fixture: a cold install takes minutes, and pytest-timeout's per-test limit also covers
    fixture set-up. The installer's progress is shown live rather than captured.
    """
    if session.config.option.collectonly or not any(item.get_closest_marker("e2e") for item in session.items):
        return
    capture = session.config.pluginmanager.getplugin("capturemanager")
    started = time.monotonic()
    with capture.global_and_fixture_disabled():
        ensure_installed()
    _timings["install_flowise.sh"] = time.monotonic() - started


@pytest.fixture(scope="session")
def mock_llm() -> Iterator[MockLLM]:
    llm = MockLLM().start()
    yield llm
    llm.stop()


def _deploy(major: Major, starter: Callable[[Path, str], FlowiseDeployment], mock_llm: MockLLM,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlowiseDeployment]:
    started = time.monotonic()
    deployment = starter(tmp_path_factory.mktemp(f"flowise-{major}"), mock_llm.base_url)
    try:
        _timings[f"flowise {deployment.version}: start until HTTP"] = deployment.start_seconds
        # The first prediction pays for parsing the tokenizer ranks (about 1.5 s on 3.x): pay it here.
        warm = deployment.predict(deployment.chatflows.open, "warm up")
        assert warm.status_code == 200, warm.text
        _timings[f"flowise {deployment.version}: ready incl. setup"] = time.monotonic() - started
        yield deployment
    finally:
        deployment.close()


@pytest.fixture(scope="session")
def flowise_v1(mock_llm: MockLLM,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlowiseDeployment]:
    """Flowise 1.6.2 (socket.io streaming), basic auth on, an API key from its api.json store."""
    yield from _deploy("v1", start_v1, mock_llm, tmp_path_factory)


@pytest.fixture(scope="session")
def flowise_v3(mock_llm: MockLLM,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlowiseDeployment]:
    """Flowise 3.1.4 (SSE streaming) on Node 24, with a user account and a workspace API key."""
    yield from _deploy("v3", start_v3, mock_llm, tmp_path_factory)


@pytest.fixture(scope="session", params=["v1", "v3"])
def real_flowise(request: pytest.FixtureRequest) -> FlowiseDeployment:
    """Each test that uses this runs against both versions (a server starts on first use)."""
    deployment: FlowiseDeployment = request.getfixturevalue(f"flowise_{request.param}")
    return deployment


@pytest.fixture(scope="session")
def gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayFactory]:
    """`gateways(flowise, api_key=True, basic_auth=True, on_disconnect=None)` -> a running gateway.

    api_key: FLOWISE_API_KEY (the key the keyed chatflow is bound to; on 3.x also the key for the
    management routes). basic_auth: FLOWISE_USERNAME/PASSWORD, 1.x only (3.x has none).
    on_disconnect: FLOWISE_SSE_ON_CLIENT_DISCONNECT. Gateways are shared per configuration.
    """
    running: dict[tuple[str, bool, bool, str | None], Gateway] = {}

    def start(flowise: FlowiseDeployment, *, api_key: bool = True, basic_auth: bool = True,
              on_disconnect: str | None = None) -> Gateway:
        key = (flowise.url, api_key, basic_auth, on_disconnect)
        if key in running:
            return running[key]
        port = free_port()
        # The gateway reads its settings from the environment: start from a clean slate so a
        # developer's own FLOWISE_* variables cannot leak into the test.
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWISE")}
        env |= {"FLOWISE_URL": flowise.url, "FLOWISE_TRANSPORT": "auto", "PYTHONUNBUFFERED": "1"}
        if api_key:
            env["FLOWISE_API_KEY"] = flowise.api_key
        if basic_auth and flowise.basic_auth:
            env["FLOWISE_USERNAME"], env["FLOWISE_PASSWORD"] = flowise.basic_auth
        if on_disconnect:
            env["FLOWISE_SSE_ON_CLIENT_DISCONNECT"] = on_disconnect
        log_path = tmp_path_factory.mktemp("gateway") / "gateway.log"
        process = spawn([sys.executable, "-m", "flowise_sse", "serve", "--host", "127.0.0.1", "--port", str(port)],
                        env=env, cwd=REPO_ROOT, log_path=log_path)
        gateway = Gateway(url=f"http://127.0.0.1:{port}", process=process, log_path=log_path)
        running[key] = gateway
        wait_until(lambda: httpx.get(f"{gateway.url}/healthz", timeout=2).status_code == 200, timeout=30,
                   what="gateway", process=process, log_path=log_path)
        return gateway

    yield start
    for gateway in running.values():
        stop(gateway.process)
