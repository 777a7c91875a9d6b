"""The native engine's fast path (whole chunks of regular traffic at once) against packet-by-packet reading.

Captures here are fleets of real-looking connections written by ``ocpptool.testing.pcap``, with the irregular
events a capture holds in the field mixed in at random (retransmissions, reordering, lost segments, ACKs
ahead of the data, frames split or packed together, control frames, bad frames, binary and non-UTF-8 text,
frames that cannot be inflated, resets, a reused 4-tuple, VLAN-tagged copies and unrelated packets). Chunks
are made tiny so that connections cross chunk boundaries in every state. Both ways of reading must give the
same rows, in the same order, and the same connection facts.
"""

from __future__ import annotations

import io
import random

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from ocpptool.sources.base import ConnMeta, SourceError, SourceNote
from ocpptool.sources.capture import CaptureOptions, _fast, _records, native, read_capture
from ocpptool.testing.pcap import (
    ACK,
    FIN,
    KEY,
    LINKTYPES,
    RST,
    T0,
    Deflater,
    Flow,
    pcap_bytes,
    pcapng_bytes,
    ws_frame,
)


def read(data: bytes, fast: bool, source: str = "t.pcap") -> tuple[pl.DataFrame, pl.DataFrame]:
    out = [o for o in native.read(io.BytesIO(data), source, CaptureOptions(), fast=fast)
           if not isinstance(o, SourceNote)]  # fmt: skip
    rows = pl.concat([o for o in out if isinstance(o, pl.DataFrame)])
    return rows, next(o.frame for o in out if isinstance(o, ConnMeta))


def fleet(seed: int, *, conns: int = 6, messages: int = 400, chaos: float = 0.0,
          jump: bool = False, link: str = "eth") -> list[tuple[int, bytes]]:  # fmt: skip
    """Packets of ``conns`` connections exchanging ``messages`` messages on one clock, in time order; with
    ``jump``, the clock leaps a day halfway (the high bytes of the records' seconds change)."""
    rnd = random.Random(seed)
    now = T0
    flows = []
    for c in range(conns):
        f = Flow(client=(f"10.0.0.{c + 1}", 40000 + c), link="vlan" if chaos and c == conns - 1 else link, t0=now)
        deflate = rnd.random() < 0.4
        f.syn().upgrade(f"/ocpp/CP{c}", extensions="permessage-deflate" if deflate else None)
        now = f.t
        flows.append((f, {True: Deflater(), False: Deflater()} if deflate else None))
    for i in range(messages):
        f, defl = rnd.choice(flows)
        f.t = now
        client = rnd.random() < 0.5
        # ("Rg" is how the records' seconds begin on the wire, little-endian: false record candidates)
        text = f'[2,"{i}","DataTransfer",{{"vendorId":"x","data":"Rg{"y" * rnd.choice([5, 60, 300, 2000])}"}}]'
        payload, rsv1 = text.encode(), False
        if defl is not None:
            payload, rsv1 = defl[client](payload), True
        mask = KEY if client else None
        frame = ws_frame(payload, mask=mask, rsv1=rsv1)
        r = rnd.random() if chaos else 1.0
        if r < chaos * 0.08:  # a control frame first, in the same segment
            frame = ws_frame(b"hi", 9, mask=mask) + frame
        elif r < chaos * 0.16:  # fragmented: two frames
            frame = ws_frame(payload[:3], mask=mask, fin=False, rsv1=rsv1) + ws_frame(payload[3:], 0, mask=mask)
        elif r < chaos * 0.2:
            frame = ws_frame(b"\x00\xff", 2, mask=mask)  # binary
        elif r < chaos * 0.24:
            frame = ws_frame(b"\xff\xfe[", mask=mask)  # not UTF-8 (or, compressed, not inflatable)
        elif r < chaos * 0.27:
            frame = b"\x0f\x00" + frame  # a bad frame header before a good frame
        r = rnd.random() if chaos else 1.0
        seq = f.seq[client]
        if r < chaos * 0.1:  # split, the second part first (out of order), then the first part again
            k = rnd.randrange(1, len(frame))
            f.raw(client, frame[k:], seq=seq + k, dt=1)
            f.raw(client, frame[:k], seq=seq, dt=1)
            f.raw(client, frame[:k], seq=seq, dt=1)
            f.seq[client] += len(frame)
        elif r < chaos * 0.15:  # lost: a gap
            f.seq[client] += len(frame)
        elif r < chaos * 0.2:  # the peer acknowledges it before it is seen
            f.seq[client] += len(frame)
            f.raw(not client, b"", flags=ACK, dt=1)
            f.seq[client] -= len(frame)
            f.send(client, frame, dt=1)
        elif r < chaos * 0.25:  # many small segments
            f.send(client, frame, splits=sorted(rnd.sample(range(1, len(frame)), min(3, len(frame) - 1))), dt=1)
        else:
            f.send(client, frame, dt=1)
        f.raw(not client, b"", flags=ACK, dt=1)
        if chaos and rnd.random() < chaos * 0.02:  # a packet that is not TCP at all
            f.packets.append((f.t, b"\xff" * 12 + b"\x08\x06" + b"\x00" * 28))
        if chaos and f.link == "eth" and rnd.random() < chaos * 0.04:  # the last ACK again, with three VLAN tags
            t, last = f.packets[-1]
            f.packets.append((t + 1, last[:12] + b"\x81\x00\x00\x01" * 3 + last[12:]))
        if chaos and rnd.random() < chaos * 0.01:  # the connection ends, and its 4-tuple opens again
            if rnd.random() < 0.5:
                f.fin()
            else:
                f.raw(True, b"", flags=RST)
            f.seq = {True: rnd.randrange(1 << 32), False: rnd.randrange(1 << 32)}
            f.syn().upgrade(f"/ocpp/again{i}")
            if defl is not None:
                defl[True], defl[False] = Deflater(), Deflater()
        now = f.t + rnd.choice([50, 20_000, 200_000]) + (86_400_000_000 if jump and i == messages // 2 else 0)
    if chaos:
        flows[0][0].raw(True, b"", flags=FIN | ACK)
    return sorted((p for f, _ in flows for p in f.packets), key=lambda p: p[0])


@pytest.fixture
def tiny_chunks(monkeypatch):
    monkeypatch.setattr(_records, "FIRST_WINDOW", 700)
    monkeypatch.setattr(_records, "WINDOW", 3000)
    monkeypatch.setattr(_records, "NG_PACKETS", 9)


@pytest.fixture
def fast_packets(monkeypatch) -> list[int]:
    """Counts the packets the fast path takes."""
    taken = [0]
    real = _fast.fast_pass

    def counting(eng, ch):
        rest, frame = real(eng, ch)
        taken[0] += len(ch) - (len(ch) if rest is None else sum(1 for i in rest if i >= 0))
        return rest, frame

    monkeypatch.setattr(native, "fast_pass", counting)
    return taken


@pytest.mark.parametrize("link", ["eth", "vlan", "sll", "sll2", "null", "loop", "raw"])
def test_regular_traffic_takes_the_fast_path_and_gives_the_same_rows(link, fast_packets, monkeypatch):
    """A fleet's ordinary traffic is read mostly in bulk on every IPv4 link layer, with exactly the rows of
    packet-by-packet reading."""
    monkeypatch.setattr(_records, "FIRST_WINDOW", 20_000)
    packets = fleet(1, link=link)
    data = pcap_bytes(packets, LINKTYPES[link])
    rows, meta = read(data, fast=True)
    assert fast_packets[0] > len(packets) * 0.8
    want_rows, want_meta = read(data, fast=False)
    assert_frame_equal(rows, want_rows)
    assert_frame_equal(meta, want_meta)
    assert rows["weird_reason"].null_count() == rows.height == 400


@pytest.mark.parametrize("seed", range(12))
def test_irregular_traffic_in_tiny_chunks_gives_the_same_rows_as_packet_by_packet(seed, tiny_chunks, fast_packets):
    """Gaps, reordering, odd frames and resets, with chunk borders everywhere: rows and facts are unchanged."""
    packets = fleet(seed, chaos=0.5, messages=250)
    data = pcap_bytes(packets) if seed % 3 else pcapng_bytes(packets)
    rows, meta = read(data, fast=True)
    assert fast_packets[0] > 0
    want_rows, want_meta = read(data, fast=False)
    assert_frame_equal(rows, want_rows)
    assert_frame_equal(meta, want_meta)
    assert rows["weird_reason"].drop_nulls().len() > 0  # the chaos did reach the output


@pytest.mark.parametrize("seed", range(4))
def test_chunk_size_does_not_change_the_rows(seed, monkeypatch):
    """The same irregular capture read in windows of any size (small ones record by record, large ones by
    the array walk, across a leap of the clock) gives the rows of packet-by-packet reading."""
    data = pcap_bytes(fleet(100 + seed, chaos=0.3, messages=300, jump=seed % 2 == 1), big=seed == 2)
    assert len(data) > 2 << 16
    monkeypatch.setattr(_records, "FIRST_WINDOW", 1000)
    monkeypatch.setattr(_records, "WINDOW", 1000)
    want, _ = read(data, fast=False)
    for window in (200, 1500, 40_000, 70_000, 1 << 20):
        monkeypatch.setattr(_records, "FIRST_WINDOW", window)
        monkeypatch.setattr(_records, "WINDOW", window)
        got, _ = read(data, fast=True)
        assert_frame_equal(got, want)
        assert got["source_pos"].n_unique() > 250


# ---------------------------------------------------------------------------------------------------------
# the engine in a child process (large files)
# ---------------------------------------------------------------------------------------------------------


def through_child(path, monkeypatch) -> list:
    monkeypatch.setenv("OCPPTOOL_CAPTURE_CHILD", "1")
    seen: list[int] = []
    with open(path, "rb") as fh:
        out = list(read_capture(str(path), fh, str(path), CaptureOptions(), seen.append))
    return [o for o in out if not isinstance(o, SourceNote)], sum(seen)


def test_the_engine_in_a_child_process_yields_what_it_yields_in_process(tmp_path, monkeypatch):
    """Read by a child process, a capture gives the same batches and connection facts, and reports its bytes."""
    path = tmp_path / "fleet.pcap"
    path.write_bytes(pcap_bytes(fleet(5, chaos=0.3, messages=300)))
    got, seen = through_child(path, monkeypatch)
    rows = pl.concat([o for o in got if isinstance(o, pl.DataFrame)])
    want_rows, want_meta = read(path.read_bytes(), fast=True, source=str(path))
    assert_frame_equal(rows, want_rows)
    assert_frame_equal(next(o.frame for o in got if isinstance(o, ConnMeta)), want_meta)
    assert seen == path.stat().st_size


def test_a_damaged_capture_read_by_a_child_process_fails_in_one_line(tmp_path, monkeypatch):
    """A child process that meets a broken file header raises the same one-line SourceError."""
    path = tmp_path / "bad.pcap"
    path.write_bytes(b"\xd4\xc3\xb2\xa1" + b"\x00" * 30)
    with pytest.raises(SourceError, match="damaged pcap header"):
        through_child(path, monkeypatch)


@pytest.mark.parametrize("big", [False, True], ids=["le", "be"])
def test_pcapng_packet_blocks_read_in_bulk_equal_block_by_block(big, monkeypatch):
    """Runs of enhanced packet blocks read at once give the packets, times and link types of reading block by
    block, with simple and obsolete packet blocks, two interfaces of different resolutions and a cut end."""
    rnd = random.Random(3)
    packets = [(ts, data, rnd.choice([0, 0, 0, 1])) for ts, data in fleet(8, chaos=0.2, messages=300)]
    kinds = [rnd.choice(["epb"] * 30 + ["spb", "pb"]) for _ in packets]
    data = pcapng_bytes(packets, interfaces=((1, 6), (1, 9)), big=big, kinds=kinds)
    data = data[: len(data) - 7]
    monkeypatch.setattr(_records, "FIRST_WINDOW", 5000)
    bulk, bulk_meta = read(data, fast=False)
    monkeypatch.setattr(_records, "_epb_run", lambda *a: None)
    one, one_meta = read(data, fast=False)
    assert_frame_equal(bulk, one)
    assert_frame_equal(bulk_meta, one_meta)
    assert bulk["weird_reason"].to_list()[-1] == "truncated-capture"
