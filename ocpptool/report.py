"""What `ocpptool analyze` prints: a terminal report, or one JSON object for machines."""

from __future__ import annotations

from datetime import datetime
from typing import cast

import orjson
import polars as pl
from rich.console import Console
from rich.table import Table

from .analysis import DETECTORS, Analysis
from .analysis.registry import SEVERITY_RANK

STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}
EXAMPLES = 3
EVIDENCE_CAP = 20


def _iso(ts: datetime | None) -> str | None:
    if ts is None:
        return None
    return ts.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _iso_column(name: str) -> pl.Expr:
    """:func:`_iso` of a whole column, in Polars (per value in Python: ~5 us, most of a report's JSON time)."""
    return pl.col(name).dt.strftime("%Y-%m-%dT%H:%M:%S%.3fZ")


def _short(ts: datetime | None) -> str:
    return ts.strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def summary(a: Analysis) -> dict:
    m = a.tables.messages
    f = a.findings
    versions = (
        a.tables.connections.filter(pl.col("charge_point_id").is_not_null())
        .group_by("ocpp_version")
        .agg(pl.col("charge_point_id").n_unique())
        .sort("ocpp_version", nulls_last=True)
    )
    by_sev = dict(f.group_by("severity").len().iter_rows()) if f.height else {}
    tx = a.transactions
    return {
        "messages": m.height,
        "weirds": a.tables.weirds.height,
        "charge_points": m["charge_point_id"].drop_nulls().n_unique(),
        "connections": a.tables.connections.height,
        "start": _iso(cast("datetime | None", m["ts"].min())) if m.height else None,  # ts: a Datetime column
        "end": _iso(cast("datetime | None", m["ts"].max())) if m.height else None,
        "versions": {(v or "unknown"): n for v, n in versions.iter_rows()},
        "transactions": tx.height,
        "transactions_open": tx.filter(pl.col("state") == "open").height if tx.height else 0,
        "energy_wh": float(tx["energy_wh"].sum()) if tx.height else 0.0,
        "findings": {s: by_sev.get(s, 0) for s in ("error", "warning", "info")},
        "notes": list(a.tables.notes),
    }


def _evidence(a: Analysis) -> dict[int, dict]:
    """idx -> a short description of the message, for the evidence of every finding (capped)."""
    wanted = (
        a.findings.select(pl.col("evidence").list.head(EVIDENCE_CAP)).explode("evidence").drop_nulls().unique()
    )
    if not wanted.height:
        return {}
    m = a.tables.messages.select("idx", "ts", "message_id", "message_type", "action", "source", "source_pos")
    at = wanted["evidence"].sort()
    if at.len() and at[0] >= 0 and at[-1] < m.height and (m["idx"].gather(at) == at).all():
        rows = m[at]  # idx is the row number (build_tables): a gather, not a join over every message
    else:
        rows = m.join(wanted.rename({"evidence": "idx"}), on="idx", how="semi")
    return {
        r["idx"]: {
            "idx": r["idx"],
            "ts": r["ts"],
            "message_id": r["message_id"],
            "message_type": r["message_type"],
            "action": r["action"],
            "at": f"{r['source']}:{r['source_pos']}",
        }
        for r in rows.with_columns(ts=_iso_column("ts")).iter_rows(named=True)
    }


def findings_json(a: Analysis) -> list[dict]:
    ev = _evidence(a)
    out = []
    for r in a.findings.with_columns(ts=_iso_column("ts")).iter_rows(named=True):
        idxs = r["evidence"] or []
        out.append(
            {
                "code": r["code"],
                "severity": r["severity"],
                "family": r["family"],
                "charge_point_id": r["charge_point_id"],
                "connector_id": r["connector_id"],
                "transaction_id": r["transaction_id"],
                "ts": r["ts"],
                "summary": r["summary"],
                "value": r["value"],
                "evidence": [ev[i] for i in idxs[:EVIDENCE_CAP] if i in ev],
                "evidence_total": len(idxs),
            }
        )
    return out


def transactions_json(a: Analysis) -> list[dict]:
    cols = ["charge_point_id", "transaction_id", "connector_id", "id_tag", "start_ts", "stop_ts",
            "meter_start_wh", "meter_stop_wh", "energy_wh", "state", "stop_reason", "ocpp_version"]
    return a.transactions.select(cols).with_columns(start_ts=_iso_column("start_ts"), stop_ts=_iso_column("stop_ts")).to_dicts()


def to_json(a: Analysis) -> bytes:
    doc = {"summary": summary(a), "findings": findings_json(a), "transactions": transactions_json(a)}
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS) + b"\n"


def print_report(a: Analysis, console: Console, *, max_transactions: int = 40) -> None:
    s = summary(a)
    console.print(
        f"[bold]{s['messages']:,}[/] messages, {s['charge_points']} charge points, "
        f"{s['connections']} connections, {s['weirds']:,} weirds; "
        f"{s['start'] or '?'} -> {s['end'] or '?'}"
    )
    console.print(
        "versions: " + (", ".join(f"{v} ({n} cp)" for v, n in s["versions"].items()) or "unknown")
        + f"; transactions: {s['transactions']:,} ({s['transactions_open']} open), "
        f"{s['energy_wh'] / 1000:,.1f} kWh reported"
    )
    counts = s["findings"]
    console.print(
        "findings: "
        + ", ".join(f"[{STYLE[k]}]{counts[k]} {k}[/]" for k in ("error", "warning", "info"))
    )
    f = a.findings
    if f.height:
        groups = (
            f.group_by("code", maintain_order=True)
            .agg(pl.len(), pl.col("severity").first(), pl.col("charge_point_id").n_unique().alias("cps"))
            .with_columns(_r=pl.col("severity").replace_strict(SEVERITY_RANK, default=9))
            .sort("_r", "code")
        )
        for code, n, sev, cps, _ in groups.iter_rows():
            d = DETECTORS.get(code)
            title = d.title if d else ""
            console.print()
            console.print(
                f"[{STYLE.get(sev, '')}]{sev.upper():7s}[/] [bold]{code}[/] x{n} "
                f"({cps} charge point{'s' if cps != 1 else ''}): {title}"
            )
            for r in f.filter(pl.col("code") == code).head(EXAMPLES).iter_rows(named=True):
                where = r["charge_point_id"] or "?"
                if r["transaction_id"]:
                    where += f" tx {r['transaction_id']}"
                console.print(f"   {_short(r['ts'])}  {where}: {r['summary']}")
            if n > EXAMPLES:
                console.print(f"   ... and {n - EXAMPLES} more (--format json lists all)")
        console.print("\n[dim]`ocpptool explain CODE` says what a finding means and what to check.[/]")
    tx = a.transactions
    if tx.height:
        t = Table(title=f"\ntransactions ({tx.height:,})", title_justify="left", show_edge=False)
        for col in ("charge point", "conn.", "transaction", "id tag", "start (charger)", "stop (charger)",
                    "energy kWh", "state"):
            t.add_column(col, justify="right" if col in ("conn.", "energy kWh") else "left", no_wrap=True)
        for r in tx.head(max_transactions).iter_rows(named=True):
            e = r["energy_wh"]
            t.add_row(r["charge_point_id"] or "?", str(r["connector_id"] or ""), r["transaction_id"] or "?",
                      r["id_tag"] or "", _short(r["start_ts"]), _short(r["stop_ts"]),
                      "" if e is None else f"{e / 1000:,.3f}", r["state"] or "")
        console.print(t)
        if tx.height > max_transactions:
            console.print(f"... and {tx.height - max_transactions:,} more (--export DIR writes them all)")
    for note in s["notes"]:
        console.print(f"[yellow]note:[/] {note}")
