"""Protocol detectors: the OCPP-J request/response discipline and the official JSON schemas.

They read the correlation the table builder already did (``call_index`` / ``response_index``), so each is a
few filters and window expressions over the messages table. Durations use the observed clock, or the
zone-less log time when a log gave no zone (differences are still right).
"""

from __future__ import annotations

import polars as pl

from .registry import AnalysisContext, detector, side_code
from .time import EVIDENCE_CAP, clock, human, seconds

RESPONSES = ["CALLRESULT", "CALLERROR", "CALLRESULTERROR"]
ERRORS = ["CALLERROR", "CALLRESULTERROR"]

#: the error codes OCPP-J 1.6 and 2.x define (both spellings the specifications use)
STANDARD_ERROR_CODES = [
    "NotImplemented", "NotSupported", "InternalError", "ProtocolError", "SecurityError", "FormationViolation",
    "FormatViolation", "PropertyConstraintViolation", "OccurenceConstraintViolation",
    "OccurrenceConstraintViolation", "TypeConstraintViolation", "GenericError", "MessageTypeNotSupported",
    "RpcFrameworkError",
]  # fmt: skip


def _side(direction: str | pl.Expr = "direction") -> pl.Expr:
    d = pl.col(direction) if isinstance(direction, str) else direction
    return (
        pl.when(d == "cp->csms")
        .then(pl.lit("the charger"))
        .when(d == "csms->cp")
        .then(pl.lit("the CSMS"))
        .otherwise(pl.lit("an unknown side"))
    )


def _ends(ctx: AnalysisContext) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """(per source: first and last clock of the capture or log; per connection: its close time)."""
    sources = ctx.messages.group_by("source").agg(source_start=clock().min(), source_end=clock().max())
    conns = ctx.connections.select("conn", "closed").unique("conn")
    return sources, conns


@detector(
    "unanswered-call",
    "error",
    "protocol",
    title="Call never answered",
    explanation="""
    A request (CALL) got no response (neither CALLRESULT nor CALLERROR) within unanswered_timeout_s (30 s
    by default), or before the connection closed, or the peer answered later requests of the same side but
    never this one (OCPP-J answers in order, so its answer is not coming). The sender times out and either
    retries or gives up: an unanswered StartTransaction or StopTransaction can leave a session unbilled or
    billed twice, an unanswered MeterValues loses energy data, a CSMS command (remote start, change
    configuration) that the charger never answers leaves the operator unsure whether it happened. Typical
    causes: the receiving side crashed or threw in its handler without sending a CALLERROR, an unknown
    action silently ignored, a message lost on a flaky connection, or a proxy that drops frames. Check the
    receiver's logs around that time for an exception. When the capture ends before the timeout could expire
    the finding is only info. A response that came, but after the timeout, is a warning.""",
)
def unanswered_call(ctx: AnalysisContext) -> pl.LazyFrame:
    timeout = ctx.options.unanswered_timeout_s
    sources, conns = _ends(ctx)
    late_s = pl.col("latency_ms") / 1000
    all_calls = ctx.messages.filter(pl.col("message_type") == "CALL").drop("latency_ms")
    # the calls to report: never answered, or answered late (the latency is on the answer's row); and the last
    # answered call of each side of each connection (a group-by, then a join of the few reported calls)
    late = ctx.messages.filter(pl.col("call_index").is_not_null(), late_s > timeout).select(
        response_index="idx", latency_ms="latency_ms"
    )
    # (per side: one number, see side_code)
    all_calls = all_calls.with_columns(_side=side_code(ctx.messages))
    last_answered = all_calls.filter(pl.col("response_index").is_not_null()).group_by("_side").agg(_last=pl.col("idx").max())
    calls = (
        pl.concat([
            all_calls.filter(pl.col("response_index").is_null()).with_columns(latency_ms=pl.lit(None, pl.Float64)),
            all_calls.join(late, on="response_index", how="inner"),
        ], how="vertical_relaxed")
        .join(last_answered, on="_side", how="left", nulls_equal=True)
        .with_columns(t=clock(), later_answered=(pl.col("_last") > pl.col("idx")).fill_null(False))
    )  # fmt: skip
    remaining = seconds(pl.col("source_end") - pl.col("t"))
    closed_after = seconds(pl.col("closed") - pl.col("t"))
    what = pl.format("{} CALL {} ({}) from {}", "action", "message_id", "charge_point_id", _side())
    return (
        calls.join(sources, on="source", how="left")
        .join(conns, on="conn", how="left")
        .select(
            "charge_point_id",
            "conn",
            "ts",
            evidence=pl.concat_list("idx", "response_index").list.drop_nulls(),
            evidence_ids=pl.concat_list("message_id"),
            severity=pl.when(pl.col("response_index").is_not_null())
            .then(pl.lit("warning"))
            .when(
                pl.col("later_answered")
                | (remaining >= timeout)
                | pl.col("closed").is_not_null()
                | pl.col("t").is_null()
            )
            .then(pl.lit("error"))
            .otherwise(pl.lit("info")),
            value=pl.when(pl.col("response_index").is_not_null())
            .then(late_s)
            .otherwise(pl.coalesce(closed_after, remaining)),
            summary=pl.when(pl.col("response_index").is_not_null())
            .then(
                pl.format(
                    "{} was answered only after {} (timeout {} s).", what, human(late_s), pl.lit(timeout)
                )
            )
            .when(pl.col("closed").is_not_null() & (closed_after < timeout))
            .then(
                pl.format(
                    "{} got no answer before the connection closed {} later.", what, human(closed_after)
                )
            )
            .when(pl.col("later_answered"))
            .then(pl.format("{} got no answer, though later calls from the same side were answered.", what))
            .when(remaining >= timeout)
            .then(pl.format("{} got no answer in the {} the capture continued.", what, human(remaining)))
            .when(pl.col("t").is_null())
            .then(pl.format("{} got no answer.", what))
            .otherwise(
                pl.format(
                    "{} got no answer, but the capture ends {} later, before the {} s timeout.",
                    what,
                    human(remaining),
                    pl.lit(timeout),
                )
            ),
        )
    )


@detector(
    "call-error",
    "warning",
    "protocol",
    title="Call answered with an error",
    explanation="""
    A request was answered with a CALLERROR (or a 2.1 CALLRESULTERROR) instead of a result, so the
    requested operation did not happen: a rejected MeterValues loses energy data for billing, a rejected
    StartTransaction or TransactionEvent can leave a session unknown to the CSMS, a rejected CSMS command did
    not reach the charger. The error code says why: NotImplemented/NotSupported (the receiver does not know
    the action), FormationViolation/PropertyConstraintViolation/TypeConstraintViolation (the payload broke
    the schema), InternalError/GenericError (the receiver's handler failed). Codes outside the OCPP-J set
    (for example an HTTP path or a free-text message as the code) show an implementation that does not follow
    the specification and that the sender cannot interpret. Identical errors (same code and action) of one
    charger are grouped into one finding; the value is how many there were. Check the receiver's logs and the
    error description for the cause.""",
)
def call_error(ctx: AnalysisContext) -> pl.LazyFrame:
    code = pl.col("error_code").fill_null("")
    std = code.is_in(STANDARD_ERROR_CODES)
    return (
        ctx.messages.filter(pl.col("message_type").is_in(ERRORS))
        .sort("idx")
        .group_by("charge_point_id", "action", "error_code", "direction")
        .agg(
            ts=pl.col("ts").first(),
            conn=pl.col("conn").first(),
            n=pl.len(),
            evidence=pl.col("idx"),
            evidence_ids=pl.col("message_id").head(EVIDENCE_CAP),
            description=pl.col("error_description").first(),
        )
        .select(
            "charge_point_id",
            "conn",
            "ts",
            "evidence",
            "evidence_ids",
            value=pl.col("n").cast(pl.Float64),
            summary=pl.format(
                "{} {} call(s) on {} answered by {} with error {}{}{}.",
                "n",
                pl.col("action").fill_null("(unknown action)"),
                pl.col("charge_point_id").fill_null("(unknown charger)"),
                _side(),
                pl.format('"{}"', code),
                pl.when(std).then(pl.lit("")).otherwise(pl.lit(" (not a standard OCPP-J error code)")),
                pl.when(pl.col("description").fill_null("") != "")
                .then(pl.format(': "{}"', pl.col("description").str.slice(0, 120)))
                .otherwise(pl.lit("")),
            ),
        )
    )


@detector(
    "orphan-response",
    "warning",
    "protocol",
    title="Response to no request",
    explanation="""
    A CALLRESULT or CALLERROR whose message id matches no earlier request on that connection in the other
    direction. Either the request was lost or never logged, the responder echoed a wrong id, or it answered
    twice. The sender cannot match such a response, so whatever it carries (an accepted authorisation, a
    transaction id) is lost, and the sender times out on its real request. When the response comes within
    unanswered_timeout_s of the start of the capture or log its request most likely came just before the
    capture began, and the finding is only info. Check that ids are echoed verbatim and that a proxy does not
    duplicate frames.""",
)
def orphan_response(ctx: AnalysisContext) -> pl.LazyFrame:
    timeout = ctx.options.unanswered_timeout_s
    sources, _ = _ends(ctx)
    since = seconds(clock() - pl.col("source_start"))
    edge = (since < timeout).fill_null(False)
    return (
        ctx.messages.filter(pl.col("message_type").is_in(RESPONSES), pl.col("call_index").is_null())
        .join(sources, on="source", how="left")
        .select(
            "charge_point_id",
            "conn",
            "ts",
            evidence=pl.concat_list("idx"),
            evidence_ids=pl.concat_list("message_id"),
            severity=pl.when(edge).then(pl.lit("info")).otherwise(pl.lit("warning")),
            value=since,
            summary=pl.format(
                "{} {} from {} on {} answers no request{}.",
                "message_type",
                "message_id",
                _side(),
                pl.col("charge_point_id").fill_null(pl.col("conn")),
                pl.when(edge)
                .then(
                    pl.format(", {} after the capture starts: its request was likely before it", human(since))
                )
                .otherwise(pl.lit("")),
            ),
        )
    )


@detector(
    "duplicate-message-id",
    "warning",
    "protocol",
    title="Message id reused",
    explanation="""
    Two requests on one connection from the same side carry the same message id while the first is still
    waiting for its answer, or within unanswered_timeout_s of each other. OCPP-J requires a unique id per
    outstanding request, because the response is matched by id alone: the receiver may answer the wrong
    request or drop the second as a duplicate, so for example a StopTransaction can be taken for a retry of a
    MeterValues. Typical causes: a counter that restarts at 1 after a reconnect or reboot, a fixed id, or a
    retry that re-sends with the same id before the first timed out. Check the sender's id generation.""",
)
def duplicate_message_id(ctx: AnalysisContext) -> pl.LazyFrame:
    key = ["conn", "direction", "message_id"]
    prev_t = pl.col("t").shift(1).over(key)
    prev_resp = pl.col("response_index").shift(1).over(key)
    prev_idx = pl.col("idx").shift(1).over(key)
    gap = seconds(pl.col("t") - pl.col("prev_t"))
    open_ = (pl.col("prev_resp") > pl.col("idx")).fill_null(False)
    soon = (gap <= ctx.options.unanswered_timeout_s).fill_null(pl.col("prev_resp").is_null())
    # Rows whose key's hash repeats first (each column hashed alone, the hashes mixed: half the time of the
    # exact test of the three text columns as one struct, which encodes every row), then the exact test on
    # those few rows: reuse is rare, and rows with equal keys have equal hashes.
    mixed = pl.lit(0, pl.UInt64)
    for seed, c in enumerate(key, 11):
        mixed = mixed * 0x9E3779B97F4A7C15 + pl.col(c).hash(seed)
    return (
        ctx.messages.filter(pl.col("message_type") == "CALL")
        .filter(mixed.is_duplicated())
        .filter(pl.struct(key).is_duplicated())
        .sort("idx")
        .with_columns(t=clock())
        .with_columns(prev_t=prev_t, prev_resp=prev_resp, prev_idx=prev_idx)
        .filter(pl.col("prev_idx").is_not_null(), open_ | soon)
        .select(
            "charge_point_id",
            "conn",
            "ts",
            evidence=pl.concat_list("prev_idx", "idx"),
            evidence_ids=pl.concat_list("message_id"),
            value=gap,
            summary=pl.format(
                "{} reused message id {} for {} {}.",
                _side(),
                "message_id",
                pl.col("action").fill_null("a request"),
                pl.when(open_)
                .then(pl.lit("while the first request with that id was still open"))
                .otherwise(pl.format("{} after the first request with that id", human(gap.fill_null(0)))),
            ),
        )
    )


@detector(
    "concurrent-calls",
    "warning",
    "protocol",
    title="More than one request in flight",
    explanation="""
    One side of a connection sent a new request before the previous one was answered. OCPP-J allows only
    one outstanding CALL per side: a receiver that follows the rule may ignore or reject the extra requests,
    or answer them in an order the sender does not expect, so status changes, authorisations or meter values
    can get lost or applied out of order. Typical causes: a firmware that sends events from several tasks
    without a send queue, or a CSMS that pushes commands without waiting. One finding per episode (a stretch
    during which that side always had a request open); the value is the most requests in flight at once.
    Requests that never got an answer are not counted as open (see unanswered-call). Check the sender's
    message queue.""",
)
def concurrent_calls(ctx: AnalysisContext) -> pl.LazyFrame:
    calls = ctx.messages.filter(pl.col("message_type") == "CALL").select(
        "idx", "ts", "conn", "charge_point_id", "direction", "response_index", _side=side_code(ctx.messages)
    )
    side = "_side"  # (conn and direction as one number: windows and group-bys by it need no row encoding)
    # cheap pass: sides where some call starts while an earlier one is still open (rare in clean traffic)
    reach = pl.coalesce("response_index", "idx").cum_max().shift(1).over(side)
    busy = calls.sort("idx").filter(reach > pl.col("idx")).select(side).unique()
    calls = calls.join(busy, on=side, how="semi", nulls_equal=True)
    starts = calls.select(
        side, "conn", "direction", "idx", "ts", "charge_point_id", pos=pl.col("idx").cast(pl.Float64),
        step=pl.lit(1),
    )
    ends = calls.select(
        side, "conn", "direction",
        idx=pl.lit(None, dtype=pl.Int64),
        ts=pl.lit(None, dtype=pl.Datetime("us", "UTC")),
        charge_point_id=pl.lit(None, dtype=pl.String),
        # an unanswered call is open only for an instant: it is unanswered-call's business, not this one's
        pos=pl.coalesce(pl.col("response_index").cast(pl.Float64), pl.col("idx") + 0.5),
        step=pl.lit(-1),
    )  # fmt: skip
    in_flight = pl.col("step").cum_sum().over(side)
    period = ((pl.col("step") == 1) & (pl.col("n") == 1)).cum_sum().over(side)
    return (
        pl.concat([starts, ends], how="vertical_relaxed")
        .sort(side, "pos")
        .with_columns(n=in_flight)
        .with_columns(period=period)
        .group_by(side, "period")
        .agg(
            pl.col("conn", "direction").first(),
            most=pl.col("n").max(),
            calls=pl.col("idx").drop_nulls().len(),
            ts=pl.col("ts").drop_nulls().first(),
            charge_point_id=pl.col("charge_point_id").drop_nulls().first(),
            evidence=pl.col("idx").drop_nulls().head(EVIDENCE_CAP),
        )
        .filter(pl.col("most") > 1)
        .select(
            "charge_point_id",
            "conn",
            "ts",
            "evidence",
            value=pl.col("most").cast(pl.Float64),
            summary=pl.format(
                "{} had up to {} requests in flight at once on {} ({} requests in this stretch); OCPP-J allows one.",
                _side(),
                "most",
                pl.col("charge_point_id").fill_null(pl.col("conn")),
                "calls",
            ),
        )
    )


@detector(
    "schema-violation",
    "warning",
    "protocol",
    title="Payload breaks the official OCPP schema",
    explanation="""
    The payload of a request or of a result does not match the official OCPP JSON schema for its version and
    action: a required field is missing, a value is not one of the allowed ones, a string is longer than the
    specification allows (CiString20, CiString50 ...), a number is sent as a string, or an unknown field is
    present. A strict receiver rejects such a message (FormationViolation, PropertyConstraintViolation) and
    the data in it is lost; a lenient one accepts it and stores what may be truncated or misread, for example
    a meter value in the wrong unit or a charge point model cut at 20 characters. Typical causes: firmware
    built for another OCPP version, vendor extensions put in the payload instead of DataTransfer, or a
    serial number or model longer than the limit. One finding per charger, action and error; the value is how
    many messages broke the rule. Compare the payload with the schema named in the summary.""",
)
def schema_violation(ctx: AnalysisContext) -> pl.LazyFrame:
    # (imported here: the schemas module reads the schema files, which a run does on its second thread)
    from . import schemas

    return schemas.violations(
        ctx.messages, EVIDENCE_CAP, meter_templates=ctx.meter_templates, prepared=ctx.schema_classes
    )
