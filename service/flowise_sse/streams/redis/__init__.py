"""The Redis mirror's parts, one concept each; `streams/redis_mirror.py` composes them.

- `keys`: every key, channel and entry id, and every expiry.
- `calls`: the clients, every call reported to the metrics, the taken-id answer.
- `writer`: this replica's streams into Redis, batched, ordered, retried, never dropped.
- `reader`: another replica's stream followed from Redis, orphans closed.
- `replicas`: this replica's heartbeat, and whether a stream's owner is alive.
- `claims`: the cross-replica chat lock.
- `aborts`: the abort channel.
- `responses`: the Responses API's records (what response a stream is), on any replica.
"""
