"""The replay plan, its rewriting rules, schema defaults and the divergence report (pure, no sockets)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from datetime import timedelta

import jsonschema
import pytest

from ocpptool.errors import UserError
from ocpptool.pipeline import filter_messages, load
from ocpptool.replay.command import check_target, parse_listen, parse_speed
from ocpptool.replay.defaults import default_response, response_schema
from ocpptool.replay.divergence import Live, compare_calls, compare_exchange
from ocpptool.replay.plan import (
    Exchange,
    TransactionIds,
    best_match,
    build_plan,
    map_cp_id,
    map_id_tags,
    parse_map,
    shift_timestamps,
    shift_timestamps_text,
    status_values,
)


def _line(ts, cp, direction, frame, sub="ocpp1.6"):
    return json.dumps({"timestamp": ts, "charge_point_id": cp, "direction": direction, "subprotocol": sub,
                       "message": json.dumps(frame)})  # fmt: skip


@pytest.fixture
def recording(tmp_path):
    t = "2024-05-01T08:00:0{}.000Z"
    lines = [
        _line(t.format(0), "CP-1", "cp->csms", [2, "a", "BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"}]),
        _line(t.format(0)[:-4] + "100Z", "CP-1", "csms->cp", [3, "a", {"status": "Accepted", "currentTime": "2024-05-01T08:00:00Z", "interval": 300}]),
        _line(t.format(1), "CP-1", "cp->csms", [2, "b", "StartTransaction", {"connectorId": 1, "idTag": "T1", "meterStart": 0, "timestamp": "2024-05-01T08:00:01.000Z"}]),
        _line(t.format(1)[:-4] + "050Z", "CP-1", "csms->cp", [3, "b", {"transactionId": 77, "idTagInfo": {"status": "Accepted"}}]),
        _line(t.format(2), "CP-1", "csms->cp", [2, "c", "ChangeConfiguration", {"key": "K", "value": "1"}]),
        _line(t.format(2)[:-4] + "010Z", "CP-1", "cp->csms", [3, "c", {"status": "Rejected"}]),
        _line(t.format(3), "CP-1", "cp->csms", [2, "d", "StopTransaction", {"transactionId": 77, "meterStop": 500, "timestamp": "2024-05-01T08:00:03.000Z"}]),
        _line(t.format(4), "CS-2", "cp->csms", [2, "e", "Heartbeat", {}], "ocpp2.0.1"),
        _line(t.format(4)[:-4] + "020Z", "CS-2", "csms->cp", [4, "e", "InternalError", "boom", {}], "ocpp2.0.1"),
    ]  # fmt: skip
    path = tmp_path / "rec.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return load([str(path)], progress=False)[0].messages


def test_the_plan_has_one_script_per_charge_point_with_calls_answers_and_offsets(recording):
    """Each charge point gets its own calls in order, with offsets from the first frame and the recorded answers."""
    plan = build_plan(recording)
    by = {s.recorded_id: s for s in plan.scripts}
    assert list(by) == ["CP-1", "CS-2"]
    cp1 = by["CP-1"]
    assert [e.action for e in cp1.charger_calls] == ["BootNotification", "StartTransaction", "StopTransaction"]
    assert [e.offset for e in cp1.charger_calls] == [0.0, 1.0, 3.0]
    assert cp1.charger_calls[1].answer_payload == {"transactionId": 77, "idTagInfo": {"status": "Accepted"}}
    assert cp1.charger_calls[2].answer is None  # never answered in the recording
    assert [(e.action, e.answer_payload) for e in cp1.csms_calls] == [("ChangeConfiguration", {"status": "Rejected"})]
    cs2 = by["CS-2"]
    assert cs2.subprotocol == "ocpp2.0.1" and cs2.charger_calls[0].error_code == "InternalError"
    assert cs2.first_offset == 4.0


def test_filters_and_cp_mapping_pick_and_rename_what_is_replayed(recording):
    """--cp keeps only that charger; --cp-map and --cp-prefix rename it on the wire, not in the plan's record."""
    plan = build_plan(filter_messages(recording, cps=["CP-1"]), cp_map={"CP-1": "LAB-1"}, cp_prefix="t-")
    assert [(s.recorded_id, s.target_id) for s in plan.scripts] == [("CP-1", "t-LAB-1")]
    assert map_cp_id("X", {}, "p-") == "p-X"


def test_transaction_ids_issued_live_replace_the_recorded_ones_in_later_1_6_messages():
    """The id a live CSMS issues in StartTransaction.conf is put into StopTransaction and MeterValues."""
    tx = TransactionIds()
    tx.learn("StartTransaction", {"transactionId": 77}, {"transactionId": 5001})
    assert tx.rewrite("StopTransaction", {"transactionId": 77, "meterStop": 5}) == {"transactionId": 5001, "meterStop": 5}
    assert tx.rewrite("MeterValues", {"transactionId": 77})["transactionId"] == 5001
    assert tx.rewrite("MeterValues", {"transactionId": 78})["transactionId"] == 78  # another session: untouched
    event = {"transactionInfo": {"transactionId": "abc"}}
    assert tx.rewrite("TransactionEvent", event) == event  # 2.0.1: the charger chooses its ids


def test_timestamps_shift_by_the_replay_offset_and_keep_their_precision():
    """Clock fields anywhere in a payload move by the offset; other strings and the written precision stay."""
    payload = {"timestamp": "2024-05-01T08:00:01Z", "meterValue": [{"timestamp": "2024-05-01T08:00:02.123Z",
               "sampledValue": [{"value": "2024-05-01T08:00:00Z"}]}], "idTag": "2024-05-01T08:00:00Z"}  # fmt: skip
    out = shift_timestamps(payload, timedelta(days=1, hours=2))
    assert out["timestamp"] == "2024-05-02T10:00:01Z"
    assert out["meterValue"][0]["timestamp"] == "2024-05-02T10:00:02.123Z"
    assert out["meterValue"][0]["sampledValue"][0]["value"] == "2024-05-01T08:00:00Z"
    assert out["idTag"] == payload["idTag"]
    assert shift_timestamps({"timestamp": "not a time"}, timedelta(1)) == {"timestamp": "not a time"}


def test_shifting_the_serialised_frame_gives_the_same_result_as_shifting_the_payload():
    """The hot path shifts clocks in the JSON text; it must agree with the payload walk, field for field."""
    import orjson

    payload = {"timestamp": "2024-05-01T08:00:01+02:00", "meterValue": [{"timestamp": "2024-05-01T08:00:02.123456Z",
               "sampledValue": [{"value": "12"}]}], "currentTime": "garbage-but-long", "note": "timestamp"}  # fmt: skip
    delta = timedelta(hours=-3, microseconds=7)
    text = shift_timestamps_text(orjson.dumps(payload).decode(), delta)
    assert orjson.loads(text) == shift_timestamps(payload, delta)


def test_id_tags_are_mapped_in_1_6_and_2_0_1_payloads():
    """--id-tag-map rewrites 1.6 idTag/parentIdTag and 2.0.1 idToken.idToken; unlisted tags stay."""
    m = {"OLD": "NEW"}
    assert map_id_tags({"idTag": "OLD", "x": {"parentIdTag": "OLD"}}, m) == {"idTag": "NEW", "x": {"parentIdTag": "NEW"}}
    assert map_id_tags({"idToken": {"idToken": "OLD", "type": "ISO14443"}}, m)["idToken"]["idToken"] == "NEW"
    assert map_id_tags({"idTag": "OTHER"}, m) == {"idTag": "OTHER"}
    with pytest.raises(ValueError, match="--id-tag-map"):
        parse_map(["nothing"], "--id-tag-map")


def test_the_best_recorded_answer_matches_action_and_payload_and_walks_through_repeats():
    """A live call gets the unused recorded exchange with the same action and the most alike payload."""
    a = Exchange(0, "GetConfiguration", {"key": ["A"]}, "1", "result", {"configurationKey": []})
    b = Exchange(1, "GetConfiguration", {"key": ["B"]}, "2", "result", {"unknownKey": ["B"]})
    c = Exchange(2, "Reset", {"type": "Soft"}, "3", "result", {"status": "Accepted"})
    used: set[int] = set()
    assert best_match([a, b, c], used, "GetConfiguration", {"key": ["B"]}) is b
    used.add(id(b))
    assert best_match([a, b, c], used, "GetConfiguration", {"key": ["B"]}) is a  # unused first
    assert best_match([a, b, c], used, "UnlockConnector", {}) is None


@pytest.mark.parametrize(("version", "action"), [
    ("1.6", "RemoteStartTransaction"), ("1.6", "GetConfiguration"), ("1.6", "GetCompositeSchedule"),
    ("1.6", "StartTransaction"), ("2.0.1", "RequestStartTransaction"), ("2.0.1", "GetVariables"),
    ("2.0.1", "GetBaseReport"), ("2.0.1", "TransactionEvent"), ("2.1", "SetDERControl"),
])  # fmt: skip
def test_default_answers_are_valid_against_the_official_schemas(version, action):
    """An answer the recording does not cover is still valid against the ocpp package's schema."""
    body = default_response(version, action)
    jsonschema.validate(body, response_schema(version, action))


def test_an_action_no_schema_knows_has_no_default():
    """Unknown actions get no default (the shell answers NotImplemented instead)."""
    assert default_response("1.6", "MadeUpAction") is None


def test_divergences_name_other_statuses_errors_missing_answers_and_slowness():
    """Each kind of difference a live peer can make is reported once, with recorded and live values."""
    rec = Exchange(0, "Authorize", {"idTag": "T"}, "1", "result", {"idTagInfo": {"status": "Accepted"}}, latency_ms=20)
    assert compare_exchange("CP", rec, Live("result", {"idTagInfo": {"status": "Accepted"}}, latency_ms=25)) == []
    [d] = compare_exchange("CP", rec, Live("result", {"idTagInfo": {"status": "Blocked"}}, latency_ms=25))
    assert (d.kind, d.recorded, d.live) == ("status", "Accepted", "Blocked")
    [d] = compare_exchange("CP", rec, Live("error", None, "InternalError", 5))
    assert (d.kind, d.live) == ("error", "CALLERROR InternalError")
    [d] = compare_exchange("CP", rec, Live(None))
    assert d.kind == "missing-response"
    [d] = compare_exchange("CP", rec, Live("result", {"idTagInfo": {"status": "Accepted"}}, latency_ms=2500))
    assert d.kind == "slow"
    assert status_values({"status": "A", "x": [{"status": "B"}]}) == ["A", "B"]


def test_the_peers_own_calls_are_compared_as_sequences():
    """A call the peer made in the recording but not live is missing; one it made only live is extra."""
    divs = compare_calls("CP", ["ChangeConfiguration", "Reset", "TriggerMessage"], ["ChangeConfiguration", "TriggerMessage", "DataTransfer"])
    assert sorted((d.kind, d.action) for d in divs) == [("extra-call", "DataTransfer"), ("missing-call", "Reset")]


def test_only_ws_and_wss_targets_and_sane_speeds_are_accepted():
    """Replay refuses anything but ws:// and wss:// with a host, and speeds that are not positive or max."""
    assert check_target("wss://csms.example:443/ocpp") == "wss://csms.example:443/ocpp"
    for bad in ("http://x/ocpp", "ftp://x", "ws:///ocpp", "x:9000", "ws://h:notaport/"):
        with pytest.raises(UserError):
            check_target(bad)
    assert parse_speed("max") == math.inf and parse_speed("10") == 10.0
    for bad in ("0", "-1", "fast", "inf"):
        with pytest.raises(UserError):
            parse_speed(bad)
    assert parse_listen(":9000") == ("0.0.0.0", 9000)
    with pytest.raises(UserError):
        parse_listen("9000")


def test_the_plan_imports_no_sockets_and_no_ui():
    """plan, divergence and defaults stay pure: importing them loads neither websockets nor textual."""
    code = ("import sys, ocpptool.replay.plan, ocpptool.replay.divergence, ocpptool.replay.defaults;"
            "print([m for m in ('websockets', 'textual') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


def test_textual_is_imported_only_by_the_live_view():
    """The replay shells and command run without Textual; only ocpptool/ui imports it (the UI only renders)."""
    code = ("import sys, ocpptool.replay.command, ocpptool.replay.as_charger, ocpptool.replay.as_csms, ocpptool.cli;"
            "print('textual' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "ocpptool"
    importers = {p.relative_to(root).parts[0] for p in root.rglob("*.py")
                 if "import textual" in p.read_text() or "from textual" in p.read_text()}
    assert importers == {"ui"}
