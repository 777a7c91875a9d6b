"""Readers for log formats that hold one OCPP-J frame per line: one regex per line, run by Polars in Rust.

- ``mobilityhouse``: the ``ocpp`` Python library's logger (``CP_1: send [...]`` / ``receive message [...]``),
  under any logging prefix (basicConfig, custom formatters, Home Assistant), plus its ``Received a
  CALLError: <CallError ...>`` warnings. The library runs on both sides, so whose log it is comes from
  the actions it sends (a charger sends BootNotification/Heartbeat CALLs).
- ``steve``: SteVe's ``WebSocketLogger`` (``[chargeBoxId=CP_1, sessionId=...] Received: [...]`` / ``Sending:``).
- ``microocpp``: MicroOcpp / ArduinoOcpp traffic lines (``[MO] Send: [...]`` / ``[MO] Recv: [...]``).
- ``evcc``: evcc's ``[ocpp  ] TRACE`` lines, old (``sent JSON message to CP: ``) and new (``recv CP: ``)
  wording, bare, under journald or under docker compose prefixes.
- ``console``: charger consoles (``[ts] %c[OCPPClient] >> message sent: [...] color: cyan;``).
- ``proxy``: logging proxies (``ts - [client->target] [...]``; client is the charger).
"""

from __future__ import annotations

import ast
import re
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import TextIO

import orjson
import polars as pl

from ..protocol.actions import ALL_ACTIONS, BIDIRECTIONAL, CP_INITIATED, CP_TO_CSMS, CSMS_TO_CP
from .log_engine import (
    TS_ISO,
    Batcher,
    extract,
    finish_frames,
    first_frame_in,
    iter_chunks,
    lines_frame,
    map_ahead,
    merged_chunks,
    to_raw,
)

CSMS_INITIATED = sorted(ALL_ACTIONS - CP_INITIATED - BIDIRECTIONAL)
CP_ACTIONS = sorted(CP_INITIATED)
ACTION_OF_CALL = r'^\[\s*[26]\s*,\s*"[^"]*"\s*,\s*"([^"]+)"'
MID_LINE_NOTE = "the file starts mid-line: the line's prefix is missing"
TIME_ONLY_HINT = "time of day only, no date"


@dataclass(frozen=True)
class LineSpec:
    """A one-frame-per-line format: a regex with named groups ``frame`` and optionally ``ts``, ``cp``,
    ``dir`` (mapped through ``dir_map`` after lower-casing) and ``tag`` (mapped through ``tag_notes``)."""

    pattern: str
    prefilter: str | None = None
    literal: bool = True
    dir_map: dict[str, str | None] = field(default_factory=dict)
    inferred: bool = False
    tag_notes: dict[str, str] = field(default_factory=dict)
    junk: str | None = None  # regex of what may follow the frame on its line (removed before balancing)

    @property
    def compiled(self) -> re.Pattern[str]:
        return _compiled(self.pattern)


_CACHE: dict[str, re.Pattern[str]] = {}


def _compiled(pattern: str) -> re.Pattern[str]:
    if pattern not in _CACHE:
        _CACHE[pattern] = re.compile(pattern)
    return _CACHE[pattern]


def sniff_spec(spec: LineSpec, lines: list[str]) -> int:
    rx = spec.compiled
    return sum(
        1
        for line in lines
        if (not spec.prefilter or not spec.literal or spec.prefilter in line) and rx.search(line)
    )


def _mid_line_row(lines: pl.DataFrame, matched: pl.DataFrame) -> pl.DataFrame | None:
    """Line 1 of a file that starts mid-line: a bare frame with the log prefix cut off."""
    if lines.is_empty() or lines["pos"][0] != 1 or (matched.height and matched["pos"][0] == 1):
        return None
    found = first_frame_in(lines["line"][0])
    if not found:
        return None
    text, reason, detail = found
    return pl.DataFrame(
        {
            "pos": [1],
            "text": [text],
            "weird_reason": [reason],
            "weird_detail": [detail],
            "note": [MID_LINE_NOTE],
        },
        schema={
            "pos": pl.Int64,
            "text": pl.String,
            "weird_reason": pl.String,
            "weird_detail": pl.String,
            "note": pl.String,
        },
    )


def spec_rows(spec: LineSpec, first: int, text: str) -> pl.DataFrame:
    """Extract one chunk into rows with RAW column names (``pos`` is ``source_pos``)."""
    lines = lines_frame(first, text)
    m = finish_frames(
        extract(lines, spec.pattern, prefilter=spec.prefilter, literal=spec.literal), junk=spec.junk
    )
    cols = [pl.col("pos").alias("source_pos"), "text", "weird_reason", "weird_detail"]
    if "ts" in m.columns:
        cols.append(pl.col("ts").str.strip_chars().alias("ts_text"))
    if "cp" in m.columns:
        cols.append(pl.col("cp").alias("charge_point_id"))
    if "dir" in m.columns:
        cols.append(
            pl.col("dir")
            .str.to_lowercase()
            .replace_strict(spec.dir_map, default=None, return_dtype=pl.String)
            .alias("direction")
        )
        cols.append(pl.lit(spec.inferred).alias("direction_inferred"))
    if "tag" in m.columns and spec.tag_notes:
        cols.append(
            pl.col("tag").replace_strict(spec.tag_notes, default=None, return_dtype=pl.String).alias("note")
        )
    out = m.select(cols)
    mid = _mid_line_row(lines, m)
    if mid is not None:
        out = pl.concat([mid.rename({"pos": "source_pos"}), out], how="diagonal_relaxed")
    return out


def _pieces(stream: TextIO, chunk_chars: int | None) -> Iterator[tuple[int, str]]:
    """The stream in pieces of whole lines; an explicit ``chunk_chars`` (tests) is kept as it is."""
    chunks = iter_chunks(stream, chunk_chars)
    return chunks if chunk_chars else merged_chunks(chunks)


def read_spec(
    spec: LineSpec,
    stream: TextIO,
    source: str,
    *,
    chunk_chars: int | None = None,
    batch_rows: int | None = None,
    ts_hint_expr: pl.Expr | None = None,
) -> Iterator[pl.DataFrame]:
    b = Batcher(batch_rows)
    for rows in map_ahead(partial(spec_rows, spec), _pieces(stream, chunk_chars)):
        if ts_hint_expr is not None and "ts_text" in rows.columns:
            rows = rows.with_columns(ts_hint=ts_hint_expr)
        yield from b.add(to_raw(rows, source))
    yield from b.finish()


# --------------------------------------------------------------------------------------- the formats

_TS_OPT = r"^(?:\[?(?P<ts>" + TS_ISO + r")\]?)?"

STEVE = LineSpec(
    pattern=r"^(?:.*?(?P<ts>" + TS_ISO + r"))?.*?\[chargeBoxId=(?P<cp>[^,\]]*), sessionId=[^\]]*\]\s+"
    r"(?P<dir>Sending|Sent|Send|Received|Receiving|Recv)(?: message)?:\s*(?P<frame>\[.*)",
    prefilter="chargeBoxId=",
    dir_map={
        "sending": CSMS_TO_CP,
        "sent": CSMS_TO_CP,
        "send": CSMS_TO_CP,
        "received": CP_TO_CSMS,
        "receiving": CP_TO_CSMS,
        "recv": CP_TO_CSMS,
    },
)

MICROOCPP = LineSpec(
    pattern=r"^(?:\[?(?P<ts>" + TS_ISO + r"|\d\d:\d\d:\d\d(?:[.,]\d+)?)\]?)?.*?\[(?:MO|AO)\]"
    r"(?:\s+\w+\s+\([^)]*\):?)?\s*(?P<dir>Send|Sent|Recv|Received)\s*:\s*(?P<frame>\[.*)",
    prefilter=r"\[(?:MO|AO)\]",
    literal=False,
    dir_map={"send": CP_TO_CSMS, "sent": CP_TO_CSMS, "recv": CSMS_TO_CP, "received": CSMS_TO_CP},
)

EVCC = LineSpec(
    pattern=r"^.*?\[ocpp[^\]]*\]\s+TRACE\s+(?P<ts>\d{4}/\d\d/\d\d \d\d:\d\d:\d\d(?:\.\d+)?)\s+"
    r"(?P<dir>send|sent|recv|received)(?: JSON message)?(?: (?:to|from))?(?: (?P<cp>[^\s\[]+?))?:?\s+"
    r"(?P<frame>\[.*)",
    prefilter="TRACE",
    dir_map={"send": CSMS_TO_CP, "sent": CSMS_TO_CP, "recv": CP_TO_CSMS, "received": CP_TO_CSMS},
)

CONSOLE = LineSpec(
    pattern=r"^(?:\[(?P<ts>\d[^\]]*)\]\s*)?.*?(?P<dir>>>|<<)\s*message\s+(?:sent|received|send|receive)\s*:?\s*"
    r"(?P<frame>\[.*)",
    prefilter="message ",
    dir_map={">>": CP_TO_CSMS, "<<": CSMS_TO_CP},
    junk=r"\s+color:[^\]]*$",
)

_PROXY_ENDS = r"(?:client|target|proxy|server|cp|cs|csms|charger|wallbox|station|evcc|backend|central)"
PROXY = LineSpec(
    pattern=_TS_OPT
    + r".*?\[(?P<dir>"
    + _PROXY_ENDS
    + "->"
    + _PROXY_ENDS
    + r")(?:-(?P<tag>[A-Za-z]+))?\]:?\s*"
    r"(?P<frame>\[.*)",
    prefilter="->",
    dir_map={
        **{
            f"{a}->{b}": CP_TO_CSMS
            for a in ("client", "cp", "charger", "wallbox", "station")
            for b in ("target", "proxy", "server", "csms", "cs", "evcc", "backend", "central")
        },
        **{
            f"{b}->{a}": CSMS_TO_CP
            for a in ("client", "cp", "charger", "wallbox", "station")
            for b in ("target", "proxy", "server", "csms", "cs", "evcc", "backend", "central")
        },
    },
    tag_notes={
        "BLOCKED": "blocked by the proxy, not forwarded",
        "FIXED": "rewritten by the proxy before forwarding",
        "CONFIG": "injected by the proxy",
    },
)

_MICRO_HINT = pl.when(pl.col("ts_text").str.contains(r"^\d\d:\d\d")).then(pl.lit(TIME_ONLY_HINT))


def read_steve(stream: TextIO, source: str, **kw) -> Iterator[pl.DataFrame]:
    return read_spec(STEVE, stream, source, **kw)


def read_microocpp(stream: TextIO, source: str, **kw) -> Iterator[pl.DataFrame]:
    return read_spec(MICROOCPP, stream, source, ts_hint_expr=_MICRO_HINT, **kw)


def read_evcc(stream: TextIO, source: str, **kw) -> Iterator[pl.DataFrame]:
    return read_spec(EVCC, stream, source, **kw)


def read_console(stream: TextIO, source: str, **kw) -> Iterator[pl.DataFrame]:
    return read_spec(CONSOLE, stream, source, **kw)


def read_proxy(stream: TextIO, source: str, **kw) -> Iterator[pl.DataFrame]:
    return read_spec(PROXY, stream, source, **kw)


# ------------------------------------------------------------------------------------- mobilityhouse

MOBILITYHOUSE = LineSpec(
    pattern=_TS_OPT
    + r"(?:.*?[\s:\]])?(?P<cp>[^\s:\[\]]+): (?P<dir>send|receive)(?: message)? (?P<frame>\[.*)",
    prefilter=r": (?:send|receive)",
    literal=False,
)
#: The ``logging.basicConfig`` layout (``2024-05-01 10:00:00,123 - ocpp - INFO - CP_1: send [...]``), read
#: by a stricter regex that captures exactly what :data:`MOBILITYHOUSE` would, about four times as fast: ASCII
#: classes only (Unicode ``\d``/``\s`` classes are large) and one way to read each byte, so the regex engine
#: can take its one-pass path. A charge point id with other characters takes the general regex.
MOBILITYHOUSE_BASIC = (
    r"^(?P<ts>[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2},[0-9]{3}) - [A-Za-z_][A-Za-z0-9_.]* - [A-Z]+ - "
    r"(?P<cp>[\x21-\x39\x3b-\x5a\x5c\x5e-\x7e]+): (?P<dir>send|receive) (?:message )?(?P<frame>\[.*)"
)
MH_CALLERROR = (
    _TS_OPT + r".*?Received a CALLError: <CallError - unique_id=(?P<frame>[^,]*), error_code=(?P<code>.*?), "
    r"error_description=(?P<desc>.*?), error_details=(?P<details>.*?)>'?\s*$"
)
MH_CALLERROR_SNIFF = re.compile(r"Received a CALLError: <CallError - unique_id=")
CALLERROR_NOTE = "rebuilt from the library's CallError warning (no 'receive message' line logged)"


def sniff_mobilityhouse(lines: list[str]) -> int:
    return sniff_spec(MOBILITYHOUSE, lines) + sum(1 for x in lines if MH_CALLERROR_SNIFF.search(x))


def _details_json(text: str | None) -> str:
    if text is None or text.strip() in ("", "None", "{}"):
        return "{}"
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return "{}"
    return orjson.dumps(value).decode() if isinstance(value, dict) else "{}"


@dataclass
class _MHState:
    perspective: str | None = None  # "cp" or "csms": whose log this is
    held: list[pl.DataFrame] = field(default_factory=list)
    held_rows: int = 0
    error_ids: deque[str] = field(default_factory=lambda: deque(maxlen=10_000))
    error_set: set[str] = field(default_factory=set)
    cps: set[str] = field(default_factory=set)

    def remember_error(self, mid: str) -> None:
        if len(self.error_ids) == self.error_ids.maxlen:
            self.error_set.discard(self.error_ids[0])
        self.error_ids.append(mid)
        self.error_set.add(mid)


def _vote(rows: pl.DataFrame) -> str | None:
    """Whose log: a charger sends CP-initiated CALLs and receives CSMS-initiated ones."""
    act = pl.col("text").str.extract(ACTION_OF_CALL, 1)
    send = pl.col("_dir") == "send"
    got = rows.select(
        cp=((send & act.is_in(CP_ACTIONS)) | (~send & act.is_in(CSMS_INITIATED))).sum(),
        csms=((send & act.is_in(CSMS_INITIATED)) | (~send & act.is_in(CP_ACTIONS))).sum(),
    ).row(0)
    if got[0] > got[1]:
        return "cp"
    if got[1] > got[0]:
        return "csms"
    return None


def _with_direction(rows: pl.DataFrame, perspective: str | None) -> pl.DataFrame:
    if perspective is None:
        return rows.with_columns(direction=pl.lit(None, pl.String), direction_inferred=pl.lit(False))
    send_dir, recv_dir = (CP_TO_CSMS, CSMS_TO_CP) if perspective == "cp" else (CSMS_TO_CP, CP_TO_CSMS)
    return rows.with_columns(
        direction=pl.when(pl.col("_dir") == "send")
        .then(pl.lit(send_dir))
        .when(pl.col("_dir") == "receive")
        .then(pl.lit(recv_dir)),
        direction_inferred=pl.col("_dir").is_not_null(),
    )


@dataclass
class _MHChunk:
    rows: pl.DataFrame
    callerror_lines: pl.DataFrame  # the library's "Received a CALLError" warnings
    mid: pl.DataFrame | None  # line 1 of a file that starts mid-line
    cps: list[str]  # a few charge points of the chunk
    error_ids: list[str]  # message ids of the chunk's CALLERROR frames, in order


def _mh_extract(first: int, text: str) -> _MHChunk:
    """The stateless (and costly) part of a chunk, run ahead on a worker thread."""
    lines = lines_frame(first, text)
    m = finish_frames(
        extract(lines, MOBILITYHOUSE.pattern, prefilter=MOBILITYHOUSE.prefilter, literal=False,
                fast=MOBILITYHOUSE_BASIC)
    )
    rows = m.select(
        pl.col("pos").alias("source_pos"),
        pl.col("ts").alias("ts_text"),
        pl.col("cp").alias("charge_point_id"),
        pl.col("dir").alias("_dir"),
        "text",
        "weird_reason",
        "weird_detail",
        pl.lit(None, pl.String).alias("note"),
    )
    ce = extract(lines, MH_CALLERROR, prefilter="Received a CALLError", literal=True)
    cps: list[str] = []
    error_ids: list[str] = []
    if rows.height:
        cps = rows["charge_point_id"].unique().drop_nulls().head(3).to_list()
        errs = rows.filter(pl.col("text").str.contains(r"^\[\s*[45]\s*,", literal=False))
        error_ids = errs["text"].str.extract(r'^\[\s*[45]\s*,\s*"([^"]*)"', 1).drop_nulls().to_list()
    return _MHChunk(rows, ce, _mid_line_row(lines, m), cps, error_ids)


def _mh_rows(chunk: _MHChunk, st: _MHState) -> pl.DataFrame:
    """The stateful part, in file order: charge points seen, CALLERROR ids, rebuilt CallError frames."""
    rows, ce, mid = chunk.rows, chunk.callerror_lines, chunk.mid
    st.cps.update(chunk.cps)
    for mid_ in chunk.error_ids:
        st.remember_error(mid_)
    if ce.height:
        only_cp = next(iter(st.cps)) if len(st.cps) == 1 else None
        extra = []
        for r in ce.iter_rows(named=True):
            if r["frame"] in st.error_set:
                continue  # the same error was logged as a 'receive message [4,...]' line
            frame = orjson.dumps(
                [4, r["frame"], r["code"], r["desc"], orjson.Fragment(_details_json(r["details"]))]
            )
            extra.append(
                {
                    "source_pos": r["pos"],
                    "ts_text": r["ts"],
                    "charge_point_id": only_cp,
                    "_dir": "receive",
                    "text": frame.decode(),
                    "weird_reason": None,
                    "weird_detail": None,
                    "note": CALLERROR_NOTE,
                }
            )
        if extra:
            rows = pl.concat([rows, pl.DataFrame(extra, schema=rows.schema)]).sort("source_pos")
    if mid is not None:
        rows = pl.concat([mid.rename({"pos": "source_pos"}), rows], how="diagonal_relaxed")
    return rows


def read_mobilityhouse(
    stream: TextIO, source: str, *, chunk_chars: int | None = None, batch_rows: int | None = None
) -> Iterator[pl.DataFrame]:
    b = Batcher(batch_rows)
    st = _MHState()

    def release(perspective: str | None) -> Iterator[pl.DataFrame]:
        for part in st.held:
            yield from b.add(to_raw(_with_direction(part, perspective).drop("_dir"), source))
        st.held, st.held_rows = [], 0

    for chunk in map_ahead(_mh_extract, _pieces(stream, chunk_chars)):
        rows = _mh_rows(chunk, st)
        if st.perspective is None and rows.height:
            st.perspective = _vote(rows)
        st.held.append(rows)
        st.held_rows += rows.height
        if st.perspective is not None or st.held_rows >= b.batch_rows:
            yield from release(st.perspective)
    yield from release(st.perspective)
    yield from b.finish()
