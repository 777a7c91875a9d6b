"""Progress on stderr for long work: a live line on a terminal, a line every few seconds otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(
        self,
        total_bytes: int | None,
        *,
        label: str = "reading",
        enabled: bool = True,
        stream: TextIO | None = None,
        every: float = 0.2,
    ) -> None:
        self.total = total_bytes or None
        self.label = label
        self.done = 0
        self.rows = 0
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty()
        self.every = every if self.tty else 5.0
        self.start = time.monotonic()
        self._last = self.start
        self._shown = False

    def bytes(self, n: int) -> None:
        self.done += n
        self._tick()

    def add_rows(self, n: int) -> None:
        self.rows += n
        self._tick()

    def _tick(self) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < self.every or now - self.start < 1.0:
            return
        self._last = now
        self._show(now)

    def _show(self, now: float) -> None:
        mb = self.done / 1e6
        pct = f" {100 * self.done / self.total:5.1f}%" if self.total else ""
        rate = self.rows / max(now - self.start, 1e-9)
        line = f"{self.label}:{pct} {mb:,.1f} MB, {self.rows:,} messages ({rate:,.0f}/s)"
        if self.tty:
            self.stream.write("\r\x1b[2K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        self._shown = True

    def stage(self, label: str) -> None:
        """Say what long work comes next (after reading: correlating, analysing, writing)."""
        if not self.enabled or time.monotonic() - self.start < 1.0:
            return
        self.label = label
        line = f"{label} ({self.rows:,} messages, {time.monotonic() - self.start:,.1f} s so far)"
        self.stream.write(("\r\x1b[2K" + line) if self.tty else line + "\n")
        self.stream.flush()
        self._shown = True

    def finish(self) -> None:
        if self.enabled and self._shown and self.tty:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()
