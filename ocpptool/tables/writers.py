"""Writers for the messages table: Parquet, CSV, JSON lines and Open OCPP Trace (schema v1.1)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import polars as pl

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl",
           ".json": "jsonl", ".trace.jsonl": "trace"}  # fmt: skip
TRACE_SCHEMA_VERSION = "1.1"
_TRACE_TYPES = {"CALL": "CALL", "CALLRESULT": "CALLRESULT", "CALLERROR": "CALLERROR",
                "CALLRESULTERROR": "CALLERROR", "SEND": "CALL"}  # fmt: skip
_TYPE_IDS = {"CALL": "2", "CALLRESULT": "3", "CALLERROR": "4", "CALLRESULTERROR": "5", "SEND": "6"}


class WriteError(Exception):
    pass


def format_for(path: str, explicit: str | None) -> str:
    if explicit:
        if explicit not in {"parquet", "csv", "jsonl", "trace"}:
            raise WriteError(f"unknown --format {explicit!r} (choose parquet, csv, jsonl or trace)")
        return explicit
    name = Path(path).name.lower()
    for ext in sorted(FORMATS, key=len, reverse=True):
        if name.endswith(ext):
            return FORMATS[ext]
    raise WriteError(f"{path}: cannot tell the output format from the name; use --format")


def _jstr(col: str | pl.Expr) -> pl.Expr:
    """A column as JSON string literals (null stays null), escaped by Polars' JSON encoder."""
    expr = pl.col(col) if isinstance(col, str) else col
    enc = pl.struct(expr.alias("v")).struct.json_encode()
    return pl.when(expr.is_not_null()).then(enc.str.slice(5, enc.str.len_chars() - 6))


def frame_text() -> pl.Expr:
    """Rebuild each row's OCPP-J frame text (payloads inserted verbatim)."""
    return _frame_text(_jstr)


_NEEDS_ESCAPE = r'["\\\x00-\x1f]'


def _quote_plain(expr: pl.Expr) -> pl.Expr:
    return pl.concat_str([pl.lit('"'), expr, pl.lit('"')])


_QUOTED = ["_ts", "ocpp_version", "charge_point_id", "_dir", "_mt", "message_id", "action", "conn", "source",
           "error_code", "error_description"]  # fmt: skip


def _quoter(df: pl.DataFrame) -> Callable[[str], pl.Expr]:
    """``quote(name)``: a column of ``df`` as JSON string literals. A column with nothing to escape (the
    usual case: ids, actions, times) is only put in quotes; the others go through Polars' JSON encoder."""
    plain = df.select(
        [~pl.col(c).str.contains(_NEEDS_ESCAPE).any().fill_null(False).alias(c) for c in _QUOTED]
    ).row(0, named=True) if df.height else {}

    def quote(name: str) -> pl.Expr:
        return _quote_plain(pl.col(name)) if plain.get(name, True) else _jstr(name)

    return quote


def _frame_text(quote: Callable[[str], pl.Expr]) -> pl.Expr:
    """The frame text, its id, action and error texts quoted by ``quote`` (:func:`_jstr`, or the cheaper
    quoting of :func:`_quoter` where a column has nothing to escape)."""
    mt = pl.col("message_type")
    call = mt.is_in(["CALL", "SEND"])
    error = mt.is_in(["CALLERROR", "CALLRESULTERROR"])
    body = pl.when(error).then(
        pl.concat_str([
            pl.coalesce(quote("error_code"), pl.lit('""')), pl.lit(","),
            pl.coalesce(quote("error_description"), pl.lit('""')), pl.lit(","),
            pl.coalesce(pl.col("error_details"), pl.lit("{}")),
        ])
    ).otherwise(pl.coalesce(pl.col("payload"), pl.lit("{}")))  # fmt: skip
    return pl.concat_str(
        [pl.lit("["), mt.replace_strict(_TYPE_IDS, default=None), pl.lit(","), quote("message_id"), pl.lit(","),
         pl.when(call).then(pl.concat_str([quote("action"), pl.lit(",")])), body, pl.lit("]")],
        ignore_nulls=True,
    )  # fmt: skip


def trace_lines(messages: pl.DataFrame) -> pl.Series:
    """One Open OCPP Trace v1.1 JSON record per message (payload and details spliced in verbatim).

    Written for speed (a million records in seconds): the columns with nothing to escape are only quoted,
    optional fields are null parts that the final concatenation skips, and the frame text is escaped by two
    literal replacements unless it holds a control character (then Polars' JSON encoder does it).
    """
    mt = pl.col("message_type")
    df = messages.with_columns(
        _ts=pl.coalesce(
            pl.col("ts").dt.strftime("%Y-%m-%dT%H:%M:%S%.6fZ"),
            pl.col("ts_local").dt.strftime("%Y-%m-%dT%H:%M:%S%.6f"),
        ),
        _dir=pl.col("direction").replace_strict({"cp->csms": "cp-to-csms", "csms->cp": "csms-to-cp"}, default=None),
        _mt=mt.replace_strict(_TRACE_TYPES, default=None),
        _pos=pl.col("source_pos").cast(pl.String),
    )
    quote = _quoter(df)
    df = df.with_columns(_raw=_frame_text(quote))
    if df.select(pl.col("_raw").str.contains(r"[\x00-\x1f]").any()).item():
        raw = _jstr("_raw")
    else:
        raw = _quote_plain(
            pl.col("_raw").str.replace_all("\\", "\\\\", literal=True).str.replace_all('"', '\\"', literal=True)
        )
    error = mt.is_in(["CALLERROR", "CALLRESULTERROR"])

    def field(name: str, value: pl.Expr) -> pl.Expr:
        return pl.concat_str([pl.lit(f',"{name}":'), value])  # null (and skipped) when the value is null

    meta = pl.concat_str(
        [
            pl.lit('{"ocpptool":{"conn":'), quote("conn"),
            pl.lit(',"source":'), pl.coalesce(quote("source"), pl.lit("null")),
            pl.lit(',"sourcePos":'), pl.coalesce(pl.col("_pos"), pl.lit("null")),
            pl.when(mt.is_in(["SEND", "CALLRESULTERROR"])).then(pl.concat_str([pl.lit(',"messageType":"'), mt, pl.lit('"')])),
            pl.lit("}}"),
        ],
        ignore_nulls=True,
    )  # fmt: skip
    error_obj = pl.when(error).then(
        pl.concat_str([
            pl.lit('{"code":'), pl.coalesce(quote("error_code"), pl.lit('""')),
            pl.lit(',"description":'), pl.coalesce(quote("error_description"), pl.lit('""')),
            pl.lit(',"details":'), pl.coalesce(pl.col("error_details"), pl.lit("{}")), pl.lit("}"),
        ])
    )  # fmt: skip
    line = pl.concat_str(
        [
            pl.lit(f'{{"schemaVersion":"{TRACE_SCHEMA_VERSION}"'),
            field("timestamp", quote("_ts")),
            field("ocppVersion", quote("ocpp_version")),
            pl.lit(',"transport":"json"'),
            field("chargePointId", quote("charge_point_id")),
            field("direction", quote("_dir")),
            field("messageType", quote("_mt")),
            field("messageId", quote("message_id")),
            field("action", quote("action")),
            field("payload", pl.when(~error).then(pl.col("payload"))),
            field("error", error_obj),
            field("raw", raw),
            field("meta", meta),
            pl.lit("}"),
        ],
        ignore_nulls=True,
    )
    return df.select(line.alias("line")).to_series()


def write_parquet(df: pl.DataFrame, path: str) -> None:
    """Every Parquet file ocpptool writes: zstd level 1 (as small as the default level, faster to write).

    (The streaming sink was tried: no faster on an idle two-core machine, and 200-300 MB more peak memory.)
    """
    df.write_parquet(path, compression="zstd", compression_level=1)


def write_messages(messages: pl.DataFrame, path: str, fmt: str) -> None:
    try:
        if fmt == "parquet":
            write_parquet(messages, path)
        elif fmt == "csv":
            messages.write_csv(path)
        elif fmt == "jsonl":
            messages.write_ndjson(path)
        elif fmt == "trace":
            with open(path, "wb") as fh:
                for part in messages.iter_slices(100_000):  # bounded memory; lines written as they are
                    trace_lines(part).to_frame().write_csv(fh, include_header=False, quote_style="never")
        else:
            raise WriteError(f"unknown format {fmt!r}")
    except OSError as exc:
        raise WriteError(f"{path}: cannot write ({exc.strerror or exc})") from None
