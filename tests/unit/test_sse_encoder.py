"""The SSE encoder, read back by two independent SSE parsers (httpx-sse and sseclient-py)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from httpx_sse._decoders import SSEDecoder, SSELineDecoder
from hypothesis import example, given
from hypothesis import strategies as st
from sseclient import SSEClient

from flowise_sse.errors import BadRequest
from flowise_sse.events import Event
from flowise_sse.streams.sse_encoder import encode, parse_event_id

# Any code point, lone surrogates included (a 1.x Flowise's socket.io JSON can carry them).
ANY_TEXT = st.text(st.characters() | st.characters(categories=["Cs"]))
LINE_BREAKS = st.sampled_from(["\r", "\n", "\r\n", "\u2028", "\u2029", "\x85", "\x00", "\x0b", "\x0c", "\ufeff"])
TRICKY_TEXT = st.lists(st.one_of(ANY_TEXT, LINE_BREAKS, st.just("data: "), st.just(": x")), max_size=8).map("".join)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False)
    | TRICKY_TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(TRICKY_TEXT, children, max_size=4),
    max_leaves=12,
)
STREAM_IDS = st.from_regex(r"[0-9a-f]{32}", fullmatch=True)


def httpx_sse_events(raw: bytes) -> list[Any]:
    lines, decoder = SSELineDecoder(), SSEDecoder()
    events = []
    for line in [*lines.decode(raw.decode()), *lines.flush()]:
        sse = decoder.decode(line)
        if sse is not None:
            events.append(sse)
    return events


def sseclient_events(raw: bytes) -> list[Any]:
    return list(SSEClient([raw]).events())


def same_json(a: Any, b: Any) -> bool:
    # json, not orjson: a lone surrogate's escape is valid JSON (a browser's JSON.parse takes it).
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


@given(stream_id=STREAM_IDS, seq=st.integers(1, 10**12), name=TRICKY_TEXT, data=JSON,
       retry=st.none() | st.integers(1, 10**6))
@example(stream_id="a" * 32, seq=1, name="token", data={"text": "line\r\nbreak\rcr\nlf\u2028ls\x00nul"}, retry=2000)
@example(stream_id="a" * 32, seq=2, name="evil\n\ndata: x\r", data="\ud83d", retry=None)
def test_encode_anyEvent_thenBothReferenceParsersReadBackTheSameEvent(stream_id, seq, name, data, retry):
    frame = encode(stream_id, seq, Event(name, data), retry)
    frame.decode("utf-8")  # valid UTF-8 on the wire, always
    assert frame.endswith(b"\n\n") and frame.count(b"\n\n") == 1 and b"\r" not in frame
    # No line break of any kind, str.splitlines()'s included: every line reader sees whole lines.
    lines = frame.decode().splitlines()
    assert lines[-1] == "" and lines[-2] == f"id: {stream_id}:{seq}"  # id last
    assert len(lines) == (5 if retry else 4)
    # A name holds no line break of any kind (each becomes `_`) and is never empty (`message`).
    expected_name = re.sub("[\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]", "_", name) or "flowise.message"
    expected_name = expected_name.encode("utf-8", "replace").decode()
    (ours,) = httpx_sse_events(frame)
    assert ours.event == expected_name and ours.id == f"{stream_id}:{seq}" and ours.retry == retry
    assert same_json(json.loads(ours.data), data)
    (theirs,) = sseclient_events(frame)
    assert theirs.event == expected_name and theirs.id == f"{stream_id}:{seq}"
    assert theirs.data == ours.data
    assert parse_event_id(ours.id) == (stream_id, seq)


def test_encode_thenTheDocumentedWireForm():
    assert encode("s1", 1, Event("token", {"text": "Hel"}), 2000) == (
        b'retry: 2000\nevent: token\ndata: {"text":"Hel"}\nid: s1:1\n\n')
    assert encode("s1", 2, Event("end", {"text": "a\nb\u2028"})) == (
        b'event: end\ndata: {"text":"a\\nb\\u2028"}\nid: s1:2\n\n')


def test_encode_severalFrames_thenAStreamOfThemParsesToEachInOrder():
    events = [Event("start", {"streamId": "s"}), Event("token", {"text": "a\n\nb"}), Event("end", {"text": ""})]
    raw = b"".join(encode("s", n, event, 2000 if n == 1 else None) for n, event in enumerate(events, 1))
    parsed = httpx_sse_events(raw)
    assert [(e.event, e.id, json.loads(e.data)) for e in parsed] == [
        (e.event, f"s:{n}", e.data) for n, e in enumerate(events, 1)]
    assert [e.data for e in sseclient_events(raw)] == [e.data for e in parsed]


# --- Last-Event-ID ------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [
    ("abc:0", ("abc", 0)),
    ("abc:17", ("abc", 17)),
    ("  abc:17 \t", ("abc", 17)),  # headers may carry whitespace
    ("a:b:c:5", ("a:b:c", 5)),  # the seq is after the last colon
    ("abc:007", ("abc", 7)),
    ("s:" + "9" * 18, ("s", 10**18 - 1)),
])
def test_parseEventId_whenWellFormed_thenStreamAndSeq(value, expected):
    assert parse_event_id(value) == expected


@pytest.mark.parametrize("value", [
    "", "abc", ":5", "abc:", "abc:-1", "abc:+1", "abc:1.5", "abc:1e3", "abc: 5x", "abc:0x10",
    "abc:\u0665",  # an Arabic-Indic digit: isdigit() says yes, it is not a seq
    "abc:\u00b2",  # a superscript two: isdigit() says yes, int() says no
    "abc:" + "9" * 5000,  # past int()'s digit limit
])
def test_parseEventId_whenMalformed_then400NeverAnotherError(value):
    with pytest.raises(BadRequest) as caught:
        parse_event_id(value)
    assert caught.value.status == 400 and "Last-Event-ID" in caught.value.message
    assert len(caught.value.message) < 200  # the value is quoted, cut short
