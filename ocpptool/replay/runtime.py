"""What both replay shells share: options, the replay clock and its control, events, the result.

The replay clock reads recorded seconds (offsets into the plan). It advances at ``speed`` times the wall
clock while running, stands still while paused (each ``step`` lets exactly one CALL through), and jumps
straight to each due offset at ``--speed max``. :class:`Control` may be driven from another thread (the
live view): every method hops onto the replay's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .divergence import Divergence
from .transcript import Transcript

SPEEDS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, math.inf)


@dataclass
class ReplayOptions:
    """Everything a replay run needs besides the plan (validated by :mod:`ocpptool.replay.cli`)."""

    target: str | None = None  #: ws:// or wss:// base URL (as chargers)
    listen: tuple[str, int] | None = None  #: (host, port) (as a CSMS)
    speed: float = 1.0  #: math.inf for "max"
    id_tag_map: dict[str, str] = field(default_factory=dict)
    keep_message_ids: bool = False
    auth: dict[str, str] = field(default_factory=dict)  #: target charge point id (or "*") -> password
    ssl_context: ssl.SSLContext | None = None
    response_timeout: float = 10.0
    reconnects: int = 5  #: attempts in a row before a charge point gives up
    backoff_s: float = 0.2  #: first reconnect delay; doubles up to backoff_max_s
    backoff_max_s: float = 5.0
    linger_s: float = 1.0  #: after its own last call, how long a charger waits for late CSMS calls
    idle_timeout_s: float = 60.0  #: as a CSMS: give up waiting for chargers after this long without traffic
    shift_timestamps: bool = True
    slow_factor: float = 10.0
    slow_floor_ms: float = 1000.0


@dataclass(slots=True)
class Event:
    """One thing the replay did, posted to the sink (the live view or the plain printer)."""

    kind: str  #: state | sent | received | divergence | note | done
    cp: str = ""
    action: str = ""
    message_type: str = ""
    text: str = ""  #: the frame, or a state/divergence/note description
    connector: Any = None
    transaction: Any = None
    clock: float = 0.0  #: replay clock (recorded seconds) when posted


Sink = Callable[[Event], None]


def null_sink(_: Event) -> None:
    return None


class Control:
    """Pause, resume, faster, slower, step and quit for a running replay (thread-safe)."""

    def __init__(self, speed: float = 1.0) -> None:
        self.speed = speed
        self.paused = False
        self.quitting = False
        self._steps = 0
        self._vt = 0.0  #: replay clock at the anchor
        self._wall = time.monotonic()
        self._changed: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.end = 0.0  #: the plan's last offset (for progress)

    # -- called on the replay's loop
    def bind(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self._wall = time.monotonic()

    def clock(self) -> float:
        if self.paused or math.isinf(self.speed):
            return self._vt
        return self._vt + (time.monotonic() - self._wall) * self.speed

    def _anchor(self) -> None:
        self._vt = self.clock()
        self._wall = time.monotonic()

    def _poke(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = asyncio.Event()

    async def wait_until(self, offset: float, step: bool = True) -> None:
        """Return when the replay clock reaches ``offset``; raise :class:`Quit` when asked to quit.

        ``step``: this wait precedes sending one CALL: while paused only a ``step`` releases it (one CALL
        per step). Other waits (connecting, lingering for late calls) are not held by a pause.
        """
        while True:
            if self.quitting:
                raise Quit
            if self.paused:
                if not step:
                    return
                if self._steps > 0:
                    self._steps -= 1
                    self._vt = max(self._vt, offset)
                    return
            else:
                now = self.clock()
                if math.isinf(self.speed) or now >= offset:
                    if math.isinf(self.speed):
                        self._vt = max(self._vt, offset)
                    return
            changed = self._changed
            assert changed is not None
            delay = None if self.paused else min((offset - self.clock()) / self.speed, 0.5)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), timeout=delay)

    # -- thread-safe commands
    def _do(self, fn: Callable[[], None]) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            fn()
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            fn()
            self._poke()
        else:
            def run() -> None:
                fn()
                self._poke()

            loop.call_soon_threadsafe(run)

    def pause(self) -> None:
        def f() -> None:
            self._anchor()
            self.paused = True

        self._do(f)

    def resume(self) -> None:
        def f() -> None:
            self._wall = time.monotonic()
            self.paused = False

        self._do(f)

    def step(self) -> None:
        def f() -> None:
            self.paused = True
            self._steps += 1

        self._do(f)

    def set_speed(self, speed: float) -> None:
        def f() -> None:
            self._anchor()
            self.speed = speed

        self._do(f)

    def faster(self) -> None:
        def f() -> None:  # computed on the loop, so quick presses from another thread add up
            self._anchor()
            self.speed = next((s for s in SPEEDS if s > self.speed), math.inf)

        self._do(f)

    def slower(self) -> None:
        def f() -> None:
            self._anchor()
            self.speed = next((s for s in reversed(SPEEDS) if s < self.speed), SPEEDS[0])

        self._do(f)

    def quit(self) -> None:
        def f() -> None:
            self.quitting = True

        self._do(f)


class Quit(Exception):
    """The user asked to stop: every charge point unwinds and the report covers what was done."""


@dataclass
class CpStats:
    state: str = "waiting"
    sent: int = 0
    received: int = 0
    connections: int = 0
    reconnects: int = 0
    last_action: str = ""
    connector: Any = None
    transaction: Any = None
    divergences: int = 0


@dataclass
class ReplayResult:
    """What a run did: the report's facts, and the transcript for ``--record``."""

    mode: str
    transcript: Transcript
    divergences: list[Divergence] = field(default_factory=list)
    uncovered: dict[str, int] = field(default_factory=dict)  #: action -> calls answered with a default
    stats: dict[str, CpStats] = field(default_factory=dict)
    duration_s: float = 0.0
    quit: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def frames(self) -> int:
        return len(self.transcript)

    def to_dict(self) -> dict[str, Any]:
        from .divergence import summarise

        return {
            "mode": self.mode,
            "frames": self.frames,
            "duration_s": round(self.duration_s, 3),
            "messages_per_s": round(self.frames / self.duration_s, 1) if self.duration_s else None,
            "quit": self.quit,
            "charge_points": {
                cp: {"state": s.state, "sent": s.sent, "received": s.received, "connections": s.connections,
                     "reconnects": s.reconnects, "divergences": s.divergences}
                for cp, s in self.stats.items()
            },  # fmt: skip
            "divergence_counts": summarise(self.divergences),
            "divergences": [d.to_dict() for d in self.divergences],
            "not_covered": self.uncovered,
            "notes": self.notes,
        }
