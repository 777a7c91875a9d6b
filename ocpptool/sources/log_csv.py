"""CSV exports with a header naming a frame column (``timestamp,id,action,msg``, as in kwwhat's data).

Read with Polars ``read_csv`` a chunk of whole records at a time (a chunk never ends inside a quoted field).
Recognised columns (case-insensitive): the frame (``msg``, ``message``, ``frame``, ``raw``, ``ocpp`` ...),
the time (``timestamp``, ``time``, ``ts`` ...), the charge point (``id``, ``charge_point_id``, ``cp_id``,
``chargeboxid`` ...) and a direction (``direction``, ``dir``). Without a direction column directions
stay null for the central inference.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from typing import TextIO

import polars as pl

from ..protocol.actions import normalise_direction
from .log_engine import CHUNK_CHARS, Batcher, finish_frames, to_raw

FRAME_COLS = ("msg", "message", "frame", "raw", "ocpp", "ocpp_message", "payload_raw", "json", "data", "text")
TS_COLS = ("timestamp", "time", "ts", "datetime", "date_time", "time_stamp", "logged_at", "created_at")
CP_COLS = (
    "id",
    "charge_point_id",
    "chargepointid",
    "cp_id",
    "cpid",
    "chargeboxid",
    "charge_box_id",
    "charger_id",
    "station_id",
    "charging_station_id",
    "cp",
)
DIR_COLS = ("direction", "dir")

_SNIFF_ROW = re.compile(r'(?:^|,)\s*"\[\s*[2-6]\s*,\s*""')


def _header(line: str) -> dict[str, str] | None:
    """Map role -> column name when the line is a header with a frame column."""
    try:
        names = next(csv.reader([line]))
    except (csv.Error, StopIteration):
        return None
    low = {n.strip().lower(): n for n in names}
    if len(low) < 2:
        return None
    roles: dict[str, str] = {}
    for role, options in (("frame", FRAME_COLS), ("ts", TS_COLS), ("cp", CP_COLS), ("dir", DIR_COLS)):
        for o in options:
            if o in low:
                roles[role] = low[o]
                break
    if "frame" not in roles or not ({"ts", "cp"} & roles.keys()):
        return None
    return roles


def sniff_csv(lines: list[str]) -> int:
    if not lines or _header(lines[0]) is None:
        return 0
    return 1 + sum(1 for x in lines[1:] if _SNIFF_ROW.search(x))


def _records(stream: TextIO, chunk_chars: int) -> Iterator[tuple[int, str, str]]:
    """Yield ``(first line number, header line, chunk of whole records)``."""
    header: str | None = None
    carry = ""
    lineno = 1
    while True:
        data = stream.read(chunk_chars)
        buf = carry + data
        if not data:
            if buf.strip():
                if header is None:
                    return
                yield lineno, header, buf
            return
        if header is None:
            nl = buf.find("\n")
            if nl < 0:
                carry = buf
                continue
            header, buf = buf[:nl].rstrip("\r"), buf[nl + 1 :]
            lineno = 2
        cut = buf.rfind("\n")
        # the chunk must end outside quotes: move the cut back until the quote count before it is even
        while cut >= 0 and buf.count('"', 0, cut) % 2:
            cut = buf.rfind("\n", 0, cut)
        if cut < 0:
            carry = buf
            continue
        text, carry = buf[:cut], buf[cut + 1 :]
        yield lineno, header, text
        lineno += text.count("\n") + 1


def _python_rows(header: str, text: str, first: int, roles: dict[str, str]) -> pl.DataFrame:
    """Slow path for chunks Polars refuses: Python's csv, one record at a time."""
    rows = []
    reader = csv.reader(io.StringIO(header + "\n" + text))
    names = next(reader)
    idx = {role: names.index(col) for role, col in roles.items() if col in names}
    pos = first
    for rec in reader:
        row: dict[str, int | str | None] = {"pos": pos, "frame": None, "ts": None, "cp": None, "dir": None}
        for role, i in idx.items():
            row[role] = rec[i] if i < len(rec) else None
        rows.append(row)
        pos = first + reader.line_num - 1
    return pl.DataFrame(
        rows, schema={"pos": pl.Int64, "frame": pl.String, "ts": pl.String, "cp": pl.String, "dir": pl.String}
    )


def _chunk_rows(header: str, text: str, first: int, roles: dict[str, str]) -> pl.DataFrame:
    try:
        df = pl.read_csv(
            (header + "\n" + text).encode(),
            infer_schema=False,
            has_header=True,
            quote_char='"',
            columns=list(dict.fromkeys(roles.values())),
            truncate_ragged_lines=True,
        )
    except Exception:  # noqa: BLE001 - any CSV damage: fall back to Python's reader
        return _python_rows(header, text, first, roles)
    cols = {role: df[col] for role, col in roles.items()}
    nl = sum(
        (s.fill_null("").str.count_matches("\n") for s in cols.values()),
        start=pl.Series([0] * df.height, dtype=pl.UInt32),
    )
    span = nl.cast(pl.Int64) + 1
    pos = (span.cum_sum() - span + first).cast(pl.Int64)
    out = pl.DataFrame({"pos": pos})
    for role in ("frame", "ts", "cp", "dir"):
        out = out.with_columns(
            (cols[role] if role in cols else pl.Series([None] * df.height, dtype=pl.String)).alias(role)
        )
    return out


def read_csv_log(
    stream: TextIO, source: str, *, chunk_chars: int | None = None, batch_rows: int | None = None
) -> Iterator[pl.DataFrame]:
    b = Batcher(batch_rows)
    roles: dict[str, str] | None = None
    for first, header, text in _records(stream, chunk_chars or CHUNK_CHARS):
        if roles is None:
            roles = _header(header)
            if roles is None:
                return
        rows = _chunk_rows(header, text, first, roles)
        frame = pl.col("frame").str.strip_chars()
        rows = rows.with_columns(frame=frame)
        empty = rows.filter(pl.col("frame").is_null() | (pl.col("frame") == ""))
        rows = finish_frames(rows.filter(pl.col("frame").is_not_null() & (pl.col("frame") != "")))
        rows = rows.with_columns(
            text=pl.when(pl.col("frame").str.starts_with("["))
            .then(pl.col("text"))
            .otherwise(pl.col("frame").str.slice(0, 200)),
            weird_reason=pl.when(pl.col("frame").str.starts_with("["))
            .then(pl.col("weird_reason"))
            .otherwise(pl.lit("unparsable-line")),
            weird_detail=pl.when(pl.col("frame").str.starts_with("["))
            .then(pl.col("weird_detail"))
            .otherwise(pl.lit("the frame column does not hold a JSON array")),
        )
        if empty.height:
            rows = pl.concat(
                [
                    rows,
                    empty.with_columns(
                        text=pl.lit(""),
                        weird_reason=pl.lit("unparsable-line"),
                        weird_detail=pl.lit("the CSV row has no frame"),
                    ),
                ],
                how="diagonal_relaxed",
            ).sort("pos")
        dirs = rows["dir"].unique().drop_nulls().to_list()
        mapping = {d: normalise_direction(d) for d in dirs}
        out = rows.select(
            pl.col("pos").alias("source_pos"),
            pl.col("ts").str.strip_chars().alias("ts_text"),
            pl.col("cp").alias("charge_point_id"),
            pl.col("dir").replace_strict(mapping, default=None, return_dtype=pl.String).alias("direction")
            if mapping
            else pl.lit(None, pl.String).alias("direction"),
            "text",
            "weird_reason",
            "weird_detail",
        )
        yield from b.add(to_raw(out, source))
    yield from b.finish()
