"""Source adapters: turn files (or stdin) into RawBatch frames, detecting the format from content.

:func:`read_inputs` is the one entry point: it expands directories, opens gzip transparently, sniffs each
input (magic bytes, then JSON lines, then the text log formats), and yields batches tagged with their
source. Errors that make a whole input unusable are :class:`SourceError` with a one-line message.
"""

from __future__ import annotations

import gzip
import io
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .base import RAW_SCHEMA, RawBatch, SourceError, SourceItem, conform
from .capture import CaptureOptions

SNIFF_BYTES = 64 << 10
PCAP_MAGICS = (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"

__all__ = [
    "RAW_SCHEMA",
    "RawBatch",
    "SourceError",
    "conform",
    "input_formats",
    "read_inputs",
    "expand_inputs",
]


class _Counting(io.RawIOBase):
    """Counts bytes read from the underlying file, for progress."""

    def __init__(self, raw: BinaryIO, on_bytes: Callable[[int], None] | None) -> None:
        self.raw = raw
        self.on_bytes = on_bytes

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        n = self.raw.readinto(b)  # type: ignore[attr-defined]
        if n and self.on_bytes:
            self.on_bytes(n)
        return n or 0


class _Prefixed(io.RawIOBase):
    """A stream that first replays ``head`` (already read for sniffing), then continues with ``rest``."""

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        self.head = memoryview(head)
        self.rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        if len(self.head):
            n = min(len(b), len(self.head))
            b[:n] = self.head[:n]
            self.head = self.head[n:]
            return n
        data = self.rest.read(len(b))
        b[: len(data)] = data
        return len(data)


def input_formats() -> dict[str, str]:
    """Every ``--input-format`` name with a one-line description."""
    from .textlogs import TEXT_FORMATS

    out = {
        "trace": "Open OCPP Trace JSONL (schema v1)",
        "jsonl": "JSON lines with a timestamp, charge point, direction and frame",
    }
    out.update({f.name: f.description for f in TEXT_FORMATS})
    return out


def expand_inputs(inputs: list[str]) -> list[str]:
    """Expand directories (recursively, sorted, hidden files skipped); ``-`` is stdin."""
    out: list[str] = []
    for item in inputs:
        if item == "-":
            out.append(item)
            continue
        p = Path(item)
        if p.is_dir():
            files = sorted(
                f
                for f in p.rglob("*")
                if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts)
            )
            if not files:
                raise SourceError(f"{item}: directory holds no files")
            out.extend(str(f) for f in files)
        elif p.exists():
            out.append(item)
        else:
            raise SourceError(f"{item}: no such file or directory")
    return out


def _open_binary(path: str) -> BinaryIO:
    if path == "-":
        return sys.stdin.buffer
    try:
        return open(path, "rb")  # noqa: SIM115 - closed by the caller
    except IsADirectoryError:
        raise SourceError(f"{path}: is a directory") from None
    except PermissionError:
        raise SourceError(f"{path}: permission denied") from None
    except OSError as exc:
        raise SourceError(f"{path}: cannot open ({exc.strerror})") from None


@dataclass
class Sniffed:
    kind: str  # "trace" | "jsonl" | "pcap" | a text format name
    stream: BinaryIO
    detail: dict | None = None
    on_bytes: Callable[[int], None] | None = None  # set when the reader itself reports bytes read


def sniff(path: str, raw: BinaryIO, forced: str | None = None) -> Sniffed:
    head = raw.read(SNIFF_BYTES)
    stream: BinaryIO = io.BufferedReader(_Prefixed(head, raw), buffer_size=1 << 20)  # type: ignore[arg-type]
    if head[:2] == b"\x1f\x8b":
        gz = gzip.GzipFile(fileobj=stream, mode="rb")
        try:
            inner = gz.read(SNIFF_BYTES)
        except (OSError, EOFError) as exc:
            raise SourceError(f"{path}: damaged gzip file ({exc})") from None
        head = inner
        stream = io.BufferedReader(_Prefixed(inner, gz), buffer_size=1 << 20)  # type: ignore[arg-type]
    if not head.strip():
        raise SourceError(f"{path}: empty file")
    if head[:4] in PCAP_MAGICS or head[:4] == PCAPNG_MAGIC:
        return Sniffed("pcap", stream)
    if forced and head[:4] not in PCAP_MAGICS and head[:4] != PCAPNG_MAGIC:
        if forced in ("trace", "jsonl"):
            detail = None
            if forced == "jsonl":
                detail = _jsonl_detail(path, head, required=True)
            return Sniffed(forced, stream, detail)
        if forced not in input_formats():
            raise SourceError(f"unknown --input-format {forced!r} (choose from {', '.join(input_formats())})")
        return Sniffed(forced, stream)
    if b"\x00" in head:
        raise SourceError(f"{path}: binary file, not an OCPP log, trace or capture")
    from .jsonl import is_trace, sample_objects

    lines = head.split(b"\n")
    if len(head) == SNIFF_BYTES and len(lines) > 1:
        lines = lines[:-1]  # the last line may be cut
    objs = sample_objects(lines[:200])
    nonblank = [x for x in lines[:200] if x.strip()]
    if objs and len(objs) >= max(1, len(nonblank) // 2):
        if is_trace(objs):
            return Sniffed("trace", stream)
        detail = _jsonl_detail(path, head, required=False)
        if detail:
            return Sniffed("jsonl", stream, detail)
    from .textlogs import sniff_text

    text_lines = head.decode("utf-8", "replace").splitlines()[:200]
    fmt = sniff_text(text_lines)
    if fmt is None:
        raise SourceError(
            f"{path}: unrecognised input: no OCPP-J frames found in the first {len(head) // 1024 or 1} KB "
            "(use --input-format to choose a reader)"
        )
    return Sniffed(fmt.name, stream)


def _jsonl_detail(path: str, head: bytes, *, required: bool) -> dict | None:
    from .jsonl import jsonl_fields, sample_objects

    fields = jsonl_fields(sample_objects(head.split(b"\n")[:200]))
    if fields is None and required:
        raise SourceError(
            f"{path}: JSON lines without a frame field (looked for message, msg, frame, raw ...)"
        )
    return fields


def read_one(
    path: str,
    *,
    input_format: str | None = None,
    capture: CaptureOptions | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> Iterator[SourceItem]:
    """Yield the RawBatch frames (or thunks) of one input, and what a capture adds (ConnMeta, SourceNote)."""
    raw = _open_binary(path)
    counted: BinaryIO = (
        io.BufferedReader(_Counting(raw, on_bytes), buffer_size=1 << 20) if on_bytes else raw  # type: ignore[assignment]
    )
    source = "-" if path == "-" else path
    try:
        sniffed = sniff(path, counted, input_format)
        if sniffed.kind in ("jsonl", "trace") and path != "-" and not _is_gzip(path):
            # Plain file: read big chunks straight from the OS (no wrapper copies); progress from the chunker.
            raw.close()
            raw = open(path, "rb", buffering=0)  # noqa: SIM115 - closed below
            sniffed.stream = raw
            sniffed.on_bytes = on_bytes
        elif sniffed.kind == "pcap" and on_bytes and path != "-":
            sniffed.on_bytes = _skipping(raw.tell(), on_bytes)  # a reader in another process reports all it reads
        try:
            yield from _dispatch(path, sniffed, source, capture or CaptureOptions())
        except (OSError, EOFError) as exc:
            raise SourceError(f"{path}: read error ({exc})") from None
    finally:
        if raw is not sys.stdin.buffer:
            raw.close()


def _dispatch(
    path: str, sniffed: Sniffed, source: str, capture: CaptureOptions, *, frames_as_text: bool = False
) -> Iterator[SourceItem]:
    """``frames_as_text``: every row keeps its frame's text (the monitor's follower re-reads it); otherwise
    the JSON-lines reader may hand over frames already split, without their text."""
    from . import jsonl

    if sniffed.kind == "pcap":
        from .capture import read_capture

        yield from read_capture(path, sniffed.stream, source, capture, sniffed.on_bytes)
    elif sniffed.kind == "trace":
        yield from jsonl.read_trace(sniffed.stream, source, sniffed.on_bytes, split=not frames_as_text)
    elif sniffed.kind == "jsonl":
        assert sniffed.detail is not None
        yield from jsonl.read_jsonl(sniffed.stream, source, sniffed.detail, sniffed.on_bytes, split=not frames_as_text)
    else:
        from .textlogs import TEXT_FORMATS

        fmt = next(f for f in TEXT_FORMATS if f.name == sniffed.kind)
        text = io.TextIOWrapper(sniffed.stream, encoding="utf-8", errors="replace", newline=None)
        yield from fmt.read(text, source)


def _skipping(counted: int, on_bytes: Callable[[int], None]) -> Callable[[int], None]:
    """``on_bytes`` for a reader that reads the file again from its start: the first ``counted`` bytes were
    reported already."""
    left = [counted]

    def report(n: int) -> None:
        k = min(n, left[0])
        left[0] -= k
        if n > k:
            on_bytes(n - k)

    return report


def _is_gzip(path: str) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def total_size(paths: list[str]) -> int | None:
    try:
        return sum(os.path.getsize(p) for p in paths if p != "-") or None
    except OSError:
        return None


def read_inputs(
    paths: list[str],
    *,
    input_format: str | None = None,
    capture: CaptureOptions | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> Iterator[SourceItem]:
    for path in expand_inputs(paths):
        yield from read_one(path, input_format=input_format, capture=capture, on_bytes=on_bytes)

