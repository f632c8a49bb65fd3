"""What the emulator saw, for tests: recent requests and aborts, and live counters.

Served as JSON at `/__emulator/state` (GET; DELETE clears the records and the resettable counters).
"""

from __future__ import annotations

from collections import deque
from typing import Any


class Records:
    """Recent requests and aborts (the newest `max_recorded` of each), and counters. The Emulator is one."""

    def __init__(self, max_recorded: int) -> None:
        # Bounded: a long-running `serve --demo` or benchmark would otherwise keep every request body
        # (with its history) for ever. Tests read the most recent ones.
        self.requests: deque[dict[str, Any]] = deque(maxlen=max_recorded)
        self.aborts: deque[tuple[str, str]] = deque(maxlen=max_recorded)
        # The answers Flowise would store (GET /api/v1/chatmessage/{chatflowid} serves them).
        self.answers: deque[dict[str, Any]] = deque(maxlen=max_recorded)
        self.requests_seen = 0  # every prediction request, including those no longer in `requests`
        self.active_predictions = 0
        self.client_disconnects = 0
        self.connected_sockets = 0
        self.socket_connects = 0

    def add_request(self, request: dict[str, Any]) -> None:
        self.requests.append(request)
        self.requests_seen += 1

    def clear_records(self) -> None:
        """Forget what was seen; the live counters (predictions running, sockets connected) stay."""
        self.requests.clear()
        self.aborts.clear()
        self.answers.clear()
        self.requests_seen = self.client_disconnects = self.socket_connects = 0

    def records_state(self) -> dict[str, Any]:
        return {
            "requests": list(self.requests), "requests_seen": self.requests_seen, "aborts": list(self.aborts),
            "active_predictions": self.active_predictions, "client_disconnects": self.client_disconnects,
            "connected_sockets": self.connected_sockets, "socket_connects": self.socket_connects,
        }
