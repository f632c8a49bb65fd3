"""Start-up tells the truth: one line of the set-up, a warning naming the exact setting for each
thing that will not work, and "ready" only when Flowise answered."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys

import httpx
import pytest

from flowise_sse.api import create_app
from flowise_sse.api.access import Access
from flowise_sse.api.startup_report import summary
from flowise_sse.settings import Settings

from .helpers import free_port, until, wait_until
from .servers import RedisServer


async def started(settings: Settings, caplog: pytest.LogCaptureFixture) -> str:
    """The log of an app's start-up report, run to its end."""
    caplog.set_level(logging.INFO, logger="flowise_sse")
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        await until(lambda: app.state.startup.done(), timeout=20, what="the start-up report")
    return caplog.text


@pytest.mark.parametrize(("version", "flowise", "gateway", "refused", "named"), [
    # 3.x: its version route is open; only a workspace key opens the listing.
    ("3.1.4", {"api_key": "flowise-key"}, {}, "management credentials", "a Flowise API key in FLOWISE_API_KEY"),
    # 1.x: basic auth guards even the version check, so the line is not known: both are named.
    ("1.6.2", {"username": "admin", "password": "pw"}, {}, "for its version check",
     "FLOWISE_USERNAME and FLOWISE_PASSWORD (1.x and 2.x"),
    # A wrong key is said to be refused, not missing.
    ("2.1.0", {"api_key": "flowise-key"}, {"flowise_api_key": "wrong"}, "for its version check",
     "the FLOWISE_API_KEY given were refused"),
])
async def test_aFlowiseThatNeedsACredential_thenAWarningNamesTheSetting(emulators, caplog, version, flowise,
                                                                        gateway, refused, named):
    server = emulators(version, **flowise)
    log = await started(Settings(flowise_url=server.url, **gateway), caplog)
    warning = next(line for line in log.splitlines() if "refused the gateway's" in line)
    assert refused in warning and named in warning and "chatflow listing" in warning
    assert "not reachable" not in log


async def test_summaryLine_saysWhatIsSet_neverASecret(emulators, caplog):
    server = emulators("3.1.4")
    log = await started(Settings(flowise_url=server.url.replace("http://", "http://user:hunter2@"),
                                 flowise_api_key="sk-flowise-secret", api_keys=["gateway-key-secret"],
                                 redis_url=None, cors_origins=["https://app.example"]), caplog)
    line = next(line for line in log.splitlines() if "FLOWISE_API_KEY set" in line)
    assert "FLOWISE_USERNAME/PASSWORD unset" in line and "1 key(s)" in line and "https://app.example" in line
    assert "Redis off" in line and "user:***@" in line
    for secret in ("hunter2", "sk-flowise-secret", "gateway-key-secret"):
        assert secret not in log


async def test_aMisspeltSetting_thenTheReportNamesIt_butNotTheClientsOwn(emulators, caplog, monkeypatch):
    monkeypatch.setenv("FLOWISE_SSE_REDIS_SENTINEL", "127.0.0.1:26379")  # FLOWISE_SSE_REDIS_SENTINELS, misspelt
    monkeypatch.setenv("FLOWISE_SSE_GATEWAY", "http://gateway.example")  # read by the CLI's client commands
    log = await started(Settings(flowise_url=emulators("3.1.4").url), caplog)
    warning = next(line for line in log.splitlines() if "unknown settings ignored" in line)
    assert warning.endswith(": FLOWISE_SSE_REDIS_SENTINEL")


@pytest.mark.parametrize(("redis", "said"), [
    ({"redis_url": "redis://:hunter2@node1:6379/0", "redis_cluster": True}, "Redis Cluster via redis://:***@node1"),
    ({"redis_url": "redis://:hunter2@node1:6379/0, redis://:hunter2@node2:6379/0", "redis_cluster": True},
     "Redis Cluster via redis://:***@node1:6379/0, redis://:***@node2:6379/0"),
    ({"redis_url": "redis://:hunter2@ignored:6379/0", "redis_sentinels": ["s1:26379"], "redis_sentinel_master": "p",
      "redis_sentinel_tls": True}, "(primary 'p', FLOWISE_SSE_REDIS_SENTINEL_PASSWORD unset, over TLS)"),
    ({"redis_url": "redis://:hunter2@ignored:6379/0", "redis_sentinels": ["s1:26379", "s2:26379"],
      "redis_sentinel_master": "primary", "redis_sentinel_password": "sentinel-secret"},
     "Redis Sentinel s1:26379, s2:26379 (primary 'primary', FLOWISE_SSE_REDIS_SENTINEL_PASSWORD set)"),
])
def test_summaryLine_namesTheRedisMode_neverItsPasswords(redis, said):
    settings = Settings(flowise_url="http://flowise:3000", **redis)
    line = summary(settings, Access(settings))
    assert said in line and "hunter2" not in line and "sentinel-secret" not in line


@pytest.mark.parametrize(("redis", "said"), [
    ({"redis_url": "redis://a:6379,redis://b:6379"}, "only a cluster has: set FLOWISE_SSE_REDIS_CLUSTER=true"),
    ({"redis_url": "redis://a:6379", "redis_sentinel_tls": True}, "set FLOWISE_SSE_REDIS_SENTINELS too"),
])
def test_redisSettingsThatCannotWork_thenRefusedAtStartUp_namingTheFix(redis, said):
    with pytest.raises(ValueError, match=said):
        Settings(flowise_url="http://flowise:3000", **redis)


async def test_aFlowiseThatAnswersEverything_thenNoCredentialWarning(emulators, caplog):
    log = await started(Settings(flowise_url=emulators("3.1.4").url), caplog)
    assert "refused the gateway's management credentials" not in log and "not reachable" not in log


def test_serve_whenFlowiseIsNotReachable_thenNoReadyLine_butWhyStreamsWillFail(tmp_path):
    port = free_port()
    log_path = tmp_path / "serve.log"
    env = {**os.environ, "FLOWISE_URL": f"http://127.0.0.1:{free_port()}", "FLOWISE_SSE_CONNECT_TIMEOUT": "1"}
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "flowise_sse", "serve", "--port", str(port)], env=env,
                                stderr=log, stdout=log)
    try:
        wait_until(lambda: "listening on" in log_path.read_text() or " ready on " in log_path.read_text(),
                   timeout=30, what="the banner")
        text = log_path.read_text()
        assert " ready on " not in text
        assert "Flowise is not usable" in text and "connection refused" in text
    finally:
        proc.terminate()
        proc.wait(30)


async def test_readyz_whenTheConfiguredRedisIsDown_then503_andReadyOnceItIsBack(emulators, gateways):
    with RedisServer() as store:
        gateway = gateways(emulators("3.1.4").url, redis_url=store.url, redis_timeout=2)
        async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
            assert (await client.get("/readyz")).status_code == 200
            store.stop()
            down = await client.get("/readyz")
            assert down.status_code == 503 and down.json()["error"]["code"] == "store_unavailable"
            assert "Redis" in down.json()["error"]["message"]
            store.__enter__()  # the same port again
            await until_async(lambda: client.get("/readyz"), lambda r: r.status_code == 200)


async def until_async(call, check, timeout: float = 10.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check(answer := await call()):
        assert loop.time() < deadline, f"not reached: {answer.status_code} {answer.text}"
        await asyncio.sleep(0.1)
