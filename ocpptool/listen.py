"""Network options shared by the commands that connect or serve (``replay``, ``monitor``): ``--listen
HOST:PORT`` and the TLS contexts built from certificate options, each failing with one clear UserError."""

from __future__ import annotations

import ssl

from .errors import UserError


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[v6]:PORT`` or ``:PORT`` (all interfaces) to ``(host, port)``; else a UserError."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise UserError(f"--listen {text!r}: expected HOST:PORT or :PORT (e.g. 0.0.0.0:9000)")
    return (host.strip("[]") or "0.0.0.0"), int(port)


def _cannot_load(label: str, exc: Exception) -> UserError:
    return UserError(f"{label}: cannot load ({getattr(exc, 'strerror', None) or exc})")


def server_tls(cert: str, key: str | None, client_ca: str | None, label: str) -> ssl.SSLContext:
    """A TLS listener's context: ``cert``/``key``, and with ``client_ca`` client certificates required."""
    try:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        if client_ca:
            ctx.load_verify_locations(client_ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise _cannot_load(label, exc) from None
    return ctx


def client_tls(ca: str | None, cert: str | None, key: str | None, label: str) -> ssl.SSLContext:
    """A wss client's context: the system's trust store or ``ca``, and a client certificate if given."""
    try:
        ctx = ssl.create_default_context(cafile=ca)
        if cert:
            ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise _cannot_load(label, exc) from None
    return ctx
