"""What callers may put in `overrideConfig`: `FLOWISE_SSE_OVERRIDE_CONFIG`.

`overrideConfig` reaches Flowise's nodes as input overrides. From 2.1.4 Flowise applies only
those a chatflow's API configuration allows; before it, any caller can override any input of any
node: point a chat model's base URL at their own host and receive the LLM credential Flowise
sends with it. So the gateway has a policy of its own:

- `any`: passed on as is (Flowise's own allowlist, where it has one, still applies);
- `off`: a body carrying `overrideConfig` is refused (400), on every route;
- `sessionId,vars.customer,...`: only those keys; a dotted name allows one nested key, a plain
  name the whole of that key's value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..errors import BadRequest

_PATH = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
# The first release whose chatflows have an override allowlist (Flowise PR #3467).
FLOWISE_ALLOWLIST_SINCE = (2, 1, 4)


class OverridePolicy:
    def __init__(self, setting: str) -> None:
        self.setting = setting.strip()
        self.allowed: frozenset[tuple[str, ...]] | None = None  # None: any; empty: off
        if self.setting == "any":
            return
        if self.setting == "off":
            self.allowed = frozenset()
            return
        names = [name.strip() for name in self.setting.split(",") if name.strip()]
        bad = [name for name in names if not _PATH.match(name)]
        if not names or bad:
            raise ValueError(
                f"FLOWISE_SSE_OVERRIDE_CONFIG must be off, any, or comma-separated key names (dots for "
                f"nested keys), not {setting!r}"
            )
        self.allowed = frozenset(tuple(name.split(".")) for name in names)

    @property
    def open(self) -> bool:
        return self.allowed is None

    def check(self, override: Mapping[str, Any] | None) -> None:
        """Raises a 400 naming the setting when `override` holds a key the policy refuses."""
        if override is None or self.allowed is None:
            return
        if not self.allowed:
            raise BadRequest("overrideConfig is not accepted by this gateway (FLOWISE_SSE_OVERRIDE_CONFIG=off)")
        refused = sorted(".".join(path) for path in _leaf_paths(override, ()) if not self._allows(path))
        if refused:
            shown = ", ".join(refused[:5]) + (f" and {len(refused) - 5} more" if len(refused) > 5 else "")
            raise BadRequest(f"overrideConfig may not set {shown} (FLOWISE_SSE_OVERRIDE_CONFIG allows "
                             f"{', '.join(sorted('.'.join(p) for p in self.allowed))})")

    def _allows(self, path: tuple[str, ...]) -> bool:
        return any(path[:len(allowed)] == allowed for allowed in self.allowed or ())


def _leaf_paths(value: Mapping[str, Any], prefix: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Each key path down to a value that is not an object (an empty object is a leaf too)."""
    paths: list[tuple[str, ...]] = []
    for key, child in value.items():
        path = (*prefix, str(key))
        if isinstance(child, Mapping) and child:
            paths.extend(_leaf_paths(child, path))
        else:
            paths.append(path)
    return paths
