"""Pairing responses with calls.

The rule (the Open OCPP Trace rule, and what OCPP-J implies): on one connection, a CALLRESULT, CALLERROR or
CALLRESULTERROR correlates with the **most recent earlier CALL with the same message id, travelling the
opposite direction, that has no response yet**. A response with no such CALL is an *orphan*; a CALL that
never gets one is *unanswered*. SEND (OCPP 2.1) is never answered and takes no part.

When a source does not know a direction (``None``), it matches either way, and the response's direction
is then the opposite of its CALL's. Feed events in trace order; the correlator keeps only open calls, so
memory is bounded by what is in flight, not by the trace.
"""

from __future__ import annotations

from dataclasses import dataclass

from .actions import opposite
from .frames import MessageType


@dataclass(frozen=True, slots=True)
class Event:
    index: int
    conn: str
    direction: str | None
    message_type: MessageType
    message_id: str


@dataclass(frozen=True, slots=True)
class Match:
    call_index: int
    call_direction: str | None


class Correlator:
    def __init__(self) -> None:
        self._open: dict[tuple[str, str], list[tuple[int, str | None]]] = {}
        self.answered: set[int] = set()

    def feed(self, event: Event) -> Match | None:
        """Feed one event; for a response return the CALL it correlates with, if any."""
        key = (event.conn, event.message_id)
        if event.message_type is MessageType.CALL:
            self._open.setdefault(key, []).append((event.index, event.direction))
            return None
        if not event.message_type.is_response:
            return None
        pending = self._open.get(key)
        if not pending:
            return None
        want = opposite(event.direction)
        for pos in range(len(pending) - 1, -1, -1):
            index, direction = pending[pos]
            if event.direction is None or direction is None or direction == want:
                del pending[pos]
                if not pending:
                    del self._open[key]
                self.answered.add(index)
                return Match(index, direction)
        return None

    def open_calls(self) -> list[int]:
        """Indexes of CALLs still waiting for a response, ascending."""
        return sorted(i for pending in self._open.values() for i, _ in pending)
