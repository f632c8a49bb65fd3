from typing import Any

OPEN: int
CLOSE: int
PING: int
PONG: int
MESSAGE: int
UPGRADE: int
NOOP: int

class Packet:
    packet_type: int
    data: Any
    binary: bool
    def __init__(self, packet_type: int = ..., data: Any = None, encoded_packet: Any = None) -> None: ...
