"""What ships beside the code: the OpenAPI document, the Docker files, the README's commands."""

from __future__ import annotations

import json
import pathlib
import re

import yaml

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
    for status in ("404", "409", "502", "504"):
        assert status in stream and True or status in doc["paths"]["/v1/chatflows/{chatflow_id}/stream"]["post"]["responses"]


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
