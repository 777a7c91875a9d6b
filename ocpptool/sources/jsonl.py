"""JSON-lines sources: Open OCPP Trace (read and write) and other one-object-per-line logs.

Both are read in byte chunks by Polars' NDJSON reader (Rust, no per-line Python) with an explicit schema
of String columns; nested values (a frame given as an array, a payload object) arrive as their JSON text.
A chunk with a broken line falls back to checking line by line, so the broken lines become weirds and
every good line around them is kept.
"""

from __future__ import annotations

import io
import json
import os
import re
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import BinaryIO

import orjson
import polars as pl

from ..arrow_c import column
from ..protocol.actions import normalise_direction
from .base import SourceNote, conform

_speedups: types.ModuleType | None
try:  # the compiled line splitter (ocpptool/_speedups.c); optional
    from .. import _speedups
except ImportError:  # pragma: no cover - a build without a C compiler
    _speedups = None

CHUNK_BYTES = 16 << 20

TS_KEYS = ("timestamp", "ts", "time", "@timestamp", "datetime", "date", "observed_at", "received_at", "t")
CP_KEYS = (
    "charge_point_id", "chargePointId", "charge_point", "chargePoint", "cp_id", "cpId", "cp",
    "stationId", "station_id", "chargeBoxId", "charge_box_id", "chargingStationId", "identity", "client_id",
    "clientId", "id",
)  # fmt: skip
DIR_KEYS = ("direction", "dir", "flow", "route")
MSG_KEYS = ("message", "msg", "frame", "raw", "payload_raw", "data", "ocpp", "text", "body", "content")
PROTO_KEYS = ("subprotocol", "protocol", "ocpp_version", "ocppVersion", "version")
CONN_KEYS = ("conn", "connection", "connection_id", "session", "session_id", "sessionId")

TRACE_SCHEMA = {
    "timestamp": pl.String, "ocppVersion": pl.String, "chargePointId": pl.String, "direction": pl.String,
    "messageType": pl.String, "messageId": pl.String, "action": pl.String, "payload": pl.String,
    "raw": pl.String, "error": pl.String, "schemaVersion": pl.String, "meta": pl.String,
}  # fmt: skip

# JSON-lines logs are written by CSMSs: "in"/"out"/"sent"/"received" are read from the CSMS's side.
_PERSPECTIVE = "csms"


def _first(keys: tuple[str, ...], seen: dict[str, int]) -> str | None:
    return next((k for k in keys if k in seen), None)


def sample_objects(lines: list[bytes]) -> list[dict]:
    out = []
    for line in lines:
        line = line.strip()
        if not line:
            continue
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(value, dict):
            out.append(value)
    return out


def is_trace(objs: list[dict]) -> bool:
    hits = sum(1 for o in objs if "schemaVersion" in o and "messageType" in o and "direction" in o)
    return bool(objs) and hits >= max(1, len(objs) // 2)


def jsonl_fields(objs: list[dict]) -> dict[str, str | None] | None:
    """Which keys hold time, charge point, direction, frame ... in this log; None if no frame key."""
    seen: dict[str, int] = {}
    for o in objs:
        for k, v in o.items():
            if k in MSG_KEYS and not _looks_like_frame(v):
                continue
            seen[k] = seen.get(k, 0) + 1
    msg = _first(MSG_KEYS, seen)
    if msg is None:
        return None
    return {
        "ts": _first(TS_KEYS, seen),
        "cp": _first(CP_KEYS, seen),
        "direction": _first(DIR_KEYS, seen),
        "message": msg,
        "subprotocol": _first(PROTO_KEYS, seen),
        "conn": _first(CONN_KEYS, seen),
    }


def _looks_like_frame(v: object) -> bool:
    if isinstance(v, list):
        return bool(v) and v[0] in (2, 3, 4, 5, 6)
    if isinstance(v, str):
        s = v.lstrip()
        return s.startswith("[") and s[1:].lstrip()[:1] in ("2", "3", "4", "5", "6")
    return False


def _blocks(stream: BinaryIO, on_bytes: Callable[[int], None] | None) -> Iterator[memoryview]:
    """Views of whole lines, each block read straight into its own buffer (one copy). The file is read, not
    mapped: a log truncated while it is read (rotation by copy and truncate) then ends early instead of
    killing the process with SIGBUS. The last line gets its newline if the file lacks one."""
    carry = b""
    readinto = getattr(stream, "readinto", None)
    while True:
        buf = bytearray(len(carry) + CHUNK_BYTES)
        buf[: len(carry)] = carry
        if readinto is not None:
            got = readinto(memoryview(buf)[len(carry) :]) or 0
        else:  # pragma: no cover - every binary stream ocpptool opens has readinto
            block = stream.read(CHUNK_BYTES)
            got = len(block)
            buf[len(carry) : len(carry) + got] = block
        if on_bytes and got:
            on_bytes(got)
        size = len(carry) + got
        if not got:
            if carry:
                yield memoryview(carry if carry.endswith(b"\n") else carry + b"\n")
            return
        cut = buf.rfind(b"\n", 0, size)
        if cut < 0:  # one line longer than a block
            carry = bytes(buf[:size])
            continue
        carry = bytes(buf[cut + 1 : size])
        yield memoryview(buf)[: cut + 1]


def _chunks(stream: BinaryIO, on_bytes: Callable[[int], None] | None) -> Iterator[tuple[int, bytes, int]]:
    """Yield (first line number, chunk of whole lines, number of lines), for the Polars reader."""
    line_no = 1
    for view in _blocks(stream, on_bytes):
        chunk = view.tobytes()
        n = chunk.count(b"\n")
        yield line_no, chunk, n
        line_no += n


def _read_chunk(
    chunk: bytes, first_line: int, schema: dict, n_lines: int | None = None
) -> tuple[pl.DataFrame, list[tuple[int, str, str]]]:
    """Parse one chunk (of ``n_lines`` lines, counted if not given); returns the rows (with ``_line``) and
    broken lines as (line, reason, excerpt)."""
    try:
        df = pl.read_ndjson(chunk, schema=schema)
    except Exception:  # noqa: BLE001 - a broken line somewhere: find it line by line below
        df = None
    # The reader skips blank lines; only when every line gave a row do row numbers equal line numbers.
    # It also takes a lone surrogate escape ("\ud800"), which the line-by-line check below refuses: such
    # chunks are read line by line, so that a line is broken or not whatever else its chunk holds.
    if (
        df is not None
        and df.height == (chunk.count(b"\n") if n_lines is None else n_lines)
        and not _lone_surrogate_escape(chunk)
    ):
        return df.with_row_index("_line", offset=first_line).with_columns(pl.col("_line").cast(pl.Int64)), []
    good: list[bytes] = []
    good_lines: list[int] = []
    bad: list[tuple[int, str, str]] = []
    for i, line in enumerate(chunk.split(b"\n")[:-1]):
        if not line.strip():
            continue
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            bad.append(
                (first_line + i, f"not a JSON object: {exc.msg}", line[:200].decode("utf-8", "replace"))
            )
            continue
        if not isinstance(value, dict):
            bad.append((first_line + i, "JSON line is not an object", line[:200].decode("utf-8", "replace")))
            continue
        good.append(line)
        good_lines.append(first_line + i)
    if good:
        try:
            df = pl.read_ndjson(io.BytesIO(b"\n".join(good) + b"\n"), schema=schema)
        except Exception as exc:  # noqa: BLE001 - e.g. a field of an impossible type
            bad.extend((n, f"unreadable record: {exc}".splitlines()[0][:120], "") for n in good_lines)
            df = pl.DataFrame(schema=schema)
            good_lines = []
    else:
        df = pl.DataFrame(schema=schema)
    return df.with_columns(_line=pl.Series(good_lines, dtype=pl.Int64)), bad


def _in_line_order(parts: list[pl.DataFrame]) -> pl.DataFrame:
    """Broken lines and good rows back in line order (weirds are reported in the order of the file)."""
    if not parts:
        return conform(pl.DataFrame())
    return parts[0] if len(parts) == 1 else pl.concat(parts).sort("source_pos", maintain_order=True)


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE_PAIR = re.compile(rb"\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}")


def _lone_surrogate_escape(chunk: bytes) -> bool:
    """Whether the chunk may hold a \\uD800-\\uDFFF escape that is not part of a pair (cheap when it has none)."""
    if b"\\ud" not in chunk and b"\\uD" not in chunk:
        return False
    return _SURROGATE_ESCAPE.search(_SURROGATE_PAIR.sub(b"", chunk)) is not None


def _bad_rows(bad: list[tuple[int, str, str]], source: str) -> pl.DataFrame:
    return conform(
        pl.DataFrame(
            {
                "source_pos": [b[0] for b in bad],
                "weird_detail": [b[1] for b in bad],
                "text": [b[2] for b in bad],
            },
            schema={"source_pos": pl.Int64, "weird_detail": pl.String, "text": pl.String},
        ).with_columns(source=pl.lit(source), weird_reason=pl.lit("unparsable-line"))
    )


def _json_str(col: str) -> pl.Expr:
    """A JSON string literal for a column's text (quotes and backslashes escaped)."""
    escaped = (
        pl.col(col).str.replace_all("\\", "\\\\", literal=True).str.replace_all('"', '\\"', literal=True)
    )
    return pl.concat_str([pl.lit('"'), escaped, pl.lit('"')])


_NOT_BUILT = (
    "JSON lines read without the compiled splitter (ocpptool/_speedups.c was not built when ocpptool was "
    "installed, no C compiler?): install gcc and the Python headers and reinstall to read them ~2.4x faster"
)


def splitter_state() -> str:
    """For ``ocpptool --version``: whether JSON lines are split, and payloads read for the analysis, in C."""
    if _speedups is None:
        return "compiled JSON-lines splitter: not built"
    if os.environ.get("OCPPTOOL_PURE"):
        return "compiled JSON-lines splitter: off (OCPPTOOL_PURE)"
    if not hasattr(_speedups, "walk_payloads"):  # an extension built from an older ocpptool/_speedups.c
        return "compiled JSON-lines splitter: on; payload walker: not built (rebuild: uv sync --reinstall-package ocpptool)"
    return "compiled JSON-lines splitter: on; payload walker: on"


def _compiled(split: bool) -> bool:
    return split and _speedups is not None and not os.environ.get("OCPPTOOL_PURE")


def read_trace(
    stream: BinaryIO, source: str, on_bytes=None, *, split: bool = True
) -> Iterator[Callable[[], pl.DataFrame] | SourceNote]:
    """Open OCPP Trace v1.x JSONL. The frame text is ``raw`` when present, otherwise rebuilt from fields.

    Yields thunks (one per chunk) so that parsing runs on the decoder's worker threads. With ``split`` (and
    the compiled splitter built), records with a ``raw`` frame are split in C, as in :func:`read_jsonl`.
    """
    if _compiled(split):
        yield from _compiled_thunks(stream, on_bytes, partial(_compiled_chunk, source=source, layout=_TRACE))
        return
    if split and _speedups is None:
        yield SourceNote(_NOT_BUILT)
    for first, chunk, n in _chunks(stream, on_bytes):
        yield partial(_trace_chunk, chunk, first, source, n)


def _trace_chunk(chunk: bytes, first: int, source: str, n_lines: int | None = None) -> pl.DataFrame:
    df, bad = _read_chunk(chunk, first, TRACE_SCHEMA, n_lines)
    parts = [_bad_rows(bad, source)] if bad else []
    if df.height:
        parts.append(_trace_rows(df, source))
    return _in_line_order(parts)


def _trace_rows(df: pl.DataFrame, source: str) -> pl.DataFrame:
    if True:
        mt = pl.col("messageType").str.to_uppercase()
        payload = pl.coalesce(pl.col("payload"), pl.lit("{}"))
        err = pl.col("error")
        rebuilt = (
            pl.when(mt == "CALL")
            .then(pl.concat_str([pl.lit("[2,"), _json_str("messageId"), pl.lit(","), _json_str("action"),
                                 pl.lit(","), payload, pl.lit("]")]))
            .when(mt == "CALLRESULT")
            .then(pl.concat_str([pl.lit("[3,"), _json_str("messageId"), pl.lit(","), payload, pl.lit("]")]))
            .when(mt == "CALLERROR")
            .then(
                pl.concat_str([
                    pl.lit("[4,"), _json_str("messageId"), pl.lit(","),
                    _json_str("_ecode"), pl.lit(","), _json_str("_edesc"), pl.lit(","),
                    pl.coalesce(pl.col("_edetails"), pl.lit("{}")), pl.lit("]"),
                ])
            )
        )  # fmt: skip
        df = df.with_columns(
            _ecode=pl.coalesce(err.str.json_path_match("$.code"), pl.lit("")),
            _edesc=pl.coalesce(err.str.json_path_match("$.description"), pl.lit("")),
            _edetails=err.str.json_path_match("$.details"),
        )
        direction = _map_unique(df, "direction", _direction)
        out = df.select(
            ts_text=pl.col("timestamp"),
            source=pl.lit(source),
            source_pos=pl.col("_line"),
            conn=pl.coalesce(pl.col("meta").str.json_path_match("$.ocpptool.conn"), pl.col("chargePointId")),
            charge_point_id=pl.col("chargePointId"),
            direction=direction,
            subprotocol=pl.concat_str([pl.lit("ocpp"), pl.col("ocppVersion")]),
            text=pl.coalesce(pl.col("raw"), rebuilt),
            weird_reason=pl.when(pl.col("raw").is_null() & rebuilt.is_null()).then(pl.lit("unparsable-line")),
            weird_detail=pl.when(pl.col("raw").is_null() & rebuilt.is_null()).then(
                pl.lit("trace record without a frame (unknown messageType)")
            ),
        )
        return conform(out)


def read_jsonl(
    stream: BinaryIO, source: str, fields: dict[str, str | None], on_bytes=None, *, split: bool = True
) -> Iterator[Callable[[], pl.DataFrame] | SourceNote]:
    """Generic JSON lines with the keys found by :func:`jsonl_fields` (thunks, as :func:`read_trace`).

    With ``split`` (and the compiled splitter built), rows come with their frame already split and without
    its text; otherwise every row has the frame's text."""
    if _compiled(split):
        layout = _Layout(
            fields, _subprotocol, lambda chunk, first, src, n: _jsonl_chunk_polars(chunk, first, src, fields, n)
        )
        yield from _compiled_thunks(stream, on_bytes, partial(_compiled_chunk, source=source, layout=layout))
        return
    if split and _speedups is None:
        yield SourceNote(_NOT_BUILT)
    for first, chunk, n in _chunks(stream, on_bytes):
        yield partial(_jsonl_chunk_polars, chunk, first, source, fields, n)


def _compiled_thunks(
    stream: BinaryIO, on_bytes: Callable[[int], None] | None, split: Callable[..., pl.DataFrame]
) -> Iterator[Callable[[], pl.DataFrame]]:
    """Thunks that split chunks in C: the views of :func:`_blocks`, numbered without a copy."""
    assert _speedups is not None
    line_no = 1
    for view in _blocks(stream, on_bytes):
        yield partial(split, view, line_no)
        line_no += _speedups.count_lines(view)


#: message type ids of the frames the compiled splitter accepts
_SPLIT_TYPES = {2: "CALL", 3: "CALLRESULT", 4: "CALLERROR", 5: "CALLRESULTERROR", 6: "SEND"}
_ROLES = ("ts", "cp", "direction", "message", "subprotocol", "conn")


@dataclass(frozen=True)
class _Layout:
    """Where the compiled splitter finds a record's parts (keys by role; a dotted key reads inside an
    object), how the subprotocol value reads, and the reader of the lines it leaves (the reference)."""

    fields: dict[str, str | None]
    subprotocol: Callable[[str], str | None]
    slow_reader: Callable[..., pl.DataFrame]  # (chunk, first line, source, number of lines)


_TRACE = _Layout(
    {"ts": "timestamp", "cp": "chargePointId", "direction": "direction", "message": "raw",
     "subprotocol": "ocppVersion", "conn": "meta.ocpptool.conn"},
    lambda v: f"ocpp{v}",
    _trace_chunk,
)  # fmt: skip


def _compiled_chunk(chunk: bytes | memoryview, first: int, *, source: str, layout: _Layout) -> pl.DataFrame:
    """The compiled splitter reads every line it fully understands into columns, frame already split and
    payload validated (``_pre`` rows, see :func:`ocpptool.tables.build.decode_batch`); the lines it leaves
    (broken lines, other frame layouts, escapes in keys ...) go through the layout's Polars reader, which
    is the reference. Both kinds of row come back in line order."""
    assert _speedups is not None
    keys = tuple(k.encode() if (k := layout.fields.get(r)) else None for r in _ROLES)
    cols, slow, lines_seen = _speedups.split_jsonl(chunk, keys, first)
    if lines_seen < 0:  # a layout the splitter never takes (say, escapes in every id): all to the reference
        return layout.slow_reader(bytes(chunk), first, source, None)
    df = pl.DataFrame([column(name, c) for name, c in cols.items()])
    fast = df.select(
        ts=pl.col("ts").cast(pl.Datetime("us", "UTC")),
        ts_text=pl.col("ts_text"),
        source=pl.lit(source),
        source_pos=pl.col("line"),
        conn=pl.coalesce(pl.col("conn"), pl.col("charge_point_id")),
        charge_point_id=pl.col("charge_point_id"),
        direction=_map_unique(df, "direction", _direction),
        subprotocol=_map_unique(df, "subprotocol", layout.subprotocol),
        message_type=pl.col("message_type").replace_strict(_SPLIT_TYPES, return_dtype=pl.String),
        message_id=pl.col("message_id"),
        action=pl.col("action"),
        payload=pl.col("payload"),
        error_code=pl.col("error_code"),
        error_description=pl.col("error_description"),
        # the splitter takes error frames only with empty details (other details are re-serialised)
        error_details=pl.when(pl.col("error_code").is_not_null()).then(pl.lit("{}")),
    )
    fast = conform(fast).hstack([fast[c] for c in PRESPLIT]).with_columns(_pre=pl.lit(True))
    if not slow:
        return fast
    numbers = pl.Series([s[0] for s in slow], dtype=pl.Int64)
    lines = b"\n".join(chunk[s[1] : s[2]] for s in slow) + b"\n"
    rest = layout.slow_reader(lines, 0, source, len(slow))
    rest = rest.with_columns(source_pos=numbers.gather(rest["source_pos"]))
    return pl.concat([fast, rest], how="diagonal").sort("source_pos").with_columns(pl.col("_pre").fill_null(False))


#: the columns of an already split frame in a RawBatch from the compiled splitter
PRESPLIT = ["message_type", "message_id", "action", "payload", "error_code", "error_description",
            "error_details"]


def _jsonl_chunk_polars(
    chunk: bytes, first: int, source: str, fields: dict[str, str | None], n_lines: int | None = None
) -> pl.DataFrame:
    schema = {k: pl.String for k in fields.values() if k}
    df, bad = _read_chunk(chunk, first, schema, n_lines)
    parts = [_bad_rows(bad, source)] if bad else []
    if df.height:
        key = fields["message"]
        assert key is not None
        df = _arrays_as_written(df, chunk, first, key)
        parts.append(_jsonl_rows(df, source, fields))
    return _in_line_order(parts)


_DECODER = json.JSONDecoder()
_WS = " \t\r\n"


def _arrays_as_written(df: pl.DataFrame, chunk: bytes, first: int, key: str) -> pl.DataFrame:
    """Frames stored as JSON arrays keep their text as written in the line.

    Polars' NDJSON reader hands a nested value over as its own re-serialisation (spaces added, and
    backslashes inside strings not escaped again, which changes or breaks the frame). Lines whose frame is
    an array (found by a cheap search first) are walked here with the standard library's JSON scanner,
    which gives the exact span of the top-level member.
    """
    probe = re.compile(rb'"' + re.escape(key.encode()) + rb'"\s*:\s*\[')
    if not probe.search(chunk):
        return df
    named = re.compile(rb'"' + re.escape(key.encode()) + rb'"\s*:')
    lines = chunk.split(b"\n")
    fixed: list[str | None] = []
    for n in df["_line"].to_list():
        line = lines[n - first] if 0 <= n - first < len(lines) else b""
        found = probe.search(line)
        if found is None:
            fixed.append(None)
            continue
        if len(named.findall(line)) == 1:
            # the usual line, written compactly: the key occurs once (so it is the top-level member) and
            # the frame's compact form stands where it does; anything else takes the exact walk below
            try:
                value = orjson.loads(line).get(key)
            except (orjson.JSONDecodeError, AttributeError):
                value = None
            if isinstance(value, list):
                dumped = orjson.dumps(value)
                at = found.end() - 1
                if line[at : at + len(dumped)] == dumped:
                    fixed.append(dumped.decode())
                    continue
        fixed.append(_member_as_written(line, key))
    return df.with_columns(pl.coalesce(pl.Series(fixed, dtype=pl.String), pl.col(key)).alias(key))


def _member_as_written(line: bytes, key: str) -> str | None:
    """The text of the top-level member ``key`` of a one-object JSON line when it is an array (the first
    such member, as Polars takes), else None."""
    try:
        s = line.decode("utf-8")
        i = len(s) - len(s.lstrip(_WS))
        if s[i] != "{":
            return None
        i += 1
        while True:
            while s[i] in _WS:
                i += 1
            if s[i] != '"':
                return None
            name, i = json.decoder.scanstring(s, i + 1)  # type: ignore[attr-defined]
            while s[i] in _WS:
                i += 1
            if s[i] != ":":
                return None
            i += 1
            while s[i] in _WS:
                i += 1
            _, end = _DECODER.raw_decode(s, i)
            if name == key:
                return s[i:end] if s[i] == "[" else None
            i = end
            while s[i] in _WS:
                i += 1
            if s[i] != ",":
                return None
            i += 1
    except (ValueError, IndexError):
        return None


def _map_unique(df: pl.DataFrame, key: str | None, fn: Callable[[str], str | None]) -> pl.Expr:
    """Map a low-cardinality column through ``fn`` once per distinct value, not once per row."""
    if not key:
        return pl.lit(None, dtype=pl.String)
    mapping = {v: fn(v) for v in df[key].unique().drop_nulls().to_list()}
    return pl.col(key).replace_strict(mapping, default=None, return_dtype=pl.String)


def _direction(value: str) -> str | None:
    return normalise_direction(value, perspective=_PERSPECTIVE)


def _subprotocol(value: str) -> str | None:
    v = value.strip()
    return v if v.lower().startswith("ocpp") else f"ocpp{v}"


def _jsonl_rows(df: pl.DataFrame, source: str, fields: dict[str, str | None]) -> pl.DataFrame:
    def col(role: str) -> pl.Expr:
        key = fields.get(role)
        return pl.col(key) if key else pl.lit(None, dtype=pl.String)

    text = col("message")
    out = df.select(
        ts_text=col("ts"),
        source=pl.lit(source),
        source_pos=pl.col("_line"),
        conn=pl.coalesce(col("conn"), col("cp")),
        charge_point_id=col("cp"),
        direction=_map_unique(df, fields.get("direction"), _direction),
        subprotocol=_map_unique(df, fields.get("subprotocol"), _subprotocol),
        text=text,
        weird_reason=pl.when(text.is_null()).then(pl.lit("unparsable-line")),
        weird_detail=pl.when(text.is_null()).then(pl.lit(f"record without a '{fields['message']}' field")),
    )
    return conform(out)
