"""Real OCPP peers (ocpp + websockets) on loopback: the recorded JSONL log is genuine and complete."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from ocpptool.testing import (
    ChargerConfig,
    Csms,
    CsmsCall,
    Faults,
    FleetResult,
    Session,
    record_fleet,
    run_charger,
)

pytestmark = pytest.mark.timeout(20)

FAST_S = 900.0  # the fast-clock charger runs 15 minutes ahead

FLEET = [
    ChargerConfig(
        "CP-A",
        connectors=2,
        sessions=(Session(1, "TAG-A1", 0.0, 6), Session(2, "TAG-A2", 0.1, 6)),
        csms_calls=(
            CsmsCall("ChangeConfiguration", after=0.05),
            CsmsCall("TriggerMessage", after=0.1, connector_id=2),
            CsmsCall("RemoteStartTransaction", after=0.15, connector_id=3),  # no such connector
        ),
    ),
    ChargerConfig("CP-FAST", faults=Faults(clock_offset_s=FAST_S), meter_style="bare"),
    ChargerConfig("CP-BACK", faults=Faults(meter_backwards_at=3), meter_style="kwh"),
    ChargerConfig(
        "CP-MUTE", heartbeats=2, response_timeout=0.3, faults=Faults(unanswered_action="Heartbeat")
    ),
    ChargerConfig("CP-ERR", faults=Faults(callerror_action="MeterValues")),
    ChargerConfig("CP-CUT", faults=Faults(drop_after_samples=3)),
    ChargerConfig(
        "CS-201",
        version="2.0.1",
        csms_calls=(CsmsCall("GetVariables", after=0.05), CsmsCall("TriggerMessage", after=0.1)),
    ),
    ChargerConfig("CS-201-BACK", version="2.0.1", faults=Faults(meter_backwards_at=2), meter_style="kwh"),
]


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _frames(path: Path) -> list[tuple[dict[str, Any], list[Any]]]:
    return [(r, json.loads(r["message"])) for r in _records(path)]


def _is_ocpp_j(frame: Any) -> bool:
    if not isinstance(frame, list) or not frame or not isinstance(frame[1], str):
        return False
    kind = frame[0]
    if kind == 2:
        return len(frame) == 4 and isinstance(frame[2], str) and isinstance(frame[3], dict)
    if kind == 3:
        return len(frame) == 3 and isinstance(frame[2], dict)
    if kind == 4:
        return len(frame) == 5 and all(isinstance(x, str) for x in frame[2:4]) and isinstance(frame[4], dict)
    return False


def _energy_series(path: Path, cp_id: str) -> dict[Any, list[float]]:
    """Energy.Active.Import.Register readings in Wh per transaction (1.6 MeterValues / 2.0.1 events)."""
    series: dict[Any, list[float]] = {}
    for rec, frame in _frames(path):
        if rec["charge_point_id"] != cp_id or frame[0] != 2:
            continue
        action, payload = frame[2], frame[3]
        if action == "MeterValues" and "transactionId" in payload:
            tx, values = payload["transactionId"], payload["meterValue"]
        elif action == "TransactionEvent":
            tx, values = payload["transactionInfo"]["transactionId"], payload.get("meterValue", [])
        else:
            continue
        for mv in values:
            for sv in mv["sampledValue"]:
                if sv.get("measurand", "Energy.Active.Import.Register") != "Energy.Active.Import.Register":
                    continue
                unit = sv.get("unit") or sv.get("unitOfMeasure", {}).get("unit", "Wh")
                series.setdefault(tx, []).append(float(sv["value"]) * (1000 if unit == "kWh" else 1))
    return series


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> FleetResult:
    return record_fleet(FLEET, tmp_path_factory.mktemp("fleet") / "fleet.jsonl")


def test_log_lines_have_the_documented_shape(fleet: FleetResult) -> None:
    """Every log line is one JSON object with exactly the five documented keys and a UTC observed time."""
    records = _records(fleet.log_path)
    assert len(records) == fleet.frames > 300
    for r in records:
        assert list(r) == ["timestamp", "charge_point_id", "direction", "subprotocol", "message"]
        assert r["timestamp"].endswith("Z") and _ts(r["timestamp"]).utcoffset() == timedelta(0)
        assert r["direction"] in ("cp->csms", "csms->cp")
        assert r["subprotocol"] == ("ocpp2.0.1" if r["charge_point_id"].startswith("CS-") else "ocpp1.6")
    assert {r["charge_point_id"] for r in records} == {c.id for c in FLEET}


def test_every_frame_parses_as_ocpp_j(fleet: FleetResult) -> None:
    """Every recorded message is a well-formed OCPP-J CALL, CALLRESULT or CALLERROR."""
    frames = _frames(fleet.log_path)
    assert all(_is_ocpp_j(f) for _, f in frames)
    assert {f[0] for _, f in frames} == {2, 3, 4}


def test_every_charger_call_answered_except_the_injected_one(fleet: FleetResult) -> None:
    """Each charger CALL gets a CALLRESULT/CALLERROR on its connection, except the one left unanswered."""
    calls: dict[tuple[str, str], str] = {}
    answered: set[tuple[str, str]] = set()
    for rec, f in _frames(fleet.log_path):
        key = (rec["charge_point_id"], f[1])
        if rec["direction"] == "cp->csms" and f[0] == 2:
            calls[key] = f[2]
        elif rec["direction"] == "csms->cp" and f[0] in (3, 4):
            answered.add(key)
    missing = {(cp, calls[(cp, uid)], uid) for cp, uid in calls.keys() - answered}
    assert missing == {(cp, action, uid) for cp, action, uid in fleet.unanswered}
    assert [(cp, action) for cp, action, _ in fleet.unanswered] == [("CP-MUTE", "Heartbeat")]
    assert fleet.chargers["CP-MUTE"].timeouts == 1


def test_handler_exception_becomes_a_callerror(fleet: FleetResult) -> None:
    """The raising MeterValues handler is answered with exactly one CALLERROR InternalError."""
    errors = [(rec["charge_point_id"], f[2]) for rec, f in _frames(fleet.log_path) if f[0] == 4]
    assert errors == [("CP-ERR", "InternalError")]
    assert fleet.call_errors == [("CP-ERR", "MeterValues")]


def test_stop_transaction_ids_are_those_the_csms_issued(fleet: FleetResult) -> None:
    """StopTransaction carries the transaction id the CSMS issued in the StartTransaction answer."""
    calls: dict[str, str] = {}
    issued: dict[str, list[int]] = {}
    stopped: dict[str, list[int]] = {}
    for rec, f in _frames(fleet.log_path):
        cp = rec["charge_point_id"]
        if f[0] == 2:
            calls[f[1]] = f[2]
            if f[2] == "StopTransaction":
                stopped.setdefault(cp, []).append(f[3]["transactionId"])
        elif f[0] == 3 and calls.get(f[1]) == "StartTransaction":
            issued.setdefault(cp, []).append(f[2]["transactionId"])
    assert issued == fleet.issued_transaction_ids
    all_ids = sorted(i for ids in issued.values() for i in ids)
    assert all_ids == list(range(1001, 1001 + len(all_ids)))  # increasing, unique
    cut = fleet.issued_transaction_ids["CP-CUT"]
    for cp, ids in issued.items():
        expected = [i for i in ids if i not in cut]
        assert sorted(stopped.get(cp, [])) == sorted(expected), cp
    assert "CP-CUT" not in stopped  # the cut transaction is never stopped


def test_fast_clock_payload_timestamps_run_ahead(fleet: FleetResult) -> None:
    """The fast charger's payload timestamps are ~15 min ahead of the observed time; the others' are not."""
    skews: dict[str, list[float]] = {}
    for rec, f in _frames(fleet.log_path):
        if rec["direction"] != "cp->csms" or f[0] != 2:
            continue
        stamps = [f[3]["timestamp"]] if "timestamp" in f[3] else []
        stamps += [mv["timestamp"] for mv in f[3].get("meterValue", [])]
        for s in stamps:
            skews.setdefault(rec["charge_point_id"], []).append(
                (_ts(s) - _ts(rec["timestamp"])).total_seconds()
            )
    assert skews["CP-FAST"] and all(FAST_S - 2 < s < FAST_S + 0.1 for s in skews["CP-FAST"])
    others = [s for cp, v in skews.items() if cp != "CP-FAST" for s in v]
    assert others and all(-2 < s < 0.1 for s in others)


def test_meter_fault_shows_a_decreasing_register(fleet: FleetResult) -> None:
    """Only the meter-fault chargers report a register that decreases within a transaction."""

    def decreases(cp: str) -> int:
        return sum(
            b < a for v in _energy_series(fleet.log_path, cp).values() for a, b in zip(v, v[1:], strict=False)
        )

    assert decreases("CP-BACK") == 1
    assert decreases("CS-201-BACK") == 1
    for cp in ("CP-A", "CP-FAST", "CP-ERR", "CS-201"):
        assert decreases(cp) == 0, cp
        assert all(len(v) >= 6 and v[-1] > v[0] for v in _energy_series(fleet.log_path, cp).values())


def test_overlapping_transactions_and_csms_initiated_calls(fleet: FleetResult) -> None:
    """CP-A's two connectors charge at the same time; CSMS-initiated calls are answered by the chargers."""
    spans: dict[int, list[datetime]] = {}
    calls: dict[str, str] = {}
    initiated: list[tuple[str, str, Any]] = []
    for rec, f in _frames(fleet.log_path):
        if rec["charge_point_id"] == "CP-A" and f[0] == 2 and f[2] == "MeterValues":
            spans.setdefault(f[3]["connectorId"], []).append(_ts(rec["timestamp"]))
        if rec["direction"] == "csms->cp" and f[0] == 2:
            calls[f[1]] = f[2]
        elif rec["direction"] == "cp->csms" and f[0] == 3 and f[1] in calls:
            initiated.append((rec["charge_point_id"], calls[f[1]], f[2].get("status")))
    assert set(spans) == {1, 2}
    assert min(spans[2]) < max(spans[1]) and min(spans[1]) < max(spans[2])
    assert ("CP-A", "ChangeConfiguration", "Accepted") in initiated
    assert ("CP-A", "TriggerMessage", "Accepted") in initiated
    assert ("CP-A", "RemoteStartTransaction", "Rejected") in initiated  # connector 3 does not exist
    assert ("CS-201", "GetVariables", None) in initiated
    assert ("CS-201", "TriggerMessage", "Accepted") in initiated


def test_201_transaction_events_have_consecutive_seq_no(fleet: FleetResult) -> None:
    """2.0.1 TransactionEvents go Started, Updated..., Ended with seqNo 0, 1, 2, ... per transaction."""
    events: dict[str, list[tuple[str, int]]] = {}
    for _, f in _frames(fleet.log_path):
        if f[0] == 2 and f[2] == "TransactionEvent":
            events.setdefault(f[3]["transactionInfo"]["transactionId"], []).append(
                (f[3]["eventType"], f[3]["seqNo"])
            )
    assert len(events) == 2
    for seq in events.values():
        assert [s for _, s in seq] == list(range(len(seq)))
        assert seq[0][0] == "Started" and seq[-1][0] == "Ended"
        assert {e for e, _ in seq[1:-1]} == {"Updated"}


def test_dropped_connection_leaves_the_transaction_open(fleet: FleetResult) -> None:
    """The cut charger's log stops after its 3rd MeterValues answer, with no StopTransaction and no close."""
    frames = [f for rec, f in _frames(fleet.log_path) if rec["charge_point_id"] == "CP-CUT"]
    actions = [f[2] for f in frames if f[0] == 2]
    assert actions.count("StartTransaction") == 1 and actions.count("MeterValues") == 3
    assert "StopTransaction" not in actions
    assert actions[-1] == "MeterValues" and frames[-1][0] == 3
    assert fleet.chargers["CP-CUT"].dropped


def test_start_transaction_resent_after_timeout(tmp_path: Path) -> None:
    """With resend_start, an unanswered StartTransaction times out; an identical one is re-sent, answered."""
    cfg = ChargerConfig("CP-RETRY", heartbeats=0, response_timeout=0.3, faults=Faults(resend_start=True))
    result = record_fleet([cfg], tmp_path / "retry.jsonl")
    starts = [(rec, f) for rec, f in _frames(result.log_path) if f[0] == 2 and f[2] == "StartTransaction"]
    assert len(starts) == 2
    (r1, first), (r2, second) = starts
    assert first[3] == second[3] and first[1] != second[1]
    assert 0.3 <= (_ts(r2["timestamp"]) - _ts(r1["timestamp"])).total_seconds() < 1.5
    answers = {f[1] for rec, f in _frames(result.log_path) if f[0] == 3}
    assert first[1] not in answers and second[1] in answers
    assert result.chargers["CP-RETRY"].resent == 1
    assert result.chargers["CP-RETRY"].transactions == result.issued_transaction_ids["CP-RETRY"] == [1001]


def test_recorded_text_is_verbatim_and_csms_serves_a_standalone_charger(tmp_path: Path) -> None:
    """A raw frame with odd spacing is logged verbatim; a charger run on a standalone Csms ends by itself."""
    raw = '[2, "raw-1",  "Heartbeat", {} ]'

    async def scenario() -> None:
        async with Csms(tmp_path / "raw.jsonl") as csms:
            async with connect(f"{csms.url}/RAW-1", subprotocols=["ocpp1.6"], ping_interval=None) as ws:  # type: ignore[list-item]
                await ws.send(raw)
                answer = await asyncio.wait_for(ws.recv(), timeout=5)
            report = await run_charger(ChargerConfig("CP-SOLO", heartbeats=1, sessions=()), csms.url)
            await csms.wait_idle()
        assert json.loads(answer)[:2] == [3, "raw-1"]
        assert report.transactions == [] and not report.dropped

    asyncio.run(scenario())
    records = _records(tmp_path / "raw.jsonl")
    assert records[0]["message"] == raw and records[0]["charge_point_id"] == "RAW-1"
    assert json.loads(records[1]["message"])[1] == "raw-1"
    assert {r["charge_point_id"] for r in records} == {"RAW-1", "CP-SOLO"}


def test_connection_without_ocpp_subprotocol_is_refused(tmp_path: Path) -> None:
    """A client offering no OCPP subprotocol is refused at the handshake (HTTP 400); nothing is recorded."""

    async def scenario() -> None:
        async with Csms(tmp_path / "none.jsonl") as csms:
            with pytest.raises(InvalidStatus) as err:
                async with connect(f"{csms.url}/NOPROTO", ping_interval=None, open_timeout=5):
                    pass
            assert err.value.response.status_code == 400

    asyncio.run(scenario())
    assert (tmp_path / "none.jsonl").read_text() == ""
