"""Connectivity detectors: silence on an open connection, boot loops, reconnect storms."""

from __future__ import annotations

from datetime import timedelta

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from ocpptool.analysis import run
from ocpptool.pipeline import load
from ocpptool.tables.build import Tables

from .conftest import PUBLIC, REPO, need
from .test_detectors_time import T0, call, down, findings, fleet, frames, result, serious, up


@pytest.fixture(scope="session")
def recorded(tmp_path_factory) -> Tables:
    return fleet(str(tmp_path_factory.getbasetemp()))  # the recording the time tests made, if they ran


def boot(mid: str, t: float, interval: int = 60, cp: str = "CP-1") -> list[tuple]:
    return [
        up(t, call(mid, "BootNotification", {"chargePointVendor": "A", "chargePointModel": "M"}), cp),
        down(t + 0.1, result(mid, {"currentTime": "2026-01-05T10:00:00Z", "interval": interval,
                                   "status": "Accepted"}), cp),
    ]  # fmt: skip


def beat(mid: str, t: float, cp: str = "CP-1") -> list[tuple]:
    return [up(t, call(mid, "Heartbeat"), cp), down(t + 0.1, result(mid, {"currentTime": "x"}), cp)]


# --------------------------------------------------------------------------- heartbeat-gap


def test_silence_longer_than_three_intervals_is_a_gap():
    """Interval 60 s from the boot response; 290 s without a message is a heartbeat-gap."""
    t = frames(*boot("b", 0), *beat("h1", 60), *beat("h2", 350.1))
    f = findings(t, "heartbeat-gap")
    assert_frame_equal(
        f.select("charge_point_id", "evidence", "value", "ts"),
        pl.DataFrame(
            {"charge_point_id": ["CP-1"], "evidence": [[3, 4]], "value": [290.0],
             "ts": [T0 + timedelta(seconds=60.1)]},
            schema_overrides={"ts": pl.Datetime("us", "UTC")},
        ),
    )  # fmt: skip
    assert "heartbeat interval 60 s" in f["summary"][0]


def test_regular_heartbeats_are_not_a_gap():
    """A heartbeat every interval is what a connected charger does."""
    t = frames(*boot("b", 0), *[m for i in range(1, 6) for m in beat(f"h{i}", 60 * i)])
    assert findings(t, "heartbeat-gap").is_empty()


def test_a_silence_ended_by_a_new_boot_is_a_reconnect_not_a_gap():
    """The charger was away and booted again: not silence on an open connection."""
    t = frames(*boot("a", 0), *boot("b", 5000))
    assert findings(t, "heartbeat-gap").is_empty()


def test_without_a_boot_the_default_interval_applies():
    """No BootNotification seen: 300 s is assumed, so 1000 s of silence is a gap and 800 s is not."""
    t = frames(*beat("a", 0), *beat("b", 800), *beat("c", 1800.1))
    f = findings(t, "heartbeat-gap")
    assert f["value"].to_list() == [1000.0]
    assert "assumed" in f["summary"][0]


def test_each_charger_is_judged_by_its_own_interval():
    """Chargers told different intervals in one capture: 100 s of silence is a gap at 30 s (limit 90 s) but
    1000 s is none at 600 s (limit 1800 s); a charger with no boot seen gets the default (300 s, limit 900 s)."""
    t = frames(
        *boot("a", 0, 30, "CP-1"), *beat("a1", 30, "CP-1"), *beat("a2", 130.1, "CP-1"),
        *boot("b", 1, 600, "CP-2"), *beat("b1", 600, "CP-2"), *beat("b2", 1600.1, "CP-2"),
        *beat("c1", 2, "CP-3"), *beat("c2", 1002.1, "CP-3"),
    )  # fmt: skip
    f = findings(t, "heartbeat-gap").sort("charge_point_id")
    assert f.select("charge_point_id", "value").rows() == [("CP-1", 100.0), ("CP-3", 1000.0)]


def test_the_capture_edges_are_not_gaps():
    """Before the first and after the last message nothing is known: no finding for a short capture."""
    assert findings(frames(*beat("a", 0)), "heartbeat-gap").is_empty()


# --------------------------------------------------------------------------- boot-loop


def test_three_boots_in_five_minutes_are_a_boot_loop():
    """Boots at 0, 2 and 5 minutes: one boot-loop error with the three boots as evidence."""
    t = frames(*boot("a", 0), *boot("b", 120), *boot("c", 300))
    f = findings(t, "boot-loop")
    assert f.select("severity", "value", "evidence").rows() == [("error", 3.0, [0, 2, 4])]
    assert "3 BootNotifications within 5.0 min" in f["summary"][0]


def test_boots_spread_over_hours_are_not_a_loop():
    """A boot every 30 minutes is not a loop."""
    t = frames(*boot("a", 0), *boot("b", 1800), *boot("c", 3600))
    assert findings(t, "boot-loop").is_empty()


def test_a_long_loop_is_one_finding_and_separate_loops_are_two():
    """Five quick boots make one episode; another burst hours later makes a second."""
    rows = [m for i in range(5) for m in boot(f"a{i}", 60 * i)] + [
        m for i in range(3) for m in boot(f"b{i}", 9000 + i)
    ]
    f = findings(frames(*rows), "boot-loop")
    assert f["value"].to_list() == [5.0, 3.0]


def test_boots_of_different_chargers_do_not_add_up():
    """Two chargers booting at the same time are not a loop."""
    t = frames(*boot("a", 0, cp="A"), *boot("b", 1, cp="B"), *boot("c", 2, cp="C"))
    assert findings(t, "boot-loop").is_empty()


# --------------------------------------------------------------------------- reconnect-storm


def test_in_a_log_five_boots_in_ten_minutes_are_a_reconnect_storm():
    """Without connection information, BootNotifications stand for reconnections."""
    t = frames(*[m for i in range(5) for m in boot(f"a{i}", 100 * i)])
    f = findings(t, "reconnect-storm")
    assert f.select("value", "evidence").rows() == [(5.0, [0, 2, 4, 6, 8])]


def test_four_reconnections_are_not_a_storm():
    """Below reconnect_storm_count nothing is reported."""
    t = frames(*[m for i in range(4) for m in boot(f"a{i}", 100 * i)])
    assert findings(t, "reconnect-storm").is_empty()


def test_connections_table_rows_count_as_connections():
    """Six connections of one charger within a minute, as a capture shows them, are a storm."""
    t = frames(*[m for i in range(6) for m in beat(f"h{i}", 10 * i)])
    conns = pl.concat(
        [t.connections.with_columns(conn=pl.lit(f"c{i}"), opened=pl.lit(T0 + timedelta(seconds=10 * i)))
         for i in range(6)]
    )  # fmt: skip
    msgs = t.messages.with_columns(conn=pl.format("c{}", pl.col("idx") // 2))
    f = run(Tables(msgs, t.weirds, conns), only=["reconnect-storm"]).findings
    assert f.select("charge_point_id", "value", "evidence").rows() == [("CP-1", 6.0, [0, 2, 4, 6, 8, 10])]


# --------------------------------------------------------------------------- recorded and public traffic


def test_recorded_fleet_has_no_connectivity_warnings(recorded):
    """Healthy chargers that boot once and heartbeat on time give no connectivity finding."""
    f = run(recorded, only=["heartbeat-gap", "boot-loop", "reconnect-storm"]).findings
    assert serious(f).is_empty()


def test_fleet_demo_has_no_connectivity_findings():
    """fleet-demo: every charger boots once and stays in touch."""
    tables, _ = load([str(REPO / "captures" / "fleet-demo.jsonl")], progress=False)
    assert run(tables, only=["heartbeat-gap", "boot-loop", "reconnect-storm"]).findings.is_empty()


def test_filmar_reboots_three_times_in_ten_minutes():
    """filmar-client-sim: the first three of its seven boots fall within 9.3 minutes (local log time)."""
    tables, _ = load([str(need(PUBLIC / "filmar-client-sim" / "ocpp.log"))], progress=False)
    f = run(tables, only=["boot-loop", "reconnect-storm"]).findings
    assert f.select("code", "value", "evidence").rows() == [("boot-loop", 3.0, [0, 76, 118])]


def test_detectors_run_on_the_second_thread_are_registered_and_read_only_messages():
    """Every detector collected beside the derived tables exists and builds its plan without them."""
    from ocpptool.analysis.registry import (
        _MESSAGES_ONLY,
        DETECTORS,
        AnalysisContext,
        Options,
        _load_detectors,
    )

    _load_detectors()
    assert set(DETECTORS) >= _MESSAGES_ONLY
    t = frames(up(0, call("h", "Heartbeat", {})), down(0.1, result("h", {"currentTime": "2026-01-05T10:00:00Z"})))
    bare = AnalysisContext(messages=t.messages.lazy(), connections=t.connections.lazy(), transactions=None,
                           meter_values=None, statuses=None, options=Options())  # fmt: skip
    for code in sorted(_MESSAGES_ONLY):
        assert DETECTORS[code].fn(bare).collect().height == 0, code
