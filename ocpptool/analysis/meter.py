"""Meter detectors: the energy register going backwards, resetting, changing units, or rising too fast.

All of them read one series per meter: the ``Energy.Active.Import.Register`` readings of a connector (one
series per phase and location), in wire order, with the 1.6 ``meterStart`` / ``meterStop`` of each transaction
inserted where they were sent. Consecutive readings are compared; a step smaller than the precision the
readings were sent with (a kWh value with one decimal cannot show less than 100 Wh) is never a finding.
"""

from __future__ import annotations

import polars as pl

from .derived import ENERGY_REGISTER, covering_transaction, per_charge_point
from .registry import AnalysisContext, detector, text_code
from .transactions import _s, _seconds

MIN_POWER_WINDOW_S = 10.0  # power is judged over at least this much charger time (timestamps jitter)
MIN_UNIT_WH = 100.0  # both readings at least this large before a ~1000x ratio reads as a unit mix-up
MIN_RESET_FROM_WH = 1000.0  # a "reset" needs a register that had counted something

SERIES = ["charge_point_id", "connector_id", "phase", "location"]


def with_series_ids(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` (register readings) with ``_sid``: one UInt64 per series (:data:`SERIES`), so that windows and
    as-of joins key on one number instead of four columns, three of them text. The categorical codes of the
    texts and the connector packed into 63 bits when they fit (any real fleet's do), else the series' dense
    rank (exact, slower). :func:`pairs` and :func:`energy_implausible` key on it."""
    parts = {"_c": (text_code("charge_point_id"), 23), "_n": (pl.col("connector_id"), 16),
             "_p": (text_code("phase"), 12), "_l": (text_code("location"), 12)}
    codes = frame.select(**{k: e.cast(pl.Int64) for k, (e, _) in parts.items()})
    fits = codes.select(pl.all_horizontal(
        (pl.col(k).min() >= 0) & (pl.col(k).max() < (1 << bits)) for k, (_, bits) in parts.items()
    )).item()  # fmt: skip
    if fits:
        sid = (((pl.col("_c") * (1 << 16) + pl.col("_n")) * (1 << 12) + pl.col("_p")) * (1 << 12) + pl.col("_l"))
        return frame.with_columns(_sid=codes.select(sid.cast(pl.UInt64)).to_series())
    return frame.with_columns(_sid=pl.struct(SERIES).rank("dense").cast(pl.UInt64))


def readings(ctx: AnalysisContext) -> pl.LazyFrame:
    """The register series: samples plus 1.6 meterStart/meterStop, in wire order, with ``tx`` (the transaction
    they belong to) and ``_sid`` (the series, :func:`with_series_ids`), materialised: ``idx``, ``ts``,
    ``sample_ts``, ``conn``, ``charge_point_id``, ``connector_id``, ``value``, ``resolution``, ``kind``, ``tx``,
    ``_sid`` (what the detectors read; the series' phase and location are in ``_sid``).

    Built once per analysis by :func:`registry.run` (``ctx.meter_readings``) for the meter detectors.
    """
    if ctx.meter_readings is not None:
        return ctx.meter_readings
    sample_plan = (
        ctx.meter_values.filter(
            (pl.col("measurand") == ENERGY_REGISTER) & pl.col("value").is_not_null()
            & pl.col("connector_id").is_not_null()
        )
        # the sample's place in its message: meter_values is in idx order, so a message's samples are one run
        .with_columns(sub=_place_in_run(pl.col("idx")))
        .with_columns(pl.col("phase").fill_null(""))  # "" groups and joins; null would not join
        .select("idx", "sub", "ts", "sample_ts", "conn", *SERIES, "transaction_id", "value", "resolution",
                kind=pl.lit("sample"))
    )
    tx = ctx.transactions.filter(pl.col("connector_id").is_not_null())
    pseudo_plans = [
        tx.filter(pl.col(f"meter_{end}_wh").is_not_null())
        .select(
            idx=f"{end}_idx", sub=pl.lit(sub, pl.Int64), ts=f"{end}_observed", sample_ts=f"{end}_ts",
            conn="conn", charge_point_id="charge_point_id", connector_id="connector_id",
            phase=pl.lit(""), location=pl.lit("Outlet"), transaction_id="transaction_id",
            value=f"meter_{end}_wh", resolution=pl.lit(1.0), kind=pl.lit(f"meter{end.capitalize()}"),
        )
        .filter(pl.col("idx").is_not_null())
        for end, sub in (("start", -1), ("stop", 1 << 30))
    ]
    samples, *pseudo = pl.collect_all([sample_plan.with_columns(sub=pl.col("sub").cast(pl.Int64)), *pseudo_plans])
    # 2.x: a Started/Ended event's meterStart/meterStop is one of its samples already: left out. The samples
    # are in idx order, so a search finds them (a hash set of the ~400k sampled idx: ~15 ms more)
    sampled = samples["idx"]
    if not sampled.is_sorted():
        sampled = sampled.sort()
    pseudo = [p.filter(~_among_sorted(p["idx"], sampled)) for p in pseudo]
    # The series' ids, then in (idx, sub) order, sorted by one key (two keys: ~80 ms; merge_sorted of the few
    # meterStart/meterStop rows into the samples, which are in that order already: 50 ms, three times this
    # sort): the columns that only make the series (phase, location) are gone before the rows are moved.
    order = pl.col("idx") * (1 << 31) + pl.col("sub") + 1  # (sub: -1 ... 2^30; idx below 2^32; unique per row)
    series = (
        with_series_ids(pl.concat([samples, *pseudo], how="vertical_relaxed"))
        .lazy()
        .drop("phase", "location")
        .sort(order, maintain_order=True)
        .drop("sub")
    )
    return (
        covering_transaction(series, ctx.transactions, sorted_by_idx=True)
        .with_columns(tx=pl.coalesce("transaction_id", "open_tid"))
        .drop("transaction_id", "open_tid")
        .collect()
        .lazy()
    )


def _among_sorted(values: pl.Series, sorted_: pl.Series) -> pl.Series:
    """Whether each of ``values`` is in ``sorted_`` (ascending, no null), by binary search."""
    if sorted_.is_empty() or values.is_empty():
        return pl.Series(values.name, [False] * len(values), pl.Boolean)
    at = sorted_.search_sorted(values, side="left").clip(upper_bound=len(sorted_) - 1)
    return (sorted_.gather(at) == values).fill_null(False)


def _place_in_run(key: pl.Expr) -> pl.Expr:
    """0, 1, 2 ... within each run of equal consecutive ``key`` values (a window over runs, without a group-by)."""
    row = pl.int_range(pl.len(), dtype=pl.Int64)
    start = pl.when(key.ne_missing(key.shift(1)) | (row == 0)).then(row).forward_fill()
    return row - start


def pairs(ctx: AnalysisContext) -> pl.LazyFrame:
    """Consecutive readings of one series classified ``unit`` (~1000x apart), ``reset`` or ``drop``: the pairs
    with one of those flags (all that the detectors read; the others are most of the readings).

    Built once per analysis by :func:`registry.run` (``ctx.meter_pairs``) for the three detectors of pairs.
    """
    if ctx.meter_pairs is not None:
        return ctx.meter_pairs
    k = ctx.options.kwh_suspect_ratio
    lo = pl.min_horizontal("value", "p_value")
    ratio = pl.max_horizontal("value", "p_value") / lo
    to_near_zero = (pl.col("p_value") >= MIN_RESET_FROM_WH) & (
        pl.col("value") < ctx.options.meter_reset_ratio * pl.col("p_value")
    )
    # In the ~1000x band, a fall to near zero is a unit mix-up only if it is close to 1000x (same energy, other
    # unit); 73600 Wh -> 100 Wh (736x) is a reset.
    unit = (lo >= MIN_UNIT_WH) & (ratio >= k) & (ratio <= 1e6 / k) & (~to_near_zero | ratio.is_between(900, 1111))
    reset = ~unit & to_near_zero
    tolerance = pl.max_horizontal("resolution", "p_resolution")
    drop = ~unit & ~reset & (pl.col("p_value") - pl.col("value") > tolerance)
    # One window (the previous reading's position in its series); the two values the flags need gathered from
    # it, the previous reading's other columns only for the few flagged pairs (each more window: ~16 ms).
    rows = readings(ctx).with_row_index("_pos")
    before = rows.select(_p="_pos", p_idx="idx", p_tx="tx", p_sample_ts="sample_ts", p_kind="kind")
    return (
        rows.with_columns(_p=pl.col("_pos").shift(1).over("_sid"))  # (with_series_ids: one number per series)
        # (gathered before any filter: positions are the readings'; a null position gathers a null)
        .with_columns(p_value=pl.col("value").gather("_p"), p_resolution=pl.col("resolution").gather("_p"))
        .filter(pl.col("_p").is_not_null())
        .with_columns(unit=unit, reset=reset, drop=drop)
        .filter(pl.col("unit") | pl.col("reset") | pl.col("drop"))
        .join(before, on="_p", how="left", maintain_order="left")
        .with_columns(delta=pl.col("value") - pl.col("p_value"))
        .drop("_pos", "_p")
    )


def _where(kind: str) -> pl.Expr:
    return pl.when(pl.col(kind) == "sample").then(pl.lit("sample")).otherwise(pl.col(kind))


def _common(summary: pl.Expr) -> dict[str, pl.Expr]:
    return {
        "transaction_id": pl.col("tx"),
        "evidence": pl.concat_list("p_idx", "idx").list.unique(maintain_order=True),
        "summary": summary,
        "value": pl.col("delta"),
    }


def _step(word: str) -> pl.Expr:
    return pl.concat_str(
        pl.lit("The energy register of connector "), _s(pl.col("connector_id").cast(pl.Float64)),
        pl.lit(f" {word} "), _s(pl.col("delta").abs()), pl.lit(" Wh ("), _where("p_kind"), pl.lit(" "),
        _s(pl.col("p_value")), pl.lit(" Wh -> "), _where("kind"), pl.lit(" "), _s(pl.col("value")), pl.lit(" Wh)"),
    )


@detector(
    "meter-regression", "error", "meter",
    title="Energy register went backwards during a transaction",
    explanation="""
    The energy register of a connector (Energy.Active.Import.Register, which only ever counts up) showed a
    lower value than before within one transaction, or meterStop was below meterStart. Billing takes the
    difference of two readings, so the session is under-billed, or billed negative, or the CSMS rejects it.
    Typical causes: a faulty or replaced meter, a firmware that mixes readings of two meters (two connectors,
    or Outlet and Inlet), values rounded differently in different messages, or a charger restoring an old
    register after a reboot. Check the meter's own display and the charger's firmware release notes; the
    session's energy needs a manual correction.
    """,
)
@per_charge_point
def meter_regression(ctx: AnalysisContext) -> pl.LazyFrame:
    return (
        pairs(ctx)
        .filter(pl.col("drop") & pl.col("tx").is_not_null() & (pl.col("tx") == pl.col("p_tx")))
        .select(
            "charge_point_id", "conn", "connector_id", "ts",
            **_common(pl.concat_str(_step("went down by"), pl.lit(" within transaction "), pl.col("tx"),
                                    pl.lit("."))),
        )
    )


@detector(
    "meter-reset", "warning", "meter",
    title="Energy register reset to near zero",
    explanation="""
    The energy register of a connector dropped to almost zero (below a small share of its previous value):
    the meter was reset or replaced rather than going slightly backwards. A session spanning the reset is
    billed wrongly (a negative or huge difference), and later sessions are fine only if the CSMS uses the
    differences within each session. Typical causes: meter replacement, a firmware update or factory reset that
    clears the register, a charger that reports a per-session counter instead of the register. Check the
    maintenance log of the charger; correct the session that spans the reset.
    """,
)
@per_charge_point
def meter_reset(ctx: AnalysisContext) -> pl.LazyFrame:
    return (
        pairs(ctx)
        .filter(pl.col("reset"))
        .select(
            "charge_point_id", "conn", "connector_id", "ts",
            **_common(pl.concat_str(_step("was reset, dropping"), pl.lit("."))),
        )
    )


@detector(
    "meter-unit-suspect", "warning", "meter",
    title="Energy values look like Wh and kWh mixed up",
    explanation="""
    Two consecutive energy register readings of one connector differ by a factor of about 1000 (or meterStart
    / meterStop disagree by that factor with the sampled values): one of them is almost certainly in kWh while
    labelled Wh, or the other way round. A bill computed from such values is off by a factor of 1000. Typical
    causes: a charger sending kWh values without a unit (OCPP's default unit is Wh), a unit field ignored by
    the CSMS, or meterStart/meterStop sent in kWh although OCPP requires Wh. Check the unit the charger sends
    and the one the CSMS assumes.
    """,
)
@per_charge_point
def meter_unit_suspect(ctx: AnalysisContext) -> pl.LazyFrame:
    return (
        pairs(ctx)
        .filter(pl.col("unit"))
        .select(
            "charge_point_id", "conn", "connector_id", "ts",
            **_common(pl.concat_str(
                _step("jumped by"), pl.lit(": a factor of "),
                _s(pl.max_horizontal("value", "p_value") / pl.min_horizontal("value", "p_value")),
                pl.lit(", as if Wh and kWh were mixed up."),
            )),
        )
    )


@detector(
    "energy-implausible", "warning", "meter",
    title="Energy rising faster than any charger can deliver",
    explanation="""
    Between two readings of a connector's energy register, the energy rose faster than the maximum power a
    charger can deliver (max_power_w, judged over at least ten seconds of the charger's own timestamps). The
    session's energy, and so the bill, is too high. Typical causes: a glitch in a single reading, a wrong
    multiplier or unit on one value, a charger clock that jumped (so the time between the readings looks too
    short), or readings of two meters mixed. Check the readings around the finding and the charger's clock.
    """,
)
@per_charge_point
def energy_implausible(ctx: AnalysisContext) -> pl.LazyFrame:
    k = ctx.options.kwh_suspect_ratio
    # one sort by the charger's time serves both sides: ``until`` is the same time shifted; the sort moves only
    # what the test reads (the rows' other columns are fetched by position for the few found)
    rows = readings(ctx).with_row_index("_pos")
    r = (
        rows.filter(pl.col("sample_ts").is_not_null())
        .select("_pos", "_sid", "idx", "value", "sample_ts", "tx", "resolution")
        .sort("sample_ts")
    )
    # (by one number per series, see with_series_ids: an as-of join by four columns, three of them text,
    # encodes every row of both sides)
    base = r.select("_sid", b_idx="idx", b_value="value", b_ts="sample_ts", b_tx="tx", b_resolution="resolution")
    joined = (
        r.with_columns(until=pl.col("sample_ts") - pl.duration(microseconds=int(MIN_POWER_WINDOW_S * 1e6)))
        .join_asof(base, left_on="until", right_on="b_ts", by="_sid", check_sortedness=False)
        .filter(pl.col("b_idx").is_not_null() & (pl.col("tx").eq_missing(pl.col("b_tx"))))
    )
    lo = pl.min_horizontal("value", "b_value")
    ratio = pl.max_horizontal("value", "b_value") / lo
    dt = _seconds(pl.col("sample_ts"), pl.col("b_ts"))
    gained = pl.col("value") - pl.col("b_value") - pl.max_horizontal("resolution", "b_resolution")
    power = gained * 3600.0 / dt
    return (
        joined.with_columns(power=power, dt=dt, delta=pl.col("value") - pl.col("b_value"))
        .filter((pl.col("power") > ctx.options.max_power_w) & ~((lo > 0) & (ratio >= k) & (ratio <= 1e6 / k)))
        .join(rows.select("_pos", "charge_point_id", "conn", "connector_id", "ts"), on="_pos", how="left",
              maintain_order="left")
        .select(
            "charge_point_id", "conn", "connector_id", "ts",
            transaction_id="tx",
            evidence=pl.concat_list("b_idx", "idx").list.unique(maintain_order=True),
            summary=pl.concat_str(
                pl.lit("The energy register of connector "), _s(pl.col("connector_id").cast(pl.Float64)),
                pl.lit(" rose by "), _s(pl.col("delta")), pl.lit(" Wh in "), _s(pl.col("dt"), 1),
                pl.lit(" s of charger time: "), _s(pl.col("power") / 1000.0), pl.lit(" kW, above the "),
                pl.lit(f"{ctx.options.max_power_w / 1000:.0f}"), pl.lit(" kW limit."),
            ),
            value=pl.col("power"),
        )
        .sort("ts")
    )
