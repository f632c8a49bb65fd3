"""Keys are tenants: each scenario an attacker holding one key of two tried, now a test that the
other key's streams, chats and readers are out of its reach; and the findings around it (the
override policy, header and token hardening, upstream events that pose as the gateway's own)."""

from __future__ import annotations

import hashlib
import os
import resource
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest

from flowise_sse.emulator import DEMO_CHATFLOW_ID, NONSTREAMING_CHATFLOW_ID

from .helpers import free_port, read_until_closed, until, wait_until
from .servers import aread_sse, joined

ALICE, BOB = "alice-key-0123456789", "bob-key-abcdefghijkl"
STREAM = f"/v1/chatflows/{DEMO_CHATFLOW_ID}/stream"


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def prefix(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def slow(question: str = "hello", **controls) -> dict:
    """A stream that takes its time (the emulator's LLM waits 200 ms per token)."""
    return {"question": question, "overrideConfig": {"emulator": {"delay": 0.2, **controls}}}


@pytest.fixture
def flowise(emulators):
    server = emulators("3.1.4")
    server.app.requests.clear()
    return server


@pytest.fixture
def two_keys(gateways, flowise):
    return gateways(flowise.url, api_keys=[ALICE, BOB])


# --- streams and chats ---------------------------------------------------------------------------
async def test_anotherKeysStream_isNotFound_toReadResumeOrDelete(two_keys):
    async with httpx.AsyncClient(base_url=two_keys.url, timeout=20) as client:
        created = (await client.post("/v1/streams", json={"chatflowId": DEMO_CHATFLOW_ID, **slow()},
                                     headers=auth(ALICE))).json()
        stream_id = created["streamId"]
        events = await client.get(f"/v1/streams/{stream_id}/events", headers=auth(BOB))
        resumed = await client.post(STREAM, json={"question": "x"},
                                    headers={**auth(BOB), "Last-Event-ID": f"{stream_id}:1"})
        resumed_get = await client.get(STREAM, params={"question": "x", "lastEventId": f"{stream_id}:1"},
                                       headers=auth(BOB))
        deleted = await client.delete(f"/v1/streams/{stream_id}", headers=auth(BOB))
        for r in (events, resumed, resumed_get, deleted):
            assert r.status_code == 404 and r.json()["error"]["code"] == "stream_not_found", r.text
        # Still Alice's, untouched: she reads it to its end.
        async with client.stream("GET", f"/v1/streams/{stream_id}/events", headers=auth(ALICE)) as r:
            assert [e.event for e in await aread_sse(r)][-1] == "end"


async def test_sameChatId_fromTwoKeys_thenTwoFlowiseChats_neitherBlocked(two_keys, flowise):
    async with httpx.AsyncClient(base_url=two_keys.url, timeout=20) as client, \
            client.stream("POST", STREAM, json={**slow(), "chatId": "alice"}, headers=auth(ALICE)) as first:
            assert first.status_code == 200
            # Bob's "alice" is not Alice's: no 409 while hers runs.
            second = await client.post(STREAM, json={"question": "hi", "chatId": "alice"}, headers=auth(BOB))
            assert second.status_code == 200
            alice_events = await aread_sse(first)
    sent = {r["body"]["question"]: r["body"]["chatId"] for r in flowise.app.requests}
    assert sent == {"hello": f"{prefix(ALICE)}.alice", "hi": f"{prefix(BOB)}.alice"}
    # Each sees its own name back, in every event that carries one.
    for event in alice_events:
        if isinstance(event.data, dict) and "chatId" in event.data:
            assert event.data["chatId"] == "alice", event


async def test_chatBusy_whenTheSameKeyAsksTwice_thenTheMessageNamesNoStream(two_keys):
    async with httpx.AsyncClient(base_url=two_keys.url, timeout=20) as client:
        created = (await client.post("/v1/streams", json={"chatflowId": DEMO_CHATFLOW_ID, **slow(), "chatId": "c1"},
                                     headers=auth(ALICE))).json()
        busy = await client.post(STREAM, json={"question": "again", "chatId": "c1"}, headers=auth(ALICE))
        assert busy.status_code == 409 and created["streamId"] not in busy.text
        await client.delete(f"/v1/streams/{created['streamId']}", headers=auth(ALICE))


async def test_sessionIdInOverrideConfig_isNamespacedToo(two_keys, flowise):
    async with httpx.AsyncClient(base_url=two_keys.url, timeout=20) as client:
        r = await client.post(f"/v1/chatflows/{DEMO_CHATFLOW_ID}/prediction",
                              json={"question": "hi", "overrideConfig": {"sessionId": "shared"}}, headers=auth(BOB))
    assert r.status_code == 200
    assert flowise.app.requests[-1]["body"]["overrideConfig"]["sessionId"] == f"{prefix(BOB)}.shared"
    assert prefix(BOB) not in r.text  # the answer speaks the caller's names


# --- a key's chatflows ------------------------------------------------------------------------------
@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.toml"
    path.write_text(f'''
[[key]]
label = "limited"
key = "{ALICE}"
chatflows = ["{DEMO_CHATFLOW_ID}"]

[[key]]
label = "operator"
key_sha256 = "{hashlib.sha256(BOB.encode()).hexdigest()}"
flow_data = true
''')
    return path


async def test_keysFile_aKeyLimitedToSomeChatflows_seesAndReachesOnlyThose(gateways, flowise, keys_file):
    gateway = gateways(flowise.url, keys_file=keys_file)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as client:
        listed = (await client.get("/v1/chatflows", headers=auth(ALICE))).json()
        models = (await client.get("/v1/models", headers=auth(ALICE))).json()["data"]
        other = await client.post(f"/v1/chatflows/{NONSTREAMING_CHATFLOW_ID}/stream", json={"question": "x"},
                                  headers=auth(ALICE))
        other_by_id = await client.post("/v1/streams", json={"chatflowId": NONSTREAMING_CHATFLOW_ID, "question": "x"},
                                        headers=auth(ALICE))
        full = await client.get("/v1/chatflows", params={"full": "true"}, headers=auth(ALICE))
        operator_full = await client.get("/v1/chatflows", params={"full": "true"}, headers=auth(BOB))
    assert [flow["id"] for flow in listed] == [DEMO_CHATFLOW_ID]
    assert [model["id"] for model in models] == [DEMO_CHATFLOW_ID]
    assert other.status_code == other_by_id.status_code == 404
    assert full.status_code == 403
    assert operator_full.status_code == 200 and all("flowData" in flow for flow in operator_full.json())
    with pytest.raises(openai.NotFoundError):
        openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=ALICE).chat.completions.create(
            model="Non-streaming chat (emulated Flowise)", messages=[{"role": "user", "content": "x"}])


@pytest.mark.parametrize(("content", "why"), [
    ("[[key]]\nkey = 'a'\nkey_sha256 = '" + "0" * 64 + "'\n", "exactly one of key or key_sha256"),
    ("[[key]]\nkey_sha256 = 'nothex'\n", "64 hex digits"),
    ("[[key]]\nkey = 'a'\ncolour = 'red'\n", "unknown fields"),
    ("not toml = = =", "not TOML"),
])
def test_keysFile_whenWrong_thenServeSaysWhereAndWhy_andExits2(tmp_path, content, why):
    path = tmp_path / "keys.toml"
    path.write_text(content)
    proc = subprocess.run([sys.executable, "-m", "flowise_sse", "serve", "--port", str(free_port())],
                          env={**os.environ, "FLOWISE_SSE_KEYS_FILE": str(path)}, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and why in proc.stderr and "Traceback" not in proc.stderr


# --- readers ----------------------------------------------------------------------------------------
async def test_readers_pastTheStreamsCap_get429WithRetryAfter_andTheOthersKeepReading(gateways, flowise):
    gateway = gateways(flowise.url, api_keys=[ALICE, BOB], max_readers_per_stream=2)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as client:
        created = (await client.post("/v1/streams", json={"chatflowId": DEMO_CHATFLOW_ID, **slow()},
                                     headers=auth(ALICE))).json()
        url = f"/v1/streams/{created['streamId']}/events"
        async with client.stream("GET", url, headers=auth(ALICE)) as one, \
                client.stream("GET", url, headers=auth(ALICE)) as two:
            refused = await client.get(url, headers=auth(ALICE))
            assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
            assert refused.json()["error"]["code"] == "too_many_readers"
            assert joined(await aread_sse(one)) == joined(await aread_sse(two)) != ""


async def test_readers_pastTheKeysCap_get429_butAnotherKeyStillReads(gateways, flowise):
    gateway = gateways(flowise.url, api_keys=[ALICE, BOB], max_readers_per_key=1)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as client:
        mine = (await client.post("/v1/streams", json={"chatflowId": DEMO_CHATFLOW_ID, **slow()},
                                  headers=auth(ALICE))).json()
        theirs = (await client.post("/v1/streams", json={"chatflowId": DEMO_CHATFLOW_ID, **slow("bob")},
                                    headers=auth(BOB))).json()
        async with client.stream("GET", f"/v1/streams/{mine['streamId']}/events", headers=auth(ALICE)):
            again = await client.get(f"/v1/streams/{mine['streamId']}/events", headers=auth(ALICE))
            assert again.status_code == 429
            async with client.stream("GET", f"/v1/streams/{theirs['streamId']}/events", headers=auth(BOB)) as r:
                assert r.status_code == 200 and [e.event for e in await aread_sse(r)][-1] == "end"


def test_oneKeyOpeningHundredsOfReaders_underALowFdLimit_thenHealthzAndOtherKeysStillWork(emulators):
    """Before: one key's 450 readers of one slow stream, under `ulimit -n 400`, made /healthz and
    every other key's new streams fail (the process had no descriptor left)."""
    flowise = emulators("3.1.4")
    port = free_port()
    env = {**os.environ, "FLOWISE_URL": flowise.url, "FLOWISE_SSE_API_KEYS": f"{ALICE},{BOB}",
           "FLOWISE_SSE_MAX_READERS_PER_STREAM": "100", "FLOWISE_SSE_MAX_READERS_PER_KEY": "150",
           "FLOWISE_SSE_MAX_PENDING_CONNECTIONS": "50", "FLOWISE_SSE_SHUTDOWN_GRACE": "1"}

    def limit_fds() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (400, 400))

    proc = subprocess.Popen([sys.executable, "-m", "flowise_sse", "serve", "--port", str(port), "--log-level", "error"],
                            env=env, preexec_fn=limit_fds)
    readers: list[socket.socket] = []
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _healthy(url), timeout=30, what="the gateway starts")
        created = httpx.post(f"{url}/v1/streams", json={"chatflowId": DEMO_CHATFLOW_ID, **slow(hangAfter=1)},
                             headers=auth(ALICE), timeout=10).json()
        request = (f"GET /v1/streams/{created['streamId']}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                   f"Authorization: Bearer {ALICE}\r\n\r\n").encode()
        statuses: dict[bytes, int] = {}
        for _ in range(450):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(request)
            status = sock.recv(12)[9:12]
            statuses[status] = statuses.get(status, 0) + 1
            readers.append(sock)
        assert statuses == {b"200": 100, b"429": 350}
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
        other = httpx.post(f"{url}/v1/chatflows/{DEMO_CHATFLOW_ID}/stream", json={"question": "still here"},
                           headers=auth(BOB), timeout=20)
        assert other.status_code == 200 and "event: end" in other.text
    finally:
        for sock in readers:
            sock.close()
        proc.terminate()
        proc.wait(30)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


# --- overrideConfig ---------------------------------------------------------------------------------
async def test_overrideConfig_whenOff_thenRefusedOnEveryRoute_namingTheSetting(gateways, flowise):
    gateway = gateways(flowise.url, override_config="off")
    body = {"question": "hi", "overrideConfig": {"temperature": 0}}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as client:
        answers = [
            await client.post(STREAM, json=body),
            await client.post("/v1/streams", json={**body, "chatflowId": DEMO_CHATFLOW_ID}),
            await client.post(f"/v1/chatflows/{DEMO_CHATFLOW_ID}/prediction", json=body),
            await client.post("/v1/chat/completions", json={
                "model": DEMO_CHATFLOW_ID, "messages": [{"role": "user", "content": "hi"}],
                "overrideConfig": {"vars": {"x": 1}}}),
        ]
        plain = await client.post(STREAM, json={"question": "hi"})
    for r in answers:
        assert r.status_code == 400 and "FLOWISE_SSE_OVERRIDE_CONFIG" in r.text, r.text
    assert plain.status_code == 200
    assert all("overrideConfig" not in r["body"] for r in flowise.app.requests)


async def test_overrideConfig_whenAnAllowlist_thenOnlyThoseKeysPass(gateways, flowise):
    gateway = gateways(flowise.url, override_config="sessionId, vars.customer, emulator")
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as client:
        ok = await client.post(STREAM, json={"question": "hi", "overrideConfig": {
            "sessionId": "s", "vars": {"customer": {"tier": "gold"}}}})
        refused = await client.post(STREAM, json={"question": "hi", "overrideConfig": {
            "vars": {"customer": "x", "admin": True}, "basePath": "http://evil.example"}})
    assert ok.status_code == 200
    assert refused.status_code == 400 and "basePath" in refused.text and "vars.admin" in refused.text


async def test_openaiRoute_whenPassParamsOff_thenOverrideConfigCannotSetSamplingOrThePrompt(gateways, flowise):
    gateway = gateways(flowise.url)
    api = openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key="x")
    with pytest.raises(openai.BadRequestError) as refused:
        await api.chat.completions.create(model=DEMO_CHATFLOW_ID, messages=[{"role": "user", "content": "hi"}],
                                          extra_body={"overrideConfig": {"temperature": 2, "systemMessage": "obey"}})
    assert "FLOWISE_SSE_OPENAI_PASS_PARAMS" in str(refused.value)
    assert "systemMessage" in str(refused.value) and "temperature" in str(refused.value)


def test_overrideConfig_whenTheSettingIsMalformed_thenServeRefusesToStart():
    proc = subprocess.run([sys.executable, "-m", "flowise_sse", "serve", "--port", str(free_port())],
                          env={**os.environ, "FLOWISE_SSE_OVERRIDE_CONFIG": "a b,c"}, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "FLOWISE_SSE_OVERRIDE_CONFIG" in proc.stderr


# --- the smaller findings -----------------------------------------------------------------------
@pytest.mark.parametrize("names", [
    ["caf\u00e9"],  # was a 500 after the prediction ran
    ["bad\r\nX-Injected: 1"],  # was a dropped connection
    [f"k{i}" for i in range(20_000)],  # was a 129 KB header
])
async def test_ignoredParamsHeader_whenNamesAreOddOrMany_thenBoundedAndEscaped_never500(gateways, flowise, names):
    gateway = gateways(flowise.url)
    body = {"model": DEMO_CHATFLOW_ID, "messages": [{"role": "user", "content": "hi"}, ], **dict.fromkeys(names, 1)}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as client:
        r = await client.post("/v1/chat/completions", json=body)
    header = r.headers["x-flowise-ignored-params"]
    assert r.status_code == 200 and header.isascii() and "\r" not in header and "\n" not in header
    assert len(header) < 400 and "X-Injected" not in r.headers


async def test_eventsUrlToken_whenItsSignatureIsNotAscii_then401(two_keys):
    async with httpx.AsyncClient(base_url=two_keys.url, timeout=20) as client:
        created = (await client.post("/v1/streams", json={"chatflowId": DEMO_CHATFLOW_ID, "question": "x"},
                                     headers=auth(ALICE))).json()
        r = await client.get(f"/v1/streams/{created['streamId']}/events?token=9999999999.%C3%A9%FF")
    assert r.status_code == 401 and r.json()["error"]["code"] == "not_authenticated"


async def test_socketio_anEventNamedLikeTheGatewaysMarkers_cannotEndTheStream(emulators, gateways):
    flowise = emulators("1.6.2")
    gateway = gateways(flowise.url)
    forged = [{"event": "\u0000answer", "data": {"text": "forged"}}, {"event": "\u0000dropped", "data": None}]
    body = {"question": "real question", "overrideConfig": {"emulator": {"events": forged}}}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as client, \
            client.stream("POST", STREAM, json=body) as r:
        events = await aread_sse(r)
    assert events[-1].event == "end" and "real question" in events[-1].data["text"]
    assert events[-1].data["text"] != "forged"


def test_twoHostHeaders_then400(gateways, flowise):
    gateway = gateways(flowise.url)
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(b"GET /v1/chatflows HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\n\r\n")
        answer = read_until_closed(sock, 2)
    assert answer.startswith(b"HTTP/1.1 400") and b"more than one Host" in answer


async def test_unknownChatflow_then404InTheGatewaysWords(gateways, flowise):
    gateway = gateways(flowise.url)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as client:
        r = await client.post("/v1/chatflows/00000000-0000-4000-8000-000000000000/stream", json={"question": "x"})
    assert r.status_code == 404 and "Service" not in r.text and "not found" in r.json()["error"]["message"]


@pytest.mark.parametrize("keys", [[], [ALICE]])
async def test_corsOriginsStar_thenEveryOriginAllowed_onAnOpenOrAKeyedGateway(gateways, flowise, keys):
    gateway = gateways(flowise.url, cors_origins=["*"], api_keys=keys)
    headers = {"Origin": "https://any.example", **(auth(ALICE) if keys else {})}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as client:
        preflight = await client.options("/v1/chatflows", headers={
            "Origin": "https://any.example", "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization"})
        listing = await client.get("/v1/chatflows", headers=headers)
    assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == "*"
    assert listing.status_code == 200 and listing.headers["access-control-allow-origin"] == "*"


async def test_sameQuestionByGet_fromTwoKeys_neverJoinsTheOthersStream(two_keys, flowise):
    params = {"question": "same words", "requestId": "r1"}
    async with httpx.AsyncClient(base_url=two_keys.url, timeout=20) as client:
        a = await client.get(STREAM, params=params, headers=auth(ALICE))
        b = await client.get(STREAM, params=params, headers=auth(BOB))
    assert a.status_code == b.status_code == 200
    await until(lambda: len(flowise.app.requests) >= 2, what="two predictions")
    assert len({r["body"]["chatId"].split(".")[0] for r in flowise.app.requests}) == 2


async def test_anotherKeysStream_aReaderOnItAlsoCannotSeeItAfterItEnded(two_keys):
    async with httpx.AsyncClient(base_url=two_keys.url, timeout=20) as client:
        async with client.stream("POST", STREAM, json={"question": "short"}, headers=auth(ALICE)) as r:
            events = await aread_sse(r)
        stream_id = events[0].data["streamId"]
        later = await client.get(f"/v1/streams/{stream_id}/events", headers=auth(BOB))
        mine = await client.get(f"/v1/streams/{stream_id}/events", headers=auth(ALICE))
    assert later.status_code == 404 and mine.status_code == 200
