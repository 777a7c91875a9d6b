"""The detector registry: what a detector is, the findings schema, thresholds, and the runner.

A detector is one small pure function::

    @detector("meter-regression", "error", "meter", title="...", explanation="...")
    def meter_regression(ctx: AnalysisContext) -> pl.LazyFrame: ...

It reads the lazy tables in ``ctx`` (never collects, never loops over rows in Python) and returns a
LazyFrame whose columns are a subset of :data:`FINDINGS`; missing ones are filled with nulls, ``code`` and
``severity`` default to the detector's own (a detector may lower a finding's severity to ``info`` when the
edges of the capture explain it, and say so in ``summary``). Findings carry ``ts`` (observed time), the
charge point, connection and transaction, and ``evidence``: the ``idx`` of the messages that prove them,
so one join leads from a finding to its frames.

Modules register their detectors on import; :data:`FAMILIES` lists them in report order.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace

import polars as pl

from ..tables.build import Tables
from ..tables.schemas import TS

SEVERITIES = ("error", "warning", "info")
SEVERITY_RANK = {"error": 0, "warning": 1, "info": 2}
FAMILIES = ("time", "transactions", "meter", "protocol", "connectivity")

FINDINGS: dict[str, pl.DataType] = {
    "code": pl.String(),
    "severity": pl.String(),  # error | warning | info
    "family": pl.String(),
    "charge_point_id": pl.String(),
    "conn": pl.String(),
    "connector_id": pl.Int64(),  # connector (1.6) or EVSE (2.x) when it matters
    "transaction_id": pl.String(),
    "ts": TS,  # observed time of the first evidence
    "summary": pl.String(),  # one plain sentence with the numbers
    "evidence": pl.List(pl.Int64()),  # messages.idx
    "evidence_ids": pl.List(pl.String()),  # the message ids, for grepping logs
    "value": pl.Float64(),  # the measured quantity (offset s, delta Wh, latency ms ...) when there is one
}


@dataclass(frozen=True)
class Options:
    """Every threshold a detector uses, with its default. CLI: ``--set name=value``."""

    clock_drift_s: float = 60.0  # payload time vs observed time
    clock_jump_s: float = 300.0  # payload clock moving against the observed clock between two messages
    future_s: float = 24 * 3600.0  # payload timestamp this far past the observed time
    unanswered_timeout_s: float = 30.0
    heartbeat_gap_factor: float = 3.0  # silent for more than N heartbeat intervals while connected
    default_heartbeat_interval_s: float = 300.0  # when no BootNotification response says it
    boot_loop_count: int = 3  # this many BootNotifications ...
    boot_loop_window_s: float = 600.0  # ... within this window
    reconnect_storm_count: int = 5  # connections per charge point ...
    reconnect_storm_window_s: float = 600.0  # ... within this window
    orphan_grace_s: float = 3600.0  # the capture continues this long after a start without a stop
    max_power_w: float = 400_000.0  # implied by two consecutive energy readings on one connector
    meter_reset_ratio: float = 0.01  # a drop to below this share of the previous value reads as a reset
    kwh_suspect_ratio: float = 500.0  # consecutive values differ by ~1000x: Wh/kWh confusion
    short_transaction_s: float = 0.0  # reserved

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


@dataclass
class AnalysisContext:
    """Lazy tables every detector reads, plus the options and the capture edges."""

    messages: pl.LazyFrame
    connections: pl.LazyFrame
    transactions: pl.LazyFrame
    meter_values: pl.LazyFrame
    statuses: pl.LazyFrame
    options: Options
    capture_start: object = None  # datetime | None (earliest observed ts over all sources)
    capture_end: object = None
    # Shared intermediate frames, materialised once by :func:`run` (None: each detector builds its own).
    references: pl.LazyFrame | None = None  # transactions.references(messages)
    meter_pairs: pl.LazyFrame | None = None  # meter.pairs on the keyed tables, shared by the meter detectors
    meter_readings: pl.LazyFrame | None = None  # meter.readings on the keyed tables (pairs, energy-implausible)
    meter_templates: pl.DataFrame | None = None  # derived.Derived.meter_templates (schema check)
    transaction_events: pl.DataFrame | None = None  # derived.transaction_event_fields, read once
    schema_classes: tuple | None = None  # schemas.untemplated_classes, computed on the second thread
    stamps: pl.LazyFrame | None = None  # the time detectors' stamped rows, from the compiled walker (derived.Walks)
    # the messages with meter samples, one row each (derived.Derived.sample_messages; None: read meter_values)
    sample_messages: pl.LazyFrame | None = None
    # every message and connection names its charge point: keying (derived.keyed) is the identity
    cp_complete: bool = False


@dataclass(frozen=True)
class Detector:
    code: str
    severity: str
    family: str
    title: str
    explanation: str
    fn: Callable[[AnalysisContext], pl.LazyFrame]


DETECTORS: dict[str, Detector] = {}


def detector(code: str, severity: str, family: str, *, title: str, explanation: str):
    """Register a detector function under a stable kebab-case code."""
    assert severity in SEVERITIES and family in FAMILIES, (code, severity, family)

    def wrap(fn: Callable[[AnalysisContext], pl.LazyFrame]) -> Callable[[AnalysisContext], pl.LazyFrame]:
        if code in DETECTORS:
            raise ValueError(f"detector {code} registered twice")
        DETECTORS[code] = Detector(code, severity, family, title, " ".join(explanation.split()), fn)
        return fn

    return wrap


def text_code(column: str) -> pl.Expr:
    """A text column's categorical code (UInt32; null for null): the same groups as the text, for windows,
    group-bys and keys made of numbers instead of text."""
    return pl.col(column).cast(pl.Categorical).to_physical()


#: the analysis' messages carry each row's connection as one number (see :func:`run`)
CONN_CODE = "_conn_code"


def conn_code(messages: pl.LazyFrame) -> pl.Expr:
    """One number per connection (``conn``), for windows and group-bys over the messages (a text key hashes and
    compares every row's text): the column :func:`run` adds, else the categorical code, computed."""
    if CONN_CODE in messages.collect_schema().names():
        return pl.col(CONN_CODE)
    return text_code("conn")


def side_code(messages: pl.LazyFrame) -> pl.Expr:
    """One number per side of a connection (``conn`` and ``direction``: 0 null, 1 cp->csms, 2 csms->cp, 3
    other), the same groups as the two columns (a window or group-by by them row-encodes the text)."""
    d = pl.col("direction")
    code = pl.when(d.is_null()).then(0).when(d == "cp->csms").then(1).when(d == "csms->cp").then(2).otherwise(3)
    # (a null conn is a group of its own, as in a group-by by the columns: a code above every categorical's)
    return conn_code(messages).cast(pl.UInt64).fill_null(1 << 32) * 4 + code.cast(pl.UInt64)


def conform_findings(lf: pl.LazyFrame, d: Detector) -> pl.LazyFrame:
    names = lf.collect_schema().names()
    cols = []
    for name, dtype in FINDINGS.items():
        if name in names:
            cols.append(pl.col(name).cast(dtype))
        elif name == "code":
            cols.append(pl.lit(d.code).alias(name))
        elif name == "severity":
            cols.append(pl.lit(d.severity).alias(name))
        elif name == "family":
            cols.append(pl.lit(d.family).alias(name))
        else:
            cols.append(pl.lit(None, dtype=dtype).alias(name))
    return lf.select(cols)


@dataclass
class Analysis:
    findings: pl.DataFrame
    transactions: pl.DataFrame
    meter_values: pl.DataFrame  # every sample, or only the energy register's (``run(meter_values=False)``)
    statuses: pl.DataFrame
    tables: Tables
    options: Options = field(default_factory=Options)


def _load_detectors() -> None:
    from . import connectivity, meter, protocol, time, transactions  # noqa: F401 - registration


class _Timer:
    """Per-step wall and CPU seconds on stderr when ``OCPPTOOL_TIMINGS=1`` (for the analysis benchmark).

    Timed runs collect each detector on its own, so shared plan nodes are computed once per detector that
    reads them: the per-detector figures then include their share of that work, and their sum exceeds the
    untimed total.
    """

    def __init__(self, enabled: bool = True) -> None:
        value = os.environ.get("OCPPTOOL_TIMINGS", "") if enabled else ""
        self.enabled = value not in ("", "0")
        # ``OCPPTOOL_TIMINGS=together``: the shared steps timed, the detectors collected together as in an
        # untimed run (one step for all of them): the real total, without the per-detector split
        self.per_detector = self.enabled and value != "together"
        self._last = self._now()

    @staticmethod
    def _now() -> tuple[float, float]:
        t = os.times()
        return time.perf_counter(), t.user + t.system

    def step(self, label: str) -> None:
        if self.enabled:
            now = self._now()
            wall, cpu = now[0] - self._last[0], now[1] - self._last[1]
            print(f"timing {label:34s} wall {wall:7.3f} s  cpu {cpu:7.3f} s", file=sys.stderr, flush=True)
            self._last = self._now()


_USES_REFERENCES = {"unknown-transaction", "duplicate-transaction", "invalid-transaction-id", "event-after-end"}


def _derive(tables: Tables, options: Options, timer: _Timer, events=None, walks=None,
            stamps=None, energy_only: bool = False, cp_complete: bool = False) -> tuple[AnalysisContext, object, tuple]:
    """The derived tables, materialised once (every detector reads them; re-deriving them per detector, a lazy
    plan per consumer, would parse the payloads many times over), on a context."""
    from .derived import derive

    msgs = tables.messages.lazy()
    derived = derive(msgs, on_step=timer.step, events=events, walks=walks, energy_only=energy_only,
                     cp_complete=cp_complete)
    assert derived.sample_messages is not None
    transactions, meter_values, statuses, sampled = pl.collect_all(
        [derived.transactions, derived.meter_values, derived.statuses, derived.sample_messages]
    )
    timer.step("derived tables")
    ts = tables.messages["ts"]
    ctx = AnalysisContext(
        messages=msgs,
        connections=tables.connections.lazy(),
        transactions=transactions.lazy(),
        meter_values=meter_values.lazy(),
        statuses=statuses.lazy(),
        options=options,
        capture_start=ts.min(),
        capture_end=ts.max(),
        meter_templates=derived.meter_templates,
        transaction_events=derived.transaction_events,
        stamps=stamps,
        sample_messages=sampled.lazy(),
        cp_complete=cp_complete,
    )
    return ctx, derived, (transactions, meter_values, statuses)


def _plans(ctx: AnalysisContext, derived, chosen: list[Detector], timer: _Timer) -> list[pl.LazyFrame]:
    """The shared frames the chosen detectors need (materialised), then each detector's plan."""
    if any(d.code in _USES_REFERENCES for d in chosen):
        from .transactions import references

        found = derived.references  # (read by the compiled walker)
        if found is None:
            found = references(ctx.messages, derived.meter_ids, derived.transaction_events).collect()
        ctx.references = found.lazy()
        timer.step("transaction references")
    if any(d.family == "meter" for d in chosen):
        from .derived import keyed_context
        from .meter import pairs, readings

        ctx.meter_readings = readings(keyed_context(ctx))
        ctx.meter_pairs = pairs(keyed_context(ctx)).collect().lazy()
        timer.step("meter pairs")
    if timer.per_detector and ctx.schema_classes is None and any(d.code == "schema-violation" for d in chosen):
        from .schemas import untemplated_classes
        from .walk import available

        if available():  # (a real run computes them on the second thread; timed apart here)
            ctx.schema_classes = untemplated_classes(ctx.messages)
            timer.step("schema classes")
    return [conform_findings(d.fn(ctx), d) for d in chosen]


def _collect(plans: list[pl.LazyFrame], chosen: list[Detector], timer: _Timer) -> list[pl.DataFrame]:
    if timer.per_detector:
        found = []
        for d, plan in zip(chosen, plans, strict=True):
            found.append(plan.collect())
            timer.step(d.code)
        return found
    found = pl.collect_all(plans) if plans else []
    timer.step("detectors (collected together)")
    return found


# Detectors that read only the messages and connections (not the derived tables): an untimed run collects them
# on a second thread while the derived tables are built, since most string work in Polars runs on one core.
# Their plans are built on a context without derived tables, so one that reads them fails loudly in the tests.
_MESSAGES_ONLY = {
    "clock-drift", "clock-jump", "timestamp-in-future", "epoch-timestamp", "heartbeat-gap", "boot-loop",
    "reconnect-storm", "unanswered-call", "call-error", "orphan-response", "duplicate-message-id",
    "concurrent-calls",
}  # fmt: skip


def _enum_values() -> list[str]:
    from .schemas import enum_values

    return enum_values()


def run(tables: Tables, options: Options | None = None, *, only: list[str] | None = None,
        meter_values: bool = True) -> Analysis:
    """Build the derived tables and run every detector (or ``only`` these codes).

    ``meter_values=False``: the analysis' meter_values table holds only the energy register's samples (all
    the detectors read; the findings are the same), for a run that does not export its tables: on a usual
    fleet that is a quarter of the samples, built and kept."""
    from concurrent.futures import ThreadPoolExecutor

    _load_detectors()
    timer = _Timer()
    options = options or Options()
    chosen = [d for c, d in DETECTORS.items() if only is None or c in only]
    early = [] if timer.per_detector else [d for d in chosen if d.code in _MESSAGES_ONLY]
    from .derived import names_every_charge_point
    from .walk import available

    # One chunk per column: the messages come in pieces (one per block read), and Polars concatenates the pieces
    # of a filter's or a join's result again in every query, copying the payload text that a view no longer
    # covers densely (~0.3 CPU s over an analysis of 1M messages); concatenated once here, cheaply (the pieces
    # are whole).
    # The message type, action, direction, version and source as categoricals: the detectors filter the
    # messages by the first ones ~40 times (`action == "StartTransaction"`, `is_in` of actions), a comparison of
    # every row's text (memcmp: most actions are longer than a view's 12 inline bytes) that compares one number
    # per row on a categorical (cast once: ~50 CPU ms; the run on 1M messages: ~0.3 CPU s less; the version,
    # read by the schema check's replace and cast, ~45 ms more); unanswered-call and orphan-response group
    # every message by its source (the file's path: one long text hashed per row; ~90 CPU ms less). The derived
    # tables cast their columns to their schemas; the caller's tables are returned unchanged. charge_point_id and
    # conn stay text (they join the connections and the derived tables); each connection's code rides along
    # (CONN_CODE: windows and group-bys by connection or side, see side_code).
    given = tables
    tables = replace(tables, messages=tables.messages.rechunk().with_columns(
        pl.col("message_type", "action", "direction", "ocpp_version", "source").cast(pl.Categorical),
        **{CONN_CODE: text_code("conn")}))
    # (usual: then no detector builds a stand-in charge point for each of the messages)
    cp_complete = names_every_charge_point(tables.messages, tables.connections)
    schema = [d for d in chosen if d.code == "schema-violation" and not timer.per_detector]
    walks = stamps = None
    with ThreadPoolExecutor(max_workers=1) as pool:
        if available():  # the payloads read once, in C: derived tables, time detectors, schema classes
            from .derived import keyed, walk_calls

            enums = None
            if schema:  # (the schema files are read on the second thread while the rows are selected; jsonschema
                # is imported there later, for the check: the walk waits only for the enum values)
                enums = pool.submit(_enum_values).result
            walks = walk_calls(keyed(tables.messages.lazy(), cp_complete), energy_only=not meter_values,
                               cp_complete=cp_complete, enums=enums)
            stamps = walks.stamps()
            timer.step("payloads walked")
        pending = events = None

        # the TransactionEvent fields first: the derived tables wait for them (the compiled walker reads them itself)
        if not timer.per_detector and not available():
            from .derived import transaction_event_fields

            events = pool.submit(transaction_event_fields(tables.messages.lazy()).collect).result
        ts = tables.messages["ts"]
        bare = AnalysisContext(
            messages=tables.messages.lazy(), connections=tables.connections.lazy(), transactions=None,  # type: ignore[arg-type]
            meter_values=None, statuses=None, options=options, capture_start=ts.min(), capture_end=ts.max(),  # type: ignore[arg-type]
            stamps=stamps, cp_complete=cp_complete,
        )  # fmt: skip
        if early:
            pending = pool.submit(pl.collect_all, [conform_findings(d.fn(bare), d) for d in early])
        checked = None
        if schema:  # its payload classes need no derived table
            if walks is not None:  # every payload classed in C: the whole check needs none, and runs there too
                walked_keys = walks.class_keys()

                def check() -> pl.DataFrame:
                    from .schemas import untemplated_classes

                    on_bare = replace(bare, schema_classes=untemplated_classes(bare.messages, walked_keys))
                    return conform_findings(schema[0].fn(on_bare), schema[0]).collect()

                checked = pool.submit(check)
            else:  # the MeterValues are classed through the derived tables' templates: the detector runs last
                from .schemas import untemplated_classes

                classes = pool.submit(untemplated_classes, tables.messages.lazy(), None)
        ctx, derived, (transactions, samples, statuses) = _derive(tables, options, timer, events, walks, stamps,
                                                                  energy_only=not meter_values,
                                                                  cp_complete=cp_complete)
        later = [d for d in chosen if d not in early and d not in schema]
        # The meter detectors' shared frames (register readings, then pairs) are chains of steps that keep
        # about one core busy: built and collected on a thread of their own while the other detectors on the
        # derived tables are collected here.
        meter = [] if timer.per_detector else [d for d in later if d.family == "meter"]
        rest = [d for d in later if d not in meter]
        quiet = _Timer(False)  # (one thread's steps interleave with the other's: not timed apart)
        with ThreadPoolExecutor(max_workers=1) as side:
            metered = side.submit(lambda: _collect(_plans(ctx, derived, meter, quiet), meter, quiet)) if meter else None
            found = dict(zip(rest, _collect(_plans(ctx, derived, rest, timer), rest, timer), strict=True))
            if metered is not None:
                found.update(zip(meter, metered.result(), strict=True))
                timer.step("meter detectors on their thread (waited for)")
        if checked is not None:
            found[schema[0]] = checked.result()
            timer.step("schema-violation on the second thread (waited for)")
        elif schema:
            ctx.schema_classes = classes.result()
            found[schema[0]] = conform_findings(schema[0].fn(ctx), schema[0]).collect()
            timer.step("schema-violation (classes from the second thread)")
        if pending is not None:
            found.update(zip(early, pending.result(), strict=True))
            timer.step("detectors on the second thread (waited for)")
    ordered = [found[d] for d in chosen]
    findings = (
        pl.concat(ordered, how="vertical") if ordered else pl.DataFrame(schema=FINDINGS)
    ).with_columns(_rank=pl.col("severity").replace_strict(SEVERITY_RANK, default=9))
    # Fully ordered (first evidence row, then the summary, break ties: one message can break a schema in
    # several ways), so the same input always gives the same report.
    findings = (
        findings.with_columns(_first=pl.col("evidence").list.first())
        .sort(["_rank", "code", "ts", "charge_point_id", "_first", "transaction_id", "summary"], nulls_last=True)
        .drop("_rank", "_first")
    )
    timer.step("findings sorted")
    return Analysis(findings, transactions, samples, statuses, given, options)
