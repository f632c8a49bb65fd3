"""What a prediction must hold to run: its chat, and a slot of its owner's.

Each is taken by a call that raises the refusal (409, 429) and returns what gives it back,
idempotently, so that admission can stack the give-backs and a run can call them early (its chat
at its terminal event) and again at its end without harm.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import ChatBusy, TooManyStreams

if TYPE_CHECKING:
    from .redis_mirror import RedisMirror


class ChatClaims:
    """One prediction per chat at a time: Flowise keys its streams and its memory by chatId and
    would mix two up. On this replica in a dict; across replicas with Redis's `SET NX` too."""

    def __init__(self, mirror: RedisMirror | None) -> None:
        self.mirror = mirror
        self._holders: dict[str, str] = {}  # chatId -> the claim's id (a stream id, or a prediction's)

    def __contains__(self, chat_id: str) -> bool:
        return chat_id in self._holders

    async def claim(
        self, chat_id: str, holder: str, tenant: str | None = None, *, stream: bool = True
    ) -> Callable[[], None]:
        """Claim `chat_id` for `holder`, a stream of `tenant`'s (as Redis records it; `stream`
        False: a prediction, which has no stream to record); raises `ChatBusy` when a prediction
        runs on it here or on another replica. Returns the release (only ever of this claim: the
        chat may be another's by then)."""
        if chat_id in self._holders:
            raise ChatBusy(f"chatId {chat_id!r} already has a prediction running; Flowise would mix the two up")
        self._holders[chat_id] = holder
        try:
            if self.mirror is not None and not await self.mirror.claim_chat(chat_id, holder, tenant, stream=stream):
                raise ChatBusy(f"chatId {chat_id!r} already has a prediction running on another replica")
        except BaseException:
            del self._holders[chat_id]
            raise
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            if self._holders.get(chat_id) == holder:
                del self._holders[chat_id]
            if self.mirror is not None:  # in a tracked task: a run's end never waits on Redis
                self.mirror.release_chat_soon(chat_id, holder)

        return release


class OwnerSlots:
    """Predictions running at once per owner (a gateway key), at most `limit` each."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._running: dict[str, int] = {}

    def running(self, owner: str) -> int:
        return self._running.get(owner, 0)

    def take(self, owner: str | None) -> Callable[[], None]:
        """A slot of `owner`'s (None: nobody's, unlimited); raises `TooManyStreams` when all are
        taken. Returns the give-back."""
        if owner is None:
            return lambda: None
        running = self._running.get(owner, 0)
        if running >= self.limit:
            raise TooManyStreams(
                f"{running} predictions are running for this client, its maximum "
                "(FLOWISE_SSE_MAX_STREAMS_PER_KEY); retry when one ends"
            )
        self._running[owner] = running + 1
        given_back = False

        def give_back() -> None:
            nonlocal given_back
            if given_back:
                return
            given_back = True
            left = self._running[owner] - 1
            if left:
                self._running[owner] = left
            else:
                del self._running[owner]

        return give_back
