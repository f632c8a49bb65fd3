"""Contract tests: what the gateway's overrides of private parts of its dependencies rely on.

Each file pins one dependency's private surface (names, signatures, the behaviour replaced or
relied on) against a real server on loopback. A failure names the override to revisit; the
overrides are listed in ARCHITECTURE.md, "Divergences from upstream".
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any


def revisit(dependency: str, override: str, what: str) -> str:
    """The failure message: which dependency moved, what changed, and where the override lives."""
    return (f"{dependency} no longer does what {override} relies on: {what}. Revisit that override "
            "(ARCHITECTURE.md, 'Divergences from upstream').")


def parameters(function: Callable[..., Any]) -> list[str]:
    """The parameter names of a function, as an override must accept and pass them."""
    return list(inspect.signature(function).parameters)
