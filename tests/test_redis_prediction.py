"""The cross-replica chat lock covers /prediction too (issue 11 item 6): two gateway processes
sharing a real redis-server; a chatId busy on one replica is 409 on the other, and free again
as soon as the client of the first leaves."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from flowise_sse.emulator import DEMO_CHATFLOW_ID

from .servers import GatewayProcess, started_together
from .test_redis import redis_url  # noqa: F401  (the module's redis-server fixture)

pytestmark = pytest.mark.redis
PREDICTION = f"/v1/chatflows/{DEMO_CHATFLOW_ID}/prediction"
STREAM = f"/v1/chatflows/{DEMO_CHATFLOW_ID}/stream"


def test_prediction_whenChatIdBusyOnAnotherReplica_then409_andFreedWhenItsClientLeaves(redis_url, emulators):  # noqa: F811
    flowise = emulators("3.1.4")
    env = {"FLOWISE_URL": flowise.url, "FLOWISE_SSE_REDIS_URL": redis_url, "FLOWISE_SSE_TOKEN_SECRET": "s"}
    with started_together(GatewayProcess(env), GatewayProcess(env)) as (a, b):
        hanging = json.dumps(
            {"question": "hang", "chatId": "shared-chat", "overrideConfig": {"emulator": {"hang": True}}})
        holder = socket.create_connection(("127.0.0.1", a.port))
        holder.sendall(f"POST {PREDICTION} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                       f"Content-Length: {len(hanging)}\r\n\r\n{hanging}".encode())
        deadline = time.monotonic() + 10
        while flowise.app.active_predictions == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert flowise.app.active_predictions == 1
        for path in (PREDICTION, STREAM):
            r = httpx.post(b.url + path, json={"question": "mine?", "chatId": "shared-chat"}, timeout=10)
            assert r.status_code == 409 and r.json()["error"]["code"] == "chat_busy", r.text
        holder.close()  # the first client leaves: its upstream request ends, the claim goes
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            r = httpx.post(b.url + PREDICTION, json={"question": "now mine", "chatId": "shared-chat"}, timeout=10)
            if r.status_code != 409:
                break
            time.sleep(0.05)
        assert r.status_code == 200 and "now mine" in r.json()["text"]

