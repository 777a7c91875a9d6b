"""`ocpptool analyze` end to end: report, JSON, exit codes, export, explain; captures and logs agree."""

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from ocpptool.analysis import run
from ocpptool.pipeline import load

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "captures" / "fleet-demo.jsonl"
CAPTURES = REPO / "tests" / "captures"


def cli(*args):
    return subprocess.run([sys.executable, "-m", "ocpptool", *args], capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def demo_json():
    r = cli("analyze", str(DEMO), "--format", "json", "-q")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_json_report_has_summary_findings_and_transactions(demo_json):
    """--format json prints one object with the summary, every finding and every transaction."""
    assert demo_json["summary"]["messages"] == 837
    assert demo_json["summary"]["charge_points"] == 9
    for f in demo_json["findings"]:
        assert {"code", "severity", "charge_point_id", "transaction_id", "ts", "summary", "evidence"} <= f.keys()
    for t in demo_json["transactions"]:
        assert {"charge_point_id", "transaction_id", "connector_id", "id_tag", "start_ts", "stop_ts",
                "meter_start_wh", "meter_stop_wh", "energy_wh", "state"} <= t.keys()
        assert isinstance(t["transaction_id"], str)
        if t["state"] == "complete":
            assert t["energy_wh"] == t["meter_stop_wh"] - t["meter_start_wh"]
        if t["state"] == "open":
            assert t["energy_wh"] is None


def test_the_sample_fleet_anomalies_are_all_found(demo_json):
    """Each fault recorded in the sample is reported on the right charger, and clean chargers stay clean."""
    found = {(f["code"], f["charge_point_id"]) for f in demo_json["findings"] if f["severity"] != "info"}
    assert ("clock-drift", "CP-002") in found
    assert ("meter-regression", "CP-003") in found
    assert ("unanswered-call", "CP-004") in found
    assert ("call-error", "CP-005") in found
    assert ("orphaned-transaction", "CP-006") in found
    assert not {cp for _, cp in found} & {"CP-001", "CP-007", "CS-101", "CS-102"}


def test_evidence_points_at_the_frames_that_prove_a_finding(demo_json):
    """A finding's evidence names the message ids and the file line of its frames."""
    f = next(f for f in demo_json["findings"] if f["code"] == "unanswered-call")
    ev = f["evidence"][0]
    assert ev["action"] == "MeterValues" and ev["message_type"] == "CALL"
    line = int(ev["at"].rsplit(":", 1)[1])
    assert ev["message_id"] in DEMO.read_text().splitlines()[line - 1]


def test_text_report_groups_findings_by_code_with_examples():
    """The terminal report lists each code with its severity, title and first examples, then transactions."""
    r = cli("analyze", str(DEMO), "-q")
    assert r.returncode == 0, r.stderr
    assert "ERROR   meter-regression" in r.stdout
    assert "CP-003 tx 1002" in r.stdout
    assert "transactions (13)" in r.stdout


def test_fail_on_gives_a_non_zero_exit_for_ci():
    """--fail-on error exits 3 when an error is found; without findings at that level it exits 0."""
    assert cli("analyze", str(DEMO), "-q", "--fail-on", "error").returncode == 3
    clean = cli("analyze", str(DEMO), "-q", "--cp", "CP-001", "--fail-on", "warning")
    assert clean.returncode == 0, clean.stdout


def test_export_writes_every_table_as_parquet(tmp_path):
    """--export DIR writes messages, findings, transactions, meter values and the other tables."""
    r = cli("analyze", str(DEMO), "-q", "--export", str(tmp_path))
    assert r.returncode == 0, r.stderr
    names = {p.stem for p in tmp_path.glob("*.parquet")}
    assert {"messages", "weirds", "connections", "transactions", "meter_values", "statuses", "findings"} <= names
    assert pl.read_parquet(tmp_path / "messages.parquet").height == 837
    assert pl.read_parquet(tmp_path / "meter_values.parquet")["value"].null_count() == 0


def test_explain_lists_and_explains_codes():
    """`ocpptool explain` lists every code; `explain CODE` explains one; a typo gets a suggestion."""
    listing = cli("explain")
    for code in ("clock-drift", "orphaned-transaction", "meter-regression", "unanswered-call", "heartbeat-gap",
                 "schema-violation", "seqno-gap", "boot-loop", "reconnect-storm", "energy-implausible"):
        assert code in listing.stdout
    one = cli("explain", "meter-regression")
    assert one.returncode == 0 and "meter-regression (error, meter)" in one.stdout and len(one.stdout) > 200
    typo = cli("explain", "meter-regresion")
    assert typo.returncode == 2 and "did you mean meter-regression" in typo.stderr


def test_thresholds_are_options():
    """--set changes a threshold: a 20-minute drift allowance hides the 15-minute clock drift."""
    r = cli("analyze", str(DEMO), "-q", "--format", "json", "--only", "clock-drift", "--set", "clock_drift_s=1200")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["findings"] == []
    bad = cli("analyze", str(DEMO), "-q", "--set", "no_such=1")
    assert bad.returncode == 2 and "no_such" in bad.stderr


def _key(analysis):
    return sorted(
        (r["code"], r["severity"], r["charge_point_id"], r["transaction_id"])
        for r in analysis.findings.iter_rows(named=True)
    )


@pytest.mark.parametrize("name", ["ws_plain", "ws_deflate", "ws_reset"])
def test_a_capture_and_the_csms_log_of_the_same_traffic_give_the_same_findings(name):
    """The same traffic gives the same findings whether it comes from a pcap or from the CSMS's log."""
    from_pcap = run(load([str(CAPTURES / f"{name}.pcapng")], progress=False)[0])
    from_log = run(load([str(CAPTURES / f"{name}.jsonl")], progress=False)[0])
    assert _key(from_pcap) == _key(from_log)
    assert from_pcap.transactions.select("transaction_id", "energy_wh", "state").sort("transaction_id").equals(
        from_log.transactions.select("transaction_id", "energy_wh", "state").sort("transaction_id"))


def test_a_connection_reset_mid_transaction_is_an_orphaned_transaction_in_the_capture():
    """A charger whose TCP connection is aborted mid-transaction leaves an orphaned transaction."""
    a = run(load([str(CAPTURES / "ws_reset.pcapng")], progress=False)[0])
    assert "orphaned-transaction" in set(a.findings.filter(pl.col("severity") == "error")["code"])


def test_json_times_are_utc_iso_with_milliseconds_as_the_tables_hold_them():
    """Every time in the JSON report is the table's time written as ISO 8601 UTC, cut (not rounded) to
    milliseconds: the findings', their evidence's and the transactions' alike."""
    from ocpptool.report import _iso, to_json

    analysis = run(load([str(DEMO)], progress=False)[0])
    doc = json.loads(to_json(analysis))
    sub_ms = analysis.tables.messages.filter(pl.col("ts").dt.microsecond() % 1000 != 0)
    assert sub_ms.height > 100  # (the capture's times have microseconds: the cut is tested)
    assert [f["ts"] for f in doc["findings"]] == [_iso(t) for t in analysis.findings["ts"]]
    for column in ("start_ts", "stop_ts"):
        assert [t[column] for t in doc["transactions"]] == [_iso(t) for t in analysis.transactions[column]]
    by_idx = dict(analysis.tables.messages.select("idx", "ts").iter_rows())
    shown = [(e["idx"], e["ts"]) for f in doc["findings"] for e in f["evidence"]]
    assert len(shown) > 20 and all(ts == _iso(by_idx[i]) for i, ts in shown)
    assert all(ts is None or ts.endswith("Z") and len(ts) == 24 for _, ts in shown)
