"""The readable summary `ocpptool decode` prints when no output file is given."""

from __future__ import annotations

from datetime import datetime

import polars as pl
from rich.console import Console
from rich.table import Table

from .tables.build import Tables


def _fmt_ts(ts: datetime | None, ms: bool = False) -> str:
    if not ts:
        return "-"
    return ts.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC" if ms else ts.strftime("%Y-%m-%d %H:%M:%S")


def _span(a: datetime | None, b: datetime | None) -> str:
    if not a or not b:
        return "unknown"
    secs = int((b - a).total_seconds())
    h, rem = divmod(secs, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h {m:02d}m {s:02d}s"


def print_summary(tables: Tables, console: Console, *, sources: list[str]) -> None:
    m, w, c = tables.messages, tables.weirds, tables.connections
    first, last = (m["ts"].min(), m["ts"].max()) if m.height else (None, None)
    cps = m["charge_point_id"].drop_nulls().n_unique()
    console.print(
        f"[bold]{m.height:,}[/] messages from {len(sources)} source{'s' if len(sources) != 1 else ''}, "
        f"{cps} charge point{'s' if cps != 1 else ''}, {w.height:,} weird{'s' if w.height != 1 else ''}"
    )
    if first is None and m.height and m["ts_local"].null_count() < m.height:
        lf, ll = m["ts_local"].min(), m["ts_local"].max()
        console.print(
            f"time span: {str(lf)[:23]} -> {str(ll)[:23]} local time, zone unknown ({_span(lf, ll)}; "  # type: ignore[arg-type]
            "pass --log-tz to place it)"
        )
    else:
        console.print(f"time span: {_fmt_ts(first, True)} -> {_fmt_ts(last, True)} ({_span(first, last)})")  # type: ignore[arg-type]
    if m.height:
        types = m.group_by("message_type").len().sort(["len", "message_type"], descending=[True, False])
        console.print("types: " + ", ".join(f"{t} {n:,}" for t, n in types.iter_rows()))
        unanswered = m.filter((pl.col("message_type") == "CALL") & pl.col("response_index").is_null()).height
        orphans = m.filter(
            pl.col("message_type").is_in(["CALLRESULT", "CALLERROR", "CALLRESULTERROR"]) & pl.col("call_index").is_null()
        ).height
        console.print(f"unanswered calls: {unanswered:,}, orphan responses: {orphans:,}")

    non_ocpp = c.filter(pl.col("ocpp").not_() | pl.col("duplicate_of").is_not_null()) if c.height else c
    c = c.filter(pl.col("ocpp").fill_null(True) & pl.col("duplicate_of").is_null()) if c.height else c
    if c.height:
        t = Table(title="by charge point", title_justify="left", show_edge=False)
        for col in ("charge point", "version", "messages", "calls", "unanswered", "weirds", "first", "last"):
            t.add_column(col, justify="right" if col in ("messages", "calls", "unanswered", "weirds") else "left",
                         no_wrap=True)
        per_cp = (
            c.group_by("charge_point_id", maintain_order=True)
            .agg(
                pl.col("ocpp_version").drop_nulls().unique().sort().str.join("/"),
                pl.col("version_inferred").all(),
                pl.col("messages").sum(),
                pl.col("calls").sum(),
                pl.col("unanswered_calls").sum(),
                pl.col("weirds").sum(),
                pl.col("first_ts").min(),
                pl.col("last_ts").max(),
            )
            .sort("charge_point_id", nulls_last=True)
        )
        for cp, ver, inferred, n, calls, un, wn, f, la in per_cp.iter_rows():
            version = (ver or "?") + (" (inferred)" if inferred and ver else "")
            t.add_row(cp or "(unknown)", version, f"{n:,}", f"{calls:,}", f"{un:,}", f"{wn:,}",
                      _fmt_ts(f), _fmt_ts(la))
        console.print(t)

    if m.height:
        by_action = (
            m.with_columns(pl.col("action").fill_null("(uncorrelated)"))
            .pivot(on="message_type", index="action", values="idx", aggregate_function="len")
            .fill_null(0)
        )
        order = [x for x in ("CALL", "CALLRESULT", "CALLERROR", "CALLRESULTERROR", "SEND") if x in by_action.columns]
        by_action = by_action.with_columns(_total=pl.sum_horizontal(order)).sort("_total", descending=True)
        t = Table(title="by action", title_justify="left", show_edge=False)
        t.add_column("action", no_wrap=True)
        for col in order:
            t.add_column(col, justify="right")
        for row in by_action.iter_rows(named=True):
            t.add_row(row["action"], *(f"{row[col]:,}" for col in order))
        console.print(t)

    if w.height:
        t = Table(title="weirds by reason", title_justify="left", show_edge=False)
        for col in ("reason", "count", "first seen", "example"):
            t.add_column(col, justify="right" if col == "count" else "left", overflow="fold")
        per = w.group_by("reason", maintain_order=True).agg(
            pl.len(), pl.col("source").first(), pl.col("source_pos").first(), pl.col("detail").first()
        )
        for reason, n, src, pos, detail in per.sort("len", descending=True).iter_rows():
            t.add_row(reason, f"{n:,}", f"{src}:{pos}", detail or "")
        console.print(t)

    if non_ocpp.height:
        skipped = non_ocpp.filter(pl.col("duplicate_of").is_null())
        dups = non_ocpp.filter(pl.col("duplicate_of").is_not_null())
        if skipped.height:
            console.print(
                f"non-OCPP WebSocket connections left out: {skipped.height} "
                f"({int(skipped['non_ocpp_frames'].fill_null(0).sum()):,} messages)"
            )
        if dups.height:
            console.print(f"duplicate connections dropped (captured twice): {dups.height}")
    for note in tables.notes:
        console.print(f"[yellow]note:[/] {note}")
