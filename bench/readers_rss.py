"""What readers that never read cost: the gateway's RSS with 50 of them on one 4 MB stream.

    python bench/readers_rss.py [--readers 50] [--tokens 4000] [--token-bytes 1000]

Starts the package's emulated Flowise and a gateway process, makes one finished stream of
`tokens` x `token-bytes`, then opens `readers` connections to its `eventsUrl` that send their
request and never read a byte. Prints the gateway's RSS before and after (once it stops growing).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time

import httpx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from soak import DEMO_CHATFLOW_ID, Gateway, free_port, rss_mb  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readers", type=int, default=50)
    parser.add_argument("--tokens", type=int, default=4000)
    parser.add_argument("--token-bytes", type=int, default=1000)
    args = parser.parse_args()
    port = free_port()
    emulator = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "servers.py"),
                                 "emulator", "--version", "3.1.4", "--port", str(port)])
    time.sleep(1.5)
    gateway = Gateway({"FLOWISE_URL": f"http://127.0.0.1:{port}"}).start()
    sockets: list[socket.socket] = []
    try:
        body = {"question": "big", "overrideConfig": {"emulator": {"tokens": ["x" * args.token_bytes] * args.tokens}}}
        text = httpx.post(f"{gateway.url}/v1/chatflows/{DEMO_CHATFLOW_ID}/stream", json=body, timeout=120).text
        stream_id = text.split("id: ", 1)[1].split(":", 1)[0]
        time.sleep(1)
        before = rss_mb(gateway.proc.pid)  # type: ignore[union-attr]
        for _ in range(args.readers):
            sock = socket.create_connection(("127.0.0.1", gateway.port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(f"GET /v1/streams/{stream_id}/events HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            sockets.append(sock)
        last, after = 0.0, before
        for _ in range(60):  # until RSS settles
            time.sleep(0.5)
            after = rss_mb(gateway.proc.pid)  # type: ignore[union-attr]
            if abs(after - last) < 0.5:
                break
            last = after
        print(f"stream {len(text) / 2**20:.1f} MB, {args.readers} readers that never read: "
              f"RSS {before:.0f} MB -> {after:.0f} MB (+{after - before:.0f} MB)")
    finally:
        for sock in sockets:
            sock.close()
        gateway.stop()
        emulator.kill()


if __name__ == "__main__":
    main()
