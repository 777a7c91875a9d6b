"""``monitor --follow FILE``: tail a growing log or trace into the same stream as the proxy.

The format is detected once, from the first complete lines (as ``decode`` does; ``--input-format``
overrides). Then the file is polled: new bytes up to the last newline go through the same reader
``decode`` uses, a partial last line waits for its newline, and rotation (the name now points at a new
file) or truncation (the file got shorter) restarts at the new file's beginning after the old one was read
to its end. Limits: packet captures and gzip files cannot be followed, and a multi-line record (EVerest's
pretty-printed JSON) cut by a poll in the middle reads as broken, exactly as a truncated log would.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
from collections.abc import Callable
from datetime import UTC, datetime

import polars as pl

from ..errors import UserError
from .events import Seen

SNIFF_MIN = 1  # complete lines needed before the format is decided


class Follower:
    def __init__(self, path: str, on_frame: Callable[[Seen], None], *, input_format: str | None = None,
                 log_tz: str | None = None, poll_s: float = 0.25, on_notice: Callable[[str], None] | None = None):
        self.path = path
        self.on_frame = on_frame
        self.on_notice = on_notice or (lambda _t: None)
        self.input_format = input_format
        self.log_tz = log_tz
        self.poll_s = poll_s
        self._fh: io.BufferedReader | None = None
        self._ino: int | None = None
        self._carry = b""
        self._lines = 0  # complete lines consumed in the current file
        self._sniffed: tuple[str, dict | None] | None = None  # (kind, detail) of the first chunk
        self.frames = 0

    def check(self) -> None:
        """Refuse what cannot be followed, with one line (called before the monitor starts)."""
        if not os.path.exists(self.path):
            raise UserError(f"--follow {self.path}: no such file")
        if os.path.isdir(self.path):
            raise UserError(f"--follow {self.path}: a directory; give one file")
        with open(self.path, "rb") as fh:
            head = fh.read(4)
        if head[:2] == b"\x1f\x8b":
            raise UserError(f"--follow {self.path}: a gzip file cannot grow; use `ocpptool decode` or `analyze`")
        from ..sources import PCAP_MAGICS, PCAPNG_MAGIC

        if head[:4] in PCAP_MAGICS or head[:4] == PCAPNG_MAGIC:
            raise UserError(f"--follow {self.path}: packet captures cannot be followed; use `ocpptool decode`")

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                self.poll()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.poll_s)
            self.poll()
        finally:
            if self._fh is not None:
                self._fh.close()

    # -- one poll: everything new, then rotation/truncation
    def poll(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            st = None  # between a rename and the new file's creation
        if self._fh is None:
            if st is None:
                return
            self._open(st.st_ino)
        assert self._fh is not None
        self._read_new()
        if st is None:
            return
        if st.st_ino != self._ino:
            self._flush_carry()
            self.on_notice(f"{self.path}: rotated; following the new file")
            self._fh.close()
            self._open(st.st_ino)
            self._read_new()
        elif st.st_size < self._fh.tell():
            self.on_notice(f"{self.path}: truncated; reading from its beginning")
            self._fh.seek(0)
            self._carry, self._lines = b"", 0
            self._read_new()

    def _open(self, ino: int) -> None:
        self._fh = open(self.path, "rb")  # noqa: SIM115 - kept open between polls
        self._ino = ino
        self._carry, self._lines = b"", 0

    def _read_new(self) -> None:
        assert self._fh is not None
        data = self._fh.read()
        if not data:
            return
        data = self._carry + data
        cut = data.rfind(b"\n")
        if cut < 0:
            self._carry = data
            return
        self._carry = data[cut + 1 :]
        self._feed(data[: cut + 1])

    def _flush_carry(self) -> None:
        if self._carry.strip():
            self._feed(self._carry + b"\n")
        self._carry = b""

    def _feed(self, chunk: bytes) -> None:
        from ..sources import Sniffed, SourceError, _dispatch, sniff
        from ..sources.base import ConnMeta, SourceNote
        from ..sources.capture import CaptureOptions
        from ..sources.timeparse import parse_ts

        if self._sniffed is None:
            try:
                s = sniff(self.path, io.BytesIO(chunk), self.input_format)
            except SourceError as exc:
                raise UserError(str(exc)) from None
            self._sniffed = (s.kind, s.detail)
        kind, detail = self._sniffed
        first = self._lines
        self._lines += chunk.count(b"\n")
        source = Sniffed(kind, io.BytesIO(chunk), detail)
        for item in _dispatch(self.path, source, self.path, CaptureOptions(), frames_as_text=True):
            if isinstance(item, ConnMeta | SourceNote):
                continue
            df = item() if callable(item) else item
            if not isinstance(df, pl.DataFrame) or df.is_empty():
                continue
            df = parse_ts(df, self.log_tz).sort("source_pos", maintain_order=True)  # readers put broken lines first
            now = datetime.now(UTC)
            for r in df.iter_rows(named=True):
                if r["text"] is None:
                    continue
                ts = r["ts"] or (r.get("ts_local") or now).replace(tzinfo=UTC)
                cp = r["charge_point_id"] or "(unknown)"
                self.frames += 1
                self.on_frame(Seen(ts, r["conn"] or cp, cp, r["direction"] or "", r["subprotocol"], r["text"],
                                   source=self.path, source_pos=(r["source_pos"] or 0) + first))  # fmt: skip
