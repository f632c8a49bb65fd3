"""What ships beside the code: the OpenAPI document, the Docker files, the README's commands."""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys
import tomllib

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from flowise_sse.api import create_app
from flowise_sse.settings import Settings

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_openapi_committed_equalsWhatTheAppGenerates():
    committed = json.loads((ROOT / "openapi" / "openapi.json").read_text())
    assert committed == create_app(Settings()).openapi(), "run: flowise-sse openapi > openapi/openapi.json"


def test_openapi_documentsTheSseContract():
    doc = create_app(Settings()).openapi()
    stream = doc["paths"]["/v1/chatflows/{chatflow_id}/stream"]["post"]["responses"]["200"]
    assert stream["content"]["text/event-stream"]["schema"] == {"$ref": "#/components/schemas/StreamEvent"}
    names = {s["properties"]["event"].get("const") for s in
             (doc["components"]["schemas"][ref["$ref"].rsplit("/", 1)[1]]
              for ref in doc["components"]["schemas"]["StreamEvent"]["anyOf"])}
    assert {"start", "token", "end", "error"} <= names
    responses = doc["paths"]["/v1/chatflows/{chatflow_id}/stream"]["post"]["responses"]
    for status in ("404", "409", "502", "504"):
        assert status in responses


def test_dockerfile_slimNonRootWithHealthcheck():
    text = (ROOT / "Dockerfile").read_text()
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert froms and all(image.endswith("-slim") for image in froms)
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and user[-1] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*", text, re.M) and "/healthz" in text
    assert re.search(r'^CMD \["flowise-sse", "serve"', text, re.M)
    for path in re.findall(r"^COPY (?!--from)(\S+)", text, re.M):
        assert (ROOT / path).exists(), path


def _lock() -> dict[str, dict]:
    """requirements.lock's entries by name: version, marker, hashes, and what pulled each in."""
    entries: dict[str, dict] = {}
    current: dict | None = None
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if match := re.match(r"^([A-Za-z0-9._-]+)==(\S+?)(?: ; (.+?))?(?: \\)?$", line):
            current = entries.setdefault(canonicalize_name(match[1]), {"versions": set(), "hashes": 0, "via": set()})
            current["versions"].add(match[2])
        elif current is not None and re.match(r"^\s+--hash=sha256:[0-9a-f]{64}", line):
            current["hashes"] += 1
        elif current is not None and (found := re.match(r"^\s+#\s+(?:via\s+)?(\S.*)$", line)) and found[1] != "via":
            current["via"].add(found[1])
    return entries


def test_lock_coversExactlyPyprojectsRuntimeDependencies_pinnedWithHashes():
    # requirements.lock is what the image installs: it must be pyproject's runtime dependencies and
    # what they pull in, no more, no less, within pyproject's bounds. Regenerate: bash deploy/lock.sh
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {canonicalize_name(Requirement(dep).name): Requirement(dep) for dep in project["dependencies"]}
    lock = _lock()
    direct = {name for name, entry in lock.items() if "flowise-sse (pyproject.toml)" in entry["via"]}
    assert direct == set(wanted), f"requirements.lock is stale (bash deploy/lock.sh): {direct ^ set(wanted)}"
    for name, entry in lock.items():
        assert entry["hashes"] >= len(entry["versions"]), f"{name} has no hash"
        parents = {canonicalize_name(via) for via in entry["via"] if via != "flowise-sse (pyproject.toml)"}
        assert parents <= set(lock), f"{name} is pulled in by {parents - set(lock)}, which the lock lacks"
    for name, requirement in wanted.items():
        assert all(requirement.specifier.contains(v) for v in lock[name]["versions"]), \
            f"{name} {lock[name]['versions']} is outside pyproject's {requirement.specifier}"


def test_dockerfile_installsTheLockWithItsHashes_thenTheProjectAlone():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^RUN pip install .*--require-hashes -r \S*requirements\.lock", text, re.M)
    assert re.search(r"^RUN pip install .*--no-deps ", text, re.M)
    assert "bash deploy/lock.sh" in text and "bash deploy/lock.sh" in (ROOT / "requirements.lock").read_text()
    # .dockerignore leaves out everything but what it names again: each file copied must be named.
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*") + 1:]  # everything is left out, then some taken back
    kept = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for line in re.findall(r"^COPY (?!--from)(.+)$", text, re.M):
        for source in line.split()[:-1]:
            assert source.rstrip("/") in kept, f"{source} is copied but .dockerignore leaves it out"


def test_compose_flowiseOfficialImageTwoGatewaysAndRedis():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert services["flowise"]["image"].startswith("flowiseai/flowise:")
    for name in ("gateway-1", "gateway-2"):  # tests/test_deploy.py runs them behind nginx
        gateway = services[name]
        assert gateway["build"] == "."
        env = gateway["environment"]
        # The bundled Flowise and Redis by default; another one from the environment.
        assert env["FLOWISE_URL"] == "${FLOWISE_URL:-http://flowise:3000}"
        assert env["FLOWISE_SSE_REDIS_URL"].startswith("${FLOWISE_SSE_REDIS_URL:-redis://redis:")
        assert "depends_on" not in gateway  # they may be another installation's (tests/test_deploy.py)


def test_readme_twoCommands_andCiRunsTheTestOne_afterBuildingTheDocs():
    # That every setting is documented is tests/test_docs.py's check: the configuration page is
    # generated from settings.py.
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```sh\n(.+?)\n```", readme, re.S)
    assert len(commands) == 2, commands  # the two a newcomer copies: run the gateway, run the tests
    run_cmd = next(c for c in commands if "serve --demo" in c)
    test_cmd = next(c for c in commands if "pytest" in c)
    assert "pip install" in run_cmd
    # CI runs the README's test command, step by step, with the strict docs build before the tests.
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.lstrip().startswith("#")]
    steps = [part.strip() for part in test_cmd.split("&&")]
    assert all(step in ci for step in steps), (steps, ci)
    assert [ci.index(step) for step in steps] == sorted(ci.index(step) for step in steps)
    assert ci.index(steps[0]) < ci.index(".venv/bin/mkdocs build --strict") < ci.index(steps[-1])


def test_package_whenServeImportsIt_thenNoGatewayClient_butEveryPublicNameResolves():
    probe = """
import sys
import flowise_sse.cli, flowise_sse.server
loaded = sorted(m for m in ("httpx", "flowise_sse.client", "flowise_sse.library") if m in sys.modules)
import flowise_sse
names = {name: getattr(flowise_sse, name).__module__ for name in flowise_sse.__all__ if name != "__version__"}
print(json.dumps([loaded, names, sorted(set(flowise_sse.__all__) - set(dir(flowise_sse)))]))
"""
    out = subprocess.run([sys.executable, "-c", "import json\n" + probe], capture_output=True, text=True, check=True)
    loaded, names, undiscoverable = json.loads(out.stdout)
    assert loaded == []  # what `serve` starts with (its import CPU, a seventh less)
    assert names["GatewayClient"] == "flowise_sse.client" and names["stream_prediction"] == "flowise_sse.library"
    assert undiscoverable == []
