"""Text log formats of the field: recognise one from a sample of lines, and read it into RawBatch frames.

Each :class:`TextFormat` has a stable short ``name`` (the ``--input-format`` value), a one-line
``description``, a ``sniff`` that counts the sample lines it recognises, and a ``read`` that turns a text
stream into :data:`~ocpptool.sources.base.RAW_SCHEMA` batches. Readers read the stream once, forward only,
in chunks, and never raise on bad content: broken frames become rows with ``weird_reason``.

The readers live in ``log_lines`` (one frame per line, Polars regex), ``log_blocks`` (multi-line and rebuilt
frames, Python state machines), ``log_csv`` (CSV exports) and share ``log_engine``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TextIO

import polars as pl

from . import log_blocks, log_csv, log_lines


@dataclass(frozen=True)
class TextFormat:
    name: str
    description: str
    sniff: Callable[[list[str]], int]
    read: Callable[[TextIO, str], Iterator[pl.DataFrame]]


def _spec_sniff(spec: log_lines.LineSpec) -> Callable[[list[str]], int]:
    def sniff(lines: list[str]) -> int:
        return log_lines.sniff_spec(spec, lines)

    return sniff


TEXT_FORMATS: list[TextFormat] = [
    TextFormat(
        "ocpp-tester",
        "SensorsIot OCPP-Tester server.log (RAW >> / Received CALL) and test logs (REQUEST/RESPONSE blocks)",
        log_blocks.sniff_tester,
        log_blocks.read_tester,
    ),
    TextFormat(
        "everest",
        "EVerest libocpp message log (ChargePoint>CentralSystem header, multi-line JSON)",
        log_blocks.sniff_everest,
        log_blocks.read_everest,
    ),
    TextFormat(
        "csv",
        "CSV with a header naming a frame column (timestamp,id,action,msg)",
        log_csv.sniff_csv,
        log_csv.read_csv_log,
    ),
    TextFormat(
        "steve",
        "SteVe WebSocketLogger lines ([chargeBoxId=..., sessionId=...] Received: / Sending:)",
        _spec_sniff(log_lines.STEVE),
        log_lines.read_steve,
    ),
    TextFormat(
        "evcc",
        "evcc [ocpp] TRACE lines (send/recv, sent/received JSON message), also under journald or docker",
        _spec_sniff(log_lines.EVCC),
        log_lines.read_evcc,
    ),
    TextFormat(
        "microocpp",
        "MicroOcpp / ArduinoOcpp console ([MO] Send: / [MO] Recv:)",
        _spec_sniff(log_lines.MICROOCPP),
        log_lines.read_microocpp,
    ),
    TextFormat(
        "console",
        "Charger console (>> message sent: / << message received:)",
        _spec_sniff(log_lines.CONSOLE),
        log_lines.read_console,
    ),
    TextFormat(
        "proxy",
        "Logging proxy ([client->target] / [target->client]; the client is the charger)",
        _spec_sniff(log_lines.PROXY),
        log_lines.read_proxy,
    ),
    TextFormat(
        "mobilityhouse",
        "Python ocpp library logger (CP_1: send [...] / receive message [...]), any logging prefix",
        log_lines.sniff_mobilityhouse,
        log_lines.read_mobilityhouse,
    ),
    TextFormat(
        "generic",
        "Any OCPP-J array found in the text (no directions)",
        log_blocks.sniff_generic,
        log_blocks.read_generic,
    ),
]

FORMATS_BY_NAME = {f.name: f for f in TEXT_FORMATS}


def sniff_text(sample_lines: list[str]) -> TextFormat | None:
    """The format that recognises most sample lines (the earlier on a tie); generic if it finds any frame."""
    best: TextFormat | None = None
    best_n = 0
    for fmt in TEXT_FORMATS[:-1]:
        n = fmt.sniff(sample_lines)
        if n > best_n:
            best, best_n = fmt, n
    if best is not None:
        return best
    generic = TEXT_FORMATS[-1]
    return generic if generic.sniff(sample_lines) else None


def read_format(
    name: str, stream: TextIO, source: str, *, chunk_chars: int | None = None, batch_rows: int | None = None
) -> Iterator[pl.DataFrame]:
    """Read with a named format, choosing chunk and batch sizes (tests; ``TextFormat.read`` uses defaults)."""
    return FORMATS_BY_NAME[name].read(stream, source, chunk_chars=chunk_chars, batch_rows=batch_rows)  # type: ignore[call-arg]
