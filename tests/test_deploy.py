"""The deployment files, checked for real where this machine allows it.

- `deploy/nginx.conf` as shipped (only the replicas' and its own addresses made loopback ones) runs
  in front of two gateway processes started with the compose file's environment, sharing a real
  redis-server: one stream is read through nginx across both replicas, unbuffered.
- `docker-compose.yml` is validated by Debian's `docker-compose config` (no Docker engine here), as
  shipped and beside an existing Flowise and Redis; its Prometheus (the container's command,
  `deploy/prometheus.yml`) scrapes two replicas for real with Debian's Prometheus.
- `deploy/kubernetes.yaml`: every field checked against the official Kubernetes client's models,
  and the probes, ports and grace period against the gateway's own settings.
- `deploy/grafana-dashboard.json`: every metric a panel queries is one the gateway exports.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import kubernetes.client
import pytest
import yaml
from httpx_sse import EventSource
from prometheus_client import REGISTRY

from flowise_sse import metrics  # noqa: F401  (registers the gateway's metrics)
from flowise_sse.emulator import DEMO_CHATFLOW_ID
from flowise_sse.settings import Settings

from .helpers import REPLY, wait_until
from .servers import GatewayProcess, RedisServer, free_port

ROOT = pathlib.Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
NGINX_CONF = (ROOT / "deploy" / "nginx.conf").read_text()
QUESTION = "alpha beta gamma delta epsilon zeta eta theta iota kappa"
UPSTREAM_ONLY = {"FLOWISE_URL", "FLOWISE_API_KEY", "FLOWISE_USERNAME", "FLOWISE_PASSWORD", "FLOWISE_TRANSPORT",
                 "FORWARDED_ALLOW_IPS"}  # the last one is uvicorn's own


def binary(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if found is None:
        pytest.fail(f"{name} is not installed (tests/setup.sh installs it)")
    return found


# --- nginx + two replicas + Redis, on loopback ------------------------------------------------------
def compose_env(flowise_url: str, redis_url: str) -> dict[str, str]:
    """The gateway's environment from docker-compose.yml, with its ${...} filled in as a user's .env
    would, and the compose network's hosts made loopback ones."""
    given = {"FLOWISE_SSE_TOKEN_SECRET": "a-long-random-shared-secret", "FLOWISE_SSE_API_KEYS": "compose-key-1"}
    env = {}
    for name, value in COMPOSE["services"]["gateway-1"]["environment"].items():
        match = re.fullmatch(r"\$\{(\w+)(?::([-?])(.*))?\}", str(value))
        default = match[3] if match and match[2] == "-" else ""
        env[name] = given.get(match[1], default) if match else str(value)
    assert env["FLOWISE_URL"] == "http://flowise:3000" and env["FLOWISE_SSE_REDIS_URL"] == "redis://redis:6379/0"
    return {**env, "FLOWISE_URL": flowise_url, "FLOWISE_SSE_REDIS_URL": redis_url}


@pytest.fixture
def redis_server():
    with RedisServer() as server:
        yield server.url


@pytest.fixture
def nginx_front(tmp_path):
    """Start nginx with the shipped config in front of the given replica ports."""
    procs = []

    def start(replica_ports: list[int]) -> str:
        port = free_port()
        conf = NGINX_CONF
        for i, replica in enumerate(replica_ports, 1):
            assert f"server gateway-{i}:8080;" in conf
            conf = conf.replace(f"server gateway-{i}:8080;", f"server 127.0.0.1:{replica};")
        assert "listen 8080;" in conf
        conf = conf.replace("listen 8080;", f"listen 127.0.0.1:{port};")
        path = tmp_path / "nginx.conf"
        path.write_text(conf)
        exe = binary("nginx")
        check = subprocess.run([exe, "-t", "-e", "stderr", "-p", str(tmp_path), "-c", str(path),
                                "-g", f"pid {tmp_path}/nginx.pid;"], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        log = open(tmp_path / "nginx-access.log", "wb")  # noqa: SIM115 - nginx writes it until the test ends
        procs.append((subprocess.Popen(
            [exe, "-e", "stderr", "-p", str(tmp_path), "-c", str(path),
             "-g", f"daemon off; pid {tmp_path}/nginx.pid;"], stdout=log), log))
        url = f"http://127.0.0.1:{port}"

        def answers() -> bool:
            try:
                return httpx.get(url + "/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(answers, timeout=10, interval=0.05, what="nginx passes /healthz to a replica")
        return url

    yield start
    for proc, log in procs:
        proc.terminate()
        proc.wait(10)
        log.close()


@contextmanager
def replicas_behind_nginx(
    flowise_url: str, redis_url: str, nginx_front, tmp_path: pathlib.Path
) -> Iterator[tuple[str, GatewayProcess, GatewayProcess, list[pathlib.Path]]]:
    """Two replicas as the compose file sets them up (its environment, Redis, text logs at info in
    a file each), the shipped nginx in front: its URL, the replicas, their logs."""
    env = compose_env(flowise_url, redis_url)
    logs = [tmp_path / "gateway-1.log", tmp_path / "gateway-2.log"]
    with GatewayProcess(env, log_level="info", stderr=logs[0]) as one, \
            GatewayProcess(env, log_level="info", stderr=logs[1]) as two:
        yield nginx_front([one.port, two.port]), one, two, logs


def test_nginxConf_inFrontOfTwoReplicas_thenOneStreamIsReadAcrossBothUnbufferedAndLoggedByItsId(
        emulators, redis_server, nginx_front, tmp_path):
    with replicas_behind_nginx(emulators("3.1.4").url, redis_server, nginx_front, tmp_path) as (front, one, two, logs):
        key = {"Authorization": "Bearer compose-key-1"}
        slow = {"emulator": {"delay": 0.1}}  # about 1.7 s of tokens: buffering would show
        created = httpx.post(front + "/v1/streams", headers={**key, "X-Request-ID": "create-1"},
                             json={"chatflowId": DEMO_CHATFLOW_ID, "question": QUESTION, "overrideConfig": slow})
        assert created.status_code == 201, created.text
        assert created.headers["x-request-id"] == "create-1"
        stream_id, events_url = created.json()["streamId"], created.json()["eventsUrl"]
        assert events_url.startswith(front + f"/v1/streams/{stream_id}/events?token=")

        events, readers, last_id = [], 0, None
        began = time.monotonic()
        first_at = None
        while not events or events[-1].event not in ("end", "error"):
            readers += 1
            assert readers < 40, "the stream did not end"
            headers = {"Last-Event-ID": last_id} if last_id else {}
            # eventsUrl carries its token: no key needed, from either replica.
            with httpx.stream("GET", events_url, headers={**headers, "X-Request-ID": f"read-{readers}"},
                              timeout=10) as response:
                assert response.status_code == 200
                taken = 0
                for sse in EventSource(response).iter_sse():
                    if not sse.data:
                        continue
                    first_at = first_at or time.monotonic()
                    events.append(sse)
                    last_id, taken = sse.id, taken + 1
                    if sse.event in ("end", "error") or taken == 3:
                        break  # and reconnect: nginx's round robin takes the next replica
        finished = time.monotonic()
    seqs = [int(e.id.rsplit(":", 1)[1]) for e in events]
    assert seqs == list(range(1, len(events) + 1)), "a gap or a duplicate"
    assert events[-1].event == "end"
    assert "".join(json.loads(e.data)["text"] for e in events if e.event == "token") == REPLY + QUESTION
    assert first_at - began < (finished - began) / 2, "events arrived late: something buffered them"

    access = (tmp_path / "nginx-access.log").read_text()
    served_by = set(re.findall(r"upstream=127\.0\.0\.1:(\d+)", access))
    assert served_by == {str(one.port), str(two.port)}, access
    assert "token=" not in access and "compose-key-1" not in access

    # JSON logs: the stream followed across both replicas by its id.
    lines = {}
    for name, path in zip(("one", "two"), logs, strict=True):
        text = path.read_text()
        assert "compose-key-1" not in text and "a-long-random" not in text and "alpha beta" not in text
        assert "token=" not in text
        lines[name] = [json.loads(line) for line in text.splitlines()]
    mine = {name: [line for line in entries if line.get("stream_id") == stream_id] for name, entries in lines.items()}
    owner = "one" if any(line["msg"] == "stream started" for line in mine["one"]) else "two"
    other = "two" if owner == "one" else "one"
    ended = next(line for line in mine[owner] if line["msg"] == "stream ended")
    assert ended["outcome"] == "completed" and ended["tokens"] == len([e for e in events if e.event == "token"])
    assert ended["transport"] == "sse" and ended["chatflow_id"] == DEMO_CHATFLOW_ID
    assert ended["first_token_ms"] > 0 and ended["duration_ms"] >= ended["first_token_ms"]
    assert ended["request_id"] == "create-1"  # the request that started it
    assert any(line["msg"] in ("stream read", "stream resumed") and line["source"] == "redis" for line in mine[other])
    access_lines = [line for entries in lines.values() for line in entries if line["msg"] == "request"]
    assert {line["request_id"] for line in access_lines} >= {"create-1", "read-1", "read-2"}
    assert all("?" not in line["path"] for line in access_lines)


def test_nginxConf_headerLimits_areTheGatewaysDefaults():
    defaults = Settings()
    timeout = re.search(r"^\s*client_header_timeout (\d+)s;", NGINX_CONF, re.M)
    buffers = re.search(r"^\s*large_client_header_buffers (\d+) (\d+)k;", NGINX_CONF, re.M)
    assert timeout and float(timeout[1]) == defaults.header_timeout
    # One buffer the size of the gateway's whole head: no more than about that much gets through.
    assert buffers and (int(buffers[1]), int(buffers[2]) * 1024) == (1, defaults.max_header_bytes)


def test_nginxConf_whenTheHeadIsOverTheGatewaysLimit_thenNginxRefusesIt_andUnderItTheReplicaAnswers(
        emulators, nginx_front):
    limit = Settings().max_header_bytes
    with GatewayProcess({"FLOWISE_URL": emulators("3.1.4").url}) as replica:
        front = nginx_front([replica.port, replica.port])
        under = {"X-Pad": "a" * (limit - 1024)}  # room for what nginx adds (X-Forwarded-For, ...)
        over = {"X-Pad": "a" * (limit + 1024)}
        assert httpx.get(front + "/healthz", headers=under).status_code == 200
        refused = httpx.get(front + "/healthz", headers=over)
        assert refused.status_code == 400 and "nginx" in refused.text  # nginx's own page: never proxied
        assert httpx.get(replica.url + "/healthz", headers=over).status_code == 431  # the same refusal


# --- docker-compose.yml -------------------------------------------------------------------------------
PROFILES = {"flowise": ["flowise"], "redis": ["redis"], "prometheus": ["monitoring"], "grafana": ["monitoring"]}


def compose_config(tmp_path: pathlib.Path, *args: str, quiet: bool = False,
                   **variables: str) -> subprocess.CompletedProcess:
    """`docker-compose [args] config [-q]` on the shipped file, in a folder of its own (no stray
    .env beside it), with only `variables` set of what it reads."""
    if not (tmp_path / "docker-compose.yml").exists():
        shutil.copy(ROOT / "docker-compose.yml", tmp_path / "docker-compose.yml")
        (tmp_path / "deploy").symlink_to(ROOT / "deploy")
        (tmp_path / "Dockerfile").symlink_to(ROOT / "Dockerfile")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("FLOWISE", "COMPOSE_", "GATEWAY_", "PROMETHEUS_", "GRAFANA_"))}
    return subprocess.run([binary("docker-compose"), *args, "config", *(["-q"] if quiet else [])], cwd=tmp_path,
                          capture_output=True, text=True, env={**env, **variables})


def test_compose_validatedByDockerCompose_andTwoReplicasBehindNginx(tmp_path):
    ok = compose_config(tmp_path, "--profile", "monitoring", FLOWISE_SSE_TOKEN_SECRET="s")
    assert ok.returncode == 0, ok.stderr
    resolved = yaml.safe_load(ok.stdout)["services"]
    missing = compose_config(tmp_path, quiet=True)
    assert missing.returncode != 0 and "FLOWISE_SSE_TOKEN_SECRET" in missing.stderr

    assert set(resolved) == {"flowise", "redis", "gateway-1", "gateway-2", "nginx", "prometheus", "grafana"}
    assert {name: service["profiles"] for name, service in resolved.items() if "profiles" in service} == PROFILES
    one, two = resolved["gateway-1"], resolved["gateway-2"]
    assert one["environment"] == two["environment"] and one["build"] == two["build"]
    assert set(one["environment"]) <= {f"FLOWISE_SSE_{n.upper()}" for n in Settings.model_fields} | UPSTREAM_ONLY
    # Stopping a replica waits for its shutdown grace (plus uvicorn's 5 s) before it is killed.
    grace = float(one["environment"]["FLOWISE_SSE_SHUTDOWN_GRACE"])
    assert _seconds(one["stop_grace_period"]) >= grace + 5
    assert "ports" not in one and resolved["nginx"]["ports"][0]["target"] == 8080
    mounts = dict(reversed(v.split(":")[:2]) if isinstance(v, str) else (v["target"], v["source"])
                  for v in resolved["nginx"]["volumes"])  # docker-compose 1.x prints them short
    assert mounts["/etc/nginx/nginx.conf"].endswith("deploy/nginx.conf")
    for name in ("gateway-1", "gateway-2"):  # nginx's upstream names are the compose services
        assert f"server {name}:8080;" in NGINX_CONF
    for directive in ("proxy_buffering off;", "proxy_http_version 1.1;", 'proxy_set_header Connection "";',
                      "proxy_read_timeout 1h;"):
        assert directive in NGINX_CONF
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    assert scrape["scrape_configs"][0]["static_configs"][0]["targets"] == ["gateway-1:8080", "gateway-2:8080"]


def test_compose_besideAnExistingFlowiseAndRedis_withoutEditing_andNoFixedHostPort(tmp_path):
    bundled = yaml.safe_load(compose_config(tmp_path, FLOWISE_SSE_TOKEN_SECRET="s").stdout)["services"]
    env = bundled["gateway-1"]["environment"]
    assert env["FLOWISE_URL"] == "http://flowise:3000" and env["FLOWISE_SSE_REDIS_URL"] == "redis://redis:6379/0"
    published = {name: service["ports"][0]["published"] for name, service in bundled.items() if "ports" in service}
    assert published == {"flowise": 3000, "nginx": 8080, "prometheus": 9090, "grafana": 3001}

    theirs = compose_config(tmp_path, FLOWISE_SSE_TOKEN_SECRET="s", FLOWISE_URL="http://my-flowise:3000",
                            FLOWISE_SSE_REDIS_URL="redis://my-redis:6379/2", FLOWISE_HOST_PORT="13000",
                            GATEWAY_HOST_PORT="18080", PROMETHEUS_HOST_PORT="19090", GRAFANA_HOST_PORT="13001")
    assert theirs.returncode == 0, theirs.stderr
    services = yaml.safe_load(theirs.stdout)["services"]
    for name in ("gateway-1", "gateway-2"):
        gateway = services[name]
        assert gateway["environment"]["FLOWISE_URL"] == "http://my-flowise:3000"
        assert gateway["environment"]["FLOWISE_SSE_REDIS_URL"] == "redis://my-redis:6379/2"
        # Nothing ties a replica to the bundled ones (a service left out by its profile would
        # make `up` refuse), and a Flowise on the Docker host is reachable by name.
        assert "depends_on" not in gateway
        assert "host.docker.internal:host-gateway" in gateway["extra_hosts"]
    published = {name: service["ports"][0]["published"] for name, service in services.items() if "ports" in service}
    assert published == {"flowise": 13000, "nginx": 18080, "prometheus": 19090, "grafana": 13001}


@pytest.mark.parametrize("keys,token", [("", ""), ("compose-key-1", "scrape-token-1")],
                         ids=["open gateway, no token", "keys and a metrics token"])
def test_monitoringProfile_prometheusAsShipped_scrapesBothReplicas(emulators, redis_server, tmp_path, keys, token):
    """The compose file's Prometheus (its command, deploy/prometheus.yml) scrapes the two replicas
    started with the compose file's environment, with FLOWISE_SSE_METRICS_TOKEN unset (docker-compose
    then passes "", which once locked /metrics) and set. Only addresses, paths and the scrape
    interval are made this test's."""
    exe = binary("prometheus")
    variables = {"FLOWISE_SSE_TOKEN_SECRET": "s", "FLOWISE_SSE_API_KEYS": keys, "FLOWISE_SSE_METRICS_TOKEN": token}
    resolved = yaml.safe_load(compose_config(tmp_path, "--profile", "monitoring", **variables).stdout)["services"]
    prometheus = resolved["prometheus"]
    assert prometheus["entrypoint"] == ["/bin/sh", "-c"]
    given = {**compose_env(emulators("3.1.4").url, redis_server), "FLOWISE_SSE_API_KEYS": keys,
             "FLOWISE_SSE_METRICS_TOKEN": resolved["gateway-1"]["environment"]["FLOWISE_SSE_METRICS_TOKEN"]}
    assert given["FLOWISE_SSE_METRICS_TOKEN"] == token  # "" when unset: what the gateway gets

    data = tmp_path / "prometheus"
    data.mkdir()
    with GatewayProcess(given) as one, GatewayProcess(given) as two:
        port = free_port()  # once both listen: a port picked before could be one of theirs
        config = (ROOT / "deploy" / "prometheus.yml").read_text()
        config = config.replace('"gateway-1:8080", "gateway-2:8080"', f'"127.0.0.1:{one.port}", "127.0.0.1:{two.port}"')
        config = config.replace("scrape_interval: 15s", "scrape_interval: 1s").replace("/prometheus/", f"{data}/")
        (tmp_path / "prometheus.yml").write_text(config)
        # The container's command, run here: docker-compose prints its `$$` escaped, and the image's
        # paths become this test's.
        command = prometheus["command"][0].replace("$$", "$")
        command = command.replace("/etc/prometheus/prometheus.yml", str(tmp_path / "prometheus.yml"))
        command = command.replace("/bin/prometheus", exe).replace("/prometheus/", f"{data}/")
        command += f" --web.listen-address=127.0.0.1:{port} --storage.tsdb.path={data}/tsdb"
        proc = subprocess.Popen(["/bin/sh", "-c", command], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                env={"PATH": os.environ["PATH"], **prometheus["environment"]})
        try:
            def scraped() -> list[dict]:
                assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
                try:
                    answer = httpx.get(f"http://127.0.0.1:{port}/api/v1/targets", timeout=2)
                except httpx.HTTPError:
                    return []
                if answer.status_code != 200:  # starting: "Service Unavailable" in text
                    return []
                active = answer.json()["data"]["activeTargets"]
                return active if len(active) == 2 and all(t["health"] != "unknown" for t in active) else []

            wait_until(scraped, timeout=30, interval=0.2, what="Prometheus scraped both replicas")
            targets = scraped()
        finally:
            proc.terminate()
            proc.wait(10)
        # And without Prometheus's empty Bearer: an empty token is no token, not a lock.
        bare = httpx.get(one.url + "/metrics")
        assert bare.status_code == (401 if keys else 200), bare.text
    assert (data / "metrics-token").read_text() == token
    assert [(t["health"], t["lastError"]) for t in targets] == [("up", ""), ("up", "")], targets


def _seconds(value: object) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value)
    return float(text[:-1]) * {"s": 1, "m": 60}[text[-1]] if text[-1] in "sm" else float(text) / 1e9


# --- deploy/kubernetes.yaml ----------------------------------------------------------------------------
MODELS = {"ConfigMap": "V1ConfigMap", "Deployment": "V1Deployment", "Service": "V1Service",
          "PodDisruptionBudget": "V1PodDisruptionBudget"}
PRIMITIVES = {"str": str, "int": int, "bool": bool, "float": (int, float)}


def check_model(value: object, kind: str, where: str) -> None:
    """`value` against the Kubernetes client's model `kind`: every key must be a field of it."""
    if kind in PRIMITIVES:
        assert isinstance(value, PRIMITIVES[kind]), f"{where}: {value!r} is not a {kind}"
    elif kind == "object":  # IntOrString, free-form
        return
    elif kind.lower().startswith("list["):  # "List[V1Container]" (older clients: "list[...]")
        assert isinstance(value, list), f"{where}: not a list"
        for i, item in enumerate(value):
            check_model(item, kind[5:-1], f"{where}[{i}]")
    elif kind.lower().startswith(("dict(", "dict[")):  # "Dict[str, str]"
        assert isinstance(value, dict), f"{where}: not a map"
        inner = kind[5:-1].split(", ", 1)[1]
        for key, item in value.items():
            check_model(item, inner, f"{where}.{key}")
    else:
        model = getattr(kubernetes.client, kind)
        assert isinstance(value, dict), f"{where}: not an object"
        fields = {json_name: attr for attr, json_name in model.attribute_map.items()}
        for key, item in value.items():
            assert key in fields, f"{where}: {key!r} is not a field of {kind}"
            check_model(item, model.openapi_types[fields[key]], f"{where}.{key}")


def test_kubernetesManifest_everyFieldKnownToKubernetes_andProbesPortsGraceMatchTheGateway():
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "kubernetes.yaml").read_text()))
    for doc in docs:
        check_model(doc, MODELS[doc["kind"]], f"{doc['kind']}/{doc['metadata']['name']}")
    by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    config = by[("ConfigMap", "flowise-sse")]["data"]
    assert set(config) <= {f"FLOWISE_SSE_{n.upper()}" for n in Settings.model_fields} | UPSTREAM_ONLY
    deployment = by[("Deployment", "flowise-sse")]
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["args"][-1] == str(ports["http"])
    # The grace period covers the preStop pause, the gateway's shutdown grace and uvicorn's 5 s.
    pause = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    grace = float(config["FLOWISE_SSE_SHUTDOWN_GRACE"])
    assert pod["spec"]["terminationGracePeriodSeconds"] >= pause + grace + 5
    service = by[("Service", "flowise-sse")]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] in ports
    pdb = by[("PodDisruptionBudget", "flowise-sse")]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]
    redis_service = by[("Service", "flowise-sse-redis")]
    assert config["FLOWISE_SSE_REDIS_URL"].startswith(f"redis://{redis_service['metadata']['name']}:6379")


def test_kubernetesCheck_whenAFieldIsMisspelled_thenItFails():
    bad = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
           "spec": {"template": {"spec": {"containers": [{"name": "x", "readinesProbe": {}}]}}}}
    with pytest.raises(AssertionError, match="readinesProbe"):
        check_model(bad, "V1Deployment", "Deployment/x")


# --- deploy/grafana-dashboard.json -------------------------------------------------------------------------
def test_grafanaDashboard_everyQueryUsesAMetricTheGatewayExports():
    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    exported = {sample_name for family in REGISTRY.collect() if family.name.startswith("flowise_sse_")
                for sample_name in _sample_names(family)}
    queried = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            queried |= set(re.findall(r"flowise_sse_\w+", target["expr"]))
    assert queried and queried <= exported, queried - exported
    families = {re.sub(r"_(bucket|total)$", "", name) for name in queried}
    for needed in ("flowise_sse_streams_live", "flowise_sse_first_token_seconds", "flowise_sse_stream_duration_seconds",
                   "flowise_sse_tokens", "flowise_sse_upstream_errors", "flowise_sse_limits_hit",
                   "flowise_sse_redis_errors", "flowise_sse_resumes"):
        assert needed in families, needed


def _sample_names(family) -> set[str]:
    if family.type == "histogram":
        return {family.name + suffix for suffix in ("_bucket", "_sum", "_count")}
    if family.type == "counter":
        return {family.name + "_total"}
    return {family.name}


def test_cliAsk_throughNginx_whenTheReplicaRunningItStops_thenTheAnswerCompletesFromTheOther(
        emulators, redis_server, nginx_front, tmp_path):
    import signal
    import sys

    with replicas_behind_nginx(emulators("3.1.4").url, redis_server, nginx_front, tmp_path) as (front, one, two, logs):
        ask = subprocess.Popen(
            [sys.executable, "-m", "flowise_sse", "ask", "--gateway", front, "--api-key", "compose-key-1",
             DEMO_CHATFLOW_ID, f"[[delay=150]] {QUESTION}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        def running_on() -> GatewayProcess | None:
            assert ask.poll() is None, "ask ended before its stream started"
            return next((gateway for gateway, log in ((one, logs[0]), (two, logs[1]))
                         if log.exists() and "stream started" in log.read_text()), None)

        wait_until(running_on, timeout=20, interval=0.05, what="the stream starts on a replica")
        owner = running_on()
        owner.proc.send_signal(signal.SIGTERM)  # as an orchestrator stops a replica
        out, err = ask.communicate(timeout=60)
    assert ask.returncode == 0 and err == "", err
    assert out == REPLY + QUESTION + "\n"
    other_log = logs[1] if owner is one else logs[0]
    assert '"source":"redis"' in other_log.read_text().replace(" ", "")  # finished from the other replica
