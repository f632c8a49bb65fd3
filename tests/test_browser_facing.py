"""Issue 11 item 7: what a browser is told (security headers), what /docs loads (nothing from a
CDN), and what a hostile page cannot make a browser do (cross-site GETs, DNS rebinding)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import httpx
import yaml

from flowise_sse.emulator import DEMO_CHATFLOW_ID

STREAM = f"/v1/chatflows/{DEMO_CHATFLOW_ID}/stream"
ROOT = Path(__file__).resolve().parents[1]


async def test_chatPageAndDocs_thenSecurityHeaders(emulators, gateways):
    gateway = gateways(emulators("3.1.4").url)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        for path in ("/", "/docs", "/app.js"):
            r = await client.get(path)
            assert r.status_code == 200, path
            assert r.headers["x-content-type-options"] == "nosniff"
            assert r.headers["x-frame-options"] == "DENY"
            assert r.headers["referrer-policy"] == "no-referrer"
            csp = r.headers["content-security-policy"]
            assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
        api = await client.get("/v1/chatflows")
        assert api.headers["content-security-policy"].startswith("default-src 'none'")


async def test_docs_thenSwaggerUiServedByTheGatewayNoCdn(emulators, gateways):
    gateway = gateways(emulators("3.1.4").url)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        page = (await client.get("/docs")).text
        assert "<script>" not in page  # no inline script: the CSP can forbid them
        sources = re.findall(r'(?:src|href)="([^"]+)"', page)
        assert sources and not [s for s in sources if "//" in s]  # nothing from another host
        for source in sources:
            if source.startswith("data:"):
                continue
            r = await client.get("/" + source)
            assert r.status_code == 200 and len(r.content) > 100, source
        bundle = await client.get("/docs/assets/swagger-ui-bundle.js")
        assert "javascript" in bundle.headers["content-type"] and len(bundle.content) > 500_000
        assert (await client.get("/openapi.json")).json()["openapi"].startswith("3.1")


async def test_crossSiteNoCorsGet_onOpenGateway_thenNoPredictionStarts(emulators, gateways):
    flowise = emulators("3.1.4")
    gateway = gateways(flowise.url)
    before = flowise.app.requests_seen
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        for site in ("cross-site", "same-site"):  # an <img src>, a no-cors fetch: no Origin header
            headers = {"Sec-Fetch-Site": site, "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"}
            r = await client.get(STREAM, params={"question": "via an img"}, headers=headers)
            assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
        assert flowise.app.requests_seen == before
        # The chat page's own EventSource (same-origin, no Origin) and curl (no fetch metadata) work.
        for headers in ({"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors"}, {}):
            async with client.stream("GET", STREAM, params={"question": "mine"}, headers=headers) as r:
                assert r.status_code == 200
                await r.aread()


async def test_dnsRebinding_whenHostNotAllowed_then400AndNothingRuns(emulators, gateways):
    flowise = emulators("3.1.4")
    gateway = gateways(flowise.url)
    before = flowise.app.requests_seen
    rebound = f"evil.example:{gateway.port}"
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        for method, path in (("GET", "/v1/chatflows"), ("POST", STREAM), ("GET", "/")):
            r = await client.request(method, path, json={"question": "q"} if method == "POST" else None,
                                     headers={"Host": rebound, "Origin": f"http://{rebound}"})
            assert r.status_code == 400 and "FLOWISE_SSE_ALLOWED_HOSTS" in r.json()["error"]["message"], path
        assert (await client.get("/healthz", headers={"Host": "10.0.0.7:8080"})).status_code == 200  # probes
        same_origin = await client.get("/v1/chatflows", headers={"Origin": gateway.url})
        assert same_origin.status_code == 200
    assert flowise.app.requests_seen == before  # no prediction ran


async def test_allowedHosts_whenConfigured_thenThatNameWorksAndStarAllowsAny(emulators, gateways):
    flowise = emulators("3.1.4")
    named = gateways(flowise.url, allowed_hosts="gw.example.com")
    anything = gateways(flowise.url, allowed_hosts="*")
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.get(named.url + "/v1/chatflows", headers={"Host": "gw.example.com"})
        assert r.status_code == 200
        assert (await client.get(named.url + "/v1/chatflows")).status_code == 400  # 127.0.0.1 not listed
        r = await client.get(anything.url + "/v1/chatflows", headers={"Host": "whatever.example"})
        assert r.status_code == 200


def test_compose_shipsNoDefaultTokenSecret():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for replica in ("gateway-1", "gateway-2"):
        secret = compose["services"][replica]["environment"]["FLOWISE_SSE_TOKEN_SECRET"]
        assert re.fullmatch(r"\$\{FLOWISE_SSE_TOKEN_SECRET:\?[^}]+\}", secret), secret


VENDOR = ROOT / "service" / "flowise_sse" / "api" / "static" / "vendor"


def test_chatPageVendoredLibraries_areTheRecordedReleasesUnchanged():
    readme = (VENDOR / "README.md").read_text()
    recorded = dict((name, digest) for digest, name in re.findall(r"^([0-9a-f]{64})  (\S+)$", readme, re.M))
    assert set(recorded) == {"marked.esm.js", "purify.es.js"}
    for name, digest in recorded.items():
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, f"{name} was changed"
    assert "marked v18.3.0" in (VENDOR / "marked.esm.js").read_text()[:200]
    assert "DOMPurify 3.5.0" in (VENDOR / "purify.es.js").read_text()[:200]
    for version in ("18.3.0", "3.5.0"):
        assert f"| {version} |" in readme
    assert (VENDOR / "LICENSE-marked.md").exists() and (VENDOR / "LICENSE-dompurify-Apache-2.0").exists()


async def test_chatPage_loadsOnlyItsOwnFiles_asJavaScriptModules(emulators, gateways):
    gateway = gateways(emulators("3.1.4").url)
    static = ROOT / "service" / "flowise_sse" / "api" / "static"
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        page = (await client.get("/")).text
        assert "<script>" not in page  # no inline script: the CSP forbids them
        pending = re.findall(r'(?:src|href)="([^"]+)"', page)
        seen: set[str] = set()
        while pending:  # the page's files, then what each module imports
            source = pending.pop()
            if source.startswith("data:") or source.startswith("#") or source in seen:
                continue
            assert "//" not in source, source  # nothing from another host
            seen.add(source)
            r = await client.get("/" + source.removeprefix("./"))
            assert r.status_code == 200, source
            if source.endswith(".js"):
                assert "javascript" in r.headers["content-type"], source  # or the browser refuses a module
                pending += re.findall(r'^import [^;]*? from "(\./[^"]+)";', r.text, re.M)
        assert {"app.js", "./markdown.js", "./vendor/marked.esm.js", "./vendor/purify.es.js"} <= seen
        served = {s.removeprefix("./") for s in seen}
        assert {p.name for p in static.glob("*.js")} <= served  # every module of the page is in use
