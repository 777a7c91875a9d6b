"""The live transcript: every frame a replay sent or received, as RawMessages for the usual pipeline.

``--record FILE`` writes it as Open OCPP Trace (the same writer as ``decode -o x.trace.jsonl``), so a
replay can be analysed, decoded or replayed again.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import polars as pl

from ..sources.base import conform


class Transcript:
    """Append-only frame log (a list append per frame: cheap enough for the hot path)."""

    def __init__(self, source: str = "replay") -> None:
        self.source = source
        self.rows: list[tuple[datetime, str, str, str, str, str]] = []

    def add(self, conn: str, cp_id: str, direction: str, subprotocol: str, text: str) -> None:
        self.rows.append((datetime.now(UTC), conn, cp_id, direction, subprotocol, text))

    def __len__(self) -> int:
        return len(self.rows)

    def raw_batch(self) -> pl.DataFrame:
        cols: list[tuple[Any, ...]] = list(zip(*self.rows, strict=True)) if self.rows else [()] * 6
        df = pl.DataFrame(
            {
                "ts": pl.Series(cols[0], dtype=pl.Datetime("us", "UTC")),
                "conn": pl.Series(cols[1], dtype=pl.String),
                "charge_point_id": pl.Series(cols[2], dtype=pl.String),
                "direction": pl.Series(cols[3], dtype=pl.String),
                "subprotocol": pl.Series(cols[4], dtype=pl.String),
                "text": pl.Series(cols[5], dtype=pl.String),
            }
        ).with_columns(
            ts_text=pl.col("ts").dt.strftime("%Y-%m-%dT%H:%M:%S%.6fZ"),
            source=pl.lit(self.source),
            source_pos=pl.int_range(1, pl.len() + 1, dtype=pl.Int64),
            direction_inferred=pl.lit(False),
        )
        return conform(df)

    def tables(self):
        from ..tables.build import build_tables

        return build_tables([self.raw_batch()])

    def write_trace(self, path: str) -> int:
        from ..tables.writers import write_messages

        messages = self.tables().messages
        write_messages(messages, path, "trace")
        return messages.height
