"""Link layer, IPv4/IPv6 and TCP headers: one packet to ``(key, flags, seq, ack, payload)``.

``key`` is the directed connection key: source address, destination address, then the two ports as they
appear on the wire (4 + 4 + 4 bytes for IPv4, 16 + 16 + 4 for IPv6). Anything that is not TCP gives
``None``; an IP fragment gives :data:`FRAGMENT` (fragments are counted, not reassembled).
"""

from __future__ import annotations

import socket
import struct

FRAGMENT = "fragment"
_V4 = struct.Struct(">BxHxxHxB").unpack_from  # version/IHL, total length, flags/offset, protocol
_TCP = struct.Struct(">4xIIBB").unpack_from  # seq, ack, data offset, flags

ETHERNET, NULL, LOOP, RAW, RAW_BSD, RAW_OPENBSD, SLL, SLL2, IPV4, IPV6 = 1, 0, 108, 101, 12, 14, 113, 276, 228, 229
SUPPORTED = {ETHERNET, NULL, LOOP, RAW, RAW_BSD, RAW_OPENBSD, SLL, SLL2, IPV4, IPV6}
_VLAN = (0x8100, 0x88A8, 0x9100)
_V6_EXT = (0, 43, 60, 135, 139, 140, 253, 254)  # hop-by-hop, routing, destination options, mobility, HIP, shim6, tests


def tcp_of(lt: int, data: bytes):
    """Decode one captured packet; see the module docstring."""
    try:
        if lt == 1:
            et = data[12] << 8 | data[13]
            o = 14
            while et in _VLAN:
                et = data[o + 2] << 8 | data[o + 3]
                o += 4
        elif lt == 113:
            et = data[14] << 8 | data[15]
            o = 16
        elif lt == 276:
            et = data[0] << 8 | data[1]
            o = 20
        elif lt == 0 or lt == 108:
            fam = int.from_bytes(data[:4], "big" if lt == 108 else "little")
            if fam > 0xFFFF:  # written in the other byte order
                fam = int.from_bytes(data[:4], "little" if lt == 108 else "big")
            et = 0x0800 if fam == 2 else 0x86DD if fam in (10, 24, 28, 30) else 0
            o = 4
        elif lt in (101, 12, 14):
            v = data[0] >> 4
            et = 0x0800 if v == 4 else 0x86DD if v == 6 else 0
            o = 0
        elif lt == 228:
            et, o = 0x0800, 0
        elif lt == 229:
            et, o = 0x86DD, 0
        else:
            return None
        if et == 0x0800:
            b0, tot, fragw, proto = _V4(data, o)
            if b0 >> 4 != 4 or proto != 6:
                return None
            if fragw & 0x3FFF:  # more fragments, or an offset
                return FRAGMENT
            end = o + tot if tot else len(data)  # 0: segmentation offload wrote no length
            t = o + (b0 & 15) * 4
            key = data[o + 12 : o + 20] + data[t : t + 4]
        elif et == 0x86DD:
            if data[o] >> 4 != 6:
                return None
            plen = data[o + 4] << 8 | data[o + 5]
            nh = data[o + 6]
            end = o + 40 + plen if plen else len(data)
            t = o + 40
            while nh != 6:
                if nh in _V6_EXT:
                    nh, t = data[t], t + (data[t + 1] + 1) * 8
                elif nh == 44:  # fragment header
                    if (data[t + 2] << 8 | data[t + 3]) & 0xFFF9:
                        return FRAGMENT
                    nh, t = data[t], t + 8
                elif nh == 51:  # authentication header
                    nh, t = data[t], t + (data[t + 1] + 2) * 4
                else:
                    return None
            key = data[o + 8 : o + 40] + data[t : t + 4]
        else:
            return None
        seq, ack, doff, flags = _TCP(data, t)
        if len(key) != 12 and len(key) != 36:
            return None
        return key, flags, seq, ack, data[t + (doff >> 4) * 4 : end]
    except (IndexError, struct.error):
        return None


def reverse_key(key: bytes) -> bytes:
    if len(key) == 12:
        return key[4:8] + key[0:4] + key[10:12] + key[8:10]
    return key[16:32] + key[0:16] + key[34:36] + key[32:34]


def endpoint(key: bytes, side: int) -> str:
    """``ip:port`` (``[v6]:port``) of the source (side 0) or destination (side 1) of a directed key."""
    if len(key) == 12:
        ip = socket.inet_ntop(socket.AF_INET, key[side * 4 : side * 4 + 4])
        port = int.from_bytes(key[8 + side * 2 : 10 + side * 2], "big")
        return f"{ip}:{port}"
    ip = socket.inet_ntop(socket.AF_INET6, key[side * 16 : side * 16 + 16])
    port = int.from_bytes(key[32 + side * 2 : 34 + side * 2], "big")
    return f"[{ip}]:{port}"


def ports(key: bytes) -> tuple[int, int]:
    p = key[-4:]
    return p[0] << 8 | p[1], p[2] << 8 | p[3]
