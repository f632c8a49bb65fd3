"""What the gateway says about itself when it starts: one line of its set-up, then a warning that
names the exact setting for each thing that will not work.

Pointing the gateway at a Flowise that needs a credential it was not given used to leave it half
working in silence: `/readyz` ready, the listing and `/v1/models` failing. So the report asks
Flowise for what the routes will ask (its version, its chatflow listing) and says which setting
is missing for what, per Flowise line.
"""

from __future__ import annotations

import logging
import os

from ..errors import GatewayError, UpstreamUnauthorized
from ..settings import Settings, unknown_variables
from ..upstream import Upstream
from ..upstream.flowise_client import COOKIE_GATE_SINCE, KEY_GATE_SINCE, FlowiseVersion, parse_version, redacted_url
from .access import Access
from .override_policy import FLOWISE_ALLOWLIST_SINCE, OverridePolicy

logger = logging.getLogger("flowise_sse")

# What needs Flowise's management credential: the routes and gateway features it serves.
_MANAGEMENT_USES = ("the chatflow listing (GET /v1/chatflows, /v1/models, the chat page's chatflow list), "
                    "Flowise's own stop on DELETE, and the stored answer of a stream that streamed no token")


def summary(settings: Settings, access: Access) -> str:
    """The set-up in one line, secrets never shown (set or unset only)."""
    def given(value: object) -> str:
        return "set" if value else "unset"

    basic = settings.flowise_username and settings.flowise_password
    keys = f"{len(access.tenants)} key(s)" if not access.open else "none (open to anyone who can reach it)"
    return (
        f"flowise-sse: Flowise {redacted_url(settings.flowise_url)} "
        f"(FLOWISE_API_KEY {given(settings.flowise_api_key)}, FLOWISE_USERNAME/PASSWORD {given(basic)}); "
        f"Redis {_redis(settings)}; gateway keys {keys}; CORS origins {', '.join(settings.cors_origins) or 'none'}; "
        f"allowed hosts {', '.join(settings.allowed_hosts)}"
    )


def _redis(settings: Settings) -> str:
    if settings.redis_sentinels:
        return (f"Sentinel {', '.join(settings.redis_sentinels)} (primary {settings.redis_sentinel_master!r}, "
                f"FLOWISE_SSE_REDIS_SENTINEL_PASSWORD {'set' if settings.redis_sentinel_password else 'unset'}"
                f"{', over TLS' if settings.redis_sentinel_tls else ''})")
    if settings.redis_url is None:
        return "off (streams resume on this replica only)"
    url = ", ".join(redacted_url(url) for url in settings.redis_urls)
    return f"Cluster via {url}" if settings.redis_cluster else url


async def report_startup(settings: Settings, access: Access, policy: OverridePolicy, upstream: Upstream) -> str | None:
    """Log the start-up report; returns None when Flowise answered, else why not (for the
    banner, which then does not say "ready")."""
    logger.info(summary(settings, access))
    if access.open:
        logger.warning("flowise-sse: no FLOWISE_SSE_API_KEYS set: the gateway is open to anyone who can reach it")
    if unknown := unknown_variables(os.environ):
        # pydantic-settings drops them: a misspelt (or newer) setting would change nothing, silently.
        logger.warning("flowise-sse: unknown settings ignored (misspelt, or not of this version): %s",
                       ", ".join(unknown))
    try:
        await upstream.warm_up()
        version = await upstream.flowise.version()
    except UpstreamUnauthorized:
        # Before 2.1.2 the version route itself is a management route: the line is not known yet.
        logger.warning(
            "flowise-sse: Flowise refused the gateway's credentials for its version check: %s, or "
            "FLOWISE_TRANSPORT=socketio|sse to skip the check; until then streams and %s fail",
            _credential_needed(settings, None), _MANAGEMENT_USES)
        return "it refused the gateway's credentials"
    except GatewayError as exc:
        logger.warning("flowise-sse: Flowise not reachable yet (%s); will retry per request", exc.message)
        return exc.message
    logger.info("flowise-sse: Flowise %s, streaming over %s", version.version or "(version not said)",
                version.transport)
    try:
        await upstream.flowise.list_chatflows()
    except UpstreamUnauthorized:
        logger.warning("flowise-sse: Flowise %s refused the gateway's management credentials: %s; %s will fail",
                       version.version or "", _credential_needed(settings, version), _MANAGEMENT_USES)
    except GatewayError as exc:
        logger.warning("flowise-sse: Flowise's chatflow listing failed (%s)", exc.message)
    if policy.open and (version.version is None or parse_version(version.version) < FLOWISE_ALLOWLIST_SINCE):
        logger.warning(
            "flowise-sse: FLOWISE_SSE_OVERRIDE_CONFIG=any and Flowise %s has no override allowlist of its own "
            "(from 2.1.4): any caller can override any node input, a chat model's base URL included; set "
            "FLOWISE_SSE_OVERRIDE_CONFIG=off or the keys your clients need", version.version or "(version unknown)")
    return None


def _credential_needed(settings: Settings, version: FlowiseVersion | None) -> str:
    """Which setting this Flowise line takes for its management routes (flowise_client's rules);
    `version` None: the line is not known, every line's is named."""
    line = parse_version(version.version) if version and version.version else None
    have_key, have_basic = bool(settings.flowise_api_key), bool(settings.flowise_username and settings.flowise_password)
    if line is not None and line >= COOKIE_GATE_SINCE:
        need = "a Flowise API key in FLOWISE_API_KEY (on 3.x, a workspace key: Flowise, Settings, API Keys)"
    elif line is not None and line >= KEY_GATE_SINCE:
        need = ("FLOWISE_API_KEY (a Flowise API key), or FLOWISE_USERNAME and FLOWISE_PASSWORD (the basic auth "
                "Flowise runs with)")
    elif line is not None:
        need = "FLOWISE_USERNAME and FLOWISE_PASSWORD (the basic auth Flowise 1.x runs with)"
    else:
        need = ("FLOWISE_API_KEY (Flowise 2.x and 3.x: an API key; on 3.x a workspace key) or FLOWISE_USERNAME and "
                "FLOWISE_PASSWORD (1.x and 2.x: the basic auth Flowise runs with)")
    given = [name for name, ok in (("FLOWISE_API_KEY", have_key), ("FLOWISE_USERNAME/PASSWORD", have_basic)) if ok]
    return f"set {need}" + (f"; the {' and '.join(given)} given were refused" if given else "")
