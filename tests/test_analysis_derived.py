"""Derived tables (transactions, meter_values, statuses) built from short scripts of real frames.

``Script`` is the test factory the detector tests share: each method appends frames (and the CSMS's answer)
at a time in seconds after ``T0``; ``tables()`` runs them through the real decoder and correlator.
"""

from __future__ import annotations

import functools
import json
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from ocpptool.analysis import Options, run
from ocpptool.analysis.derived import METER_VALUES, STATUSES, TRANSACTIONS, derive
from ocpptool.pipeline import load
from ocpptool.sources.base import conform
from ocpptool.tables.build import Tables, build_tables

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
UP, DOWN = "cp->csms", "csms->cp"


def at(t: float) -> datetime:
    return T0 + timedelta(seconds=t)


def iso(t: float) -> str:
    """A payload timestamp: whole seconds as chargers that round write them, else milliseconds."""
    if t == int(t):
        return at(t).strftime("%Y-%m-%dT%H:%M:%SZ")
    return at(t).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class Script:
    """Frames of a conversation, in the order written; every CALL gets its answer 0.01 s later unless told."""

    def __init__(self) -> None:
        self.rows: list[tuple[float, str, str, str]] = []
        self.version: dict[str, str] = {}
        self.n = 0

    def call(self, t: float, cp: str, action: str, payload: dict, answer: dict | None = None, *,
             up: bool = True, error: str | None = None) -> Script:
        self.n += 1
        mid = f"m{self.n}"
        d1, d2 = (UP, DOWN) if up else (DOWN, UP)
        self.rows.append((t, cp, d1, json.dumps([2, mid, action, payload])))
        if error is not None:
            self.rows.append((t + 0.01, cp, d2, json.dumps([4, mid, error, "", {}])))
        elif answer is not None:
            self.rows.append((t + 0.01, cp, d2, json.dumps([3, mid, answer])))
        return self

    # -- OCPP 1.6
    def boot(self, t: float, cp: str) -> Script:
        return self.call(t, cp, "BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"},
                         {"status": "Accepted", "currentTime": iso(t), "interval": 300})

    def heartbeat(self, t: float, cp: str) -> Script:
        return self.call(t, cp, "Heartbeat", {}, {"currentTime": iso(t)})

    def start(self, t: float, cp: str, tid: int | None, *, connector: int = 1, meter: int = 1000,
              tag: str = "TAG1", status: str = "Accepted", ts: float | None = None) -> Script:
        answer = None if tid is None else {"transactionId": tid, "idTagInfo": {"status": status}}
        return self.call(t, cp, "StartTransaction", {"connectorId": connector, "idTag": tag, "meterStart": meter,
                                                     "timestamp": iso(t if ts is None else ts)}, answer)

    def stop(self, t: float, cp: str, tid: int, *, meter: int, reason: str | None = None,
             data: list | None = None) -> Script:
        p = {"transactionId": tid, "meterStop": meter, "timestamp": iso(t)}
        if reason:
            p["reason"] = reason
        if data is not None:
            p["transactionData"] = data
        return self.call(t, cp, "StopTransaction", p, {"idTagInfo": {"status": "Accepted"}})

    def meter(self, t: float, cp: str, value, *, connector: int = 1, tid: int | None = None,
              ts: float | None = None, **fields) -> Script:
        sv = {"value": str(value), **fields}
        p = {"connectorId": connector, "meterValue": [{"timestamp": iso(t if ts is None else ts),
                                                       "sampledValue": [sv]}]}
        if tid is not None:
            p["transactionId"] = tid
        return self.call(t, cp, "MeterValues", p, {})

    def status(self, t: float, cp: str, status: str, *, connector: int = 1) -> Script:
        return self.call(t, cp, "StatusNotification", {"connectorId": connector, "errorCode": "NoError",
                                                       "status": status, "timestamp": iso(t)}, {})

    # -- OCPP 2.0.1
    def event(self, t: float, cp: str, kind: str, tid: str, seq: int, *, evse: int | None = None,
              wh: float | None = None, unit: str = "Wh", token: str | None = None,
              reason: str | None = None, trigger: str = "MeterValuePeriodic") -> Script:
        self.version[cp] = "ocpp2.0.1"
        info: dict = {"transactionId": tid}
        if reason:
            info["stoppedReason"] = reason
        p: dict = {"eventType": kind, "timestamp": iso(t), "triggerReason": trigger, "seqNo": seq,
                   "transactionInfo": info}
        if evse is not None:
            p["evse"] = {"id": evse, "connectorId": 1}
        if token is not None:
            p["idToken"] = {"idToken": token, "type": "ISO14443"}
        if wh is not None:
            p["meterValue"] = [{"timestamp": iso(t), "sampledValue": [
                {"value": wh, "measurand": "Energy.Active.Import.Register", "unitOfMeasure": {"unit": unit}}]}]
        return self.call(t, cp, "TransactionEvent", p,
                         {"idTokenInfo": {"status": "Accepted"}} if kind == "Started" else {})

    def raw(self, t: float, cp: str, direction: str, text: str) -> Script:
        self.rows.append((t, cp, direction, text))
        return self

    def tables(self) -> Tables:
        rows = self.rows
        raw = conform(pl.DataFrame(
            {
                "ts": [at(t) for t, *_ in rows],
                "source": ["script"] * len(rows),
                "source_pos": list(range(1, len(rows) + 1)),
                "conn": [cp for _, cp, *_ in rows],
                "charge_point_id": [cp for _, cp, *_ in rows],
                "direction": [d for _, _, d, _ in rows],
                "subprotocol": [self.version.get(cp, "ocpp1.6") for _, cp, *_ in rows],
                "text": [text for *_, text in rows],
            },
            schema={"ts": pl.Datetime("us", "UTC"), "source": pl.String, "source_pos": pl.Int64,
                    "conn": pl.String, "charge_point_id": pl.String, "direction": pl.String,
                    "subprotocol": pl.String, "text": pl.String},
        ))
        return build_tables([raw])

    def derived(self):
        d = derive(self.tables().messages.lazy())
        return pl.collect_all([d.transactions, d.meter_values, d.statuses])

    def findings(self, code: str, **options) -> pl.DataFrame:
        return run(self.tables(), Options(**options), only=[code]).findings


@functools.cache
def fleet_demo():
    """The analysis of captures/fleet-demo.jsonl with default options (computed once per test run)."""
    from .conftest import REPO

    tables, _ = load([str(REPO / "captures" / "fleet-demo.jsonl")], progress=False)
    return run(tables, Options())


@pytest.fixture
def fleet():
    return fleet_demo()


def serious(findings: pl.DataFrame) -> pl.DataFrame:
    return findings.filter(pl.col("severity") != "info")


# ------------------------------------------------------------------------------------------- tests


def test_a_16_session_becomes_one_complete_transaction():
    """StartTransaction, its answer's id and the StopTransaction make one complete row with the energy."""
    s = Script().start(0, "CP", 7, meter=1000, tag="ABC").meter(60, "CP", 1500, tid=7).stop(
        120, "CP", 7, meter=2100, reason="EVDisconnected")
    tx, _, _ = s.derived()
    got = tx.select("connector_id", "transaction_id", "id_tag", "start_ts", "stop_ts", "meter_start_wh",
                    "meter_stop_wh", "energy_wh", "stop_reason", "state", "events")
    want = pl.DataFrame(
        {"connector_id": [1], "transaction_id": ["7"], "id_tag": ["ABC"], "start_ts": [at(0)], "stop_ts": [at(120)],
         "meter_start_wh": [1000.0], "meter_stop_wh": [2100.0], "energy_wh": [1100.0],
         "stop_reason": ["EVDisconnected"], "state": ["complete"], "events": [1]},
        schema={k: TRANSACTIONS[k] for k in got.columns},
    )
    assert_frame_equal(got, want)


def test_transaction_states_cover_open_rejected_unanswered_and_stop_only():
    """A start without stop is open, a refused tag rejected, a start with no answer unanswered, a lone stop no-start."""
    s = (Script().start(0, "CP", 1).start(10, "CP", 2, connector=2, status="Invalid")
         .start(20, "CP", None, connector=3).meter(25, "CP", 50, connector=4, tid=99).stop(30, "CP", 99, meter=60))
    tx, _, _ = s.derived()
    got = tx.select("transaction_id", "connector_id", "state", "energy_wh").sort("connector_id")
    want = pl.DataFrame({"transaction_id": ["1", "2", None, "99"], "connector_id": [1, 2, 3, 4],
                         "state": ["open", "rejected", "unanswered", "no-start"], "energy_wh": [None] * 4},
                        schema={"transaction_id": pl.String, "connector_id": pl.Int64, "state": pl.String,
                                "energy_wh": pl.Float64})
    assert_frame_equal(got, want)


def test_a_stop_belongs_to_the_latest_start_with_its_id():
    """When an id is issued twice, each StopTransaction closes the start just before it."""
    s = (Script().start(0, "CP", 5, meter=100).stop(10, "CP", 5, meter=200)
         .start(20, "CP", 5, meter=200).stop(30, "CP", 5, meter=350))
    tx, _, _ = s.derived()
    assert tx["energy_wh"].to_list() == [100.0, 150.0]


def test_2x_transaction_events_make_one_transaction_with_register_values():
    """Started/Updated/Ended of one id make one row; meter start/stop come from the register in Started/Ended."""
    s = (Script().event(0, "CS", "Started", "abc", 0, evse=2, wh=5.0, unit="kWh", token="TOK")
         .event(60, "CS", "Updated", "abc", 1, wh=5.5, unit="kWh")
         .event(120, "CS", "Ended", "abc", 2, wh=6.25, unit="kWh", reason="EVDisconnected"))
    tx, mv, _ = s.derived()
    got = tx.select("connector_id", "transaction_id", "id_tag", "meter_start_wh", "meter_stop_wh", "energy_wh",
                    "stop_reason", "state", "events")
    want = pl.DataFrame({"connector_id": [2], "transaction_id": ["abc"], "id_tag": ["TOK"],
                         "meter_start_wh": [5000.0], "meter_stop_wh": [6250.0], "energy_wh": [1250.0],
                         "stop_reason": ["EVDisconnected"], "state": ["complete"], "events": [3]},
                        schema={k: TRANSACTIONS[k] for k in got.columns})
    assert_frame_equal(got, want)
    assert mv["connector_id"].to_list() == [2, 2, 2]  # Updated/Ended carry no evse: taken from the transaction


def test_sampled_values_get_16_defaults_and_normalised_units():
    """Omitted measurand/unit/context/location take the 1.6 defaults; kWh and kW are scaled to Wh and W."""
    s = (Script().meter(0, "CP", 1234, tid=3)
         .meter(1, "CP", "12.5", unit="kWh", measurand="Energy.Active.Import.Register")
         .meter(2, "CP", "7.4", unit="kW", measurand="Power.Active.Import", context="Sample.Clock", phase="L1"))
    _, mv, _ = s.derived()
    got = mv.select("transaction_id", "sample_ts", "measurand", "phase", "unit", "context", "location", "raw_value",
                    "value", "source_action")
    want = pl.DataFrame(
        {"transaction_id": ["3", None, None], "sample_ts": [at(0), at(1), at(2)],
         "measurand": ["Energy.Active.Import.Register", "Energy.Active.Import.Register", "Power.Active.Import"],
         "phase": [None, None, "L1"], "unit": ["Wh", "kWh", "kW"],
         "context": ["Sample.Periodic", "Sample.Periodic", "Sample.Clock"], "location": ["Outlet"] * 3,
         "raw_value": ["1234", "12.5", "7.4"], "value": [1234.0, 12500.0, 7400.0],
         "source_action": ["MeterValues"] * 3},
        schema={k: METER_VALUES[k] for k in got.columns},
    )
    assert_frame_equal(got, want)
    assert mv["resolution"].to_list() == [1.0, 100.0, 100.0]


def test_2x_multiplier_and_numbers_and_stop_transaction_data_are_read():
    """A 2.x unitOfMeasure multiplier scales the value; StopTransaction transactionData samples are exploded."""
    s = Script().call(0, "CS", "MeterValues", {"evseId": 3, "meterValue": [{"timestamp": iso(0), "sampledValue": [
        {"value": 12, "unitOfMeasure": {"unit": "kWh", "multiplier": 1}}]}]}, {})
    s.version["CS"] = "ocpp2.0.1"
    s.start(10, "CP", 4, connector=2).stop(20, "CP", 4, meter=1500, data=[
        {"timestamp": iso(20), "sampledValue": [{"value": "1500", "context": "Transaction.End"}]}])
    _, mv, _ = s.derived()
    got = mv.select("charge_point_id", "connector_id", "transaction_id", "context", "value", "source_action")
    want = pl.DataFrame({"charge_point_id": ["CS", "CP"], "connector_id": [3, 2], "transaction_id": [None, "4"],
                         "context": ["Sample.Periodic", "Transaction.End"], "value": [120000.0, 1500.0],
                         "source_action": ["MeterValues", "StopTransaction"]},
                        schema={k: METER_VALUES[k] for k in got.columns})
    assert_frame_equal(got, want)


def test_a_payload_of_the_wrong_shape_loses_only_its_own_samples():
    """A meterValue whose sampledValue is not an array is skipped; the other samples still come through."""
    s = Script().meter(0, "CP", 100).call(1, "CP", "MeterValues", {
        "connectorId": 1, "meterValue": [{"timestamp": iso(1), "sampledValue": {"value": "5"}}]}, {})
    s.call(2, "CP", "MeterValues", {"connectorId": 1, "meterValue": [{"timestamp": iso(2), "sampledValue": [
        {"value": {"nested": 1}}]}]}, {}).meter(3, "CP", 300)
    _, mv, _ = s.derived()
    assert mv["value"].to_list() == [100.0, 300.0]


def test_status_notifications_of_both_versions():
    """1.6 connectorId/status/errorCode and 2.x evseId/connectorStatus land in the same columns."""
    s = Script().status(0, "CP", "Charging", connector=2).call(1, "CS", "StatusNotification", {
        "timestamp": iso(1), "connectorStatus": "Occupied", "evseId": 3, "connectorId": 1}, {})
    s.version["CS"] = "ocpp2.0.1"
    _, _, st = s.derived()
    got = st.select("charge_point_id", "connector_id", "status_ts", "status", "error_code")
    want = pl.DataFrame({"charge_point_id": ["CP", "CS"], "connector_id": [2, 3], "status_ts": [at(0), at(1)],
                         "status": ["Charging", "Occupied"], "error_code": ["NoError", None]},
                        schema={k: STATUSES[k] for k in got.columns})
    assert_frame_equal(got, want)


def test_derived_tables_have_their_declared_schemas_even_when_empty():
    """With no transaction traffic at all the three tables are empty with exactly their schemas."""
    tx, mv, st = Script().heartbeat(0, "CP").derived()
    assert (tx.schema, mv.schema, st.schema) == (pl.Schema(TRANSACTIONS), pl.Schema(METER_VALUES), pl.Schema(STATUSES))
    assert tx.height == mv.height == st.height == 0


def test_payload_timestamps_with_offsets_and_without_zone_are_utc():
    """A +02:00 offset is converted to UTC and a timestamp without a zone is read as UTC."""
    s = Script().call(0, "CP", "StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Available",
                                                      "timestamp": "2025-03-01T14:00:05+02:00"}, {})
    s.call(1, "CP", "StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Available",
                                           "timestamp": "2025-03-01T12:00:06"}, {})
    _, _, st = s.derived()
    assert st["status_ts"].to_list() == [at(5), at(6)]


def test_fleet_demo_transactions_are_reconstructed(fleet):
    """The sample capture yields 13 transactions: CP-006's 1005 open, the rest complete with positive energy."""
    tx = fleet.transactions
    assert tx.height == 13
    assert tx.filter(pl.col("state") == "open")["transaction_id"].to_list() == ["1005"]
    done = tx.filter(pl.col("state") == "complete")
    assert done.height == 12 and (done["energy_wh"] > 0).all()
    assert fleet.meter_values.filter(pl.col("value").is_null()).height == 0


def test_the_transaction_open_at_each_sample_keeps_the_samples_in_message_order(fleet):
    """covering_transaction keeps its rows in message order (the analysis marks them sorted, so later sorts by
    idx are skipped: a wrong mark would give wrong findings): samples of nine chargers, shuffled first."""
    from ocpptool.analysis.derived import covering_transaction

    samples = fleet.meter_values.filter(pl.col("connector_id").is_not_null())
    assert samples.height > 100 and samples["charge_point_id"].n_unique() >= 5
    shuffled = samples.sample(fraction=1.0, shuffle=True, seed=3).lazy()
    covered = covering_transaction(shuffled, fleet.transactions.lazy()).collect()
    assert covered["idx"].to_list() == sorted(samples["idx"].to_list())
    assert covered["open_tid"].drop_nulls().len() > 0  # samples inside transactions found theirs


def test_a_log_that_does_not_name_the_charge_point_still_pairs_start_and_stop():
    """Without a charge point id (many logs), rows are keyed by connection and the id stays null in the output."""
    s = Script().start(0, "CP", 7, meter=10).meter(60, "CP", 70, tid=7).stop(120, "CP", 7, meter=100)
    tables = s.tables()
    tables.messages = tables.messages.with_columns(charge_point_id=pl.lit(None, pl.String))
    a = run(tables, Options())
    assert a.transactions.select("charge_point_id", "state", "energy_wh").rows() == [(None, "complete", 90.0)]
    assert a.meter_values["connector_id"].to_list() == [1]
    assert a.findings.filter(pl.col("family").is_in(["transactions", "meter"])).is_empty()


TRICKY_METER_VALUES = [
    # the common layout, twice (one template), and with another transaction and connector
    '{"connectorId":1,"transactionId":7,"meterValue":[{"timestamp":"2024-05-01T10:00:00Z","sampledValue":'
    '[{"value":"100","measurand":"Energy.Active.Import.Register","unit":"Wh"},{"value":"7.4","unit":"kW",'
    '"measurand":"Power.Active.Import"}]}]}',
    '{"connectorId":1,"transactionId":7,"meterValue":[{"timestamp":"2024-05-01T10:01:00Z","sampledValue":'
    '[{"value":"200","measurand":"Energy.Active.Import.Register","unit":"Wh"},{"value":"7.5","unit":"kW",'
    '"measurand":"Power.Active.Import"}]}]}',
    '{"connectorId":2,"transactionId":"abc","meterValue":[{"timestamp":"2024-05-01T10:01:00Z","sampledValue":'
    '[{"value":" 300 ","measurand":"Energy.Active.Import.Register","unit":"Wh"}]}]}',
    # whitespace, key order, several meterValues, defaults, numbers, a timestamp that is not a string
    '{ "meterValue" : [ { "sampledValue" : [ { "unit" : "kWh" , "value" : "1.25" } ] , "timestamp" : '
    '"2024-05-01T10:02:00+02:00" }, {"timestamp": 0, "sampledValue": [{"value": 12.50}]} ], "connectorId" : 3 }',
    '{"evseId":1,"meterValue":[{"timestamp":"2024-05-01T10:03:00Z","sampledValue":[{"value":232.5,'
    '"unitOfMeasure":{"unit":"kW","multiplier":1}},{"value":"x","context":"Sample.Clock"}]}]}',
    # escapes, structural characters and marker characters inside strings, an escaped marker
    '{"connectorId":1,"meterValue":[{"timestamp":"2024-05-01T10:04:00Z","sampledValue":[{"value":"1\\"2"},'
    '{"value":"3,4"},{"value":"5}"},{"value":"\\u00016"},{"value":"[7]"},{"value":"\\u00029"}]}]}',
    # empty and missing arrays, a wrong shape (dropped by the guard), duplicate keys
    '{"connectorId":1,"meterValue":[]}',
    '{"connectorId":1,"meterValue":[{"timestamp":"2024-05-01T10:05:00Z","sampledValue":[]}]}',
    '{"connectorId":1,"meterValue":[{"timestamp":"2024-05-01T10:05:00Z","sampledValue":{"value":"1"}}]}',
    '{"connectorId":1,"meterValue":[{"timestamp":"2024-05-01T10:06:00Z","sampledValue":[{"value":"1",'
    '"value":"2"}]}]}',
    '{"connectorId":1}',
]


def test_meter_values_read_through_templates_equal_decoding_every_payload_whole():
    """Reading MeterValues through shared templates gives exactly the samples a JSON decode of each payload gives."""
    from ocpptool.analysis.derived import _meter_values_samples, _whole_meter_values_samples

    payloads = TRICKY_METER_VALUES * 3
    rows = pl.LazyFrame(
        {
            "_row": pl.Series(range(len(payloads)), dtype=pl.UInt32),
            "idx": range(len(payloads)),
            "charge_point_id": ["CP"] * len(payloads),
            "conn": ["c"] * len(payloads),
            "ts": [at(i) for i in range(len(payloads))],
            "source_action": ["MeterValues"] * len(payloads),
            "payload": payloads,
        }
    )
    fast = _meter_values_samples(rows).collect()
    slow = _whole_meter_values_samples(rows).collect()
    assert fast.height > 30
    assert_frame_equal(fast, slow)
