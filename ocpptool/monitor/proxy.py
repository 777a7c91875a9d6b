"""The recording proxy's shell: chargers connect here, each gets its own upstream connection to the CSMS.

For every charger connection the proxy, during the charger's HTTP upgrade, opens one upstream WebSocket to
``upstream`` + the charger's request path (``--upstream ws://csms/ocpp`` + ``/CP-1`` ->
``ws://csms/ocpp/CP-1``), offering the charger's subprotocols and passing its ``Authorization`` header, and
answers the charger with the subprotocol the CSMS chose. Then two pumps per pair relay every message both
ways unchanged (text as text, binary as binary), pings and unsolicited pongs are forwarded with their
payload, and a close frame's code and reason are passed on to the other side.

Isolation: each pair has its own tasks, and a pump reads its next frame only after the previous one was
handed to the other side, so a slow CSMS (or charger) holds back only its own connection; websockets' own
receive queue (``max_queue``) and write buffer bound the memory each pair can take.

Failures, each with one log line (a :class:`ConnEvent` of kind ``refused``/``closed``):

- upstream unreachable (refused, timeout, TLS error): the charger's upgrade is accepted and the connection
  closed at once with 1014 (bad gateway) and the reason;
- upstream answers the upgrade with an HTTP error (401, 404 ...): the charger gets the same status, so its
  own retry and credential logic sees what the CSMS said;
- upstream gone mid-session without a close frame: the charger is closed with 1011 and a reason;
- charger gone without a close frame: the upstream TCP connection is dropped the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.connection import Connection
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response

from .events import ConnEvent, Seen
from .recorder import redact_auth

LOG = logging.getLogger("ocpptool.monitor")
LOG.addHandler(logging.NullHandler())
_QUIET = logging.getLogger("ocpptool.monitor.websockets")  # websockets' own chatter (handshake failures ...)
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False

MAX_MESSAGE = 16 * 1024 * 1024  # far above any OCPP message; a bound nonetheless
UPSTREAM_OPEN_TIMEOUT = 10.0
BAD_GATEWAY = 1014
INTERNAL_ERROR = 1011


class _Relaying:
    """Forwards control frames the application never sees: pings (the library also answers them) and
    unsolicited pongs (keepalives). Answers to pings the proxy forwarded stop here: the original sender
    already got its pong from the proxy, with the same payload."""

    relay_peer: Connection | None = None
    relay_tasks: set[asyncio.Task[Any]]

    def process_event(self, event: Any) -> None:
        unsolicited = (isinstance(event, Frame) and event.opcode is Opcode.PONG
                       and bytes(event.data) not in self.pending_pings)  # type: ignore[attr-defined]  # fmt: skip
        super().process_event(event)  # type: ignore[misc]
        peer = self.relay_peer
        if peer is None or not isinstance(event, Frame):
            return
        if event.opcode is Opcode.PING:
            self._spawn(peer.ping(bytes(event.data)))
        elif unsolicited:
            self._spawn(peer.pong(bytes(event.data)))

    def _spawn(self, coro: Any) -> None:
        async def guarded() -> None:
            with contextlib.suppress(Exception):
                waiter = await coro
                if isinstance(waiter, asyncio.Future):  # a ping's pong waiter: nobody awaits it
                    waiter.add_done_callback(lambda f: f.cancelled() or f.exception())

        if not hasattr(self, "relay_tasks"):
            self.relay_tasks = set()
        task = asyncio.get_running_loop().create_task(guarded())
        self.relay_tasks.add(task)
        task.add_done_callback(self.relay_tasks.discard)


class RelayServerConnection(_Relaying, ServerConnection):
    pass


class RelayClientConnection(_Relaying, ClientConnection):
    pass


@dataclass
class ProxyConfig:
    listen_host: str
    listen_port: int
    upstream: str  # ws:// or wss:// URL; the charger's path is appended to its path
    ssl_server: ssl.SSLContext | None = None
    ssl_upstream: ssl.SSLContext | None = None
    open_timeout: float = UPSTREAM_OPEN_TIMEOUT


@dataclass
class _Pending:
    cp: str
    conn: str
    upstream: ClientConnection | None = None
    error: str = ""


def charge_point_id(path: str) -> str:
    """The charge point id: the last non-empty segment of the request path (query string ignored)."""
    segs = [s for s in path.split("?", 1)[0].split("/") if s]
    from urllib.parse import unquote

    return unquote(segs[-1]) if segs else "(no id)"


def _now() -> datetime:
    return datetime.now(UTC)


class Proxy:
    """``async with Proxy(cfg, on_frame, on_conn) as p: ...``; ``p.port`` is the bound port."""

    def __init__(self, cfg: ProxyConfig, on_frame: Callable[[Seen], None], on_conn: Callable[[ConnEvent], None]):
        self.cfg = cfg
        self.on_frame = on_frame
        self.on_conn = on_conn
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._server: Server | None = None
        self.port = cfg.listen_port
        self.active: dict[str, tuple[ServerConnection, ClientConnection]] = {}
        parts = urlsplit(cfg.upstream)
        self._upstream_base = cfg.upstream.split("?", 1)[0].rstrip("/")
        self._upstream_tls = parts.scheme == "wss"

    async def __aenter__(self) -> Proxy:
        self._server = await serve(
            self._handler,
            self.cfg.listen_host,
            self.cfg.listen_port,
            ssl=self.cfg.ssl_server,
            process_request=self._process_request,
            select_subprotocol=self._select_subprotocol,
            create_connection=RelayServerConnection,
            ping_interval=None,  # the peers' own pings are relayed; the proxy adds none
            max_size=MAX_MESSAGE,
            close_timeout=5,
            logger=_QUIET,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop listening; close every pair with 1001 (going away), giving up on a stuck peer after 2 s."""
        if self._server is None:
            return
        self._server.close(close_connections=False)
        conns = [c for pair in self.active.values() for c in pair]
        if conns:
            await asyncio.wait([asyncio.ensure_future(c.close(1001, "proxy shutting down")) for c in conns], timeout=2)
            for c in conns:
                if c.state.name != "CLOSED":
                    c.transport.abort()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 10)
            self._server = None

    # -- handshake: open the upstream while the charger waits for its 101
    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        cp = charge_point_id(request.path)
        pend = _Pending(cp, f"{cp}#{next(self._ids)}")
        self._pending[id(connection)] = pend
        offered = [p.strip() for h in request.headers.get_all("Sec-WebSocket-Protocol") for p in h.split(",") if p.strip()]
        headers = {}
        auth = request.headers.get("Authorization")
        if auth:
            headers["Authorization"] = auth
        url = self._upstream_base + (request.path if request.path.startswith("/") else "/" + request.path)
        try:
            pend.upstream = await connect(
                url,
                subprotocols=offered or None,  # type: ignore[arg-type]
                additional_headers=headers,
                ssl=self.cfg.ssl_upstream if self._upstream_tls else None,
                open_timeout=self.cfg.open_timeout,
                ping_interval=None,
                max_size=MAX_MESSAGE,
                close_timeout=5,
                create_connection=RelayClientConnection,
                user_agent_header=request.headers.get("User-Agent"),
                logger=_QUIET,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            self._pending.pop(id(connection), None)
            self._refused(pend, status, f"upstream answered HTTP {status}; passed on to the charger")
            return connection.respond(status, f"upstream answered HTTP {status}\n")
        except (OSError, TimeoutError, InvalidHandshake, ssl.SSLError) as exc:
            pend.error = f"upstream unreachable: {type(exc).__name__}: {exc}"[:120]
            return None
        if connection.state.name == "CLOSED":  # the charger gave up while the CSMS answered: no pair, no leak
            self._pending.pop(id(connection), None)
            await pend.upstream.close(1001, "charger went away")
        return None

    def _select_subprotocol(self, connection: ServerConnection, offered: Any) -> Any:
        pend = self._pending.get(id(connection))
        if pend is not None and pend.upstream is not None:
            return pend.upstream.subprotocol
        return offered[0] if offered else None  # only to deliver the close code below

    def _refused(self, pend: _Pending, code: int, detail: str) -> None:
        LOG.warning("%s: %s", pend.cp, detail)
        self.on_conn(ConnEvent(_now(), "refused", pend.conn, pend.cp, code=code, reason=detail, detail=detail))

    # -- one pair
    async def _handler(self, charger: ServerConnection) -> None:
        pend = self._pending.pop(id(charger), None)
        if pend is None:
            return
        upstream = pend.upstream
        if upstream is None:
            self._refused(pend, BAD_GATEWAY, pend.error or "upstream unreachable")
            await charger.close(BAD_GATEWAY, pend.error[:120] or "upstream unreachable")
            return
        sub = upstream.subprotocol
        assert isinstance(charger, RelayServerConnection) and isinstance(upstream, RelayClientConnection)
        charger.relay_peer, upstream.relay_peer = upstream, charger
        auth = redact_auth(charger.request.headers.get("Authorization")) if charger.request else None
        LOG.info("%s: connected (%s)", pend.cp, sub)
        self.on_conn(ConnEvent(_now(), "opened", pend.conn, pend.cp, subprotocol=sub,
                               detail=f"subprotocol {sub or 'none'}" + (f", auth {auth}" if auth else "")))  # fmt: skip
        self.active[pend.conn] = (charger, upstream)
        state = {"closer": ""}
        try:
            await asyncio.gather(
                self._pump(charger, upstream, "cp->csms", pend, sub, state),
                self._pump(upstream, charger, "csms->cp", pend, sub, state),
            )
        finally:
            self.active.pop(pend.conn, None)
            charger.relay_peer = upstream.relay_peer = None
            for c in (charger, upstream):
                if c.state.name != "CLOSED":
                    c.transport.abort()
        code, reason = _close_of(charger if state["closer"] == "charger" else upstream)
        who = state["closer"] or "?"
        self.on_conn(ConnEvent(_now(), "closed", pend.conn, pend.cp, subprotocol=sub, code=code, reason=reason,
                               detail=f"closed by the {who}" + (f": {code} {reason}".rstrip() if code else "")))  # fmt: skip

    async def _pump(self, src: Connection, dst: Connection, direction: str, pend: _Pending, sub: str | None,
                    state: dict[str, str]) -> None:
        try:
            while True:
                msg = await src.recv()
                ts = _now()
                await dst.send(msg)
                if isinstance(msg, str):
                    self.on_frame(Seen(ts, pend.conn, pend.cp, direction, sub, msg))
                else:
                    self.on_frame(Seen(ts, pend.conn, pend.cp, direction, sub, f"<binary frame, {len(msg)} bytes>",
                                       binary=True))  # fmt: skip
        except ConnectionClosed:
            pass
        if state["closer"]:
            return  # the other side closed first; its pump handles dst
        who = "charger" if direction == "cp->csms" else "CSMS"
        if src.protocol.close_rcvd is None and (dst.protocol.close_rcvd is not None or dst.state.name == "CLOSED"):
            return  # ``dst`` went away while we were sending to it: its own pump closes ``src``
        state["closer"] = who
        rcvd = src.protocol.close_rcvd
        if rcvd is None:
            if who == "CSMS":
                LOG.warning("%s: upstream connection lost; closing the charger with 1011", pend.cp)
                await dst.close(INTERNAL_ERROR, "upstream connection lost")
            else:
                dst.transport.abort()  # the CSMS sees the connection drop, as it would without the proxy
            return
        if rcvd.code in (1005, 1006, 1015):  # codes that must not be sent: a close frame without a code
            await dst.close(None, "")  # type: ignore[arg-type]  # websockets sends an empty close frame
        else:
            await dst.close(rcvd.code, rcvd.reason)


def _close_of(conn: Connection) -> tuple[int | None, str]:
    rcvd = conn.protocol.close_rcvd
    return (rcvd.code, rcvd.reason) if rcvd is not None else (None, "no close frame")
