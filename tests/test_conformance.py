import json

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from ocpptool.sources import read_inputs
from ocpptool.tables.build import build_tables
from ocpptool.tables.conformance import consumer_view
from ocpptool.tables.writers import write_messages

from .conftest import FIXTURES, need

NAMES = sorted(p.name for p in FIXTURES.iterdir()) if FIXTURES.exists() else ["(fixtures absent)"]
SAME = ["ts", "charge_point_id", "direction", "ocpp_version", "message_type", "message_id", "action", "payload",
        "error_code", "error_description", "error_details", "call_index", "response_index", "latency_ms", "conn"]


@pytest.mark.parametrize("name", NAMES)
def test_open_ocpp_trace_fixture_consumer_view_matches_exactly(name):
    """For each conformance fixture, the consumer view ocpptool derives equals expected.json exactly."""
    d = need(FIXTURES / name)
    expected = json.loads((d / "expected.json").read_text())
    expected.pop("schemaVersion", None)
    view = consumer_view(build_tables(read_inputs([str(d / "trace.jsonl")])).messages)
    assert view == expected


def test_there_are_sixteen_fixtures():
    """The conformance corpus has all 16 fixtures (none silently missing)."""
    need(FIXTURES)
    assert len(NAMES) == 16


@pytest.mark.parametrize("name", NAMES)
def test_writing_a_trace_and_reading_it_back_gives_the_same_messages(name, tmp_path):
    """decode -> Open OCPP Trace -> decode gives the same messages table."""
    d = need(FIXTURES / name)
    first = build_tables(read_inputs([str(d / "trace.jsonl")])).messages
    out = tmp_path / "again.trace.jsonl"
    write_messages(first, str(out), "trace")
    second = build_tables(read_inputs([str(out)])).messages
    assert_frame_equal(first.select(SAME), second.select(SAME))


def test_trace_round_trip_keeps_errors_sends_and_odd_strings(tmp_path):
    """CALLERRORs, 2.1 SEND and CALLRESULTERROR frames and ids with quotes survive a trace round trip."""
    lines = [
        {"timestamp": "2024-01-01T00:00:00Z", "charge_point_id": "CP \"1\"", "direction": "cp->csms",
         "message": '[2,"a\\"b","DataTransfer",{"vendorId":"x\\u00e9"}]'},
        {"timestamp": "2024-01-01T00:00:01Z", "charge_point_id": "CP \"1\"", "direction": "csms->cp",
         "message": '[4,"a\\"b","NotImplemented","line1\\nline2",{"k":[1,2]}]'},
        {"timestamp": "2024-01-01T00:00:02Z", "charge_point_id": "CP \"1\"", "direction": "cp->csms",
         "message": '[6,"s","NotifyPeriodicEventStream",{"id":1}]'},
        {"timestamp": "2024-01-01T00:00:03Z", "charge_point_id": "CP \"1\"", "direction": "csms->cp",
         "message": '[2,"c","GetTariffs",{"evseId":1}]'},
        {"timestamp": "2024-01-01T00:00:04Z", "charge_point_id": "CP \"1\"", "direction": "cp->csms",
         "message": '[5,"c","InternalError","boom",{}]'},
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    first = build_tables(read_inputs([str(src)])).messages
    assert first["message_type"].to_list() == ["CALL", "CALLERROR", "SEND", "CALL", "CALLRESULTERROR"]
    out = tmp_path / "out.trace.jsonl"
    write_messages(first, str(out), "trace")
    second = build_tables(read_inputs([str(out)])).messages
    assert_frame_equal(first.select(SAME[1:]), second.select(SAME[1:]))
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert records[1]["error"] == {"code": "NotImplemented", "description": "line1\nline2", "details": {"k": [1, 2]}}
    assert all(r["schemaVersion"] == "1.1" for r in records)
    assert pl.Series([r["messageType"] for r in records]).is_in(["CALL", "CALLRESULT", "CALLERROR"]).all()
