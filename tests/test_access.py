"""Access control: gateway API keys, eventsUrl capability tokens, CORS and the Origin check."""

from __future__ import annotations

import asyncio
import logging
import time

import httpx
import pytest

from flowise_sse.emulator import DEMO_CHATFLOW_ID

KEY = "gw-key-0123456789"
BODY = {"chatflowId": DEMO_CHATFLOW_ID, "question": "secure"}


@pytest.fixture
def gateway(emulators, gateways):
    flowise = emulators("3.1.4", api_key="upstream-secret-key")
    return gateways(flowise.url, api_keys=[KEY, "second-key"], flowise_api_key="upstream-secret-key",
                    cors_origins=["https://app.example"], token_ttl=60)


async def test_keys_whenMissingOrWrong_then401JsonOnEveryRoute(gateway):
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        for method, path, kw in [
            ("GET", "/v1/chatflows", {}),
            ("GET", f"/v1/chatflows/{DEMO_CHATFLOW_ID}/streaming", {}),
            ("POST", f"/v1/chatflows/{DEMO_CHATFLOW_ID}/stream", {"json": {"question": "x"}}),
            ("GET", f"/v1/chatflows/{DEMO_CHATFLOW_ID}/stream", {"params": {"question": "x"}}),
            ("POST", f"/v1/chatflows/{DEMO_CHATFLOW_ID}/prediction", {"json": {"question": "x"}}),
            ("POST", "/v1/streams", {"json": BODY}),
            ("DELETE", "/v1/streams/" + "a" * 32, {}),
            ("GET", "/v1/streams/" + "a" * 32 + "/events", {}),
        ]:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}):
                r = await client.request(method, path, headers=headers, **kw)
                assert r.status_code == 401, (method, path, headers)
                assert r.json()["error"]["code"] == "not_authenticated"
        assert (await client.get("/healthz")).status_code == 200  # probes need no key


async def test_keys_whenRight_thenWorksAndUpstreamSecretNeverShown(gateway, caplog):
    caplog.set_level(logging.DEBUG)
    async with httpx.AsyncClient(base_url=gateway.url, headers={"Authorization": f"Bearer {KEY}"}) as client:
        flows = await client.get("/v1/chatflows")
        full = await client.get("/v1/chatflows", params={"full": "true"})  # flowData needs its own permission
        streamed = await client.post(f"/v1/chatflows/{DEMO_CHATFLOW_ID}/stream", json={"question": "x"})
        second = await client.get("/v1/chatflows", headers={"Authorization": "Bearer second-key"})
    assert flows.status_code == 200 and streamed.status_code == 200 and second.status_code == 200
    assert full.status_code == 403 and "flow_data" in full.json()["error"]["message"]
    for text in (flows.text, streamed.text, caplog.text):
        assert "upstream-secret-key" not in text


async def test_eventsUrlToken_readsThatStreamOnly_andExpires(emulators, gateways):
    gateway = gateways(emulators("3.1.4").url, api_keys=[KEY], token_ttl=1)
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        auth = {"Authorization": f"Bearer {KEY}"}
        one = (await client.post("/v1/streams", json=BODY, headers=auth)).json()
        two = (await client.post("/v1/streams", json=BODY, headers=auth)).json()
        token = one["eventsUrl"].split("token=")[1]
        ok = await client.get(one["eventsUrl"])
        assert ok.status_code == 200 and "event: end" in ok.text
        other = await client.get(f"/v1/streams/{two['streamId']}/events", params={"token": token})
        assert other.status_code == 401
        forged = await client.get(f"/v1/streams/{one['streamId']}/events", params={"token": "9999999999.AAAA"})
        assert forged.status_code == 401
        odd = await client.get(f"/v1/streams/{one['streamId']}/events", params={"token": "\u00b2.AAAA"})
        assert odd.status_code == 401 and odd.json()["error"]["code"] == "not_authenticated"
        for path in ("/v1/chatflows", f"/v1/streams/{one['streamId']}"):  # nothing else with it
            r = await client.request("GET" if path == "/v1/chatflows" else "DELETE", path, params={"token": token})
            assert r.status_code == 401
        # Time passes (the scenario itself): to just past the expiry the token states.
        await asyncio.sleep(max(0.0, int(token.split(".")[0]) - time.time()) + 0.05)
        assert (await client.get(one["eventsUrl"])).status_code == 401


async def test_cors_allowlistedOriginGetsHeaders_othersRefused(gateway):
    auth = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        pre = await client.options("/v1/streams", headers={
            "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type"})
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "https://app.example"
        allowed = await client.get("/v1/chatflows", headers={**auth, "Origin": "https://app.example"})
        assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == "https://app.example"
        refused_pre = await client.options("/v1/streams", headers={
            "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in refused_pre.headers
        refused = await client.post("/v1/streams", json=BODY, headers={**auth, "Origin": "https://evil.example"})
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"
        same_origin = await client.get("/v1/chatflows", headers={**auth, "Origin": gateway.url})
        assert same_origin.status_code == 200


async def test_open_whenNoKeys_thenWorksAndSaysSoAtStartup(emulators, gateways, caplog):
    caplog.set_level(logging.WARNING)
    gateway = gateways(emulators("3.1.4").url)
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        assert (await client.get("/v1/chatflows")).status_code == 200
    assert "open" in caplog.text and "FLOWISE_SSE_API_KEYS" in caplog.text
