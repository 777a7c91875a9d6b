"""Observed times: one vectorised parser for every timestamp spelling the sources hand over.

Sources pass the text as written (``ts_text``); this module turns it into an instant (``ts``, UTC) and
keeps what cannot be known apart instead of guessing:

- ISO 8601 with ``Z`` or an offset, with ``T`` or a space, ``.`` or ``,`` before the fraction, ``/`` in the
  date: an instant.
- Epoch seconds (9-10 digits, optional fraction), milliseconds (12-13) or microseconds (15-16): an instant.
- A wall-clock time without a zone: ``ts`` stays null and ``ts_local`` holds it, with the hint
  ``no time zone (use --log-tz)``, unless ``log_tz`` says which zone the log was written in.
- Anything else (no year, unreadable): ``ts`` null, with a hint.
"""

from __future__ import annotations

import polars as pl

NO_ZONE = "no time zone in the log (use --log-tz)"
UNREADABLE = "unreadable timestamp"
NO_TIME = "no timestamp in the source"


_NAIVE_FORMATS = ("%Y-%m-%d %H:%M:%S,%3f", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f")


def _normalised(col: str) -> pl.Expr:
    return (
        pl.col(col)
        .str.strip_chars()
        .str.strip_chars("[]")
        .str.replace(r"^(\d{4})[-/](\d{2})[-/](\d{2})[ T]", "${1}-${2}-${3}T")
        .str.replace(r"(\d),(\d)", "${1}.${2}")
        .str.replace(r"\s*(?:Z|UTC|GMT|\+00:?00)$", "+00:00")
        .str.replace(r"\s*([+-]\d{2}):?(\d{2})$", "${1}:${2}")
    )


def _fits(first: pl.Series, parse: pl.Expr) -> bool:
    """Whether ``parse`` reads the batch's first time (``first``: a one-row ``ts_text`` Series)."""
    return first.to_frame().select(parse.is_not_null()).item()


def parse_ts(df: pl.DataFrame, log_tz: str | None = None) -> pl.DataFrame:
    """Fill ``ts`` (where null), ``ts_local`` and ``ts_hint`` from ``ts_text``."""
    if df.is_empty() or df["ts_text"].null_count() == df.height:
        return df.with_columns(
            ts_local=pl.lit(None, dtype=pl.Datetime("us")),
            ts_hint=pl.when(pl.col("ts").is_null() & pl.col("ts_hint").is_null())
            .then(pl.lit(NO_TIME))
            .otherwise(pl.col("ts_hint")),
        )
    # Each fast path below applies only if it reads every time of the batch, so the first time is tried
    # alone first: a batch whose first time does not fit skips the whole-column attempt.
    first = df.select(pl.col("ts_text").drop_nulls().first()).to_series()
    # Fast path: strict ISO 8601 with a zone, as most machine logs write it.
    quick = pl.col("ts_text").str.to_datetime("%+", strict=False, time_unit="us", time_zone="UTC")
    if _fits(first, quick):
        df = df.with_columns(_q=quick)
    if "_q" in df.columns and df["_q"].null_count() == df["ts_text"].null_count():
        return (
            df.with_columns(
                ts=pl.coalesce(pl.col("ts"), pl.col("_q")), ts_local=pl.lit(None, dtype=pl.Datetime("us"))
            )
            .with_columns(
                ts_hint=pl.when(pl.col("ts").is_null() & pl.col("ts_hint").is_null())
                .then(pl.lit(NO_TIME))
                .otherwise(pl.col("ts_hint"))
            )
            .drop("_q")
        )
    df = df.drop("_q", strict=False)
    # Second fast path: one zone-less layout for the whole batch (Python logging, most text logs).
    wanted = df.height - df["ts_text"].null_count()
    for fmt in _NAIVE_FORMATS:
        local = pl.col("ts_text").str.to_datetime(fmt, strict=False, time_unit="us")
        if not _fits(first, local):
            continue
        probe = df.select(local.alias("_l"))["_l"]
        if wanted - probe.null_count() == wanted:
            out = df.with_columns(ts_local=probe)
            placed = (
                pl.col("ts_local")
                .dt.replace_time_zone(log_tz, ambiguous="earliest", non_existent="null")
                .dt.convert_time_zone("UTC")
                if log_tz
                else pl.lit(None, dtype=pl.Datetime("us", "UTC"))
            )
            return out.with_columns(ts=pl.coalesce(pl.col("ts"), placed)).with_columns(
                ts_hint=pl.when(pl.col("ts_hint").is_not_null())
                .then(pl.col("ts_hint"))
                .when(pl.col("ts").is_not_null())
                .then(pl.lit(None, dtype=pl.String))
                .when(pl.col("ts_text").is_null())
                .then(pl.lit(NO_TIME))
                .otherwise(pl.lit(None if log_tz else NO_ZONE, dtype=pl.String))
            )
    norm = _normalised("ts_text")
    digits = pl.col("ts_text").str.strip_chars()
    int_part = digits.str.extract(r"^(\d+)(?:\.\d+)?$", 1)
    n = int_part.str.len_chars()
    num = digits.cast(pl.Float64, strict=False)
    epoch_us = (
        pl.when(n.is_between(9, 10))
        .then(num * 1_000_000)
        .when(n.is_between(12, 13))
        .then(num * 1_000)
        .when(n.is_between(15, 16))
        .then(num)
    )
    aware = norm.str.to_datetime("%Y-%m-%dT%H:%M:%S%.f%:z", strict=False, time_unit="us")
    local = norm.str.to_datetime("%Y-%m-%dT%H:%M:%S%.f", strict=False, time_unit="us")
    epoch = epoch_us.round(0).cast(pl.Int64).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
    out = df.with_columns(_aware=aware, _local=local, _epoch=epoch)
    if log_tz:
        placed = (
            pl.col("_local")
            .dt.replace_time_zone(log_tz, ambiguous="earliest", non_existent="null")
            .dt.convert_time_zone("UTC")
        )
    else:
        placed = pl.lit(None, dtype=pl.Datetime("us", "UTC"))
    ts = pl.coalesce(pl.col("ts"), pl.col("_aware"), pl.col("_epoch"), placed)
    hint = (
        pl.when(pl.col("ts_hint").is_not_null())
        .then(pl.col("ts_hint"))
        .when(pl.col("ts").is_not_null())
        .then(pl.lit(None, dtype=pl.String))
        .when(pl.col("ts_text").is_null())
        .then(pl.lit(NO_TIME))
        .when(pl.col("_aware").is_not_null() | pl.col("_epoch").is_not_null())
        .then(pl.lit(None, dtype=pl.String))
        .when(pl.col("_local").is_not_null())
        .then(pl.lit(None if log_tz else NO_ZONE, dtype=pl.String))
        .otherwise(pl.lit(UNREADABLE))
    )
    return out.with_columns(ts=ts, ts_hint=hint, ts_local=pl.col("_local")).drop("_aware", "_local", "_epoch")
