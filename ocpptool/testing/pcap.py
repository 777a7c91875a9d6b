"""Synthetic packet captures: a tiny pcap/pcapng writer for tests and benchmarks (no binary fixtures).

Builders, from the inside out:

- :func:`ws_frame` (a WebSocket frame, optionally masked, fragmented or RSV1-compressed) and
  :class:`Deflater` (the permessage-deflate sender side);
- :func:`tcp_seg`, :func:`ipv4` / :func:`ipv6` and :func:`wrap` (the link layer, one of :data:`LINKTYPES`);
- :class:`Flow`: one TCP connection written packet by packet, charger (client) and CSMS (server), with
  :func:`request` / :func:`response` for the HTTP upgrade;
- :func:`pcap_bytes` / :func:`pcapng_bytes`: the file formats, from ``(ts_us, data)`` packets;
- :func:`write_big_capture`: a large fleet capture streamed to disk in constant memory;
- :func:`write_fleet_capture`: any recorded traffic (e.g. bench/gen_fleet.py's fleet) as a capture.

Write a large capture from the command line::

    uv run python -m ocpptool.testing.pcap OUT.pcap MESSAGES [--chargers 200] [--compress-share 0.25]
"""

from __future__ import annotations

import socket
import struct
import zlib
from fractions import Fraction

__all__ = [
    "ACK", "FIN", "KEY", "LINKTYPES", "M32", "PA", "PSH", "RST", "SYN", "T0", "TAIL",
    "Deflater", "Flow", "ipv4", "ipv6", "pcap_bytes", "pcapng_bytes", "request", "response", "tcp_seg",
    "wrap", "write_big_capture", "write_fleet_capture", "ws_frame",
]  # fmt: skip

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
PA = PSH | ACK
M32 = 0xFFFFFFFF
T0 = 1_733_486_257_000_000  # 2024-12-06 11:57:37 UTC, in µs
KEY = b"\x37\xfa\x21\x3d"
TAIL = b"\x00\x00\xff\xff"
LINKTYPES = {"eth": 1, "vlan": 1, "sll": 113, "sll2": 276, "null": 0, "loop": 108, "raw": 101, "ipv4": 228, "ipv6": 229}


def ws_frame(payload: bytes, op: int = 1, *, mask: bytes | None = None, fin: bool = True, rsv1: bool = False) -> bytes:
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | op
    m = 0x80 if mask else 0
    n = len(payload)
    if n < 126:
        head = bytes([b0, m | n])
    elif n < 65536:
        head = bytes([b0, m | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([b0, m | 127]) + n.to_bytes(8, "big")
    if mask:
        k = (mask * (n // 4 + 1))[:n]
        payload = (int.from_bytes(payload, "big") ^ int.from_bytes(k, "big")).to_bytes(n, "big") if n else b""
        head += mask
    return head + payload


class Deflater:
    """permessage-deflate sender side: one stream (context takeover) or a fresh one per message."""

    def __init__(self, takeover: bool = True) -> None:
        self.takeover = takeover
        self.c = zlib.compressobj(9, zlib.DEFLATED, -15)

    def __call__(self, data: bytes) -> bytes:
        if not self.takeover:
            self.c = zlib.compressobj(9, zlib.DEFLATED, -15)
        out = self.c.compress(data) + self.c.flush(zlib.Z_SYNC_FLUSH)
        assert out.endswith(TAIL)
        return out[:-4]


def tcp_seg(sport: int, dport: int, seq: int, ack: int, flags: int, payload: bytes) -> bytes:
    return struct.pack(">HHIIBBHHH", sport, dport, seq & M32, ack & M32, 5 << 4, flags, 65535, 0, 0) + payload


def ipv4(src: str, dst: str, seg: bytes, *, frag: int = 0) -> bytes:
    hdr = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(seg), 1, frag, 64, 6, 0,
                      socket.inet_aton(src), socket.inet_aton(dst))  # fmt: skip
    return hdr + seg


def ipv6(src: str, dst: str, seg: bytes, *, ext: bool = False) -> bytes:
    body = seg
    nh = 6
    if ext:  # hop-by-hop options, then destination options, then TCP
        body = bytes([60, 0]) + b"\x01\x04\x00\x00\x00\x00" + bytes([6, 0]) + b"\x01\x04\x00\x00\x00\x00" + seg
        nh = 0
    hdr = struct.pack(">IHBB16s16s", 6 << 28, len(body), nh, 64,
                      socket.inet_pton(socket.AF_INET6, src), socket.inet_pton(socket.AF_INET6, dst))  # fmt: skip
    return hdr + body


def wrap(link: str, ip: bytes, v6: bool) -> bytes:
    et = 0x86DD if v6 else 0x0800
    mac1, mac2 = b"\x02\x00\x00\x00\x00\x01", b"\x02\x00\x00\x00\x00\x02"
    if link == "eth":
        return (mac1 + mac2 + et.to_bytes(2, "big") + ip).ljust(60, b"\x00")  # short frames are padded
    if link == "vlan":
        return mac1 + mac2 + b"\x81\x00\x00\x07" + b"\x81\x00\x00\x08" + et.to_bytes(2, "big") + ip
    if link == "sll":
        return struct.pack(">HHH8sH", 0, 1, 6, mac1 + b"\x00\x00", et) + ip
    if link == "sll2":
        return struct.pack(">HHIHBB8s", et, 0, 3, 1, 0, 6, mac1 + b"\x00\x00") + ip
    if link == "null":
        return struct.pack("<I", 30 if v6 else 2) + ip
    if link == "loop":
        return struct.pack(">I", 30 if v6 else 2) + ip
    return ip  # raw, ipv4, ipv6


class Flow:
    """One TCP connection, written packet by packet as a charger (client) and a CSMS (server) would."""

    def __init__(self, *, v6: bool = False, link: str = "eth", client=None, server=None, t0: int = T0,
                 ext6: bool = False) -> None:  # fmt: skip
        self.v6, self.link, self.ext6 = v6, link, ext6
        self.c = client or (("2001:db8::1" if v6 else "10.0.0.1"), 40001)
        self.s = server or (("2001:db8::2" if v6 else "10.0.0.2"), 9000)
        self.seq = {True: 1000, False: 5000}
        self.t = t0
        self.packets: list[tuple[int, bytes]] = []

    def raw(self, from_client: bool, payload: bytes = b"", flags: int = PA, *, seq: int | None = None,
            dt: int = 1000) -> None:  # fmt: skip
        src, dst = (self.c, self.s) if from_client else (self.s, self.c)
        seq = self.seq[from_client] if seq is None else seq
        ack = self.seq[not from_client] if flags & ACK else 0
        seg = tcp_seg(src[1], dst[1], seq, ack, flags, payload)
        ip = ipv6(src[0], dst[0], seg, ext=self.ext6) if self.v6 else ipv4(src[0], dst[0], seg)
        self.t += dt
        self.packets.append((self.t, wrap(self.link, ip, self.v6)))

    def send(self, from_client: bool, data: bytes, *, splits: list[int] | None = None, dt: int = 1000) -> None:
        cuts = [0, *(splits or range(1460, len(data), 1460)), len(data)]
        for a, b in zip(cuts, cuts[1:], strict=False):
            if b > a:
                self.raw(from_client, data[a:b], dt=dt)
                self.seq[from_client] += b - a

    def syn(self) -> Flow:
        self.raw(True, flags=SYN)
        self.seq[True] += 1
        self.raw(False, flags=SYN | ACK)
        self.seq[False] += 1
        self.raw(True, flags=ACK)
        return self

    def upgrade(self, path: str = "/ocpp/CP_1", protocol: str | None = "ocpp1.6", *, extensions: str | None = None,
                auth: str | None = None) -> Flow:  # fmt: skip
        self.send(True, request(path, protocol, extensions, auth))
        self.send(False, response(protocol, extensions))
        return self

    def msg(self, from_client: bool, text: str | bytes, **kw) -> bytes:
        data = text.encode() if isinstance(text, str) else text
        out = ws_frame(data, mask=KEY if from_client else None, **kw)
        self.send(from_client, out)
        return out

    def fin(self) -> Flow:
        self.raw(True, flags=FIN | ACK)
        self.seq[True] += 1
        self.raw(False, flags=FIN | ACK)
        self.seq[False] += 1
        self.raw(True, flags=ACK)
        return self


def request(path: str, protocol: str | None, extensions: str | None = None, auth: str | None = None) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: csms.example:9000", "Upgrade: websocket", "Connection: Upgrade",
             "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13"]  # fmt: skip
    if protocol:
        lines.append(f"Sec-WebSocket-Protocol: {protocol}, ocpp2.0.1")
    if extensions:
        lines.append("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits")
    if auth:
        lines.append(f"Authorization: {auth}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def response(protocol: str | None, extensions: str | None = None) -> bytes:
    lines = ["HTTP/1.1 101 Switching Protocols", "Upgrade: websocket", "Connection: Upgrade",
             "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="]  # fmt: skip
    if protocol:
        lines.append(f"Sec-WebSocket-Protocol: {protocol}")
    if extensions:
        lines.append(f"Sec-WebSocket-Extensions: {extensions}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def pcap_bytes(packets, linktype: int = 1, *, nano: bool = False, big: bool = False) -> bytes:
    e = ">" if big else "<"
    out = [struct.pack(e + "IHHiIII", 0xA1B23C4D if nano else 0xA1B2C3D4, 2, 4, 0, 0, 262144, linktype)]
    for ts, data in packets:
        sec, us = divmod(ts, 1_000_000)
        out.append(struct.pack(e + "IIII", sec, us * 1000 if nano else us, len(data), len(data)) + data)
    return b"".join(out)


def _block(e: str, btype: int, body: bytes) -> bytes:
    body += b"\x00" * (-len(body) % 4)
    n = len(body) + 12
    return struct.pack(e + "II", btype, n) + body + struct.pack(e + "I", n)


def pcapng_bytes(packets, interfaces=((1, 6),), *, big: bool = False, kinds=None) -> bytes:
    """``packets``: (ts_us, data[, interface]); ``interfaces``: (linktype, if_tsresol); ``kinds``: block per packet."""
    e = ">" if big else "<"
    out = [_block(e, 0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1))]
    for lt, resol in interfaces:
        opts = struct.pack(e + "HH", 9, 1) + bytes([resol, 0, 0, 0]) + struct.pack(e + "HH", 0, 0)
        out.append(_block(e, 1, struct.pack(e + "HHI", lt, 0, 262144) + opts))
    out.append(_block(e, 0x0BAD, b"an unknown block is skipped"))
    for n, p in enumerate(packets):
        ts, data = p[0], p[1]
        iface = p[2] if len(p) > 2 else 0
        resol = interfaces[iface][1]
        units = ts * 10 ** (resol - 6) if resol >= 6 else ts // 10 ** (6 - resol)
        kind = kinds[n] if kinds else "epb"
        if kind == "spb":
            out.append(_block(e, 3, struct.pack(e + "I", len(data)) + data))
        elif kind == "pb":
            out.append(_block(e, 2, struct.pack(e + "HHIIII", iface, 0, units >> 32, units & M32, len(data),
                                                len(data)) + data))  # fmt: skip
        else:
            out.append(_block(e, 6, struct.pack(e + "IIIII", iface, units >> 32, units & M32, len(data),
                                                len(data)) + data))  # fmt: skip
    return b"".join(out)


# ---------------------------------------------------------------------------------------------------------
# a large synthetic capture, for measuring speed
# ---------------------------------------------------------------------------------------------------------


def _deflating(i: int, share: Fraction) -> bool:
    """Whether charger ``i`` negotiates permessage-deflate: evenly spread, ``share`` of them, charger 0 first
    (with 1/4 these are the chargers ``i % 4 == 0``)."""
    return (i * share.numerator) // share.denominator != ((i - 1) * share.numerator) // share.denominator


def write_big_capture(path: str, messages: int, *, chargers: int = 200, seed: int = 7,
                      compress_share: float = 0.25) -> dict:  # fmt: skip
    """Ethernet/IPv4/TCP/WebSocket, masked client frames, ``compress_share`` of the chargers with
    permessage-deflate (context takeover), an ACK after every data packet. Streams to ``path``; memory stays
    small.

    Every charger connects (SYN, HTTP upgrade) first; then ``messages // 2`` MeterValues CALLs, each
    answered by a CALLRESULT, on randomly chosen chargers, 300 µs apart. Returns what was written: the
    message count (``messages`` rounded down to even), the chargers and how many compress, packets and bytes.
    """
    import random

    if not 0 <= compress_share <= 1:
        raise ValueError(f"compress_share must be between 0 and 1, not {compress_share}")
    share = Fraction(str(compress_share)).limit_denominator(1_000_000)
    rnd = random.Random(seed)
    flows = []
    packets = 0
    for i in range(chargers):
        f = Flow(client=(f"10.1.{i // 250}.{i % 250 + 1}", 30000 + i), server=("10.0.0.2", 9000), t0=T0)
        deflate = _deflating(i, share)
        ext = "permessage-deflate; client_max_window_bits=15" if deflate else None
        f.syn().upgrade(path=f"/ocpp/CP{i:05d}", extensions=ext)
        flows.append((f, (Deflater(), Deflater()) if deflate else None))
    with open(path, "wb") as out:
        out.write(pcap_bytes([]))
        for f, _ in flows:
            packets += len(f.packets)
            out.write(pcap_bytes(f.packets)[24:])
            f.packets = []
        t = T0 + 1_000_000
        for n in range(messages // 2):
            f, z = flows[rnd.randrange(chargers)]
            f.t = t = t + 300
            mid = f"{n:08x}-{rnd.getrandbits(32):08x}"
            call = (f'[2,"{mid}","MeterValues",{{"connectorId":1,"meterValue":[{{"timestamp":"2024-12-06T12:00:00Z",'
                    f'"sampledValue":[{{"value":"{rnd.randrange(10**6)}","measurand":"Energy.Active.Import.Register"}}]}}]}}]')  # fmt: skip
            res = f'[3,"{mid}",{{}}]'
            for from_client, text in ((True, call), (False, res)):
                data = text.encode()
                if z:
                    data = ws_frame((z[0] if from_client else z[1])(data), mask=KEY if from_client else None, rsv1=True)
                else:
                    data = ws_frame(data, mask=KEY if from_client else None)
                f.send(from_client, data)
                f.raw(not from_client, b"", flags=ACK, dt=50)
            packets += len(f.packets)
            out.write(pcap_bytes(f.packets)[24:])
            f.packets = []
        size = out.tell()
    return {
        "messages": messages // 2 * 2,
        "calls": messages // 2,
        "chargers": chargers,
        "compressed_chargers": sum(1 for _, z in flows if z),
        "compress_share": compress_share,
        "seed": seed,
        "packets": packets,
        "bytes": size,
    }


def write_fleet_capture(path: str, frames, *, compress_share: float = 0.25) -> dict:
    """Write recorded traffic as the CSMS's port would have seen it: ``frames`` yields
    ``(ts_us, charge_point_id, from_charger, text, subprotocol)`` in time order. Each charge point gets one
    connection (SYN and HTTP upgrade just before its first frame, path ``/ocpp/<id>``), ``compress_share`` of
    them permessage-deflate (context takeover); charger frames are masked; every data packet is acknowledged.
    A message's last segment carries the frame's own time (segments 1 µs apart). Streams to ``path``; memory grows only with the charge points."""
    if not 0 <= compress_share <= 1:
        raise ValueError(f"compress_share must be between 0 and 1, not {compress_share}")
    share = Fraction(str(compress_share)).limit_denominator(1_000_000)
    flows: dict[str, tuple[Flow, tuple[Deflater, Deflater] | None]] = {}
    packets = messages = 0
    with open(path, "wb") as out:
        out.write(pcap_bytes([]))
        for ts, cp, from_client, text, proto in frames:
            entry = flows.get(cp)
            if entry is None:
                i = len(flows)
                deflate = _deflating(i, share)
                f = Flow(client=(f"10.1.{i // 250}.{i % 250 + 1}", 30000 + i % 30000), server=("10.0.0.2", 9000),
                         t0=ts - 20_000)
                f.syn().upgrade(path=f"/ocpp/{cp}", protocol=proto,
                                extensions="permessage-deflate; client_max_window_bits=15" if deflate else None)
                entry = flows[cp] = (f, (Deflater(), Deflater()) if deflate else None)
            f, z = entry
            data = text.encode()
            if z:
                data = ws_frame(z[0 if from_client else 1](data), mask=KEY if from_client else None, rsv1=True)
            else:
                data = ws_frame(data, mask=KEY if from_client else None)
            f.t = ts - (len(data) + 1459) // 1460  # the last segment completes the message at exactly ts
            f.send(from_client, data, dt=1)
            f.raw(not from_client, b"", flags=ACK, dt=1)
            messages += 1
            packets += len(f.packets)
            out.write(pcap_bytes(f.packets)[24:])
            f.packets = []
        size = out.tell()
    return {"messages": messages, "chargers": len(flows), "compressed_chargers": sum(1 for _, z in flows.values() if z),
            "compress_share": compress_share, "packets": packets, "bytes": size}


def _jsonl_frames(path: str):
    """``(ts_us, cp, from_charger, text, subprotocol)`` from a JSON lines log like captures/fleet-demo.jsonl."""
    from datetime import datetime

    import orjson

    with open(path, "rb") as fh:
        for line in fh:
            d = orjson.loads(line)
            ts = datetime.fromisoformat(d["timestamp"].replace("Z", "+00:00"))
            yield (int(ts.timestamp()) * 1_000_000 + ts.microsecond, d["charge_point_id"],
                   d["direction"] == "cp->csms", d["message"], d.get("subprotocol") or "ocpp1.6")


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json
    import time

    p = argparse.ArgumentParser(prog="python -m ocpptool.testing.pcap",
                                description="Write a large synthetic OCPP-J capture (pcap), streaming to disk.")  # fmt: skip
    p.add_argument("out", help="the pcap file to write")
    p.add_argument("messages", type=int, nargs="?",
                   help="WebSocket messages (CALL + CALLRESULT pairs; rounded down to even)")  # fmt: skip
    p.add_argument("--from-jsonl", metavar="LOG",
                   help="instead: the traffic of this JSON lines log (e.g. from bench/gen_fleet.py), one "
                        "connection per charge point")  # fmt: skip
    p.add_argument("--chargers", type=int, default=200, help="connections, one charger each (default 200)")
    p.add_argument("--compress-share", type=float, default=0.25,
                   help="share of the chargers using permessage-deflate (default 0.25)")
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    if (args.messages is None) == (args.from_jsonl is None):
        p.error("give either MESSAGES or --from-jsonl LOG")
    if args.chargers < 1 or (args.messages is not None and args.messages < 0):
        p.error("need at least one charger and a non-negative message count")
    if not 0 <= args.compress_share <= 1:
        p.error("--compress-share must be between 0 and 1")
    t0 = time.perf_counter()
    if args.from_jsonl:
        facts = write_fleet_capture(args.out, _jsonl_frames(args.from_jsonl), compress_share=args.compress_share)
    else:
        facts = write_big_capture(args.out, args.messages, chargers=args.chargers, seed=args.seed,
                                  compress_share=args.compress_share)  # fmt: skip
    facts["seconds"] = round(time.perf_counter() - t0, 3)
    print(json.dumps(facts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
