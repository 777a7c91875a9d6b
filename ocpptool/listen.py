"""``--listen HOST:PORT``, shared by the commands that serve (``replay --as csms``, ``monitor``)."""

from __future__ import annotations

from .errors import UserError


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[v6]:PORT`` or ``:PORT`` (all interfaces) to ``(host, port)``; else a UserError."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise UserError(f"--listen {text!r}: expected HOST:PORT or :PORT (e.g. 0.0.0.0:9000)")
    return (host.strip("[]") or "0.0.0.0"), int(port)
