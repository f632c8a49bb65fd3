"""What an operator sees: `/metrics` moving with the streams, request ids, log lines per stream."""

from __future__ import annotations

import pathlib
import re
import threading

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from flowise_sse import metrics  # noqa: F401  (registers the gateway's metrics)
from flowise_sse.emulator import DEMO_CHATFLOW_ID
from flowise_sse.errors import GatewayError

from .servers import GatewayProcess, RedisServer, parse_sse

STREAM = f"/v1/chatflows/{DEMO_CHATFLOW_ID}/stream"


def scrape(url: str, **headers: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a scrape, parsed by prometheus-client's own parser."""
    response = httpx.get(url + "/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before: dict, after: dict, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


@pytest.mark.parametrize("version,transport", [("1.6.2", "socketio"), ("3.1.4", "sse")])
def test_metrics_afterStreams_thenCountersAndHistogramsMoveAndParse(emulators, gateways, version, transport):
    gateway = gateways(emulators(version).url)
    before = scrape(gateway.url)

    with httpx.stream("POST", gateway.url + STREAM, json={"question": "one two three"}) as r:
        r.read()
    completed = parse_sse(r)
    tokens = sum(1 for e in completed if e.event == "token")
    assert completed[-1].event == "end" and tokens > 3

    failing = {"question": "x", "overrideConfig": {"emulator": {"error": "mock LLM failure", "errorAfter": 2}}}
    with httpx.stream("POST", gateway.url + STREAM, json=failing) as r:
        r.read()
    failed = parse_sse(r)
    assert failed[-1].event == "error" and failed[-1].data["code"] == "upstream_error"

    # Resumed from the middle: a second reader, counted as a resume.
    stream_id = completed[0].data["streamId"]
    with httpx.stream("GET", gateway.url + f"/v1/streams/{stream_id}/events", headers={"Last-Event-ID": "3"}) as r:
        r.read()
    assert parse_sse(r)[-1].event == "end"

    assert httpx.get(gateway.url + f"/v1/chatflows/{'0' * 8}-0000-0000-0000-{'0' * 12}/streaming").status_code == 404
    middle = scrape(gateway.url)
    slow = {"emulator": {"tokens": ["a"] * 100, "delay": 0.05}}
    created = httpx.post(gateway.url + "/v1/streams", json={"chatflowId": DEMO_CHATFLOW_ID, "question": "q",
                                                              "overrideConfig": slow})
    assert httpx.delete(gateway.url + f"/v1/streams/{created.json()['streamId']}").status_code == 204
    after = scrape(gateway.url)

    assert delta(before, after, "flowise_sse_streams_started_total", transport=transport) == 3
    assert delta(before, after, "flowise_sse_streams_ended_total", transport=transport, outcome="aborted",
                 code="aborted") == 1
    assert delta(before, after, "flowise_sse_streams_ended_total", transport=transport, outcome="completed",
                 code="none") == 1
    assert delta(before, after, "flowise_sse_streams_ended_total", transport=transport, outcome="failed",
                 code="upstream_error") == 1
    assert value(after, "flowise_sse_streams_live", transport=transport) == value(
        before, "flowise_sse_streams_live", transport=transport)
    failed_tokens = sum(1 for e in failed if e.event == "token")
    assert delta(before, middle, "flowise_sse_tokens_total", transport=transport) == tokens + failed_tokens
    assert delta(before, after, "flowise_sse_event_bytes_total", transport=transport) > 0
    assert delta(before, after, "flowise_sse_first_token_seconds_count", transport=transport) >= 2
    assert delta(before, after, "flowise_sse_first_token_seconds_sum", transport=transport) > 0
    assert delta(before, after, "flowise_sse_stream_duration_seconds_count", transport=transport) == 3
    assert delta(before, after, "flowise_sse_stream_duration_seconds_bucket", transport=transport, le="+Inf") == 3
    assert delta(before, after, "flowise_sse_resumes_total", source="memory") == 1
    assert delta(before, after, "flowise_sse_sent_bytes_total", source="memory") > 0
    assert value(after, "flowise_sse_readers", source="memory") == value(before, "flowise_sse_readers", source="memory")
    operation = "prediction_stream" if transport == "sse" else "prediction"
    assert delta(before, after, "flowise_sse_upstream_request_seconds_count", operation=operation) >= 2
    assert delta(before, after, "flowise_sse_upstream_errors_total", operation="chatflow_check", code="not_found") == 1
    assert delta(before, after, "flowise_sse_http_requests_total", method="POST",
                 route="/v1/chatflows/{chatflow_id}/stream", status="200") == 2
    assert value(after, "flowise_sse_build_info", version="0.1.0") == 1
    assert value(after, "flowise_sse_store_streams") >= 2


def test_metrics_whenTheStoreIsFull_thenTheLimitIsCounted(emulators, gateways):
    gateway = gateways(emulators("3.1.4").url, max_streams=1)
    before = scrape(gateway.url)
    slow = {"question": "x", "overrideConfig": {"emulator": {"tokens": ["a"] * 40, "delay": 0.05}}}
    first_started = threading.Event()

    def hold_the_only_slot() -> None:
        with httpx.stream("POST", gateway.url + STREAM, json=slow) as r:
            for _ in r.iter_raw():
                first_started.set()

    holder = threading.Thread(target=hold_the_only_slot)
    holder.start()
    assert first_started.wait(10)
    refused = httpx.post(gateway.url + STREAM, json={"question": "y"})
    holder.join(20)
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "overloaded"
    after = scrape(gateway.url)
    assert delta(before, after, "flowise_sse_limits_hit_total", status="503", code="overloaded") == 1
    assert delta(before, after, "flowise_sse_streams_rejected_total", code="overloaded") == 1


def test_metrics_whenTheStoreIsFull_thenTheOpenAIRoutesRefusalIsCountedToo(emulators, gateways):
    gateway = gateways(emulators("3.1.4").url, max_streams=1)
    slow = {"question": "x", "overrideConfig": {"emulator": {"tokens": ["a"] * 40, "delay": 0.05}}}
    created = httpx.post(gateway.url + "/v1/streams", json={"chatflowId": DEMO_CHATFLOW_ID, **slow})
    assert created.status_code == 201
    before = scrape(gateway.url)
    refused = httpx.post(gateway.url + "/v1/chat/completions",
                         json={"model": DEMO_CHATFLOW_ID, "messages": [{"role": "user", "content": "y"}]})
    assert refused.status_code == 503, refused.text
    after = scrape(gateway.url)
    assert delta(before, after, "flowise_sse_limits_hit_total", status="503", code="overloaded") == 1
    assert httpx.delete(gateway.url + f"/v1/streams/{created.json()['streamId']}").status_code == 204


def test_metrics_whenRedisGoesDown_thenRedisErrorsAndTheLimitAreCounted(emulators, gateways):
    with RedisServer() as redis_server:
        # A second, not the default 10: the gateway's shutdown gives a Redis that is gone this long
        # to take the last events (the first stream's, cut by the stop), and the teardown waits it.
        gateway = gateways(emulators("3.1.4").url, redis_url=redis_server.url, redis_timeout=1.0)
        with httpx.stream("POST", gateway.url + STREAM, json={"question": "up"}) as r:
            r.read()
        assert parse_sse(r)[-1].event == "end"
    before = scrape(gateway.url)
    refused = httpx.post(gateway.url + STREAM, json={"question": "down"}, timeout=20)
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "store_unavailable"
    after = scrape(gateway.url)
    assert delta(before, after, "flowise_sse_redis_errors_total", operation="claim_chat") == 1
    assert delta(before, after, "flowise_sse_limits_hit_total", status="503", code="store_unavailable") == 1
    assert delta(before, after, "flowise_sse_streams_rejected_total", code="store_unavailable") == 1


def test_metrics_whenKeysSet_thenAGatewayKeyIsNeeded(emulators, gateways):
    gateway = gateways(emulators("3.1.4").url, api_keys="k-123")
    refused = httpx.get(gateway.url + "/metrics")
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "not_authenticated"
    assert "flowise_sse_streams_started_total" in httpx.get(
        gateway.url + "/metrics", headers={"Authorization": "Bearer k-123"}).text


def test_metrics_whenAMetricsTokenIsSet_thenOnlyThatTokenOpensIt(emulators, gateways):
    gateway = gateways(emulators("3.1.4").url, api_keys="k-123", metrics_token="scrape-456")
    assert httpx.get(gateway.url + "/metrics").status_code == 401
    assert httpx.get(gateway.url + "/metrics", headers={"Authorization": "Bearer k-123"}).status_code == 401
    assert httpx.get(gateway.url + "/metrics", headers={"Authorization": "Bearer scrape-456"}).status_code == 200
    # The metrics token opens nothing else.
    assert httpx.get(gateway.url + "/v1/chatflows", headers={"Authorization": "Bearer scrape-456"}).status_code == 401


def test_requestId_whenSaneIdGiven_thenEchoed_otherwiseOneIsMade(emulators, gateways):
    gateway = gateways(emulators("3.1.4").url)
    given = httpx.get(gateway.url + "/healthz", headers={"X-Request-ID": "edge-7f3a.42"})
    assert given.headers["x-request-id"] == "edge-7f3a.42"
    for insane in ("has space", "x" * 200, 'quote"', "new\\nline"):
        made = httpx.get(gateway.url + "/healthz", headers={"X-Request-ID": insane}).headers["x-request-id"]
        assert made != insane and len(made) == 32 and int(made, 16) >= 0
    error = httpx.get(gateway.url + "/v1/streams/" + "a" * 32 + "/events")
    assert error.status_code == 404 and len(error.headers["x-request-id"]) == 32
    with httpx.stream("GET", gateway.url + STREAM, params={"question": "q"}, headers={"X-Request-ID": "r-1"}) as r:
        r.read()
    assert r.headers["x-request-id"] == "r-1"


def test_textLogs_streamLinesHaveItsFieldsAndNoQuestionOrKey(emulators, tmp_path):
    flowise = emulators("3.1.4")
    log = tmp_path / "gateway.log"
    env = {"FLOWISE_URL": flowise.url, "FLOWISE_SSE_API_KEYS": "key-sekret-9"}
    with GatewayProcess(env, log_level="info", stderr=log) as gateway:
        with httpx.stream("GET", gateway.url + STREAM, params={"question": "my-private-question"},
                          headers={"Authorization": "Bearer key-sekret-9", "X-Request-ID": "text-1"}) as r:
            r.read()
        stream_id = parse_sse(r)[0].data["streamId"]
    text = log.read_text()
    ended = next(line for line in text.splitlines() if "stream ended" in line)
    for field in (f"stream_id={stream_id}", "chatflow_id=" + DEMO_CHATFLOW_ID, "transport=sse",
                  "outcome=completed", "tokens=", "first_token_ms=", "duration_ms=", "request_id=text-1"):
        assert field in ended, field
    access = next(line for line in text.splitlines() if "uvicorn.access" in line and STREAM in line)
    assert "request_id=text-1" in access and "?" not in access
    assert "my-private-question" not in text and "key-sekret-9" not in text


# --- the documentation's tables stay true ---------------------------------------------------------
DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"
SSE_ONLY = {"aborted", "stream_too_large"}  # only ever an `error` event, never an HTTP answer


def _subclasses(cls: type) -> list[type]:
    return [cls] + [sub for child in cls.__subclasses__() for sub in _subclasses(child)]


def test_docsErrorCodes_everyGatewayErrorListedWithItsStatusAndRetryable():
    page = (DOCS / "errors.md").read_text()
    rows = {m[0]: (m[1], m[2]) for m in re.findall(r"^\| `(\w+)` \| ([^|]+?) \| (yes|no) \|", page, re.M)}
    for error in _subclasses(GatewayError):
        if error.__module__ != "flowise_sse.errors":
            continue  # the CLI's own, never sent by the gateway
        assert error.code in rows, f"{error.code} is missing from docs/errors.md"
        status, retryable = rows[error.code]
        assert status.startswith("—") if error.code in SSE_ONLY else status == str(error.status), error.code
        assert retryable == ("yes" if error.retryable else "no"), error.code
    for code, status in (("invalid_request", "422"), ("not_found", "404"), ("method_not_allowed", "405"),
                         ("request_timeout", "408"), ("headers_too_large", "431")):
        assert rows[code][0] == status  # the handlers' and the HTTP protocol's own


def test_docsMetrics_everyExportedMetricListed():
    page = (DOCS / "observability" / "metrics.md").read_text()
    listed = set(re.findall(r"`(flowise_sse_\w+)`", page.split("## The metrics", 1)[1].split("\n## ", 1)[0]))
    exported = {family.name + ("_total" if family.type == "counter" else "")
                for family in REGISTRY.collect() if family.name.startswith("flowise_sse_")}
    assert exported == listed


def test_refusals_areLoggedWithTheirReason_whatABrowserCannotRead(emulators, gateways, caplog):
    """A CORS 403 and a Host 400 carry their reason in a JSON body browsers hide: the log says it."""
    import logging

    caplog.set_level(logging.INFO, logger="flowise_sse")
    gateway = gateways(emulators("3.1.4").url, api_keys=["k1"], cors_origins=["https://app.example"])
    with httpx.Client(base_url=gateway.url) as client:
        assert client.get("/v1/chatflows", headers={"Host": "evil.example"}).status_code == 400
        assert client.get("/v1/chatflows", headers={"Origin": "https://evil.example",
                                                    "Authorization": "Bearer k1"}).status_code == 403
        assert client.get("/v1/chatflows").status_code == 401
    lines = [r for r in caplog.records if r.getMessage() == "request refused"]
    reasons = {line.fields["status"]: line.fields["reason"] for line in lines}  # type: ignore[attr-defined]
    assert "FLOWISE_SSE_ALLOWED_HOSTS" in reasons[400] and "FLOWISE_SSE_CORS_ORIGINS" in reasons[403]
    assert "API key" in reasons[401] and "k1" not in caplog.text
