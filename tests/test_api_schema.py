"""schemathesis against the committed OpenAPI document (openapi/openapi.json) on a running gateway:
every operation, generated valid and invalid input, the stateful links (a created stream's id read
and stopped), with every check on: no server error, no status, content type, header or schema
that the document does not state. Configuration and its reasons: tests/schemathesis.toml."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .servers import GatewayProcess

ROOT = Path(__file__).resolve().parents[1]


def test_schemathesis_allOperationsAndLinks_thenNoServerErrorsNorMismatches(emulators, tmp_path):
    # The emulated Flowise's keyed chatflow answers too: the gateway holds its key.
    flowise = emulators("3.1.4", api_key="schema-key")
    with GatewayProcess({"FLOWISE_URL": flowise.url, "FLOWISE_API_KEY": "schema-key"}) as gateway:
        st = Path(sys.executable).with_name("st")
        run = subprocess.run(
            [str(st), "--config-file", str(ROOT / "tests" / "schemathesis.toml"), "run",
             str(ROOT / "openapi" / "openapi.json"), "--url", gateway.url,
             "--checks", "all", "--max-examples", "10", "--seed", "11", "--no-shrink",
             "--request-timeout", "10"],
            capture_output=True, text=True, timeout=300, cwd=tmp_path,  # its cache stays out of the tree
        )
    assert run.returncode == 0, run.stdout[-12000:] + run.stderr[-2000:]
    document = json.loads((ROOT / "openapi" / "openapi.json").read_text())
    operations = sum(len(methods) for methods in document["paths"].values())
    assert f"Tested: {operations}" in run.stdout  # every operation
