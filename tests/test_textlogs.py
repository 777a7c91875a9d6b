"""Text log readers: format sniffing, exact message counts on public field logs, directions, charge point
ids, broken frames, chunking and batching invariance, robustness."""

from __future__ import annotations

import io
import time
from pathlib import Path

import polars as pl
import pytest

from ocpptool.protocol.frames import Frame, decode
from ocpptool.sources.base import RAW_SCHEMA
from ocpptool.sources.textlogs import FORMATS_BY_NAME, TEXT_FORMATS, read_format, sniff_text

PUBLIC = Path(__file__).resolve().parents[2] / "shared" / "public-data"
FIXTURES = Path(__file__).resolve().parent / "data" / "logs"


def _read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def _sniff(text: str):
    return sniff_text(text.splitlines()[:200])


def _read(text: str, name: str | None = None, **kw) -> pl.DataFrame:
    fmt = FORMATS_BY_NAME[name] if name else _sniff(text)
    assert fmt is not None
    parts = list(read_format(fmt.name, io.StringIO(text), "test.log", **kw))
    for p in parts:
        assert p.schema == pl.Schema(RAW_SCHEMA)
    return pl.concat(parts) if parts else pl.DataFrame(schema=RAW_SCHEMA)


def _ok(df: pl.DataFrame) -> pl.DataFrame:
    return df.filter(pl.col("weird_reason").is_null())


def _public(rel: str) -> str:
    path = PUBLIC / rel
    if not path.exists():
        pytest.skip("../shared/public-data not present")
    return _read_text(path)


def _row(df: pl.DataFrame, needle: str) -> dict:
    hit = df.filter(pl.col("text").str.contains(needle, literal=True))
    assert hit.height == 1, f"{needle}: {hit.height} rows"
    return hit.row(0, named=True)


# ------------------------------------------------------------------------------------------ public data

shared = pytest.mark.shared


@shared
def test_filmar_mobilityhouse_counts_and_directions():
    """filmar's ocpp.log reads as 5,519 messages: 2,762 sent by the charger and 2,757 received."""
    text = _public("filmar-client-sim/ocpp.log")
    assert _sniff(text).name == "mobilityhouse"
    df = _read(text)
    ok = _ok(df)
    assert df.height == ok.height == 5519
    assert ok.filter(pl.col("direction") == "cp->csms").height == 2762
    assert ok.filter(pl.col("direction") == "csms->cp").height == 2757
    assert ok["direction_inferred"].all()  # the log says send/receive; the charger side was inferred
    assert ok["charge_point_id"].unique().to_list() == ["1"]
    boot = _row(ok, 'fc773d18-74b7-49c8-ae40-acf9686f2d8a","BootNotification')
    assert boot["direction"] == "cp->csms" and boot["ts_text"] == "2025-10-03 13:09:13,380"
    assert boot["source_pos"] == 1
    # the 790 'Received a CALLError' warnings repeat 'receive message [4,...]' lines: not counted twice
    errors = ok.filter(pl.col("text").str.starts_with("[4,"))
    assert errors.height == 790 and errors["note"].is_null().all()
    assert (errors["direction"] == "csms->cp").all()
    start = ok.filter(pl.col("text").str.contains('"RequestStartTransaction"', literal=True))
    assert start.height == 7 and (start["direction"] == "csms->cp").all()


@shared
def test_everest_message_log_counts_and_directions():
    """The EVerest/SteVe message log reads as 40 messages, 20 each way, pretty-printed frames kept whole."""
    text = _public("everest-steve-sil/everest-ocpp16-session.excerpt.log")
    assert _sniff(text).name == "everest"
    df = _read(text)
    ok = _ok(df)
    assert df.height == ok.height == 40
    assert ok.group_by("direction").len().sort("direction").rows() == [("cp->csms", 20), ("csms->cp", 20)]
    boot = _row(ok, '"7e348825-d154-4b38-a5ba-c3624b8ea09f",\n  "BootNotification"')
    assert boot["direction"] == "cp->csms" and boot["ts_text"] == "2023-12-07T04:03:32.455Z"
    assert all(isinstance(decode(t), Frame) for t in ok["text"])


@shared
@pytest.mark.parametrize(
    ("rel", "count"),
    [
        ("quench-dc-charger/TS0064-emergency-stop.excerpt.log", 10),
        ("quench-dc-charger/sample-ocpp-client.excerpt.log", 18),
    ],
)
def test_quench_console_counts(rel, count):
    """The QUENCH charger consoles read as 10 and 18 messages; PING/PONG and event-bus JSON are not frames."""
    text = _public(rel)
    assert _sniff(text).name == "console"
    df = _read(text)
    ok = _ok(df)
    assert df.height == ok.height == count
    assert all(isinstance(decode(t), Frame) for t in ok["text"])
    assert not ok["text"].str.contains("PING|PONG|session_start").any()
    sent = ok.filter(pl.col("text").str.starts_with("[2,"))
    assert (sent.filter(pl.col("direction").is_not_null())["direction"] == "cp->csms").all()


@shared
def test_quench_sample_starts_mid_line():
    """The first line of a file that starts mid-line is kept as a frame without a timestamp, with a note."""
    df = _read(_public("quench-dc-charger/sample-ocpp-client.excerpt.log"))
    first = df.row(0, named=True)
    assert first["source_pos"] == 1 and first["ts_text"] is None and first["direction"] is None
    assert first["text"].startswith('[2,"4d61945f') and "mid-line" in first["note"]
    assert _row(df, '[3,"4d61945f')["direction"] == "csms->cp"


@shared
def test_kwwhat_csv_counts():
    """The kwwhat CSV reads as 2,992 messages for CH-001, directions left to the central inference."""
    text = _public("kwwhat-synthetic/ocpp_1_6_synthetic_logs_1d.csv")
    assert _sniff(text).name == "csv"
    df = _read(text)
    ok = _ok(df)
    assert df.height == ok.height == 2992
    assert ok["charge_point_id"].unique().to_list() == ["CH-001"]
    assert ok["direction"].is_null().all()
    boot = _row(ok, '"boot-a7fc3","BootNotification"')
    assert boot["ts_text"] == "2025-08-18T12:00:00.000Z" and boot["source_pos"] == 2
    assert ok["source_pos"].to_list() == list(range(2, 2994))


@shared
def test_ocpp_tester_server_log_counts():
    """server.log reads as 36 messages: 18 incoming CALLs (7 StatusNotification, 5 Heartbeat, 4 MeterValues,
    2 StartTransaction) rebuilt from Python dicts, 16 outgoing CALLRESULTs, and RemoteStartTransaction's
    outgoing CALL and incoming CALLRESULT (logged without payload)."""
    text = _public("ocpp-tester-elecq/server.log")
    assert _sniff(text).name == "ocpp-tester"
    df = _read(text)
    ok = _ok(df)
    assert df.height == ok.height == 36
    incoming = ok.filter(pl.col("text").str.starts_with("[2,") & (pl.col("direction") == "cp->csms"))
    actions = incoming["text"].str.extract(r'^\[2,"[^"]*","(\w+)"', 1).value_counts().sort("text").rows()
    assert actions == [
        ("Heartbeat", 5),
        ("MeterValues", 4),
        ("StartTransaction", 2),
        ("StatusNotification", 7),
    ]
    assert incoming["note"].str.contains("Python dict").all()
    results_out = ok.filter(pl.col("text").str.starts_with("[3,") & (pl.col("direction") == "csms->cp"))
    assert results_out.height == 16
    remote = ok.filter(pl.col("text").str.contains("1b70e5fd-a418-4c70-9fa7-3a57daa7575e", literal=True))
    assert remote["direction"].to_list() == ["csms->cp", "cp->csms"]
    assert "without its payload" in remote["note"][1]
    # an answered CALL takes the id of the CALLRESULT that follows it, so they correlate
    first = ok.row(0, named=True)
    assert (
        first["text"].startswith('[2,"3845397005","StatusNotification"')
        and first["charge_point_id"] == "Wallbox001"
    )
    # both StartTransactions went unanswered (the CSMS crashed): synthesized ids
    starts = incoming.filter(pl.col("text").str.contains('"StartTransaction"', literal=True))
    assert starts["text"].str.contains("ocpp-tester-L", literal=True).all()
    assert ok["charge_point_id"].drop_nulls().unique().to_list() == ["Wallbox001"]


@shared
@pytest.mark.parametrize(
    ("rel", "count"),
    [
        ("ocpp-tester-elecq/b_all_tests_AE104ABG00029B_20251106_003622.log", 16),
        ("ocpp-tester-elecq/c_all_tests_AE104ABG00029B_20251106_002526.log", 80),
    ],
)
def test_ocpp_tester_block_logs(rel, count):
    """OCPP-Tester test logs read as 16 and 80 messages; each RESPONSE carries its REQUEST's synthesized id."""
    text = _public(rel)
    assert _sniff(text).name == "ocpp-tester"
    df = _read(text)
    ok = _ok(df)
    assert df.height == ok.height == count
    assert (ok["charge_point_id"] == "AE104ABG00029B").all()
    req = ok.filter(pl.col("text").str.starts_with("[2,"))
    res = ok.filter(pl.col("text").str.starts_with("[3,"))
    assert req.height == res.height == count // 2
    assert (req["direction"] == "csms->cp").all() and (res["direction"] == "cp->csms").all()
    assert ok["direction_inferred"].all()
    ids = pl.col("text").str.extract(r'^\[[23],"([^"]+)"', 1)
    assert sorted(req.select(ids)["text"].to_list()) == sorted(res.select(ids)["text"].to_list())


@shared
@pytest.mark.parametrize(
    ("rel", "count"),
    [
        ("everest-steve-sil/everest-ocpp16-session.excerpt.log", 40),
        ("quench-dc-charger/sample-ocpp-client.excerpt.log", 18),
        ("filmar-client-sim/ocpp.log", 5519),
    ],
)
def test_generic_fallback_finds_the_same_frames(rel, count):
    """Forced to the generic reader, a log still yields every frame (multi-line ones too), without directions."""
    df = _read(_public(rel), "generic")
    ok = _ok(df)
    assert df.height == ok.height == count
    assert ok["direction"].is_null().all()


# ---------------------------------------------------------------------------------------- fixtures

FIXTURE_EXPECT = {
    # file: (format, messages, weirds, {frame excerpt: (direction, charge point)})
    "mobilityhouse-basicconfig-csms.log": (
        "mobilityhouse",
        6,
        0,
        {
            '"b1","BootNotification"': ("cp->csms", "CP_1"),
            '[3,"b1"': ("csms->cp", "CP_1"),
            '"RemoteStartTransaction"': ("csms->cp", "CP_1"),
            '"h1","Heartbeat"': ("cp->csms", "CP-2"),
        },
    ),
    "mobilityhouse-home-assistant.log": (
        "mobilityhouse",
        4,
        0,
        {'"Heartbeat"': ("cp->csms", "charger"), '"GetConfiguration"': ("csms->cp", "charger")},
    ),
    "mobilityhouse-callerror-warning-only.log": (
        "mobilityhouse",
        4,
        0,
        {'[4,"m1"': ("csms->cp", "7"), '[4,"h1"': ("csms->cp", "7")},
    ),
    "mobilityhouse-broken-frame-middle.log": (
        "mobilityhouse",
        4,
        1,
        {'"c","Heartbeat"': ("cp->csms", "CP_1")},
    ),
    "steve-websocketlogger.log": (
        "steve",
        4,
        0,
        {'"BootNotification"': ("cp->csms", "CP_1"), '"Reset"': ("csms->cp", "CP_1")},
    ),
    "everest-payload-only.log": (
        "everest",
        4,
        0,
        {'"Heartbeat"': ("cp->csms", None), '"Reset"': ("csms->cp", None)},
    ),
    "microocpp-serial-monitor.log": (
        "microocpp",
        4,
        0,
        {'"BootNotification"': ("cp->csms", None), '"TriggerMessage"': ("csms->cp", None)},
    ),
    "evcc-trace-journald.log": (
        "evcc",
        2,
        1,
        {'"2cb9-1","Heartbeat"': ("cp->csms", "EVB-P21124929"), '[3,"2cb9-1"': ("csms->cp", "EVB-P21124929")},
    ),
    "evcc-trace-docker.log": (
        "evcc",
        5,
        0,
        {
            '"hb-1","Heartbeat"': ("cp->csms", "EVB-P21302000"),
            '"TriggerMessage"': ("csms->cp", "EVB-P21302000"),
            '"hb-2"': ("cp->csms", None),
        },
    ),
    "console-charger-ping-eventbus.log": (
        "console",
        4,
        0,
        {
            '"hb","Heartbeat"': ("cp->csms", None),
            '"RemoteStartTransaction"': ("csms->cp", None),
            '[3,"rs"': ("cp->csms", None),
        },
    ),
    "proxy-client-target.log": (
        "proxy",
        5,
        0,
        {
            '"BootNotification"': ("cp->csms", None),
            '[3,"1"': ("csms->cp", None),
            '"ChangeConfiguration"': ("csms->cp", None),
        },
    ),
    "csv-direction-column.csv": (
        "csv",
        4,
        1,
        {'[2,"a"': ("cp->csms", "CP_9"), '"DataTransfer"': ("csms->cp", "CP_9")},
    ),
    "ocpp-tester-server-ansi.log": (
        "ocpp-tester",
        5,
        0,
        {'"StatusNotification"': ("cp->csms", "Wallbox001"), '[3, "900103422"': ("csms->cp", "Wallbox001")},
    ),
    "generic-mixed.log": ("generic", 5, 1, {'"g1","Heartbeat"': (None, None), '[5,"e1"': (None, None)}),
}


def test_every_fixture_is_listed():
    """Every synthetic fixture under tests/data/logs has an expectation (no fixture goes untested)."""
    assert sorted(p.name for p in FIXTURES.iterdir()) == sorted(FIXTURE_EXPECT)


@pytest.mark.parametrize("name", sorted(FIXTURE_EXPECT))
def test_fixture_sniffed_and_decoded(name):
    """Each hand-written log is recognised as its format and every frame in it is read with its direction."""
    fmt, n_ok, n_weird, known = FIXTURE_EXPECT[name]
    text = _read_text(FIXTURES / name)
    assert _sniff(text).name == fmt
    df = _read(text)
    ok = _ok(df)
    assert ok.height == n_ok and df.height - ok.height == n_weird
    assert all(isinstance(decode(t), Frame) for t in ok["text"]), ok["text"].to_list()
    for needle, (direction, cp) in known.items():
        row = _row(ok, needle)
        assert (row["direction"], row["charge_point_id"]) == (direction, cp), needle


def test_broken_frame_in_the_middle_is_one_weird_row():
    """A truncated frame mid-log becomes exactly one 'truncated' row, and the frames around it are all kept."""
    df = _read(_read_text(FIXTURES / "mobilityhouse-broken-frame-middle.log"))
    assert df["source_pos"].to_list() == [1, 2, 3, 4, 5]
    weird = df.filter(pl.col("weird_reason").is_not_null())
    assert weird.height == 1
    w = weird.row(0, named=True)
    assert w["source_pos"] == 3 and w["weird_reason"] == "truncated" and w["weird_detail"]
    assert w["text"].startswith('[2,"b","StatusNotification"')


def test_journald_cut_line_is_truncated_not_dropped():
    """An evcc line cut by journald ('...Ch>') is kept as a truncated weird row, not lost."""
    df = _read(_read_text(FIXTURES / "evcc-trace-journald.log"))
    w = df.filter(pl.col("weird_reason").is_not_null()).row(0, named=True)
    assert w["weird_reason"] == "truncated" and '"DataTransfer"' in w["text"] and w["source_pos"] == 4


def test_rebuilt_frames_carry_a_note():
    """Frames the log did not hold verbatim (dict repr, payload only, CallError repr) say so in ``note``."""
    cases = {
        "mobilityhouse-callerror-warning-only.log": (
            '[4,"m1","NotImplemented","Handler not implemented",{"cause":"x"}]',
            "CallError",
        ),
        "everest-payload-only.log": ('[2,"everest-L5","Heartbeat",{}]', "synthesized"),
        "ocpp-tester-server-ansi.log": ('"StartTransaction"', "Python dict"),
    }
    for name, (needle, phrase) in cases.items():
        row = _row(_read(_read_text(FIXTURES / name)), needle)
        assert phrase in row["note"], (name, row["note"])
    # the duplicate warning of a logged [4,...] frame is dropped, the frame itself has no note
    df = _read(_read_text(FIXTURES / "mobilityhouse-callerror-warning-only.log"))
    assert _row(df, '[4,"h1"')["note"] is None


def test_everest_response_takes_its_request_id():
    """A payload-only EVerest response gets the synthesized id of its request, so the pair correlates."""
    df = _read(_read_text(FIXTURES / "everest-payload-only.log"))
    assert _row(df, '"currentTime"')["text"] == '[3,"everest-L5",{"currentTime":"2024-01-02T10:00:00.150Z"}]'


def test_microocpp_time_only_hint():
    """A serial-monitor time of day without a date is kept as written, with a hint that the date is missing."""
    df = _read(_read_text(FIXTURES / "microocpp-serial-monitor.log"))
    assert df["ts_text"][0] == "10:00:00.010" and "no date" in df["ts_hint"][0]


def test_generic_mixed_content():
    """Generic: ANSI colours stripped, junk after a frame ignored, multi-line frames joined, [5,/[6, kept,
    brackets inside strings respected, non-OCPP arrays skipped, a broken frame reported."""
    df = _read(_read_text(FIXTURES / "generic-mixed.log"))
    assert _row(df, '"g1","Heartbeat"')["ts_text"] == "2024-05-01T10:00:00.000Z"
    multi = _row(df, '"g1",\n')
    assert multi["source_pos"] == 4 and multi["ts_text"] == "2024-05-01T10:00:01Z"
    assert _row(df, '[3,"g3"')["text"] == '[3,"g3",{"a":"]}[{"}]'
    assert _row(df, '[2,"g2"')["weird_reason"] == "truncated"
    assert not df["text"].str.contains("[1,2,3]", literal=True).any()


# ---------------------------------------------------------------------------------- chunking, batching


def _all_logs() -> list[tuple[str, str]]:
    out = [(p.name, _read_text(p)) for p in sorted(FIXTURES.iterdir())]
    if PUBLIC.exists():
        for rel in (
            "everest-steve-sil/everest-ocpp16-session.excerpt.log",
            "quench-dc-charger/sample-ocpp-client.excerpt.log",
            "ocpp-tester-elecq/server.log",
            "ocpp-tester-elecq/b_all_tests_AE104ABG00029B_20251106_003622.log",
        ):
            out.append((rel, _read_text(PUBLIC / rel)))
    return out


@pytest.mark.parametrize(("name", "text"), _all_logs(), ids=[n for n, _ in _all_logs()])
def test_chunk_and_batch_sizes_do_not_change_rows(name, text):
    """Reading a log in chunks of 7, 61 or 4096 characters, in batches of 3 rows or one, gives the same rows."""
    fmt = _sniff(text).name
    want = _read(text, fmt)
    for chunk in (7, 61, 4096):
        got = _read(text, fmt, chunk_chars=chunk)
        assert got.equals(want), (name, chunk)
    batches = list(read_format(fmt, io.StringIO(text), "test.log", batch_rows=3))
    assert all(b.height <= 3 for b in batches)
    assert pl.concat(batches).equals(want) if batches else want.is_empty()


class _Trickle(io.TextIOBase):
    """A pipe-like stream that hands out at most 5 characters per read."""

    def __init__(self, text: str) -> None:
        self.buf = io.StringIO(text)

    def read(self, n: int = -1) -> str:
        return self.buf.read(5 if n is None or n < 0 else min(n, 5))


def test_short_reads_are_fine():
    """A stream that returns fewer characters than asked (a pipe) still yields every frame."""
    text = _read_text(FIXTURES / "steve-websocketlogger.log")
    got = pl.concat(list(FORMATS_BY_NAME["steve"].read(_Trickle(text), "test.log")))
    assert got.equals(_read(text))


# ------------------------------------------------------------------------------------ sniffing, safety


def test_formats_interface():
    """Every format has a unique short name and a description; generic is last."""
    names = [f.name for f in TEXT_FORMATS]
    assert len(set(names)) == len(names) and names[-1] == "generic"
    assert set(names) == {
        "mobilityhouse",
        "steve",
        "everest",
        "microocpp",
        "evcc",
        "console",
        "proxy",
        "csv",
        "ocpp-tester",
        "generic",
    }
    assert all(f.description and "\n" not in f.description for f in TEXT_FORMATS)


def test_sniff_rejects_text_without_frames():
    """Text with no OCPP frame in it is not claimed by any format."""
    assert sniff_text(["hello world", "[1, 2, 3]", "2024-05-01 INFO started", ""]) is None
    assert sniff_text([]) is None


def test_generic_survives_huge_and_binary_text():
    """Generic never hangs or raises on megabytes of unclosed frames, broken starts or binary-ish noise."""
    nasty = (
        '[2,"' * 300_000
        + "\n"
        + '[2,"a",}' * 100_000
        + "\n"
        + "".join(chr(c) for c in range(1, 2000)) * 50
        + "\n"
        + '[2,"ok","Heartbeat",{}]\n'
    )
    t = time.perf_counter()
    df = _read(nasty, "generic")
    assert time.perf_counter() - t < 20
    assert _ok(df)["text"].to_list() == ['[2,"ok","Heartbeat",{}]']
    assert df["text"].str.len_chars().max() <= 1000


@pytest.mark.parametrize("fmt", [f.name for f in TEXT_FORMATS])
def test_every_reader_tolerates_garbage(fmt):
    """Every reader returns (possibly empty) schema-conforming batches for garbage input, never an exception."""
    garbage = "\x00\x01 [2, \n[[[[\n}}}}]]]\n" + '"' * 33 + "\n,,,\n\n" + "é" * 1000
    _read(garbage, fmt)
