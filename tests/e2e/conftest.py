"""Session fixtures for the real-Flowise e2e tests: the mock LLM, the five Flowise releases
(1.6.2, 1.8.4, 2.0.7, 2.2.8, 3.1.4) set up with chatflows and keys, one at a time, and gateways
started as subprocesses in front of them.

Everything listens on 127.0.0.1 and lives in pytest's tmp folders; every process started here is
stopped at teardown, and dies with pytest if pytest itself is killed (see flowise_harness.spawn).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ..helpers import free_port
from .flowise_harness import (
    RELEASES,
    FlowiseDeployment,
    Gateway,
    GatewayFactory,
    ensure_installed,
    selected_releases,
    spawn,
    start_release,
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
        ensure_installed(selected_releases())
    _timings["install_flowise.sh"] = time.monotonic() - started


@pytest.fixture(scope="session")
def mock_llm() -> Iterator[MockLLM]:
    llm = MockLLM().start()
    yield llm
    llm.stop()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test that uses `real_flowise` runs once per release, or on those its
    `@pytest.mark.releases("1.6.2", ...)` names (a flow kind only some releases have)."""
    if "real_flowise" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("releases")
    wanted = list(marker.args) if marker else list(RELEASES)
    versions = [v for v in selected_releases() if v in wanted]
    metafunc.parametrize("real_flowise", versions, indirect=True, scope="session")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test whose releases are all left out by FLOWISE_E2E_VERSIONS is deselected, not skipped."""
    unrun = [item for item in items if "real_flowise" in getattr(item, "fixturenames", ())
             and getattr(getattr(item, "callspec", None), "params", {}).get("real_flowise") not in RELEASES]
    if unrun:
        config.hook.pytest_deselected(items=unrun)
        items[:] = [item for item in items if item not in unrun]


@pytest.fixture(scope="session")
def real_flowise(request: pytest.FixtureRequest, mock_llm: MockLLM,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlowiseDeployment]:
    """One Flowise release, started on first use and stopped before the next release starts
    (pytest groups the tests by release), so one server runs at a time."""
    release = RELEASES[request.param]
    started = time.monotonic()
    deployment = start_release(tmp_path_factory.mktemp(f"flowise-{release.version}"), mock_llm.base_url, release)
    try:
        _timings[f"flowise {deployment.version}: start until HTTP"] = deployment.start_seconds
        # The first prediction pays for parsing the tokenizer ranks (about 1.5 s on 3.x): pay it here.
        warm = deployment.predict(deployment.chatflows.open, "warm up")
        assert warm.status_code == 200, warm.text
        _timings[f"flowise {deployment.version}: ready incl. setup"] = time.monotonic() - started
        yield deployment
    finally:
        deployment.close()
        _timings[f"flowise {deployment.version}: whole session"] = time.monotonic() - started


@pytest.fixture(scope="session")
def gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayFactory]:
    """`gateways(flowise, api_key=True, basic_auth=True, on_disconnect=None, via=None)` -> a running gateway.

    api_key: FLOWISE_API_KEY (the key the keyed chatflow is bound to; on 2.x and 3.x it also opens
    the management routes). basic_auth: FLOWISE_USERNAME/PASSWORD, 1.x and 2.x (3.x has none).
    on_disconnect: FLOWISE_SSE_ON_CLIENT_DISCONNECT. via: a URL in front of Flowise (a proxy) to
    use as FLOWISE_URL. Gateways are shared per configuration.
    """
    running: dict[tuple[str, bool, bool, str | None, str | None], Gateway] = {}

    def start(flowise: FlowiseDeployment, *, api_key: bool = True, basic_auth: bool = True,
              on_disconnect: str | None = None, via: str | None = None) -> Gateway:
        key = (flowise.url, api_key, basic_auth, on_disconnect, via)
        if key in running:
            return running[key]
        # The releases run one after the other: gateways in front of a finished one go.
        for other in [k for k in running if k[0] != flowise.url]:
            stop(running.pop(other).process)
        port = free_port()
        # The gateway reads its settings from the environment: start from a clean slate so a
        # developer's own FLOWISE_* variables cannot leak into the test.
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWISE")}
        env |= {"FLOWISE_URL": via or flowise.url, "FLOWISE_TRANSPORT": "auto", "PYTHONUNBUFFERED": "1"}
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
