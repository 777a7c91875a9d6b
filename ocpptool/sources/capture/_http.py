"""The HTTP side of a WebSocket: upgrade request and response headers, unmasking, inflation."""

from __future__ import annotations

import base64
import binascii
import re
import zlib
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

REQUEST_LINE = re.compile(rb"[A-Z]{3,12} [^ \r\n]+ HTTP/1\.[01]\r?\n")
OCPP_START = re.compile(r"\s*\[\s*[2-6]\s*,")
TAIL = b"\x00\x00\xff\xff"
MAX_MESSAGE = 64 << 20  # inflated size beyond which a message is refused (a deflate bomb, not OCPP)


def unmask(p: bytes, key: bytes) -> bytes:
    n = len(p)
    if not n:
        return p
    k = (key * ((n >> 2) + 1))[:n]
    return (int.from_bytes(p, "little") ^ int.from_bytes(k, "little")).to_bytes(n, "little")


def head_end(buf: bytes) -> int:
    """Index just past the blank line ending an HTTP head, or -1."""
    i = buf.find(b"\r\n\r\n")
    if i >= 0:
        return i + 4
    i = buf.find(b"\n\n")
    return i + 2 if i >= 0 else -1


def parse_head(head: bytes) -> tuple[str, dict[str, str]]:
    lines = head.decode("latin-1").split("\n")
    first = lines[0].strip()
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            continue
        k = name.strip().lower()
        v = value.strip()
        headers[k] = f"{headers[k]}, {v}" if k in headers else v
    return first, headers


@dataclass
class Request:
    upgrade: bool
    path: str | None
    charge_point_id: str | None
    offered: str | None  # the client's first Sec-WebSocket-Protocol
    auth: str | None


def parse_request(head: bytes) -> Request:
    first, h = parse_head(head)
    parts = first.split(" ")
    target = parts[1] if len(parts) >= 2 else ""
    path, cp = request_target(target)
    upgrade = "websocket" in h.get("upgrade", "").lower()
    offered = h.get("sec-websocket-protocol", "").split(",")[0].strip() or None
    return Request(upgrade, path, cp, offered, auth_summary(h.get("authorization")))


def request_target(target: str) -> tuple[str | None, str | None]:
    """URL path of an upgrade request's target (origin or absolute form) and the charge point id: its last
    non-empty segment, percent-decoded. Both engines use this, so they name charge points alike."""
    path = urlsplit(target).path if "://" in target else target.split("?", 1)[0].split("#", 1)[0]
    segments = [s for s in path.split("/") if s]
    return path or None, (unquote(segments[-1]) if segments else None)


def auth_summary(value: str | None) -> str | None:
    """An ``Authorization`` header as its scheme (and the user for Basic); never the secret."""
    if not value:
        return None
    scheme, _, cred = value.strip().partition(" ")
    scheme = scheme.lower()
    if scheme == "basic":
        try:
            user = base64.b64decode(cred.strip(), validate=False).split(b":", 1)[0].decode("utf-8", "replace")
        except (binascii.Error, ValueError):
            return "basic"
        return f"basic user={user}"
    return scheme


@dataclass
class Response:
    status: int | None
    subprotocol: str | None
    compression: str | None
    server_no_takeover: bool
    client_no_takeover: bool


def parse_response(head: bytes) -> Response:
    first, h = parse_head(head)
    parts = first.split(" ")
    status = int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None
    sub = h.get("sec-websocket-protocol", "").split(",")[0].strip() or None
    compression = None
    s_nt = c_nt = False
    for ext in h.get("sec-websocket-extensions", "").split(","):
        params = [p.strip() for p in ext.split(";") if p.strip()]
        if params and params[0].lower() == "permessage-deflate":
            compression = "; ".join(params)
            names = {p.split("=", 1)[0].strip().lower() for p in params[1:]}
            s_nt = "server_no_context_takeover" in names
            c_nt = "client_no_context_takeover" in names
            break
    return Response(status, sub, compression, s_nt, c_nt)


class Inflater:
    """permessage-deflate for one direction (RFC 7692).

    With context takeover one raw-deflate stream runs through all messages; without it each message starts
    afresh. When the handshake was not seen (or the stream broke) a message that the shared stream cannot
    inflate is tried alone, and the shared stream restarts from it.
    """

    __slots__ = ("z", "fresh_each")

    def __init__(self, fresh_each: bool = False) -> None:
        self.z: zlib._Decompress | None = None
        self.fresh_each = fresh_each

    def inflate(self, data: bytes) -> bytes | None:
        data += TAIL
        if self.fresh_each:
            try:
                z = zlib.decompressobj(-15)
                out = z.decompress(data, MAX_MESSAGE)
                return None if z.unconsumed_tail else out
            except zlib.error:
                return None
        shared = self.z
        if shared is not None:
            try:
                out = shared.decompress(data, MAX_MESSAGE)
                if shared.unconsumed_tail:
                    self.z = None
                    return None
                if shared.eof:
                    self.z = None
                return out
            except zlib.error:
                self.z = None
        z = zlib.decompressobj(-15)
        try:
            out = z.decompress(data, MAX_MESSAGE)
        except zlib.error:
            return None
        if z.unconsumed_tail:
            return None
        self.z = None if z.eof else z
        return out
