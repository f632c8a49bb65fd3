"""Where the mirror's data lives in Redis, and for how long.

Every key and channel name, the entries of an events key, and every expiry: no other module
builds a key string or an entry id.

- `fss:{tag}:<streamId>:events`: a Redis Stream, one entry per SSE frame, with entry id `<seq>-0`.
- `fss:{tag}:<streamId>:meta`: a hash; `owner` is the replica running the stream, `tenant` the
  gateway key that started it (empty on an open gateway).
- `fss:{tag}:<streamId>:response`: a hash; the Responses API's record of the response run as that
  stream (its chat, model and input: `record`), and `cancelled` once a client cancelled it.
- `fss:chat:<chatId>`: the chat lock, holding the id of the stream that uses the chat.
- `fss:replica:<replicaId>`: present while that replica is alive.
- `fss:abort`: the channel carrying the ids of streams to abort (sharded pub/sub on a cluster).

`{tag}` is a Redis Cluster hash tag: the first 12 hex digits of the stream id, which are its
owner replica's id (`RedisMirror.new_stream_id`). Every stream a replica runs thus lives in one
hash slot, so the writer sends all of a batch's frames in one script call, on any cluster, and a
reader's pipeline touches a stream's two keys together; a response's record shares its stream's
slot too, though each call on it touches that key alone. A cluster spreads replicas, not
streams, over its shards (see docs/operations/redis.md, "Sizing"). Every other key is used alone.
"""

from __future__ import annotations

from redis.typing import EncodableT, FieldT

from ...settings import Settings

ABORT_CHANNEL = "fss:abort"
OWNER_FIELD = "owner"  # in a stream's meta hash
TENANT_FIELD = "tenant"


TAG_LENGTH = 12  # hex digits: a replica's id, and the start of every stream id it makes


def slot_tag(stream_id: str) -> str:
    return stream_id[:TAG_LENGTH]


def events(stream_id: str) -> str:
    return f"fss:{{{stream_id[:TAG_LENGTH]}}}:{stream_id}:events"


def meta(stream_id: str) -> str:
    return f"fss:{{{stream_id[:TAG_LENGTH]}}}:{stream_id}:meta"


def tenant_value(tenant: str | None) -> str:
    """A tenant as the meta hash holds it (an open gateway's streams: empty)."""
    return tenant or ""


def response(stream_id: str) -> str:
    return f"fss:{{{stream_id[:TAG_LENGTH]}}}:{stream_id}:response"


RECORD_FIELD = "record"  # in a response hash: the record's JSON
CANCELLED_FIELD = "cancelled"  # in a response hash: present once the response was cancelled


def chat_lock(chat_id: str) -> str:
    return f"fss:chat:{chat_id}"


def replica(replica_id: str) -> str:
    return f"fss:replica:{replica_id}"


# --- the entries of an events key -----------------------------------------------------------------
# The entry id carries the frame's seq, so a reader resumes from `Last-Event-ID` with XREAD and a
# retried XADD finds its id taken instead of adding the frame twice.
def entry_id(seq: int) -> str:
    return f"{seq}-0"


def entry_seq(entry_id: bytes) -> int:
    return int(entry_id.split(b"-", 1)[0])


# An entry as XREAD and XREVRANGE return it on the gateway's connections (RESP2, bytes: no
# decode_responses). redis-py types their answers for every protocol and decoding at once.
Entry = tuple[bytes, dict[bytes, bytes]]


def entry(frame: bytes, terminal: bool) -> dict[FieldT, EncodableT]:
    return {"f": frame, "t": 1} if terminal else {"f": frame}


def entry_frame(fields: dict[bytes, bytes]) -> bytes:
    return fields[b"f"]


def entry_is_terminal(fields: dict[bytes, bytes]) -> bool:
    return fields.get(b"t") == b"1"


# --- expiries: no key is left without one ---------------------------------------------------------
REPLICA_TTL = 6  # seconds; the heartbeat refreshes it every REPLICA_REFRESH
REPLICA_REFRESH = 2


def running_ttl(settings: Settings) -> int:
    """A stream's events and meta keys from its claim and first write: it may run
    `total_timeout`, then stays readable `stream_retention`."""
    return int(settings.total_timeout + settings.stream_retention)


def ended_ttl(settings: Settings) -> int:
    """A stream's events and meta keys from its terminal event on."""
    return int(settings.stream_retention)


def chat_lock_ttl(settings: Settings) -> int:
    """The chat lock outlives the longest run by a minute, in case its release never comes."""
    return int(settings.total_timeout) + 60
