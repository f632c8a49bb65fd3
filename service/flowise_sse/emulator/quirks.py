"""What differs between Flowise versions on the wire: one named value per behaviour, resolved once.

`quirks_for(version)` holds the whole version table; nothing else in the emulator compares versions.
Boundaries come from the Flowise git tags, and where a raw capture of a real server exists, the
emulator matches it.

What Flowise's memory hands the LLM from the request's `history`, per item form:

    item                                   <1.6.5    1.6.5-1.7  1.8-2.0.1  2.0.2-2.x       3.x
    {type: user/apiMessage, message}       replayed  ignored    ignored    empty, ai only  empty
    {role: user/apiMessage, content}       ignored   ignored    replayed   replayed        replayed
    {role: user/assistant, content}        ignored   ignored    ignored    ignored         ignored
"""

from __future__ import annotations

import re
from dataclasses import dataclass

Version = tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class Quirks:
    """How one Flowise version behaves, where versions differ."""

    version: str
    # Transport: SSE on the prediction POST (and no socket.io server) instead of socket.io.
    sse_streaming: bool
    # With `streaming` truthy the error middleware writes nothing: a failed JSON prediction hangs.
    silent_streaming_errors: bool
    # SSE: the `X-Accel-Buffering: no` response header.
    accel_buffering_header: bool
    # SSE: `end` and `error` frames start `message:` like the others (before: `message` alone).
    colon_everywhere: bool
    # SSE: seconds between `:heartbeat` comments, None for none (EmulatorConfig can override it).
    heartbeat_interval: float | None
    # The chain callback handler forwards the LLM's empty chunks as empty `token` events.
    forward_empty_tokens: bool
    # The JSON answer carries `isStreamValid`; `stream_valid_needs_flag`: true only with streaming:true.
    stream_valid_field: bool
    stream_valid_needs_flag: bool
    # Errors are JSON `{statusCode, success, message, stack}` (before: the message as text/html), and
    # route failures are wrapped 500s ("Error: <service>.<function> - ...").
    json_errors: bool
    # An unknown chatflow is a 404 (400 for a non-uuid id) instead of a wrapped 500.
    strict_lookup: bool
    # Routes that exist.
    abort_route: bool
    ping_route: bool
    # Auth in front of /api/v1: a Bearer API key instead of basic auth for external management calls
    # (`key_gate`); `x-request-from: internal` then still means basic auth, until it means a login
    # cookie (`token_gate`). `auth_whitelist`: the path prefixes that need no auth at all.
    key_gate: bool
    token_gate: bool
    auth_whitelist: tuple[str, ...]
    # The chatflow entity: a `type` column (and `category` moved before the dates); workspace fields.
    entity_type_column: bool
    entity_workspace_fields: bool
    # History replay (the table above): `{type, message}` items replayed as they are; `{role, content}`
    # items with role userMessage/apiMessage replayed; a `{type}` item counted as an empty AI / user turn.
    history_type_message: bool
    history_role_content: bool
    history_type_as_empty_ai: bool
    history_type_as_empty_user: bool
    # Prediction fields read (upstream/fields.py has the gateway's side of the same table): a lead's
    # e-mail stored with the message; 2.x sequential agents' `action`; `url` image uploads; the
    # `file:full` and `file:rag` upload types and the attachments route; Agentflow V2 (`form`,
    # `humanInput`, Agentflows at all); `metadata` carrying a stopped run's `action`.
    lead_email: bool
    action_field: bool
    upload_url: bool
    full_file_uploads: bool
    agentflow_v2: bool
    metadata_action: bool
    # Speech-to-text also for audio/mp4 and audio/ogg (before: audio/webm only).
    more_audio_types: bool
    # Feedback is checked against its message (exists, same chat) before it is stored.
    feedback_checked: bool
    # public-chatbotConfig drops allowedOrigins and adds the sanitised flowData and isTTSEnabled (2.2.8
    # returns allowedOrigins as stored).
    public_config_sanitised: bool
    # get-upload-file answers a missing file with a 500 (before: 404 "File <name> not found").
    missing_file_500: bool
    # A reasoning model's thoughts stream as `thinking` events (`{event, data}`, then a closing
    # one with empty data and a `duration`), before the answer's tokens (FlowiseAI/Flowise#5893).
    thinking_events: bool


def quirks_for(version: str) -> Quirks:
    """The version table: each behaviour from the first Flowise version that has it."""
    v = parse_version(version)

    def since(*first: int) -> bool:
        return v >= first

    controllers = since(1, 8, 0)  # routes move to controllers: JSON errors, abort route, {role, content} history
    sse = since(2, 1, 0)  # PR #3125: SSE on the prediction POST replaces socket.io; JSON gains isStreamValid
    version_whitelisted = since(2, 1, 2)  # also the first with the X-Accel-Buffering header
    colon_everywhere = since(3, 1, 2)  # end/error frames get `message:` like the others; heartbeat comments
    whitelist = ["/api/v1/prediction/", "/api/v1/chatflows-streaming", "/api/v1/public-chatbotConfig",
                 "/api/v1/feedback", "/api/v1/get-upload-file"]
    whitelist += ["/api/v1/ping"] if since(1, 8, 2) else []
    whitelist += ["/api/v1/attachments"] if since(2, 1, 3) else []
    whitelist += ["/api/v1/vector/upsert/"] if not since(2, 0, 6) else []  # later: the key gate's
    whitelist += ["/api/v1/version"] if version_whitelisted else []
    whitelist += ["/api/v1/chatmessage/abort"] if since(3, 1, 0) else []
    return Quirks(
        version=version,
        sse_streaming=sse,
        silent_streaming_errors=sse,
        accel_buffering_header=version_whitelisted,
        colon_everywhere=colon_everywhere,
        heartbeat_interval=30.0 if colon_everywhere else None,
        forward_empty_tokens=not since(2, 2, 0),
        stream_valid_field=sse,
        stream_valid_needs_flag=since(2, 2, 5),  # isStreamValid also requires streaming:true
        json_errors=controllers,
        strict_lookup=since(3, 0, 13),  # unknown chatflow: 404 (400 for a non-uuid), no longer a wrapped 500
        abort_route=controllers,
        ping_route=since(1, 8, 2),
        key_gate=since(2, 0, 6),  # external management calls need a Bearer API key instead of basic auth
        token_gate=since(3, 0, 1),  # `x-request-from: internal` now means a login cookie, not basic auth
        auth_whitelist=tuple(whitelist),
        entity_type_column=controllers,
        entity_workspace_fields=since(3, 0, 0),  # 3.0.0: workspaces
        history_type_message=not since(1, 6, 5),  # memory no longer replays the request's {type, message} history
        history_role_content=controllers,
        history_type_as_empty_ai=since(2, 0, 2),  # a {type: apiMessage} history item counts (with empty content)
        history_type_as_empty_user=since(3, 0, 0),  # a {type: userMessage} history item counts too
        lead_email=since(1, 7, 0),
        action_field=since(2, 0, 0),
        upload_url=since(1, 8, 0),  # 1.6.2's vision helper reads stored files only
        full_file_uploads=since(2, 1, 3),
        agentflow_v2=since(3, 0, 0),
        metadata_action=colon_everywhere,  # 3.1.2
        more_audio_types=since(2, 0, 0),
        feedback_checked=since(2, 2, 8),  # first release seen checking (2.0.7 does not)
        public_config_sanitised=since(3, 0, 0),
        missing_file_500=controllers,  # "Error: streamStorageFile"
        thinking_events=since(3, 1, 0),  # SSEStreamer.streamThinkingEvent
    )


def parse_version(text: str) -> Version:
    match = re.match(r"(\d+)\.(\d+)\.(\d+)", text)
    if match is None:
        raise ValueError(f"not a Flowise version: {text!r}")
    major, minor, patch = (int(part) for part in match.groups())
    return major, minor, patch
