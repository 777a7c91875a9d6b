"""Transaction detectors on short scripts of frames, on the fleet-demo capture and on a live recorded fleet."""

from __future__ import annotations

import polars as pl
import pytest

from ocpptool.analysis import Options, run
from ocpptool.pipeline import load
from ocpptool.testing import ChargerConfig, CsmsCall, Faults, Session, record_fleet

from .test_analysis_derived import Script, fleet_demo, serious

TX_CODES = [
    "orphaned-transaction",
    "unknown-transaction",
    "duplicate-transaction",
    "invalid-transaction-id",
    "event-after-end",
    "charging-without-transaction",
    "remote-start-without-transaction",
    "seqno-gap",
]


def session(
    s: Script,
    t: float,
    cp: str,
    tid: int,
    *,
    connector: int = 1,
    meter: int = 1000,
    samples: int = 3,
    step: int = 120,
    every: float = 60.0,
) -> Script:
    """A clean 1.6 session: Preparing, start, Charging, samples, stop, Finishing."""
    s.status(t, cp, "Preparing", connector=connector).start(t + 1, cp, tid, connector=connector, meter=meter)
    s.status(t + 2, cp, "Charging", connector=connector)
    for i in range(1, samples + 1):
        s.meter(t + 2 + i * every, cp, meter + i * step, connector=connector, tid=tid)
    end = t + 3 + samples * every
    s.stop(end, cp, tid, meter=meter + samples * step).status(end + 1, cp, "Finishing", connector=connector)
    return s


def heartbeats(s: Script, cp: str, start: float, stop: float, every: float) -> Script:
    t = start
    while t <= stop:
        s.heartbeat(t, cp)
        t += every
    return s


def one(findings: pl.DataFrame) -> dict:
    assert findings.height == 1, findings
    return findings.row(0, named=True)


# ------------------------------------------------------------------------------------------- orphaned


def test_a_start_without_stop_while_the_charger_keeps_talking_is_orphaned():
    """An open transaction with an hour and more of later traffic from its charger is an error."""
    s = heartbeats(Script().start(0, "CP", 11, meter=500), "CP", 600, 4800, 600)
    f = one(s.findings("orphaned-transaction"))
    assert (f["severity"], f["transaction_id"], f["connector_id"]) == ("error", "11", 1)
    assert "kept talking for 4800 s" in f["summary"] and "meter 500 Wh" in f["summary"]


def test_a_long_transaction_still_sending_meter_values_at_the_end_is_not_an_error():
    """A ten-hour session whose meter values run to the end of the capture is alive, not orphaned."""
    s = Script().start(0, "CP", 11, meter=500)
    for i in range(1, 601):
        s.meter(i * 60, "CP", 500 + i * 100, tid=11)
    f = one(s.findings("orphaned-transaction"))
    assert f["severity"] == "info" and "capture ends" in f["summary"]


def test_a_reboot_after_the_start_makes_it_orphaned_even_soon_after():
    """A BootNotification after an unstopped start is a sign the charger lost it, however short the capture."""
    s = Script().start(0, "CP", 11).meter(30, "CP", 1100, tid=11).boot(60, "CP").heartbeat(70, "CP")
    f = one(s.findings("orphaned-transaction"))
    assert f["severity"] == "error" and "rebooted" in f["summary"]
    assert len(f["evidence"]) == 3  # start, its answer, the boot


def test_a_new_start_on_the_same_connector_orphans_the_previous_one():
    """A second transaction on the connector while the first is open leaves the first orphaned."""
    s = session(Script().start(0, "CP", 1), 10, "CP", 2)
    f = one(s.findings("orphaned-transaction"))
    assert (f["transaction_id"], f["severity"]) == ("1", "error") and "new transaction (2)" in f["summary"]


def test_a_charger_that_goes_silent_mid_transaction_lost_its_connection():
    """When the charger stops talking while the capture goes on, its open transaction is an error."""
    s = Script().start(0, "A", 1)
    for i in range(1, 6):
        s.meter(i, "A", 1000 + i * 10, tid=1)
    heartbeats(s, "B", 0, 100, 1)
    f = one(s.findings("orphaned-transaction"))
    assert f["severity"] == "error" and "connection lost" in f["summary"]


def test_a_start_just_before_the_capture_ends_is_only_info():
    """An open transaction near the end of the capture with no other sign is info: the capture ends first."""
    s = Script().start(0, "CP", 3).meter(60, "CP", 1100, tid=3).meter(120, "CP", 1200, tid=3)
    f = one(s.findings("orphaned-transaction"))
    assert f["severity"] == "info" and "the capture ends" in f["summary"]


def test_stopped_transactions_on_two_connectors_are_not_orphaned():
    """Overlapping complete sessions on two connectors give no orphan."""
    s = session(session(Script(), 0, "CP", 1, connector=1), 30, "CP", 2, connector=2)
    heartbeats(s, "CP", 400, 8000, 900)
    assert s.findings("orphaned-transaction").is_empty()


# ------------------------------------------------------------------------------------------- unknown


def test_meter_values_for_an_id_never_started_on_a_watched_connector_are_a_warning():
    """An id with no start, on a connector whose earlier session is in the capture, is unknown."""
    s = session(Script(), 0, "CP", 1)
    s.meter(1000, "CP", 1500, tid=42).stop(1100, "CP", 42, meter=1600)
    f = one(s.findings("unknown-transaction"))
    assert (f["severity"], f["transaction_id"], f["value"]) == ("warning", "42", 2.0)
    assert "MeterValues/StopTransaction" in f["summary"]


def test_an_unknown_id_at_the_start_of_the_capture_started_before_it():
    """An id first seen in the capture's first minutes is info: its start predates the capture."""
    s = Script().meter(10, "CP", 1500, tid=42).stop(100, "CP", 42, meter=1600)
    f = one(s.findings("unknown-transaction"))
    assert f["severity"] == "info" and "before the capture" in f["summary"]


def test_a_2x_event_for_a_text_id_never_started_is_unknown():
    """2.x ids are text (UUIDs): Updated and Ended events for an id whose Started event is not in the capture,
    on an EVSE whose earlier session is, are reported like 1.6 numeric ids are."""
    s = Script().event(0, "CS", "Started", "a1b2-c3", 0, evse=1, wh=100).event(60, "CS", "Ended", "a1b2-c3", 1, evse=1, wh=900)
    s.event(1000, "CS", "Updated", "f00d-beef", 5, evse=1, wh=1500).event(1060, "CS", "Ended", "f00d-beef", 6, evse=1, wh=1600)
    f = one(s.findings("unknown-transaction"))
    assert (f["severity"], f["transaction_id"], f["value"]) == ("warning", "f00d-beef", 2.0)


def test_known_ids_and_sentinel_ids_are_not_unknown():
    """Ids that were started, and the sentinel 0 (another detector's business), are not reported."""
    s = session(Script(), 0, "CP", 1).meter(1000, "CP", 2000, tid=0)
    assert s.findings("unknown-transaction").is_empty()


# ------------------------------------------------------------------------------------------- duplicate


def test_the_same_start_sent_twice_and_given_two_ids_is_a_duplicate():
    """Two identical StartTransactions answered with two ids are one session held twice."""
    s = Script().start(0, "CP", 1, ts=0, meter=900).start(5, "CP", 2, ts=0, meter=900)
    f = one(s.findings("duplicate-transaction"))
    assert f["severity"] == "error" and "sent 2 times and got 2 ids (1, 2)" in f["summary"]
    assert len(f["evidence"]) == 4


def test_a_resent_start_after_no_answer_is_a_duplicate():
    """A repeated start whose first copy went unanswered may leave a second session in the CSMS."""
    s = Script().start(0, "CP", None, ts=0).start(2, "CP", 7, ts=0)
    f = one(s.findings("duplicate-transaction"))
    assert "only 1 id (7)" in f["summary"] and f["transaction_id"] == "7"


def test_a_repeat_answered_with_the_same_id_is_fine():
    """A CSMS that answers a repeated start with the same id deduplicated it correctly."""
    s = Script().start(0, "CP", 7, ts=0).start(2, "CP", 7, ts=0)
    assert s.findings("duplicate-transaction").is_empty()


def test_one_id_issued_for_two_different_starts_is_a_duplicate():
    """The CSMS giving id 5 to two different sessions, even on two charge points, is an error."""
    s = session(Script(), 0, "A", 5)
    session(s, 500, "B", 5, meter=8000)
    f = one(s.findings("duplicate-transaction"))
    assert (
        f["transaction_id"] == "5"
        and "2 different starts" in f["summary"]
        and "B connector 1" in f["summary"]
    )


def test_a_2x_started_event_sent_twice_is_a_duplicate():
    """Two TransactionEvent Started for one id are reported."""
    s = Script().event(0, "CS", "Started", "t1", 0, evse=1).event(1, "CS", "Started", "t1", 0, evse=1)
    assert one(s.findings("duplicate-transaction"))["value"] == 2.0


# ------------------------------------------------------------------------------------------- invalid id


def test_id_zero_in_an_accepted_start_answer_and_in_meter_values_is_invalid():
    """transactionId 0 given to an accepted start and then used by MeterValues is one error with all evidence."""
    s = Script().start(0, "CP", 0).meter(60, "CP", 1100, tid=0).meter(120, "CP", 1200, tid=0)
    f = one(s.findings("invalid-transaction-id"))
    assert (f["severity"], f["transaction_id"], f["value"]) == ("error", "0", 3.0)


def test_a_rejected_start_answered_with_minus_one_is_normal():
    """A refused id tag answered with -1, and the charger's stop for it, are not findings."""
    s = Script().start(0, "CP", -1, status="Invalid").stop(1, "CP", -1, meter=1000, reason="DeAuthorized")
    assert s.findings("invalid-transaction-id").is_empty()


def test_meter_values_with_id_zero_and_no_start_are_invalid():
    """MeterValues naming transaction 0 outside any start are reported (the ocpp-tester pattern)."""
    s = Script().meter(0, "CP", 1000, tid=0)
    assert (
        one(s.findings("invalid-transaction-id"))["summary"]
        == 'Transaction id "0" is used by 1 message(s) (MeterValues).'
    )


# ------------------------------------------------------------------------------------------- after end


def test_meter_values_after_the_stop_are_events_after_end():
    """MeterValues for a transaction sent after its StopTransaction are reported once, with the stop as evidence."""
    s = session(Script(), 0, "CP", 1).meter(400, "CP", 2000, tid=1).meter(460, "CP", 2100, tid=1)
    f = one(s.findings("event-after-end"))
    assert f["value"] == 2.0 and len(f["evidence"]) == 3 and "arrived after it ended" in f["summary"]


def test_a_2x_event_after_ended_is_reported_and_clean_2x_is_not():
    """An Updated event after Ended is late; Started/Updated/Ended in order is clean."""
    s = Script().event(0, "CS", "Started", "a", 0, evse=1).event(60, "CS", "Ended", "a", 1)
    assert s.findings("event-after-end").is_empty()
    s.event(70, "CS", "Updated", "a", 2)
    assert one(s.findings("event-after-end"))["transaction_id"] == "a"


def test_a_reused_id_is_judged_against_its_own_session():
    """After an id is issued again, its new session's meter values are not after the old one's end."""
    s = session(Script(), 0, "CP", 5)
    session(s, 500, "CP", 5, meter=2000)
    assert s.findings("event-after-end").is_empty()


# ------------------------------------------------------------------------------------------- charging without


def test_charging_status_without_a_transaction_is_a_warning():
    """A connector reporting Charging with no transaction open, and none following, is reported."""
    s = heartbeats(Script().status(0, "CP", "Charging", connector=2), "CP", 60, 600, 60)
    f = one(s.findings("charging-without-transaction"))
    assert (f["severity"], f["connector_id"]) == ("warning", 2)


def test_charging_status_just_before_the_start_is_normal():
    """Chargers often send Charging a moment before StartTransaction; that is not a finding."""
    s = Script().status(0, "CP", "Charging").start(1, "CP", 1).stop(300, "CP", 1, meter=2000)
    assert s.findings("charging-without-transaction").is_empty()


def test_charging_status_at_the_end_of_the_capture_is_info():
    """A Charging status in the last minute of the capture may precede a start the capture misses."""
    s = heartbeats(Script(), "CP", 0, 600, 60).status(590, "CP", "Charging")
    assert one(s.findings("charging-without-transaction"))["severity"] == "info"


def test_energy_rising_outside_any_transaction_is_reported():
    """A register climbing between MeterValues with no transaction open is energy nobody pays for."""
    s = Script().meter(0, "CP", 10000).meter(60, "CP", 10500).meter(120, "CP", 11000)
    f = one(s.findings("charging-without-transaction"))
    assert f["value"] == 1000.0 and f["evidence"] == [0, 2, 4]


def test_a_steady_register_while_idle_is_fine():
    """Clock-aligned readings of an idle connector that do not change are not a finding."""
    s = session(Script(), 0, "CP", 1).meter(1000, "CP", 1360).meter(1900, "CP", 1360)
    assert s.findings("charging-without-transaction").is_empty()


# ------------------------------------------------------------------------------------------- remote start


def remote(s: Script, t: float, cp: str, status: str = "Accepted") -> Script:
    return s.call(
        t, cp, "RemoteStartTransaction", {"idTag": "REMOTE", "connectorId": 1}, {"status": status}, up=False
    )


def test_an_accepted_remote_start_without_a_transaction_is_a_warning():
    """RemoteStartTransaction accepted and no start within the window is reported."""
    s = heartbeats(remote(Script(), 0, "CP"), "CP", 60, 1200, 60)
    f = one(s.findings("remote-start-without-transaction"))
    assert f["severity"] == "warning" and f["summary"].startswith("RemoteStartTransaction at")


def test_a_remote_start_followed_by_a_start_or_rejected_is_fine():
    """A start soon after an accepted request, or a rejected request, is not a finding."""
    s = remote(Script(), 0, "CP").start(5, "CP", 1, tag="REMOTE")
    remote(s, 10, "B", status="Rejected")
    heartbeats(s, "CP", 60, 1200, 60)
    assert s.findings("remote-start-without-transaction").is_empty()


def test_a_remote_start_at_the_end_of_the_capture_is_info():
    """When the capture ends within the window after the request, the finding is info."""
    s = remote(Script(), 0, "CP").heartbeat(30, "CP")
    assert one(s.findings("remote-start-without-transaction"))["severity"] == "info"


# ------------------------------------------------------------------------------------------- seqNo


def test_a_skipped_seqno_is_a_gap():
    """seqNo 0, 1, 3 misses one event."""
    s = Script().event(0, "CS", "Started", "a", 0, evse=1).event(60, "CS", "Updated", "a", 1)
    s.event(120, "CS", "Ended", "a", 3)
    f = one(s.findings("seqno-gap"))
    assert f["value"] == 1.0 and "from 1 to 3" in f["summary"]


def test_consecutive_and_repeated_seqnos_are_fine():
    """seqNo 0, 1, 1 (a resend), 2 has no gap; each transaction counts on its own."""
    s = Script().event(0, "CS", "Started", "a", 0, evse=1).event(60, "CS", "Updated", "a", 1)
    s.event(61, "CS", "Updated", "a", 1).event(120, "CS", "Ended", "a", 2).event(
        200, "CS", "Started", "b", 0, evse=1
    )
    assert s.findings("seqno-gap").is_empty()


# ------------------------------------------------------------------------------------------- clean traffic


def clean_script() -> Script:
    """Overlapping sessions on two connectors, bare and kWh meter values, second-rounded times, CSMS calls."""
    s = Script().boot(0, "CP")
    s.status(1, "CP", "Preparing").start(2, "CP", 1, meter=5000)
    s.status(3, "CP", "Preparing", connector=2).start(4, "CP", 2, connector=2, meter=9000)
    s.call(
        5,
        "CP",
        "ChangeConfiguration",
        {"key": "MeterValueSampleInterval", "value": "60"},
        {"status": "Accepted"},
        up=False,
    )
    for i in range(1, 5):
        s.meter(4 + 60 * i, "CP", 5000 + 120 * i, tid=1)  # bare: all defaults
        s.meter(5 + 60 * i, "CP", f"{9 + 0.1 * i:.1f}", connector=2, tid=2, unit="kWh")
    s.stop(300, "CP", 1, meter=5490).stop(301, "CP", 2, meter=9410)
    s.event(10, "CS", "Started", "x", 0, evse=1, wh=100.0, unit="kWh", token="T")
    s.event(70, "CS", "Updated", "x", 1, wh=100.4, unit="kWh").event(
        130, "CS", "Ended", "x", 2, wh=100.8, unit="kWh"
    )
    heartbeats(s, "CP", 310, 700, 300)
    return heartbeats(s, "CS", 140, 700, 300)


def test_clean_traffic_gives_no_transaction_finding():
    """Clean traffic of both versions yields nothing at warning or above from the transaction detectors."""
    assert serious(run(clean_script().tables(), Options(), only=TX_CODES).findings).is_empty()


# ------------------------------------------------------------------------------------------- end to end


def test_fleet_demo_cp006_is_the_only_orphan():
    """CP-006's connection cut mid-transaction leaves 1005 orphaned, as an error; nothing else is orphaned."""
    f = fleet_demo().findings.filter(pl.col("code") == "orphaned-transaction")
    assert f.select("severity", "charge_point_id", "transaction_id").rows() == [("error", "CP-006", "1005")]
    assert "connection lost" in f["summary"][0]


def test_fleet_demo_has_no_other_transaction_warnings():
    """Beyond CP-006's orphan, the sample capture's transactions are clean (CP-001 and CP-007 in particular)."""
    f = serious(fleet_demo().findings.filter(pl.col("code").is_in(TX_CODES)))
    assert f.select("code", "charge_point_id").rows() == [("orphaned-transaction", "CP-006")]


@pytest.fixture(scope="module")
def live_fleet(tmp_path_factory):
    """A small fleet recorded on loopback: one charger whose first start the CSMS leaves unanswered."""
    path = tmp_path_factory.mktemp("fleet") / "fleet.jsonl"
    chargers = [
        ChargerConfig("R-1", faults=Faults(resend_start=True), heartbeats=2, sessions=(Session(samples=3),)),
        ChargerConfig(
            "C-1",
            connectors=2,
            heartbeats=2,
            sessions=(
                Session(connector_id=1, samples=4),
                Session(connector_id=2, samples=3, start_after=0.05),
            ),
            csms_calls=(CsmsCall("RemoteStartTransaction", after=0.6, remote_samples=2),),
        ),
        ChargerConfig(
            "C-2", version="2.0.1", heartbeats=2, meter_style="kwh", sessions=(Session(samples=3),)
        ),
    ]
    result = record_fleet(chargers, path)
    tables, _ = load([str(path)], progress=False)
    return result, run(tables, Options())


def test_a_recorded_resend_of_start_is_a_duplicate(live_fleet):
    """The real charger's re-sent StartTransaction after a timeout is reported as duplicate-transaction."""
    result, analysis = live_fleet
    assert result.chargers["R-1"].resent == 1
    f = analysis.findings.filter(pl.col("code") == "duplicate-transaction")
    assert f["charge_point_id"].to_list() == ["R-1"] and "only 1 id" in f["summary"][0]


def test_a_clean_recorded_fleet_has_no_other_transaction_warnings(live_fleet):
    """The clean chargers of the recorded fleet (two connectors, remote start, 2.0.1 kWh) give nothing."""
    _, analysis = live_fleet
    f = serious(
        analysis.findings.filter(pl.col("code").is_in(TX_CODES) & (pl.col("charge_point_id") != "R-1"))
    )
    assert f.is_empty(), f
