"""Open OCPP Trace v1.1 JSON lines from the monitor's frame stream: rotated, flushed, optionally redacted.

Each record carries the same fields, in the same order, as ``ocpptool.tables.writers.trace_lines`` (the
writer of ``decode -o x.trace.jsonl``), including ``raw`` (the frame text as relayed), so ``decode`` and
``analyze`` read a recording back exactly. Responses get the action of their CALL, tracked per connection.

Durability: records are buffered and flushed at least every ``flush_s`` (0.5 s), so a crash loses at most
that much. Rotation (by size and/or UTC day) renames the current file to ``<name>.<UTC stamp><suffix>`` and
opens a fresh one under the configured name, as logrotate does, so ``monitor --follow`` keeps up with it.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from ..protocol.frames import Frame, MessageType, decode
from ..tables.writers import TRACE_SCHEMA_VERSION
from .events import Seen

REDACTED = "***redacted***"
_TRACE_TYPES = {MessageType.CALL: "CALL", MessageType.CALLRESULT: "CALLRESULT", MessageType.CALLERROR: "CALLERROR",
                MessageType.CALLRESULTERROR: "CALLERROR", MessageType.SEND: "CALL"}  # fmt: skip
_DIRECTIONS = {"cp->csms": "cp-to-csms", "csms->cp": "csms-to-cp"}
_SECRET_MARKERS = ("AuthorizationKey", "BasicAuthPassword")
_PENDING_LIMIT = 1000  # CALLs awaiting a response per connection (unanswered ones must not pile up forever)


def _scrub(value: Any) -> bool:
    """Blank secrets in place; True if something was blanked.

    1.6: ``{"key": "AuthorizationKey", "value": ...}`` (ChangeConfiguration, GetConfiguration answers).
    2.0.1/2.1: any item whose ``variable.name`` is ``BasicAuthPassword`` (SetVariables, GetVariables
    answers, NotifyReport): its ``attributeValue`` / ``variableAttribute[].value``.
    """
    hit = False
    if isinstance(value, dict):
        if value.get("key") == "AuthorizationKey" and "value" in value:
            value["value"] = REDACTED
            hit = True
        variable = value.get("variable")
        if isinstance(variable, dict) and variable.get("name") == "BasicAuthPassword":
            if "attributeValue" in value:
                value["attributeValue"] = REDACTED
                hit = True
            for attr in value.get("variableAttribute") or []:
                if isinstance(attr, dict) and "value" in attr:
                    attr["value"] = REDACTED
                    hit = True
        for v in value.values():
            hit |= _scrub(v)
    elif isinstance(value, list):
        for v in value:
            hit |= _scrub(v)
    return hit


def redact(text: str) -> str:
    """The frame with AuthorizationKey / BasicAuthPassword values replaced (unchanged text otherwise)."""
    if not any(m in text for m in _SECRET_MARKERS):
        return text
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return text
    return orjson.dumps(value).decode() if _scrub(value) else text


def redact_auth(header: str | None) -> str | None:
    """An Authorization header as it may be shown: the scheme and (for Basic) the user, never the secret."""
    if not header:
        return None
    scheme, _, rest = header.partition(" ")
    if scheme.lower() == "basic":
        import base64
        import binascii

        try:
            user = base64.b64decode(rest.strip(), validate=True).decode("utf-8", "replace").partition(":")[0]
        except (binascii.Error, ValueError):
            return "basic (unreadable)"
        return f"basic user={user}"
    return scheme.lower()


def _ts(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class TraceEncoder:
    """Seen frames -> Open OCPP Trace v1.1 lines (bytes, with the newline); keeps per-connection state."""

    def __init__(self) -> None:
        self._pending: dict[str, dict[str, str]] = {}
        self._pos = 0

    def forget(self, conn: str) -> None:
        self._pending.pop(conn, None)

    def encode(self, seen: Seen) -> bytes:
        self._pos += 1
        frame = decode(seen.text)
        rec: dict[str, Any] = {"schemaVersion": TRACE_SCHEMA_VERSION, "timestamp": _ts(seen.ts)}
        sub = seen.subprotocol or ""
        if sub.startswith("ocpp"):
            rec["ocppVersion"] = sub[4:]
        rec["transport"] = "json"
        rec["chargePointId"] = seen.charge_point_id
        direction = _DIRECTIONS.get(seen.direction)
        if direction:
            rec["direction"] = direction
        meta: dict[str, Any] = {"conn": seen.conn, "source": seen.source, "sourcePos": seen.source_pos or self._pos}
        if isinstance(frame, Frame):
            mt = frame.message_type
            rec["messageType"] = _TRACE_TYPES[mt]
            rec["messageId"] = frame.message_id
            pending = self._pending.setdefault(seen.conn, {})
            if mt in (MessageType.CALL, MessageType.SEND):
                rec["action"] = frame.action
                if mt is MessageType.CALL:
                    if len(pending) >= _PENDING_LIMIT:
                        pending.pop(next(iter(pending)))
                    pending[frame.message_id] = frame.action or ""
            else:
                action = pending.pop(frame.message_id, None)
                if action:
                    rec["action"] = action
            if frame.payload is not None and mt in (MessageType.CALL, MessageType.SEND, MessageType.CALLRESULT):
                rec["payload"] = orjson.Fragment(frame.payload)
            if frame.error_code is not None:
                rec["error"] = {"code": frame.error_code, "description": frame.error_description or "",
                                "details": orjson.Fragment(frame.error_details or "{}")}  # fmt: skip
            if mt in (MessageType.SEND, MessageType.CALLRESULTERROR):
                meta["messageType"] = mt.name
        rec["raw"] = seen.text
        rec["meta"] = {"ocpptool": meta}
        return orjson.dumps(rec) + b"\n"


def parse_size(text: str) -> int:
    """'100M' / '2G' / '500k' / '1048576' -> bytes (ValueError if unreadable or not positive)."""
    t = text.strip().upper().removesuffix("B")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(t[-1:], 1)
    n = float(t[:-1] if t[-1:] in "KMG" else t)
    if n <= 0:
        raise ValueError(text)
    return int(n * mult)


class Recorder:
    """Appends trace records to ``path``; rotates by ``max_bytes`` and/or UTC day; flushes every ``flush_s``."""

    def __init__(self, path: str | Path, *, max_bytes: int | None = None, daily: bool = False,
                 redact_secrets: bool = False, flush_s: float = 0.5) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.daily = daily
        self.redact = redact_secrets
        self.flush_s = flush_s
        self.encoder = TraceEncoder()
        self.records = 0
        self.rotated: list[Path] = []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._open()

    def _open(self) -> None:
        self._fh = open(self.path, "ab")  # noqa: SIM115 - lives as long as the recorder
        self._size = self._fh.tell()
        self._day = datetime.now(UTC).date()
        self._last_flush = time.monotonic()

    def _rotate(self) -> None:
        self._fh.close()
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        name, suffix = self.path.name, ""
        for ext in (".trace.jsonl", ".jsonl"):
            if name.endswith(ext):
                name, suffix = name[: -len(ext)], ext
                break
        target = self.path.with_name(f"{name}.{stamp}{suffix}")
        n = 1
        while target.exists():
            target = self.path.with_name(f"{name}.{stamp}-{n}{suffix}")
            n += 1
        os.replace(self.path, target)
        self.rotated.append(target)
        self._open()

    def write(self, seen: Seen) -> None:
        if seen.binary:
            return  # OCPP-J is text; binary frames are relayed and counted, not recorded
        if self.redact:
            from dataclasses import replace

            seen = replace(seen, text=redact(seen.text))
        line = self.encoder.encode(seen)
        if self._size and ((self.max_bytes and self._size + len(line) > self.max_bytes)
                           or (self.daily and seen.ts.astimezone(UTC).date() != self._day)):  # fmt: skip
            self._fh.flush()
            self._rotate()
        self._fh.write(line)
        self._size += len(line)
        self.records += 1
        if time.monotonic() - self._last_flush >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        self._fh.flush()
        self._last_flush = time.monotonic()

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.flush()
            self._fh.close()
