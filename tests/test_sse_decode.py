"""The OpenAI route reads runs back through `sse_encoder.decode`: it must invert `encode` exactly."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from flowise_sse.events import Event
from flowise_sse.streams.sse_encoder import decode, encode

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


# Names without line breaks of any kind: the encoder turns those into `_` (str.splitlines()-style
# readers would cut the field line there).
@given(name=st.text(min_size=1).filter(lambda s: len(s.splitlines()) == 1 and s.splitlines()[0] == s),
       data=json_values,
       seq=st.integers(1, 10**9), retry=st.none() | st.integers(1, 10**6))
def test_decode_whenAnyEncodedEvent_thenTheSameEventBack(name, data, seq, retry):
    assert decode(encode("f" * 32, seq, Event(name, data), retry)) == Event(name, data)


def test_decode_whenLoneSurrogate_thenTheSameEventBack():
    # 1.x socket.io JSON can carry one; it travels as its JSON escape, which orjson cannot read.
    event = Event("token", {"text": "a\ud800b"})
    assert decode(encode("f" * 32, 1, event)) == event


def test_upstreamJsonBody_whenLoneSurrogate_thenEscapedNotAnError():
    # A caller's `\udXXX` escape reaches Flowise as the same escape (httpx's `json=` would raise).
    import json

    from flowise_sse.upstream.flowise_client import json_body

    body = {"question": "a\ud800b", "history": [{"content": "ü"}]}
    assert json.loads(json_body(body)) == body
    assert json_body({"question": "ü"}) == '{"question":"ü"}'.encode()
