"""The native engine's fast path: the regular traffic of established WebSocket connections, a chunk at a time.

Most packets of a long capture belong to connections past their handshake whose bytes arrive in order: a
data segment exactly where the previous one ended, ACKs for bytes already seen, no SYN, FIN or RST. Reading
them one by one costs a few microseconds each in Python. Here the link, IP and TCP headers of a whole chunk
are read at once with numpy; per connection, the run of regular packets up to its first irregular one is
taken at once: its sequence numbers advance by the bytes it carries, its acknowledgements are folded in,
and each direction's bytes are joined and deframed in one call (:meth:`_Engine._ws` with packet ends, so that
every message keeps the number and time of the packet that completed it).

Everything else goes through the packet-by-packet code, in capture order: packets that are not plain IPv4
TCP, connections in any other state (handshake, resync, held rows, duplicate detection, closing ...), and a
connection's packets from its first irregular one on (a gap, a retransmission, SYN/FIN/RST, an ACK for
bytes far from what was seen). A connection's regular run always comes before its other packets in the
chunk, and connections do not share state on this path, so the result equals packet-by-packet reading; the
tests compare the two on every capture they build.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import numpy as np
import polars as pl

from ._http import Inflater
from ._packet import FRAGMENT, tcp_of

if TYPE_CHECKING:
    from ._records import Chunk
    from .native import _Conn, _Engine

M32 = 0xFFFFFFFF
CLIENT_DIR, SERVER_DIR = "cp->csms", "csms->cp"  # as native's
_WS = 4  # native.WS (the direction state "WebSocket frames")
_SWEEP = 1 << 16  # native.SWEEP_EVERY
_ACK_SLACK = 1 << 30  # an ACK this far from what was seen is left to the packet-by-packet code


def _eligible(conn: _Conn) -> bool:
    if not (conn.ws and conn.ocpp is True and not conn.done and not conn.ignore and conn.held is None
            and conn.fp is None and conn.suspect_of is None and conn.partner is None):  # fmt: skip
        return False
    return all(d.state == _WS and not d.pending and d.nxt is not None and not d.fin for d in conn.dirs)


def _be16(b: np.ndarray, at: np.ndarray) -> np.ndarray:
    return b[at].astype(np.int64) << 8 | b[at + 1]


def _be32(b: np.ndarray, at: np.ndarray) -> np.ndarray:
    return _be16(b, at) << 16 | _be16(b, at + 2)


def _ipv4_tcp(ch: Chunk):
    """Indexes of the chunk's plain IPv4 TCP packets and their header fields (None: there are none)."""
    b = np.frombuffer(ch.buf, dtype=np.uint8)
    last = len(b) - 1
    d0, cap, lt = ch.data, ch.caplen, ch.lt

    def at(rel) -> np.ndarray:
        return b[np.minimum(d0 + rel, last)].astype(np.int64)

    o = np.full(len(d0), -1, dtype=np.int64)
    for kind, hdr, et_at, need in ((1, 14, 12, 14), (113, 16, 14, 16), (276, 20, 0, 20)):
        sel = lt == kind
        if sel.any():
            et = at(et_at) << 8 | at(et_at + 1)
            o[sel & (cap >= need) & (et == 0x0800)] = hdr
            if kind == 1:  # one or two VLAN tags
                vlan = sel & ((et == 0x8100) | (et == 0x88A8) | (et == 0x9100))
                et2 = at(16) << 8 | at(17)
                o[vlan & (et2 == 0x0800)] = 18
                vlan2 = vlan & ((et2 == 0x8100) | (et2 == 0x88A8) | (et2 == 0x9100))
                o[vlan2 & ((at(20) << 8 | at(21)) == 0x0800)] = 22
    o[(lt == 101) | (lt == 12) | (lt == 14) | (lt == 228)] = 0
    loop = (lt == 0) | (lt == 108)
    if loop.any():  # BSD loopback: address family 2 (IPv4), written in either byte order
        fam = at(0) << 24 | at(1) << 16 | at(2) << 8 | at(3)
        o[loop & (cap >= 4) & ((fam == 2) | (fam == 0x02000000))] = 4
    ok = o >= 0
    if not ok.any():
        return None
    oc = np.maximum(o, 0)
    ok &= cap >= oc + 20
    b0 = at(oc)
    ihl = b0 & 15
    ok &= ((b0 >> 4) == 4) & (ihl >= 5) & (at(oc + 9) == 6) & ((at(oc + 6) & 0x3F) == 0) & (at(oc + 7) == 0)
    t = oc + ihl * 4
    ok &= cap >= t + 14
    idx = np.flatnonzero(ok)
    if not len(idx):
        return None
    d, oc, t, cap = d0[idx], oc[idx], t[idx], cap[idx]
    tot = _be16(b, d + oc + 2)
    start = np.minimum(t + (b[d + t + 12].astype(np.int64) >> 4) * 4, cap)
    end = np.minimum(np.where(tot > 0, oc + tot, cap), cap)
    return {
        "idx": idx,
        "src": _be32(b, d + oc + 12).astype(np.uint64),
        "dst": _be32(b, d + oc + 16).astype(np.uint64),
        "ports": _be32(b, d + t),
        "seq": _be32(b, d + t + 4),
        "ack": _be32(b, d + t + 8),
        "flags": b[d + t + 13].astype(np.int64),
        "start": d + start,  # payload, absolute in the chunk's buffer
        "plen": np.maximum(end - start, 0),
    }


def fast_pass(eng: _Engine, ch: Chunk) -> tuple[list[int] | None, pl.DataFrame | None]:
    """Take the regular packets of the chunk. Returns the indexes of the others, in order, to be read one by
    one (a regular packet on a sweep point appears as ``~index``; None: all of them), and the rows of the
    messages read here that did not go through :meth:`_Engine._ws` (``_PART`` columns and ``_tag``, the
    packet number), or None."""
    h = _ipv4_tcp(ch)
    if h is None:
        return None, None
    idx = h["idx"]
    k1 = h["src"] << np.uint64(32) | h["dst"]
    k2 = h["ports"]
    order = np.lexsort((k2, k1))
    s1, s2 = k1[order], k2[order]
    new = np.ones(len(order), dtype=bool)
    new[1:] = (s1[1:] != s1[:-1]) | (s2[1:] != s2[:-1])
    heads = np.flatnonzero(new)
    flow = np.empty(len(order), dtype=np.int64)
    flow[order] = np.cumsum(new) - 1
    # the directed flows (few) in Python: which connection and direction, and can it take the fast path?
    conns: list[_Conn] = []
    conn_no: dict[int, int] = {}
    nf = len(heads)
    f_conn = np.full(nf, -1, dtype=np.int64)
    f_dir = np.zeros(nf, dtype=np.int64)
    f_nxt = np.zeros(nf, dtype=np.int64)
    f_onxt = np.zeros(nf, dtype=np.int64)
    table = eng.conns
    for f, (a, p) in enumerate(zip(s1[heads].tolist(), s2[heads].tolist(), strict=True)):
        ent = table.get(a.to_bytes(8, "big") + p.to_bytes(4, "big"))
        if ent is None:
            continue
        conn, di = ent
        c = conn_no.get(id(conn))
        if c is None:
            if not _eligible(conn):
                conn_no[id(conn)] = -1
                continue
            c = conn_no[id(conn)] = len(conns)
            conns.append(conn)
        elif c < 0:
            continue
        f_conn[f] = c
        f_dir[f] = di
        f_nxt[f] = cast(int, conn.dirs[di].nxt)  # both directions are in the WebSocket state: known
        f_onxt[f] = cast(int, conn.dirs[1 - di].nxt)
    if not conns:
        return None, None
    pc = f_conn[flow]
    cand = pc >= 0
    idx, flow, pc = idx[cand], flow[cand], pc[cand]
    seq, ack, flags, start, plen = (h[x][cand] for x in ("seq", "ack", "flags", "start", "plen"))
    # regular: no SYN/FIN/RST; data exactly where the direction's bytes end; ACKs near what the peer sent
    by_flow = np.argsort(flow, kind="stable")
    fl_sorted = flow[by_flow]
    pl_sorted = plen[by_flow]
    before = np.cumsum(pl_sorted) - pl_sorted
    first_of = np.ones(len(by_flow), dtype=bool)
    first_of[1:] = fl_sorted[1:] != fl_sorted[:-1]
    base = np.maximum.accumulate(np.where(first_of, np.arange(len(by_flow)), 0))
    offset = np.empty(len(by_flow), dtype=np.int64)
    offset[by_flow] = before - before[base]  # bytes of the flow before each packet, in this chunk
    expect = (f_nxt[flow] + offset) & M32
    dist = ((ack - f_onxt[flow] + 0x80000000) & M32) - 0x80000000
    bad = ((flags & 0x07) != 0) | ((plen > 0) & (seq != expect)) | (((flags & 0x10) != 0) & (np.abs(dist) > _ACK_SLACK))
    cut = np.full(len(conns), len(ch), dtype=np.int64)
    if bad.any():
        np.minimum.at(cut, pc[bad], idx[bad])
    if len(h["idx"]) < len(ch):  # a packet the header arrays skipped (VLAN tag, odd IP header ...) that is
        other = np.ones(len(ch), dtype=bool)  # still one of these connections' ends their runs there
        other[h["idx"]] = False
        for i in np.flatnonzero(other).tolist():
            r = tcp_of(int(ch.lt[i]), ch.packet(i))
            if r is not None and r is not FRAGMENT:
                ent = table.get(r[0])
                c = conn_no.get(id(ent[0]), -1) if ent is not None else -1
                if c >= 0 and i < cut[c]:
                    cut[c] = i
    fast = idx < cut[pc]
    if not fast.any():
        return None, None
    fi, ff, fseq, fack, fflags, fstart, fplen = (x[fast] for x in (idx, flow, seq, ack, flags, start, plen))
    first = ch.first
    poss = fi + first
    tss = ch.ts[fi]
    # TCP state: every direction advances by its bytes, then the ACKs of the run are folded in
    nbytes = np.bincount(ff, weights=fplen, minlength=nf).astype(np.int64)
    last = np.full(len(conns), -1, dtype=np.int64)
    np.maximum.at(last, f_conn[ff], fi)
    for f in np.unique(ff).tolist():
        if nbytes[f]:
            d = conns[f_conn[f]].dirs[f_dir[f]]
            d.nxt = (d.nxt + int(nbytes[f])) & M32
            d.off += int(nbytes[f])
    acks = (fflags & 0x10) != 0
    if acks.any():
        af, aa = ff[acks], fack[acks]
        peers = np.unique(af).tolist()
        o_nxt = np.zeros(nf, dtype=np.int64)
        for f in peers:
            o_nxt[f] = conns[f_conn[f]].dirs[1 - f_dir[f]].nxt
        top = np.full(nf, -(1 << 40), dtype=np.int64)
        np.maximum.at(top, af, ((aa - o_nxt[af] + 0x80000000) & M32) - 0x80000000)
        for f, t in zip(peers, top[peers].tolist(), strict=True):
            o = conns[f_conn[f]].dirs[1 - f_dir[f]]
            if o.off + t > o.acked:
                o.acked = o.off + t
    for c, i in enumerate(last.tolist()):
        if i >= 0:
            conns[c].last_pos = first + i
            conns[c].last_ts = int(ch.ts[i])
    # the bytes, per direction
    frame = None
    data = fplen > 0
    if data.any():
        df, dstart, dlen, dpos, dts = ff[data], fstart[data], fplen[data], poss[data], tss[data]
        by = np.argsort(df, kind="stable")
        df, dstart, dlen, dpos, dts = df[by], dstart[by], dlen[by], dpos[by], dts[by]
        frame = _messages(eng, ch, conns, f_conn, f_dir, df, dstart, dlen, dpos, dts)
    # what is left, in order, with the sweep points that fell on regular packets
    # what is left, in order, with the sweep points that fell on regular packets
    slow = np.ones(len(ch), dtype=bool)
    slow[fi] = False
    rest = np.flatnonzero(slow)
    sweeps = fi[(poss % _SWEEP) == 0]
    if len(sweeps):
        rest = np.sort(np.concatenate([rest, sweeps]))
        marks = np.isin(rest, sweeps)
        rest = np.where(marks, ~rest, rest)
    return rest.tolist(), frame


def _messages(eng, ch, conns, f_conn, f_dir, df, dstart, dlen, dpos, dts) -> pl.DataFrame | None:
    """Deframe the regular data packets (``df``: their directed flows, sorted; then where their bytes are,
    their numbers and times). A packet that holds exactly one whole unfragmented text frame is one message:
    its header is read here for all such packets at once. From a direction's first other packet on (two
    frames in one segment, a frame across segments, a control frame ...), its bytes are joined and go
    through :meth:`_Engine._ws`."""
    b = np.frombuffer(ch.buf, dtype=np.uint8)
    last = len(b) - 1
    b0 = b[dstart].astype(np.int64)
    b1 = b[np.minimum(dstart + 1, last)].astype(np.int64)
    ln7 = b1 & 127
    ext = b[np.minimum(dstart + 2, last)].astype(np.int64) << 8 | b[np.minimum(dstart + 3, last)]
    masked = (b1 & 0x80) != 0
    hl = 2 + np.where(ln7 == 126, 2, 0) + np.where(masked, 4, 0)
    ln = np.where(ln7 == 126, ext, ln7)
    single = (dlen >= 2) & (ln7 != 127) & (hl + ln == dlen) & ((b0 & 0xBF) == 0x81)
    n = len(df)
    heads = np.flatnonzero(np.r_[True, df[1:] != df[:-1]])
    ends = np.r_[heads[1:], n]
    flows = df[heads].tolist()
    # a direction in the middle of a frame or of a fragmented message starts on the general path at once
    clean = np.array([not (d.parts or d.frag is not None)
                      for d in (conns[f_conn[f]].dirs[f_dir[f]] for f in flows)], dtype=bool)  # fmt: skip
    rank = np.arange(n)
    firstbad = ends.copy()
    other = np.flatnonzero(~single)
    if len(other):
        grp = np.searchsorted(heads, other, side="right") - 1
        np.minimum.at(firstbad, grp, other)
    firstbad = np.where(clean, firstbad, heads)
    grp_of = np.repeat(np.arange(len(heads)), ends - heads)
    vec = rank < firstbad[grp_of]
    frame = None
    if vec.any():
        frame = _singles(eng, ch, conns, f_conn, f_dir, df[vec], (dstart + hl)[vec], (dstart + dlen)[vec],
                         masked[vec], (b0 & 0x40)[vec] != 0, dpos[vec], dts[vec])  # fmt: skip
    mv = memoryview(ch.buf)
    for g, (a, z) in enumerate(zip(firstbad.tolist(), ends.tolist(), strict=True)):
        if a == z:
            continue
        f = flows[g]
        conn = conns[f_conn[f]]
        d = conn.dirs[f_dir[f]]
        st, sl = dstart[a:z].tolist(), dlen[a:z].tolist()
        lead = eng._joined(d) if d.parts else b""
        stream = b"".join([lead, *(mv[x : x + y] for x, y in zip(st, sl, strict=True))])
        stops = (np.cumsum(dlen[a:z]) + len(lead)).tolist()
        pp, tt = dpos[a:z].tolist(), dts[a:z].tolist()
        try:
            eng._ws(conn, d, stream, pp[0], tt[0], (stops, pp, tt))
        except Exception as exc:  # as on the slow path: a bug costs this connection only
            eng._internal_error(conn, pp[-1], tt[-1], exc)
    return frame


def _singles(eng, ch, conns, f_conn, f_dir, fl, start, stop, masked, rsv1, pos, ts) -> pl.DataFrame | None:
    """One message per packet: unmask, inflate (per direction, in order), decode; the rows as a frame in
    packet order (which keeps each direction's own order)."""
    order = np.argsort(pos, kind="stable")
    fl, start, stop, masked, rsv1, pos, ts = (x[order] for x in (fl, start, stop, masked, rsv1, pos, ts))
    data = _unmasked(ch.buf, start[masked], stop[masked]).tobytes() if masked.any() else ch.buf
    counts = np.bincount(fl)
    for f in np.flatnonzero(counts).tolist():
        conns[f_conn[f]].ws_frames += int(counts[f])
    m = len(fl)
    bad: dict[int, tuple] = {}
    st, sp = start.tolist(), stop.tolist()
    zipped = rsv1.any()
    try:
        if zipped:
            texts = [None if z else data[a:e].decode() for a, e, z in zip(st, sp, rsv1.tolist(), strict=True)]
        else:
            texts = [data[a:e].decode() for a, e in zip(st, sp, strict=True)]
    except UnicodeDecodeError:
        texts = [None] * m
        for i in np.flatnonzero(~rsv1).tolist():
            p = data[st[i] : sp[i]]
            try:
                texts[i] = p.decode()
            except UnicodeDecodeError:
                bad[i] = (p.decode("utf-8", "replace"), "bad-utf8", f"text message of {len(p)} bytes is not valid UTF-8")
    if zipped:  # one direction at a time, in order
        zi = np.flatnonzero(rsv1)
        zi = zi[np.argsort(fl[zi], kind="stable")]
        zf = fl[zi]
        cuts = np.flatnonzero(np.r_[True, zf[1:] != zf[:-1], True]).tolist()
        zil = zi.tolist()
        for a, z in zip(cuts[:-1], cuts[1:], strict=True):
            f = int(zf[a])
            conn = conns[f_conn[f]]
            d = conn.dirs[f_dir[f]]
            if d.inflater is None:
                d.inflater = Inflater(conn.no_takeover[0 if d.is_client else 1])
                if conn.compression is None:
                    conn.compression = "permessage-deflate"
            inflate = d.inflater.inflate
            for i in zil[a:z]:
                raw = inflate(data[st[i] : sp[i]])
                if raw is None:
                    bad[i] = (None, "inflate-failed", f"{sp[i] - st[i]} compressed bytes could not be inflated")
                    continue
                try:
                    texts[i] = raw.decode()
                except UnicodeDecodeError:
                    bad[i] = (raw.decode("utf-8", "replace"), "bad-utf8",
                              f"text message of {len(raw)} bytes is not valid UTF-8")  # fmt: skip
    names, cps, dirs, subs = [], [], [], []
    for f in range(len(counts)):
        c = f_conn[f]
        conn = conns[c] if c >= 0 else None
        names.append(conn.name if conn else None)
        cps.append(conn.cp if conn else None)
        dirs.append((CLIENT_DIR if conn.dirs[f_dir[f]].is_client else SERVER_DIR) if conn else None)
        subs.append(conn.subprotocol if conn else None)
    reasons: list = [None] * m
    details: list = [None] * m
    for i, (text, reason, detail) in bad.items():
        texts[i], reasons[i], details[i] = text, reason, detail
    g = pl.Series(fl)
    return pl.DataFrame({
        "ts": ts, "source_pos": pos,
        "conn": pl.Series(names, dtype=pl.String).gather(g),
        "charge_point_id": pl.Series(cps, dtype=pl.String).gather(g),
        "direction": pl.Series(dirs, dtype=pl.String).gather(g),
        "subprotocol": pl.Series(subs, dtype=pl.String).gather(g),
        "text": pl.Series(texts, dtype=pl.String),
        "weird_reason": pl.Series(reasons, dtype=pl.String),
        "weird_detail": pl.Series(details, dtype=pl.String),
        "_tag": pos,
    })  # fmt: skip


def _unmasked(buf: bytes, start: np.ndarray, stop: np.ndarray) -> np.ndarray:
    """A copy of ``buf`` with the client frames' payloads ``[start, stop)`` unmasked (each by the 4-byte key
    just before it), for all of them at once: a payload's key, turned to its start's place in a 4-byte
    word, is XORed over the words it covers (an XOR prefix sum spreads each key over its words); the bytes
    of its first and last words outside it are put back. Payloads never share a word (headers lie between)."""
    b = np.frombuffer(buf, dtype=np.uint8)
    nw = (len(b) + 3) // 4
    u = np.zeros(nw * 4, dtype=np.uint8)
    u[: len(b)] = b
    keep = stop > start
    start, stop = start[keep], stop[keep]
    keys = b[(start - 4)[:, None] + np.arange(4)]
    turn = (np.arange(4)[None, :] - start[:, None]) % 4
    kw = np.ascontiguousarray(np.take_along_axis(keys, turn, axis=1)).view("<u4").ravel()
    w0, w1 = start // 4, (stop - 1) // 4
    on = np.zeros(nw + 1, dtype=np.uint32)
    off = np.zeros(nw + 1, dtype=np.uint32)
    on[w0] = kw
    off[w1 + 1] = kw
    words = u.view("<u4")
    words ^= np.bitwise_xor.accumulate(on ^ off)[:nw]
    edge = np.concatenate([np.concatenate([(4 * w0 + r)[4 * w0 + r < start], (stop + r)[stop + r < 4 * w1 + 4]])
                           for r in range(3)])  # fmt: skip
    edge = edge[edge < len(b)]
    u[edge] = b[edge]
    return u[: len(b)]
