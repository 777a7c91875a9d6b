"""Time detectors: the charger's payload clock against the observed clock.

Three clocks stay apart (see DESIGN.md): ``ts`` is when the frame was seen (capture or log line), payload
timestamps are the charger's clock, ``currentTime`` is the CSMS's. Every rule here compares the charger's
clock with the observed one, so rows without an observed ``ts`` are ignored (a log without a zone gives
none until ``--log-tz``), except for ``epoch-timestamp``, which needs no reference.

The helpers :func:`clock` and :func:`from_charger` are shared with the other families.
"""

from __future__ import annotations

import polars as pl

from ..protocol.actions import CP_INITIATED
from .derived import with_event_fields
from .registry import AnalysisContext, detector, text_code

EVIDENCE_CAP = 20  # idx kept in a grouped finding's evidence; the summary gives the full count

#: actions that legitimately carry old timestamps: stored samples and events sent after an outage
LATE_REPORTS = ["MeterValues", "StartTransaction", "StopTransaction", "TransactionEvent"]

_TS_TEXT = r'"timestamp"\s*:\s*"([^"]*)"'


def clock() -> pl.Expr:
    """Observed time for durations: ``ts``, else the zone-less log time (differences stay right)."""
    return pl.coalesce(pl.col("ts"), pl.col("ts_local").dt.replace_time_zone("UTC"))


def from_charger() -> pl.Expr:
    """CALLs the charger sent (direction, or the action when the source did not say)."""
    return (pl.col("message_type") == "CALL") & (
        (pl.col("direction") == "cp->csms")
        | (pl.col("direction").is_null() & pl.col("action").is_in(sorted(CP_INITIATED)))
    )


def parse_ts(text: pl.Expr) -> pl.Expr:
    """OCPP date-time text to UTC; a zone-less time is read as UTC (what OCPP prescribes)."""
    return pl.coalesce(
        text.str.to_datetime("%+", strict=False, time_unit="us", time_zone="UTC"),
        text.str.to_datetime("%Y-%m-%dT%H:%M:%S%.f", strict=False, time_unit="us").dt.replace_time_zone(
            "UTC"
        ),
    )


def seconds(delta: pl.Expr) -> pl.Expr:
    """A duration in seconds, exactly microseconds / 1e6 whatever the chunking.

    Polars divides a column by a constant as a product with the reciprocal (off by one unit in the last
    place for ~30 % of values) but a one-row chunk by true division, so the same input could print
    42.000404 in one run and 42.000403999999996 in the next; rounding to the microsecond snaps both to the
    true quotient.
    """
    return (delta.dt.total_microseconds() / 1e6).round(6)


def human(secs: pl.Expr) -> pl.Expr:
    """``900.0`` -> ``"15.0 min"`` (absolute value; the caller says ahead/behind)."""
    a = secs.abs()
    return (
        pl.when(a >= 86400)
        .then((a / 86400).round(1).cast(pl.String) + " d")
        .when(a >= 3600)
        .then((a / 3600).round(1).cast(pl.String) + " h")
        .when(a >= 60)
        .then((a / 60).round(1).cast(pl.String) + " min")
        .otherwise(a.round(1).cast(pl.String) + " s")
    )


def _stamped(ctx: AnalysisContext) -> pl.LazyFrame:
    """Charger CALLs with an observed ts and their first payload timestamp (``text``, ``offset_s``).

    Three detectors read it; one cached plan node, kept on the context, lets ``collect_all`` compute it once.
    The compiled walker reads it with the derived tables' payloads when it is there (``ctx.stamps``, see
    :meth:`.derived.Walks.stamps`; :func:`stamped_rows` is the reference).
    """
    plan = ctx.__dict__.get("_time_stamped")
    if plan is None:
        if ctx.stamps is not None:
            plan = ctx.stamps
        else:
            plan = stamped_rows(ctx.messages.filter(from_charger(), pl.col("ts").is_not_null())).cache()
        ctx.__dict__["_time_stamped"] = plan
    return plan


def stamped_rows(charger_calls: pl.LazyFrame) -> pl.LazyFrame:
    """Charger CALLs (with an observed ts) -> the rows of :func:`_stamped` (those whose payload names a timestamp)."""
    p = pl.col("payload")
    text = p.str.extract(_TS_TEXT, 1)
    # the payload itself stays behind: the frame is sorted, and only the 2.x offline flag is read from it
    return charger_calls.filter(p.str.contains('"timestamp"', literal=True)).select(
        "idx", "ts", "conn", "charge_point_id", "action", text=text,
        offset_s=seconds(parse_ts(text) - pl.col("ts")),
        offline=p.str.contains(r'"offline"\s*:\s*true'),  # (the regex skips to the literal by itself)
    )  # fmt: skip


def _offsets(ctx: AnalysisContext) -> pl.LazyFrame:
    """Charger CALLs with a payload timestamp and an observed ts: ``offset_s`` = payload - observed.

    The first ``"timestamp"`` in the text is the message's (1.6 MeterValues: its first sample's).

    Late reports (stored meter values, an old session's stop, 2.x ``offline`` events) that are *behind* the
    observed clock are left out: being late is their nature, not a wrong clock.
    """
    plan = ctx.__dict__.get("_time_offsets")
    if plan is None:
        late = (pl.col("action").is_in(LATE_REPORTS) & (pl.col("offset_s") < -ctx.options.clock_drift_s)) | pl.col(
            "offline"
        )
        # Sorted by charge point (its categorical code: a third of the time of sorting the text; the order of
        # the charge points is nobody's concern, the detectors work per charge point), then time. One cached
        # node for clock-drift and clock-jump. ``_same``: the row before is of the same charge point, so the
        # detectors read the previous row without a window over the charge point's text.
        # When the walker's stamped rows (in idx order, materialised) are in time order too, as a capture's or a
        # log's usually are, a stable sort by the charge point alone gives that order (a third of the time of
        # three keys).
        in_time_order = ctx.stamps is not None and ctx.stamps.collect()["ts"].is_sorted()
        cp = pl.col("_cp")
        rows = (
            _stamped(ctx)
            .filter(pl.col("offset_s").is_not_null())
            .filter(~late)
            .with_columns(_cp=text_code("charge_point_id"))
        )
        plan = (
            (rows.sort("_cp", maintain_order=True) if in_time_order else rows.sort("_cp", "ts", "idx"))
            .with_columns(_same=cp.eq_missing(cp.shift(1)) & (pl.int_range(pl.len()) > 0))
            .drop("_cp")
            .cache()
        )
        ctx.__dict__["_time_offsets"] = plan
    return plan


@detector(
    "clock-drift",
    "warning",
    "time",
    title="Charger clock differs from the observed time",
    explanation="""
    The timestamps the charger writes in its messages (status changes, meter samples, transaction start
    and stop) differ from the time the messages were actually seen by more than the drift threshold
    (clock_drift_s, 60 s by default). Billing systems use the charger's timestamps for session start, stop and
    tariff periods, so a wrong clock shifts sessions into the wrong tariff window or day and makes meter
    values hard to line up with the CSMS's records. Typical causes: no NTP or time sync, the CSMS's
    Heartbeat/BootNotification currentTime being ignored, a wrong time zone configured as UTC, or a
    real-time clock that lost power. One finding per episode (a run of consecutive offending messages of
    one charger); the value is the median offset in seconds (positive: the charger is ahead), so a few
    legitimately old timestamps do not dominate, and stored meter values or transaction messages sent late
    after an outage are not counted. Check the charger's time source and whether it applies the currentTime
    the CSMS sends.""",
)
def clock_drift(ctx: AnalysisContext) -> pl.LazyFrame:
    limit = ctx.options.clock_drift_s
    bad = pl.col("offset_s").abs() > limit
    # a run of offending rows of one charge point: a new number wherever one starts (the rows are in charge
    # point order, so the numbers are unique over all of them)
    episode = (bad & ~(pl.col("_same") & bad.shift(1)).fill_null(False)).cum_sum()
    med = pl.col("median_s")
    return (
        _offsets(ctx)
        .with_columns(bad=bad, episode=episode)
        .filter("bad")
        .group_by("episode")
        .agg(
            pl.col("charge_point_id").first(),
            ts=pl.col("ts").first(),
            last=pl.col("ts").last(),
            conn=pl.col("conn").first(),
            n=pl.len(),
            median_s=pl.col("offset_s").median(),
            evidence=pl.col("idx").head(EVIDENCE_CAP),
        )
        .filter(pl.col("n") >= 2)  # a single odd timestamp is a late report, not a clock
        .select(
            "charge_point_id",
            "conn",
            "ts",
            "evidence",
            value=med,
            summary=pl.format(
                "{}'s clock is {} {} the observed time (median over {} messages from {} to {}).",
                "charge_point_id",
                human(med),
                pl.when(med > 0).then(pl.lit("ahead of")).otherwise(pl.lit("behind")),
                "n",
                pl.col("ts").dt.strftime("%Y-%m-%d %H:%M:%S"),
                pl.col("last").dt.strftime("%Y-%m-%d %H:%M:%S"),
            ),
        )
    )


@detector(
    "clock-jump",
    "warning",
    "time",
    title="Charger clock jumps",
    explanation="""
    Between two consecutive messages of one charger, its payload clock moved by more than clock_jump_s
    (300 s by default) relative to the observed clock: for example the charger was 2 hours behind and
    suddenly is right, or it fell back to 1970 after a reboot. This usually is a time synchronisation (NTP,
    or the charger adopting the CSMS's currentTime from a BootNotification or Heartbeat response), a reboot
    that reset the real-time clock, or a daylight-saving or time-zone change applied to a clock that should
    be UTC. Sessions that span the jump get a wrong duration (even negative), and meter samples around it
    can look out of order, so check the transactions that were running at that moment. The value is the
    jump in seconds (positive: the clock jumped forward).""",
)
def clock_jump(ctx: AnalysisContext) -> pl.LazyFrame:
    def prev(col: str) -> pl.Expr:  # the charge point's previous row (rows in charge point order)
        return pl.when("_same").then(pl.col(col).shift(1))

    jump = pl.col("offset_s") - prev("offset_s")
    prev_idx = prev("idx")
    prev_ts = prev("ts")
    return (
        _offsets(ctx)
        .with_columns(jump=jump, prev_idx=prev_idx, gap=seconds(pl.col("ts") - prev_ts))
        .filter(pl.col("jump").abs() > ctx.options.clock_jump_s)
        .select(
            "charge_point_id",
            "conn",
            "ts",
            evidence=pl.concat_list("prev_idx", "idx"),
            value="jump",
            summary=pl.format(
                "{}'s clock jumped {} {} between two messages {} apart (offset {} s, then {} s).",
                "charge_point_id",
                human(pl.col("jump")),
                pl.when(pl.col("jump") > 0).then(pl.lit("forward")).otherwise(pl.lit("back")),
                human(pl.col("gap")),
                (pl.col("offset_s") - pl.col("jump")).round(1),
                pl.col("offset_s").round(1),
            ),
        )
    )


def _unset_timestamps(ctx: AnalysisContext) -> pl.LazyFrame:
    """Every ``"timestamp"`` of a charger payload that may be unset (meter samples included), one row each."""
    unset = r'"timestamp"\s*:\s*"(?:19[0-6]\d|1970|000\d)-'  # cheap prefilter: 1970 or earlier
    return (
        ctx.messages.filter(from_charger() & pl.col("payload").str.contains(unset))
        .select(
            "idx", "ts", "conn", "charge_point_id", "action", text=pl.col("payload").str.extract_all(_TS_TEXT)
        )
        .explode("text")
        .with_columns(text=pl.col("text").str.extract(_TS_TEXT, 1))
        .with_columns(payload_ts=parse_ts(pl.col("text")))
    )


@detector(
    "timestamp-in-future",
    "warning",
    "time",
    title="Timestamp far in the future",
    explanation="""
    The charger sent a message whose timestamp is more than future_s (24 hours by default) after the time the message was
    seen. A session or meter sample dated in the future breaks billing periods, invoices and reports that
    are sorted by time, and can block later sessions that look older than it. Typical causes: a real-time
    clock set to a wrong date, a firmware that writes local time with a wrong offset or the year wrong, or
    a time sync from a bad source. One finding per charger and action, with the number of messages; the
    value is the largest lead in seconds. Check the charger's clock and time source.""",
)
def timestamp_in_future(ctx: AnalysisContext) -> pl.LazyFrame:
    return (
        _stamped(ctx)
        .with_columns(ahead=pl.col("offset_s"))
        .filter(pl.col("ahead") > ctx.options.future_s)
        .group_by("charge_point_id", "action")
        .agg(
            ts=pl.col("ts").min(),
            conn=pl.col("conn").first(),
            n=pl.col("idx").n_unique(),
            value=pl.col("ahead").max(),
            example=pl.col("text").first(),
            evidence=pl.col("idx").unique(maintain_order=True).head(EVIDENCE_CAP),
        )
        .select(
            "charge_point_id",
            "conn",
            "ts",
            "evidence",
            "value",
            summary=pl.format(
                "{} {} message(s) from {} carry a timestamp up to {} in the future (e.g. {}).",
                "n",
                "action",
                "charge_point_id",
                human(pl.col("value")),
                "example",
            ),
        )
    )


@detector(
    "epoch-timestamp",
    "error",
    "time",
    title="Unset clock (1970 or year 0)",
    explanation="""
    The charger sent a timestamp in 1970 (the Unix epoch) or in year 0000/0001: its real-time clock was
    never set, typically right after a power loss or reboot before any time synchronisation, or on a
    charger without a clock battery. Sessions and meter values dated 1970 are usually rejected by billing
    or land in the wrong period, and the duration of a session that starts in 1970 and ends today is
    absurd. Check that the charger syncs its time (NTP or the CSMS's currentTime) before it starts
    sessions, and whether it buffers events from before the sync. One finding per charger and action.""",
)
def epoch_timestamp(ctx: AnalysisContext) -> pl.LazyFrame:
    year = pl.col("text").str.slice(0, 4).cast(pl.Int32, strict=False)
    return (
        _unset_timestamps(ctx)
        .filter(year <= 1970)
        .group_by("charge_point_id", "action")
        .agg(
            ts=pl.col("ts").min(),
            conn=pl.col("conn").first(),
            n=pl.col("idx").n_unique(),
            example=pl.col("text").first(),
            evidence=pl.col("idx").unique(maintain_order=True).head(EVIDENCE_CAP),
        )
        .select(
            "charge_point_id",
            "conn",
            "ts",
            "evidence",
            value=pl.col("n").cast(pl.Float64),
            summary=pl.format(
                "{} {} message(s) from {} carry an unset-clock timestamp ({}).",
                "n",
                "action",
                "charge_point_id",
                "example",
            ),
        )
    )


def _starts_stops(ctx: AnalysisContext) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """(starts, stops): charge_point_id, transaction_id, payload ts, idx, observed ts, for 1.6 and 2.x."""
    m = ctx.messages
    p = pl.col("payload")
    calls = m.filter(pl.col("message_type") == "CALL")
    cols = ["charge_point_id", "conn", "transaction_id", "payload_ts", "idx", "ts"]
    # 1.6: the CSMS issues the id in the StartTransaction CALLRESULT.
    results = m.filter(pl.col("message_type") == "CALLRESULT", pl.col("action") == "StartTransaction").select(
        response_index="idx", transaction_id=p.str.json_path_match("$.transactionId")
    )
    starts16 = (
        calls.filter(pl.col("action") == "StartTransaction")
        .join(results, on="response_index", how="inner")
        .with_columns(payload_ts=parse_ts(p.str.json_path_match("$.timestamp")))
        .select(cols)
    )
    stops16 = (
        calls.filter(pl.col("action") == "StopTransaction")
        .with_columns(
            transaction_id=p.str.json_path_match("$.transactionId"),
            payload_ts=parse_ts(p.str.json_path_match("$.timestamp")),
        )
        .select(cols)
    )
    events = with_event_fields(calls.filter(pl.col("action") == "TransactionEvent"), ctx.transaction_events, m).with_columns(
        transaction_id="_te_tid",
        payload_ts=parse_ts(pl.col("_te_ts")),
        event="_te_event",
    )
    starts2 = (
        events.filter(pl.col("event") == "Started")
        .sort("idx")
        .group_by("charge_point_id", "transaction_id")
        .first()
        .select(cols)
    )
    stops2 = events.filter(pl.col("event") == "Ended").select(cols)
    return pl.concat([starts16, starts2]), pl.concat([stops16, stops2])


@detector(
    "stop-before-start",
    "error",
    "time",
    title="Transaction stops before it starts",
    explanation="""
    A transaction's stop timestamp (1.6 StopTransaction, 2.x TransactionEvent Ended) is earlier than its
    start timestamp, so its duration is negative. Billing by time (parking, idle fees, time-based tariffs)
    gives nonsense or rejects the session, and reports that sort by time put the stop before the start.
    Typical causes: the charger's clock was corrected (or reset to 1970) during the session, a time-zone or
    daylight-saving change on a clock that should be UTC, or the charger reusing a transaction id so the stop
    belongs to another session. 1.6 stops are linked to their start through the transactionId the CSMS
    issued in the StartTransaction response. The value is the (negative) duration in seconds. Check for a
    clock-jump finding around the same time and the charger's time source.""",
)
def stop_before_start(ctx: AnalysisContext) -> pl.LazyFrame:
    starts, stops = _starts_stops(ctx)
    starts = starts.rename(
        {"payload_ts": "start_ts", "idx": "start_idx", "ts": "start_observed", "conn": "c"}
    )
    dur = seconds(pl.col("payload_ts") - pl.col("start_ts"))
    return (
        stops.sort("idx")
        .join_asof(
            starts.sort("start_idx"),
            left_on="idx",
            right_on="start_idx",
            by=["charge_point_id", "transaction_id"],
            strategy="backward",
            check_sortedness=False,
        )
        .filter(pl.col("start_idx").is_not_null(), dur < 0)
        .select(
            "charge_point_id",
            "conn",
            "transaction_id",
            "ts",
            evidence=pl.concat_list("start_idx", "idx"),
            value=dur,
            summary=pl.format(
                "Transaction {} on {} stops at {}, {} before its start at {}.",
                "transaction_id",
                "charge_point_id",
                pl.col("payload_ts").dt.strftime("%Y-%m-%d %H:%M:%S"),
                human(dur),
                pl.col("start_ts").dt.strftime("%Y-%m-%d %H:%M:%S"),
            ),
        )
    )
