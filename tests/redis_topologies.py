"""Real Redis topologies on loopback, as production runs them: a Redis Cluster (3 primaries, each
with a replica) and a Sentinel group (a primary, a replica, 3 sentinels), started from Debian's
`redis-server` (Redis >= 7.0) in a temporary directory, with failover timings cut to about a
second so that a test sees one in a few seconds. `Deployment` puts each, and a standalone
redis-server, behind one face: what a gateway is given to reach it, its processes, its keys, its
primary failing; the benchmark's section 7 and soak (`bench/`) use it too.

Each waits on conditions (the cluster's state, the sentinels' view), never on fixed sleeps.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
from redis.cluster import RedisCluster as SyncRedisCluster

from flowise_sse.streams.redis import keys

from .helpers import free_port, wait_until
from .servers import RedisServer

# How long a node may be unreachable before the others call it failed: the cluster's
# `cluster-node-timeout` and the sentinels' `down-after-milliseconds`.
NODE_TIMEOUT_MS = 1000


def _binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (tests/setup.sh installs it)")
    return binary


def _answers(port: int, options: dict[str, Any]) -> bool:
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5, socket_timeout=1, **options)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def _self_signed(directory: Path) -> Path:
    """A certificate for 127.0.0.1 (what the sentinels announce) and its key, `key.pem`, in
    `directory`; the certificate is its own CA."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(directory / "key.pem"),
                    "-out", str(directory / "cert.pem")], check=True, capture_output=True)
    return directory / "cert.pem"


class _Node:
    """One redis-server process of a topology, restartable on its port."""

    def __init__(self, directory: Path, port: int, args: list[str],
                 client_options: dict[str, Any] | None = None) -> None:
        self.directory, self.port, self.args = directory, port, args
        self.client_options = client_options or {}  # what a client needs: a password, TLS
        self.proc: Any = None

    def start(self) -> _Node:
        self.proc = subprocess.Popen([_binary(), *self.args], cwd=self.directory, stdout=subprocess.DEVNULL)
        wait_until(lambda: _answers(self.port, self.client_options) or self.proc.poll() is not None, timeout=10,
                   what=f"redis-server on port {self.port} answers PING")
        if self.proc.poll() is not None:
            raise RuntimeError(f"redis-server on port {self.port} exited with {self.proc.returncode}")
        return self

    def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed, no goodbye to the others."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1, socket_timeout=5,
                           **self.client_options)


class LocalCluster:
    """`primaries` primaries with `replicas` replica each, every slot covered."""

    def __init__(self, primaries: int = 3, replicas: int = 1) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="fss-cluster-"))
        self.nodes: list[_Node] = []
        for index in range(primaries * (1 + replicas)):
            port = free_port()
            node_dir = self.directory / str(index)
            node_dir.mkdir()
            self.nodes.append(_Node(node_dir, port, [
                "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--repl-diskless-sync-delay", "0",  # a replica's first sync now, not in 5 s
                # The bus port is not the default port + 10000, which can pass 65535 on a free port.
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-port", str(free_port()),
                "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                # A replica that lost its primary takes over at once, however far behind it was:
                # the data loss a failover can bring is what the gateway must survive.
                "--cluster-replica-validity-factor", "0"]))
        self.replicas = replicas

    @property
    def url(self) -> str:
        """Any live node: the gateway discovers the others."""
        alive = next(node for node in self.nodes if node.proc is None or node.proc.poll() is None)
        return f"redis://127.0.0.1:{alive.port}/0"

    @property
    def urls(self) -> str:
        """Every node, comma-separated: what a gateway (re)started after a node died needs."""
        return ",".join(f"redis://127.0.0.1:{node.port}/0" for node in self.nodes)

    def __enter__(self) -> LocalCluster:
        try:
            for node in self.nodes:
                node.start()
            subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{n.port}" for n in self.nodes],
                            "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                           check=True, stdout=subprocess.DEVNULL, timeout=60)
            self.wait_healthy()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        for node in self.nodes:
            node.kill()
        shutil.rmtree(self.directory, ignore_errors=True)

    def client(self) -> SyncRedisCluster:
        alive = next(node for node in self.nodes if node.proc.poll() is None)
        return SyncRedisCluster(host="127.0.0.1", port=alive.port, socket_timeout=5)

    def primary_ports(self) -> set[int]:
        return {primary for _, _, primary, _ in self._view()}

    def _view(self) -> list[tuple[int, int, int, list[int]]]:
        """CLUSTER SLOTS from a live node: (first slot, last slot, primary port, replica ports)."""
        for node in self.nodes:
            if node.proc.poll() is not None:
                continue
            try:
                with node.client() as client:
                    return [(int(r[0]), int(r[1]), int(r[2][1]), [int(x[1]) for x in r[3:]])
                            for r in client.execute_command("CLUSTER", "SLOTS")]
            except redis.RedisError:
                continue
        return []

    def wait_healthy(self, timeout: float = 30) -> None:
        """Every live node says `cluster_state:ok` and every slot has a live primary."""
        def healthy() -> bool:
            alive = {node.port for node in self.nodes if node.proc.poll() is None}
            for node in self.nodes:
                if node.port not in alive:
                    continue
                try:
                    with node.client() as client:
                        if b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
                            return False
                except redis.RedisError:
                    return False
            view = self._view()
            if not (sum(last - first + 1 for first, last, _, _ in view) == 16384
                    and all(primary in alive for _, _, primary, _ in view)):
                return False
            # Replicas in sync with their primary (else a failover right after start-up would
            # lose everything, which is no test of what a lagging replica loses). Asked of each
            # replica: CLUSTER SLOTS lists them only once gossip has spread.
            return all(self._replication(node.port).get("master_link_status") == "up"
                       for node in self.nodes if node.port in alive
                       and self._replication(node.port).get("role") == "slave")
        wait_until(healthy, timeout=timeout, interval=0.1,
                   what="the cluster is ok, every slot on a live primary, replicas in sync")

    @staticmethod
    def _replication(port: int) -> dict[str, Any]:
        with redis.Redis(port=port, socket_timeout=1) as client:
            return dict(client.info("replication"))

    def followed_primaries(self) -> set[int]:
        """The ports of the primaries that a live replica follows (those a kill can fail over)."""
        return {int(self._replication(node.port)["master_port"]) for node in self.nodes
                if node.proc.poll() is None and self._replication(node.port).get("role") == "slave"}

    def primary_of(self, key: str) -> _Node:
        slot = SyncRedisCluster.keyslot(self.client(), key)  # type: ignore[arg-type]
        port = next(primary for first, last, primary, _ in self._view() if first <= slot <= last)
        return next(node for node in self.nodes if node.port == port)

    def fail_over(self, key: str) -> float:
        """Kill the primary serving `key`'s slot; returns the seconds until its replica took over
        and the cluster was whole again. The killed node stays down (its shard has no replica
        left: one failover per shard)."""
        victim = self.primary_of(key)
        started = time.monotonic()
        victim.kill()
        self.wait_healthy()
        return time.monotonic() - started


class SentinelGroup:
    """A primary, its replica and three sentinels watching them as `master`. `secured`: each
    server and sentinel has a password of its own kind and listens on TLS only (a certificate
    for 127.0.0.1 made with openssl, its own CA), replication and the sentinels' links on TLS too."""

    PASSWORD, SENTINEL_PASSWORD = "primary-secret", "sentinel-secret"

    def __init__(self, master: str = "fss-primary", secured: bool = False) -> None:
        self.master, self.secured = master, secured
        self.directory = Path(tempfile.mkdtemp(prefix="fss-sentinel-"))
        primary_port, replica_port = free_port(), free_port()
        server_options: dict[str, Any] = {}
        sentinel_options: dict[str, Any] = {}
        tls: list[tuple[str, str]] = []  # directives, as a config file's lines or as --arguments
        if secured:
            self.certificate = _self_signed(self.directory)
            tls = [("tls-cert-file", str(self.certificate)), ("tls-key-file", str(self.directory / "key.pem")),
                   ("tls-ca-cert-file", str(self.certificate)), ("tls-auth-clients", "no"), ("tls-replication", "yes")]
            server_options = {"password": self.PASSWORD, "ssl": True, "ssl_ca_certs": str(self.certificate)}
            sentinel_options = {**server_options, "password": self.SENTINEL_PASSWORD}

        def listening(port: int) -> list[str]:
            return ["--port", "0", "--tls-port", str(port)] if secured else ["--port", str(port)]

        server = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0",
                  *(word for name, value in tls for word in (f"--{name}", value)),
                  *(["--requirepass", self.PASSWORD, "--masterauth", self.PASSWORD] if secured else [])]
        (self.directory / "primary").mkdir()
        (self.directory / "replica").mkdir()
        self.servers = [
            _Node(self.directory / "primary", primary_port, [*listening(primary_port), *server], server_options),
            _Node(self.directory / "replica", replica_port,
                  [*listening(replica_port), *server, "--replicaof", "127.0.0.1", str(primary_port)], server_options),
        ]
        self.sentinels: list[_Node] = []
        for index in range(3):
            port = free_port()
            directory = self.directory / f"sentinel{index}"
            directory.mkdir()
            secrets = ("".join(f"{name} {value}\n" for name, value in tls) +
                       f"requirepass {self.SENTINEL_PASSWORD}\nsentinel sentinel-pass {self.SENTINEL_PASSWORD}\n"
                       f"sentinel auth-pass {master} {self.PASSWORD}\n") if secured else ""
            (directory / "sentinel.conf").write_text(
                (f"port 0\ntls-port {port}\n" if secured else f"port {port}\n") + "bind 127.0.0.1\n"
                f"sentinel monitor {master} 127.0.0.1 {primary_port} 2\n"
                f"sentinel down-after-milliseconds {master} {NODE_TIMEOUT_MS}\n"
                f"sentinel failover-timeout {master} 5000\n"
                f"sentinel parallel-syncs {master} 1\n" + secrets)
            self.sentinels.append(_Node(directory, port, ["sentinel.conf", "--sentinel"], sentinel_options))

    @property
    def addresses(self) -> str:
        """FLOWISE_SSE_REDIS_SENTINELS."""
        return ",".join(f"127.0.0.1:{sentinel.port}" for sentinel in self.sentinels)

    def __enter__(self) -> SentinelGroup:
        try:
            for node in (*self.servers, *self.sentinels):
                node.start()
            self.wait_healthy()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        for node in (*self.sentinels, *self.servers):
            node.kill()
        shutil.rmtree(self.directory, ignore_errors=True)

    def primary_port(self) -> int:
        """The primary as the sentinels agree on it."""
        ports = set()
        for sentinel in self.sentinels:
            with sentinel.client() as client:
                ports.add(int(client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master)[1]))
        if len(ports) != 1:
            raise AssertionError(f"the sentinels disagree on the primary: {ports}")
        return ports.pop()

    def primary(self) -> _Node:
        port = self.primary_port()
        return next(node for node in self.servers if node.port == port)

    def client(self) -> redis.Redis:
        return self.primary().client()

    def wait_healthy(self, timeout: float = 30) -> None:
        """Every sentinel names a live primary that has a connected replica."""
        def healthy() -> bool:
            try:
                primary = self.primary()
                if primary.proc.poll() is not None:
                    return False
                with primary.client() as client:
                    info = client.info("replication")
                if info.get("role") != "master" or info.get("connected_slaves", 0) < 1:
                    return False
                # The replica in sync (else a failover now would lose everything), and known to
                # every sentinel as such (they learn of replicas from the primary's INFO, every
                # 10 s: until then a failover has no replica to promote).
                if not all(info[name]["state"] == "online" for name in info if name.startswith("slave")):
                    return False
                for sentinel in self.sentinels:
                    with sentinel.client() as client:
                        replicas = client.sentinel_slaves(self.master)
                    if not any(r.get("is_slave") and not r.get("is_sdown") and not r.get("is_disconnected")
                               and r.get("master-link-status") == "ok" for r in replicas):
                        return False
                return True
            except (redis.RedisError, AssertionError, StopIteration):
                return False
        wait_until(healthy, timeout=timeout, interval=0.1, what="the sentinels agree on a primary with a replica")

    def fail_over(self) -> float:
        """Kill the primary; returns the seconds until the sentinels promoted the replica. The
        killed server is started again, empty, as a replica of the new primary (as an operator's
        restart would), so that the group can fail over again."""
        victim = self.primary()
        started = time.monotonic()
        victim.kill()

        def promoted() -> bool:
            try:
                if self.primary_port() == victim.port:
                    return False
                with self.primary().client() as client:
                    return bool(client.info("replication")["role"] == "master")
            except (redis.RedisError, AssertionError, StopIteration):
                return False
        wait_until(promoted, timeout=30, interval=0.1, what="the sentinels promote the replica")
        took = time.monotonic() - started
        new_primary = self.primary_port()
        if "--replicaof" in victim.args:
            victim.args = victim.args[:victim.args.index("--replicaof")]
        victim.args = [*victim.args, "--replicaof", "127.0.0.1", str(new_primary)]
        victim.start()
        self.wait_healthy()
        return took


class Deployment:
    """One Redis as a gateway is pointed at it, `mode` standalone, cluster or sentinel: the settings
    that reach it, its processes, the gateway's keys in it, and its primary failing."""

    MODES = ("standalone", "cluster", "sentinel")

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.handle: Any = {"standalone": RedisServer, "cluster": LocalCluster, "sentinel": SentinelGroup}[mode]()

    def __enter__(self) -> Deployment:
        self.handle.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.handle.__exit__(*exc)

    @property
    def env(self) -> dict[str, str]:
        if self.mode == "sentinel":
            return {"FLOWISE_SSE_REDIS_SENTINELS": self.handle.addresses,
                    "FLOWISE_SSE_REDIS_SENTINEL_MASTER": self.handle.master}
        if self.mode == "cluster":
            return {"FLOWISE_SSE_REDIS_URL": self.handle.urls, "FLOWISE_SSE_REDIS_CLUSTER": "true"}
        return {"FLOWISE_SSE_REDIS_URL": self.handle.url}

    def pids(self) -> list[int]:
        nodes = {"standalone": lambda h: [h], "cluster": lambda h: h.nodes,
                 "sentinel": lambda h: [*h.servers, *h.sentinels]}[self.mode](self.handle)
        return [node.proc.pid for node in nodes if node.proc.poll() is None]

    def primaries(self) -> list[redis.Redis]:
        if self.mode == "cluster":
            return [redis.Redis(port=port, socket_timeout=5) for port in self.handle.primary_ports()]
        if self.mode == "sentinel":
            return [self.handle.client()]
        return [redis.Redis.from_url(self.handle.url, socket_timeout=5)]

    def all_keys(self) -> dict[bytes, int]:
        """Every fss: key and its TTL, across every primary."""
        found: dict[bytes, int] = {}
        for client in self.primaries():
            with client:
                found.update({key: client.ttl(key) for key in client.scan_iter(match="fss:*", count=1000)})
        return found

    def used_memory_mb(self) -> float:
        total = 0.0
        for client in self.primaries():
            with client:
                total += client.info("memory")["used_memory"] / 2**20
        return total

    def fail_over(self, stream_id: str) -> float:
        """The primary fails (standalone: restarted empty, as without persistence; cluster: the one
        serving `stream_id`'s slot); the seconds until a primary serves again."""
        if isinstance(self.handle, LocalCluster):
            return self.handle.fail_over(keys.events(stream_id))
        if isinstance(self.handle, SentinelGroup):
            return self.handle.fail_over()
        started = time.monotonic()
        self.handle.stop()
        self.handle.__enter__()  # the same port
        return time.monotonic() - started
