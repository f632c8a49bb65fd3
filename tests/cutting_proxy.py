"""A TCP proxy on loopback, in threads, that can cut every connection through it at once: a
network blip, for the clients that must resume after one (the chat page's EventSource, the
gateway client)."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from typing import Self


class CuttingProxy:
    """A TCP proxy in threads in front of the gateway that can cut every open connection at once."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests: list[str] = []  # every request head the browser sent
        self._open: set[socket.socket] = set()
        self._upstreams: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._running = True
        threading.Thread(target=self._accept, daemon=True).start()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self._running = False
        self.listener.close()
        self.cut()

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._open) // 2

    def cut(self) -> int:
        """Close every open connection (both sides); new ones are still accepted."""
        with self._lock:
            sockets, self._open = list(self._open), set()
            upstreams, self._upstreams = self._upstreams, set()
        # The gateway side goes first; each pump then ends its pair from its own thread.
        for group in (upstreams, [sock for sock in sockets if sock not in upstreams]):
            for sock in group:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        return len(sockets) // 2

    def _accept(self) -> None:
        while self._running:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self._open |= {client, upstream}
                self._upstreams.add(upstream)
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_browser: bool) -> None:
        try:
            while data := src.recv(65536):
                if from_browser and re.match(rb"[A-Z]+ /", data):
                    self.requests.append(data.split(b"\r\n\r\n", 1)[0].decode("latin-1"))
                dst.sendall(data)
        except OSError:
            pass
        finally:
            # shutdown() first: close() alone sends no FIN while the other pump thread is blocked
            # in recv() on the same socket (the kernel keeps the file open for that call), and
            # the browser would wait on a connection that looks alive forever.
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            with self._lock:
                self._open -= {src, dst}
                self._upstreams -= {src, dst}
