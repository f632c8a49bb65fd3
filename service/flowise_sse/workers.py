"""`serve --workers N`: N gateway processes on one listening socket, and the process that minds them.

The parent binds the socket once, then starts N workers; each runs `server.gateway_server` (the
gateway's own uvicorn `Server` subclass and HTTP protocol) on that socket, and the kernel hands
each new connection to one of them. uvicorn's own supervisor (`Multiprocess`) was not used: it
rebuilds the app from an import string in each child, so it would drop the gateway's `Server`
subclass (its drain on SIGTERM), its protocol and the settings the parent resolved (the demo's
URL, the shared token secret); it also has no parent-death check and restarts without a bound.

Workers are started with `multiprocessing`'s spawn (a fresh interpreter: no state of the parent's
loop, threads or emulator is copied; the socket goes over as a passed file descriptor). Each is a
replica of its own to Redis (its own heartbeat, its own streams), so above one worker Redis is
required: a stream started on one worker is resumed, read and deleted from any other exactly as
across replicas (`streams/redis_mirror.py`).

The parent:
- takes SIGTERM and SIGINT alone (workers leave the terminal's process group) and sends each
  worker one SIGTERM: each drains as a single process does (`GatewayServer.handle_exit`); the
  parent waits for all of them for `shutdown_grace` + `STOP_MARGIN`, kills what is left, and
  exits 0 when every worker ended by itself. A second SIGINT is passed on (uvicorn's forced exit).
- restarts a worker that dies on its own, once a second at most per worker; more than
  `MAX_RESTARTS` deaths within `RESTART_WINDOW` seconds mean something is wrong beyond one
  worker: the parent then stops the others and exits 1. A worker that dies before it served at
  start-up fails the start at once.
- keeps the workers' metrics in one directory (prometheus-client's multiprocess mode, see
  `metrics.py`): a scrape answered by any worker sums them all.
- is watched by its workers: on Linux the kernel sends a worker SIGTERM when the parent dies
  (`PR_SET_PDEATHSIG`), elsewhere (and to close the race at start) a worker polls its parent's
  pid; either way an orphan drains and exits, it never serves on alone.
"""

from __future__ import annotations

import asyncio
import ctypes
import glob
import logging
import multiprocessing
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from prometheus_client.multiprocess import mark_process_dead
from pydantic import SecretStr

from . import metrics
from .logging_setup import configure
from .server import demo_flowise, gateway_server, show_banner, startup_problem
from .settings import Settings

log = logging.getLogger("flowise_sse")

# Past shutdown_grace: uvicorn's own 5 s to close connections (gateway_config), and start-up slack.
STOP_MARGIN = 10.0
READY_TIMEOUT = 60.0  # a worker's start-up: imports, the app, the Redis connection
MAX_RESTARTS = 5
RESTART_WINDOW = 60.0
PARENT_POLL = 0.5  # seconds between a worker's checks that its parent still runs
_PR_SET_PDEATHSIG = 1


def redis_required(settings: Settings, workers: int) -> str | None:
    """Why these settings cannot run `workers` processes, or None."""
    if workers > 1 and not settings.uses_redis:
        return (f"--workers {workers} needs FLOWISE_SSE_REDIS_URL (or FLOWISE_SSE_REDIS_SENTINELS): "
                "the workers share streams through Redis "
                "(a stream started on one is resumed, read and deleted on another)")
    return None


def listen(host: str, port: int) -> socket.socket:
    """The one listening socket every worker accepts on (uvicorn's own binding, minus its log line)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)  # uvicorn's default backlog
    except BaseException:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


# --- a worker --------------------------------------------------------------------------------------
def _worker_main(number: int, settings: Settings, sock: socket.socket, log_level: str, ready: Connection,
                 parent: int) -> None:
    """A worker process's entry point (spawned: it starts from a fresh interpreter)."""
    stop_asked: list[int] = []
    # Until uvicorn takes over the signals (and after it gives them back: it raises the handled
    # signal again on its way out), a SIGTERM is noted, never the default death.
    signal.signal(signal.SIGTERM, lambda sig, frame: stop_asked.append(sig))
    signal.signal(signal.SIGINT, lambda sig, frame: stop_asked.append(sig))
    os.setpgrp()  # the terminal's Ctrl-C goes to the parent alone, which tells each worker once
    _die_with(parent)
    if os.getppid() != parent:  # the parent died before the line above
        return
    configure(settings.log_format, log_level, worker=number)
    metrics.set_worker(number)
    server = gateway_server(settings, log_level)
    # uvicorn's own loop choice (uvloop where installed), as `cli._run` makes for one process.
    with asyncio.Runner(loop_factory=server.config.get_loop_factory()) as runner:
        runner.run(_serve_worker(server, sock, ready, parent, stop_asked))


def _die_with(parent: int) -> None:
    """On Linux, have the kernel send SIGTERM to this process when its parent dies."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # no prctl: the pid poll below still catches it
        pass


async def _serve_worker(server: Any, sock: socket.socket, ready: Connection, parent: int,
                        stop_asked: list[int]) -> None:
    if stop_asked:  # the parent stopped while this worker was starting: start, then drain at once
        server.should_exit = True
    watch = asyncio.create_task(_watch(server, ready, parent, stop_asked))
    try:
        await server.serve(sockets=[sock])
    finally:
        watch.cancel()
        ready.close()
        sock.close()


async def _watch(server: Any, ready: Connection, parent: int, stop_asked: list[int]) -> None:
    while not server.started:
        await asyncio.sleep(0.02)
    # The parent shows the banner once every worker serves, "ready" only if Flowise answered.
    ready.send((os.getpid(), await startup_problem(server)))
    if stop_asked:  # a SIGTERM between the check before `serve` and uvicorn taking the signals
        server.handle_exit(signal.SIGTERM, None)
    while True:
        await asyncio.sleep(PARENT_POLL)
        metrics.publish_store()
        if os.getppid() != parent:
            log.error("the supervising process %d is gone: this worker drains and exits", parent)
            server.handle_exit(signal.SIGTERM, None)
            return


# --- the parent ------------------------------------------------------------------------------------
@dataclass
class _Worker:
    number: int
    process: Any  # multiprocessing's SpawnProcess
    ready: Connection
    started_at: float = field(default_factory=time.monotonic)
    serving: bool = False
    problem: str | None = None  # why Flowise was not usable when it started serving


class Supervisor:
    def __init__(self, settings: Settings, sock: socket.socket, count: int, log_level: str) -> None:
        self.settings = settings
        self.sock = sock
        self.count = count
        self.log_level = log_level
        self.context = multiprocessing.get_context("spawn")
        self.workers: dict[int, _Worker] = {}
        self.deaths: list[float] = []
        # Set by `stop`, from a signal handler while `run` awaits: an Event, so that each check reads
        # it anew (mypy carries a plain bool's narrowed value across an await).
        self.stopping = asyncio.Event()
        self.failed = False
        self.changed = asyncio.Event()
        self.loop = asyncio.get_running_loop()

    def start(self, number: int) -> None:
        ours, theirs = self.context.Pipe(duplex=False)
        process = self.context.Process(
            target=_worker_main, name=f"flowise-sse worker {number}",
            args=(number, self.settings, self.sock, self.log_level, theirs, os.getpid()),
        )
        process.start()
        theirs.close()
        worker = self.workers[number] = _Worker(number, process, ours)
        self.loop.add_reader(process.sentinel, self._exited, worker)
        self.loop.add_reader(ours.fileno(), self._ready, worker)

    def _ready(self, worker: _Worker) -> None:
        self.loop.remove_reader(worker.ready.fileno())
        try:
            _, worker.problem = worker.ready.recv()
            worker.serving = True
        except (EOFError, OSError):
            pass  # it died before it served: its sentinel says so
        self.changed.set()

    def _exited(self, worker: _Worker) -> None:
        self.loop.remove_reader(worker.process.sentinel)
        if worker.ready.fileno() >= 0 and not worker.serving:
            self.loop.remove_reader(worker.ready.fileno())
        worker.process.join()
        mark_process_dead(worker.process.pid)  # its live gauges leave the sums; its counters stay
        self.changed.set()

    def alive(self) -> list[_Worker]:
        return [w for w in self.workers.values() if w.process.exitcode is None]

    def signal_all(self, sig: int) -> None:
        for worker in self.alive():
            with suppress(ProcessLookupError):
                os.kill(worker.process.pid, sig)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """The first signal drains every worker; a second SIGINT is passed on (forced exit)."""
        if self.stopping.is_set():
            if sig == signal.SIGINT:
                self.signal_all(signal.SIGINT)
            return
        self.stopping.set()
        log.info("stopping: %d workers drain (up to FLOWISE_SSE_SHUTDOWN_GRACE, %gs)", len(self.alive()),
                 self.settings.shutdown_grace)
        self.signal_all(signal.SIGTERM)
        # Each worker closes its copy of the socket as its drain begins; with the parent's closed
        # too, a client that reconnects is refused at once (and goes elsewhere) rather than left
        # in a backlog nobody accepts from.
        self.sock.close()
        self.changed.set()

    async def run(self) -> int:
        for number in range(1, self.count + 1):
            self.start(number)
        if not await self._all_serving():
            self.failed = True
            self.stop()
            return await self._drain()
        while not self.stopping.is_set():
            await self._changed()
            if self.stopping.is_set():
                break
            for worker in list(self.workers.values()):
                if worker.process.exitcode is not None:
                    await self._replace(worker)
                    if self.stopping.is_set():
                        break
        return await self._drain()

    async def _changed(self, timeout: float | None = None) -> None:
        with suppress(TimeoutError):
            await asyncio.wait_for(self.changed.wait(), timeout)
        self.changed.clear()

    async def _all_serving(self) -> bool:
        deadline = time.monotonic() + READY_TIMEOUT
        while not self.stopping.is_set():
            if all(w.serving for w in self.workers.values()):
                return True
            dead = [w for w in self.workers.values() if w.process.exitcode is not None]
            if dead:
                log.error("worker %d (pid %d) exited with %s while starting: the gateway does not start",
                          dead[0].number, dead[0].process.pid, _how(dead[0].process.exitcode))
                return False
            if time.monotonic() > deadline:
                log.error("the workers did not all start within %gs", READY_TIMEOUT)
                return False
            await self._changed(deadline - time.monotonic())
        return True  # stopped while starting: drain as usual

    async def _replace(self, worker: _Worker) -> None:
        now = time.monotonic()
        self.deaths = [t for t in self.deaths if now - t < RESTART_WINDOW] + [now]
        log.error("worker %d (pid %d) died unexpectedly (%s); its streams end with `upstream_unavailable` "
                  "for their readers", worker.number, worker.process.pid, _how(worker.process.exitcode))
        pid = worker.process.pid
        worker.ready.close()
        worker.process.close()
        del self.workers[worker.number]
        if len(self.deaths) > MAX_RESTARTS:
            log.error("%d worker deaths within %gs: stopping the gateway", len(self.deaths), RESTART_WINDOW)
            self.failed = True
            self.stop()
            return
        # Never in a tight loop: at most one start a second per worker.
        pause = worker.started_at + 1.0 - time.monotonic()
        if pause > 0:
            await asyncio.sleep(pause)
        if not self.stopping.is_set():
            self.start(worker.number)
            log.info("worker %d (was pid %d) restarted: pid %d", worker.number, pid,
                     self.workers[worker.number].process.pid)

    async def _drain(self) -> int:
        deadline = time.monotonic() + self.settings.shutdown_grace + STOP_MARGIN
        while self.alive() and time.monotonic() < deadline:
            await self._changed(max(0.0, deadline - time.monotonic()))
        late = self.alive()
        for worker in late:
            log.error("worker %d (pid %d) did not stop within the shutdown grace + %gs: killed", worker.number,
                      worker.process.pid, STOP_MARGIN)
            worker.process.kill()
        # Ended by the SIGTERM it was sent before it could take it (still starting): a stop too.
        failed = [w for w in self.workers.values()
                  if w not in late and w.process.exitcode not in (0, -signal.SIGTERM)]
        for worker in failed:
            log.error("worker %d (pid %d) stopped with %s", worker.number, worker.process.pid,
                      _how(worker.process.exitcode))
        for worker in self.workers.values():
            worker.process.join(5)
            if worker.ready.fileno() >= 0 and not worker.serving:
                self.loop.remove_reader(worker.ready.fileno())
            worker.ready.close()
            if worker.process.sentinel is not None:
                self.loop.remove_reader(worker.process.sentinel)
            worker.process.close()
        return 1 if self.failed or late or failed else 0


def metrics_dir(stack: AsyncExitStack) -> str:
    """The directory where every worker keeps its metric values (prometheus-client's multiprocess
    mode; set in the environment the workers inherit): PROMETHEUS_MULTIPROC_DIR when given, emptied
    of an earlier run's files, else a temporary one removed at exit."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        os.makedirs(given, exist_ok=True)
        for stale in glob.glob(os.path.join(given, "*.db")):
            os.unlink(stale)
        return given
    path = tempfile.mkdtemp(prefix="flowise-sse-metrics-")
    stack.callback(shutil.rmtree, path, True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    stack.callback(os.environ.pop, "PROMETHEUS_MULTIPROC_DIR", None)
    return path


def _how(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        return f"signal {signal.Signals(-exitcode).name}"
    return f"exit code {exitcode}"


async def supervise(settings: Settings, host: str, port: int, count: int, *, demo: bool = False,
                    log_level: str = "info", flowise_version: str = "3.1.4") -> int:
    """Run `count` workers until SIGTERM or SIGINT; the process's exit code."""
    if settings.token_secret is None:
        # Each worker would sign `eventsUrl` tokens with its own random secret, and the others
        # would refuse them: one random secret for all of them instead (still one per start).
        settings = settings.model_copy(update={"token_secret": SecretStr(secrets.token_urlsafe(32))})
    try:
        sock = listen(host, port)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", host, port, exc)
        return 1
    loop = asyncio.get_running_loop()
    async with AsyncExitStack() as stack:
        stack.callback(sock.close)
        try:
            metrics_dir(stack)
        except OSError as exc:
            log.error("cannot prepare the metrics directory (PROMETHEUS_MULTIPROC_DIR, else a temporary one): %s",
                      exc)
            return 1
        demo_line = ""
        if demo:
            # One emulated Flowise, in this process, for every worker.
            flowise_url, demo_line = await stack.enter_async_context(demo_flowise(flowise_version))
            settings = settings.model_copy(update={"flowise_url": flowise_url})
        supervisor = Supervisor(settings, sock, count, log_level)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, supervisor.stop, sig)
            stack.callback(loop.remove_signal_handler, sig)
        run = asyncio.create_task(supervisor.run())
        await _when_serving(supervisor, run)
        if not run.done():
            pids = ", ".join(str(w.process.pid) for w in supervisor.workers.values())
            problem = next((w.problem for w in supervisor.workers.values() if w.problem), None)
            show_banner(host, sock.getsockname()[1], demo_line, f" ({count} workers, pids {pids})", problem)
        return await run


async def _when_serving(supervisor: Supervisor, run: asyncio.Task[int]) -> None:
    while not run.done() and not (len(supervisor.workers) == supervisor.count
                                  and all(w.serving for w in supervisor.workers.values())):
        await asyncio.sleep(0.02)
