"""Readers for log formats whose frames span lines or must be rebuilt: Python state machines over lines.

- ``everest``: EVerest libocpp's message log (header line with the direction and action, then
  pretty-printed JSON, then a blank line). The JSON is the whole frame, or only the payload.
- ``ocpp-tester``: SensorsIot/OCPP-Tester: its ``server.log`` (Python logging with ANSI colours; outgoing
  frames as ``RAW >> [...]``; incoming CALLs only as ``Received CALL 'X' for CP. Payload: {python dict}``)
  and its test logs (``[ts] REQUEST: Action`` blocks holding the payload only).
- ``generic``: any OCPP-J array found anywhere in a line, balanced across lines, without directions.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict, deque
from collections.abc import Iterator
from typing import TextIO

import orjson

from ..protocol.actions import CP_TO_CSMS, CSMS_TO_CP, call_direction, opposite
from .base import RawBuilder
from .log_engine import (
    FRAME_START,
    LEADING_TS,
    MAX_FRAME_CHARS,
    TS_ISO,
    Scan,
    excerpt,
    iter_lines,
    strip_ansi,
)


class _Out(RawBuilder):
    """A RawBuilder whose batches never exceed ``batch_rows`` even when several rows were added at once."""

    def _split(self) -> Iterator:
        df = self.take()
        for i in range(0, df.height, self.batch_rows):
            yield df.slice(i, self.batch_rows)

    def drain(self) -> Iterator:
        if self.full():
            yield from self._split()

    def finish(self) -> Iterator:
        if len(self):
            yield from self._split()


def _builder(source: str, batch_rows: int | None) -> RawBuilder:
    return _Out(source, batch_rows) if batch_rows else _Out(source)


class _Block:
    """A JSON value being collected over several lines."""

    def __init__(self, pos: int, first: str) -> None:
        self.pos = pos
        self.parts = [first]
        self.size = len(first)
        self.scan = Scan()
        self.done = self.scan.feed(first) > 0

    def feed(self, line: str) -> bool:
        self.parts.append(line)
        self.size += len(line) + 1
        end = self.scan.feed(line)
        if end > 0:
            self.parts[-1] = line[:end]
            self.done = True
        return self.done

    @property
    def text(self) -> str:
        return "\n".join(self.parts)

    @property
    def broken(self) -> str | None:
        if self.scan.error:
            return "unparsable-line"
        if self.size > MAX_FRAME_CHARS:
            return "truncated"
        return None


def _first_done(pos: int, line: str) -> _Block:
    b = _Block(pos, line)
    if b.done:
        end = Scan().feed(line)
        b.parts = [line[:end]]
    return b


def _json_text(text: str) -> str | None:
    try:
        return orjson.dumps(orjson.loads(text)).decode()
    except orjson.JSONDecodeError:
        return None


# ------------------------------------------------------------------------------------------- everest

EVEREST_HEADER = re.compile(
    r"^(?P<ts>\S+):\s+(?P<dir>ChargePoint>CentralSystem|CentralSystem>ChargePoint|ChargingStation>CSMS|"
    r"CSMS>ChargingStation|ChargePoint>CSMS|CSMS>ChargePoint)\s+(?P<action>[A-Za-z0-9_]+)\s*(?P<rest>.*)$"
)
EVEREST_SYS = re.compile(r"^\S+:\s+SYS>")
_EVEREST_DIR = {
    "chargepoint>centralsystem": CP_TO_CSMS,
    "centralsystem>chargepoint": CSMS_TO_CP,
    "chargingstation>csms": CP_TO_CSMS,
    "csms>chargingstation": CSMS_TO_CP,
    "chargepoint>csms": CP_TO_CSMS,
    "csms>chargepoint": CSMS_TO_CP,
}


def sniff_everest(lines: list[str]) -> int:
    return sum(1 for x in lines if EVEREST_HEADER.match(x) or EVEREST_SYS.match(x))


def read_everest(
    stream: TextIO, source: str, *, chunk_chars: int | None = None, batch_rows: int | None = None
) -> Iterator:
    out = _builder(source, batch_rows)
    pending: dict[str, deque[str]] = defaultdict(deque)  # action -> ids of payload-only requests
    head: dict | None = None
    block: _Block | None = None

    def emit(h: dict, b: _Block | None, reason: str | None = None, detail: str | None = None) -> None:
        direction = _EVEREST_DIR.get(h["dir"].lower())
        if b is None or reason:
            text = excerpt(b.text) if b else h["line"]
            out.add(
                text=text,
                pos=b.pos if b else h["pos"],
                ts_text=h["ts"],
                direction=direction,
                weird_reason=reason or "truncated",
                weird_detail=detail or "the message's JSON is missing or never closes",
            )
            return
        text = b.text
        note = None
        if text.lstrip().startswith("{"):
            action = h["action"]
            payload = _json_text(text)
            if payload is None:
                out.add(
                    text=excerpt(text),
                    pos=b.pos,
                    ts_text=h["ts"],
                    direction=direction,
                    weird_reason="unparsable-line",
                    weird_detail="the payload is not valid JSON",
                )
                return
            if action.endswith("Response") and len(action) > 8:
                req = action[: -len("Response")]
                mid = pending[req].popleft() if pending[req] else f"everest-L{b.pos}"
                text = f'[3,"{mid}",{payload}]'
                note = "payload logged alone; message id taken from its request"
            else:
                mid = f"everest-L{b.pos}"
                pending[action].append(mid)
                text = f'[2,"{mid}","{action}",{payload}]'
                note = "payload logged alone; message id synthesized"
        out.add(text=text, pos=b.pos, ts_text=h["ts"], direction=direction, note=note)

    for pos, line in iter_lines(stream, chunk_chars):
        if block is not None and head is not None and not block.done:
            if line.strip() == "" or EVEREST_HEADER.match(line) or block.size > MAX_FRAME_CHARS:
                emit(head, block, block.broken or "truncated", "the message's JSON never closes")
                head, block = None, None
            elif block.feed(line):
                emit(head, block)
                head, block = None, None
                yield from out.drain()
                continue
            elif block.scan.error:
                emit(head, block, "unparsable-line", block.scan.error)
                head, block = None, None
                continue
            else:
                continue
        m = EVEREST_HEADER.match(line)
        if m:
            if head is not None:
                emit(head, None)
            head = {"pos": pos, "ts": m["ts"], "dir": m["dir"], "action": m["action"], "line": excerpt(line)}
            rest = m["rest"]
            i = min((k for k in (rest.find("["), rest.find("{")) if k >= 0), default=-1)
            if i >= 0:
                block = _first_done(pos, rest[i:])
                if block.done:
                    emit(head, block)
                    head, block = None, None
            continue
        if head is not None and block is None:
            s = line.lstrip()
            if s.startswith(("[", "{")):
                block = _first_done(pos, line)
                if block.done:
                    emit(head, block)
                    head, block = None, None
            elif s:
                emit(head, None)
                head = None
        yield from out.drain()
    if head is not None:
        emit(head, block if block and block.parts else None, "truncated", "the log ends inside the message")
    yield from out.finish()


# --------------------------------------------------------------------------------------- ocpp-tester

_TS_PREFIX = r"^(?:(?P<ts>" + TS_ISO + r")\s+-\s+)?"
TESTER_RAW = re.compile(_TS_PREFIX + r".*?\bRAW (?P<dir>>>|<<) (?P<frame>\[.*)$")
TESTER_CALL = re.compile(
    _TS_PREFIX + r".*?Received CALL '(?P<action>\w+)' for (?P<cp>\S+?)\. Payload: (?P<payload>.*)$"
)
TESTER_RESULT = re.compile(
    _TS_PREFIX + r".*?Received CALLRESULT for '(?P<action>\w+)' \(id=(?P<id>[^)]*)\) from (?P<cp>\S+?)\.?\s*$"
)
TESTER_CP = re.compile(r"(?:New connection from Charge Point: |^Charge Point ID: )(?P<cp>\S+)")
TESTER_BLOCK = re.compile(r"^\[(?P<ts>\d[^\]]*)\] (?P<kind>REQUEST|RESPONSE): (?P<action>\w+)\s*$")
TESTER_SNIFF = re.compile(
    r"RAW >> \[|Received CALL '|Received CALLRESULT for '|^\[\d[^\]]*\] (?:REQUEST|RESPONSE): \w+\s*$"
    r"|Comprehensive Log|^OCPP MESSAGE LOG"
)

DICT_NOTE = "payload logged as a Python dict"
NO_PAYLOAD_NOTE = "CALLRESULT logged without its payload; {} stands in"


def sniff_tester(lines: list[str]) -> int:
    return sum(1 for x in lines if TESTER_SNIFF.search(strip_ansi(x)))


def _dict_to_json(text: str) -> str | None:
    if len(text) > MAX_FRAME_CHARS:
        return None
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        return None
    if not isinstance(value, dict):
        return None
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return None


def read_tester(
    stream: TextIO, source: str, *, chunk_chars: int | None = None, batch_rows: int | None = None
) -> Iterator:
    out = _builder(source, batch_rows)
    cp: str | None = None
    pending_call: dict | None = None  # an incoming CALL waiting for the id of the response that follows
    pending_req: dict[str, deque[str]] = defaultdict(deque)
    head: dict | None = None
    block: _Block | None = None

    def flush_call(mid: str | None) -> None:
        nonlocal pending_call
        c = pending_call
        if c is None:
            return
        pending_call = None
        if mid is None:
            mid, note = f"ocpp-tester-L{c['pos']}", f"{DICT_NOTE}; message id not logged, synthesized"
        else:
            note = f"{DICT_NOTE}; message id taken from the response that follows"
        out.add(
            text=f'[2,"{mid}","{c["action"]}",{c["payload"]}]',
            pos=c["pos"],
            ts_text=c["ts"],
            charge_point_id=c["cp"],
            direction=CP_TO_CSMS,
            note=note,
        )

    def emit_block(h: dict, b: _Block | None, reason: str | None = None) -> None:
        action, kind = h["action"], h["kind"]
        req_dir = call_direction(action)
        direction = req_dir if kind == "REQUEST" else opposite(req_dir)
        payload = _json_text(b.text) if b is not None and not reason else None
        if payload is None:
            out.add(
                text=excerpt(b.text) if b else h["line"],
                pos=h["pos"],
                ts_text=h["ts"],
                charge_point_id=cp,
                direction=direction,
                direction_inferred=direction is not None,
                weird_reason=reason or "unparsable-line",
                weird_detail="the payload is missing, broken or never closes",
            )
            return
        if kind == "REQUEST":
            mid = f"ocpp-tester-L{h['pos']}"
            pending_req[action].append(mid)
            text = f'[2,"{mid}","{action}",{payload}]'
            note = "payload logged alone; message id synthesized"
        else:
            q = pending_req[action]
            mid = q.popleft() if q else f"ocpp-tester-L{h['pos']}"
            text = f'[3,"{mid}",{payload}]'
            note = "payload logged alone; message id taken from its request"
        out.add(
            text=text,
            pos=h["pos"],
            ts_text=h["ts"],
            charge_point_id=cp,
            direction=direction,
            direction_inferred=direction is not None,
            note=note,
        )

    for pos, raw_line in iter_lines(stream, chunk_chars):
        line = strip_ansi(raw_line)
        if head is not None:
            s = line.strip()
            if block is None:
                if s.startswith(("{", "[")):
                    block = _first_done(pos, line)
                    if block.done:
                        emit_block(head, block)
                        head, block = None, None
                    continue
                if not s or set(s) <= {"-"}:
                    continue
                emit_block(head, None, "truncated")
                head = None
            elif set(s) <= {"="} and s or TESTER_BLOCK.match(line) or block.size > MAX_FRAME_CHARS:
                emit_block(head, block, "truncated")
                head, block = None, None
            else:
                if block.feed(line):
                    emit_block(head, block)
                    head, block = None, None
                elif block.scan.error:
                    emit_block(head, block, "unparsable-line")
                    head, block = None, None
                continue
        m = TESTER_BLOCK.match(line)
        if m:
            head = {
                "pos": pos,
                "ts": m["ts"],
                "kind": m["kind"],
                "action": m["action"],
                "line": excerpt(line),
            }
            continue
        if "RAW " in line:
            m = TESTER_RAW.match(line)
            if m:
                body = m["frame"]
                sc = Scan()
                end = sc.feed(body)
                outgoing = m["dir"] == ">>"
                if end < 0:
                    out.add(
                        text=excerpt(body),
                        pos=pos,
                        ts_text=m["ts"],
                        charge_point_id=cp,
                        direction=CSMS_TO_CP if outgoing else CP_TO_CSMS,
                        weird_reason="unparsable-line" if sc.error else "truncated",
                        weird_detail=sc.error or "the frame's brackets never close on its line",
                    )
                    continue
                frame = body[:end]
                if outgoing and pending_call is not None:
                    mm = re.match(r'\[\s*[34]\s*,\s*"([^"]*)"', frame)
                    if mm:
                        flush_call(mm.group(1))
                out.add(
                    text=frame,
                    pos=pos,
                    ts_text=m["ts"],
                    charge_point_id=cp,
                    direction=CSMS_TO_CP if outgoing else CP_TO_CSMS,
                )
                yield from out.drain()
                continue
        if "Received CALL" in line:
            m = TESTER_CALL.match(line)
            if m:
                flush_call(None)
                cp = m["cp"]
                payload = _dict_to_json(m["payload"])
                if payload is None:
                    out.add(
                        text=excerpt(m["payload"]),
                        pos=pos,
                        ts_text=m["ts"],
                        charge_point_id=cp,
                        direction=CP_TO_CSMS,
                        weird_reason="unparsable-line",
                        weird_detail=f"the {m['action']} payload is not a readable Python dict",
                    )
                else:
                    pending_call = {
                        "pos": pos,
                        "ts": m["ts"],
                        "action": m["action"],
                        "cp": cp,
                        "payload": payload,
                    }
                continue
            m = TESTER_RESULT.match(line)
            if m:
                cp = m["cp"]
                out.add(
                    text=f'[3,"{m["id"]}",{{}}]',
                    pos=pos,
                    ts_text=m["ts"],
                    charge_point_id=cp,
                    direction=CP_TO_CSMS,
                    note=NO_PAYLOAD_NOTE,
                )
                continue
        m = TESTER_CP.search(line)
        if m:
            cp = m["cp"]
        yield from out.drain()
    if head is not None:
        emit_block(head, block, None if block is not None and block.done else "truncated")
    flush_call(None)
    yield from out.finish()


# ------------------------------------------------------------------------------------------- generic

_OPEN_ONLY = re.compile(r"\[\s*$")
_FRAME_HEAD_LINE = re.compile(r'^\s*[2-6]\s*,\s*("|$)')


def sniff_generic(lines: list[str]) -> int:
    return sum(1 for x in lines if FRAME_START.search(x))


def read_generic(
    stream: TextIO, source: str, *, chunk_chars: int | None = None, batch_rows: int | None = None
) -> Iterator:
    out = _builder(source, batch_rows)
    block: _Block | None = None
    block_ts: str | None = None
    open_at: tuple[int, str, str | None] | None = None  # a line ending in "[" (pretty-printed frame start?)
    prev_ts: tuple[int, str] | None = None

    def start(pos: int, text: str, ts: str | None) -> int:
        """Scan frames in ``text``; return -1 when one stays open at the end of the line."""
        nonlocal block, block_ts
        i = 0
        while True:
            m = FRAME_START.search(text, i)
            if not m:
                return 0
            sc = Scan()
            end = sc.feed(text, m.start())
            if end > 0:
                out.add(text=text[m.start() : end], pos=pos, ts_text=ts)
                i = end
                continue
            if sc.error:
                out.add(
                    text=excerpt(text[m.start() :]),
                    pos=pos,
                    ts_text=ts,
                    weird_reason="unparsable-line",
                    weird_detail=sc.error,
                )
                i = max(m.end(), sc.error_at + 1)  # linear time even on lines full of broken starts
                continue
            b = _Block(pos, text[m.start() :])
            if b.size > MAX_FRAME_CHARS:
                out.add(
                    text=excerpt(b.text),
                    pos=pos,
                    ts_text=ts,
                    weird_reason="truncated",
                    weird_detail="frame longer than 1 MB",
                )
                return 0
            block, block_ts = b, ts
            return -1

    for pos, raw_line in iter_lines(stream, chunk_chars):
        line = strip_ansi(raw_line)
        if block is not None:
            if (
                not line.strip()
                or LEADING_TS.match(line)
                or FRAME_START.search(line)
                or block.size + len(line) > MAX_FRAME_CHARS
            ):
                out.add(
                    text=excerpt(block.text),
                    pos=block.pos,
                    ts_text=block_ts,
                    weird_reason="truncated",
                    weird_detail="the frame's brackets never close",
                )
                block = None
            else:
                if block.feed(line):
                    out.add(text=block.text, pos=block.pos, ts_text=block_ts)
                    block = None
                elif block.scan.error:
                    out.add(
                        text=excerpt(block.text),
                        pos=block.pos,
                        ts_text=block_ts,
                        weird_reason="unparsable-line",
                        weird_detail=block.scan.error,
                    )
                    block = None
                continue
        tsm = LEADING_TS.match(line)
        ts = tsm.group(1) if tsm else None
        if open_at is not None:
            o_pos, o_text, o_ts = open_at
            open_at = None
            if _FRAME_HEAD_LINE.match(line):
                b = _Block(o_pos, o_text)
                b.feed(line)
                if b.done:
                    out.add(text=b.text, pos=o_pos, ts_text=o_ts)
                else:
                    block, block_ts = b, o_ts
                continue
        if "[" in line:
            if start(pos, line, ts) < 0:
                continue
            om = _OPEN_ONLY.search(line)
            if om:
                line_ts = ts or (prev_ts[1] if prev_ts and prev_ts[0] == pos - 1 else None)
                open_at = (pos, line[om.start() :].rstrip(), line_ts)
        if ts:
            prev_ts = (pos, ts)
        yield from out.drain()
    if block is not None:
        out.add(
            text=excerpt(block.text),
            pos=block.pos,
            ts_text=block_ts,
            weird_reason="truncated",
            weird_detail="the log ends inside the frame",
        )
    yield from out.finish()
