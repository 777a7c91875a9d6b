"""The native capture engine: pcap/pcapng, TCP reassembly, HTTP upgrade, WebSocket, permessage-deflate.

Captures are built here, at test time, by a small writer (no binary fixtures). Run this module to write a
large synthetic capture for measuring speed::

    uv run python -m tests.test_capture_native OUT.pcap MESSAGES
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import struct
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import orjson
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ocpptool.sources.base import CONN_META_SCHEMA, RAW_SCHEMA, ConnMeta, SourceError, SourceNote
from ocpptool.sources.capture import CaptureOptions, native
from ocpptool.testing.pcap import (
    ACK,
    FIN,
    KEY,
    LINKTYPES,
    PA,
    T0,
    Deflater,
    Flow,
    ipv4,
    pcap_bytes,
    pcapng_bytes,
    request,
    response,
    tcp_seg,
    wrap,
    write_big_capture,
    ws_frame,
)

from .conftest import PUBLIC, need

# ---------------------------------------------------------------------------------------------------------
# running the engine on captures written by ocpptool.testing.pcap
# ---------------------------------------------------------------------------------------------------------


def decode(data: bytes, ports: tuple[int, ...] = ()) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Run the engine on capture bytes: (rows, ConnMeta frame)."""
    out = [o for o in native.read(io.BytesIO(data), "test.pcap", CaptureOptions(ports=ports))
           if not isinstance(o, SourceNote)]
    frames = [o for o in out if isinstance(o, pl.DataFrame)]
    metas = [o.frame for o in out if isinstance(o, ConnMeta)]
    assert len(metas) == 1 and isinstance(out[-1], ConnMeta)
    for f in frames:
        assert f.schema == pl.Schema(RAW_SCHEMA)
    assert metas[0].schema == pl.Schema(CONN_META_SCHEMA)
    rows = pl.concat(frames) if frames else pl.DataFrame(schema=RAW_SCHEMA)
    return rows, metas[0]


def texts(rows: pl.DataFrame) -> list[str]:
    return rows.filter(pl.col("weird_reason").is_null())["text"].to_list()


BOOT = '[2,"1","BootNotification",{"chargePointVendor":"V","chargePointModel":"M"}]'
BOOT_OK = '[3,"1",{"currentTime":"2024-12-06T11:57:37Z","interval":10,"status":"Accepted"}]'
HB = '[2,"2","Heartbeat",{}]'
HB_OK = '[3,"2",{"currentTime":"2024-12-06T11:57:47Z"}]'
EXCHANGE = [(True, BOOT), (False, BOOT_OK), (True, HB), (False, HB_OK)]


def session(flow: Flow, exchange=EXCHANGE, **upgrade) -> Flow:
    flow.syn().upgrade(**upgrade)
    for from_client, text in exchange:
        flow.msg(from_client, text)
    return flow


# ---------------------------------------------------------------------------------------------------------
# formats, link layers, IP versions
# ---------------------------------------------------------------------------------------------------------


def test_a_plain_ethernet_ipv4_session_gives_one_row_per_message():
    """Each WebSocket text message is one row with its connection, direction, charge point, subprotocol and time."""
    flow = session(Flow()).fin()
    rows, meta = decode(pcap_bytes(flow.packets))
    assert texts(rows) == [t for _, t in EXCHANGE]
    assert rows["conn"].unique().to_list() == ["10.0.0.1:40001->10.0.0.2:9000"]
    assert rows["direction"].to_list() == ["cp->csms", "csms->cp", "cp->csms", "csms->cp"]
    assert set(rows["charge_point_id"]) == {"CP_1"} and set(rows["subprotocol"]) == {"ocpp1.6"}
    assert rows["ts_text"].null_count() == rows.height
    first_msg_packet = 3 + 2 + 1  # SYN, SYN-ACK, ACK, request, response, then the first frame
    assert rows["source_pos"][0] == first_msg_packet
    assert rows["ts"][0] == datetime.fromtimestamp((T0 + first_msg_packet * 1000) / 1e6, UTC)
    m = meta.row(0, named=True)
    assert (m["client"], m["server"], m["url_path"], m["handshake_seen"], m["ocpp"]) == (
        "10.0.0.1:40001", "10.0.0.2:9000", "/ocpp/CP_1", True, True)  # fmt: skip
    assert m["ws_frames"] == 4 and m["closed"] is not None


LINK_CASES = [(link, v6) for link in ("eth", "vlan", "sll", "sll2", "null", "loop", "raw", "ipv4", "ipv6")
              for v6 in (False, True) if not ((link == "ipv4" and v6) or (link == "ipv6" and not v6))]


@pytest.mark.parametrize(("link", "v6"), LINK_CASES, ids=[f"{k}-{'ipv6' if v else 'ipv4'}" for k, v in LINK_CASES])
def test_every_link_type_and_ip_version_decodes_the_same_messages(link, v6):
    """Ethernet (with VLAN tags), Linux cooked v1/v2, BSD loopback, raw IP: IPv4 and IPv6 alike."""
    rows, meta = decode(pcap_bytes(session(Flow(link=link, v6=v6)).packets, LINKTYPES[link]))
    assert texts(rows) == [t for _, t in EXCHANGE]
    assert meta["client"][0] == ("[2001:db8::1]:40001" if v6 else "10.0.0.1:40001")


def test_ipv6_extension_headers_are_walked():
    """IPv6 packets with hop-by-hop and destination options still reach TCP."""
    rows, _ = decode(pcap_bytes(session(Flow(v6=True, ext6=True)).packets))
    assert texts(rows) == [t for _, t in EXCHANGE]
    assert rows["conn"][0] == "[2001:db8::1]:40001->[2001:db8::2]:9000"


@pytest.mark.parametrize("nano", [False, True], ids=["usec", "nsec"])
@pytest.mark.parametrize("big", [False, True], ids=["le", "be"])
def test_pcap_in_both_byte_orders_and_resolutions(nano, big):
    """Classic pcap, little or big endian, micro or nanosecond, gives the same rows and times."""
    flow = session(Flow())
    rows, _ = decode(pcap_bytes(flow.packets, nano=nano, big=big))
    assert texts(rows) == [t for _, t in EXCHANGE]
    assert rows["ts"][0] == datetime.fromtimestamp((T0 + 6000) / 1e6, UTC)


@pytest.mark.parametrize("resol", [6, 9, 3])
@pytest.mark.parametrize("big", [False, True], ids=["le", "be"])
def test_pcapng_resolutions_and_byte_orders(resol, big):
    """pcapng with µs, ns or ms time stamps in either byte order: same rows, times at the stated resolution."""
    flow = session(Flow())
    rows, _ = decode(pcapng_bytes(flow.packets, ((1, resol),), big=big))
    assert texts(rows) == [t for _, t in EXCHANGE]
    assert rows["ts"][0] == datetime.fromtimestamp((T0 + 6000) // 1000 * 1000 / 1e6, UTC) or resol != 3
    if resol != 3:
        assert rows["ts"][0] == datetime.fromtimestamp((T0 + 6000) / 1e6, UTC)


def test_pcapng_interfaces_have_their_own_link_types_and_resolutions():
    """Two interfaces (Ethernet in µs, Linux cooked in ns) and simple/obsolete packet blocks all count."""
    a = session(Flow())
    other = [(c, t.replace('"2"', '"7"')) for c, t in EXCHANGE]  # not a copy of the first connection
    b = session(Flow(link="sll", client=("10.0.0.3", 40002), t0=T0 + 500), other)
    packets = sorted([(t, d, 0) for t, d in a.packets] + [(t, d, 1) for t, d in b.packets])
    kinds = ["epb"] * len(packets)
    kinds[0] = "spb"  # interface 0, no time stamp: a SYN
    kinds[1] = "pb"
    rows, meta = decode(pcapng_bytes(packets, ((1, 6), (113, 9)), kinds=kinds))
    assert rows.height == 8 and meta.height == 2
    assert rows.filter(pl.col("conn").str.starts_with("10.0.0.3"))["text"].to_list() == [t for _, t in other]


# ---------------------------------------------------------------------------------------------------------
# TCP reassembly
# ---------------------------------------------------------------------------------------------------------


def test_out_of_order_retransmitted_and_overlapping_segments_are_reassembled():
    """Segments that arrive late, twice, or overlapping still give each message once, intact."""
    flow = Flow().syn().upgrade()
    big = '[2,"9","DataTransfer",{"vendorId":"x","data":"' + "y" * 3000 + '"}]'
    data = ws_frame(big.encode(), mask=KEY)
    s = flow.seq[True]
    flow.raw(True, data[1000:2000], seq=s + 1000)  # second part first
    flow.raw(True, data[0:1000], seq=s)  # then the first
    flow.raw(True, data[0:1500], seq=s)  # a retransmission overlapping both
    flow.raw(True, data[1500:2500], seq=s + 1500)  # overlaps what is there and adds 500 bytes
    flow.raw(True, data[2500:], seq=s + 2500)
    flow.raw(True, data[2500:], seq=s + 2500)  # and the last one twice
    flow.seq[True] += len(data)
    flow.msg(False, '[3,"9",{"status":"Accepted"}]')
    rows, _ = decode(pcap_bytes(flow.packets))
    assert texts(rows) == [big, '[3,"9",{"status":"Accepted"}]']
    assert rows.filter(pl.col("weird_reason").is_not_null()).height == 0
    assert rows["source_pos"][0] == 10  # the packet that completed the message (the last of the five)


def test_overlapping_bytes_keep_their_first_copy():
    """When a retransmission carries different bytes for the same sequence numbers, the first copy wins."""
    flow = Flow().syn().upgrade()
    data = ws_frame(HB.encode(), mask=KEY)
    s = flow.seq[True]
    flow.raw(True, data[:10], seq=s)
    flow.raw(True, b"\xff" * 20, seq=s)  # garbage over bytes already seen, and 10 more
    flow.raw(True, data[20:], seq=s + 20)
    rows, _ = decode(pcap_bytes(flow.packets))
    assert rows["weird_reason"].to_list() != [None] or texts(rows) != [HB]  # the garbage tail is kept ...
    flow2 = Flow().syn().upgrade()
    s = flow2.seq[True]
    flow2.raw(True, data[:10], seq=s)
    flow2.raw(True, data[:5] + b"\xff" * 5 + data[10:], seq=s)  # ... but bytes 5..9 are not overwritten
    rows2, _ = decode(pcap_bytes(flow2.packets))
    assert texts(rows2) == [HB]


def test_a_gap_gives_one_tcp_gap_weird_and_later_frames_are_kept():
    """Bytes missing from the capture are one tcp-gap row; the stream resumes at the next frame."""
    flow = Flow().syn().upgrade()
    flow.msg(True, BOOT)
    flow.msg(False, BOOT_OK)
    lost = ws_frame(HB.encode(), mask=KEY)
    flow.seq[True] += len(lost)  # never captured
    flow.raw(False, b"", flags=ACK)  # the CSMS acknowledges it
    flow.msg(True, '[2,"3","Heartbeat",{}]')
    flow.msg(False, '[3,"3",{"currentTime":"2024-12-06T11:57:57Z"}]')
    rows, _ = decode(pcap_bytes(flow.packets))
    weird = rows.filter(pl.col("weird_reason").is_not_null())
    assert weird["weird_reason"].to_list() == ["tcp-gap"]
    assert weird["weird_detail"][0].startswith(f"{len(lost)} bytes missing")
    assert weird["direction"][0] == "cp->csms"
    assert texts(rows) == [BOOT, BOOT_OK, '[2,"3","Heartbeat",{}]', '[3,"3",{"currentTime":"2024-12-06T11:57:57Z"}]']


def test_a_gap_inside_a_frame_resyncs_at_the_next_frame_header():
    """A hole in the middle of a frame loses that message only; the next frames, even coalesced, decode."""
    flow = Flow().syn().upgrade()
    first = ws_frame(BOOT.encode(), mask=KEY)
    after = ws_frame(b'[2,"5","Heartbeat",{}]', mask=KEY) + ws_frame(b'[2,"6","Heartbeat",{}]', mask=KEY)
    s = flow.seq[True]
    flow.raw(True, first[:20], seq=s)
    flow.raw(True, first[40:] + after[:7], seq=s + 40)  # bytes 20..39 never captured, next frame starts inside
    flow.raw(True, after[7:], seq=s + len(first) + 7)
    flow.seq[True] += len(first) + len(after)
    flow.raw(True, flags=FIN | ACK)
    rows, _ = decode(pcap_bytes(flow.packets))
    assert rows["weird_reason"].to_list()[0] == "tcp-gap"
    assert texts(rows) == ['[2,"5","Heartbeat",{}]', '[2,"6","Heartbeat",{}]']


def test_a_capture_that_starts_mid_connection_is_decoded():
    """No SYN and no handshake in the capture: frames are still found and directions come from masking."""
    flow = Flow()
    flow.raw(False, b"", flags=ACK)  # first thing seen: the server's ACK
    for from_client, text in EXCHANGE:
        flow.msg(from_client, text)
    rows, meta = decode(pcap_bytes(flow.packets))
    assert texts(rows) == [t for _, t in EXCHANGE]
    assert rows["direction"].to_list() == ["cp->csms", "csms->cp", "cp->csms", "csms->cp"]
    assert rows["charge_point_id"].null_count() == 4
    assert meta["handshake_seen"].to_list() == [False] and meta["ocpp"].to_list() == [True]


def test_reusing_a_four_tuple_after_close_names_the_second_connection_with_2():
    """A new SYN on the same addresses and ports after the first connection closed is a new connection, #2."""
    a = session(Flow()).fin()
    b = session(Flow(t0=a.t + 10_000))
    b.seq = {True: 77_000, False: 88_000}
    b.packets = []
    session(b)
    rows, meta = decode(pcap_bytes(a.packets + b.packets))
    assert rows["conn"].unique(maintain_order=True).to_list() == [
        "10.0.0.1:40001->10.0.0.2:9000", "10.0.0.1:40001->10.0.0.2:9000#2"]  # fmt: skip
    assert meta.height == 2


def exchange_stream() -> tuple[bytes, bytes]:
    c = ws_frame(BOOT.encode(), mask=KEY) + ws_frame(b"", 9, mask=KEY) + ws_frame(HB.encode(), mask=KEY)
    s = ws_frame(BOOT_OK.encode()) + ws_frame(b"", 10) + ws_frame(HB_OK.encode())
    return request("/CP_1", "ocpp1.6") + c, response("ocpp1.6") + s


def test_messages_are_the_same_however_tcp_splits_the_bytes():
    """The client and server byte streams cut at every possible point give the same messages."""
    cbytes, sbytes = exchange_stream()
    want = [BOOT, HB, BOOT_OK, HB_OK]
    for k in range(1, max(len(cbytes), len(sbytes))):
        flow = Flow().syn()
        flow.send(True, cbytes, splits=[k] if k < len(cbytes) else None)
        flow.send(False, sbytes, splits=[k] if k < len(sbytes) else None)
        rows, _ = decode(pcap_bytes(flow.packets))
        assert rows["weird_reason"].null_count() == rows.height, k
        assert sorted(texts(rows)) == sorted(want), k
    flow = Flow().syn()  # and one byte per segment
    flow.send(True, cbytes, splits=list(range(1, len(cbytes))))
    flow.send(False, sbytes, splits=list(range(1, len(sbytes))))
    rows, _ = decode(pcap_bytes(flow.packets))
    assert texts(rows) == want


# ---------------------------------------------------------------------------------------------------------
# HTTP upgrade and WebSocket framing
# ---------------------------------------------------------------------------------------------------------


def test_handshake_gives_charge_point_id_auth_user_and_never_the_password():
    """The last URL segment (percent-decoded) is the charge point; Basic auth records the user, not the secret."""
    auth = "Basic " + base64.b64encode(b"CP 7:s3cret-pass").decode()
    flow = session(Flow(), path="/steve/websocket/CentralSystemService/CP%207/?x=1", auth=auth)
    rows, meta = decode(pcap_bytes(flow.packets))
    assert set(rows["charge_point_id"]) == {"CP 7"}
    m = meta.row(0, named=True)
    assert m["auth"] == "basic user=CP 7"
    assert m["url_path"] == "/steve/websocket/CentralSystemService/CP%207/"
    dump = str(meta.to_dicts()) + str(rows.to_dicts())
    assert "s3cret" not in dump and base64.b64encode(b"CP 7:s3cret-pass").decode() not in dump


def test_lengths_of_7_16_and_64_bits_and_masking():
    """Short, medium (16-bit) and long (64-bit length) messages, masked by the client, come out intact."""
    flow = Flow().syn().upgrade()
    msgs = []
    for n in (10, 300, 70_000):
        text = '[2,"L","DataTransfer",{"data":"' + "z" * n + '"}]'
        msgs.append(text)
        flow.msg(True, text)
    rows, _ = decode(pcap_bytes(flow.packets))
    assert texts(rows) == msgs


def test_fragmented_message_with_a_ping_between_fragments():
    """Continuation frames are joined into one message even with a control frame between them."""
    flow = Flow().syn().upgrade()
    data = BOOT.encode()
    flow.send(True, ws_frame(data[:10], 1, mask=KEY, fin=False))
    flow.send(True, ws_frame(b"ping!", 9, mask=KEY))
    flow.send(True, ws_frame(data[10:30], 0, mask=KEY, fin=False))
    flow.send(False, ws_frame(b"ping!", 10))
    flow.send(True, ws_frame(data[30:], 0, mask=KEY))
    rows, meta = decode(pcap_bytes(flow.packets))
    assert texts(rows) == [BOOT]
    assert rows["source_pos"][0] == len(flow.packets)
    assert meta["ws_frames"][0] == 3


@pytest.mark.parametrize("takeover", [True, False], ids=["context-takeover", "no-context-takeover"])
def test_permessage_deflate_with_and_without_context_takeover(takeover):
    """Compressed messages are inflated, whether both sides keep their window or reset it per message."""
    ext = "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12"
    if not takeover:
        ext += "; server_no_context_takeover; client_no_context_takeover"
    flow = Flow().syn().upgrade(extensions=ext)
    dc, ds = Deflater(takeover), Deflater(takeover)
    exchange = EXCHANGE * 3
    for from_client, text in exchange:
        z = (dc if from_client else ds)(text.encode())
        flow.send(from_client, ws_frame(z, mask=KEY if from_client else None, rsv1=True))
    rows, meta = decode(pcap_bytes(flow.packets))
    assert texts(rows) == [t for _, t in exchange]
    assert meta["compression"][0] == ext


def test_compression_without_a_handshake_is_detected_from_rsv1():
    """A capture without the upgrade still inflates compressed frames, whatever the context takeover."""
    for takeover in (True, False):
        flow = Flow()
        dc, ds = Deflater(takeover), Deflater(takeover)
        for from_client, text in EXCHANGE * 2:
            z = (dc if from_client else ds)(text.encode())
            flow.send(from_client, ws_frame(z, mask=KEY if from_client else None, rsv1=True))
        rows, meta = decode(pcap_bytes(flow.packets))
        assert texts(rows) == [t for _, t in EXCHANGE * 2]
        assert meta["compression"][0] == "permessage-deflate"


def test_frames_that_cannot_be_inflated_are_weirds():
    """A compressed frame with a broken deflate stream is an inflate-failed weird, and the next one decodes."""
    flow = Flow().syn().upgrade(extensions="permessage-deflate")
    flow.send(True, ws_frame(b"\xff\xff\xff\xff garbage", mask=KEY, rsv1=True))
    flow.send(True, ws_frame(Deflater()(HB.encode()), mask=KEY, rsv1=True))
    rows, _ = decode(pcap_bytes(flow.packets))
    assert rows["weird_reason"].to_list() == ["inflate-failed", None]
    assert texts(rows) == [HB]


def test_binary_and_bad_utf8_messages_are_weird_rows():
    """A binary message and a text message that is not UTF-8 are rows with a weird reason."""
    flow = Flow().syn().upgrade()
    flow.send(True, ws_frame(b"\x00\x01binary", 2, mask=KEY))
    flow.send(True, ws_frame(b'[2,"1","Heartbeat",{"x":"\xff"}]', mask=KEY))
    rows, _ = decode(pcap_bytes(flow.packets))
    assert rows["weird_reason"].to_list() == ["binary", "bad-utf8"]


def test_close_code_and_reason_go_to_connmeta_not_rows():
    """A close frame is not a message: its code and reason are in the connection facts."""
    flow = session(Flow())
    flow.send(False, ws_frame(struct.pack(">H", 1001) + b"going away", 8))
    flow.send(True, ws_frame(struct.pack(">H", 1001), 8, mask=KEY))
    rows, meta = decode(pcap_bytes(flow.packets))
    assert rows.height == 4
    m = meta.row(0, named=True)
    assert (m["close_code"], m["close_reason"]) == (1001, "going away")
    assert m["closed"] == datetime.fromtimestamp((T0 + (len(flow.packets) - 1) * 1000) / 1e6, UTC)


def test_port_option_decodes_a_connection_without_handshake_even_if_it_does_not_look_like_ocpp():
    """--port makes frames on that port rows (decoded as OCPP, weirds if not), even from mid-frame."""
    flow = Flow()
    odd = ["[9,\"x\"]", "hello"]
    tail = ws_frame(b"tail of an earlier message" * 3, mask=KEY)[30:]
    flow.send(True, tail + ws_frame(odd[0].encode(), mask=KEY))
    flow.msg(False, odd[1])
    rows, _ = decode(pcap_bytes(flow.packets))
    assert rows.height == 0  # the heuristic does not call this OCPP
    rows, meta = decode(pcap_bytes(flow.packets), ports=(9000,))
    assert texts(rows) == odd
    assert rows["direction"].to_list() == ["cp->csms", "csms->cp"]
    assert meta["ocpp"].to_list() == [True]


def test_non_ocpp_websockets_are_counted_not_emitted():
    """A WebSocket with another subprotocol, or none and no OCPP-looking text, is not rows; ConnMeta counts it."""
    other = Flow(client=("10.0.0.5", 40005)).syn().upgrade(protocol="chat")
    other.msg(True, '[2,"1","Heartbeat",{}]')  # looks like OCPP but the subprotocol says otherwise
    plain = Flow(client=("10.0.0.6", 40006)).syn().upgrade(protocol=None)
    plain.msg(True, "list")
    plain.msg(False, "Connected Clients: []")
    ocpp = Flow(client=("10.0.0.7", 40007)).syn().upgrade(protocol=None)
    ocpp.msg(True, "  hello")
    ocpp.msg(True, HB)
    rows, meta = decode(pcap_bytes(sorted(other.packets + plain.packets + ocpp.packets)))
    assert rows["text"].to_list() == ["  hello", HB]  # no subprotocol, but it does speak OCPP-J
    facts = {r["client"]: (r["ocpp"], r["non_ocpp_frames"]) for r in meta.iter_rows(named=True)}
    assert facts == {"10.0.0.5:40005": (False, 1), "10.0.0.6:40006": (False, 2), "10.0.0.7:40007": (True, 0)}


def test_plain_http_and_tls_connections_are_ignored():
    """Other TCP traffic (a web page, TLS) is neither rows nor connections."""
    web = Flow(client=("10.0.0.8", 40008), server=("10.0.0.2", 80)).syn()
    web.send(True, b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n")
    web.send(False, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n\x81\x05hello")
    tls = Flow(client=("10.0.0.9", 40009), server=("10.0.0.2", 443))
    tls.send(True, b"\x17\x03\x03\x00\x10" + os.urandom(16))
    ok = session(Flow())
    data = pcap_bytes(sorted(web.packets + tls.packets + ok.packets))
    rows, meta = decode(data)
    assert texts(rows) == [t for _, t in EXCHANGE]
    assert meta["client"].to_list() == ["10.0.0.1:40001"]
    notes = [o.text for o in native.read(io.BytesIO(data), "t.pcap", CaptureOptions()) if isinstance(o, SourceNote)]
    assert len(notes) == 1 and "10.0.0.2:443" in notes[0] and "--keylog" in notes[0]


def test_ip_fragments_are_counted_as_one_weird():
    """IP fragments are not reassembled: one ip-fragment row says how many were skipped."""
    flow = session(Flow())
    seg = tcp_seg(40001, 9000, 1, 1, PA, b"x" * 100)
    flow.packets.append((flow.t + 1, wrap("eth", ipv4("10.0.0.1", "10.0.0.2", seg, frag=0x2000), False)))
    rows, _ = decode(pcap_bytes(flow.packets))
    assert rows.filter(pl.col("weird_reason") == "ip-fragment")["weird_detail"].to_list()[0].startswith("1 IP")


# ---------------------------------------------------------------------------------------------------------
# "any"-interface duplicates
# ---------------------------------------------------------------------------------------------------------


def twins(differ: bool = False) -> list[tuple[int, bytes]]:
    a = Flow(client=("127.0.0.1", 53404), server=("127.0.0.1", 8180))
    b = Flow(client=("172.18.0.1", 51272), server=("172.18.0.3", 8180), t0=T0 + 200)
    session(a)
    exchange = list(EXCHANGE)
    if differ:
        exchange[3] = (False, '[3,"2",{"currentTime":"2024-12-06T11:59:59Z"}]')
    session(b, exchange)
    return sorted(a.packets + b.packets)


def test_the_same_connection_captured_twice_under_nat_is_kept_once():
    """Docker NAT on the "any" interface: the second copy's rows are dropped and ConnMeta names the first."""
    rows, meta = decode(pcap_bytes(twins()))
    assert texts(rows) == [t for _, t in EXCHANGE]
    assert set(rows["conn"]) == {"127.0.0.1:53404->127.0.0.1:8180"}
    dup = dict(zip(meta["conn"], meta["duplicate_of"], strict=True))
    assert dup == {"127.0.0.1:53404->127.0.0.1:8180": None,
                   "172.18.0.1:51272->172.18.0.3:8180": "127.0.0.1:53404->127.0.0.1:8180"}  # fmt: skip


def test_connections_that_differ_are_not_deduplicated():
    """Two connections with the same start but a different message later are both kept."""
    rows, meta = decode(pcap_bytes(twins(differ=True)))
    assert rows.height == 8
    assert meta["duplicate_of"].null_count() == 2


# ---------------------------------------------------------------------------------------------------------
# damaged files and batching
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_a_truncated_capture_keeps_everything_before_the_cut(fmt):
    """A file cut inside its last record ends with one truncated-capture weird; earlier messages are kept."""
    flow = session(Flow())
    flow.msg(True, '[2,"3","Heartbeat",{}]')
    data = pcap_bytes(flow.packets) if fmt == "pcap" else pcapng_bytes(flow.packets)
    rows, _ = decode(data[:-10])
    assert texts(rows) == [t for _, t in EXCHANGE]
    assert rows["weird_reason"].to_list()[-1] == "truncated-capture"


def test_a_damaged_header_is_one_line_source_error():
    """A capture whose file header is damaged is refused with a one-line error."""
    good = pcap_bytes(session(Flow()).packets)
    bad = good[:4] + b"\x07\x00" + good[6:]
    with pytest.raises(SourceError, match="damaged pcap header"):
        decode(bad)
    ng = pcapng_bytes(session(Flow()).packets)
    with pytest.raises(SourceError, match="byte-order"):
        decode(ng[:8] + b"\x00\x00\x00\x00" + ng[12:])


def _fuzz_base() -> bytes:
    ext = "permessage-deflate"
    flow = Flow().syn().upgrade(extensions=ext)
    d = Deflater()
    flow.send(True, ws_frame(d(BOOT.encode()), mask=KEY, rsv1=True))
    flow.send(True, ws_frame(b"abc", 1, mask=KEY, fin=False) + ws_frame(b"", 9, mask=KEY) + ws_frame(b"def", 0, mask=KEY))
    flow.msg(False, BOOT_OK)
    return pcap_bytes(flow.packets)


FUZZ_BASE = _fuzz_base()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(24, len(FUZZ_BASE) - 1), st.integers(0, 255)), min_size=1, max_size=8),
       st.integers(24, len(FUZZ_BASE)))  # fmt: skip
def test_damaged_bytes_never_raise(flips, cut):
    """Whatever bytes of a capture are damaged after its header, the reader returns rows instead of failing."""
    data = bytearray(FUZZ_BASE)
    for i, b in flips:
        data[i] = b
    rows, _ = decode(bytes(data[:cut]))
    assert "internal-error" not in rows["weird_reason"].to_list()


def test_frames_without_a_101_in_the_capture_still_decode():
    """The upgrade request is seen but the response is lost: frames of both sides are still messages."""
    flow = Flow().syn()
    flow.send(True, request("/CP_1", "ocpp1.6"))
    resp = response("ocpp1.6")
    flow.seq[False] += len(resp)  # never captured
    flow.raw(True, b"", flags=ACK)
    for from_client, text in EXCHANGE:
        flow.msg(from_client, text)
    rows, _ = decode(pcap_bytes(flow.packets))
    assert texts(rows) == [t for _, t in EXCHANGE]
    ok = rows.filter(pl.col("weird_reason").is_null())
    assert ok["source_pos"].to_list() == [len(flow.packets) - 3 + i for i in range(4)]
    assert rows["weird_reason"].drop_nulls().to_list() == ["tcp-gap"]  # the lost 101 response
    assert set(rows["charge_point_id"]) == {"CP_1"}


def test_rows_come_in_batches(monkeypatch):
    """Large captures are emitted in several RawBatch frames rather than one at the end."""
    monkeypatch.setattr(native, "BATCH", 3)
    flow = Flow().syn().upgrade()
    for i in range(10):
        flow.msg(True, f'[2,"{i}","Heartbeat",{{}}]')
    out = list(native.read(io.BytesIO(pcap_bytes(flow.packets)), "x", CaptureOptions()))
    batches = [o for o in out if isinstance(o, pl.DataFrame)]
    assert [b.height for b in batches] == [3, 3, 3, 1]


# ---------------------------------------------------------------------------------------------------------
# the public captures
# ---------------------------------------------------------------------------------------------------------

PUBLIC_CAPTURES = [
    ("checkocpp/capt.pcapng", 34, 9),
    ("checkocpp/capt_error.pcapng", 2, 0),
    ("checkocpp/capt_error2.0.pcapng", 2, 0),
    ("checkocpp/capt_error2.0.1.pcapng", 6, 0),
    ("checkocpp/extralargeOPENEVSE.pcapng", 12, 8),  # + the web UI's own WebSocket (/ws, JSON objects)
    ("evsetool/cap.pcapng", 8, 0),
]


def _native(path: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    with open(path, "rb") as fh:
        out = list(native.read(fh, str(path), CaptureOptions()))
    meta = next(o.frame for o in out if isinstance(o, ConnMeta))
    return pl.concat([o for o in out if isinstance(o, pl.DataFrame)]), meta


@pytest.mark.shared
@pytest.mark.parametrize(("name", "count", "non_ocpp"), PUBLIC_CAPTURES, ids=[c[0] for c in PUBLIC_CAPTURES])
def test_public_capture_decodes_with_the_documented_count(name, count, non_ocpp):
    """Every public capture gives the README's message count, no weirds, and counts non-OCPP frames apart."""
    rows, meta = _native(need(PUBLIC / name))
    assert rows.filter(pl.col("weird_reason").is_null()).height == count
    assert rows.filter(pl.col("weird_reason").is_not_null()).height == 0
    assert meta["non_ocpp_frames"].sum() == non_ocpp


@pytest.mark.shared
def test_public_captures_facts():
    """Subprotocols, compression, auth, close codes and the Docker duplicate match the README."""
    rows, meta = _native(need(PUBLIC / "checkocpp/capt_error2.0.pcapng"))
    assert set(rows["subprotocol"]) == {"ocpp2.0"}
    rows, meta = _native(need(PUBLIC / "checkocpp/capt.pcapng"))
    ocpp = meta.filter(pl.col("ocpp"))
    assert set(ocpp["charge_point_id"]) == {"E2507-8420-1275", "E2507-8420-1274"}
    assert set(ocpp["close_code"]) == {1000}
    assert set(ocpp["auth"]) == {"basic user=E2507-8420-1275", "basic user=E2507-8420-1274"}
    assert set(meta["compression"]) == {"permessage-deflate; server_max_window_bits=12; client_max_window_bits=12"}
    assert meta.filter(~pl.col("ocpp"))["server"].to_list()[0].endswith(":9008")
    _, meta = _native(need(PUBLIC / "evsetool/cap.pcapng"))
    assert meta["duplicate_of"].to_list() == [None, "127.0.0.1:53404->127.0.0.1:8180"]


def _tshark_texts(path: Path) -> dict[frozenset, list[tuple[int, str]]]:
    out = subprocess.run(
        ["tshark", "-r", str(path), "-Y", "websocket.payload.text", "-T", "json", "-e", "frame.number",
         "-e", "tcp.srcport", "-e", "tcp.dstport", "-e", "websocket.payload.text"],
        capture_output=True, check=True, timeout=60,
    )  # fmt: skip
    by_ports: dict[frozenset, list[tuple[int, str]]] = {}
    for pkt in orjson.loads(out.stdout):
        layers = pkt["_source"]["layers"]
        key = frozenset((int(layers["tcp.srcport"][0]), int(layers["tcp.dstport"][0])))
        for text in layers["websocket.payload.text"]:
            by_ports.setdefault(key, []).append((int(layers["frame.number"][0]), text))
    return by_ports


@pytest.mark.shared
@pytest.mark.parametrize("name", [c[0] for c in PUBLIC_CAPTURES])
def test_public_capture_messages_equal_tsharks(name):
    """Frame numbers and texts equal Wireshark's WebSocket dissector, connection by connection."""
    if shutil.which("tshark") is None:
        pytest.skip("tshark is not installed")
    path = need(PUBLIC / name)
    rows, meta = _native(path)
    theirs = _tshark_texts(path)
    ours: dict[frozenset, list[tuple[int, str]]] = {}
    for pos, client, server, text in (
        rows.join(meta.select("conn", "client", "server"), on="conn").select("source_pos", "client", "server", "text").iter_rows()
    ):
        ours.setdefault(frozenset((int(client.rsplit(":", 1)[1]), int(server.rsplit(":", 1)[1]))), []).append((pos, text))
    assert ours, name
    for key, msgs in ours.items():
        assert theirs.get(key) == msgs
    # what tshark shows and we do not emit: non-OCPP channels and the dropped duplicate
    skipped = meta.filter(~pl.col("ocpp") | pl.col("duplicate_of").is_not_null())
    skipped_ports = {frozenset((int(c.rsplit(":", 1)[1]), int(s.rsplit(":", 1)[1])))
                     for c, s in skipped.select("client", "server").iter_rows()}  # fmt: skip
    assert set(theirs) - set(ours) <= skipped_ports


@pytest.mark.shared
def test_decode_cli_summarises_a_public_capture():
    """`ocpptool decode capt.pcapng` reports the 34 messages of the two charge points."""
    out = subprocess.run([sys.executable, "-m", "ocpptool", "decode", str(need(PUBLIC / "checkocpp/capt.pcapng"))],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "34 messages from 1 source, 2 charge points, 0 weirds" in out.stdout


# ---------------------------------------------------------------------------------------------------------
# a large synthetic capture, for measuring speed (not a test): ocpptool.testing.pcap.write_big_capture
# ---------------------------------------------------------------------------------------------------------

if __name__ == "__main__":
    write_big_capture(sys.argv[1], int(sys.argv[2]))


def test_a_recorded_fleet_rewritten_as_a_capture_decodes_to_the_same_messages(tmp_path):
    """The sample fleet log, written out as the CSMS port's packets (a quarter of the chargers compressing),
    decodes to the same messages as the log itself: times, charge points, directions, frames, pairing."""
    from polars.testing import assert_frame_equal

    from ocpptool.pipeline import load
    from ocpptool.tables.writers import frame_text
    from ocpptool.testing.pcap import write_fleet_capture

    sample = Path(__file__).resolve().parent.parent / "captures" / "fleet-demo.jsonl"
    log, _ = load([str(sample)], progress=False)
    msgs = log.messages.sort("idx")
    rows = msgs.with_columns(frame=frame_text()).select("ts", "charge_point_id", "direction", "frame", "ocpp_version")
    facts = write_fleet_capture(str(tmp_path / "fleet.pcap"), (
        (int(ts.timestamp()) * 1_000_000 + ts.microsecond, cp, d == "cp->csms", text,
         "ocpp2.0.1" if v == "2.0.1" else "ocpp1.6")
        for ts, cp, d, text, v in rows.iter_rows()
    ), compress_share=0.25)  # fmt: skip
    assert facts["compressed_chargers"] >= 2 and facts["messages"] == msgs.height
    cap, _ = load([str(tmp_path / "fleet.pcap")], progress=False)
    cols = ["ts", "charge_point_id", "direction", "ocpp_version", "message_type", "message_id", "action",
            "payload", "error_code", "latency_ms"]  # fmt: skip
    assert cap.weirds.height == 0
    assert_frame_equal(cap.messages.sort("idx").select(cols), msgs.select(cols))
