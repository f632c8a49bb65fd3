"""The normalizer's streamed text (what `end` carries and the reconciliations compare): kept in
joined runs of tokens, it must still be exactly the tokens in order, at every length."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from flowise_sse.events import TOKEN
from flowise_sse.upstream.normalizer import TEXT_RUN, Normalizer
from flowise_sse.upstream.prediction import Prediction


def normalizer() -> Normalizer:
    return Normalizer("flow", Prediction.build("q", None, None), "sse")


@given(st.lists(st.text(max_size=5), max_size=4 * TEXT_RUN + 3))
def test_text_whenTokensStreamed_thenExactlyTheirJoinAtEveryStep(tokens: list[str]) -> None:
    n = normalizer()
    sent = ""
    for token in tokens:
        event = n.feed(TOKEN, token)
        if token:
            assert event is not None and event.data == {"text": token}
            sent += token
        else:
            assert event is None  # an empty token carries nothing
        assert n.text == sent


def test_text_whenManyTokens_thenHeldInRunsNotOneStrPerToken() -> None:
    n = normalizer()
    for i in range(10 * TEXT_RUN + 5):
        n.feed(TOKEN, f"t{i} ")
    assert n.text == "".join(f"t{i} " for i in range(10 * TEXT_RUN + 5))
    assert len(n._runs) == 10 and len(n._tail) == 5
