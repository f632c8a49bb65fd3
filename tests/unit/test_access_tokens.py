"""Access alone: API keys, the eventsUrl capability tokens, and the Origin check."""

from __future__ import annotations

import hashlib
import re
from types import SimpleNamespace
from urllib.parse import urlencode

import pytest
from starlette.requests import Request

from flowise_sse.api import access as access_module
from flowise_sse.api import tenants as tenants_module
from flowise_sse.api.access import Access
from flowise_sse.errors import Forbidden, NotAuthenticated
from flowise_sse.settings import Settings

KEYS = ["key-one-0123456789", "key-two-abcdefghij"]
STREAM, OTHER = "a" * 32, "b" * 32


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock(1_800_000_000.9)
    monkeypatch.setattr(access_module, "time", SimpleNamespace(time=clock.time))
    return clock


def make(**overrides) -> Access:
    return Access(Settings(**{"api_keys": KEYS, "token_ttl": 60, **overrides}))


def request(headers: dict[str, str] | None = None, **query: str) -> Request:
    return Request({
        "type": "http", "method": "GET", "path": "/", "query_string": urlencode(query).encode(),
        "headers": [(name.lower().encode("latin-1"), value.encode("latin-1"))
                    for name, value in (headers or {}).items()],
    })


def allowed(access: Access, stream_id: str, token: str) -> bool:
    try:
        access.caller_or_token(request(token=token), stream_id)
    except NotAuthenticated as exc:
        assert exc.status == 401 and exc.code == "not_authenticated"
        return False
    return True


# --- API keys -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("authorization", "ok"), [
    (f"Bearer {KEYS[0]}", True),
    (f"Bearer {KEYS[1]}", True),
    (f"bearer {KEYS[0]}", True),  # the scheme is case-insensitive
    (f"Bearer {KEYS[0]}  ", True),
    (None, False),
    ("", False),
    ("Bearer", False),
    ("Bearer ", False),
    (f"Basic {KEYS[0]}", False),
    (KEYS[0], False),
    (f"Bearer {KEYS[0][:-1]}", False),  # a prefix
    (f"Bearer {KEYS[0]}x", False),
    (f"Bearer {KEYS[0].upper()}", False),
    (f"Bearer {KEYS[0]},{KEYS[1]}", False),
])
def test_key_thenOnlyAnExactConfiguredKeyUnderBearerPasses(authorization, ok):
    access = make()
    headers = {} if authorization is None else {"Authorization": authorization}
    assert access.has_key(request(headers)) is ok
    if ok:
        key = authorization.split()[1]
        assert access.caller(request(headers)).tenant.id == hashlib.sha256(key.encode()).hexdigest()
    else:
        with pytest.raises(NotAuthenticated):
            access.caller(request(headers))


def test_key_whenNoKeysConfigured_thenOpen():
    access = make(api_keys=[])
    assert access.open and access.has_key(request())
    assert access.caller(request()).tenant is None


def test_key_comparedWithEveryConfiguredKey_notStoppingAtTheFirstMatch(monkeypatch):
    compared = []
    real = tenants_module.hmac.compare_digest

    def spy(a, b):
        compared.append(a)
        return real(a, b)

    monkeypatch.setattr(tenants_module.hmac, "compare_digest", spy)
    make().has_key(request({"Authorization": f"Bearer {KEYS[0]}"}))
    # timing says nothing about which one matched
    assert compared == [hashlib.sha256(key.encode()).hexdigest() for key in KEYS]


@pytest.mark.parametrize("raw", [b"Bearer \xff\xfe", b"Bearer caf\xc3\xa9", b"Bearer \x00", b"\xff"])
def test_key_whenNotAscii_thenRefusedAs401NeverAnotherError(raw):
    scope = {"type": "http", "method": "GET", "path": "/", "query_string": b"", "headers": [(b"authorization", raw)]}
    with pytest.raises(NotAuthenticated):
        make().caller(Request(scope))


# --- capability tokens --------------------------------------------------------------------------


def test_token_thenUrlSafe_andGoodForItsStreamOnly(clock):
    access = make()
    token = access.token_for(STREAM)
    assert re.fullmatch(r"\d+\.[A-Za-z0-9_-]{32}", token)
    assert allowed(access, STREAM, token)
    assert not allowed(access, OTHER, token)
    assert not allowed(access, STREAM[:-1], token)


def test_token_validForItsWholeTtl_thenRefused(clock):
    access = make(token_ttl=60)
    issued = clock.now
    token = access.token_for(STREAM)
    clock.now = issued + 60 - 0.001
    assert allowed(access, STREAM, token), "a token lives at least its TTL"
    clock.now = issued + 61.001
    assert not allowed(access, STREAM, token)


@pytest.mark.parametrize("tamper", [
    lambda t: "",
    lambda t: t.split(".")[0],
    lambda t: "." + t.split(".")[1],
    lambda t: str(int(t.split(".")[0]) + 3600) + "." + t.split(".")[1],  # a later expiry, same signature
    lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),
    lambda t: t.split(".")[0] + "." + t.split(".")[1][:-1],
    lambda t: t + "=",
    lambda t: "-" + t,
    lambda t: "\u00b2." + t.split(".")[1],  # isdigit() but not int()
    lambda t: "9" * 5000 + "." + t.split(".")[1],  # past int()'s digit limit
    lambda t: t.replace(".", ":"),
    lambda t: t.split(".")[0] + ".\u00e9" + t.split(".")[1][1:],  # not ASCII: compared as bytes, a 401
])
def test_token_whenTampered_thenRefusedNeverAnotherError(clock, tamper):
    access = make()
    assert not allowed(access, STREAM, tamper(access.token_for(STREAM)))


@pytest.mark.parametrize("query", [b"token=1800000099.%FF%FE", b"token=1800000099.%C3%A9", b"token=%00.%00"])
def test_token_whenItsBytesAreNotAscii_then401NeverA500(clock, query):
    scope = {"type": "http", "method": "GET", "path": "/", "query_string": query, "headers": []}
    with pytest.raises(NotAuthenticated):
        make().caller_or_token(Request(scope), STREAM)


def test_token_fromAReplicaWithTheSameSecret_thenAccepted_otherwiseRefused(clock):
    token = make(token_secret="shared").token_for(STREAM)
    assert allowed(make(token_secret="shared"), STREAM, token)
    assert not allowed(make(token_secret="another"), STREAM, token)
    assert not allowed(make(), STREAM, token)
    assert not allowed(make(), STREAM, make().token_for(STREAM))  # unset: a random secret per process


def test_keyOrToken_whenTheKeyIsGiven_thenNoTokenNeeded():
    who = make().caller_or_token(request({"Authorization": f"Bearer {KEYS[1]}"}), STREAM)
    assert who.tenant is not None and not who.by_token


# --- Origin -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("origin", "host", "ok"), [
    (None, "gw.example:8080", True),  # not a browser, or same-origin GET
    ("https://app.example", "gw.example:8080", True),  # allow-listed
    ("http://gw.example:8080", "gw.example:8080", True),  # same origin
    ("https://gw.example:8080", "gw.example:8080", True),  # same host behind a TLS proxy
    ("https://evil.example", "gw.example:8080", False),
    ("http://gw.example:9090", "gw.example:8080", False),  # another port is another origin
    ("http://gw.example", "gw.example:8080", False),
    ("http://gw.example:8080.evil.example", "gw.example:8080", False),
    ("null", "gw.example:8080", False),  # a sandboxed frame or a file: page
    ("https://app.example.evil", "gw.example:8080", False),
    ("https://APP.example", "gw.example:8080", False),
])
def test_origin_thenAllowListedOrSameHostOnly(origin, host, ok):
    access = make(cors_origins=["https://app.example"])
    headers = {"Host": host} | ({"Origin": origin} if origin else {})
    if ok:
        access.check_origin(request(headers))
    else:
        with pytest.raises(Forbidden) as caught:
            access.check_origin(request(headers))
        assert caught.value.status == 403 and "FLOWISE_SSE_CORS_ORIGINS" in caught.value.message
