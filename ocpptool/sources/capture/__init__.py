"""Packet captures (pcap, pcapng): OCPP-J over WebSocket, found and decoded from TCP.

Two engines produce the same RawBatch rows and ConnMeta facts:

- ``native`` (default for plain captures, :mod:`.native`): reads pcap/pcapng records itself, reassembles
  TCP per connection, parses the HTTP upgrade, deframes WebSocket and inflates permessage-deflate. Streams.
- ``tshark`` (:mod:`.tshark`): Wireshark's dissectors, for TLS with a key log (``--keylog`` or
  ``SSLKEYLOGFILE``) and as a reference (``--engine tshark``).

Row conventions both engines follow (the differential tests compare them frame by frame):

- one row per complete WebSocket data message (after defragmentation and inflation);
- ``ts``: time of the packet that completed the message; ``source_pos``: that packet's 1-based number;
- ``conn``: ``"<client ip>:<port>-><server ip>:<port>"`` (IPv6 in brackets), ``#2``, ``#3`` appended when
  the same 4-tuple is reused by a later connection; the client is the charger;
- ``direction``: client to server is ``cp->csms``; ``charge_point_id``: last URL path segment (percent-
  decoded) of the upgrade request, null without a handshake; ``subprotocol``: the server's choice;
- ``text``: the message as UTF-8 text. Binary messages, undecodable UTF-8, inflate failures and TCP gaps
  are rows with ``weird_reason`` (``binary``, ``bad-utf8``, ``inflate-failed``, ``tcp-gap``, ...).
- Frames of non-OCPP WebSockets are not rows at all: they are counted in ConnMeta (``ocpp`` false).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from ..base import SourceError, SourceItem

ENGINES = ("auto", "native", "tshark")


@dataclass(frozen=True)
class CaptureOptions:
    engine: str = "auto"
    keylog: str | None = None  # NSS key log file for TLS
    ports: tuple[int, ...] = field(default_factory=tuple)  # treat these TCP ports as WebSocket without handshake

    def resolved_keylog(self) -> str | None:
        return self.keylog or os.environ.get("SSLKEYLOGFILE") or None


def read_capture(path: str, stream: BinaryIO, source: str, options: CaptureOptions,
                 on_bytes: Callable[[int], None] | None = None) -> Iterator[SourceItem]:  # fmt: skip
    """Yield RawBatch frames (or thunks) and ConnMeta for one capture. ``on_bytes`` hears how far a reader
    that opens the file itself (the native engine's child process) has read."""
    if options.engine not in ENGINES:
        raise SourceError(f"unknown --engine {options.engine!r} (choose auto, native or tshark)")
    keylog = options.resolved_keylog()
    if keylog and not os.path.exists(keylog):
        raise SourceError(f"--keylog {keylog}: no such file")
    engine = options.engine
    if engine == "auto":
        engine = "tshark" if keylog else "native"
    if engine == "tshark":
        from . import tshark

        if path == "-":
            raise SourceError("the tshark engine needs a capture file, not stdin")
        yield from tshark.read(path, source, options, keylog)
    else:
        from . import _child

        if _child.wanted(path):
            yield from _child.read(path, source, options, on_bytes)
            return
        from . import native

        yield from native.read(stream, source, options)
