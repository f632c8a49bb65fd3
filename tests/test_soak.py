"""Soak, short version (about a minute): the load of `bench/soak.py`, checked.

- memory mode: a gateway whose store holds its 10,000 finished streams keeps the throughput and
  first-token latency of a fresh one;
- Redis mode: two replica processes on a real redis-server, cross-replica resumes and a SIGTERM
  of one replica mid-run: every answer exact, no Redis key without an expiry, no chat lock left,
  RSS flat.
"""

from __future__ import annotations

import asyncio
import importlib.util
import signal
import sys
import time
from pathlib import Path

import pytest

from flowise_sse.events import END, Event

from .servers import GatewayProcess, started_together
from .test_redis import redis_url  # noqa: F401  (the fixture: a redis-server of the module's own)

pytestmark = pytest.mark.soak

_spec = importlib.util.spec_from_file_location("bench_soak", Path(__file__).parent.parent / "bench" / "soak.py")
soak = sys.modules["bench_soak"] = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(soak)  # type: ignore[union-attr]


def _fill(manager, count: int) -> None:
    """Finished streams as the gateway holds them after serving `count` answers."""
    for i in range(count):
        log = manager.store.create(f"held{i:05d}")
        log.append(Event("start", {"streamId": f"held{i:05d}"}))
        for word in ("This ", "is ", "a ", "held ", "answer"):
            log.append(Event("token", {"text": word}))
        log.append(Event(END, {"text": "This is a held answer"}), terminal=True)


async def _measure(url: str, seconds: float) -> tuple[float, float, soak.Tally]:
    tally = soak.Tally()
    started = time.monotonic()
    await soak.run_load(lambda: [url], seconds, 12, 0.0, 0.005, tally)
    elapsed = time.monotonic() - started
    ft = sorted(tally.first_token)
    return tally.completed / elapsed, ft[len(ft) // 2], tally


@pytest.mark.timeout(120)
async def test_memoryMode_storeHoldingTenThousandFinishedStreams_thenThroughputAndFirstTokenAsWhenFresh(
    emulators, gateways
):
    flowise = emulators("3.1.4")
    # A shared machine can starve the emulator: the timeouts are not what this measures.
    fresh = gateways(flowise.url, connect_timeout=30)
    full = gateways(flowise.url, max_streams=10_000, connect_timeout=30)
    await asyncio.to_thread(full.call, lambda: _async(_fill, full.app.state.services.manager, 10_000))
    assert await asyncio.to_thread(full.call, lambda: _async(len, full.app.state.services.manager.store.logs)) == 10_000

    # Alternated (ABBAAB), best of three each: the machine is shared, its load shifts between rounds.
    rounds = {"fresh": [], "full": []}
    for name in ["fresh", "full", "full", "fresh", "fresh", "full"]:
        rounds[name].append(await _measure((fresh if name == "fresh" else full).url, 4))
    for _rate, _, tally in rounds["fresh"] + rounds["full"]:
        assert tally.completed == tally.exact and not tally.failures, (tally.failures, tally.inexact)
    fresh_rate, full_rate = (max(r[0] for r in rounds[name]) for name in ("fresh", "full"))
    fresh_ft, full_ft = (min(r[1] for r in rounds[name]) for name in ("fresh", "full"))
    print(f"fresh: {fresh_rate:.1f} streams/s, first token p50 {fresh_ft * 1000:.0f} ms; "
          f"full store: {full_rate:.1f} streams/s, first token p50 {full_ft * 1000:.0f} ms")
    held = await asyncio.to_thread(full.call, lambda: _async(len, full.app.state.services.manager.store.logs))
    assert held == 10_000  # every new stream evicted the oldest finished one
    # Before: ~5 ms of copying per stream at 10,000 held, 3x the CPU of a stream, first token 4 s.
    # Old code: about a third of the fresh rate. The margins are for the noise of the suite's other
    # workers, which share the cores with these rounds (seen in fresh-clone CI runs: a rate ratio
    # of 0.66; first tokens of 75 ms full against 36 ms fresh).
    assert full_rate >= 0.5 * fresh_rate
    assert full_ft <= 2 * fresh_ft + 0.05


async def _async(fn, *args):
    return fn(*args)


@pytest.mark.redis
@pytest.mark.timeout(150)
async def test_twoReplicasOnRedis_resumesAcrossAndASigterm_thenEveryAnswerExact_everyKeyExpires_noLockLeft(
    redis_url, emulators  # noqa: F811
):
    import redis

    flowise = emulators("3.1.4")
    env = {"FLOWISE_URL": flowise.url, "FLOWISE_SSE_REDIS_URL": redis_url, "FLOWISE_SSE_TOKEN_SECRET": "soak",
           "FLOWISE_SSE_SHUTDOWN_GRACE": "10", "FLOWISE_SSE_STREAM_RETENTION": "20",
           "FLOWISE_SSE_CONNECT_TIMEOUT": "30"}  # a starved emulator is not what this checks
    seconds = 32.0
    with started_together(GatewayProcess(env), GatewayProcess(env)) as (a, b):
        replicas = [a, b]
        rss: list[float] = []

        def urls() -> list[str]:
            return [r.url for r in replicas if r.proc.poll() is None]

        async def on_tick(t: float) -> None:
            rss.append(soak.rss_kb([b.proc.pid]) / 1024)
            if t >= seconds / 2 and a.proc.poll() is None and a.proc.returncode is None and not getattr(a, "termed", 0):
                a.termed = 1  # type: ignore[attr-defined]
                a.proc.send_signal(signal.SIGTERM)

        tally = soak.Tally()
        await soak.run_load(urls, seconds, 24, 0.1, 0.02, tally, on_tick, every=5)
        print(f"completed {tally.completed}, exact {tally.exact}, resumed {tally.resumed}, "
              f"failures {dict(tally.failures)}, B's RSS {[round(x) for x in rss]} MB")
        assert getattr(a, "termed", 0) and await asyncio.to_thread(a.proc.wait, 30) in (0, -signal.SIGTERM)
        assert tally.completed > 100 and tally.resumed > 10
        assert tally.completed == tally.exact and not tally.failures, (tally.failures, tally.inexact[:5])
        # After a warm-up, B's RSS stays flat (the store turns over every 20 s).
        assert max(rss[3:]) - rss[2] < 25, rss

        client = redis.Redis.from_url(redis_url)
        deadline = time.monotonic() + 10
        while client.keys("fss:chat:*") and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        ttls = {key: client.ttl(key) for key in client.scan_iter(match="fss:*")}
        assert ttls and -1 not in ttls.values() and not [key for key in ttls if key.startswith(b"fss:chat:")]
