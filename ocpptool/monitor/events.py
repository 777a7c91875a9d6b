"""What the monitor's shells (proxy, file follower) hand to everything downstream.

One direction of flow: a shell produces :class:`Seen` frames and :class:`ConnEvent` s; the :class:`Hub`
redacts them when asked, then feeds the recorder, the live state, the incremental analysis and the view.
Nothing downstream talks back to the shells, so a slow consumer can only slow the hub, never a relay.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Seen:
    """One WebSocket data frame as the monitor saw it (a RawMessage with its observed time).

    ``text`` is the frame exactly as received (binary frames: ``binary`` set, ``text`` is a short
    description; they are relayed but not recorded, OCPP-J is text).
    """

    ts: datetime
    conn: str
    charge_point_id: str
    direction: str  # "cp->csms" / "csms->cp"
    subprotocol: str | None
    text: str
    binary: bool = False
    source: str = "monitor"
    source_pos: int | None = None


@dataclass(frozen=True, slots=True)
class ConnEvent:
    """A connection opened, refused or closed (``kind``: opened / closed / refused)."""

    ts: datetime
    kind: str
    conn: str
    charge_point_id: str
    subprotocol: str | None = None
    code: int | None = None
    reason: str = ""
    detail: str = ""  # one plain sentence for the log line
