"""Connectivity detectors: silence on an open connection, boot loops and reconnect storms.

Durations use the observed clock, or the zone-less log time when a log gave no zone.
"""

from __future__ import annotations

import polars as pl

from .registry import AnalysisContext, conn_code, detector
from .time import EVIDENCE_CAP, clock, human, seconds


def _intervals(ctx: AnalysisContext) -> pl.LazyFrame:
    """Heartbeat interval per charger from each accepted BootNotification response (``idx`` = from when)."""
    return (
        ctx.messages.filter(pl.col("message_type") == "CALLRESULT", pl.col("action") == "BootNotification")
        .select(
            "charge_point_id",
            "idx",
            interval=pl.col("payload").str.json_path_match("$.interval").cast(pl.Float64, strict=False),
        )
        .filter(pl.col("interval") > 0)
        .sort("idx")
    )


@detector(
    "heartbeat-gap",
    "warning",
    "connectivity",
    title="Charger silent on an open connection",
    explanation="""
    On a connection that stayed open, nothing was exchanged in either direction for longer than
    heartbeat_gap_factor (3 by default) times the charger's heartbeat interval (the interval the CSMS gave in
    its BootNotification response, else default_heartbeat_interval_s). A charger that is connected must send a
    Heartbeat (or any other message) at least every interval, so the CSMS may have marked it offline while
    sessions were running, meter values or status changes of that time may be missing, and remote commands
    would not have reached it. Typical causes: a half-open TCP connection (mobile network, NAT timeout), a
    charger's OCPP task stalled, or a proxy holding the connection without forwarding. Gaps across a
    reconnect or reboot (the next message is a BootNotification) and the edges of the capture are not
    counted. The value is the silence in seconds. Check the charger's network and its WebSocket ping
    settings.""",
)
def heartbeat_gap(ctx: AnalysisContext) -> pl.LazyFrame:
    o = ctx.options
    interval = pl.col("interval").fill_null(o.default_heartbeat_interval_s)
    limit = interval * o.heartbeat_gap_factor
    # One window over the connection's categorical code (numbers: a fifth less time than text) gives the
    # position of the connection's previous message; its values are gathered from there (three windows, one
    # per value: 134 -> 100 ms CPU on 1M messages).
    prev = pl.col("_prev")
    msgs = (
        ctx.messages.select("idx", "ts", "conn", "charge_point_id", "action", "message_type", t=clock(),
                            _conn=conn_code(ctx.messages))
        .filter(pl.col("t").is_not_null())
        .sort("idx")  # wire order; a clock going backwards gives a negative gap, never a finding
        .with_columns(_row=pl.int_range(pl.len(), dtype=pl.UInt32))
        .with_columns(_prev=pl.col("_row").shift(1).over("_conn"))
        .with_columns(
            prev_idx=pl.col("idx").gather(prev),
            prev_ts=pl.col("ts").gather(prev),
            gap=seconds(pl.col("t") - pl.col("t").gather(prev)),
        )
        .drop("_row", "_prev", "_conn")
        .filter(pl.col("prev_idx").is_not_null())
        .filter(~((pl.col("message_type") == "CALL") & (pl.col("action") == "BootNotification")))
    )
    intervals = _intervals(ctx).collect()  # (a few rows, read twice below)
    if o.heartbeat_gap_factor > 0:  # no gap under the smallest limit can be one: the as-of join reads only the rest
        shortest = intervals.select(pl.col("interval").min()).item()
        shortest = o.default_heartbeat_interval_s if shortest is None else min(shortest, o.default_heartbeat_interval_s)
        msgs = msgs.filter(pl.col("gap") > shortest * o.heartbeat_gap_factor)
    return (
        msgs.join_asof(
            intervals.lazy(),
            on="idx",
            by="charge_point_id",
            strategy="backward",
            check_sortedness=False,
        )
        .filter(pl.col("gap") > limit)
        .select(
            "charge_point_id",
            "conn",
            ts=pl.col("prev_ts"),
            evidence=pl.concat_list("prev_idx", "idx"),
            value="gap",
            summary=pl.format(
                "{} was silent for {} on an open connection (heartbeat interval {} s{}; limit {}).",
                pl.col("charge_point_id").fill_null(pl.col("conn")),
                human(pl.col("gap")),
                interval.round(0).cast(pl.Int64),
                pl.when(pl.col("interval").is_null()).then(pl.lit(", assumed")).otherwise(pl.lit("")),
                human(limit),
            ),
        )
    )


def _bursts(events: pl.LazyFrame, count: int, window_s: float) -> pl.LazyFrame:
    """Episodes of ``count`` or more events of one charger within ``window_s``.

    ``events``: charge_point_id, t (clock), ts, conn, ev (evidence idx). A row is hot when it and the
    ``count - 1`` events before it fit in the window; a run of hot rows plus the events that opened it is
    one episode. Returns charge_point_id, conn, ts, first, last, n, evidence.
    """
    cp = "charge_point_id"
    ev = (
        events.filter(pl.col("t").is_not_null())
        .sort(cp, "t")
        .with_columns(r=pl.int_range(pl.len()).over(cp))
        .with_columns(
            hot=(seconds(pl.col("t") - pl.col("t").shift(count - 1).over(cp)) <= window_s).fill_null(False)
        )
    )
    episodes = (
        ev.with_columns(
            ep=(pl.col("hot") != pl.col("hot").shift(1).over(cp).fill_null(False)).cum_sum().over(cp)
        )
        .filter("hot")
        .group_by(cp, "ep")
        .agg(lo=pl.col("r").min() - (count - 1), hi=pl.col("r").max())
    )
    return (
        episodes.join(ev, on=cp, how="inner")
        .filter(pl.col("r").is_between(pl.col("lo"), pl.col("hi")))
        .sort(cp, "ep", "t")
        .group_by(cp, "ep")
        .agg(
            ts=pl.col("ts").first(),
            conn=pl.col("conn").first(),
            first=pl.col("t").first(),
            last=pl.col("t").last(),
            n=pl.len(),
            evidence=pl.col("ev").head(EVIDENCE_CAP),
        )
    )


def _boots(ctx: AnalysisContext) -> pl.LazyFrame:
    return ctx.messages.filter(
        pl.col("message_type") == "CALL", pl.col("action") == "BootNotification"
    ).select("charge_point_id", "ts", "conn", t=clock(), ev="idx")


def _span(first: str, last: str) -> pl.Expr:
    return human(seconds(pl.col(last) - pl.col(first)))


@detector(
    "boot-loop",
    "error",
    "connectivity",
    title="Charger keeps rebooting",
    explanation="""
    The charger sent boot_loop_count (3 by default) or more BootNotifications within boot_loop_window_s
    (10 minutes by default): it restarts over and over, or its OCPP stack re-initialises. Each boot
    interrupts running sessions (transactions may never be stopped, or are stopped with reason Reboot or
    PowerLoss), loses meter values that were not yet sent, and may reset the charger's clock. Typical causes:
    a firmware crash or watchdog reset, a power supply problem, a CSMS that rejects the BootNotification (status
    Rejected or Pending) so the charger retries, or a configuration change that forces a reset. One finding per
    episode; the value is the number of boots. Check the BootNotification responses, the charger's reboot
    reason (2.x reason field) and its power supply.""",
)
def boot_loop(ctx: AnalysisContext) -> pl.LazyFrame:
    o = ctx.options
    return _bursts(_boots(ctx), o.boot_loop_count, o.boot_loop_window_s).select(
        "charge_point_id",
        "conn",
        "ts",
        "evidence",
        value=pl.col("n").cast(pl.Float64),
        summary=pl.format(
            "{} sent {} BootNotifications within {}.", "charge_point_id", "n", _span("first", "last")
        ),
    )


@detector(
    "reconnect-storm",
    "warning",
    "connectivity",
    title="Charger reconnects again and again",
    explanation="""
    The charger opened reconnect_storm_count (5 by default) or more WebSocket connections within
    reconnect_storm_window_s (10 minutes by default); when the source is a log without connection
    information, its BootNotifications stand for reconnections. Every reconnection risks losing messages in
    flight (a StopTransaction or MeterValues sent just before the drop), and many chargers reconnecting at once
    can overload a CSMS. Typical causes: an unstable network (mobile signal, Wi-Fi), a load balancer or proxy
    with a short idle timeout, a CSMS that closes the connection (authentication failure, duplicate connection
    with the same charge point id), or a charger that reconnects when a heartbeat goes unanswered. One
    finding per episode; the value is the number of connections. Check the close codes and reasons in the
    connections table and the network path.""",
)
def reconnect_storm(ctx: AnalysisContext) -> pl.LazyFrame:
    o = ctx.options
    conns = ctx.connections.filter(pl.col("charge_point_id").is_not_null(), pl.col("duplicate_of").is_null())
    many = conns.group_by("charge_point_id").agg(n_conns=pl.len()).filter(pl.col("n_conns") > 1)
    # the first message of each connection of those charge points only (one connection each is the usual case)
    firsts = (
        ctx.messages.join(conns.join(many, on="charge_point_id", how="semi").select("conn"), on="conn", how="semi")
        .group_by("conn")
        .agg(ev=pl.col("idx").min())
    )
    conns = conns.join(firsts, on="conn", how="left").select(
        "charge_point_id",
        "conn",
        "ev",
        ts=pl.coalesce("opened", "first_ts"),
        t=pl.coalesce("opened", "first_ts"),
    )
    events = pl.concat(
        [
            conns.join(many, on="charge_point_id", how="semi").select(
                "charge_point_id", "ts", "conn", "t", "ev"
            ),
            _boots(ctx).join(many, on="charge_point_id", how="anti"),
        ],
        how="vertical_relaxed",
    )
    return _bursts(events, o.reconnect_storm_count, o.reconnect_storm_window_s).select(
        "charge_point_id",
        "conn",
        "ts",
        "evidence",
        value=pl.col("n").cast(pl.Float64),
        summary=pl.format(
            "{} (re)connected {} times within {}.", "charge_point_id", "n", _span("first", "last")
        ),
    )
