"""How many readers (SSE connections reading a stream) the replica holds, and for whom.

Each reader holds a socket and a file descriptor for as long as it reads. Without a bound one
key could open readers until the process runs out of descriptors, and `/healthz` and every
other key's streams would fail with it. So readers are counted per stream, per reader identity
(a gateway key, or one stream's `eventsUrl` token) and in all; a reader beyond a cap is refused
before its response starts.
"""

from __future__ import annotations

import resource
from collections import Counter
from collections.abc import Callable

from ..errors import Overloaded, TooManyReaders
from ..settings import Settings


def default_max_readers() -> int:
    """Half the process's descriptor limit: the other half stays for everything else (the
    upstream pool, Redis, connections still sending their headers, /healthz)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(16, soft // 2) if soft != resource.RLIM_INFINITY else 100_000


class ReaderLimits:
    def __init__(self, settings: Settings) -> None:
        self.per_stream = settings.max_readers_per_stream
        self.per_reader = settings.max_readers_per_key
        self.total = settings.max_readers if settings.max_readers is not None else default_max_readers()
        self._streams: Counter[str] = Counter()
        self._readers: Counter[str] = Counter()
        self.count = 0

    def admit(self, stream_id: str, reader: str | None) -> Callable[[], None]:
        """Count one reader of `stream_id` for `reader` (None: an open gateway's caller, counted
        in the total and per stream only); refuse it past a cap. Returns the idempotent release."""
        if self.count >= self.total:
            raise Overloaded(f"the gateway holds its maximum of {self.total} readers (FLOWISE_SSE_MAX_READERS)")
        if self._streams[stream_id] >= self.per_stream:
            raise TooManyReaders(f"this stream has its maximum of {self.per_stream} readers "
                                 "(FLOWISE_SSE_MAX_READERS_PER_STREAM); retry when one leaves")
        if reader is not None and self._readers[reader] >= self.per_reader:
            raise TooManyReaders(f"this key has its maximum of {self.per_reader} readers open "
                                 "(FLOWISE_SSE_MAX_READERS_PER_KEY); retry when one closes")
        self.count += 1
        self._streams[stream_id] += 1
        if reader is not None:
            self._readers[reader] += 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            self.count -= 1
            _decrement(self._streams, stream_id)
            if reader is not None:
                _decrement(self._readers, reader)

        return release


def _decrement(counts: Counter[str], key: str) -> None:
    if counts[key] <= 1:
        del counts[key]
    else:
        counts[key] -= 1
