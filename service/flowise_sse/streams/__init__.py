"""Stream runs and their event logs: in memory, encoded once as SSE, mirrored to Redis if set."""

from .manager import StreamManager, StreamRun
from .memory_store import MemoryStore

__all__ = ["MemoryStore", "StreamManager", "StreamRun"]
