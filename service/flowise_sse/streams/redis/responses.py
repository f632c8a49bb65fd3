"""The Responses API's records in Redis: what response a stream is, readable on every replica.

A record is the API's own JSON (its chat, model, input; the mirror never reads it), kept beside
the stream's events with the same running expiry, plus a `cancelled` mark. A response's events
are its stream's: `frames` reads them whole, for a snapshot of a response another replica runs.
"""

from __future__ import annotations

from typing import cast

from ...settings import Settings
from . import keys
from .calls import Client, store_call


class ResponseRecords:
    def __init__(self, client: Client, settings: Settings) -> None:
        self._redis = client
        self._settings = settings

    async def save(self, stream_id: str, record: bytes) -> None:
        key = keys.response(stream_id)
        with store_call("response_save"):
            pipe = self._redis.pipeline(transaction=True)
            pipe.hset(key, keys.RECORD_FIELD, record)
            pipe.expire(key, keys.running_ttl(self._settings))
            await pipe.execute()

    async def load(self, stream_id: str) -> tuple[bytes, bool] | None:
        """(record, cancelled), or None when there is no such record (never made, or expired)."""
        with store_call("response_load"):
            fields = cast("dict[bytes, bytes]", await self._redis.hgetall(keys.response(stream_id)))  # no decoding
        record = fields.get(keys.RECORD_FIELD.encode())
        return None if record is None else (record, keys.CANCELLED_FIELD.encode() in fields)

    async def mark_cancelled(self, stream_id: str) -> None:
        # Only a record that is there: HSET alone would make a key without an expiry.
        key = keys.response(stream_id)
        with store_call("response_cancel"):
            if await self._redis.exists(key):
                await self._redis.hset(key, keys.CANCELLED_FIELD, b"1")

    async def drop(self, stream_id: str) -> None:
        with store_call("response_drop"):
            await self._redis.delete(keys.response(stream_id))

    async def frames(self, stream_id: str) -> list[bytes]:
        """Every frame of the stream so far (its events key, whole): a point-in-time read."""
        with store_call("response_frames"):
            entries = cast("list[keys.Entry]", await self._redis.xrange(keys.events(stream_id)))
        return [keys.entry_frame(fields) for _, fields in entries]
