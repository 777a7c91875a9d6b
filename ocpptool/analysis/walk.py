"""Payloads read by the compiled walker (``walk_payloads`` in ocpptool/_speedups.c) for the analysis.

The walker reads a column of payloads once, without the GIL, and says for each payload whether it is sure
of it. What it gives for the payloads it is sure of equals what the Polars expressions of :mod:`.derived`
give (``json_path_match`` for fields, ``json_decode`` behind the textual shape guard for meter values); the
others (escapes, odd numbers, shapes the guard refuses ...) are left to those expressions, which stay the
reference. ``OCPPTOOL_PURE=1`` (or an install without the extension) reads everything with Polars.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import polars as pl

from ..arrow_c import column
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


@dataclass(frozen=True)
class Config:
    """How one kind of payload is read. ``paths``: output column name -> ``"a"`` or ``"a.b"``; ``anywhere``:
    single keys read as a regex's first match in the text reads them (top-level, occurring once);
    ``meter_key``: the top-level array of meter values to explode."""

    meter_key: str | None = None
    paths: tuple[tuple[str, str], ...] = ()
    anywhere: bool = False

    def arg(self) -> tuple:
        return (self.meter_key.encode() if self.meter_key else None, tuple(p.encode() for _, p in self.paths),
                self.anywhere)


@dataclass
class Walked:
    """What the walker read from a column of payloads (row positions are the column's)."""

    sure: pl.Series  # Boolean, one per payload
    sampled: pl.Series  # Boolean, one per payload: sure, and it holds sampled values (of any measurand)
    # per configuration, one String column per path, a row per payload of its kind (in order; null where not sure)
    fields: list[pl.DataFrame]
    # one row per sampledValue of the sure payloads, in order: ``row``, ``sample_ts`` and the sampled value's
    # fields as json_decode reads them (``unit``: unit, else unitOfMeasure.unit; ``multiplier``: its text),
    # ``number`` and ``decimals`` (the value read as a number, its fraction digits as written)
    samples: pl.DataFrame | None
    # per payload: ``stamp_text`` (the first "timestamp" string, as the time detectors' regex finds it),
    # ``stamp`` (it read as a UTC time), ``offline`` (a key "offline" holding true)
    stamps: pl.DataFrame
    energy_only: bool = False  # ``samples`` holds the energy register's samples only
    # per payload, when asked (``enums``): the schema check's ``key`` (UInt64) as :func:`class_keys`
    # gives it, for the payloads the walker is sure of (null for the others)
    keys: pl.DataFrame | None = None


def _in_pieces(n: int, piece: Callable[[int, int], tuple], pool: ThreadPoolExecutor | None = None
               ) -> tuple[list[tuple[int, int]], list[tuple]]:
    """``piece(offset, length)`` over a column of ``n`` values: once when it is small, else on its two halves
    on ``pool`` (a pool of two threads when None; the C code runs without the GIL). (bounds, results)."""
    bounds = [(0, n)] if n < 2 * _PIECE else [(0, n // 2), (n // 2, n - n // 2)]
    if len(bounds) == 1:
        return bounds, [piece(0, n)]
    ex = pool or ThreadPoolExecutor(max_workers=2)
    try:
        futures = [ex.submit(piece, o, k) for o, k in bounds]
        return bounds, [f.result() for f in futures]
    finally:
        if pool is None:
            ex.shutdown()


def walk(payloads: pl.Series, configs: list[Config], kinds: pl.Series | None = None,
         pool: ThreadPoolExecutor | None = None, energy_only: bool = False,
         enums: list[str] | None = None) -> Walked:
    """Walk a String column of payloads (see the C source for the rules), each as ``configs[kind]`` says
    (``kinds``: a UInt8 per payload; None: all the first). Large columns are cut in two pieces walked on
    ``pool`` (a pool of two threads when None). ``energy_only``: sample rows only for the energy register
    (its measurand, null or omitted); the others are still read, for ``sure`` and ``sampled``. ``enums``: the
    schema check's enum values; the walk then also gives the :func:`class_keys` of the payloads it is sure
    of (``Walked.keys``), so the schema check need not read them again."""
    args = tuple(c.arg() for c in configs)
    enum_args = None if enums is None else tuple(e.encode() for e in enums)

    def piece(offset: int, length: int) -> tuple:
        assert _speedups is not None
        # bytes from a list, not numpy: importing numpy alone takes ~0.2 s
        k = None if kinds is None else bytes(kinds.slice(offset, length).cast(pl.UInt8).to_list())
        return _speedups.walk_payloads(payloads.slice(offset, length).__arrow_c_stream__(), k, args, energy_only,
                                       enum_args)

    bounds, results = _in_pieces(payloads.len(), piece, pool)
    marks = pl.concat([column("sure", r[0]) for r in results])  # 0 not sure, 1 sure, 2 sure with samples
    sure, sampled = marks.cast(pl.Boolean), marks == 2
    fields = [
        pl.DataFrame(
            [pl.concat([column(name, r[1][k][i]) for r in results]) for i, (name, _) in enumerate(c.paths)],
            schema={name: pl.String for name, _ in c.paths},
        )
        for k, c in enumerate(configs)
    ]
    samples = None
    if any(c.meter_key for c in configs):
        pieces = []
        for (offset, _), r in zip(bounds, results, strict=True):
            frame = pl.DataFrame([column(name, pair) for name, pair in r[2].items()])
            pieces.append(frame.with_columns(row=pl.col("row") + offset) if offset else frame)
        samples = pl.concat(pieces).with_columns(pl.col("sample_ts").cast(TS))
    stamps = pl.concat([
        pl.DataFrame([column(name, pair) for name, pair in zip(("stamp_text", "stamp", "offline"), r[3], strict=True)])
        for r in results
    ]).with_columns(pl.col("stamp").cast(TS), pl.col("offline").cast(pl.Boolean))  # fmt: skip
    keys = None if enums is None else _key_frame([r[4] for r in results])
    return Walked(sure, sampled.alias("sampled"), fields, samples, stamps, energy_only, keys)


def class_keys(payloads: pl.Series, enums: list[str]) -> pl.DataFrame:
    """``key`` (UInt64) of each payload for the schema check (``class_keys`` in the C source: its shape with the
    letters and digits of every string not in ``enums`` and of every number blurred; null for a null
    payload), computed on two threads for large columns."""
    args = tuple(e.encode() for e in enums)

    def piece(offset: int, length: int) -> tuple:
        assert _speedups is not None
        return _speedups.class_keys(payloads.slice(offset, length).__arrow_c_stream__(), args)

    _, results = _in_pieces(payloads.len(), piece)
    return _key_frame(results)


def _key_frame(pieces: list[tuple]) -> pl.DataFrame:
    """``key`` (UInt64) from each piece's Arrow column (class_keys', or the walk's)."""
    return pl.DataFrame({"key": pl.concat([column("key", p) for p in pieces]).reinterpret(signed=False)})
