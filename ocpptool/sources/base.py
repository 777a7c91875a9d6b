"""What every source produces: batches of raw messages as Polars frames with :data:`RAW_SCHEMA`.

A source adapter (pcap, trace, JSON lines, a log format) reads bytes and yields ``RawBatch`` frames; it
knows nothing of OCPP beyond finding where a frame's text starts and ends. Everything downstream
(``ocpptool.tables.build``) decodes, correlates and types the batches.

Columns:

- ``ts_text``: the observed time exactly as the source wrote it (parsed once, vectorised, by
  :func:`ocpptool.sources.timeparse.parse_ts`), or ``ts`` directly when the source has a real instant.
- ``source``: file path (``-`` for stdin); ``source_pos``: 1-based line number (or packet number).
- ``conn``: connection key. Logs do not show connections, so it is the charge point id within the file.
- ``charge_point_id``, ``direction`` (``cp->csms`` / ``csms->cp`` / null), ``subprotocol`` when known.
- ``text``: the frame's text. ``weird_reason``/``weird_detail``: set when the source already knows the text
  is broken (binary frame, truncated line, unparsable record); such rows become weirds.
- ``note``: how the source rebuilt the frame when the log did not hold it verbatim (``payload logged as a
  Python dict``, ``message id not logged``), or null.
- ``ts_hint``: the source's own caveat about the time (``no time zone``, ``no year`` ...) or null.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeAlias

import polars as pl

RAW_SCHEMA: dict[str, pl.DataType] = {
    "ts": pl.Datetime("us", "UTC"),
    "ts_text": pl.String(),
    "ts_hint": pl.String(),
    "source": pl.String(),
    "source_pos": pl.Int64(),
    "conn": pl.String(),
    "charge_point_id": pl.String(),
    "direction": pl.String(),
    "direction_inferred": pl.Boolean(),
    "subprotocol": pl.String(),
    "text": pl.String(),
    "weird_reason": pl.String(),
    "weird_detail": pl.String(),
    "note": pl.String(),
}

RawBatch = pl.DataFrame
BATCH_ROWS = 200_000

#: What a capture knows about each connection beyond its frames (``ConnMeta``). Log sources never send it.
CONN_META_SCHEMA: dict[str, pl.DataType] = {
    "conn": pl.String(),
    "source": pl.String(),
    "charge_point_id": pl.String(),  # last URL path segment of the HTTP upgrade
    "url_path": pl.String(),
    "client": pl.String(),  # "ip:port" ("[v6]:port"); the charger is the WebSocket client
    "server": pl.String(),
    "subprotocol": pl.String(),  # from the server's 101 response (else the client's first offer)
    "compression": pl.String(),  # e.g. "permessage-deflate; client_max_window_bits=12" or null
    "tls": pl.Boolean(),
    "auth": pl.String(),  # "basic user=<name>" / "bearer": the scheme and user only, never the secret
    "opened": pl.Datetime("us", "UTC"),  # SYN (or first packet seen)
    "closed": pl.Datetime("us", "UTC"),  # FIN/RST or close frame (null if the capture ends first)
    "close_code": pl.Int32(),
    "close_reason": pl.String(),
    "handshake_seen": pl.Boolean(),
    "ocpp": pl.Boolean(),  # false: a non-OCPP WebSocket (its frames are counted, not decoded)
    "ws_frames": pl.Int64(),  # data frames seen, both directions
    "non_ocpp_frames": pl.Int64(),
    "duplicate_of": pl.String(),  # set when an "any"-interface capture holds this connection twice
}


@dataclass(frozen=True)
class SourceNote:
    """Something about an input the user should be told (e.g. encrypted connections left undecoded)."""

    text: str


@dataclass(frozen=True)
class ConnMeta:
    """Connection facts from a capture, yielded by a source between its RawBatch frames."""

    frame: pl.DataFrame  # CONN_META_SCHEMA


#: What a source yields: RawBatch frames, thunks that build one (so parsing can run on a worker), and,
#: from captures, ConnMeta and SourceNote.
SourceItem: TypeAlias = RawBatch | Callable[[], RawBatch] | ConnMeta | SourceNote


class SourceError(Exception):
    """A whole input cannot be read (unreadable, empty, binary, unrecognised). One line for the user."""


def conform(df: pl.DataFrame) -> pl.DataFrame:
    """Add missing RAW columns as nulls and put them in schema order with schema types."""
    cols = []
    for name, dtype in RAW_SCHEMA.items():
        if name in df.columns:
            cols.append(pl.col(name).cast(dtype))
        else:
            cols.append(pl.lit(None, dtype=dtype).alias(name))
    return df.select(cols)


@dataclass
class RawBuilder:
    """Collects rows from Python-loop parsers and hands out batches of at most ``batch_rows`` rows."""

    source: str
    batch_rows: int = BATCH_ROWS
    _cols: dict[str, list] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._cols = {k: [] for k in RAW_SCHEMA if k not in ("ts", "source")}

    def __len__(self) -> int:
        return len(self._cols["text"])

    def add(
        self,
        *,
        text: str | None,
        pos: int,
        ts_text: str | None = None,
        ts_hint: str | None = None,
        conn: str | None = None,
        charge_point_id: str | None = None,
        direction: str | None = None,
        direction_inferred: bool = False,
        subprotocol: str | None = None,
        weird_reason: str | None = None,
        weird_detail: str | None = None,
        note: str | None = None,
    ) -> None:
        c = self._cols
        c["ts_text"].append(ts_text)
        c["ts_hint"].append(ts_hint)
        c["source_pos"].append(pos)
        c["conn"].append(conn if conn is not None else charge_point_id)
        c["charge_point_id"].append(charge_point_id)
        c["direction"].append(direction)
        c["direction_inferred"].append(direction_inferred)
        c["subprotocol"].append(subprotocol)
        c["text"].append(text)
        c["weird_reason"].append(weird_reason)
        c["weird_detail"].append(weird_detail)
        c["note"].append(note)

    def full(self) -> bool:
        return len(self) >= self.batch_rows

    def take(self) -> pl.DataFrame:
        schema = {k: v for k, v in RAW_SCHEMA.items() if k in self._cols}
        df = pl.DataFrame(self._cols, schema=schema).with_columns(source=pl.lit(self.source))
        self._reset()
        return conform(df)

    def drain(self) -> Iterator[pl.DataFrame]:
        """Yield a batch if full (call inside loops)."""
        if self.full():
            yield self.take()

    def finish(self) -> Iterator[pl.DataFrame]:
        if len(self):
            yield self.take()
