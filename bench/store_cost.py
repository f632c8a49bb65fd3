"""The in-memory store's own bookkeeping per stream, empty and holding 10,000 finished streams.

    python bench/store_cost.py

Each stream: create, one token, `end`. Held streams are finished ones (`max_streams` 10,000, so
every new stream also evicts the oldest). Before issue 16 each stream's end copied every log
(`list(self.logs.items())`): 60 µs empty, 18,825 µs at 10,000 held; now 20 and 6 µs.
"""

from __future__ import annotations

import time

from flowise_sse.events import END, Event
from flowise_sse.settings import Settings
from flowise_sse.streams import MemoryStore


def finished(store: MemoryStore, stream_id: str) -> None:
    log = store.create(stream_id)
    log.append(Event("token", {"text": "hi"}))
    log.append(Event(END, {"text": "hi"}), terminal=True)


def main() -> None:
    for held in (0, 10_000):
        store = MemoryStore(Settings(max_streams=10_000 if held else 10**6))
        for i in range(held):
            finished(store, f"h{i}")
        started = time.perf_counter()
        for i in range(300):
            finished(store, f"n{i}")
        print(f"held={held}: {(time.perf_counter() - started) / 300 * 1e6:.0f} µs per stream")


if __name__ == "__main__":
    main()
