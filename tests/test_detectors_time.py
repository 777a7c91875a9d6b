"""Time detectors, on short scripts of frames run through the real decoder, and on recorded traffic.

The builders here (``frames``, ``up``, ``down``, ``call``, ``result``, ``error``, ``findings``, ``fleet``) are
shared by the protocol and connectivity detector tests.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from functools import cache

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from ocpptool.analysis import Options, run
from ocpptool.sources.base import conform
from ocpptool.tables.build import Tables, build_tables

from .conftest import REPO

T0 = datetime(2026, 1, 5, 10, 0, 0, tzinfo=UTC)
UP, DOWN = "cp->csms", "csms->cp"


def iso(seconds: float) -> str:
    """The payload spelling of ``T0 + seconds``."""
    return (T0 + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def call(mid: str, action: str, payload: dict | None = None) -> str:
    return json.dumps([2, mid, action, payload or {}])


def result(mid: str, payload: dict | None = None) -> str:
    return json.dumps([3, mid, payload or {}])


def error(mid: str, code: str = "InternalError", description: str = "") -> str:
    return json.dumps([4, mid, code, description, {}])


def up(t: float | None, text: str, cp: str = "CP-1") -> tuple:
    return (t, cp, UP, text)


def down(t: float | None, text: str, cp: str = "CP-1") -> tuple:
    return (t, cp, DOWN, text)


def frames(*rows: tuple, version: str = "ocpp1.6") -> Tables:
    """Tables from (seconds after T0 or None, charge point, direction, frame text) rows, via the decoder."""
    raw = conform(
        pl.DataFrame(
            {
                "ts": [None if r[0] is None else T0 + timedelta(seconds=r[0]) for r in rows],
                "conn": [r[1] for r in rows],
                "charge_point_id": [r[1] for r in rows],
                "direction": [r[2] for r in rows],
                "text": [r[3] for r in rows],
                "subprotocol": [version] * len(rows),
                "source": ["script"] * len(rows),
                "source_pos": list(range(1, len(rows) + 1)),
            },
            schema_overrides={"ts": pl.Datetime("us", "UTC")},
        )
    )
    return build_tables([raw])


def findings(tables: Tables, code: str, **options) -> pl.DataFrame:
    return run(tables, Options(**options), only=[code]).findings


def status(mid: str, payload_s: float, status: str = "Available") -> str:
    return call(
        mid,
        "StatusNotification",
        {"connectorId": 1, "errorCode": "NoError", "status": status, "timestamp": iso(payload_s)},
    )


def meter(mid: str, payload_s: float, wh: int = 1000) -> str:
    return call(
        mid,
        "MeterValues",
        {
            "connectorId": 1,
            "meterValue": [{"timestamp": iso(payload_s), "sampledValue": [{"value": str(wh)}]}],
        },
    )


@cache
def fleet(tmp: str) -> Tables:
    """One recorded fleet for all detector tests: faults on CP-CLOCK, CP-MUTE, CP-ERR; the rest clean."""
    from ocpptool.pipeline import load
    from ocpptool.testing import ChargerConfig, CsmsCall, Faults, Session, record_fleet

    chargers = [
        ChargerConfig("CP-CLOCK", faults=Faults(clock_offset_s=900)),
        ChargerConfig("CP-MUTE", faults=Faults(unanswered_action="MeterValues")),
        ChargerConfig("CP-ERR", faults=Faults(callerror_action="MeterValues")),
        ChargerConfig(
            "CP-CLEAN",
            connectors=2,
            sessions=(
                Session(connector_id=1, samples=6),
                Session(connector_id=2, start_after=0.1, samples=6),
            ),
            csms_calls=(CsmsCall("ChangeConfiguration"), CsmsCall("GetConfiguration", after=0.3)),
        ),
        ChargerConfig("CS-CLEAN", version="2.0.1", csms_calls=(CsmsCall("GetVariables"),)),
    ]
    path = f"{tmp}/fleet.jsonl"
    record_fleet(chargers, path)
    return load([path], progress=False)[0]


@pytest.fixture(scope="session")
def recorded(tmp_path_factory) -> Tables:
    return fleet(str(tmp_path_factory.getbasetemp()))  # one recording per test session


MY_CODES = [
    "clock-drift", "clock-jump", "timestamp-in-future", "epoch-timestamp", "stop-before-start",
    "unanswered-call", "call-error", "orphan-response", "duplicate-message-id", "concurrent-calls",
    "schema-violation", "heartbeat-gap", "boot-loop", "reconnect-storm",
]  # fmt: skip


def serious(f: pl.DataFrame) -> pl.DataFrame:
    return f.filter(pl.col("code").is_in(MY_CODES), pl.col("severity") != "info")


# --------------------------------------------------------------------------- clock-drift


def test_a_clock_fifteen_minutes_ahead_is_one_drift_finding_with_the_median_offset():
    """Consecutive messages 900 s ahead make one clock-drift episode whose value is the median offset."""
    t = frames(*[up(i * 10, status(f"s{i}", i * 10 + 900 + i)) for i in range(5)])
    f = findings(t, "clock-drift")
    assert f.height == 1
    assert f["value"][0] == pytest.approx(902.0)
    assert "15.0 min ahead" in f["summary"][0]
    assert f["evidence"][0].to_list() == [0, 1, 2, 3, 4]


def test_a_clock_within_the_threshold_is_not_drift():
    """Offsets of a few seconds (send delay, rounding) give no finding."""
    t = frames(*[up(i * 10, status(f"s{i}", i * 10 - 3)) for i in range(5)])
    assert findings(t, "clock-drift").is_empty()


def test_each_episode_of_drift_is_reported_once():
    """Drift, then a correct clock, then drift again: two findings."""
    offsets = [600, 600, 0, 0, -600, -600]
    t = frames(*[up(i * 10, status(f"s{i}", i * 10 + o)) for i, o in enumerate(offsets)])
    f = findings(t, "clock-drift")
    assert f["value"].to_list() == [600.0, -600.0]
    assert "behind" in f["summary"][1]


def test_stored_meter_values_sent_late_are_not_drift():
    """MeterValues an hour old, sent in a burst after an outage, say nothing about the clock."""
    t = frames(*[up(i, meter(f"m{i}", i - 3600 + 60 * i)) for i in range(4)])
    assert findings(t, "clock-drift").is_empty()


def test_messages_without_an_observed_time_are_ignored():
    """A log without a time zone gives no observed ts, so no drift can be measured."""
    t = frames(*[up(None, status(f"s{i}", i * 10 + 900)) for i in range(3)])
    assert findings(t, "clock-drift").is_empty()


def test_a_single_odd_timestamp_is_not_an_episode():
    """One message with an old timestamp among good ones is a late report, not a wrong clock."""
    t = frames(up(0, status("a", 0)), up(10, status("b", 10 - 7200)), up(20, status("c", 20)))
    assert findings(t, "clock-drift").is_empty()


def test_interleaved_chargers_are_each_judged_against_their_own_clock():
    """A charger 15 minutes ahead between the messages of one with a right clock: one drift episode holding
    all of its messages (the other's do not break it), and no jump from one charger's clock to the other's."""
    rows = []
    for i in range(4):
        rows.append(up(i * 10, status(f"a{i}", i * 10 + 900), cp="CP-A"))
        rows.append(up(i * 10 + 5, status(f"b{i}", i * 10 + 5), cp="CP-B"))
    t = frames(*rows)
    drift = findings(t, "clock-drift")
    assert drift["charge_point_id"].to_list() == ["CP-A"]
    assert drift["evidence"][0].to_list() == [0, 2, 4, 6]
    assert findings(t, "clock-jump").is_empty()


def test_a_log_whose_lines_are_out_of_time_order_is_judged_in_time_order():
    """The clock detectors walk each charger's messages in observed-time order, also when the lines of a log
    are not in that order (a line written late): here the message seen at 12:10, after the one seen at 12:20,
    carries a clock 10 minutes ahead. In time order that clock jumps forward, then back; in line order it
    would jump only once."""
    t = frames(up(0, status("a", 0)), up(1200, status("b", 1200)), up(600, status("c", 1200)))
    assert not t.messages["ts"].is_sorted()
    jumps = findings(t, "clock-jump").sort("value")
    assert jumps["value"].to_list() == [-600.0, 600.0]
    assert jumps["evidence"].to_list() == [[2, 1], [0, 2]]


# --------------------------------------------------------------------------- clock-jump


def test_a_time_sync_is_a_clock_jump_with_its_size():
    """The payload clock moving an hour against the observed one between two messages is one jump."""
    t = frames(up(0, status("a", 0)), up(10, status("b", 10)), up(20, status("c", 20 + 3600)))
    f = findings(t, "clock-jump")
    assert_frame_equal(
        f.select("charge_point_id", "evidence", "value"),
        pl.DataFrame({"charge_point_id": ["CP-1"], "evidence": [[1, 2]], "value": [3600.0]}),
    )
    assert "1.0 h forward" in f["summary"][0]


def test_a_steady_clock_does_not_jump():
    """A constant offset, however large, is drift, not a jump."""
    t = frames(*[up(i * 10, status(f"s{i}", i * 10 + 7200)) for i in range(4)])
    assert findings(t, "clock-jump").is_empty()


# --------------------------------------------------------------------------- timestamp-in-future / epoch


def test_a_timestamp_days_ahead_is_in_the_future():
    """A payload timestamp two days past the observed time is a finding with the lead as value."""
    t = frames(up(0, status("a", 2 * 86400)), up(5, status("b", 5)))
    f = findings(t, "timestamp-in-future")
    assert f["value"].to_list() == [2 * 86400.0]
    assert f["evidence"].to_list() == [[0]]


def test_an_hour_ahead_is_not_the_future():
    """Below future_s (24 h) a lead is clock drift's business."""
    assert findings(frames(up(0, status("a", 3600))), "timestamp-in-future").is_empty()


@pytest.mark.parametrize(
    "stamp", ["1970-01-01T00:00:12Z", "0001-01-01T00:00:00Z", "0000-01-01T00:00:00.000Z"]
)
def test_an_unset_clock_is_an_epoch_timestamp(stamp):
    """1970 and year 0/1 in a meter sample mean the real-time clock was never set."""
    payload = {"connectorId": 1, "meterValue": [{"timestamp": stamp, "sampledValue": [{"value": "5"}]}]}
    f = findings(frames(up(0, call("m", "MeterValues", payload))), "epoch-timestamp")
    assert f["severity"].to_list() == ["error"]
    assert stamp in f["summary"][0]


def test_epoch_timestamps_need_no_observed_time():
    """An unset clock is visible even in a log without observed times."""
    assert findings(frames(up(None, status("a", -T0.timestamp()))), "epoch-timestamp").height == 1


def test_a_normal_timestamp_is_not_epoch():
    """A 2026 timestamp is fine."""
    assert findings(frames(up(0, status("a", 0))), "epoch-timestamp").is_empty()


# --------------------------------------------------------------------------- stop-before-start


def session16(stop_s: float) -> Tables:
    start = {"connectorId": 1, "idTag": "TAG", "meterStart": 0, "timestamp": iso(0)}
    stop = {"transactionId": 7, "meterStop": 100, "timestamp": iso(stop_s)}
    return frames(
        up(0, call("s", "StartTransaction", start)),
        down(0.1, result("s", {"transactionId": 7, "idTagInfo": {"status": "Accepted"}})),
        up(600, call("e", "StopTransaction", stop)),
        down(600.1, result("e")),
    )


def test_a_1_6_stop_before_its_start_is_found_through_the_issued_transaction_id():
    """StopTransaction 7 dated an hour before StartTransaction (answered with id 7) is a finding."""
    f = findings(session16(-3600), "stop-before-start")
    assert_frame_equal(
        f.select("transaction_id", "evidence", "value"),
        pl.DataFrame({"transaction_id": ["7"], "evidence": [[0, 2]], "value": [-3600.0]}),
    )


def test_a_normal_1_6_session_is_not_stop_before_start():
    """A stop after its start gives nothing."""
    assert findings(session16(600), "stop-before-start").is_empty()


def test_a_2x_ended_event_before_started_is_found():
    """TransactionEvent Ended dated before Started of the same transaction is a finding."""

    def event(mid, kind, s):
        return call(
            mid,
            "TransactionEvent",
            {"eventType": kind, "timestamp": iso(s), "triggerReason": "Authorized", "seqNo": 0,
             "transactionInfo": {"transactionId": "tx-1"}},
        )  # fmt: skip

    t = frames(up(0, event("a", "Started", 0)), down(1, result("a")), up(60, event("b", "Ended", -60)),
               down(61, result("b")), version="ocpp2.0.1")  # fmt: skip
    f = findings(t, "stop-before-start")
    assert f["transaction_id"].to_list() == ["tx-1"]
    assert f["value"].to_list() == [-60.0]


# --------------------------------------------------------------------------- recorded traffic


def test_a_charger_clock_fifteen_minutes_fast_gives_one_clock_drift(recorded):
    """A real charger with a 900 s fast clock gives exactly one clock-drift finding, about 15 minutes ahead."""
    f = findings(recorded, "clock-drift")
    assert f["charge_point_id"].to_list() == ["CP-CLOCK"]
    assert f["value"][0] == pytest.approx(900, abs=5)
    assert "15.0 min ahead" in f["summary"][0]


def test_clean_chargers_give_no_finding_at_warning_or_above(recorded):
    """Overlapping transactions, CSMS-initiated calls and 2.0.1 traffic of healthy chargers are quiet."""
    f = run(recorded).findings
    assert serious(f.filter(pl.col("charge_point_id").is_in(["CP-CLEAN", "CS-CLEAN"]))).is_empty()


def test_the_fleet_demo_capture_yields_exactly_its_clock_anomaly():
    """In captures/fleet-demo.jsonl only CP-002 has a wrong clock, 15 minutes fast."""
    from ocpptool.pipeline import load

    tables, _ = load([str(REPO / "captures" / "fleet-demo.jsonl")], progress=False)
    f = run(tables, only=["clock-drift", "clock-jump", "timestamp-in-future", "epoch-timestamp"]).findings
    assert f.select("code", "charge_point_id").rows() == [("clock-drift", "CP-002")]


def test_durations_in_seconds_are_exact_whatever_the_chunking():
    """A duration prints the same in every run: seconds() gives microseconds / 1e6 exactly, in a big frame
    (where Polars multiplies by the reciprocal) as in a one-row one (where it divides)."""
    import random

    from ocpptool.analysis.time import seconds

    rng = random.Random(5)
    us = [rng.randint(-10**9, 10**12) for _ in range(20_000)]
    frame = pl.DataFrame({"d": us}, schema={"d": pl.Int64}).select(pl.duration(microseconds=pl.col("d")).alias("d"))
    big = frame.select(seconds(pl.col("d"))).to_series().to_list()
    assert big == [u / 1e6 for u in us]
    single = [frame.slice(i, 1).select(seconds(pl.col("d"))).item() for i in range(0, 20_000, 97)]
    assert single == big[::97]
