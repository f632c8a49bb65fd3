"""The normalized events every transport yields, whatever the Flowise version behind it.

`start` first, then `token` and relayed Flowise events (under their Flowise names), then exactly
one of `end` or `error`. The gateway encodes these as SSE; library users get them as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

START = "start"
TOKEN = "token"
METADATA = "metadata"
END = "end"
ERROR = "error"
TERMINAL = frozenset({END, ERROR})


@dataclass(slots=True)
class Event:
    event: str
    data: Any
    # The SSE id (`<streamId>:<seq>`) of an event read from a gateway (client.py), to resume
    # from with `events(stream_id, last_event_id=...)`; None where events come from Flowise.
    id: str | None = None

    @property
    def text(self) -> str:
        """The fragment of a `token`, the whole answer of an `end`; "" otherwise."""
        if self.event in (TOKEN, END) and isinstance(self.data, dict):
            return str(self.data.get("text", ""))
        return ""


def token(text: str) -> Event:
    return Event(TOKEN, {"text": text})
