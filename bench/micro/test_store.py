"""The in-memory store per token and per stream: `StreamLog.append` (encode, reserve, wake), and a
whole stream's bookkeeping (create, one token, `end`) with the store empty and holding 10,000
finished streams (`max_streams`: every new stream then evicts the oldest), which should cost the same."""

from __future__ import annotations

import itertools

import pytest

from flowise_sse.events import END, Event, token
from flowise_sse.settings import Settings
from flowise_sse.streams import MemoryStore


def finished(store: MemoryStore, stream_id: str) -> None:
    log = store.create(stream_id)
    log.append(token("hi"))
    log.append(Event(END, {"text": "hi"}), terminal=True)


def test_streamLog_appendOneToken(benchmark):
    log = MemoryStore(Settings(max_stream_bytes=2**40, max_total_bytes=2**40)).create("s")
    benchmark(log.append, token(" word"))


@pytest.mark.parametrize("held", [0, 10_000])
def test_memoryStore_oneWholeStream(benchmark, held):
    store = MemoryStore(Settings(max_streams=10_000 if held else 10**9))
    for i in range(held):
        finished(store, f"h{i}")
    ids = (f"n{i}" for i in itertools.count())
    benchmark(lambda: finished(store, next(ids)))
