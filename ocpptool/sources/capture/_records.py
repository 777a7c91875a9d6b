"""pcap and pcapng records, streamed: ``(packet number, time in µs since the epoch, link type, bytes)``.

The reader never raises on bad data after the file header: a file cut mid-record or a damaged block stops
the iteration and leaves ``problem`` set to ``(reason, detail)`` so that the caller can report it after
keeping everything before it. A damaged file header raises :class:`SourceError` (one line).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import BinaryIO

from ..base import SourceError

CHUNK = 1 << 20
MAX_RECORD = 256 << 20  # a record claiming more than this is damage, not data

_PCAP = {
    b"\xd4\xc3\xb2\xa1": ("<", 1),  # microseconds, little endian
    b"\xa1\xb2\xc3\xd4": (">", 1),
    b"\x4d\x3c\xb2\xa1": ("<", 1000),  # nanoseconds
    b"\xa1\xb2\x3c\x4d": (">", 1000),
}
_SHB = b"\x0a\x0d\x0d\x0a"
_BOM_LE = b"\x4d\x3c\x2b\x1a"
_BOM_BE = b"\x1a\x2b\x3c\x4d"


class Records:
    """Iterate the packet records of one capture stream."""

    def __init__(self, stream: BinaryIO, name: str) -> None:
        self._stream = stream
        self._name = name
        self._buf = b""
        self._pos = 0
        self.problem: tuple[str, str] | None = None
        self.packets = 0

    # -- buffered reading -------------------------------------------------------------------------
    def _fill(self, n: int) -> bool:
        """Make at least ``n`` bytes available from ``_pos``; False at end of file."""
        have = len(self._buf) - self._pos
        if have >= n:
            return True
        parts = [self._buf[self._pos :]]
        while have < n:
            chunk = self._stream.read(max(CHUNK, n - have))
            if not chunk:
                self._buf = b"".join(parts)
                self._pos = 0
                return False
            parts.append(chunk)
            have += len(chunk)
        self._buf = b"".join(parts)
        self._pos = 0
        return True

    def _at_eof(self) -> bool:
        return not self._fill(1)

    def __iter__(self) -> Iterator[tuple[int, int, int, bytes]]:
        if not self._fill(4):
            raise SourceError(f"{self._name}: truncated capture header")
        magic = self._buf[:4]
        if magic in _PCAP:
            return self._pcap(*_PCAP[magic])
        if magic == _SHB:
            return self._pcapng()
        raise SourceError(f"{self._name}: not a pcap or pcapng file")

    # -- pcap ---------------------------------------------------------------------------------------
    def _pcap(self, order: str, frac: int) -> Iterator[tuple[int, int, int, bytes]]:
        if not self._fill(24):
            raise SourceError(f"{self._name}: truncated pcap header")
        major, _minor, _zone, _sig, _snap, network = struct.unpack_from(order + "HHiIII", self._buf, 4)
        if major != 2:
            raise SourceError(f"{self._name}: damaged pcap header (version {major})")
        linktype = network & 0xFFFF
        self._pos = 24
        rec = struct.Struct(order + "IIII")
        unpack = rec.unpack_from
        n = 0
        while True:
            buf, pos = self._buf, self._pos
            if len(buf) - pos < 16 and not self._fill(16):
                if len(self._buf) - self._pos:
                    self.problem = ("truncated-capture", f"file ends inside the header of record {n + 1}")
                return
            buf, pos = self._buf, self._pos
            sec, sub, incl, _orig = unpack(buf, pos)
            if incl > MAX_RECORD:
                self.problem = ("corrupt-capture", f"record {n + 1} claims {incl} bytes; stopped there")
                return
            end = pos + 16 + incl
            if end > len(buf):
                if not self._fill(16 + incl):
                    self.problem = ("truncated-capture", f"file ends inside record {n + 1}")
                    return
                buf, pos = self._buf, self._pos
                end = pos + 16 + incl
            n += 1
            self.packets = n
            self._pos = end
            ts = sec * 1_000_000 + (sub if frac == 1 else sub // 1000)
            yield n, ts, linktype, buf[pos + 16 : end]

    # -- pcapng -------------------------------------------------------------------------------------
    def _pcapng(self) -> Iterator[tuple[int, int, int, bytes]]:
        order = "<"
        ifaces: list[tuple[int, int, int, int]] = []  # (linktype, mul, div, offset_us)
        n = 0
        last_ts = 0
        first = True
        while True:
            if not self._fill(8):
                if len(self._buf) - self._pos:
                    self.problem = ("truncated-capture", f"file ends inside a block header after packet {n}")
                return
            buf, pos = self._buf, self._pos
            btype_raw = buf[pos : pos + 4]
            if btype_raw == _SHB:
                if not self._fill(12):
                    if first:
                        raise SourceError(f"{self._name}: truncated pcapng header")
                    self.problem = ("truncated-capture", f"file ends inside a section header after packet {n}")
                    return
                buf, pos = self._buf, self._pos
                bom = buf[pos + 8 : pos + 12]
                if bom == _BOM_LE:
                    order = "<"
                elif bom == _BOM_BE:
                    order = ">"
                else:
                    if first:
                        raise SourceError(f"{self._name}: damaged pcapng section header (byte-order mark)")
                    self.problem = ("corrupt-capture", f"damaged section header after packet {n}; stopped there")
                    return
                ifaces = []
            (btype, blen) = struct.unpack_from(order + "II", buf, pos)
            if blen < 12 or blen % 4 or blen > MAX_RECORD:
                if first:
                    raise SourceError(f"{self._name}: damaged pcapng header (block length {blen})")
                self.problem = ("corrupt-capture", f"damaged block (length {blen}) after packet {n}; stopped there")
                return
            if not self._fill(blen):
                if first:
                    raise SourceError(f"{self._name}: truncated pcapng header")
                self.problem = ("truncated-capture", f"file ends inside a block after packet {n}")
                return
            buf, pos = self._buf, self._pos
            self._pos = pos + blen
            first = False
            body = pos + 8
            bend = pos + blen - 4
            if btype == 6 or btype == 2:  # enhanced packet block, or the obsolete packet block
                if bend - body < 20:
                    continue
                if btype == 6:
                    ifid, hi, lo, caplen, _orig = struct.unpack_from(order + "IIIII", buf, body)
                else:
                    ifid, _drops, hi, lo, caplen, _orig = struct.unpack_from(order + "HHIIII", buf, body)
                if ifid >= len(ifaces):
                    continue
                lt, mul, div, off = ifaces[ifid]
                data = buf[body + 20 : min(body + 20 + caplen, bend)]
                last_ts = ((hi << 32) | lo) * mul // div + off
                n += 1
                self.packets = n
                yield n, last_ts, lt, data
            elif btype == 1:  # interface description
                ifaces.append(_idb(buf, body, bend, order))
            elif btype == 3:  # simple packet block: interface 0, no time stamp
                if not ifaces or bend - body < 4:
                    continue
                (orig,) = struct.unpack_from(order + "I", buf, body)
                data = buf[body + 4 : min(body + 4 + orig, bend)]
                n += 1
                self.packets = n
                yield n, last_ts, ifaces[0][0], data
            # any other block (SHB body, name resolution, statistics, custom ...) is skipped


def _idb(buf: bytes, body: int, bend: int, order: str) -> tuple[int, int, int, int]:
    """Link type and time-stamp scaling ``(linktype, mul, div, offset_us)`` of an interface block."""
    if bend - body < 8:
        return (-1, 1, 1, 0)
    (linktype,) = struct.unpack_from(order + "H", buf, body)
    mul, div, offset = 1, 1, 0  # default resolution: microseconds
    p = body + 8
    while p + 4 <= bend:
        code, olen = struct.unpack_from(order + "HH", buf, p)
        val = buf[p + 4 : p + 4 + olen]
        if code == 0:
            break
        if code == 9 and olen >= 1:  # if_tsresol
            r = val[0]
            if r & 0x80:
                mul, div = 1_000_000, 1 << (r & 0x7F)
            elif r >= 6:
                mul, div = 1, 10 ** (r - 6)
            else:
                mul, div = 10 ** (6 - r), 1
        elif code == 14 and olen == 8 and len(val) == 8:  # if_tsoffset, seconds
            (secs,) = struct.unpack_from(order + "q", val, 0)
            offset = secs * 1_000_000
        p += 4 + ((olen + 3) & ~3)
    return (linktype, mul, div, offset)
