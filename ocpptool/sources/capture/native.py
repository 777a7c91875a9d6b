"""The native capture engine: pcap/pcapng → TCP reassembly → HTTP upgrade → WebSocket → RawBatch rows.

One pass over the records, memory bounded by the open connections and the output:

- records are streamed a chunk at a time (:mod:`._records`); the regular traffic of established WebSocket
  connections in a chunk is taken in bulk by :mod:`._fast` (numpy over the headers, whole byte runs per
  direction), everything else packet by packet below, with the same result (tests compare the two);
- packets decoded by :func:`._packet.tcp_of` (Ethernet with VLAN
  tags, Linux cooked v1/v2, BSD loopback, raw IP; IPv4 and IPv6 with extension headers; TCP only);
- each TCP connection (4-tuple; a new SYN after the old one ended starts ``#2``) is reassembled per
  direction by sequence number. Out-of-order segments wait; retransmitted or overlapping bytes keep their
  first copy. A hole is declared lost when the peer acknowledges past it, when too much waits behind it, or
  when the connection or capture ends: one ``tcp-gap`` row, then the stream resumes at the next WebSocket
  frame header it can trust (or the direction is dropped with ``ws-resync-failed``);
- the HTTP upgrade gives the charge point id, subprotocol, permessage-deflate parameters and auth scheme.
  Without a handshake, WebSocket framing is recognised on ``--port`` ports or by a sane first frame
  (client frames masked); compression then comes from RSV1;
- messages of non-OCPP WebSockets are counted in ConnMeta, not emitted. A connection without subprotocol
  is OCPP once one of its text messages starts like an OCPP-J array; until then its rows wait;
- the same connection captured twice under different addresses ("any" interface with Docker NAT) is
  recognised by identical message sequences (same texts and directions, times within 1 s): the later copy's
  rows are dropped and its ConnMeta says ``duplicate_of``.
"""

from __future__ import annotations

import re
import zlib
from collections import deque
from collections.abc import Iterator, Sequence
from typing import BinaryIO, cast

import numpy as np
import polars as pl

from ..base import CONN_META_SCHEMA, ConnMeta, RawBatch, SourceNote, conform
from . import CaptureOptions
from ._fast import fast_pass
from ._http import OCPP_START, REQUEST_LINE, TAIL, Inflater, head_end, parse_request, parse_response, unmask
from ._packet import FRAGMENT, endpoint, ports, reverse_key, tcp_of
from ._records import Chunk, Records

BATCH = 100_000
M32 = 0xFFFFFFFF
FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10
PEND_BYTES = 4 << 20  # bytes waiting behind a hole before the hole is declared lost
PEND_SEGS = 2048
HEAD_MAX = 64 << 10  # an HTTP head longer than this is not a WebSocket upgrade
MAX_FRAME = 64 << 20
DUP_WINDOW = 1_000_000  # µs: copies of one connection see each message within this much time
TOMBSTONE_US = 120_000_000
IDLE_US = 600_000_000
SWEEP_EVERY = 1 << 16

# direction states
START, HTTP_REQ, HTTP_RESP, WAIT, WS, SYNC, IGNORE = range(7)
CLIENT_DIR, SERVER_DIR = "cp->csms", "csms->cp"
_DATA_OPS = (0, 1, 2)
_OPS = (0, 1, 2, 8, 9, 10)
_TLS = re.compile(rb"[\x14-\x17]\x03[\x00-\x04]")
_MAYBE_HTTP = re.compile(rb"[A-Z]{1,12}(?: |$)")


class _Dir:
    __slots__ = (
        "idx", "nxt", "off", "pending", "pend_bytes", "acked", "fin", "state", "parts", "have", "need",
        "frag", "frag_op", "frag_rsv1", "inflater", "is_client", "strict", "scanned", "scan_limit",
    )  # fmt: skip

    def __init__(self, idx: int) -> None:
        self.idx = idx
        self.nxt: int | None = None  # next expected sequence number (mod 2^32)
        self.off = 0  # the same as an offset from the first byte seen
        self.pending: dict[int, bytes] = {}
        self.pend_bytes = 0
        self.acked = -1
        self.fin = False
        self.state = START
        self.parts: list[bytes] = []
        self.have = 0
        self.need = 0
        self.frag: list[bytes] | None = None
        self.frag_op = 0
        self.frag_rsv1 = 0
        self.inflater: Inflater | None = None
        self.is_client: bool | None = None
        self.strict = True
        self.scanned = 0
        self.scan_limit = 0

    def drop_buffers(self) -> None:
        self.pending = {}
        self.pend_bytes = 0
        self.parts = []
        self.have = self.need = 0
        self.frag = None
        self.inflater = None


class _Conn:
    __slots__ = (
        "key", "dirs", "client", "name", "cp", "url_path", "subprotocol", "compression", "auth", "handshake",
        "opened", "closed", "close_code", "close_reason", "ocpp", "ws", "ignore", "done", "ws_frames",
        "duplicate_of", "held", "fp", "partner", "suspect_of", "nrows", "first_ts", "last_ts", "last_pos",
        "syn_seq", "tls", "port_server", "upgrade_pending", "no_takeover",
    )  # fmt: skip

    def __init__(self, key: bytes, ts: int) -> None:
        self.key = key
        self.dirs = (_Dir(0), _Dir(1))
        self.client: int | None = None
        self.name: str | None = None
        self.cp: str | None = None
        self.url_path: str | None = None
        self.subprotocol: str | None = None
        self.compression: str | None = None
        self.auth: str | None = None
        self.handshake = False
        self.opened = ts
        self.closed: int | None = None
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.ocpp: bool | None = None
        self.ws = False
        self.ignore = False
        self.done = False
        self.ws_frames = 0
        self.duplicate_of: str | None = None
        self.held: list[tuple] | None = []  # rows wait here until the connection is known to be OCPP
        self.fp: deque | None = deque()  # (fingerprint, ts) of rows, for duplicate detection
        self.partner: _Conn | None = None  # a later copy of this connection being compared
        self.suspect_of: _Conn | None = None  # the earlier connection this one may be a copy of
        self.nrows = 0
        self.first_ts = 0
        self.last_ts = ts
        self.last_pos = 0
        self.syn_seq: int | None = None
        self.tls = False
        self.port_server: int | None = None
        self.upgrade_pending = False
        self.no_takeover = (False, False)  # (client, server)


class _Engine:
    def __init__(self, source: str, options: CaptureOptions, *, fast: bool = True) -> None:
        self.source = source
        self.fast = fast  # False: every packet one by one (the reference the fast path is tested against)
        self.ports = frozenset(options.ports)
        self.rows: list[tuple] = []  # (ts, pos, conn, charge point, direction, subprotocol, text, reason, detail)
        self.parts: list[pl.DataFrame] = []  # rows settled in order (_PART columns), not yet handed out
        self.ready = 0  # rows in parts
        self.conns: dict[bytes, tuple[_Conn, int]] = {}
        self.ws_conns: list[_Conn] = []
        self.tls_servers: set[str] = set()
        self.tuple_count: dict[bytes, int] = {}
        self.recent: dict[tuple, list[_Conn]] = {}  # first-row fingerprint -> connections, last DUP_WINDOW
        self.recent_q: deque = deque()
        self.fragments = 0
        self.last_pos = 0
        self.last_ts = 0

    # -- the loop ------------------------------------------------------------------------------------
    def run(self, stream: BinaryIO) -> Iterator[RawBatch | ConnMeta | SourceNote]:
        recs = Records(stream, self.source)
        conns = self.conns
        pos = ts = 0
        for chunk in recs.chunks():
            pos, ts = self._chunk(chunk)
            while self.ready >= BATCH:
                yield self._take(BATCH)
        self.last_pos, self.last_ts = pos, ts
        seen: set[int] = set()
        for conn, _ in list(conns.values()):
            if id(conn) not in seen:
                seen.add(id(conn))
                if not conn.done:
                    self._finish(conn, conn.last_pos, conn.last_ts, end=True)
        for conn in self.ws_conns:
            if conn.suspect_of is not None:
                self._decide(conn)
        rows = self.rows
        if self.fragments:
            rows.append(
                (ts, pos, None, None, None, None, None, "ip-fragment",
                 f"{self.fragments} IP fragments skipped (fragment reassembly is not supported)")
            )  # fmt: skip
        if recs.problem:
            reason, detail = recs.problem
            rows.append((ts, pos + 1, None, None, None, None, None, reason, detail))
        self._settle(None, None)
        if self.ready:
            yield self._take()
        yield ConnMeta(self._meta())
        if self.tls_servers:
            servers = ", ".join(sorted(self.tls_servers)[:5]) + (" ..." if len(self.tls_servers) > 5 else "")
            yield SourceNote(
                f"{self.source}: TLS traffic to {servers} was not decoded; if it is OCPP over wss, "
                "pass --keylog FILE (a TLS key log) to decode it with tshark"
            )

    def _chunk(self, ch: Chunk) -> tuple[int, int]:
        """Every packet of a chunk, in effect in capture order: the regular traffic of established WebSocket
        connections through :mod:`._fast` (whole connections' byte runs at once), every other packet one by
        one through :meth:`_packet`. Rows are put back in the order packet-by-packet reading gives: each
        row goes where the packet during which it was emitted is."""
        n = len(ch)
        first = ch.first
        rows = self.rows
        mark = len(rows)
        slow, frame = fast_pass(self, ch) if self.fast else (None, None)
        nfast = len(rows) - mark
        tags: list[int] | None = None
        if frame is not None or nfast:
            tags = [r[1] for r in rows[mark:]]
        todo: Sequence[int]
        sel: slice | np.ndarray
        if slow is None:
            todo = range(n)
            sel = slice(None)
        else:
            todo = slow
            sel = np.array([i if i >= 0 else ~i for i in slow], dtype=np.int64)
        buf, packet = ch.buf, self._packet
        where = dict(zip(todo, zip(ch.data[sel].tolist(), ch.caplen[sel].tolist(), ch.ts[sel].tolist(),
                                   ch.lt[sel].tolist(), strict=True), strict=True))  # fmt: skip
        for i in todo:
            before = len(rows)
            a, c, ts, lt = where[i]
            if i < 0:  # a regular packet that fell on a sweep point
                i = ~i
                self._sweep(ts)
            else:
                packet(first + i, ts, lt, buf[a : a + c])
            if tags is not None and len(rows) > before:
                tags.extend([first + i] * (len(rows) - before))
        self._settle(mark, tags, frame)
        return first + n - 1, int(ch.ts[-1])

    def _settle(self, mark: int | None, tags: list[int] | None, frame: pl.DataFrame | None = None) -> None:
        """Move the tuple rows into ``parts``; rows from ``mark`` on (tagged with the packet that emitted them)
        are merged with the fast path's ``frame`` in packet order."""
        rows = self.rows
        if not rows and frame is None:
            return
        if tags is None or mark is None:
            part = _part(rows)
        else:
            old = [_part(rows[:mark])] if mark else []
            if len(rows) == mark and frame is not None:  # only one-frame messages: in packet order already
                new = frame
            else:
                new = _part(rows[mark:]).with_columns(_tag=pl.Series(tags, dtype=pl.Int64))
                if frame is not None:
                    new = pl.concat([new, frame], how="vertical")
                new = new.sort("_tag", maintain_order=True)
            part = pl.concat([*old, new.drop("_tag")], how="vertical")
        self.rows = []
        if part.height:
            self.parts.append(part)
            self.ready += part.height

    def _packet(self, pos: int, ts: int, lt: int, data: bytes) -> None:
        r = tcp_of(lt, data)
        if r is None:
            return
        if r is FRAGMENT:
            self.fragments += 1
            return
        key, flags, seq, ack, payload = r
        ent = self.conns.get(key)
        if ent is None:
            if flags & RST:
                return
            conn = self._new(key, ts)
            di = 0
        else:
            conn, di = ent
            if flags & SYN and not flags & ACK and (conn.done or conn.syn_seq != seq):
                if not conn.done:
                    self._finish(conn, pos, ts, end=False)
                conn = self._new(key, ts)
                di = 0
            elif conn.done:
                return
        conn.last_ts = ts
        conn.last_pos = pos
        if conn.ignore:
            if flags & (FIN | RST):
                d = conn.dirs[di]
                d.fin = True
                if flags & RST or conn.dirs[1 - di].fin:
                    self._finish(conn, pos, ts, end=False)
            return
        try:
            d = conn.dirs[di]
            if flags & SYN:
                if d.nxt is None or not flags & ACK and conn.syn_seq is None:
                    d.nxt = (seq + 1) & M32
                    d.off = 0
                    if not flags & ACK:
                        conn.syn_seq = seq
                seq = (seq + 1) & M32
            if payload:
                self._segment(conn, d, seq, payload, pos, ts)
            elif d.nxt is None:
                d.nxt = seq
            if flags & ACK:
                o = conn.dirs[1 - di]
                if ack != o.nxt and o.nxt is not None:  # the peer acknowledges bytes we have not seen (yet)
                    a = o.off + ((ack - o.nxt + 0x80000000) & M32) - 0x80000000
                    if a > o.acked:
                        o.acked = a
                        if o.pending and a > o.off:
                            self._gaps(conn, o, pos, ts, final=False)
            if flags & (FIN | RST):
                d.fin = True
                if flags & RST or conn.dirs[1 - di].fin:
                    self._finish(conn, pos, ts, end=False)
        except Exception as exc:  # a bug must not cost the rest of the capture: drop this connection only
            self._internal_error(conn, pos, ts, exc)
        if not pos % SWEEP_EVERY:
            self._sweep(ts)

    def _internal_error(self, conn: _Conn, pos: int, ts: int, exc: Exception) -> None:
        if conn.ws and conn.ocpp is not False:
            self.rows.append((ts, pos, conn.name, conn.cp, None, conn.subprotocol, None, "internal-error",
                              f"the capture reader failed on this connection ({type(exc).__name__}: {exc}); "
                              "its later packets are skipped"))  # fmt: skip
        conn.ignore = True
        for d in conn.dirs:
            d.state = IGNORE
            d.drop_buffers()

    # -- connections ---------------------------------------------------------------------------------
    def _new(self, key: bytes, ts: int) -> _Conn:
        conn = _Conn(key, ts)
        self.conns[key] = (conn, 0)
        self.conns[reverse_key(key)] = (conn, 1)
        if self.ports:
            sp, dp = ports(key)
            if dp in self.ports:
                conn.port_server = 1
            elif sp in self.ports:
                conn.port_server = 0
        return conn

    def _become_ws(self, conn: _Conn, client: int) -> None:
        if conn.ws:
            return
        conn.ws = True
        conn.client = client
        conn.dirs[client].is_client = True
        conn.dirs[1 - client].is_client = False
        ck = conn.key if client == 0 else reverse_key(conn.key)
        canon = min(conn.key, reverse_key(conn.key))
        n = self.tuple_count.get(canon, 0) + 1
        self.tuple_count[canon] = n
        conn.name = f"{endpoint(ck, 0)}->{endpoint(ck, 1)}" + (f"#{n}" if n > 1 else "")
        if conn.port_server is not None and not conn.handshake and conn.ocpp is None:
            conn.ocpp = True
        self.ws_conns.append(conn)

    def _finish(self, conn: _Conn, pos: int, ts: int, *, end: bool) -> None:
        """The connection ended (FIN both ways, RST, a new SYN) or the capture did."""
        for d in conn.dirs:
            if d.pending:
                self._gaps(conn, d, pos, ts, final=True)
            if d.state == WAIT:
                self._to_ws(conn, d, pos, ts)
        if conn.ws and not end and conn.ocpp is not False:
            for d in conn.dirs:
                if d.state == WS and (d.have or d.frag):
                    self._row(conn, d, pos, ts, None, "ws-incomplete",
                              f"connection ended inside a WebSocket message ({d.have} bytes buffered)")  # fmt: skip
        if conn.ws and conn.closed is None and not end:
            conn.closed = ts
        if conn.ocpp is None:
            conn.ocpp = False
            conn.held = None
        for d in conn.dirs:
            d.drop_buffers()
        conn.done = True
        if conn.suspect_of is not None and (end or conn.suspect_of.done):
            self._decide(conn)
        elif conn.partner is not None and conn.partner.done:
            self._decide(conn.partner)
        self._release(conn)

    def _sweep(self, now: int) -> None:
        """Forget ended connections and idle non-WebSocket ones (bounded memory on long captures)."""
        drop = []
        for k, (conn, _) in self.conns.items():
            if conn.done:
                if now - conn.last_ts > TOMBSTONE_US:
                    drop.append(k)
            elif not conn.ws and now - conn.last_ts > IDLE_US:
                self._finish(conn, conn.last_pos, conn.last_ts, end=True)
        for k in drop:
            del self.conns[k]

    # -- TCP reassembly -------------------------------------------------------------------------------
    def _segment(self, conn: _Conn, d: _Dir, seq: int, payload: bytes, pos: int, ts: int) -> None:
        if d.nxt is None:
            d.nxt = seq
        delta = ((seq - d.nxt + 0x80000000) & M32) - 0x80000000
        n = len(payload)
        if delta == 0:
            d.nxt = (seq + n) & M32
            d.off += n
            self._data(conn, d, payload, pos, ts)
            if d.pending:
                self._drain(conn, d, pos, ts)
        elif delta < 0:
            if delta + n > 0:  # overlaps: keep the bytes we already have, take the rest
                payload = payload[-delta:]
                d.nxt = (d.nxt + len(payload)) & M32
                d.off += len(payload)
                self._data(conn, d, payload, pos, ts)
                if d.pending:
                    self._drain(conn, d, pos, ts)
        else:
            o = d.off + delta
            old = d.pending.get(o)
            if old is None:
                d.pending[o] = payload
                d.pend_bytes += n
            elif len(old) < n:
                d.pending[o] = old + payload[len(old) :]
                d.pend_bytes += n - len(old)
            if d.acked > d.off or d.pend_bytes > PEND_BYTES or len(d.pending) > PEND_SEGS:
                self._gaps(conn, d, pos, ts, final=False)

    def _drain(self, conn: _Conn, d: _Dir, pos: int, ts: int) -> None:
        # segments wait only after _segment has set d.nxt, so it is an int here and in _gaps
        pending = d.pending
        while pending:
            o = min(pending)
            if o > d.off:
                return
            p = pending.pop(o)
            d.pend_bytes -= len(p)
            e = o + len(p)
            if e > d.off:
                q = p[d.off - o :]
                d.off = e
                d.nxt = (cast(int, d.nxt) + len(q)) & M32
                self._data(conn, d, q, pos, ts)

    def _gaps(self, conn: _Conn, d: _Dir, pos: int, ts: int, *, final: bool) -> None:
        """Declare the bytes before the first waiting segment lost and go on from there."""
        while d.pending and (final or d.acked > d.off or d.pend_bytes > PEND_BYTES or len(d.pending) > PEND_SEGS):
            o = min(d.pending)
            missing = o - d.off
            d.off = o
            d.nxt = (cast(int, d.nxt) + missing) & M32
            self._lost(conn, d, missing, pos, ts)
            self._drain(conn, d, pos, ts)

    def _lost(self, conn: _Conn, d: _Dir, missing: int, pos: int, ts: int) -> None:
        buffered = d.have
        d.parts = []
        d.have = d.need = 0
        d.frag = None
        if d.state == IGNORE or conn.ignore:
            return
        if conn.ws and conn.ocpp is not False:
            detail = f"{missing} bytes missing from the capture"
            if buffered:
                detail += f"; {buffered} buffered bytes of an unfinished frame dropped"
            self._row(conn, d, pos, ts, None, "tcp-gap", detail)
        d.state = SYNC
        d.strict = not conn.ws
        d.scanned = 0
        d.scan_limit = 1 << 20 if conn.ws else 4096

    # -- stream contents ------------------------------------------------------------------------------
    def _data(self, conn: _Conn, d: _Dir, data: bytes, pos: int, ts: int) -> None:
        st = d.state
        if st == WS:
            self._ws(conn, d, data, pos, ts)
        elif st == IGNORE:
            return
        elif st == SYNC:
            self._sync(conn, d, data, pos, ts)
        elif st == WAIT:
            d.parts.append(data)
            d.have += len(data)
            if d.have > HEAD_MAX or not 0x41 <= d.parts[0][0] <= 0x5A:
                self._to_ws(conn, d, pos, ts)  # frames, not another request: the 101 is missing from the capture
        else:
            self._head(conn, d, data, pos, ts)

    @staticmethod
    def _joined(d: _Dir) -> bytes:
        """Everything buffered, as one string; the buffer is emptied."""
        data = b"".join(d.parts)
        d.parts = []
        d.have = d.need = 0
        return data

    def _take_buffer(self, d: _Dir, data: bytes) -> bytes:
        if d.parts:
            d.parts.append(data)
            return self._joined(d)
        return data

    def _gather(self, d: _Dir, data: bytes) -> bytes | None:
        """Buffer ``data``; once ``d.need`` bytes are buffered, all of them (None: keep waiting)."""
        d.parts.append(data)
        d.have += len(data)
        return None if d.have < d.need else self._joined(d)

    def _keep(self, d: _Dir, rest: bytes, need: int = 0) -> None:
        d.parts = [rest] if rest else []
        d.have = len(rest)
        d.need = need

    def _to_ws(self, conn: _Conn, d: _Dir, pos: int, ts: int) -> None:
        data = self._joined(d)
        d.state = WS
        if data:
            self._ws(conn, d, data, pos, ts)

    def _head(self, conn: _Conn, d: _Dir, data: bytes, pos: int, ts: int) -> None:
        """START / HTTP states: an HTTP head, else (no handshake in the capture) WebSocket frames."""
        buf = self._take_buffer(d, data)
        if d.state == START:
            if buf.startswith(b"HTTP/1."):
                d.state = HTTP_RESP
            elif len(buf) < 7 and b"HTTP/1."[: len(buf)] == buf:
                self._keep(d, buf)
                return
            elif 0x41 <= buf[0] <= 0x5A:  # an HTTP method?
                nl = buf.find(b"\n", 0, 8192)
                if nl >= 0:
                    if REQUEST_LINE.match(buf, 0, nl + 1):
                        d.state = HTTP_REQ
                elif len(buf) < 8192 and _MAYBE_HTTP.match(buf, 0, 13):
                    self._keep(d, buf)
                    return
            if d.state == START:
                if conn.ws:
                    d.state = WS
                    self._ws(conn, d, buf, pos, ts)
                    other = conn.dirs[1 - d.idx]
                    if other.state == WAIT:  # frames without a 101 in the capture: the upgrade happened
                        self._to_ws(conn, other, pos, ts)
                    return
                if len(buf) >= 3 and _TLS.match(buf):
                    conn.tls = True
                    self.tls_servers.add(_tls_server(conn.key, d.idx, buf))
                    self._ignore(conn)
                    return
                d.state = SYNC
                d.scanned = 0
                if conn.port_server is not None:
                    d.strict = False
                    d.scan_limit = 1 << 20
                else:
                    d.strict = True
                    d.scan_limit = 0 if conn.syn_seq is not None else 4096
                self._sync(conn, d, buf, pos, ts)
                return
        end = head_end(buf)
        if end < 0:
            if len(buf) > HEAD_MAX:
                self._ignore(conn)
            else:
                self._keep(d, buf)
            return
        head, rest = buf[:end], buf[end:]
        if d.state == HTTP_REQ:
            req = parse_request(head)
            if not req.upgrade:
                self._ignore(conn)
                return
            conn.handshake = True
            conn.upgrade_pending = True
            conn.url_path, conn.cp, conn.auth = req.path, req.charge_point_id, req.auth
            if conn.subprotocol is None:
                conn.subprotocol = req.offered
            other = conn.dirs[1 - d.idx]
            if not conn.ws:
                self._become_ws(conn, d.idx)
            if other.state == WS:  # the response came first (capture order)
                d.state = WS
                if rest:
                    self._ws(conn, d, rest, pos, ts)
            else:
                d.state = WAIT
                self._keep(d, rest)
            return
        resp = parse_response(head)
        if resp.status != 101:
            if conn.upgrade_pending:  # refused (401 ...): the client may try again on this connection
                conn.upgrade_pending = False
                d.state = START
                client = conn.dirs[1 - d.idx]
                waiting = b"".join(client.parts)
                client.parts, client.have, client.state = [], 0, START
                if waiting:
                    self._head(conn, client, waiting, pos, ts)
                if rest and d.state == START:
                    self._head(conn, d, rest, pos, ts)
                return
            self._ignore(conn)
            return
        conn.handshake = True
        conn.upgrade_pending = False
        if resp.subprotocol:
            conn.subprotocol = resp.subprotocol
        conn.compression = resp.compression
        conn.no_takeover = (resp.client_no_takeover, resp.server_no_takeover)
        if conn.subprotocol:
            conn.ocpp = conn.subprotocol.lower().startswith("ocpp")
        if conn.ocpp is False:
            conn.held = None
        if not conn.ws:
            self._become_ws(conn, 1 - d.idx)
        d.state = WS
        client = conn.dirs[1 - d.idx]
        if client.state == WAIT:
            self._to_ws(conn, client, pos, ts)
        if rest:
            self._ws(conn, d, rest, pos, ts)

    def _ignore(self, conn: _Conn) -> None:
        conn.ignore = True
        for d in conn.dirs:
            d.state = IGNORE
            d.drop_buffers()

    # -- finding frames without a handshake, or after a gap -------------------------------------------
    def _sync(self, conn: _Conn, d: _Dir, data: bytes, pos: int, ts: int) -> None:
        if d.parts:  # a frame header or body was cut: wait until what it needs is here
            joined = self._gather(d, data)
            if joined is None:
                return
            data = joined
        n = len(data)
        i = 0
        limit = d.scan_limit - d.scanned
        while i + 2 <= n:
            r = self._probe(conn, d, data, i)
            if r > 0:
                if conn.client is None:
                    client = d.idx if data[i + 1] & 0x80 else 1 - d.idx
                    self._become_ws(conn, client)
                d.state = WS
                d.scanned = 0
                self._ws(conn, d, data[i:] if i else data, pos, ts)
                return
            if r < 0:
                self._keep(d, data[i:], -r)
                d.scanned += i
                return
            i += 1
            if i > limit:
                d.state = IGNORE
                d.drop_buffers()
                if conn.ws and conn.ocpp is not False:
                    self._row(conn, d, pos, ts, None, "ws-resync-failed",
                              f"no WebSocket frame boundary found in {i} bytes; rest of this direction dropped")  # fmt: skip
                elif not conn.ws and conn.dirs[1 - d.idx].state == IGNORE:
                    self._ignore(conn)
                return
        d.scanned += i
        self._keep(d, data[i:], 2)

    def _probe(self, conn: _Conn, d: _Dir, data: bytes, i: int) -> int:
        """1: a frame header we trust at ``i``; 0: not one; -k: need ``k`` bytes from ``i`` to tell."""
        n = len(data) - i
        b0, b1 = data[i], data[i + 1]
        op = b0 & 15
        if b0 & 0x30 or op not in (1, 2, 8, 9, 10):
            return 0
        masked = bool(b1 & 0x80)
        if d.is_client is not None and masked != d.is_client:
            return 0
        if conn.port_server is not None and conn.client is None and masked != (d.idx != conn.port_server):
            return 0
        ln = b1 & 127
        if op >= 8 and (b0 & 0x40 or not b0 & 0x80 or ln > 125):
            return 0
        h = i + 2
        if ln == 126:
            if n < 4:
                return -4
            ln = data[h] << 8 | data[h + 1]
            if ln < 126:
                return 0
            h += 2
        elif ln == 127:
            if n < 10:
                return -10
            ln = int.from_bytes(data[h : h + 8], "big")
            if ln < 65536:
                return 0
            h += 8
        if ln > (256 << 10 if d.strict else 4 << 20):
            return 0
        if masked:
            h += 4
        end = h + ln
        if end > len(data):
            return -(end - i)
        if op == 1 and b0 & 0x80:  # a whole text message: readable?
            p = unmask(data[h:end], data[h - 4 : h]) if masked else data[h:end]
            if b0 & 0x40:
                try:
                    p = zlib.decompressobj(-15).decompress(p + TAIL)
                except zlib.error:
                    p = b""
            try:
                t = p.decode("utf-8")
            except UnicodeDecodeError:
                if not b0 & 0x40:
                    return 0
                t = ""
            if t.lstrip()[:1] in ("[", "{"):
                return 1
        if end == len(data):
            if not d.strict and i == 0:
                return 1
            return -(end - i + 2)  # the next header will tell
        c0 = data[end]
        if c0 & 0x30 or c0 & 15 not in _OPS:
            return 0
        if end + 1 < len(data) and bool(data[end + 1] & 0x80) != masked:
            return 0
        return 1

    # -- WebSocket frames -----------------------------------------------------------------------------
    def _ws(self, conn: _Conn, d: _Dir, data: bytes, pos: int, ts: int, at: tuple | None = None) -> None:
        """Deframe ``data``, the bytes of one packet (``pos``, ``ts``), or, with ``at = (ends, positions,
        times)``, of many consecutive packets of this direction joined (the fast path): packet ``k`` ends
        at ``ends[k]`` in ``data``, and each frame takes the number and time of the packet that completed it,
        as reading packet by packet would give."""
        if d.parts:  # a frame header or body was cut: wait until what it needs is here
            joined = self._gather(d, data)
            if joined is None:
                return
            data = joined
        n = len(data)
        i = 0
        k = 0
        while True:
            rem = n - i
            if rem < 2:
                if rem:
                    self._keep(d, data[i:], 2)
                return
            b0 = data[i]
            b1 = data[i + 1]
            ln = b1 & 127
            h = i + 2
            if ln >= 126:
                if ln == 126:
                    if rem < 4:
                        self._keep(d, data[i:], 4)
                        return
                    ln = data[h] << 8 | data[h + 1]
                    h += 2
                else:
                    if rem < 10:
                        self._keep(d, data[i:], 10)
                        return
                    ln = int.from_bytes(data[h : h + 8], "big")
                    h += 8
            op = b0 & 15
            if b0 & 0x30 or op not in _OPS or ln > MAX_FRAME or (op >= 8 and (ln > 125 or b0 & 0x40 or not b0 & 0x80)):
                if at is None:
                    self._bad_frame(conn, d, data, i, pos, ts)
                    return
                ends, poss, tss = at
                while ends[k] < h:  # the packet in which the header became readable
                    k += 1
                self._bad_frame(conn, d, data[: ends[k]], i, poss[k], tss[k])
                for j in range(k + 1, len(ends)):  # the rest as if read packet by packet, in the new state
                    self._data(conn, d, data[ends[j - 1] : ends[j]], poss[j], tss[j])
                return
            if b1 & 0x80:
                h += 4
                end = h + ln
                if end > n:
                    self._keep(d, data[i:], end - i)
                    return
                payload = unmask(data[h:end], data[h - 4 : h])
            else:
                end = h + ln
                if end > n:
                    self._keep(d, data[i:], end - i)
                    return
                payload = data[h:end]
            i = end
            if at is not None:
                ends = at[0]
                while ends[k] < end:
                    k += 1
                pos = at[1][k]
                ts = at[2][k]
            if op >= 8:
                if op == 8:
                    self._close(conn, payload, ts)
                continue
            conn.ws_frames += 1
            if op == 0:
                if d.frag is None:
                    continue  # a continuation whose start we did not see (after a gap)
                d.frag.append(payload)
                if not b0 & 0x80:
                    continue
                payload = b"".join(d.frag)
                d.frag = None
                op = d.frag_op
                rsv1 = d.frag_rsv1
            else:
                if d.frag is not None:
                    d.frag = None
                    if conn.ocpp is not False:
                        self._row(conn, d, pos, ts, None, "ws-incomplete",
                                  "a new message started before the previous one's last fragment")  # fmt: skip
                if not b0 & 0x80:
                    d.frag = [payload]
                    d.frag_op = op
                    d.frag_rsv1 = b0 & 0x40
                    continue
                rsv1 = b0 & 0x40
            if conn.ocpp is False:
                continue
            if rsv1:
                inf = d.inflater
                if inf is None:
                    inf = d.inflater = Inflater(conn.no_takeover[0 if d.is_client else 1])
                    if conn.compression is None:
                        conn.compression = "permessage-deflate"
                raw = inf.inflate(payload)
                if raw is None:
                    self._row(conn, d, pos, ts, None, "inflate-failed",
                              f"{len(payload)} compressed bytes could not be inflated")  # fmt: skip
                    continue
                payload = raw
            if op == 1:
                try:
                    text = payload.decode("utf-8")
                except UnicodeDecodeError:
                    self._row(conn, d, pos, ts, payload.decode("utf-8", "replace"), "bad-utf8",
                              f"text message of {len(payload)} bytes is not valid UTF-8")  # fmt: skip
                    continue
                if conn.ocpp is None and OCPP_START.match(text):
                    conn.ocpp = True
                self._row(conn, d, pos, ts, text, None, None)
            else:
                self._row(conn, d, pos, ts, payload[:200].decode("utf-8", "replace"), "binary",
                          f"binary message of {len(payload)} bytes")  # fmt: skip

    def _bad_frame(self, conn: _Conn, d: _Dir, data: bytes, i: int, pos: int, ts: int) -> None:
        if conn.ocpp is not False:
            self._row(conn, d, pos, ts, None, "ws-bad-frame",
                      f"invalid WebSocket frame header {data[i:i + 2].hex()}; looking for the next frame")  # fmt: skip
        d.frag = None
        d.state = SYNC
        d.strict = False
        d.scanned = 0
        d.scan_limit = 1 << 20
        self._sync(conn, d, data[i + 1 :], pos, ts)

    def _close(self, conn: _Conn, payload: bytes, ts: int) -> None:
        if conn.close_code is None and len(payload) >= 2:
            conn.close_code = payload[0] << 8 | payload[1]
            conn.close_reason = payload[2:].decode("utf-8", "replace") or None
        if conn.closed is None:
            conn.closed = ts

    # -- rows -----------------------------------------------------------------------------------------
    def _row(self, conn: _Conn, d: _Dir, pos: int, ts: int, text, reason, detail) -> None:
        row = (ts, pos, conn.name, conn.cp, CLIENT_DIR if d.is_client else SERVER_DIR, conn.subprotocol,
               text, reason, detail)  # fmt: skip
        fps = conn.fp
        if fps is not None:
            self._fingerprint(conn, d, row, ts, fps)
        if conn.held is None:
            self.rows.append(row)
        else:
            conn.held.append(row)
            if conn.ocpp and conn.suspect_of is None:
                self._release(conn)

    def _release(self, conn: _Conn) -> None:
        if conn.held is not None and conn.ocpp and conn.suspect_of is None:
            self.rows.extend(conn.held)
            conn.held = None
        elif conn.held and conn.ocpp is False:
            conn.held = None

    def _take(self, n: int | None = None) -> pl.DataFrame:
        """The first ``n`` settled rows (all by default) as a RawBatch."""
        df = pl.concat(self.parts, how="vertical") if len(self.parts) != 1 else self.parts[0]
        if n is not None and n < df.height:
            self.parts = [df.slice(n)]
            df = df.slice(0, n)
        else:
            self.parts = []
        self.ready -= df.height
        df = df.with_columns(
            pl.col("ts").cast(pl.Datetime("us")).dt.replace_time_zone("UTC"),
            source=pl.lit(self.source, pl.String),
            direction_inferred=pl.lit(False),
        )
        return conform(df)

    # -- duplicates ("any" interface) -----------------------------------------------------------------
    def _fingerprint(self, conn: _Conn, d: _Dir, row: tuple, ts: int, fps: deque) -> None:
        """``fps`` is ``conn.fp`` (not None: only then is a row fingerprinted)."""
        fp = (d.is_client, row[6], row[7])
        if conn.nrows == 0:
            conn.first_ts = ts
            q = self.recent_q
            while q and ts - q[0][0] > DUP_WINDOW:
                _, k, c = q.popleft()
                lst = self.recent.get(k)
                if lst is not None:
                    if c in lst:
                        lst.remove(c)
                    if not lst:
                        del self.recent[k]
            for other in self.recent.get(fp, ()):
                if other.key != conn.key and other.key != reverse_key(conn.key) and other.partner is None and other.suspect_of is None and other.fp is not None:
                    other.partner = conn
                    conn.suspect_of = other
                    if conn.held is None:
                        conn.held = []
                    break
            else:
                self.recent.setdefault(fp, []).append(conn)
                q.append((ts, fp, conn))
        conn.nrows += 1
        fps.append((fp, ts))
        orig = conn.suspect_of if conn.suspect_of is not None else None
        if orig is not None:
            self._compare(orig, conn)
        elif conn.partner is not None:
            self._compare(conn, conn.partner)
        elif ts - conn.first_ts > DUP_WINDOW:
            conn.fp = None  # nobody copies this one

    def _compare(self, orig: _Conn, copy: _Conn) -> None:
        a, b = orig.fp, copy.fp
        if a is None or b is None:
            return
        while a and b:
            (fa, ta), (fb, tb) = a.popleft(), b.popleft()
            if fa != fb or abs(ta - tb) > DUP_WINDOW:
                self._unpair(orig, copy)
                return

    def _unpair(self, orig: _Conn, copy: _Conn) -> None:
        orig.partner = None
        copy.suspect_of = None
        orig.fp = copy.fp = None
        self._release(copy)

    def _decide(self, copy: _Conn) -> None:
        orig = copy.suspect_of
        if orig is None:
            return
        if orig.fp is not None and copy.fp is not None and not orig.fp and not copy.fp:
            copy.duplicate_of = orig.name
            copy.held = None
            orig.partner = None
            copy.suspect_of = None
            orig.fp = copy.fp = None
        else:
            self._unpair(orig, copy)

    # -- ConnMeta -------------------------------------------------------------------------------------
    def _meta(self) -> pl.DataFrame:
        cols: dict[str, list] = {k: [] for k in CONN_META_SCHEMA}
        for c in self.ws_conns:
            ck = c.key if c.client == 0 else reverse_key(c.key)
            vals = {
                "conn": c.name,
                "source": self.source,
                "charge_point_id": c.cp,
                "url_path": c.url_path,
                "client": endpoint(ck, 0),
                "server": endpoint(ck, 1),
                "subprotocol": c.subprotocol,
                "compression": c.compression,
                "tls": c.tls,
                "auth": c.auth,
                "opened": c.opened,
                "closed": c.closed,
                "close_code": c.close_code,
                "close_reason": c.close_reason,
                "handshake_seen": c.handshake,
                "ocpp": bool(c.ocpp),
                "ws_frames": c.ws_frames,
                "non_ocpp_frames": 0 if c.ocpp else c.ws_frames,
                "duplicate_of": c.duplicate_of,
            }
            for k, v in vals.items():
                cols[k].append(v)
        schema = dict(CONN_META_SCHEMA)
        ts_type = schema["opened"]
        frame = pl.DataFrame(
            cols, schema={**schema, "opened": pl.Int64(), "closed": pl.Int64()}
        ).with_columns(
            pl.col("opened").cast(pl.Datetime("us")).dt.replace_time_zone("UTC").cast(ts_type),
            pl.col("closed").cast(pl.Datetime("us")).dt.replace_time_zone("UTC").cast(ts_type),
        )
        return frame.select(list(schema))


_PART = {"ts": pl.Int64, "source_pos": pl.Int64, "conn": pl.String, "charge_point_id": pl.String,
         "direction": pl.String, "subprotocol": pl.String, "text": pl.String, "weird_reason": pl.String,
         "weird_detail": pl.String}  # fmt: skip


def _part(rows: list[tuple]) -> pl.DataFrame:
    """Tuple rows as a frame of :data:`_PART` columns."""
    cols = list(zip(*rows, strict=True)) if rows else [()] * len(_PART)
    return pl.DataFrame({k: pl.Series(v, dtype=t) for (k, t), v in zip(_PART.items(), cols, strict=True)})


def _tls_server(key: bytes, side: int, buf: bytes) -> str:
    """The server end of a TLS connection: the peer of a ClientHello, the sender of a ServerHello, else the
    end with the lower port (the capture started after the handshake)."""
    hello = buf[5] if len(buf) > 5 and buf[0] == 0x16 else None
    if hello == 0x01:
        return endpoint(key, 1 - side)
    if hello == 0x02:
        return endpoint(key, side)
    a, b = ports(key)
    return endpoint(key, 0 if a < b else 1)


def read(stream: BinaryIO, source: str, options: CaptureOptions, *,
         fast: bool = True) -> Iterator[RawBatch | ConnMeta | SourceNote]:  # fmt: skip
    """Yield RawBatch frames (one row per complete WebSocket data message) and, last, one ConnMeta.

    ``fast=False`` reads every packet one by one; the output is the same (tests compare the two)."""
    yield from _Engine(source, options, fast=fast).run(stream)
