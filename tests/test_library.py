"""The library under the gateway: async generator and its sync twin, on both transports."""

from __future__ import annotations

import threading

import pytest

from flowise_sse import GatewayError, Settings, astream_prediction, stream_prediction
from flowise_sse.emulator import DEMO_CHATFLOW_ID

from .conftest import ONE_PER_TRANSPORT
from .helpers import REPLY, wait_until


def summary(events) -> tuple[list[str], str]:
    return [e.event for e in events], "".join(e.text for e in events if e.event == "token")


@pytest.mark.parametrize("version", ONE_PER_TRANSPORT)
async def test_astream_andSyncTwin_thenSameEvents(flowise, version):
    settings = Settings(flowise_url=flowise.url)
    history = [{"role": "user", "content": "I am Bob"}]
    async_events = [e async for e in astream_prediction(DEMO_CHATFLOW_ID, "twins", history=history, settings=settings)]
    sync_events = list(stream_prediction(DEMO_CHATFLOW_ID, "twins", history=history, settings=settings))
    assert summary(async_events) == summary(sync_events)
    names, text = summary(sync_events)
    assert names[0] == "start" and names[-1] == "end" and text == REPLY + "twins"
    assert sync_events[-1].text == REPLY + "twins"
    assert flowise.app.requests[-1]["llm_messages"][1] == {"role": "user", "content": "I am Bob"}


def test_syncTwin_whenClosedEarly_thenUpstreamClosedAndNoThreadLeft(emulators):
    flowise = emulators("3.1.4")
    threads = threading.active_count()
    events = stream_prediction(DEMO_CHATFLOW_ID, "leave early", settings=Settings(flowise_url=flowise.url),
                               override_config={"emulator": {"delay": 0.2}})
    assert next(events).event == "start"
    assert next(events).text == "This"
    events.close()
    wait_until(lambda: flowise.app.active_predictions == 0, timeout=1.0, what="the upstream closed")
    wait_until(lambda: threading.active_count() == threads, timeout=1.0, what="the library's thread gone")


def test_syncTwin_whenFlowiseFails_thenRaisesTheGatewayError(emulators):
    flowise = emulators("1.6.2")
    with pytest.raises(GatewayError) as caught:
        list(stream_prediction(DEMO_CHATFLOW_ID, "fail", settings=Settings(flowise_url=flowise.url),
                               override_config={"emulator": {"error": "400 mock error 400"}}))
    assert caught.value.code == "upstream_error" and "400 mock error 400" in caught.value.message


def test_library_whenChatflowIdNotUuid_thenBadRequestBeforeAnyRequest(emulators):
    flowise = emulators("3.1.4")
    before = flowise.app.requests_seen
    with pytest.raises(GatewayError) as caught:
        list(stream_prediction("../../api/v1/chatflows", "x", settings=Settings(flowise_url=flowise.url)))
    assert caught.value.code == "bad_request" and flowise.app.requests_seen == before
