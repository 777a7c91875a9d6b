"""Shared machinery of the text log readers: chunked line reading, JSON bracket balancing, one-regex-per-line
extraction in Polars (Rust), and batching.

Every reader reads its text stream once, forward only, ``CHUNK_CHARS`` characters at a time, and yields
batches of at most ``batch_rows`` rows conforming to :data:`~ocpptool.sources.base.RAW_SCHEMA`.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TextIO, TypeVar

import polars as pl

from ..protocol.frames import excerpt
from .base import RAW_SCHEMA, conform

#: Characters read from the stream per chunk (tests change it to prove chunking does not matter).
CHUNK_CHARS = 1 << 20
#: Rows per batch handed to the decoder: small enough that decoding starts early and overlaps reading.
BATCH_ROWS = 50_000
#: A single line longer than this is cut (the rest continues as the same line number).
MAX_LINE_CHARS = 1 << 20
#: A frame longer than this is given up as truncated.
MAX_FRAME_CHARS = 1 << 20

#: An ISO-ish timestamp: ``2025-10-03 13:09:13,380``, ``2026-03-13T05:01:20.643Z``, ``... +02:00``.
TS_ISO = r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d+)?(?:\s?Z|\s?[+-]\d\d:?\d\d)?"
ANSI = r"\x1b\[[0-9;?]*[A-Za-z]"
_ANSI = re.compile(ANSI)



def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text) if "\x1b" in text else text


# --------------------------------------------------------------------------------------------- reading


def iter_chunks(stream: TextIO, chunk_chars: int | None = None) -> Iterator[tuple[int, str]]:
    """Yield ``(number of the first line, text of whole lines joined by "\\n", without the last newline)``.

    Works with short reads (pipes). A line longer than :data:`MAX_LINE_CHARS` is cut; its pieces keep the
    same line number.
    """
    size = chunk_chars or CHUNK_CHARS
    carry = ""
    lineno = 1
    while True:
        data = stream.read(size)
        if not data:
            break
        buf = carry + data if carry else data
        cut = buf.rfind("\n")
        if cut < 0:
            if len(buf) > MAX_LINE_CHARS:
                yield lineno, buf
                carry = ""
            else:
                carry = buf
            continue
        text = buf[:cut]
        carry = buf[cut + 1 :]
        yield lineno, text
        lineno += text.count("\n") + 1
    if carry:
        yield lineno, carry


_T = TypeVar("_T")

#: Chunks a reader extracts ahead of the one it hands out (on worker threads; each holds one chunk's rows).
AHEAD = 2


def map_ahead(fn: Callable[[int, str], _T], chunks: Iterable[tuple[int, str]], ahead: int | None = None) -> Iterator[_T]:
    """``fn(first, text)`` for every chunk, in order, computed up to ``ahead`` chunks ahead on worker threads.

    The per-chunk work is Polars (it releases the GIL), so extraction runs on the other core while the
    caller decodes; memory stays bounded by ``ahead`` chunks.
    """
    ahead = AHEAD if ahead is None else ahead
    if ahead <= 0:
        for first, text in chunks:
            yield fn(first, text)
        return
    pending: deque[Future[_T]] = deque()
    with ThreadPoolExecutor(max_workers=ahead, thread_name_prefix="ocpptool-read") as pool:
        for first, text in chunks:
            pending.append(pool.submit(fn, first, text))
            if len(pending) > ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


#: Characters of whole lines the vectorised readers extract at once (several reads merged): each extraction
#: has a fixed cost of a few dozen Polars calls, so bigger pieces cost less per line.
JOB_CHARS = 4 << 20


def merged_chunks(chunks: Iterable[tuple[int, str]], target: int | None = None) -> Iterator[tuple[int, str]]:
    """Merge consecutive chunks of whole lines into pieces of about ``target`` characters.

    A piece of a cut over-long line (its continuation starts on the same line number) is never merged, so
    every line keeps its number and its cuts.
    """
    target = target or JOB_CHARS
    parts: list[str] = []
    first, size, next_line = 0, 0, -1
    for start, text in chunks:
        if parts and (start != next_line or size >= target):
            yield first, "\n".join(parts)
            parts, size = [], 0
        if not parts:
            first = start
        parts.append(text)
        size += len(text) + 1
        next_line = start + text.count("\n") + 1
    if parts:
        yield first, "\n".join(parts)


def iter_lines(stream: TextIO, chunk_chars: int | None = None) -> Iterator[tuple[int, str]]:
    """Yield ``(line number, line)`` for Python-loop readers."""
    for first, text in iter_chunks(stream, chunk_chars):
        for i, line in enumerate(text.split("\n")):
            yield first + i, line


# ------------------------------------------------------------------------------------ bracket balance

_TOK = re.compile(r'["\\\[\]{}]')
_PAIR = {"]": "[", "}": "{"}


class Scan:
    """Incremental JSON bracket balancer that respects strings and escapes (across lines)."""

    __slots__ = ("stack", "in_str", "error", "error_at")

    def __init__(self) -> None:
        self.stack: list[str] = []
        self.in_str = False
        self.error: str | None = None
        self.error_at = -1

    def feed(self, s: str, pos: int = 0) -> int:
        """Advance over ``s`` from ``pos``; return the index just after the closing bracket, or -1."""
        skip = -1
        stack = self.stack
        for m in _TOK.finditer(s, pos):
            i = m.start()
            if i < skip:
                continue
            c = s[i]
            if self.in_str:
                if c == "\\":
                    skip = i + 2
                elif c == '"':
                    self.in_str = False
            elif c == '"':
                self.in_str = True
            elif c in "[{":
                stack.append(c)
            elif c == "\\":
                continue
            else:
                if not stack or stack[-1] != _PAIR[c]:
                    self.error = f"unbalanced {c!r} at character {i - pos + 1}"
                    self.error_at = i
                    return -1
                stack.pop()
                if not stack:
                    return i + 1
        return -1


def cut_frame(s: str) -> tuple[str, str | None, str | None]:
    """Cut the balanced JSON array that starts ``s`` (trailing junk ignored).

    Returns ``(text, weird_reason, weird_detail)``; the reason is null for a complete frame.
    """
    sc = Scan()
    end = sc.feed(s)
    if end > 0:
        return s[:end], None, None
    if sc.error:
        return excerpt(s), "unparsable-line", sc.error
    return excerpt(s.rstrip()), "truncated", "the frame's brackets never close on its line"


# ------------------------------------------------------------------------------ vectorised extraction


def lines_frame(first_line: int, text: str) -> pl.DataFrame:
    """A chunk of text as a frame of ``pos`` / ``line``, with ANSI colours and carriage returns removed."""
    s = pl.Series("line", [text], dtype=pl.String).str.split("\n").explode()
    if "\x1b" in text:
        s = s.str.replace_all(ANSI, "")
    if "\r" in text:
        s = s.str.strip_chars_end("\r")
    return (
        pl.DataFrame({"line": s})
        .with_row_index("pos", offset=first_line)
        .with_columns(pl.col("pos").cast(pl.Int64))
    )


_TAIL = "(?P<frame>\\[.*)"


def _split_pattern(pattern: str) -> str | None:
    """``^HEAD(?P<frame>\\[.*)`` -> ``^(?P<_pre>HEAD)(?P<frame>\\[)``: the regex then stops at the frame's
    first bracket instead of capturing the payload (about 2x faster); the frame is sliced off afterwards."""
    if pattern.startswith("^") and pattern.endswith(_TAIL):
        return "^(?P<_pre>" + pattern[1 : -len(_TAIL)] + ")(?P<frame>\\[)"
    return None


def extract(
    df: pl.DataFrame,
    pattern: str,
    *,
    prefilter: str | None = None,
    literal: bool = True,
    key: str = "frame",
    fast: str | None = None,
) -> pl.DataFrame:
    """Rows of ``df`` (``pos``, ``line``) matching ``pattern``, with its named groups as columns.

    A pattern ending in ``(?P<frame>\\[.*)`` gets ``frame`` = the rest of the line from that bracket.

    ``fast`` is an optional stricter pattern with the same groups, for a format's most common line shape:
    wherever it matches, it must capture exactly what ``pattern`` would (a test checks this), and being
    anchored and unambiguous it runs about twice as fast. Lines it does not match take ``pattern``.
    """
    if fast and not df.is_empty():
        split = _split_pattern(fast)
        assert split is not None, "a fast pattern ends in (?P<frame>\\[.*)"
        g = df.with_columns(pl.col("line").str.extract_groups(split).alias("_g")).unnest("_g")
        hit = pl.col(key).is_not_null()
        done = g.filter(hit).with_columns(frame=pl.col("line").str.slice(pl.col("_pre").str.len_chars()))
        done = done.drop("_pre")
        if done.height == df.height:
            return done
        rest = extract(g.filter(~hit).select(df.columns), pattern, prefilter=prefilter, literal=literal, key=key)
        if done.is_empty():
            return rest
        return pl.concat([done, rest.select(done.columns)]).sort("pos")
    if prefilter:
        df = df.filter(pl.col("line").str.contains(prefilter, literal=literal))
    names = [n for n in re.compile(pattern).groupindex if not n.startswith("_")]
    if df.is_empty():
        return pl.DataFrame(schema={"pos": pl.Int64, "line": pl.String, **{n: pl.String for n in names}})
    split = _split_pattern(pattern)
    out = df.with_columns(pl.col("line").str.extract_groups(split or pattern).alias("_g")).unnest("_g")
    out = out.filter(pl.col(key).is_not_null())
    if split:
        out = out.with_columns(frame=pl.col("line").str.slice(pl.col("_pre").str.len_chars())).drop("_pre")
    return out


def finish_frames(df: pl.DataFrame, col: str = "frame", junk: str | None = None) -> pl.DataFrame:
    """Add ``text``, ``weird_reason``, ``weird_detail`` from a column holding "the frame and what follows".

    Fast path in Polars: the column (minus trailing whitespace and ``junk``) ends with ``]`` and its
    brackets balance by count. The other rows are cut by :func:`cut_frame` in Python.
    """
    if df.is_empty():
        return df.with_columns(
            text=pl.lit(None, pl.String),
            weird_reason=pl.lit(None, pl.String),
            weird_detail=pl.lit(None, pl.String),
        )
    fr = pl.col(col)
    if junk:
        fr = fr.str.replace(junk, "")
    fr = fr.str.strip_chars_end()
    df = df.with_columns(text=fr).with_columns(
        _ok=pl.col("text").str.ends_with("]")
        & (pl.col("text").str.count_matches(r"[\[{]") == pl.col("text").str.count_matches(r"[\]}]"))
    )
    slow_idx = df.select(pl.arg_where(~pl.col("_ok").fill_null(False))).to_series()
    if len(slow_idx):
        raw = df[col].gather(slow_idx).to_list()
        cut = [cut_frame(r or "") for r in raw]
        text = df["text"].scatter(slow_idx, [c[0] for c in cut])
        n = df.height
        reason = pl.Series("weird_reason", [None] * n, dtype=pl.String).scatter(slow_idx, [c[1] for c in cut])
        detail = pl.Series("weird_detail", [None] * n, dtype=pl.String).scatter(slow_idx, [c[2] for c in cut])
        return df.with_columns(text=text, weird_reason=reason, weird_detail=detail).drop("_ok")
    return df.with_columns(weird_reason=pl.lit(None, pl.String), weird_detail=pl.lit(None, pl.String)).drop(
        "_ok"
    )


def to_raw(df: pl.DataFrame, source: str, **lits: object) -> pl.DataFrame:
    """Select RAW columns present in ``df`` (plus literal columns), fill the rest with nulls, conform."""
    cols = [pl.lit(source).alias("source")]
    for name, value in lits.items():
        cols.append(pl.lit(value, dtype=RAW_SCHEMA[name]).alias(name))
    keep = [c for c in df.columns if c in RAW_SCHEMA and c not in lits and c != "source"]
    out = df.select(*keep, *cols)
    if "conn" not in out.columns and "charge_point_id" in out.columns:
        out = out.with_columns(conn=pl.col("charge_point_id"))
    if "direction_inferred" in out.columns:
        out = out.with_columns(pl.col("direction_inferred").fill_null(False))
    else:
        out = out.with_columns(direction_inferred=pl.lit(False))
    return conform(out)


class Batcher:
    """Collect RAW frames and hand out batches of exactly ``batch_rows`` rows (the last may be shorter)."""

    def __init__(self, batch_rows: int | None = None) -> None:
        self.batch_rows = batch_rows or BATCH_ROWS
        self.parts: list[pl.DataFrame] = []
        self.n = 0

    def add(self, df: pl.DataFrame) -> Iterator[pl.DataFrame]:
        if df.is_empty():
            return
        self.parts.append(df)
        self.n += df.height
        while self.n >= self.batch_rows:
            whole = pl.concat(self.parts, how="vertical") if len(self.parts) > 1 else self.parts[0]
            yield whole.head(self.batch_rows)
            rest = whole.slice(self.batch_rows)
            self.parts = [rest] if rest.height else []
            self.n = rest.height

    def finish(self) -> Iterator[pl.DataFrame]:
        if self.n:
            yield pl.concat(self.parts, how="vertical") if len(self.parts) > 1 else self.parts[0]
        self.parts, self.n = [], 0


# -------------------------------------------------------------------------------- frames in free text

#: Where an OCPP-J frame may start: ``[2,"``, ``[3, "`` ... (the message id is a string).
FRAME_START = re.compile(r'\[\s*[2-6]\s*,\s*"')
LEADING_TS = re.compile(r"^\W{0,3}(" + TS_ISO + r")")


def first_frame_in(line: str) -> tuple[str, str | None, str | None] | None:
    """The first frame in a single line (used for a file's first line when it starts mid-line)."""
    m = FRAME_START.search(line)
    if not m:
        return None
    return cut_frame(line[m.start() :])
