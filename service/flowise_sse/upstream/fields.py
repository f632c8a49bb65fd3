"""Which Flowise release line reads which prediction field, upload type and side endpoint.

A field sent to a Flowise that does not read it is silently dropped there (a `form` becomes an
empty question, a `humanInput` starts the run over): the gateway refuses it instead, with a 400
naming the field, the release that brought it and the release it found. Each boundary is the
first release whose code reads the field, checked against the installed 1.6.2, 1.8.4, 2.0.7,
2.2.8 and 3.1.4 servers (`../shared/flowise-conversation.md` for the rest):

    field / upload type            since   evidence
    question history chatId        1.6.0   every release
    overrideConfig (sessionId)     1.6.0   getMemorySessionId reads overrideConfig.sessionId
    uploads: file, audio           1.6.0   1.6.2 stores them; audio/webm goes to speech-to-text
    stopNodeId                     1.6.0   read by vector upsert only
    leadEmail                      1.7.0   1.8.4 stores it on the user message; 1.6.2 has none
    uploads: url                   1.8.0   1.8.4 hands it to a vision model; 1.6.2 ignores it
    action                         2.0.0   2.0.7 sequential agents' approve/reject
    uploads: file:full, file:rag   2.1.3   2.2.8 reads both; 2.0.7 neither (attachments: 2.1.3)
    form, humanInput               3.0.0   Agentflow V2 (3.1.4); 2.2.8 has no Agentflow V2

A version the gateway does not know (FLOWISE_TRANSPORT set, so no version check) is taken at its
word: every field goes on, and Flowise ignores what it does not read.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import NotSupportedByFlowise
from .flowise_client import FlowiseVersion, parse_version

Release = tuple[int, int, int]

FIELD_SINCE: dict[str, Release] = {
    "leadEmail": (1, 7, 0),
    "action": (2, 0, 0),
    "form": (3, 0, 0),
    "humanInput": (3, 0, 0),
}
UPLOAD_SINCE: dict[str, Release] = {
    "file": (1, 6, 0),
    "audio": (1, 6, 0),
    "url": (1, 8, 0),
    "file:full": (2, 1, 3),
    "file:rag": (2, 1, 3),
}
# Side endpoints that not every release has (the others are on all five lines).
ATTACHMENTS_SINCE: Release = (2, 1, 3)
# From this release Flowise itself refuses feedback on a message of another chat (2.0.7 takes it).
FEEDBACK_CHECKED_SINCE: Release = (2, 2, 8)


def _release(release: Release) -> str:
    return ".".join(map(str, release))


def check_fields(version: FlowiseVersion, fields: Iterable[str], upload_types: Iterable[str]) -> None:
    """Raise `NotSupportedByFlowise` for the first field or upload type `version` does not read."""
    if version.version is None:
        return
    found = parse_version(version.version)
    for name in fields:
        since = FIELD_SINCE.get(name)
        if since is not None and found < since:
            raise NotSupportedByFlowise(
                f"{name} needs Flowise {_release(since)} or later; this Flowise is {version.version}")
    for kind in upload_types:
        since = UPLOAD_SINCE.get(kind)
        if since is not None and found < since:
            raise NotSupportedByFlowise(
                f"uploads of type {kind} need Flowise {_release(since)} or later; this Flowise is {version.version}")


def check_endpoint(version: FlowiseVersion, since: Release, what: str) -> None:
    if version.version is not None and parse_version(version.version) < since:
        raise NotSupportedByFlowise(f"{what} needs Flowise {_release(since)} or later; this Flowise is "
                                    f"{version.version}")


def at_least(version: FlowiseVersion, since: Release) -> bool:
    """Whether `version` is `since` or later; an unknown version is not assumed to be."""
    return version.version is not None and parse_version(version.version) >= since


def human_input_refused(message: str) -> bool:
    """Flowise's words (3.x `executeAgentFlow`) for a reply to a run that is not stopped."""
    return message.find("No previous execution found for session") >= 0 or (
        "Cannot resume execution" in message or "No stopped node found" in message)


def used_fields(body: Mapping[str, Any]) -> list[str]:
    return [name for name in FIELD_SINCE if body.get(name) is not None]
