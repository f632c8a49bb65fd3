"""The Flowise frame parser against httpx-sse as the reference, on generated streams cut anywhere."""

from __future__ import annotations

import asyncio

import pytest
from httpx_sse._decoders import SSEDecoder, SSELineDecoder
from hypothesis import example, given
from hypothesis import strategies as st

from flowise_sse.upstream.flowise_frames import event_payloads


def reference(raw: bytes) -> list[bytes]:
    """Each event's data per the WHATWG rules, read by httpx-sse's line splitter and decoder.

    One correction: httpx-sse also dispatches a block that has no data field (an `event:` or `id:`
    alone), with data "" as for `data:`; the spec dispatches no event when the data buffer is
    empty (no data field), and an event with data "" when it holds one empty line (`data:`)."""
    lines, decoder = SSELineDecoder(), SSEDecoder()
    events, has_data = [], False
    for line in [*lines.decode(raw.decode()), *lines.flush()] if raw else []:
        has_data |= line.partition(":")[0] == "data"
        sse = decoder.decode(line)
        if not line:
            if has_data:
                events.append(sse.data.encode())
            has_data = False
    return events


def parse(chunks: list[bytes]) -> list[bytes]:
    async def source():
        for chunk in chunks:
            yield chunk

    async def collect():
        return [data async for data in event_payloads(source())]

    return asyncio.run(collect())


def cut(raw: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(point, len(raw)) for point in cuts})
    return [raw[a:b] for a, b in zip([0, *points], [*points, len(raw)], strict=True)]


# Values: any text but line breaks (those end the line), with the characters that matter here.
VALUE = st.lists(st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=4)
                | st.sampled_from([":", " ", "data:", "\u2028", "\x00", "é"]), max_size=4).map("".join)
ENDING = st.sampled_from(["\n", "\r\n", "\r"])
LINE = st.one_of(
    st.builds(lambda v: "data:" + v, VALUE),
    st.builds(lambda v: "data: " + v, VALUE),
    st.just("data"),  # a field name alone: an empty value
    st.just("message:"), st.just("message"),
    st.builds(lambda v: ":" + v, VALUE),  # a comment
    st.builds(lambda name, v: name + v,
              st.sampled_from(["event:", "id:", "retry:", "datax:", " data:", "Data:"]), VALUE),
)


@st.composite
def streams(draw) -> bytes:
    """Blocks of lines, each line with any ending; sometimes an unfinished last event."""
    text = ""
    for _ in range(draw(st.integers(0, 6))):
        for line in draw(st.lists(LINE, max_size=4)):
            text += line + draw(ENDING)
        text += draw(ENDING)  # the blank line that ends the event
    if draw(st.booleans()):
        text += draw(LINE) + draw(st.sampled_from(["", "\n", "\r", "\r\n"]))
    return text.encode()


# Flowise's own frames, as each version writes them.
FLOWISE = st.lists(st.builds(
    lambda prefix, payload: prefix + payload + "\n\n",
    st.sampled_from(["message:\ndata:", "message\ndata:", "data:", "data: "]),
    st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), min_size=1, max_size=30),
), max_size=8).map(lambda frames: "".join(frames).encode())

SOUP = st.lists(st.sampled_from(["data", ":", " ", "\r", "\n", "\r\n", "message", "x", "é", "event", "\u2028"]),
                max_size=40).map(lambda parts: "".join(parts).encode())


@given(raw=st.one_of(streams(), FLOWISE, SOUP), cuts=st.lists(st.integers(0, 400), max_size=12))
@example(raw=b"data:\n\n", cuts=[])  # an empty data field: an event whose data is ""
@example(raw=b"data\n\n", cuts=[])  # the field name alone, the same
@example(raw=b"event: x\n\n", cuts=[])  # no data field: no event
@example(raw=b": has data: inside\nfoo\n\n", cuts=[])
@example(raw=b"data:x\r\r", cuts=[7])  # the stream ends on a CR that ends the event
@example(raw=b"data:x\r\n\r\n", cuts=[7, 8])  # CRLF cut between its CR and LF
def test_parser_anyStreamCutAnywhere_thenTheReferenceParsersEvents(raw, cuts):
    assert parse(cut(raw, cuts)) == reference(raw)


@given(raw=st.one_of(streams(), FLOWISE))
def test_parser_oneByteAtATime_thenTheSameAsWhole(raw):
    assert parse([raw[i:i + 1] for i in range(len(raw))]) == parse([raw]) == reference(raw)


def test_parser_flowiseCapture_thenEachJsonPayload():
    raw = (b'message:\ndata:{"event":"start","data":""}\n\n'
           b'message:\ndata:{"event":"token","data":"Hi"}\n\n'
           b':heartbeat\n\n'
           b'message\ndata:{"event":"end","data":"[DONE]"}\n\n')
    assert parse([raw]) == [b'{"event":"start","data":""}', b'{"event":"token","data":"Hi"}',
                            b'{"event":"end","data":"[DONE]"}']


@pytest.mark.parametrize(("raw", "expected"), [
    (b"data: a\ndata:b\ndata:  c\n\n", [b"a\nb\n c"]),  # joined with LF; one space dropped, not two
    (b"data:x\n\ndata:y", [b"x"]),  # an unfinished last event is not dispatched
    (b"data:x\n", []),
    (b"\n\n\n\ndata:x\n\n", [b"x"]),  # blank lines alone dispatch nothing
])
def test_parser_sseRules(raw, expected):
    assert parse([raw]) == expected == reference(raw)
