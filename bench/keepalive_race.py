"""The upstream keep-alive race behind the 502 "Flowise is unreachable" under load (issue 16).

    python bench/keepalive_race.py 1.0   # client keepalive_expiry == server keep-alive timeout (1 s)
    python bench/keepalive_race.py 0.5   # client expiry shorter: no failure

A uvicorn server with a 1 s keep-alive timeout (Flowise: Node, 5 s; httpx default expiry: 5 s, the
same ratio), 300 clients that reuse their connection after 0.95-1.05 s idle.
"""

from __future__ import annotations

import asyncio
import random
import sys
import threading
import time

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

app = Starlette(routes=[Route("/", lambda r: PlainTextResponse("ok"), methods=["POST"])])
config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error", timeout_keep_alive=1)
server = uvicorn.Server(config)
threading.Thread(target=server.run, daemon=True).start()
while not server.started:
    time.sleep(0.01)
port = server.servers[0].sockets[0].getsockname()[1]


async def main(expiry: float) -> None:
    async with httpx.AsyncClient(limits=httpx.Limits(keepalive_expiry=expiry, max_keepalive_connections=256)) as c:
        async def one(i: int) -> str | None:
            await c.post(f"http://127.0.0.1:{port}/")
            await asyncio.sleep(random.uniform(0.95, 1.05))
            try:
                await c.post(f"http://127.0.0.1:{port}/")
                return None
            except httpx.HTTPError as e:
                return repr(e)
        res = []
        for _ in range(6):
            res += await asyncio.gather(*(one(i) for i in range(50)))
        bad = [r for r in res if r]
        print(f"keepalive_expiry={expiry}: {len(bad)}/{len(res)} failed; e.g. {bad[:1]}")


if __name__ == "__main__":
    asyncio.run(main(float(sys.argv[1]) if len(sys.argv) > 1 else 1.0))
