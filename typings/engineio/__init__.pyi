from typing import Any

from . import packet as packet

class AsyncClient:
    async def _receive_packet(self, pkt: packet.Packet) -> None: ...
    async def _trigger_event(self, event: str, *args: Any, run_async: bool = False, **kwargs: Any) -> Any: ...
