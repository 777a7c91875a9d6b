"""OCPP-J envelopes.

An OCPP-J message is a JSON array whose first element is the message type id:

=====  ================  =====================================================
 id     name              shape
=====  ================  =====================================================
 2      CALL              ``[2, "<id>", "<Action>", {payload}]``
 3      CALLRESULT        ``[3, "<id>", {payload}]``
 4      CALLERROR         ``[4, "<id>", "<code>", "<description>", {details}]``
 5      CALLRESULTERROR   ``[5, "<id>", "<code>", "<description>", {details}]`` (OCPP 2.1)
 6      SEND              ``[6, "<id>", "<Action>", {payload}]`` (OCPP 2.1, never answered)
=====  ================  =====================================================

:func:`decode` turns text into a :class:`Frame` or a :class:`Weird`; it never raises. Payloads are kept as
the JSON text that appeared on the wire (sliced, not re-serialised) whenever the envelope has the usual
layout, so a decoded table can be written back byte for byte. Frames whose payload is not an object are
accepted only for the empty array ``[]`` (PHP's ``json_encode`` of an empty map), which real CSMSs send.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum

import orjson


class MessageType(IntEnum):
    CALL = 2
    CALLRESULT = 3
    CALLERROR = 4
    CALLRESULTERROR = 5
    SEND = 6

    @property
    def is_response(self) -> bool:
        return self in (MessageType.CALLRESULT, MessageType.CALLERROR, MessageType.CALLRESULTERROR)


#: Weird reasons produced by :func:`decode`. Sources add their own (``binary``, ``truncated`` ...).
WEIRD_REASONS = {
    "empty": "the frame is empty",
    "not-json": "the frame is not valid JSON",
    "not-an-array": "the frame is JSON but not an array",
    "unknown-message-type": "the first element is not a known OCPP-J message type id (2 to 6)",
    "wrong-arity": "the array has the wrong number of elements for its message type",
    "bad-field-type": "an element has the wrong type (message id or action not a string, payload not an object)",
}

ARITY = {2: 4, 3: 3, 4: 5, 5: 5, 6: 4}

# The usual layout of an envelope head, up to the start of the payload (or error code). Shared with the
# vectorised decoder in ``ocpptool.tables.decode`` so both slice payloads identically.
HEAD_PATTERN = r'^\s*\[\s*([2-6])\s*,\s*"([^"\\]*)"\s*,\s*(?:"([^"\\]*)"\s*,\s*)?'
_HEAD = re.compile(HEAD_PATTERN)
_TAIL = re.compile(r"\s*\]\s*$")

EXCERPT_CHARS = 200


@dataclass(frozen=True, slots=True)
class Frame:
    """One well-formed OCPP-J message.

    ``payload`` and ``error_details`` are JSON text. ``action`` is set for CALL and SEND only; responses
    get theirs from correlation.
    """

    message_type: MessageType
    message_id: str
    action: str | None = None
    payload: str | None = None
    error_code: str | None = None
    error_description: str | None = None
    error_details: str | None = None


@dataclass(frozen=True, slots=True)
class Weird:
    """Text that is not an OCPP-J frame, with a stable ``reason`` code and a short human ``detail``."""

    reason: str
    detail: str
    excerpt: str


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _weird(reason: str, detail: str, text: str) -> Weird:
    return Weird(reason, detail, excerpt(text))


def _payload_ok(value: object) -> bool:
    return isinstance(value, dict) or value == []


def _dumps(value: object) -> str:
    return orjson.dumps(value).decode()


def decode(text: str) -> Frame | Weird:
    """Decode one frame. Never raises: anything that is not OCPP-J becomes a :class:`Weird`."""
    if not isinstance(text, str):  # defensive: callers sometimes hand bytes
        try:
            text = bytes(text).decode("utf-8")
        except Exception:
            return Weird("not-json", "the frame is not UTF-8 text", repr(text)[:EXCERPT_CHARS])
    if not text.strip():
        return _weird("empty", "the frame is empty", text)
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return _weird("not-json", f"not valid JSON: {exc.msg}", text)
    if not isinstance(value, list):
        return _weird("not-an-array", f"JSON {type(value).__name__}, not an array", text)
    if not value:
        return _weird("empty", "an empty array", text)
    kind = value[0]
    if isinstance(kind, bool) or not isinstance(kind, int) or kind not in ARITY:
        return _weird("unknown-message-type", f"unknown message type id {kind!r}", text)
    if len(value) != ARITY[kind]:
        return _weird(
            "wrong-arity", f"message type {kind} needs {ARITY[kind]} elements, got {len(value)}", text
        )
    mtype = MessageType(kind)
    message_id = value[1]
    if not isinstance(message_id, str):
        return _weird("bad-field-type", f"message id is {type(message_id).__name__}, not a string", text)
    head = _HEAD.match(text)
    tail = _TAIL.search(text)
    if mtype in (MessageType.CALL, MessageType.SEND):
        action, payload = value[2], value[3]
        if not isinstance(action, str):
            return _weird("bad-field-type", f"action is {type(action).__name__}, not a string", text)
        if not _payload_ok(payload):
            return _weird("bad-field-type", f"payload is {type(payload).__name__}, not an object", text)
        raw = text[head.end() : tail.start()] if head and head.group(3) is not None and tail else None
        return Frame(mtype, message_id, action=action, payload=raw or _dumps(payload))
    if mtype is MessageType.CALLRESULT:
        payload = value[2]
        if not _payload_ok(payload):
            return _weird("bad-field-type", f"payload is {type(payload).__name__}, not an object", text)
        raw = text[head.end() : tail.start()] if head and head.group(3) is None and tail else None
        return Frame(mtype, message_id, payload=raw or _dumps(payload))
    code, description, details = value[2], value[3], value[4]
    if not isinstance(code, str):
        return _weird("bad-field-type", f"error code is {type(code).__name__}, not a string", text)
    if not isinstance(description, str):
        return _weird("bad-field-type", f"error description is {type(description).__name__}", text)
    return Frame(
        mtype,
        message_id,
        error_code=code,
        error_description=description,
        error_details=_dumps(details),
    )


def encode(frame: Frame) -> str:
    """Serialise a frame back to OCPP-J text (payloads are inserted verbatim)."""
    mid = _dumps(frame.message_id)
    t = int(frame.message_type)
    if frame.message_type in (MessageType.CALL, MessageType.SEND):
        return f"[{t},{mid},{_dumps(frame.action)},{frame.payload or '{}'}]"
    if frame.message_type is MessageType.CALLRESULT:
        return f"[{t},{mid},{frame.payload or '{}'}]"
    return (
        f"[{t},{mid},{_dumps(frame.error_code or '')},{_dumps(frame.error_description or '')},"
        f"{frame.error_details or '{}'}]"
    )
