"""The shared front half of every command: inputs -> tables, with progress; filters."""

from __future__ import annotations

from datetime import datetime

import polars as pl

from .progress import Progress
from .sources import expand_inputs, read_inputs, total_size
from .sources.capture import CaptureOptions
from .tables.build import Tables, build_tables


def load(inputs: list[str], *, input_format: str | None = None, log_tz: str | None = None,
         capture: CaptureOptions | None = None, progress: bool = True) -> tuple[Tables, list[str]]:
    paths = expand_inputs(inputs)
    prog = Progress(total_size(paths), label="decoding", enabled=progress)
    try:
        tables = build_tables(
            read_inputs(paths, input_format=input_format, capture=capture, on_bytes=prog.bytes),
            log_tz=log_tz,
            on_rows=prog.add_rows,
            on_stage=prog.stage,
        )
    finally:
        prog.finish()
    return tables, paths


def stage(label: str, enabled: bool) -> None:
    """One line on stderr before a long final step (analysis, writing), so nobody waits in silence."""
    if enabled:
        import sys

        print(f"{label} ...", file=sys.stderr, flush=True)


def filter_messages(messages: pl.DataFrame, *, cps: list[str] | None = None, actions: list[str] | None = None,
                    since: datetime | None = None, until: datetime | None = None) -> pl.DataFrame:
    """Filters apply after correlation, so a response kept by a filter still knows its call's action."""
    cond = pl.lit(True)
    if cps:
        cond &= pl.col("charge_point_id").is_in(cps)
    if actions:
        cond &= pl.col("action").is_in(actions)
    if since:
        cond &= pl.col("ts") >= since
    if until:
        cond &= pl.col("ts") < until
    return messages.filter(cond)


def restrict_cps(tables: Tables, cps: list[str]) -> Tables:
    """Keep only these charge points (before analysis, so every detector sees the same subset)."""
    from .tables.build import Tables as T

    keep = pl.col("charge_point_id").is_in(cps)
    msgs = tables.messages.filter(keep)
    # correlation indexes point at idx, which stays valid after filtering (idx is a column, not a position)
    return T(msgs, tables.weirds.filter(keep), tables.connections.filter(keep), tables.notes)


def export_tables(analysis, directory: str) -> list[str]:
    """Write every table of an analysis as Parquet into ``directory``."""
    import os

    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        from .errors import UserError

        raise UserError(f"--export {directory}: cannot create ({exc.strerror})") from None
    from .tables.writers import write_parquet

    t = analysis.tables
    written = []
    for name, df in (("messages", t.messages), ("weirds", t.weirds), ("connections", t.connections),
                     ("transactions", analysis.transactions), ("meter_values", analysis.meter_values),
                     ("statuses", analysis.statuses), ("findings", analysis.findings)):
        path = os.path.join(directory, f"{name}.parquet")
        write_parquet(df, path)
        written.append(path)
    return written
