"""Transaction lifecycle detectors: sessions that never end, ids nobody issued, duplicates, ordering.

Each detector reads the derived ``transactions`` table (see :mod:`.derived`) and the messages that refer to
a transaction id, and returns findings. Ids are compared per charge point, except that a 1.6 id issued for
two different starts is a CSMS-wide problem wherever it happens.
"""

from __future__ import annotations

import polars as pl

from ..tables.schemas import TS
from .derived import (
    ENERGY_REGISTER,
    _top_int,
    _top_scalar,
    covering_transaction,
    per_charge_point,
    with_event_fields,
)
from .registry import AnalysisContext, detector
from .time import seconds

REMOTE_START_WINDOW_S = 180.0  # an accepted remote start should lead to a transaction within this time
EARLY_S = 300.0  # an unknown id first seen this soon after the capture starts probably started before it
CHARGING_RACE_S = 60.0  # a Charging status may precede its StartTransaction by this much
IDLE_ENERGY_WH = 10.0  # register growth outside any transaction below this is noise
DROP_SILENCE_FACTOR = 10.0  # silent for this many times its usual gap between CALLs: the charger is gone
SENTINEL_IDS = ["", "0", "-1", "null", "none", "undefined", "nan"]

KEY = ["charge_point_id", "transaction_id"]


def _lit_ts(value: object) -> pl.Expr:
    return pl.lit(value, dtype=TS)


def _s(expr: pl.Expr, decimals: int = 0) -> pl.Expr:
    """A number as text for a summary (no decimals by default)."""
    if decimals == 0:
        return expr.round(0).cast(pl.Int64, strict=False).cast(pl.String).fill_null("?")
    return expr.round(decimals).cast(pl.String).fill_null("?")


def _t(expr: pl.Expr) -> pl.Expr:
    return expr.dt.strftime("%Y-%m-%d %H:%M:%S").fill_null("?")


def _seconds(a: pl.Expr, b: pl.Expr) -> pl.Expr:
    return seconds(a - b)  # deterministic to the last bit (see time.seconds)


def is_sentinel(tid: pl.Expr) -> pl.Expr:
    """Ids that mean "no transaction": 0, negative numbers, empty or null-like text (null for a null id; an id
    that is not a number, a 2.x UUID, is no sentinel: false, not null, so that ``~is_sentinel`` keeps it)."""
    t = tid.str.strip_chars().str.to_lowercase()
    return t.is_in(SENTINEL_IDS) | (t.cast(pl.Float64, strict=False) <= 0).fill_null(False)


def _sentinel_ids(refs: pl.LazyFrame) -> pl.LazyFrame:
    """The distinct ``transaction_id`` values of ``refs`` that are sentinels: :func:`is_sentinel` on the few
    thousand distinct ids of a fleet's day rather than on each of its ~400k references (57 -> 10 ms)."""
    t = pl.col("transaction_id")
    return refs.select(t.unique()).filter(t.is_not_null() & is_sentinel(t))


def references(messages: pl.LazyFrame, meter_ids: pl.DataFrame | None = None,
               events: pl.DataFrame | None = None) -> pl.LazyFrame:
    """Messages that name a transaction id after its start: MeterValues, StopTransaction, TransactionEvent.

    ``event_type`` is only read for TransactionEvent (the only action that has one). :func:`registry.run`
    builds this once for all detectors (``ctx.references``); see :func:`_references`.
    """
    action = pl.col("action")
    calls = messages.filter(
        (pl.col("message_type") == "CALL")
        & action.is_in(["MeterValues", "StopTransaction", "TransactionEvent"])
    ).with_row_index("_row")
    cols = ("_row", "idx", "ts", "charge_point_id", "conn", "action")
    # One frame per kind of payload, so that each is searched only for the fields it can carry (a when/then
    # evaluates every branch on every row), and only rows with an id are searched for the connector.
    regex_rows = calls.filter(action != "TransactionEvent")
    if meter_ids is not None:  # MeterValues ids read off their templates already (derived.Derived.meter_ids)
        known = regex_rows.join(meter_ids.lazy(), on="idx", how="inner").select(
            *cols, "transaction_id", event_type=pl.lit(None, dtype=pl.String), connector_id="connector_id"
        )
        regex_rows = regex_rows.join(meter_ids.lazy().select("idx"), on="idx", how="anti")
    tx16 = regex_rows.select(
        *cols, transaction_id=_top_scalar("transactionId"), event_type=pl.lit(None, dtype=pl.String),
        # MeterValues carry connectorId (1.6) or evseId (2.x) at the top level; StopTransaction neither.
        connector_id=pl.coalesce(_top_int("connectorId"), _top_int("evseId")),
    )
    if meter_ids is not None:
        tx16 = pl.concat([known, tx16], how="vertical_relaxed")
    tx2x = with_event_fields(calls.filter(action == "TransactionEvent"), events, messages).select(
        *cols, transaction_id="_te_tid", event_type="_te_event", connector_id=pl.col("_te_evse").cast(pl.Int64, strict=False),
    )
    return (
        pl.concat([tx16, tx2x], how="vertical_relaxed")
        .filter(pl.col("transaction_id").is_not_null())
        .sort("_row")
        .select("idx", "ts", "charge_point_id", "conn", "action", "transaction_id", "event_type", "connector_id")
    )


def _references(ctx: AnalysisContext) -> pl.LazyFrame:
    return ctx.references if ctx.references is not None else references(ctx.messages)


def _starts(ctx: AnalysisContext) -> pl.LazyFrame:
    return ctx.transactions.filter(pl.col("start_idx").is_not_null())


# --------------------------------------------------------------------------------------- orphaned


@detector(
    "orphaned-transaction", "error", "transactions",
    title="Transaction started but never stopped",
    explanation="""
    A transaction was started (StartTransaction answered with an id, or a 2.x TransactionEvent Started) and no
    StopTransaction / Ended event followed, although the traffic shows it should have: the charge point kept
    talking long after, rebooted, started another transaction on the same connector, or its connection died for
    good. The session stays open in the CSMS, so it is billed late, wrongly (often with no energy or with the
    energy of the next session) or never, and the connector may look occupied. Typical causes: a lost or
    unanswered StopTransaction, a charger that drops its offline queue after a power cut or reboot, a firmware
    that forgets transactions across reboots. Check the charger's offline queue and reboot logs, and close the
    session in the CSMS with the meter value of the next start.
    """,
)
@per_charge_point
def orphaned_transaction(ctx: AnalysisContext) -> pl.LazyFrame:
    grace = ctx.options.orphan_grace_s
    end = _lit_ts(ctx.capture_end)
    m = ctx.messages
    tx = ctx.transactions.filter(pl.col("state") == "open")
    last = m.group_by("charge_point_id").agg(last_ts=pl.col("ts").max(), last_idx=pl.col("idx").max())
    # The charger's own rhythm: the median gap between the CALLs it sends.
    cadence = (
        m.filter((pl.col("message_type") == "CALL") & (pl.col("direction") == "cp->csms"))
        .sort("idx")
        .group_by("charge_point_id")
        .agg(gap_s=_seconds(pl.col("ts"), pl.col("ts").shift(1)).median())
    )
    closed = ctx.connections.group_by("charge_point_id").agg(closed=pl.col("closed").max())
    boots = m.filter((pl.col("message_type") == "CALL") & (pl.col("action") == "BootNotification")).select(
        "charge_point_id", boot_idx="idx", boot_ts="ts"
    )
    boot_after = (
        tx.select("charge_point_id", "start_idx")
        .join(boots, on="charge_point_id")
        .filter(pl.col("boot_idx") > pl.col("start_idx"))
        .group_by("start_idx")
        .agg(pl.col("boot_idx").min(), pl.col("boot_ts").min())
    )
    next_start = (
        tx.select("charge_point_id", "connector_id", "start_idx")
        .join(
            _starts(ctx).select("charge_point_id", "connector_id", next_idx="start_idx", next_tid="transaction_id"),
            on=["charge_point_id", "connector_id"],
        )
        .filter(pl.col("next_idx") > pl.col("start_idx"))
        .sort("next_idx")
        .group_by("start_idx")
        .agg(pl.col("next_idx").first(), pl.col("next_tid").first())
    )
    # A transaction is alive as long as meter values for it keep coming: measure from its last sign of life.
    activity = (
        (ctx.meter_values if ctx.sample_messages is None else ctx.sample_messages)
        .filter(pl.col("transaction_id").is_not_null())
        .group_by("charge_point_id", "transaction_id")
        .agg(last_activity=pl.col("ts").max())
    )
    alive_until = pl.max_horizontal("start_observed", pl.col("last_activity"))
    silence = _seconds(end, pl.col("last_ts"))
    lost = (pl.col("closed").is_not_null() & (pl.col("closed") <= end) & (pl.col("last_ts") <= pl.col("closed"))) | (
        (pl.col("gap_s") > 0) & (silence > DROP_SILENCE_FACTOR * pl.col("gap_s"))
    )
    kept_on = _seconds(pl.col("last_ts"), alive_until) > grace
    tail = _seconds(end, alive_until)
    reason = (
        pl.when(pl.col("boot_idx").is_not_null())
        .then(pl.concat_str(pl.lit("the charge point rebooted at "), _t(pl.col("boot_ts"))))
        .when(pl.col("next_idx").is_not_null())
        .then(pl.concat_str(pl.lit("a new transaction ("), pl.col("next_tid").fill_null("no id"),
                            pl.lit(") started on the same connector")))
        .when(lost)
        .then(pl.concat_str(pl.lit("the charge point went silent "), _s(silence, 1),
                            pl.lit(" s before the capture ends (connection lost)")))
        .when(kept_on)
        .then(pl.concat_str(pl.lit("the charge point kept talking for "),
                            _s(_seconds(pl.col("last_ts"), alive_until)),
                            pl.lit(" s after the transaction's last meter value")))
        .when(tail > grace)
        .then(pl.concat_str(pl.lit("the capture goes on for "), _s(tail),
                            pl.lit(" s after the transaction's last sign of life")))
    )
    head = pl.concat_str(
        pl.lit("Transaction "), pl.col("transaction_id"), pl.lit(" on connector "),
        _s(pl.col("connector_id").cast(pl.Float64)), pl.lit(" started at "), _t(pl.col("start_observed")),
        pl.lit(" (meter "), _s(pl.col("meter_start_wh")), pl.lit(" Wh) was never stopped: "),
    )
    return (
        tx.join(last, on="charge_point_id", how="left")
        .join(activity, on=["charge_point_id", "transaction_id"], how="left")
        .join(cadence, on="charge_point_id", how="left")
        .join(closed, on="charge_point_id", how="left")
        .join(boot_after, on="start_idx", how="left")
        .join(next_start, on="start_idx", how="left")
        .with_columns(reason=reason)
        .select(
            "charge_point_id", "conn", "connector_id", "transaction_id",
            ts="start_observed",
            severity=pl.when(pl.col("reason").is_null()).then(pl.lit("info")).otherwise(pl.lit("error")),
            summary=pl.when(pl.col("reason").is_null())
            .then(pl.concat_str(head, pl.lit("the capture ends "), _s(tail, 1),
                                pl.lit(" s after its last sign of life, before a stop could be expected.")))
            .otherwise(pl.concat_str(head, pl.col("reason"), pl.lit("."))),
            evidence=pl.concat_list(
                "start_idx", "start_response_idx", "boot_idx", "next_idx",
                pl.when(lost).then(pl.col("last_idx")),
            ).list.drop_nulls(),
            value=tail,
        )
    )


# --------------------------------------------------------------------------------------- unknown


@detector(
    "unknown-transaction", "warning", "transactions",
    title="Messages for a transaction that was never started",
    explanation="""
    A StopTransaction, MeterValues or TransactionEvent names a transaction id whose start is not in the
    traffic, although the capture covers the time when it must have started (earlier sessions on that
    connector are visible). The CSMS has no session to attach the energy or the stop to, so the energy is lost
    for billing or booked to the wrong session. Typical causes: a StartTransaction that got lost or was never
    answered, a charger inventing or reusing an id after a reboot or offline period, two CSMS instances
    issuing ids. When the id first appears at the very start of the capture it most likely started before the
    capture; that is reported as info only.
    """,
)
@per_charge_point
def unknown_transaction(ctx: AnalysisContext) -> pl.LazyFrame:
    start = _lit_ts(ctx.capture_start)
    known = _starts(ctx).select(KEY).unique()
    every = _references(ctx)
    refs = every.filter(pl.col("transaction_id").is_not_null()).join(_sentinel_ids(every), on="transaction_id", how="anti")
    unknown = (
        refs.join(known, on=KEY, how="anti")
        .sort("idx")
        .group_by(KEY)
        .agg(
            pl.col("conn").first(),
            pl.col("connector_id").drop_nulls().first(),
            ts=pl.col("ts").first(),
            first_idx=pl.col("idx").first(),
            evidence=pl.col("idx"),
            actions=pl.col("action").unique(maintain_order=True).str.join("/"),
            n=pl.len(),
        )
    )
    starts = _starts(ctx).select("charge_point_id", s_connector="connector_id", s_idx="start_idx")
    seen_before = (
        unknown.select(*KEY, "connector_id", "first_idx")
        .join(starts, on="charge_point_id")
        .filter(
            (pl.col("s_idx") < pl.col("first_idx"))
            & (pl.col("connector_id").is_null() | (pl.col("s_connector") == pl.col("connector_id")))
        )
        .select(KEY)
        .unique()
        .with_columns(prior=pl.lit(True))
    )
    early = _seconds(pl.col("ts"), start) <= EARLY_S
    info = early | pl.col("prior").is_null()
    head = pl.concat_str(
        _s(pl.col("n").cast(pl.Float64)), pl.lit(" message(s) ("), pl.col("actions"),
        pl.lit(") name transaction "), pl.col("transaction_id"), pl.lit(", which was never started"),
    )
    return unknown.join(seen_before, on=KEY, how="left").select(
        *KEY, "conn", "connector_id", "ts", "evidence",
        severity=pl.when(info).then(pl.lit("info")).otherwise(pl.lit("warning")),
        summary=pl.when(info)
        .then(pl.concat_str(head, pl.lit(" in the capture; it probably started before the capture.")))
        .otherwise(pl.concat_str(head, pl.lit(" although earlier starts on this connector are in the capture."))),
        value=pl.col("n").cast(pl.Float64),
    )


# --------------------------------------------------------------------------------------- duplicate


@detector(
    "duplicate-transaction", "error", "transactions",
    title="The same transaction started twice, or one id given to two transactions",
    explanation="""
    Either the charger sent the same start twice (same connector, id tag, meter start and timestamp; for
    2.x, two Started events with the same transaction id) and the CSMS did not recognise the repeat (it gave
    two ids, or left one unanswered, so it may hold a session the charger knows nothing about), or the CSMS
    issued one transaction id for two different starts. Either way one real session exists twice in the CSMS:
    the customer can be billed twice, or the energy lands on the wrong session, and the extra session is
    never stopped. Typical causes: a CSMS that is slow to answer StartTransaction so the charger retries, a
    CSMS that does not deduplicate retries, id counters reset after a CSMS restart or shared between
    instances. Check the CSMS's sessions for these ids and its handling of repeated starts.
    """,
)
@per_charge_point
def duplicate_transaction(ctx: AnalysisContext) -> pl.LazyFrame:
    starts = _starts(ctx)
    start_key = ["charge_point_id", "connector_id", "id_tag", "meter_start_wh", "start_ts"]
    resent = (
        starts.sort("start_idx")
        .group_by(start_key)
        .agg(
            pl.col("conn").first(),
            ts=pl.col("start_observed").first(),
            sends=pl.len(),
            unanswered=pl.col("transaction_id").null_count(),
            ids=pl.col("transaction_id").drop_nulls().unique(maintain_order=True),
            evidence=pl.concat_list("start_idx", "start_response_idx").list.explode(keep_nulls=False, empty_as_null=False),
        )
        # a repeat answered with the same id is a CSMS deduplicating correctly
        .filter((pl.col("sends") > 1) & ((pl.col("ids").list.len() > 1) | (pl.col("unanswered") > 0)))
        .select(
            "charge_point_id", "conn", "connector_id", "ts", "evidence",
            transaction_id=pl.col("ids").list.first(),
            summary=pl.concat_str(
                pl.lit("The same start (connector "), _s(pl.col("connector_id").cast(pl.Float64)),
                pl.lit(", id tag "), pl.col("id_tag").fill_null("?"), pl.lit(", meter "),
                _s(pl.col("meter_start_wh")), pl.lit(" Wh, "), _t(pl.col("start_ts")),
                pl.lit(") was sent "), _s(pl.col("sends").cast(pl.Float64)), pl.lit(" times and got "),
                pl.when(pl.col("ids").list.len() > 1)
                .then(pl.concat_str(_s(pl.col("ids").list.len().cast(pl.Float64)), pl.lit(" ids ("),
                                    pl.col("ids").list.join(", "), pl.lit(").")))
                .when(pl.col("ids").list.len() == 1)
                .then(pl.concat_str(
                    pl.lit("only 1 id ("), pl.col("ids").list.join(", "),
                    pl.lit("); the CSMS may hold a session for an unanswered copy that will never be stopped."),
                ))
                .otherwise(pl.lit("no id: none was answered, so the CSMS may hold sessions the charger never knew.")),
            ),
            value=pl.col("sends").cast(pl.Float64),
        )
    )
    # 2.x: the charger names the id, so a repeated start is a repeated Started event for one id.
    started_twice = (
        _references(ctx)
        .filter((pl.col("action") == "TransactionEvent") & (pl.col("event_type") == "Started"))
        .group_by(KEY)
        .agg(pl.col("conn").first(), pl.col("connector_id").first(), ts=pl.col("ts").first(),
             evidence=pl.col("idx"), n=pl.len())
        .filter(pl.col("n") > 1)
        .select(
            *KEY, "conn", "connector_id", "ts", "evidence",
            summary=pl.concat_str(pl.lit("TransactionEvent Started for transaction "), pl.col("transaction_id"),
                                  pl.lit(" was sent "), _s(pl.col("n").cast(pl.Float64)), pl.lit(" times.")),
            value=pl.col("n").cast(pl.Float64),
        )
    )
    # One id for different starts (CSMS-wide, as 1.6 ids are issued by the CSMS).
    reused = (
        starts.filter(pl.col("transaction_id").is_not_null() & ~is_sentinel(pl.col("transaction_id")))
        .sort("start_idx")
        .group_by("transaction_id")
        .agg(
            pl.col("charge_point_id").first(), pl.col("conn").first(), pl.col("connector_id").first(),
            ts=pl.col("start_observed").first(),
            n=pl.struct(start_key).n_unique(),
            where=pl.concat_str(pl.col("charge_point_id"), pl.lit(" connector "),
                                _s(pl.col("connector_id").cast(pl.Float64)), pl.lit(" at "),
                                _t(pl.col("start_observed"))),
            evidence=pl.concat_list("start_idx", "start_response_idx").list.explode(keep_nulls=False, empty_as_null=False),
        )
        .filter(pl.col("n") > 1)
        .select(
            "charge_point_id", "conn", "connector_id", "transaction_id", "ts", "evidence",
            summary=pl.concat_str(pl.lit("Transaction id "), pl.col("transaction_id"), pl.lit(" was issued for "),
                                  _s(pl.col("n").cast(pl.Float64)), pl.lit(" different starts ("),
                                  pl.col("where").list.join("; "), pl.lit(").")),
            value=pl.col("n").cast(pl.Float64),
        )
    )
    return pl.concat([resent, started_twice, reused], how="diagonal_relaxed")


# --------------------------------------------------------------------------------------- invalid id


@detector(
    "invalid-transaction-id", "error", "transactions",
    title="Transaction id 0, -1 or empty",
    explanation="""
    A StartTransaction answer gave an accepted session the id 0, a negative number or an empty / null-like id,
    or a later MeterValues, StopTransaction or TransactionEvent uses such an id. These values mean "no
    transaction" in many implementations, so the CSMS cannot tie the energy or the stop to a session: it is
    lost for billing, or every such message lands on one catch-all session. Typical causes: a CSMS that
    answers with a placeholder id when its database is slow or failing, a charger that sends meter values
    with transactionId 0 when it has lost the real id (after a reboot, or for meter values outside a
    session that should omit the id). A rejected start answered with such an id, and the charger's later
    messages for it, are normal and not reported.
    """,
)
@per_charge_point
def invalid_transaction_id(ctx: AnalysisContext) -> pl.LazyFrame:
    m = ctx.messages
    answers = m.filter((pl.col("message_type") == "CALLRESULT") & (pl.col("action") == "StartTransaction")).select(
        "idx", "ts", "charge_point_id", "conn", "action",
        transaction_id=pl.col("payload").str.json_path_match("$.transactionId"),
        status=pl.col("payload").str.json_path_match("$.idTagInfo.status"),
    )
    rejected = answers.filter(pl.col("status") != "Accepted").select(KEY).unique()
    bad_answers = answers.filter(
        (pl.col("status") == "Accepted")
        & (pl.col("transaction_id").is_null() | is_sentinel(pl.col("transaction_id")))
    ).with_columns(transaction_id=pl.col("transaction_id").fill_null("(missing)"))
    every = _references(ctx)
    bad_refs = (
        every.join(_sentinel_ids(every), on="transaction_id", how="semi")
        .join(rejected, on=KEY, how="anti", nulls_equal=True)
    )
    return (
        pl.concat([bad_answers.drop("status"), bad_refs.select(bad_answers.drop("status").collect_schema().names())])
        .sort("idx")
        .group_by(KEY)
        .agg(
            pl.col("conn").first(),
            ts=pl.col("ts").first(),
            evidence=pl.col("idx"),
            actions=pl.col("action").unique(maintain_order=True).str.join("/"),
            n=pl.len(),
        )
        .select(
            *KEY, "conn", "ts", "evidence",
            summary=pl.concat_str(pl.lit("Transaction id "), pl.lit('"'), pl.col("transaction_id"), pl.lit('"'),
                                  pl.lit(" is used by "), _s(pl.col("n").cast(pl.Float64)),
                                  pl.lit(" message(s) ("), pl.col("actions"), pl.lit(").")),
            value=pl.col("n").cast(pl.Float64),
        )
    )


# --------------------------------------------------------------------------------------- after end


@detector(
    "event-after-end", "warning", "transactions",
    title="Meter values or events after the transaction ended",
    explanation="""
    MeterValues or TransactionEvent messages for a transaction arrived after its StopTransaction or Ended
    event. The CSMS has usually closed and billed the session by then, so this energy is ignored, or it is
    added to a closed bill, or it reopens the session. Typical causes: a charger delivering its offline queue
    out of order, a charger that keeps sampling after the stop, a retry of a message the CSMS had already
    answered. Compare the sample timestamps with the stop time: samples from before the stop are late
    deliveries, samples after it mean the charger did not really stop.
    """,
)
@per_charge_point
def event_after_end(ctx: AnalysisContext) -> pl.LazyFrame:
    ended = ctx.transactions.filter(pl.col("stop_idx").is_not_null()).select(
        *KEY, "connector_id", "stop_idx", "stop_observed", w_start=pl.coalesce("start_idx", pl.lit(-1, pl.Int64))
    )
    refs = _references(ctx).filter(pl.col("action").is_in(["MeterValues", "TransactionEvent"]))
    # Each message belongs to the latest transaction with its id started before it (an as-of join: a join of
    # every message with every ended transaction of its id, then the latest per message, cost 3x as much).
    late = (
        refs.sort("idx")
        .join_asof(ended.sort("w_start"), left_on="idx", right_on="w_start", by=KEY, strategy="backward",
                   allow_exact_matches=False, check_sortedness=False)
        .filter(pl.col("w_start").is_not_null(), pl.col("stop_idx") < pl.col("idx"))
    )
    return (
        late.sort("idx")
        .group_by(*KEY, "stop_idx")
        .agg(
            pl.col("conn").first(),
            pl.col("connector_id").first(),
            ts=pl.col("ts").first(),
            after_s=_seconds(pl.col("ts").first(), pl.col("stop_observed").first()),
            idxs=pl.col("idx"),
            actions=pl.col("action").unique(maintain_order=True).str.join("/"),
            n=pl.len(),
        )
        .select(
            *KEY, "conn", "connector_id", "ts",
            evidence=pl.concat_list(pl.col("stop_idx"), pl.col("idxs")),
            summary=pl.concat_str(
                _s(pl.col("n").cast(pl.Float64)), pl.lit(" message(s) ("), pl.col("actions"),
                pl.lit(") for transaction "), pl.col("transaction_id"), pl.lit(" arrived after it ended (the first "),
                _s(pl.col("after_s"), 1), pl.lit(" s after the stop)."),
            ),
            value=pl.col("n").cast(pl.Float64),
        )
    )


# --------------------------------------------------------------------------------------- charging without


@detector(
    "charging-without-transaction", "warning", "transactions",
    title="Charging while no transaction is open",
    explanation="""
    A connector reported the status Charging, or its energy register kept rising, while no transaction was
    open on it. Energy delivered outside a transaction is not billed to anyone. Typical causes: free-vend or
    plug-and-charge modes configured on the charger, a StartTransaction that was lost (check for unanswered
    or rejected starts just before), a charger that keeps delivering energy after StopTransaction, or a status
    sent for the wrong connector. A Charging status just before its StartTransaction is normal and not
    reported.
    """,
)
@per_charge_point
def charging_without_transaction(ctx: AnalysisContext) -> pl.LazyFrame:
    end = _lit_ts(ctx.capture_end)
    starts = (
        _starts(ctx)
        .filter(pl.col("connector_id").is_not_null())
        .select("charge_point_id", "connector_id", next_idx="start_idx", next_ts="start_observed")
        .sort("next_idx")
    )
    charging = covering_transaction(
        ctx.statuses.filter((pl.col("status") == "Charging") & pl.col("connector_id").is_not_null()),
        ctx.transactions,
    ).filter(pl.col("open_tid").is_null())
    charging = (
        charging.sort("idx")
        .join_asof(starts, left_on="idx", right_on="next_idx", by=["charge_point_id", "connector_id"],
                   strategy="forward", check_sortedness=False)
        .filter(pl.col("next_ts").is_null() | (_seconds(pl.col("next_ts"), pl.col("ts")) > CHARGING_RACE_S))
    )
    near_end = pl.col("next_ts").is_null() & (_seconds(end, pl.col("ts")) <= CHARGING_RACE_S)
    statuses = charging.select(
        "charge_point_id", "conn", "connector_id", "ts",
        severity=pl.when(near_end).then(pl.lit("info")).otherwise(pl.lit("warning")),
        summary=pl.concat_str(
            pl.lit("Connector "), _s(pl.col("connector_id").cast(pl.Float64)),
            pl.lit(" reported Charging at "), _t(pl.col("ts")), pl.lit(" with no transaction open"),
            pl.when(near_end).then(pl.lit(" (the capture ends before a start could follow).")).otherwise(pl.lit(".")),
        ),
        evidence=pl.concat_list("idx"),
    )
    register = covering_transaction(
        ctx.meter_values.filter(
            (pl.col("measurand") == ENERGY_REGISTER) & pl.col("phase").is_null()
            & pl.col("value").is_not_null() & (pl.col("connector_id") > 0)
        ),
        ctx.transactions,
    ).with_columns(outside=pl.col("open_tid").is_null() & pl.col("transaction_id").is_null())
    group = ["charge_point_id", "connector_id", "location"]
    # one window (the previous reading's position in its group), its columns gathered by it
    back = pl.col("_pos").shift(1).over(group)
    grown = (
        register.sort("idx")
        .with_row_index("_pos")
        .with_columns(_p=back)
        .with_columns(
            prev=pl.col("value").gather("_p"),
            prev_outside=pl.col("outside").gather("_p"),
            prev_idx=pl.col("idx").gather("_p"),
            prev_res=pl.col("resolution").gather("_p"),
        )
        .filter(
            pl.col("outside") & pl.col("prev_outside")
            & (pl.col("value") - pl.col("prev") > pl.max_horizontal("resolution", "prev_res").fill_null(0)
               + IDLE_ENERGY_WH)
        )
        .group_by("charge_point_id", "connector_id")
        .agg(
            pl.col("conn").first(),
            ts=pl.col("ts").first(),
            wh=(pl.col("value") - pl.col("prev")).sum(),
            evidence=pl.concat_list("prev_idx", "idx").list.explode(keep_nulls=False, empty_as_null=False).unique(maintain_order=True),
        )
        .select(
            "charge_point_id", "conn", "connector_id", "ts", "evidence",
            summary=pl.concat_str(pl.lit("The energy register of connector "),
                                  _s(pl.col("connector_id").cast(pl.Float64)), pl.lit(" rose by "),
                                  _s(pl.col("wh")), pl.lit(" Wh while no transaction was open.")),
            value=pl.col("wh"),
        )
    )
    return pl.concat([statuses, grown], how="diagonal_relaxed")


# --------------------------------------------------------------------------------------- remote start


@detector(
    "remote-start-without-transaction", "warning", "transactions",
    title="Remote start accepted, but no transaction followed",
    explanation=f"""
    The CSMS asked the charge point to start a session (RemoteStartTransaction in 1.6,
    RequestStartTransaction in 2.x) and the charge point accepted, but no transaction started on it within
    {REMOTE_START_WINDOW_S:.0f} s. For the driver, the app said "charging" and nothing happened; a CSMS waiting
    for the start may also hold a reservation or a pending session. Typical causes: the cable was not plugged in
    within the charger's connection timeout, the EV refused to charge, the charger accepted a request for a
    connector that was busy or faulted, or the start was lost. Check the StatusNotifications of the connector
    after the request and the charger's ConnectionTimeOut setting.
    """,
)
@per_charge_point
def remote_start_without_transaction(ctx: AnalysisContext) -> pl.LazyFrame:
    end = _lit_ts(ctx.capture_end)
    m = ctx.messages
    answers = m.select(r_idx="idx", r_ts="ts", r_type="message_type", r_payload="payload")
    requests = (
        m.filter(
            (pl.col("message_type") == "CALL")
            & pl.col("action").is_in(["RemoteStartTransaction", "RequestStartTransaction"])
        )
        .join(answers, left_on="response_index", right_on="r_idx", how="left", coalesce=False)
        .filter(pl.col("r_type") == "CALLRESULT")
        # a column, then a filter: a filter on the answer would be pushed into the join, over every message
        .with_columns(
            _accepted=(pl.col("r_payload").str.json_path_match("$.status") == "Accepted")
            & pl.col("r_payload").str.json_path_match("$.transactionId").is_null()
        )
        .filter("_accepted")
        .select("idx", "ts", "charge_point_id", "conn", "action", "r_idx", r_ts=pl.coalesce("r_ts", "ts"))
    )
    ev_trigger = pl.col("_te_trigger")
    begins = (
        with_event_fields(
            m.filter((pl.col("message_type") == "CALL") & pl.col("action").is_in(["StartTransaction", "TransactionEvent"])),
            ctx.transaction_events, m,
        )
        .with_columns(
            _begin=(pl.col("action") == "StartTransaction") | (pl.col("_te_event") == "Started") | (ev_trigger == "RemoteStart")
        )
        .filter("_begin")
        .select("charge_point_id", b_idx="idx", b_ts="ts")
        .sort("b_idx")
    )
    missing = (
        requests.sort("idx")
        .join_asof(begins, left_on="idx", right_on="b_idx", by="charge_point_id", strategy="forward",
                   check_sortedness=False)
        .filter(pl.col("b_idx").is_null() | (_seconds(pl.col("b_ts"), pl.col("r_ts")) > REMOTE_START_WINDOW_S))
    )
    near_end = pl.col("b_idx").is_null() & (_seconds(end, pl.col("r_ts")) <= REMOTE_START_WINDOW_S)
    return missing.select(
        "charge_point_id", "conn", "ts",
        severity=pl.when(near_end).then(pl.lit("info")).otherwise(pl.lit("warning")),
        summary=pl.concat_str(
            pl.col("action"), pl.lit(" at "), _t(pl.col("ts")),
            pl.lit(" was accepted but no transaction started within "), pl.lit(f"{REMOTE_START_WINDOW_S:.0f}"),
            pl.lit(" s"),
            pl.when(near_end)
            .then(pl.concat_str(pl.lit(" (the capture ends "), _s(_seconds(end, pl.col("r_ts")), 1),
                                pl.lit(" s after the request, first).")))
            .otherwise(pl.lit(".")),
        ),
        evidence=pl.concat_list("idx", "r_idx").list.drop_nulls(),
        value=_seconds(pl.col("b_ts"), pl.col("r_ts")),
    )


# --------------------------------------------------------------------------------------- seqNo


@detector(
    "seqno-gap", "warning", "transactions",
    title="TransactionEvent sequence numbers skip",
    explanation="""
    OCPP 2.x numbers the TransactionEvent messages of a transaction (seqNo 0, 1, 2 ...) so that the CSMS can
    tell whether it received all of them. Here numbers are missing between two events that did arrive, so
    meter values, the start, or a state change of this transaction never reached the CSMS, and the bill may be
    computed from incomplete data. Typical causes: the charger's offline queue overflowed or was dropped, a
    message was rejected and not retried, or the firmware numbers events across transactions. Check the
    charger's offline queue settings and whether the missing events arrive later.
    """,
)
@per_charge_point
def seqno_gap(ctx: AnalysisContext) -> pl.LazyFrame:
    events = (
        with_event_fields(
            ctx.messages.filter((pl.col("message_type") == "CALL") & (pl.col("action") == "TransactionEvent")),
            ctx.transaction_events, ctx.messages,
        )
        .select(
            "idx", "ts", "charge_point_id", "conn",
            transaction_id="_te_tid",
            seq=pl.col("_te_seq").cast(pl.Int64, strict=False),
        )
        .filter(pl.col("transaction_id").is_not_null() & pl.col("seq").is_not_null())
        .sort("seq", "idx")
        .unique(subset=[*KEY, "seq"], keep="first", maintain_order=True)
    )
    return (
        events.with_columns(
            next_seq=pl.col("seq").shift(-1).over(KEY),
            next_idx=pl.col("idx").shift(-1).over(KEY),
        )
        .filter(pl.col("next_seq") - pl.col("seq") > 1)
        .select(
            *KEY, "conn", "ts",
            evidence=pl.concat_list("idx", "next_idx"),
            summary=pl.concat_str(
                pl.lit("TransactionEvent seqNo jumps from "), _s(pl.col("seq").cast(pl.Float64)), pl.lit(" to "),
                _s(pl.col("next_seq").cast(pl.Float64)), pl.lit(" in transaction "), pl.col("transaction_id"),
                pl.lit(": "), _s((pl.col("next_seq") - pl.col("seq") - 1).cast(pl.Float64)),
                pl.lit(" event(s) missing."),
            ),
            value=(pl.col("next_seq") - pl.col("seq") - 1).cast(pl.Float64),
        )
    )
