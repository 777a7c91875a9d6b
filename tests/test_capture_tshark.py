"""The tshark engine against real captures: our own loopback recordings (checked against the CSMS's own
frame log of the same session) and the public pcaps (checked against the counts their README gives)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import polars as pl
import pytest

from ocpptool.pipeline import load
from ocpptool.sources.base import ConnMeta, SourceError
from ocpptool.sources.capture import CaptureOptions, read_capture
from ocpptool.sources.capture import tshark as tshark_engine

from .conftest import PUBLIC, REPO, need

CAPTURES = REPO / "tests" / "captures"
#: captures with messages tshark 4.0 cannot rebuild (see tests/captures/README.md)
TSHARK_LIMITS = {"ws_fragmented_lib"}
ALL = sorted(p.stem for p in CAPTURES.glob("*.pcapng"))
#: the CSMS logs its receive time (after the packet) and its pre-send time (before the packet)
TIME_TOLERANCE_MS = 5.0

PUBLIC_COUNTS = {
    "checkocpp/capt.pcapng": 34,
    "checkocpp/capt_error.pcapng": 2,
    "checkocpp/capt_error2.0.pcapng": 2,
    "checkocpp/capt_error2.0.1.pcapng": 6,
    "checkocpp/extralargeOPENEVSE.pcapng": 12,
    "evsetool/cap.pcapng": 8,
}

pytestmark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")


def tshark_tables(path: Path, keylog: Path | None = None):
    options = CaptureOptions(engine="tshark", keylog=str(keylog) if keylog else None)
    tables, _ = load([str(path)], capture=options, progress=False)
    return tables


def csms_log(name: str) -> pl.DataFrame:
    rows = [
        json.loads(line) for line in (CAPTURES / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    return pl.DataFrame(
        {
            "charge_point_id": [r["charge_point_id"] for r in rows],
            "direction": [r["direction"] for r in rows],
            "subprotocol": [r["subprotocol"] for r in rows],
            "message": [r["message"] for r in rows],
            "ts": [datetime.fromisoformat(r["timestamp"].replace("Z", "+00:00")) for r in rows],
        }
    )


def _frame_fields(message: str) -> tuple[str, str, str | None]:
    frame = json.loads(message)
    kind = {2: "CALL", 3: "CALLRESULT", 4: "CALLERROR"}[frame[0]]
    return kind, frame[1], frame[2] if kind == "CALL" else None


def assert_matches_log(name: str, messages: pl.DataFrame) -> None:
    """Frame by frame, per charger and direction (each is one ordered TCP byte stream on the wire)."""
    log = csms_log(name)
    assert messages.height == log.height, f"{name}: {messages.height} frames decoded, {log.height} logged"
    for (cp, direction), want in log.group_by("charge_point_id", "direction", maintain_order=True):
        got = messages.filter((pl.col("charge_point_id") == cp) & (pl.col("direction") == direction)).sort(
            "source_pos"
        )
        assert got.height == want.height, f"{name} {cp} {direction}: {got.height} vs {want.height} logged"
        for g, w in zip(got.iter_rows(named=True), want.iter_rows(named=True), strict=True):
            kind, mid, action = _frame_fields(w["message"])
            assert g["message_type"] == kind, (name, cp, w["message"])
            assert g["message_id"] == mid, (name, cp, w["message"])
            if action is not None:
                assert g["action"] == action, (name, cp, w["message"])
            # the payload is the wire text: it must sit verbatim at the end of the logged frame
            assert w["message"].endswith(g["payload"] + "]"), (name, cp, g["payload"], w["message"])
            assert g["note"] is None
            delta_ms = abs((g["ts"] - w["ts"]).total_seconds() * 1000)
            assert delta_ms <= TIME_TOLERANCE_MS, (name, cp, w["message"][:60], delta_ms)


@pytest.mark.parametrize("name", [n for n in ALL if n not in TSHARK_LIMITS])
def test_capture_decodes_exactly_like_the_csms_log(name: str) -> None:
    """Every frame of a real loopback capture decodes to what the CSMS itself logged (text, ids, times)."""
    keylog = CAPTURES / f"{name}.keys"
    tables = tshark_tables(CAPTURES / f"{name}.pcapng", keylog if keylog.exists() else None)
    assert tables.weirds.is_empty(), tables.weirds
    assert_matches_log(name, tables.messages)
    conns = tables.connections.filter(pl.col("ocpp"))
    log = csms_log(name)
    assert sorted(conns["charge_point_id"].to_list()) == sorted(log["charge_point_id"].unique().to_list())
    subs = dict(log.select("charge_point_id", "subprotocol").unique().iter_rows())
    for row in conns.iter_rows(named=True):
        assert row["subprotocol"] == subs[row["charge_point_id"]]
        assert row["handshake_seen"] and row["url_path"] == f"/ocpp/{row['charge_point_id']}"
        assert row["client"].startswith(("127.0.0.1:", "[::1]:"))
        assert row["conn"] == f"{row['client']}->{row['server']}"
        assert row["tls"] == (name == "wss")
        assert row["duplicate_of"] is None


def test_capture_connections_show_compression_close_and_reset() -> None:
    """The connections table says how each connection was compressed and how it ended."""
    plain = tshark_tables(CAPTURES / "ws_plain.pcapng").connections.filter(pl.col("ocpp"))
    assert plain["compression"].is_null().all() and (plain["close_code"] == 1000).all()
    deflate = tshark_tables(CAPTURES / "ws_deflate.pcapng").connections.filter(pl.col("ocpp"))
    assert deflate["compression"].str.starts_with("permessage-deflate").all()
    nctx = tshark_tables(CAPTURES / "ws_deflate_nctx.pcapng").connections.filter(pl.col("ocpp"))
    assert nctx["compression"].str.contains("server_no_context_takeover").all()
    assert nctx["compression"].str.contains("client_no_context_takeover").all()
    v6 = tshark_tables(CAPTURES / "ws_ipv6.pcapng").connections
    assert v6["conn"].str.starts_with("[::1]:").all()
    reset = tshark_tables(CAPTURES / "ws_reset.pcapng")
    conns = {r["charge_point_id"]: r for r in reset.connections.iter_rows(named=True)}
    assert conns["CP-R1"]["close_code"] is None and conns["CP-R1"]["closed"] is not None
    assert conns["CP-R2"]["close_code"] == 1000
    cut = reset.messages.filter(pl.col("charge_point_id") == "CP-R1")
    assert "StopTransaction" not in cut["action"].to_list()
    assert cut["action"].to_list().count("MeterValues") == 4  # 2 samples, each CALL + CALLRESULT


def test_wss_without_keylog_gives_no_rows_and_says_why() -> None:
    """Without the key log a wss capture decodes to no messages and one clear weird per TLS connection."""
    tables = tshark_tables(CAPTURES / "wss.pcapng")
    assert tables.messages.is_empty()
    assert tables.weirds.height == 2
    assert (tables.weirds["reason"] == "tls-undecrypted").all()
    assert tables.weirds["detail"].str.contains("--keylog").all()
    assert tables.connections["tls"].all()


def test_wss_with_keylog_in_environment_decodes() -> None:
    """SSLKEYLOGFILE works like --keylog (and picks the tshark engine by itself)."""
    keys = str(CAPTURES / "wss.keys")
    old = os.environ.get("SSLKEYLOGFILE")
    os.environ["SSLKEYLOGFILE"] = keys
    try:
        tables, _ = load([str(CAPTURES / "wss.pcapng")], progress=False)
    finally:
        if old is None:
            del os.environ["SSLKEYLOGFILE"]
        else:
            os.environ["SSLKEYLOGFILE"] = old
    assert_matches_log("wss", tables.messages)


def test_fragments_tshark_cannot_rebuild_become_weirds() -> None:
    """Messages tshark 4.0 cannot reassemble are flagged as weirds (never lost, never garbage)."""
    tables = tshark_tables(CAPTURES / "ws_fragmented_lib.pcapng")
    log = csms_log("ws_fragmented_lib")
    long = log.filter(pl.col("message").str.len_bytes() > 200)
    assert long.height > 0
    assert tables.messages.height + tables.weirds.height == log.height
    assert tables.weirds["reason"].is_in(["reassembly-failed", "inflate-failed"]).all()
    assert tables.weirds["detail"].str.contains("--engine native").all()
    short = set(log.filter(pl.col("message").str.len_bytes() <= 200)["message"].to_list())
    for row in tables.messages.iter_rows(named=True):
        assert any(m.endswith(row["payload"] + "]") and row["message_id"] in m for m in short)


def test_ws_frames_and_batches_stream_in_frame_order() -> None:
    """The engine yields rows in packet order and one ConnMeta with every connection at the end."""
    path = CAPTURES / "ws_plain.pcapng"
    with open(path, "rb") as fh:
        out = list(read_capture(str(path), fh, str(path), CaptureOptions(engine="tshark")))
    frames = [x for x in out if isinstance(x, pl.DataFrame)]
    metas = [x for x in out if isinstance(x, ConnMeta)]
    assert len(metas) == 1 and isinstance(out[-1], ConnMeta)
    rows = pl.concat(frames)
    assert rows["source_pos"].is_sorted()
    assert metas[0].frame.height == 4 and metas[0].frame["ws_frames"].sum() == rows.height


def test_consumer_stopping_early_kills_tshark(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopping after the first batch ends the tshark process (no orphan, no warning)."""
    monkeypatch.setattr(tshark_engine, "BATCH_ROWS", 5)
    started = []
    real_popen = subprocess.Popen

    def popen(*a, **kw):
        p = real_popen(*a, **kw)
        started.append(p)
        return p

    monkeypatch.setattr(tshark_engine.subprocess, "Popen", popen)
    path = CAPTURES / "ws_plain.pcapng"
    gen = tshark_engine.read(str(path), str(path), CaptureOptions(engine="tshark"), None)
    first = next(gen)
    assert isinstance(first, pl.DataFrame) and first.height >= 5
    gen.close()
    assert started and started[0].poll() is not None


def test_a_packet_tshark_describes_without_its_tcp_fields_is_skipped_and_noted(monkeypatch, tmp_path) -> None:
    """One damaged packet description in tshark's output costs that packet only: every message around it is
    decoded and a note says how many were skipped. (tshark cannot be made to print such a packet, so its
    real output is replayed with one damaged line spliced in.)"""
    path = CAPTURES / "ws_plain.pcapng"
    real = subprocess.run(tshark_engine.command(str(path), CaptureOptions(engine="tshark"), None),
                          capture_output=True, check=True).stdout.splitlines(keepends=True)  # fmt: skip
    packets = [i for i, line in enumerate(real) if line.startswith(b'{"timestamp"')]
    damaged = b'{"timestamp":"0","layers":{"tcp_stream":["0"],"ip_src":["10.0.0.1"],"ip_dst":["10.0.0.2"]}}\n'
    out = tmp_path / "ek.txt"
    out.write_bytes(b"".join(real[: packets[len(packets) // 2]] + [damaged] + real[packets[len(packets) // 2] :]))
    want = tshark_tables(path)
    monkeypatch.setattr(tshark_engine, "command", lambda *a, **k: [sys.executable, "-c",
                        f"import sys; sys.stdout.buffer.write(open({str(out)!r}, 'rb').read())"])  # fmt: skip
    got = tshark_tables(path)
    assert got.messages.height == want.messages.height > 0
    assert got.messages["payload"].to_list() == want.messages["payload"].to_list()
    assert any("1 packet(s) that tshark described" in n for n in got.notes), got.notes


@pytest.mark.shared
@pytest.mark.parametrize("rel", sorted(PUBLIC_COUNTS))
def test_public_capture_counts(rel: str) -> None:
    """Each public pcap decodes to the number of OCPP messages its README gives."""
    tables = tshark_tables(need(PUBLIC / rel))
    assert tables.messages.height == PUBLIC_COUNTS[rel]
    assert tables.messages["direction"].is_not_null().all()
    assert tables.messages["charge_point_id"].is_not_null().all()


@pytest.mark.shared
def test_public_capture_non_ocpp_channel_is_counted_not_decoded() -> None:
    """capt.pcapng's port-9008 command channel is listed as a non-OCPP WebSocket, its frames counted."""
    conns = tshark_tables(need(PUBLIC / "checkocpp/capt.pcapng")).connections
    other = conns.filter(pl.col("ocpp") == False)  # noqa: E712
    assert other.height == 1 and other["server"].item().endswith(":9008")
    assert other["non_ocpp_frames"].item() == 9 and other["messages"].item() == 0
    ocpp = conns.filter(pl.col("ocpp"))
    assert sorted(ocpp["subprotocol"].to_list()) == ["ocpp1.6", "ocpp2.0", "ocpp2.0.1"]
    assert (ocpp["close_code"] == 1000).all()
    assert ocpp["auth"].str.starts_with("basic user=E2507-8420-127").all()
    assert not ocpp["auth"].str.contains("48504575664f").any()  # never the password


@pytest.mark.shared
def test_public_any_interface_duplicates_are_dropped() -> None:
    """evsetool's 'any' capture holds each frame twice; the second copy is dropped and marked."""
    tables = tshark_tables(need(PUBLIC / "evsetool/cap.pcapng"))
    assert tables.messages["conn"].unique().to_list() == ["127.0.0.1:53404->127.0.0.1:8180"]
    dup = tables.connections.filter(pl.col("duplicate_of").is_not_null())
    assert dup["conn"].to_list() == ["172.18.0.1:51272->172.18.0.3:8180"]
    assert dup["duplicate_of"].to_list() == ["127.0.0.1:53404->127.0.0.1:8180"]


def test_missing_tshark_gives_the_install_hint(tmp_path: Path) -> None:
    """Without tshark on PATH the user gets one line saying how to install it."""
    code = (
        "import sys\n"
        "from ocpptool.sources.base import SourceError\n"
        "from ocpptool.sources.capture import tshark\n"
        "try:\n"
        "    list(tshark.read(sys.argv[1], 'x', tshark.CaptureOptions(engine='tshark'), None))\n"
        "except SourceError as e:\n"
        "    print(e)\n"
    )
    empty = tmp_path / "bin"
    empty.mkdir()
    res = subprocess.run(
        [sys.executable, "-c", code, str(CAPTURES / "ws_plain.pcapng")],
        env={**os.environ, "PATH": str(empty)},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert res.stdout.strip() == tshark_engine.INSTALL_HINT
    assert "\n" not in res.stdout.strip()


def test_tshark_failure_is_one_line(tmp_path: Path) -> None:
    """A capture tshark cannot read gives a one-line error naming the file."""
    bad = tmp_path / "bad.pcapng"
    bad.write_bytes(b"\x0a\x0d\x0d\x0a" + b"\xff" * 64)
    with pytest.raises(SourceError) as err:
        list(tshark_engine.read(str(bad), str(bad), CaptureOptions(engine="tshark"), None))
    assert str(bad) in str(err.value) and "\n" not in str(err.value)


def test_make_captures_script_records_a_scenario(tmp_path: Path) -> None:
    """scripts/make_captures.py regenerates a capture that decodes exactly like its CSMS log."""
    probe = (
        subprocess.run(["dumpcap", "-D"], capture_output=True, text=True, timeout=30)
        if shutil.which("dumpcap")
        else None
    )
    if probe is None or probe.returncode != 0 or "lo" not in probe.stdout:
        pytest.skip("dumpcap cannot capture on the loopback interface here (needs root or CAP_NET_RAW)")
    res = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "make_captures.py"), "--out", str(tmp_path), "ws_ipv6"],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=REPO,
    )
    if res.returncode != 0 and ("ermission" in res.stderr or "dumpcap failed" in res.stderr):
        pytest.skip(f"dumpcap cannot capture here: {res.stderr.strip().splitlines()[-1]}")
    assert res.returncode == 0, res.stderr
    pcap, log = tmp_path / "ws_ipv6.pcapng", tmp_path / "ws_ipv6.jsonl"
    assert pcap.stat().st_size > 0 and log.stat().st_size > 0
    tables = tshark_tables(pcap)
    n_logged = len(log.read_text(encoding="utf-8").splitlines())
    assert tables.messages.height == n_logged
    assert set(tables.messages["charge_point_id"].unique().to_list()) == {"CP-V6", "CS-V6"}


def test_a_too_old_tshark_is_refused_with_a_clear_message(tmp_path, monkeypatch):
    """A tshark older than the engine supports is named with its version and the way out."""
    from ocpptool.sources.base import SourceError as _SourceError
    from ocpptool.sources.capture.tshark import find_tshark

    fake = tmp_path / "tshark"
    fake.write_text("#!/bin/sh\necho 'TShark (Wireshark) 2.6.20 (Git v2.6.20)'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(_SourceError, match=r"tshark 2\.6\.20 .* too old .*--engine native"):
        find_tshark()
