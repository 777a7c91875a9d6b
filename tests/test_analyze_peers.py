"""Faults injected into real OCPP peers on loopback are found by `analyze`; clean traffic stays clean."""

import polars as pl

from ocpptool.analysis import run
from ocpptool.pipeline import load
from ocpptool.testing.peers import ChargerConfig, CsmsCall, Faults, Session, record_fleet


def analyse(tmp_path, chargers, **kw):
    log = tmp_path / "csms.jsonl"
    record_fleet(chargers, log, **kw)
    return run(load([str(log)], progress=False)[0])


def serious(a):
    return a.findings.filter(pl.col("severity") != "info")


def test_clean_multi_charger_traffic_gives_no_warning_or_error(tmp_path):
    """Overlapping transactions, bare and kWh meters, 2.0.1 and CSMS-initiated calls raise nothing."""
    chargers = [
        ChargerConfig("CLEAN-1", connectors=2, sessions=(Session(1, samples=6), Session(2, start_after=0.1, samples=5)),
                      csms_calls=(CsmsCall("ChangeConfiguration"), CsmsCall("GetConfiguration", after=0.3))),
        ChargerConfig("CLEAN-2", meter_style="bare", sessions=(Session(samples=5),)),
        ChargerConfig("CLEAN-3", meter_style="kwh", sessions=(Session(samples=5, power_kw=11),)),
        ChargerConfig("CLEAN-4", version="2.0.1", meter_style="kwh", sessions=(Session(samples=5),),
                      csms_calls=(CsmsCall("GetVariables"),)),
    ]
    a = analyse(tmp_path, chargers)
    assert a.transactions.height == 5
    assert serious(a).height == 0, serious(a).select("code", "charge_point_id", "summary").rows()


def test_a_skipped_seqno_is_a_seqno_gap(tmp_path):
    """A 2.0.1 charger that skips a TransactionEvent seqNo gets a seqno-gap finding on that transaction."""
    a = analyse(tmp_path, [ChargerConfig("SEQ-1", version="2.0.1", sessions=(Session(samples=6),),
                                         faults=Faults(seqno_skip_at=3))])
    gaps = a.findings.filter(pl.col("code") == "seqno-gap")
    assert gaps.height == 1
    assert gaps["transaction_id"][0] == a.transactions["transaction_id"][0]


def test_a_charger_rebooting_in_a_loop_is_a_boot_loop(tmp_path):
    """Five boots in a few seconds, each on a new connection, are a boot loop."""
    a = analyse(tmp_path, [ChargerConfig("LOOP-1", sessions=(), heartbeats=1, faults=Faults(reboots=4)),
                           ChargerConfig("CALM-1", sessions=(), heartbeats=1)])
    codes = set(serious(a).filter(pl.col("charge_point_id") == "LOOP-1")["code"])
    assert "boot-loop" in codes
    assert serious(a).filter(pl.col("charge_point_id") == "CALM-1").height == 0


def test_a_silent_but_connected_charger_is_a_heartbeat_gap(tmp_path):
    """A charger that stays connected but says nothing for over 3 heartbeat intervals is reported."""
    a = analyse(tmp_path, [ChargerConfig("QUIET-1", sessions=(), heartbeats=2,
                                         faults=Faults(silent_after_boot_s=3.5)),
                           ChargerConfig("TALK-1", sessions=(), heartbeats=12, heartbeat_interval=0.3)],
                csms_options={"heartbeat_interval_s": 1})
    gaps = a.findings.filter(pl.col("code") == "heartbeat-gap")
    assert gaps["charge_point_id"].to_list() == ["QUIET-1"]
    assert gaps["value"][0] >= 3.0
