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
        )
    finally:
        prog.finish()
    return tables, paths


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
