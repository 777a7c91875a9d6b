"""pcap and pcapng records, streamed in chunks of many packets (:class:`Chunk`: one buffer and arrays of
offsets, lengths, times and link types, so that the engine can read headers of a whole chunk at once).

The reader never raises on bad data after the file header: a file cut mid-record or a damaged block stops
the iteration and leaves ``problem`` set to ``(reason, detail)`` so that the caller can report it after
keeping everything before it. A damaged file header raises :class:`SourceError` (one line).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from ..base import SourceError

CHUNK = 1 << 20
WINDOW = 8 << 20  # bytes of pcap records per chunk (the first ones are smaller: see _pcap)
FIRST_WINDOW = 256 << 10
NG_PACKETS = 1 << 15  # pcapng packets per chunk
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
_EPB = {"<": b"\x06\x00\x00\x00", ">": b"\x00\x00\x00\x06"}


@dataclass
class Chunk:
    """Consecutive packets: packet ``i`` is ``buf[data[i] : data[i] + caplen[i]]``, number ``first + i``
    (1-based), captured at ``ts[i]`` (µs since the epoch) on link type ``lt[i]``."""

    buf: bytes
    data: np.ndarray  # int64
    caplen: np.ndarray  # int64
    ts: np.ndarray  # int64
    lt: np.ndarray  # int64
    first: int

    def __len__(self) -> int:
        return len(self.data)

    def packet(self, i: int) -> bytes:
        a = int(self.data[i])
        return self.buf[a : a + int(self.caplen[i])]


def _u32(b: np.ndarray, at: np.ndarray, big: bool) -> np.ndarray:
    x = [b[at + k].astype(np.int64) for k in range(4)]
    if big:
        return x[0] << 24 | x[1] << 16 | x[2] << 8 | x[3]
    return x[3] << 24 | x[2] << 16 | x[1] << 8 | x[0]


class Records:
    """Iterate the packet records of one capture stream, a chunk at a time (:meth:`chunks`)."""

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

    def chunks(self) -> Iterator[Chunk]:
        if not self._fill(4):
            raise SourceError(f"{self._name}: truncated capture header")
        magic = self._buf[:4]
        if magic in _PCAP:
            return self._pcap(*_PCAP[magic])
        if magic == _SHB:
            return self._ng_chunks()
        raise SourceError(f"{self._name}: not a pcap or pcapng file")

    def _ng_chunks(self) -> Iterator[Chunk]:
        """pcapng: runs of enhanced packet blocks come from :meth:`_pcapng` as whole chunks; packets of other
        blocks (or where a run cannot be taken at once) one by one, grouped here."""
        first = 1
        datas: list[bytes] = []
        tss: list[int] = []
        lts: list[int] = []
        for item in self._pcapng():
            if isinstance(item, Chunk):
                if datas:
                    yield _chunk_of(datas, tss, lts, first)
                    first += len(datas)
                    datas, tss, lts = [], [], []
                yield item
                first += len(item)
                continue
            _n, ts, lt, data = item
            datas.append(data)
            tss.append(ts)
            lts.append(lt)
            if len(datas) >= NG_PACKETS:
                yield _chunk_of(datas, tss, lts, first)
                first += len(datas)
                datas, tss, lts = [], [], []
        if datas:
            yield _chunk_of(datas, tss, lts, first)

    # -- pcap ---------------------------------------------------------------------------------------
    def _pcap(self, order: str, frac: int) -> Iterator[Chunk]:
        if not self._fill(24):
            raise SourceError(f"{self._name}: truncated pcap header")
        major, _minor, _zone, _sig, _snap, network = struct.unpack_from(order + "HHiIII", self._buf, 4)
        if major != 2:
            raise SourceError(f"{self._name}: damaged pcap header (version {major})")
        linktype = network & 0xFFFF
        big = order == ">"
        self._pos = 24
        unpack = struct.Struct(order + "I").unpack_from
        n = 0
        # Small chunks first: connections are still opening there, which the fast path leaves alone, and
        # a connection becomes eligible for it only at a chunk's start.
        window = FIRST_WINDOW
        want = window
        while True:
            more = self._fill(want)
            buf, p = self._buf, self._pos
            end = min(len(buf), p + want)
            starts, p = _chain(buf, p, end, big)
            add = starts.append
            incl = 0
            lim = end - 16
            while p <= lim:  # the rest (or all) one record at a time: its length says where the next starts
                (incl,) = unpack(buf, p + 8)
                q = p + 16 + incl
                if q > end:
                    break
                add(p)
                p = q
            corrupt = incl > MAX_RECORD and p <= lim  # (only a record that fits is checked below)
            if starts:
                at = np.array(starts, dtype=np.int64)
                b = np.frombuffer(buf, dtype=np.uint8)
                caplen = _u32(b, at + 8, big)
                huge = np.flatnonzero(caplen > MAX_RECORD)
                if len(huge):  # damage that happens to fit in the buffer: stop at it
                    h = int(huge[0])
                    at, caplen, p, corrupt = at[:h], caplen[:h], starts[h], True
                    incl = int(_u32(b, np.array([p + 8]), big)[0])
                sub = _u32(b, at + 4, big)
                ts = _u32(b, at, big) * 1_000_000 + (sub if frac == 1 else sub // 1000)
                k = len(at)
                self.packets = n + k
                if k:
                    yield Chunk(buf, at + 16, caplen, ts, np.full(k, linktype, np.int64), n + 1)
                n += k
            self._pos = p
            left = end - p
            if corrupt:
                self.problem = ("corrupt-capture", f"record {n + 1} claims {incl} bytes; stopped there")
                return
            if not more:  # end of file: whatever is left is a cut record
                if left:
                    where = "the header of record" if left < 16 else "record"
                    self.problem = ("truncated-capture", f"file ends inside {where} {n + 1}")
                return
            window = min(window * 2, WINDOW)
            want = max(window, 16 + incl if left >= 16 else 16)

    # -- pcapng -------------------------------------------------------------------------------------
    def _pcapng(self) -> Iterator[tuple[int, int, int, bytes] | Chunk]:
        order = "<"
        ifaces: list[tuple[int, int, int, int]] = []  # (linktype, mul, div, offset_us)
        n = 0
        last_ts = 0
        first = True
        window = FIRST_WINDOW
        while True:
            if ifaces and self._fill(8) and self._buf[self._pos : self._pos + 4] == _EPB[order]:
                self._fill(window)  # as much as a window holds (less at the end of the file)
                run = _epb_run(self._buf, self._pos, min(len(self._buf), self._pos + window), order, ifaces, n + 1)
                if run is not None:
                    chunk, self._pos = run
                    n += len(chunk)
                    self.packets = n
                    last_ts = int(chunk.ts[-1])
                    window = min(window * 2, WINDOW)
                    yield chunk
                    continue
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


def _chain(buf: bytes, p: int, end: int, big: bool) -> tuple[list[int], int]:
    """Where the pcap records in ``buf[p:end]`` start, found with array operations: a record's header begins
    with its time in seconds, whose two high bytes rarely change, so every place those two bytes occur is a
    candidate; each candidate's length says which candidate follows it, and the chain from ``p`` is then
    a walk over a list. Returns the starts of the whole records on that chain and where it stopped (at the
    first record it could not place, which the caller reads one by one from there)."""
    if end - p < 1 << 16:
        return [], p
    b = np.frombuffer(buf, dtype=np.uint8, count=end, offset=0)
    hi = 0 if big else 2
    x, y = buf[p + hi], buf[p + hi + 1]
    cand = np.flatnonzero((b[p + hi : end - 16 + hi] == x) & (b[p + hi + 1 : end - 15 + hi] == y)) + p
    cand, nxt, path = _follow(cand, lambda c: c + 16 + _u32(b, c + 8, big))
    last = int(path[-1])
    stop = int(nxt[last])
    if stop > end:  # the chain's last record does not fit: the caller looks at it
        path = path[:-1]
        stop = int(cand[last])
    return cand[path].tolist(), stop


def _follow(cand: np.ndarray, successor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The chain from ``cand[0]`` through sorted candidate positions, each leading to ``successor(cand)``:
    (candidates kept, their successors, the chain as indexes into them). When each candidate leads to the
    next (the usual case) that is all of them at once; candidates nothing leads to are dropped, and what is
    left is walked as a list."""
    for _ in range(2):
        nxt = successor(cand)
        at = np.searchsorted(cand, nxt)
        found = cand[np.minimum(at, len(cand) - 1)] == nxt
        succ = np.where(found, at, -1)
        if (succ[:-1] == np.arange(1, len(cand))).all():
            return cand, nxt, np.arange(len(cand))
        pointed = np.zeros(len(cand) + 1, dtype=bool)
        pointed[succ] = True  # (index -1 marks the spare last slot)
        pointed[0] = True
        cand = cand[pointed[:-1]]
    walk = succ.tolist()
    steps = []
    i = 0
    while i >= 0:
        steps.append(i)
        i = walk[i]
    return cand, nxt, np.array(steps)


def _epb_run(buf: bytes, pos: int, end: int, order: str, ifaces: list, first: int) -> tuple[Chunk, int] | None:
    """The enhanced packet blocks from ``pos`` on that lie wholly in ``buf[:end]``, up to the first other block or
    the first one :meth:`Records._pcapng` would treat otherwise (too short, unknown interface, a time too
    large for 64 bits): a chunk of their packets and where the blocks after them start. Blocks are 4-byte
    aligned, so the buffer is read as words from ``pos``; a word 6 is a candidate block, its length word
    says where the next one starts."""
    words = np.frombuffer(buf, dtype=np.dtype(order + "u4"), offset=pos, count=(end - pos) // 4)
    nw = len(words)
    cand = np.flatnonzero(words[:-1] == 6)
    blen = words[cand + 1].astype(np.int64)
    keep = (blen >= 32) & (blen % 4 == 0) & (blen <= MAX_RECORD)
    keep &= cand + blen // 4 <= nw
    cand = cand[keep]
    if not len(cand) or cand[0] != 0:
        return None
    cand, _nxt, path = _follow(cand, lambda c: c + words[c + 1].astype(np.int64) // 4)
    if any(not (0 < mul < 1 << 40 and 0 < div < 1 << 62 and abs(off) < 1 << 62) for _, mul, div, off in ifaces):
        return None  # time-stamp scales that 64-bit arithmetic cannot follow: block by block
    k = cand[path]
    ifid = words[k + 2].astype(np.int64)
    known = ifid < len(ifaces)
    table = np.array(ifaces, dtype=np.int64)  # (linktype, mul, div, offset)
    f = np.minimum(ifid, len(table) - 1)
    value = words[k + 3].astype(np.uint64) << np.uint64(32) | words[k + 4].astype(np.uint64)
    known &= value <= (np.uint64((1 << 63) - 1) // table[f, 1].astype(np.uint64))
    bad = np.flatnonzero(~known)
    if len(bad):  # stop before the first block read otherwise: the block-by-block loop takes it
        k, f, value = k[: bad[0]], f[: bad[0]], value[: bad[0]]
    if not len(k):
        return None
    blen = words[k + 1].astype(np.int64)
    ts = value.astype(np.int64) * table[f, 1] // table[f, 2] + table[f, 3]
    data = pos + 4 * k + 28
    caplen = np.minimum(words[k + 5].astype(np.int64), blen - 32)
    return Chunk(buf, data, caplen, ts, table[f, 0].copy(), first), pos + 4 * int(k[-1]) + int(blen[-1])


def _chunk_of(datas: list[bytes], tss: list[int], lts: list[int], first: int) -> Chunk:
    lens = np.fromiter(map(len, datas), dtype=np.int64, count=len(datas))
    starts = np.zeros(len(datas), dtype=np.int64)
    np.cumsum(lens[:-1], out=starts[1:])
    return Chunk(b"".join(datas), starts, lens, np.array(tss, dtype=np.int64), np.array(lts, dtype=np.int64), first)
