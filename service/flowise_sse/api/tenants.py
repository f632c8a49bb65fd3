"""Gateway keys as tenants: what each key is, what it may reach, and the names it gives chats.

Every stream, chat, file and feedback belongs to the key that made it; another key finds nothing
there (404), cannot stop it, and cannot block its chats. A key comes from `FLOWISE_SSE_API_KEYS`
(every chatflow) or from `FLOWISE_SSE_KEYS_FILE`, a TOML file of `[[key]]` tables:

    [[key]]
    label = "support-site"            # in logs and metrics, never the key itself
    key = "sk-..."                    # or key_sha256 = "<hex digest of the key>"
    chatflows = ["<chatflow id>", "Support bot"]   # ids or names; omitted: every chatflow
    flow_data = true                  # may list chatflows with ?full=true (their whole flowData)

A key is known by the SHA-256 of its value only; no key is held in memory as given.
"""

from __future__ import annotations

import hashlib
import hmac
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

# The chat ids a keyed caller names are its own: Flowise gets `<tenant prefix>.<chatId>`, so two
# keys' "alice" are two Flowise chats (and memory sessions). The prefix is fixed-length: no chat id
# a caller can name is another tenant's.
CHAT_PREFIX_CHARS = 16


@dataclass(frozen=True, slots=True)
class Tenant:
    id: str  # the key's SHA-256, hex: what streams, chats and slots belong to
    label: str
    chatflows: frozenset[str] | None = None  # chatflow ids or names it may use; None: all
    flow_data: bool = False

    def upstream_chat_id(self, chat_id: str) -> str:
        """The chat id Flowise gets for this tenant's `chat_id` (stable, documented)."""
        return f"{self.id[:CHAT_PREFIX_CHARS]}.{chat_id}"

    def client_chat_id(self, upstream_chat_id: str) -> str:
        prefix = self.id[:CHAT_PREFIX_CHARS] + "."
        return upstream_chat_id[len(prefix):] if upstream_chat_id.startswith(prefix) else upstream_chat_id


def key_digest(key: str | bytes) -> str:
    return hashlib.sha256(key if isinstance(key, bytes) else key.encode()).hexdigest()


class KeysFileError(ValueError):
    """FLOWISE_SSE_KEYS_FILE cannot be used: the message says where and why."""


def load_keys_file(path: Path) -> list[Tenant]:
    try:
        document = tomllib.loads(path.read_text())
    except OSError as exc:
        raise KeysFileError(f"FLOWISE_SSE_KEYS_FILE {path}: cannot be read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise KeysFileError(f"FLOWISE_SSE_KEYS_FILE {path}: not TOML ({exc})") from None
    entries = document.get("key", [])
    unknown = set(document) - {"key"}
    if unknown or not isinstance(entries, list):
        raise KeysFileError(f"FLOWISE_SSE_KEYS_FILE {path}: expected [[key]] tables only, found {sorted(unknown)}")
    return [_tenant(path, index, entry) for index, entry in enumerate(entries)]


def _tenant(path: Path, index: int, entry: Any) -> Tenant:
    where = f"FLOWISE_SSE_KEYS_FILE {path}, key #{index + 1}"
    if not isinstance(entry, dict):
        raise KeysFileError(f"{where}: not a table")
    unknown = set(entry) - {"label", "key", "key_sha256", "chatflows", "flow_data"}
    if unknown:
        raise KeysFileError(f"{where}: unknown fields {sorted(unknown)}")
    key, digest = entry.get("key"), entry.get("key_sha256")
    if (key is None) == (digest is None):
        raise KeysFileError(f"{where}: give exactly one of key or key_sha256")
    if key is not None and (not isinstance(key, str) or not key.strip()):
        raise KeysFileError(f"{where}: key must be a non-empty string")
    if digest is not None and (not isinstance(digest, str) or len(digest) != 64
                               or any(c not in "0123456789abcdef" for c in digest.lower())):
        raise KeysFileError(f"{where}: key_sha256 must be 64 hex digits")
    # No key: then a digest, a str (both checked above; mypy does not carry that across the ifs).
    tenant_id = key_digest(key.strip()) if key is not None else cast(str, digest).lower()
    label = entry.get("label", f"key-{tenant_id[:8]}")
    chatflows = entry.get("chatflows")
    if chatflows is not None and (not isinstance(chatflows, list) or not all(isinstance(c, str) for c in chatflows)):
        raise KeysFileError(f"{where}: chatflows must be a list of chatflow ids or names")
    flow_data = entry.get("flow_data", False)
    if not isinstance(label, str) or not label or not isinstance(flow_data, bool):
        raise KeysFileError(f"{where}: label must be a non-empty string and flow_data true or false")
    return Tenant(tenant_id, label, frozenset(chatflows) if chatflows is not None else None, flow_data)


class Tenants:
    """Every key the gateway takes, by digest. Empty: the gateway is open (one shared space)."""

    def __init__(self, plain_keys: Iterable[str], keys_file: Path | None) -> None:
        tenants = [Tenant(key_digest(key), f"key-{key_digest(key)[:8]}") for key in plain_keys if key]
        if keys_file is not None:
            tenants += load_keys_file(keys_file)
        self._by_id: dict[str, Tenant] = {}
        for tenant in tenants:
            if tenant.id in self._by_id:
                raise KeysFileError(f"the key labelled {tenant.label!r} is given twice")
            self._by_id[tenant.id] = tenant
        labels = [tenant.label for tenant in tenants]
        if len(set(labels)) != len(labels):
            raise KeysFileError("two keys in FLOWISE_SSE_KEYS_FILE have the same label")

    def __bool__(self) -> bool:
        return bool(self._by_id)

    def __len__(self) -> int:
        return len(self._by_id)

    def find(self, given: bytes) -> Tenant | None:
        """The tenant whose key is `given` (bytes as sent: a header may hold any byte).
        Compared against every digest, always, so timing says nothing of which one matched."""
        digest = key_digest(given)
        found = None
        for tenant_id, tenant in self._by_id.items():
            if hmac.compare_digest(tenant_id, digest):
                found = tenant
        return found
