"""An emulated Flowise (1.6.2 to 3.1.4 on the wire): a test double, also served by `serve --demo`.

Not part of the gateway's data path; nothing outside tests, the benchmark and `--demo` imports it.

    flowise_routes.py      Emulator: the ASGI app, its configuration, the routes a version serves
    quirks.py              the version table: every behaviour that differs, resolved once per version
    auth_gate.py           the auth middleware in front of /api/v1 (basic auth, API keys, whitelist)
    emulated_chatflows.py  the fixed chatflows (and 3.x Agentflows), their entity JSON and upload policy
    conversation_state.py  the rest of a chat: uploads, forms, human input, feedback, files, config
    mock_llm.py            the fake LLM: its input (system prompt, replayed history) and its plan per
                           request (words, delays, errors, stalls, extra events: `overrideConfig.emulator`)
    prediction_run.py      one prediction: the request, its JSON answer, stopping when the client leaves
    sse_stream.py          2.1.0+: SSE on the prediction POST (frames, heartbeats, split writes)
    socketio_stream.py     up to 2.0.x: the socket.io server the events go to
    flowise_errors.py      error answers in each version's shape
    records.py             what it saw, for tests (bounded), also at /__emulator/state
"""

from .emulated_chatflows import (
    DEMO_CHATFLOW_ID,
    FORM_AGENTFLOW_ID,
    HUMAN_INPUT_AGENTFLOW_ID,
    KEYED_CHATFLOW_ID,
    NONSTREAMING_CHATFLOW_ID,
    UPLOADS_CHATFLOW_ID,
)
from .flowise_routes import Emulator, EmulatorConfig, create_emulator_app

__all__ = [
    "DEMO_CHATFLOW_ID",
    "FORM_AGENTFLOW_ID",
    "HUMAN_INPUT_AGENTFLOW_ID",
    "UPLOADS_CHATFLOW_ID",
    "KEYED_CHATFLOW_ID",
    "NONSTREAMING_CHATFLOW_ID",
    "Emulator",
    "EmulatorConfig",
    "create_emulator_app",
]
