"""Payloads read by the compiled walker (``walk_payloads`` in ocpptool/_speedups.c) for the analysis.

The walker reads a column of payloads once, without the GIL, and says for each payload whether it is sure
of it. What it gives for the payloads it is sure of equals what the Polars expressions of :mod:`.derived`
give (``json_path_match`` for fields, ``json_decode`` behind the textual shape guard for meter values); the
others (escapes, odd numbers, shapes the guard refuses ...) are left to those expressions, which stay the
reference. ``OCPPTOOL_PURE=1`` (or an install without the extension) reads everything with Polars.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import polars as pl

from ..tables.schemas import TS

try:
    from .. import _speedups
except ImportError:  # pragma: no cover - an install without a C compiler
    _speedups = None  # type: ignore[assignment]

#: payloads per piece when a column is walked on two threads
_PIECE = 50_000


def available() -> bool:
    """Whether the compiled walker is there and wanted (``OCPPTOOL_PURE=1``: the Polars reference only)."""
    return _speedups is not None and hasattr(_speedups, "walk_payloads") and not os.environ.get("OCPPTOOL_PURE")


class _Arrow:
    __slots__ = ("pair",)

    def __init__(self, pair: tuple[object, object]) -> None:
        self.pair = pair

    def __arrow_c_array__(self, requested_schema: object = None) -> tuple[object, object]:
        return self.pair


def _series(name: str, pair: tuple[object, object]) -> pl.Series:
    return pl.Series(name, _Arrow(pair))


@dataclass(frozen=True)
class Config:
    """How one kind of payload is read. ``paths``: output column name -> ``"a"`` or ``"a.b"``; ``anywhere``:
    single keys read as a regex's first match in the text reads them (top-level, occurring once);
    ``meter_key``: the top-level array of meter values to explode; ``templates``: the MeterValues template
    key of each payload."""

    meter_key: str | None = None
    paths: tuple[tuple[str, str], ...] = ()
    anywhere: bool = False
    templates: bool = False

    def arg(self) -> tuple:
        return (self.meter_key.encode() if self.meter_key else None, tuple(p.encode() for _, p in self.paths),
                self.anywhere, self.templates)


@dataclass
class Walked:
    """What the walker read from a column of payloads (row positions are the column's)."""

    sure: pl.Series  # Boolean, one per payload
    fields: list[pl.DataFrame]  # per configuration, one String column per path (null where not sure or another kind)
    # one row per sampledValue of the sure payloads, in order: ``row``, ``sample_ts`` and the sampled value's
    # fields as json_decode reads them (``unit``: unit, else unitOfMeasure.unit; ``multiplier``: its text),
    # ``number`` and ``decimals`` (the value read as a number, its fraction digits as written)
    samples: pl.DataFrame | None
    keys: pl.Series  # Int64 template key (null where not sure or not templated)
    # per payload: ``stamp_text`` (the first "timestamp" string, as the time detectors' regex finds it),
    # ``stamp`` (it read as a UTC time), ``offline`` (a key "offline" holding true)
    stamps: pl.DataFrame


def _walk_piece(payloads: pl.Series, kinds: bytes | None, configs: tuple) -> tuple:
    assert _speedups is not None
    return _speedups.walk_payloads(payloads.__arrow_c_stream__(), kinds, configs)


def walk(payloads: pl.Series, configs: list[Config], kinds: pl.Series | None = None,
         pool: ThreadPoolExecutor | None = None) -> Walked:
    """Walk a String column of payloads (see the C source for the rules), each as ``configs[kind]`` says
    (``kinds``: a UInt8 per payload; None: all the first). Large columns are cut in two pieces walked on
    ``pool`` (a pool of two threads when None)."""
    args = tuple(c.arg() for c in configs)
    n = payloads.len()
    bounds = [(0, n)] if n < 2 * _PIECE else [(0, n // 2), (n // 2, n - n // 2)]

    def piece(offset: int, length: int) -> tuple:
        k = None if kinds is None else kinds.slice(offset, length).cast(pl.UInt8).to_numpy().tobytes()
        return _walk_piece(payloads.slice(offset, length), k, args)

    if len(bounds) == 1:
        results = [piece(0, n)]
    else:
        own = pool is None
        ex = pool or ThreadPoolExecutor(max_workers=2)
        try:
            futures = [ex.submit(piece, o, k) for o, k in bounds]
            results = [f.result() for f in futures]
        finally:
            if own:
                ex.shutdown()
    sure = pl.concat([_series("sure", r[0]) for r in results]).cast(pl.Boolean)
    fields = [
        pl.DataFrame(
            [pl.concat([_series(name, r[1][k][i]) for r in results]) for i, (name, _) in enumerate(c.paths)],
            schema={name: pl.String for name, _ in c.paths},
        )
        for k, c in enumerate(configs)
    ]
    samples = None
    if any(c.meter_key for c in configs):
        pieces = []
        for (offset, _), r in zip(bounds, results, strict=True):
            frame = pl.DataFrame([_series(name, pair) for name, pair in r[2].items()])
            pieces.append(frame.with_columns(row=pl.col("row") + offset) if offset else frame)
        samples = pl.concat(pieces).with_columns(pl.col("sample_ts").cast(TS))
    keys = pl.concat([_series("key", r[3]) for r in results])
    stamps = pl.concat([
        pl.DataFrame([_series(name, pair) for name, pair in zip(("stamp_text", "stamp", "offline"), r[4], strict=True)])
        for r in results
    ]).with_columns(pl.col("stamp").cast(TS), pl.col("offline").cast(pl.Boolean))  # fmt: skip
    return Walked(sure, fields, samples, keys, stamps)


def class_keys(payloads: pl.Series, enums: list[str]) -> pl.DataFrame:
    """``exact`` and ``key`` (Int64) of each payload for the schema check (``class_keys`` in the C source:
    the payload's bytes, and its shape with the letters and digits of every string not in ``enums`` and of
    every number blurred), computed on two threads for large columns."""
    assert _speedups is not None
    args = tuple(e.encode() for e in enums)
    n = payloads.len()
    bounds = [(0, n)] if n < 2 * _PIECE else [(0, n // 2), (n // 2, n - n // 2)]

    def piece(offset: int, length: int) -> tuple:
        assert _speedups is not None
        return _speedups.class_keys(payloads.slice(offset, length).__arrow_c_stream__(), args)

    with ThreadPoolExecutor(max_workers=2) as ex:
        results = list(ex.map(lambda b: piece(*b), bounds))
    return pl.DataFrame({
        "exact": pl.concat([_series("exact", r[0]) for r in results]).reinterpret(signed=False),
        "key": pl.concat([_series("key", r[1]) for r in results]).reinterpret(signed=False),
    })  # fmt: skip
