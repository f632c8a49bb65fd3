"""What one relayed token costs in the gateway's own codecs: the SSE encoder and decoder (the event
log's frames), the OpenAI chunk encoder, and the parser of Flowise's event stream.

    .venv/bin/python -m pytest bench/micro        # not part of the test suite (testpaths = tests)
"""

from __future__ import annotations

import asyncio

from flowise_sse.api.openai_chunks import ChunkEncoder
from flowise_sse.events import token
from flowise_sse.streams.sse_encoder import decode, encode
from flowise_sse.upstream.flowise_frames import event_payloads

STREAM_ID = "0f3c" * 8
TOKEN = token(" word")


def test_sseEncoder_oneToken(benchmark):
    assert benchmark(encode, STREAM_ID, 42, TOKEN).endswith(b"\n\n")


def test_sseDecoder_oneFrame(benchmark):
    assert benchmark(decode, encode(STREAM_ID, 42, TOKEN)) == TOKEN


def test_openaiChunkEncoder_oneToken(benchmark):
    encoder = ChunkEncoder("chatcmpl-1", 1700000000, "flow", include_usage=False)
    assert benchmark(encoder.feed, TOKEN).startswith(b"data: ")


def test_flowiseFrameParser_aThousandTokenFrames(benchmark):
    """One call parses 1,000 frames as Flowise writes them (one chunk each): a token's cost is a thousandth."""
    chunks = [b'message:\ndata:{"event":"token","data":"w%d "}\n\n' % i for i in range(1000)]

    async def parse() -> int:
        async def source():
            for chunk in chunks:
                yield chunk

        return len([payload async for payload in event_payloads(source())])

    loop = asyncio.new_event_loop()
    assert benchmark(lambda: loop.run_until_complete(parse())) == 1000
    loop.close()
