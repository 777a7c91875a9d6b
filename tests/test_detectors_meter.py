"""Meter detectors on short scripts of frames and on the fleet-demo capture."""

from __future__ import annotations

import polars as pl
import pytest

from ocpptool.analysis import Options, run

from .test_analysis_derived import Script, fleet_demo, serious
from .test_detectors_transactions import clean_script

METER_CODES = ["meter-regression", "meter-reset", "meter-unit-suspect", "energy-implausible"]


def one(findings: pl.DataFrame) -> dict:
    assert findings.height == 1, findings
    return findings.row(0, named=True)


def charging(values, *, meter: int = 1000, stop: int | None = None, every: float = 60.0, **fields) -> Script:
    """A 1.6 transaction on connector 1 with these register samples, one per ``every`` seconds."""
    s = Script().start(0, "CP", 1, meter=meter)
    for i, v in enumerate(values, start=1):
        s.meter(i * every, "CP", v, tid=1, **fields)
    if stop is not None:
        s.stop((len(values) + 1) * every, "CP", 1, meter=stop)
    return s


# ------------------------------------------------------------------------------------------- regression


def test_a_register_going_down_inside_a_transaction_is_a_regression():
    """A sample lower than the one before, within one transaction, is an error with the drop as value."""
    f = one(charging([1200, 1100, 1300], stop=1400).findings("meter-regression"))
    assert (f["severity"], f["transaction_id"], f["value"], f["connector_id"]) == ("error", "1", -100.0, 1)
    assert f["summary"] == (
        "The energy register of connector 1 went down by 100 Wh (sample 1200 Wh -> sample 1100 Wh)"
        " within transaction 1."
    )


def test_meter_stop_below_meter_start_is_a_regression():
    """StopTransaction's meterStop under meterStart is a regression even without samples."""
    f = one(charging([], meter=5000, stop=4000).findings("meter-regression"))
    assert f["value"] == -1000.0 and "meterStart 5000 Wh -> meterStop 4000 Wh" in f["summary"]


def test_a_drop_within_the_precision_of_a_kwh_reading_is_not_a_regression():
    """meterStart 1234 Wh then "1.2" kWh (100 Wh steps) is rounding, not the register going back."""
    assert charging(["1.2", "1.3"], meter=1234, stop=1301, unit="kWh").findings("meter-regression").is_empty()


def test_registers_of_two_connectors_and_between_transactions_are_not_compared():
    """Readings of connector 2 are lower than connector 1's, and a drop between sessions is not in a transaction."""
    s = charging([1200, 1300], stop=1400).meter(300, "CP", 500, connector=2).meter(400, "CP", 900)
    assert s.findings("meter-regression").is_empty()


def test_registers_of_other_locations_and_phases_on_one_connector_are_separate_series():
    """An Inlet register and per-phase registers far below the Outlet one, interleaved with it on one
    connector: each series only ever rises, so nothing went backwards."""
    s = charging([5000, 5100, 5200], meter=4900, stop=5300)
    for i, t in enumerate((70, 130, 190)):
        s.meter(t, "CP", 100 + i * 10, tid=1, location="Inlet")
        s.meter(t + 1, "CP", 40 + i, tid=1, phase="L1")
        s.meter(t + 2, "CP", 30 + i, tid=1, phase="L2")
    assert s.findings("meter-regression").is_empty() and s.findings("meter-reset").is_empty()
    assert s.findings("meter-unit-suspect").is_empty()


# ------------------------------------------------------------------------------------------- reset


def test_a_drop_to_near_zero_is_a_reset_not_a_regression():
    """A register falling from 500 kWh to 20 Wh is reported as a reset, and only as that."""
    s = charging([500_100, 20, 150], meter=500_000)
    f = one(s.findings("meter-reset"))
    assert (f["severity"], f["value"]) == ("warning", -500_080.0) and "was reset" in f["summary"]
    assert s.findings("meter-regression").is_empty()


def test_a_small_register_going_to_zero_is_not_a_reset():
    """A register that had counted less than 1 kWh dropping to 0 is not called a reset (it is a regression)."""
    s = charging([600, 0], meter=100)
    assert s.findings("meter-reset").is_empty()
    assert one(s.findings("meter-regression"))["value"] == -600.0


# ------------------------------------------------------------------------------------------- unit


def test_kwh_values_labelled_wh_are_unit_suspect():
    """meterStart in Wh followed by samples in kWh without a unit is a 1000x step, reported as a unit mix-up."""
    s = charging(["6330.6", "6330.8"], meter=6_330_421, stop=6_330_900)
    f = s.findings("meter-unit-suspect")
    assert f.height == 2 and (f["severity"] == "warning").all()  # into kWh, and back at meterStop
    assert "as if Wh and kWh were mixed up" in f["summary"][0]
    assert s.findings("meter-reset").is_empty() and s.findings("meter-regression").is_empty()


def test_kwh_values_with_their_unit_are_fine():
    """The same samples labelled kWh are normalised and compare cleanly with meterStart."""
    s = charging(["6330.6", "6330.8"], meter=6_330_421, stop=6_330_900, unit="kWh")
    assert s.findings("meter-unit-suspect").is_empty()


# ------------------------------------------------------------------------------------------- power


def test_energy_rising_faster_than_any_charger_is_implausible():
    """49 kWh in one minute of charger time (about 2.9 MW) is above max_power_w."""
    f = one(charging([1500, 50_500, 50_600]).findings("energy-implausible"))
    assert f["severity"] == "warning" and f["value"] > 2_000_000
    assert "rose by 49000 Wh in 60.0 s" in f["summary"]


def test_the_power_limit_is_an_option():
    """7.2 kW is fine by default and implausible with max_power_w=5000."""
    s = charging([1120, 1240, 1360])
    assert s.findings("energy-implausible").is_empty()
    assert s.findings("energy-implausible", max_power_w=5000.0).height == 3


def test_close_samples_and_coarse_readings_are_not_judged_on_their_own():
    """Readings seconds apart, or steps within a kWh reading's precision, do not imply an impossible power."""
    burst = charging([1010, 1020, 1200], every=0.5)  # 380 Wh in 1.5 s of charger time: too short to judge
    coarse = charging(["1", "2", "3"], meter=1000, every=12.0, unit="kWh")  # whole kWh, 12 s apart
    assert (
        burst.findings("energy-implausible").is_empty() and coarse.findings("energy-implausible").is_empty()
    )


def test_a_unit_mix_up_is_not_also_implausible_power():
    """A 1000x step is reported by meter-unit-suspect only."""
    assert charging(["6330.6", "6330.8"], meter=6_330_421).findings("energy-implausible").is_empty()


# ------------------------------------------------------------------------------------------- clean and end to end


def test_clean_traffic_gives_no_meter_finding():
    """Overlapping sessions, bare 1.6 values, kWh values and 2.0.1 events give no meter finding at all."""
    assert run(clean_script().tables(), Options(), only=METER_CODES).findings.is_empty()


def test_fleet_demo_cp003_register_drop_is_the_one_regression():
    """CP-003's register drop (1.8 kWh injected, about 1.6 kWh between the two samples) is the only regression."""
    f = fleet_demo().findings.filter(pl.col("code") == "meter-regression")
    row = one(f)
    assert (row["charge_point_id"], row["transaction_id"], row["severity"]) == ("CP-003", "1002", "error")
    assert -1900 < row["value"] < -1400


def test_fleet_demo_has_no_other_meter_warning():
    """Apart from CP-003's regression the meters of the sample capture are clean, kWh and bare values included."""
    f = serious(fleet_demo().findings.filter(pl.col("code").is_in(METER_CODES)))
    assert f.select("code", "charge_point_id").rows() == [("meter-regression", "CP-003")]


@pytest.mark.parametrize("connector", [1, 70_000], ids=["packed", "ranked"])
def test_series_ids_group_readings_exactly_as_their_four_columns(connector):
    """The one-number series key (charge point, connector, phase, location) the meter detectors window and join
    on: equal for the readings of one series, different across series, whether the codes fit in 63 bits or
    not (a connector number of 70000 does not: the dense rank is used)."""
    from ocpptool.analysis.meter import SERIES, with_series_ids

    frame = pl.DataFrame({
        "charge_point_id": ["A", "A", "B", "A", "A", "B"],
        "connector_id": [connector, connector, connector, 2, connector, connector],
        "phase": ["", "L1", "", "", "", ""],
        "location": ["Outlet", "Outlet", "Outlet", "Outlet", "Inlet", "Outlet"],
    })  # fmt: skip
    got = with_series_ids(frame)
    assert got["_sid"].dtype == pl.UInt64
    by_columns = frame.select(pl.struct(SERIES).rank("dense"))["charge_point_id"]
    pairs = set(zip(got["_sid"].to_list(), by_columns.to_list(), strict=True))
    assert len(pairs) == 5 == len({a for a, _ in pairs}) == len({b for _, b in pairs})


def test_a_2x_register_going_down_is_a_regression_between_its_samples():
    """2.0.1: the register falls between the Started and the Updated event's samples. The transaction's meter
    start and stop are those events' samples, so the finding compares the two samples, once."""
    s = Script().event(0, "CS", "Started", "t-1", 0, evse=1, wh=5000).event(60, "CS", "Updated", "t-1", 1, evse=1, wh=4000)
    s.event(120, "CS", "Ended", "t-1", 2, evse=1, wh=4100)
    f = one(s.findings("meter-regression"))
    assert (f["transaction_id"], f["value"]) == ("t-1", -1000.0)
    assert "(sample 5000 Wh -> sample 4000 Wh)" in f["summary"], f["summary"]
    assert f["evidence"] == [0, 2], f["evidence"]


def test_a_meter_start_or_stop_is_known_as_a_sample_by_its_idx():
    """A 2.x meterStart/meterStop that is a sample already is found among the sampled idx (a binary search):
    found, between, below and above them, none sampled."""
    from ocpptool.analysis.meter import _among_sorted

    sampled = pl.Series([2, 4, 4, 9])
    got = _among_sorted(pl.Series([0, 2, 3, 4, 9, 10]), sampled)
    assert got.to_list() == [False, True, False, True, True, False]
    assert _among_sorted(pl.Series([1]), pl.Series([], dtype=pl.Int64)).to_list() == [False]
