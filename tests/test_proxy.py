"""Chatflow listing, streaming check, non-streaming prediction, health: proxied with auth kept server-side."""

from __future__ import annotations

import httpx
import pytest

from flowise_sse.emulator import DEMO_CHATFLOW_ID, NONSTREAMING_CHATFLOW_ID

from .conftest import TRANSPORT
from .helpers import REPLY

LISTED = {"id", "name", "deployed", "isPublic", "category", "type", "updatedDate"}


async def test_listChatflows_thenSummariesAndFlowDataOnlyWhenFull(gateway, flowise, version):
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        flows = (await client.get("/v1/chatflows")).json()
        full = (await client.get("/v1/chatflows", params={"full": "true"})).json()
    assert DEMO_CHATFLOW_ID in [f["id"] for f in flows]
    assert all(set(f) == LISTED for f in flows)
    assert all(isinstance(f["flowData"], str) for f in full)


async def test_listChatflows_with1xBasicAuth_thenGatewaySendsIt(emulators, gateways):
    flowise = emulators("1.6.2", username="admin", password="s3cret-pass")
    refused = gateways(flowise.url)
    allowed = gateways(flowise.url, flowise_username="admin", flowise_password="s3cret-pass")
    async with httpx.AsyncClient() as client:
        r = await client.get(refused.url + "/v1/chatflows")
        assert r.status_code == 502 and r.json()["error"]["code"] == "unauthorized"
        assert "s3cret-pass" not in r.text
        assert (await client.get(allowed.url + "/v1/chatflows")).status_code == 200
        # predictions are outside 1.x basic auth, and the version check uses it
        r = await client.post(allowed.url + f"/v1/chatflows/{DEMO_CHATFLOW_ID}/stream", json={"question": "hi"})
        assert "event: end" in r.text


async def test_listChatflows_with3xApiKey_thenBearerSent(emulators, gateways):
    flowise = emulators("3.1.4", api_key="ws-key-9")
    async with httpx.AsyncClient() as client:
        r = await client.get(gateways(flowise.url).url + "/v1/chatflows")
        assert r.status_code == 502 and r.json()["error"]["code"] == "unauthorized"
        r = await client.get(gateways(flowise.url, flowise_api_key="ws-key-9").url + "/v1/chatflows")
        assert r.status_code == 200 and "ws-key-9" not in r.text


async def test_streamingCheck_thenFlowiseVerdict(gateway, flowise, version):
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        yes = await client.get(f"/v1/chatflows/{DEMO_CHATFLOW_ID}/streaming")
        no = await client.get(f"/v1/chatflows/{NONSTREAMING_CHATFLOW_ID}/streaming")
        unknown = await client.get("/v1/chatflows/00000000-0000-4000-8000-000000000000/streaming")
    assert yes.json() == {"isStreaming": True} and no.json() == {"isStreaming": False}
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"


async def test_prediction_thenFlowiseJsonAnswer(gateway, flowise, version):
    history = [{"role": "user", "content": "I am Ada"}]
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as client:
        r = await client.post(f"/v1/chatflows/{DEMO_CHATFLOW_ID}/prediction",
                              json={"question": "plain answer", "history": history})
        failed = await client.post(f"/v1/chatflows/{DEMO_CHATFLOW_ID}/prediction",
                                   json={"question": "x", "overrideConfig": {"emulator": {"error": "LLM down"}}})
    assert r.status_code == 200
    assert r.json()["text"] == REPLY + "plain answer" and r.json()["chatId"]
    assert flowise.app.requests[-2]["llm_messages"][1] == {"role": "user", "content": "I am Ada"}
    assert failed.status_code == 502 and failed.json()["error"]["code"] == "upstream_error"


async def test_health_andReadiness_thenVersionAndTransport(gateway, flowise, version):
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        ready = (await client.get("/readyz")).json()
    assert ready == {"status": "ready", "flowiseVersion": version, "transport": TRANSPORT[version]}


@pytest.mark.parametrize("version", ["2.0.7", "2.2.8"])
async def test_listChatflows_with2xBasicAuthOrKey_thenEachWorksAndNothingElse(emulators, gateways, version):
    # 2.0.6+ reads basic auth only beside `x-request-from: internal`, otherwise wants a Bearer key;
    # 2.0.7's version route is guarded too, so the version check needs the same credentials.
    flowise = emulators(version, username="admin", password="s3cret-pass", api_key="key-2x")
    basic = gateways(flowise.url, flowise_username="admin", flowise_password="s3cret-pass")
    keyed = gateways(flowise.url, flowise_api_key="key-2x")
    wrong = gateways(flowise.url, flowise_username="admin", flowise_password="wrong")
    async with httpx.AsyncClient() as client:
        for gateway in (basic, keyed):
            r = await client.get(gateway.url + "/v1/chatflows")
            assert r.status_code == 200, r.text
            ready = (await client.get(gateway.url + "/readyz")).json()
            assert ready["flowiseVersion"] == version
        r = await client.get(wrong.url + "/v1/chatflows")
        assert r.status_code == 502 and r.json()["error"]["code"] == "unauthorized"
        assert "s3cret" not in r.text


async def test_listChatflows_with2xAndNoCredentials_thenUiMarkerOpensAnUnguardedFlowise(emulators, gateways):
    # A 2.x without FLOWISE_USERNAME lets its UI in with `x-request-from: internal` alone; the
    # gateway does the same, and a 2.x with basic auth still refuses it.
    open_flowise = emulators("2.2.8", api_key="key-2x")
    guarded = emulators("2.2.8", username="admin", password="s3cret-pass", api_key="key-2x")
    async with httpx.AsyncClient() as client:
        assert (await client.get(gateways(open_flowise.url).url + "/v1/chatflows")).status_code == 200
        refused = await client.get(gateways(guarded.url).url + "/v1/chatflows")
        assert refused.status_code == 502 and refused.json()["error"]["code"] == "unauthorized"


async def test_listChatflows_with3xBasicAndKey_thenOnlyTheKeyIsSent(emulators, gateways):
    flowise = emulators("3.1.4", username="admin", password="s3cret-pass", api_key="ws-key-9")
    both = gateways(flowise.url, flowise_api_key="ws-key-9", flowise_username="admin", flowise_password="s3cret-pass")
    only_basic = gateways(flowise.url, flowise_username="admin", flowise_password="s3cret-pass")
    async with httpx.AsyncClient() as client:
        assert (await client.get(both.url + "/v1/chatflows")).status_code == 200
        refused = await client.get(only_basic.url + "/v1/chatflows")
        assert refused.status_code == 502 and refused.json()["error"]["code"] == "unauthorized"
