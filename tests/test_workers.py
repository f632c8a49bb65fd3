"""`serve --workers N`: real worker processes on one socket, a real redis-server, real clients.

Which worker served a request is read from the gateway's own JSON log lines: under `--workers`
each line carries the worker's `pid`, and the access line the request's `X-Request-ID`. To send a
request to a chosen worker the other is paused (SIGSTOP): a stopped process does not accept, so
the kernel hands the connection to the one that runs.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress

import httpx
import pytest

from flowise_sse.emulator import DEMO_CHATFLOW_ID

from .helpers import REPLY, wait_until
from .servers import GatewayProcess, Sse, joined
from .test_redis import read, redis_url, slow  # noqa: F401  (redis_url: the module's redis-server fixture)

pytestmark = pytest.mark.redis
QUESTION = "one two three four five six seven eight nine ten"


def children(pid: int) -> set[int]:
    """The live processes whose parent is `pid` (from /proc: no help from the gateway)."""
    found = set()
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry.name))
    return found


def is_worker(pid: int) -> bool:
    try:
        return b"spawn_main" in pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def alive(pid: int) -> bool:
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class Workers(GatewayProcess):
    """`serve --workers 2` with JSON logs in a file; ready once the parent's banner is logged."""

    def __init__(self, env: dict[str, str], log: pathlib.Path, count: int = 2) -> None:
        super().__init__({"FLOWISE_SSE_LOG_FORMAT": "json", **env}, log_level="info", stderr=log,
                         args=("--workers", str(count)))
        self.log = log
        self.count = count

    def __enter__(self) -> Workers:
        super().__enter__()
        wait_until(lambda: self.banner() is not None, timeout=30, what="the parent's banner")
        return self

    def lines(self) -> list[dict]:
        out = []
        for line in self.log.read_text().splitlines():
            with suppress(ValueError):
                out.append(json.loads(line))
        return out

    def banner(self) -> dict | None:
        return next((rec for rec in self.lines() if "ready on" in rec["msg"]), None)

    def workers(self) -> set[int]:
        return {pid for pid in children(self.proc.pid) if is_worker(pid)}

    def served_by(self, request_id: str) -> int:
        """The pid of the worker that answered this request (its access line)."""
        def line() -> dict | None:
            return next((rec for rec in self.lines()
                         if rec["msg"] == "request" and rec.get("request_id") == request_id), None)

        wait_until(lambda: line() is not None, what=f"the access line of {request_id}")
        return line()["pid"]  # type: ignore[index]

    def owner(self, stream_id: str) -> int:
        wait_until(lambda: any(rec.get("stream_id") == stream_id and rec["msg"] == "stream started"
                               for rec in self.lines()), what="the stream's start logged")
        return next(rec["pid"] for rec in self.lines()
                    if rec.get("stream_id") == stream_id and rec["msg"] == "stream started")

    @contextmanager
    def only(self, pid: int) -> Iterator[None]:
        """New connections go to worker `pid`: every other worker is paused meanwhile."""
        paused = self.workers() - {pid}
        for other in paused:
            os.kill(other, signal.SIGSTOP)
        try:
            yield
        finally:
            for other in paused:
                os.kill(other, signal.SIGCONT)


@pytest.fixture
def env(redis_url, emulators) -> dict[str, str]:  # noqa: F811
    flowise = emulators("3.1.4")
    flowise.app.aborts.clear()
    return {"FLOWISE_URL": flowise.url, "FLOWISE_SSE_REDIS_URL": redis_url, "FLOWISE_SSE_SHUTDOWN_GRACE": "5"}


# --- (a) the settings ---------------------------------------------------------------------------------
@pytest.mark.parametrize("how", [["--workers", "2"], []])
def test_serveTwoWorkers_withoutRedis_thenExits2AtOnceWithOneLineNamingTheSetting(how):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWISE_SSE_")}
    if not how:
        env["FLOWISE_SSE_WORKERS"] = "2"
    began = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "flowise_sse", "serve", "--port", "1", *how], env=env,
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("error: --workers 2 needs FLOWISE_SSE_REDIS_URL")
    assert time.monotonic() - began < 10


@pytest.mark.parametrize("given", [("--workers", "0"), ("--workers", "-3"), ("--workers", "two")])
def test_serve_withWorkersNotAPositiveNumber_thenExits2WithAClearError(given):
    run = subprocess.run([sys.executable, "-m", "flowise_sse", "serve", *given], capture_output=True, text=True,
                         timeout=30)
    assert run.returncode == 2 and "argument --workers" in run.stderr
    assert ("at least 1 worker" in run.stderr) or ("not a number" in run.stderr)


def test_serve_withWorkersSettingZero_thenInvalidSettingsExit2():
    run = subprocess.run([sys.executable, "-m", "flowise_sse", "serve"], capture_output=True, text=True, timeout=30,
                         env={**os.environ, "FLOWISE_SSE_WORKERS": "0"})
    assert run.returncode == 2 and "invalid settings" in run.stderr and "workers" in run.stderr


# --- (b) two workers, one socket, streams shared through Redis ----------------------------------------
def test_twoWorkers_thenOneBannerBothPidsAnswerAndEachLineSaysWhichWorker(env, tmp_path):
    with Workers(env, tmp_path / "gateway.log") as gateway:
        pids = gateway.workers()
        assert len(pids) == 2 and gateway.proc.pid not in pids
        banners = [rec for rec in gateway.lines() if "ready on" in rec["msg"]]
        assert len(banners) == 1 and "2 workers" in banners[0]["msg"] and "pid" not in banners[0]
        assert all(str(pid) in banners[0]["msg"] for pid in pids)
        answered: set[int] = set()
        for pid in pids:  # each worker in turn, the other paused
            with gateway.only(pid):
                reply = httpx.get(gateway.url + "/healthz", headers={"X-Request-ID": f"health-{pid}"}, timeout=10)
            assert reply.status_code == 200
            answered.add(gateway.served_by(f"health-{pid}"))
        assert answered == pids
        # Unpaused, the kernel spreads concurrent connections over both.
        with httpx.Client(limits=httpx.Limits(max_keepalive_connections=0)) as http:
            for i in range(200):
                http.get(gateway.url + "/healthz", headers={"X-Request-ID": f"spread-{i}"}, timeout=10)
        spread = {rec["pid"] for rec in gateway.lines() if rec.get("request_id", "").startswith("spread-")}
        assert spread <= pids


def test_twoWorkers_streamStartedOnOne_thenReadResumedAndDeletedOnTheOther(env, tmp_path, emulators):
    with Workers(env, tmp_path / "gateway.log") as gateway:
        one, two = sorted(gateway.workers())
        with gateway.only(one):
            created = httpx.post(gateway.url + "/v1/streams", headers={"X-Request-ID": "create"},
                                 json={"chatflowId": DEMO_CHATFLOW_ID, **slow(delay=0.15)}, timeout=10).json()
        stream_id = created["streamId"]
        assert gateway.owner(stream_id) == one
        events: list[Sse] = []
        http = httpx.Client(timeout=20, limits=httpx.Limits(max_keepalive_connections=0))  # a connection each

        def open_on(pid: int | None, url: str, rid: str, **headers: str) -> httpx.Response:
            """The connection is accepted (and the headers answered) by `pid`; read after."""
            request = http.build_request("GET", url, headers={"X-Request-ID": rid, **headers})
            with gateway.only(pid) if pid else _nothing():
                return http.send(request, stream=True)

        # Read on the other worker (no Last-Event-ID: from the start), two events, then cut.
        with closing(open_on(two, created["eventsUrl"], "read-two")) as r:
            read(r, events, limit=2)
        assert gateway.served_by("read-two") == two
        # Resume on the owner, then on the other again, then on whichever: no gap, no duplicate.
        for n, target in enumerate([one, two, None]):
            with closing(open_on(target, f"{gateway.url}/v1/streams/{stream_id}/events", f"resume-{n}",
                                 **{"Last-Event-ID": events[-1].id})) as r:
                read(r, events, limit=len(events) + 3 if target else None)
            if target:
                assert gateway.served_by(f"resume-{n}") == target
        http.close()
        assert [int(e.id.rsplit(":", 1)[1]) for e in events] == list(range(1, len(events) + 1))
        assert events[-1].event == "end" and joined(events) == events[-1].data["text"] == REPLY + QUESTION
        mine = [rec for rec in gateway.lines() if rec.get("stream_id") == stream_id]
        reads = {(rec["msg"], rec["source"], rec["pid"]) for rec in mine
                 if rec["msg"] in ("stream read", "stream resumed")}
        assert reads >= {
            ("stream read", "redis", two), ("stream resumed", "memory", one), ("stream resumed", "redis", two)}

        # DELETE on the worker that does not run the stream: the owner stops it (Redis pub/sub).
        with gateway.only(two):
            doomed = httpx.post(gateway.url + "/v1/streams", headers={"X-Request-ID": "create-doomed"},
                                json={"chatflowId": DEMO_CHATFLOW_ID, **slow(delay=0.3)}, timeout=10).json()
        with gateway.only(one):
            deleted = httpx.delete(f"{gateway.url}/v1/streams/{doomed['streamId']}", headers={"X-Request-ID": "del"},
                                   timeout=10)
        assert deleted.status_code == 204 and gateway.served_by("del") == one
        assert gateway.owner(doomed["streamId"]) == two
        ending: list[Sse] = []
        with httpx.stream("GET", doomed["eventsUrl"], timeout=20) as r:
            read(r, ending)
        assert ending[-1].event == "error" and ending[-1].data["code"] == "aborted"
        assert len([e for e in ending if e.event == "token"]) < len(QUESTION.split())
        flowise = emulators("3.1.4")
        wait_until(lambda: any(doomed["chatId"] in abort for abort in flowise.app.aborts),
                   what="Flowise's abort called by the owner")


def scrape(gateway: Workers, pid: int) -> dict[str, float]:
    """/metrics as answered by worker `pid`: its samples by name and labels."""
    with gateway.only(pid):
        text = httpx.get(gateway.url + "/metrics", timeout=10).text
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line and not line.startswith("#")}


def test_twoWorkers_metricsScrapedFromEitherWorker_thenEverySumOverBoth(env, tmp_path):
    with Workers(env, tmp_path / "gateway.log") as gateway:
        pids = gateway.workers()
        for pid in pids:  # one stream on each worker
            with gateway.only(pid):
                response = httpx.post(f"{gateway.url}/v1/chatflows/{DEMO_CHATFLOW_ID}/stream",
                                      headers={"X-Request-ID": f"ask-{pid}"}, json={"question": "short"}, timeout=10)
            assert "event: end" in response.text and gateway.served_by(f"ask-{pid}") == pid
        for pid in pids:
            wait_until(lambda pid=pid: scrape(gateway, pid).get("flowise_sse_store_streams") == 2.0,
                       what="both workers' stores in the sum")
            seen = scrape(gateway, pid)
            assert seen['flowise_sse_streams_started_total{transport="sse"}'] == 2.0
            assert seen['flowise_sse_streams_live{transport="sse"}'] == 0.0
            assert seen['flowise_sse_tokens_total{transport="sse"}'] == 2 * len((REPLY + "short").split(" "))
            assert seen['flowise_sse_build_info{version="0.1.0"}'] == 1.0
            assert worker_info(seen) == pids


def worker_info(samples: dict[str, float]) -> set[int]:
    """The pids `flowise_sse_worker_info` lists (each with a worker number and value 1)."""
    rows = [k for k in samples if k.startswith("flowise_sse_worker_info{")]
    assert all(samples[k] == 1.0 and 'worker="' in k for k in rows)
    return {int(k.split('pid="')[1].split('"')[0]) for k in rows}


@contextmanager
def _nothing() -> Iterator[None]:
    yield


# --- (c) SIGTERM on the parent drains every worker ----------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigtermOrSigintOnParent_withALiveStream_thenAllWorkersDrainParentExits0NoChildLeft(env, tmp_path, sig):
    with Workers(env, tmp_path / "gateway.log") as gateway:
        pids = gateway.workers()
        everyone = children(gateway.proc.pid)
        events: list[Sse] = []
        with httpx.stream("POST", f"{gateway.url}/v1/chatflows/{DEMO_CHATFLOW_ID}/stream", json=slow(delay=0.2),
                          timeout=20) as r:
            read(r, events, limit=3)
            began = time.monotonic()
            gateway.proc.send_signal(sig)
            read(r, events)  # with Redis, the draining worker lets its reader go: closed without end/error
        assert events[-1].event not in ("end", "error")

        def refused() -> bool:
            try:
                socket.create_connection(("127.0.0.1", gateway.port), timeout=1).close()
            except ConnectionRefusedError:
                return True
            return False

        # While the run goes on (its upstream has the grace), a reconnect is refused, not left hanging.
        wait_until(refused, timeout=3, what="the port closed")
        assert gateway.proc.poll() is None
        code = gateway.proc.wait(5 + 10)  # the grace and the parent's margin
        took = time.monotonic() - began
        assert code == 0, gateway.log.read_text()[-3000:]
        # The workers are gone by the parent's exit; multiprocessing's resource tracker (a child too)
        # ends on its own when it sees the parent's end of its pipe close: a moment later.
        assert not any(alive(pid) for pid in pids), "a worker outlived the parent"
        wait_until(lambda: not any(alive(pid) for pid in everyone), timeout=5, what="no child outlives the parent")
        ends = {rec["pid"] for rec in gateway.lines() if rec["msg"].startswith("Finished server process")}
        assert ends == pids
        assert took < 5 + 5
        # The stream's log in Redis is whole and ends: its run finished within the grace.
        stream_id = events[0].data["streamId"]
        import redis

        from flowise_sse.streams.redis import keys

        with redis.Redis.from_url(env["FLOWISE_SSE_REDIS_URL"]) as store:
            last = store.xrevrange(keys.events(stream_id), count=1)[0][1]
        assert last[b"f"].startswith(b"event: end")


def test_demoWithTwoWorkers_thenOneEmulatorInTheParentServesBothWorkers(redis_url, tmp_path):  # noqa: F811
    gateway = Workers({"FLOWISE_SSE_REDIS_URL": redis_url}, tmp_path / "gateway.log")
    gateway.argv.append("--demo")
    with gateway:
        assert sum("DEMO MODE" in rec["msg"] for rec in gateway.lines()) == 1
        for pid in gateway.workers():
            with gateway.only(pid):
                response = httpx.get(f"{gateway.url}/v1/chatflows/{DEMO_CHATFLOW_ID}/stream", timeout=20,
                                     params={"question": "hello"}, headers={"X-Request-ID": f"demo-{pid}"})
            assert response.status_code == 200 and "event: end" in response.text
            assert gateway.served_by(f"demo-{pid}") == pid
        # The emulator runs in the parent: no process of its own (the one other child is
        # multiprocessing's resource tracker).
        others = children(gateway.proc.pid) - gateway.workers()
        assert [b"resource_tracker" in pathlib.Path(f"/proc/{pid}/cmdline").read_bytes() for pid in others] == [True]


def test_twoWorkers_portTaken_thenParentExits1SayingSo(env, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = subprocess.run([sys.executable, "-m", "flowise_sse", "serve", "--workers", "2", "--port", str(port)],
                             env={**os.environ, **env}, capture_output=True, text=True, timeout=30)
    assert run.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in run.stderr


# --- (d) SIGKILL on the parent: the workers notice and go ---------------------------------------------
def test_sigkillOnParent_thenWorkersExitOnTheirOwnWithinBoundedTime(env, tmp_path):
    with Workers(env, tmp_path / "gateway.log") as gateway:
        everyone = children(gateway.proc.pid)
        pids = gateway.workers()
        gateway.proc.kill()
        gateway.proc.wait(5)
        wait_until(lambda: not any(alive(pid) for pid in everyone), timeout=5 + 10,
                   what="every child of the killed parent exits")
    assert any(rec["msg"] == "Shutting down" and rec["pid"] in pids for rec in gateway.lines())


# --- a worker that dies is replaced ------------------------------------------------------------------
def test_workerKilled_thenParentLogsItAndStartsANewOneOnTheSameSocket(env, tmp_path):
    with Workers(env, tmp_path / "gateway.log") as gateway:
        before = gateway.workers()
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: len(gateway.workers() - before) == 1, timeout=20, what="a new worker")
        new = (gateway.workers() - before).pop()
        died = [rec for rec in gateway.lines() if "died unexpectedly" in rec["msg"]]
        assert len(died) == 1 and str(victim) in died[0]["msg"] and "SIGKILL" in died[0]["msg"]
        wait_until(lambda: any(rec["msg"] == "Application startup complete." and rec.get("pid") == new
                               for rec in gateway.lines()), timeout=20, what="the new worker serves")
        assert gateway.workers() == before - {victim} | {new}
        assert worker_info(scrape(gateway, new)) == gateway.workers()  # the dead one left the list
        for pid in gateway.workers():
            with gateway.only(pid):
                assert httpx.get(gateway.url + "/healthz", headers={"X-Request-ID": f"after-{pid}"},
                                 timeout=10).status_code == 200
            assert gateway.served_by(f"after-{pid}") == pid


def test_workersKeepDying_thenAfterFiveRestartsAMinuteTheParentStopsEverythingAndExits1(env, tmp_path):
    with Workers(env, tmp_path / "gateway.log") as gateway:
        killed: set[int] = set()
        for _ in range(6):
            victim = min(gateway.workers() - killed)
            os.kill(victim, signal.SIGKILL)
            killed.add(victim)
            wait_until(lambda: gateway.proc.poll() is not None or len(gateway.workers() - killed) == 2, timeout=20,
                       what="a replacement, or the parent giving up")
        everyone = children(gateway.proc.pid)
        assert gateway.proc.wait(5 + 10) == 1
        wait_until(lambda: not any(alive(pid) for pid in everyone), timeout=5, what="no child outlives the parent")
        lines = [rec["msg"] for rec in gateway.lines()]
        assert sum("died unexpectedly" in m for m in lines) == 6
        assert sum(m.startswith("worker ") and "restarted" in m for m in lines) == 5
        assert any("6 worker deaths within 60s: stopping the gateway" in m for m in lines)
