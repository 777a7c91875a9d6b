"""Every public log in ../shared/public-data decodes end to end with the counts its README gives."""

import polars as pl
import pytest

from ocpptool.pipeline import load

from .conftest import PUBLIC, need

# file, messages, CALLERRORs, unanswered CALLs (README of ../shared/public-data)
CASES = [
    ("filmar-client-sim/ocpp.log", 5519, 790, 5),
    ("everest-steve-sil/everest-ocpp16-session.excerpt.log", 40, 0, 0),
    ("quench-dc-charger/TS0064-emergency-stop.excerpt.log", 10, 0, 0),
    ("quench-dc-charger/sample-ocpp-client.excerpt.log", 18, 0, 0),
    ("kwwhat-synthetic/ocpp_1_6_synthetic_logs_1d.csv", 2992, 0, 0),
    ("ocpp-tester-elecq/server.log", 36, 0, 2),  # the CSMS crashed on both StartTransactions
    ("ocpp-tester-elecq/b_all_tests_AE104ABG00029B_20251106_003622.log", 16, 0, 0),
    ("ocpp-tester-elecq/c_all_tests_AE104ABG00029B_20251106_002526.log", 80, 0, 0),
]


@pytest.mark.parametrize(("name", "count", "errors", "unanswered"), CASES, ids=[c[0].split("/")[-1] for c in CASES])
def test_public_log_decodes_with_the_documented_counts(name, count, errors, unanswered):
    """The decode pipeline finds every documented message, CALLERROR and unanswered CALL, with no weirds."""
    tables, _ = load([str(need(PUBLIC / name))], progress=False)
    m = tables.messages
    assert m.height == count
    assert tables.weirds.height == 0
    assert (m["message_type"] == "CALLERROR").sum() == errors
    assert m.filter((pl.col("message_type") == "CALL") & pl.col("response_index").is_null()).height == unanswered
    assert m["direction"].null_count() == 0  # said by the log or inferred from actions and correlation


def test_filmar_log_is_201_with_non_standard_error_codes():
    """The 2.0.1 simulator log is recognised as 2.0.1 and keeps its non-standard CALLERROR codes."""
    tables, _ = load([str(need(PUBLIC / "filmar-client-sim/ocpp.log"))], progress=False)
    m = tables.messages
    assert m["ocpp_version"].unique().to_list() == ["2.0.1"]
    codes = m.filter(pl.col("message_type") == "CALLERROR").group_by("error_code").len()
    assert dict(codes.iter_rows())["Handler not implemented"] == 735


def test_csv_export_without_direction_gets_directions_from_actions():
    """The CSV export has no direction column; CALL directions come from actions, responses from their CALL."""
    tables, _ = load([str(need(PUBLIC / "kwwhat-synthetic/ocpp_1_6_synthetic_logs_1d.csv"))], progress=False)
    m = tables.messages
    assert m["direction_inferred"].all()
    hb = m.filter(pl.col("action") == "Heartbeat")
    assert set(hb.filter(pl.col("message_type") == "CALL")["direction"]) == {"cp->csms"}
    assert set(hb.filter(pl.col("message_type") == "CALLRESULT")["direction"]) == {"csms->cp"}


def test_logs_without_a_zone_are_placed_only_with_log_tz():
    """The filmar log's local times stay unplaced until --log-tz names the zone."""
    path = str(need(PUBLIC / "filmar-client-sim/ocpp.log"))
    tables, _ = load([path], progress=False)
    assert tables.messages["ts"].null_count() == tables.messages.height
    placed, _ = load([path], log_tz="Europe/Rome", progress=False)
    assert placed.messages["ts"].null_count() == 0
    assert str(placed.messages["ts"][0]).startswith("2025-10-03 11:09:13")
