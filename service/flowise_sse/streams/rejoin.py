"""GET streams that the same GET may join again.

An `EventSource` that loses its connection before its first event reconnects with the same URL
and no Last-Event-ID. The route hashes what makes the ask into a request key; until a reader
received the run started under that key whole, while the run goes on and for `window` seconds
after its terminal event, the same key joins that run rather than asking Flowise a second time
(or getting a 409 on its own chatId). Only the digest is kept, never the question. Per replica,
in memory.
"""

from __future__ import annotations

import time

from .run import StreamRun


class RejoinRegistry:
    def __init__(self, window: float) -> None:
        self.window = window
        self._runs: dict[str, StreamRun] = {}  # request key -> its run
        self._keys: dict[str, str] = {}  # and back: stream id -> request key
        self._delivered: set[str] = set()  # request keys whose stream some reader got whole

    def __len__(self) -> int:
        return len(self._runs)

    def register(self, request_key: str, run: StreamRun) -> None:
        self._runs[request_key] = run
        self._keys[run.id] = request_key
        self._delivered.discard(request_key)

    def join(self, request_key: str) -> StreamRun | None:
        """The run this request may join, or None (then it is a new question)."""
        run = self._runs.get(request_key)
        if run is None:
            return None
        log = run.log
        # Delivered is checked before the run's task is: after its terminal event a transport
        # still reads the rest of the response (up to 1 s), and a reader may have it all by then.
        if request_key in self._delivered or log.evicted or run.phase == "refused":
            self._forget(request_key, run)
            return None
        if log.finished_at is None:
            if not run.done:
                return run
            self._forget(request_key, run)  # over without a terminal event of its own
            return None
        if time.monotonic() - log.finished_at > self.window:
            self._forget(request_key, run)
            return None
        return run

    def delivered(self, stream_id: str) -> None:
        """A reader received the stream whole, terminal event included: the same GET again is
        a new question."""
        key = self._keys.get(stream_id)
        if key is not None:
            self._delivered.add(key)

    def sweep(self) -> None:
        """Drop the keys whose run can no longer be joined."""
        for key in list(self._runs):
            self.join(key)

    def _forget(self, request_key: str, run: StreamRun) -> None:
        del self._runs[request_key]
        self._keys.pop(run.id, None)
        self._delivered.discard(request_key)
