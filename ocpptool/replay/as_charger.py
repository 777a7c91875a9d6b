"""Replay as chargers: one websockets client per recorded charge point against ``--target``.

Each charge point runs :class:`ChargerShell`: connect (recorded subprotocol, Basic auth, TLS), send its
recorded CALLs in order at the replay clock, exactly one in flight, and answer whatever the CSMS calls
from the recording. A dropped connection is retried with exponential backoff; the CALL that was in flight
is sent again on the new connection, so nothing is lost.
"""

from __future__ import annotations

import asyncio
import base64
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from .defaults import default_response
from .divergence import Live, compare_calls, compare_exchange
from .plan import (
    CpScript,
    Exchange,
    Plan,
    TransactionIds,
    best_match,
    fresh_message_id,
    map_id_tags,
    shift_timestamps,
    shift_timestamps_text,
)
from .runtime import Control, CpStats, Event, Quit, ReplayOptions, ReplayResult, Sink
from .transcript import Transcript

CP, CS = "cp->csms", "csms->cp"


def basic_auth(cp_id: str, auth: dict[str, str]) -> dict[str, str]:
    """The Authorization header for ``cp_id`` (user = charge point id, as OCPP's security profile 1/2)."""
    password = auth.get(cp_id, auth.get("*"))
    if password is None:
        return {}
    token = base64.b64encode(f"{cp_id}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def encode_error(mid: str, code: str, description: str = "") -> str:
    return orjson.dumps([4, mid, code, description, {}]).decode()


class Peer:
    """What both shells do with one live connection: send, receive, correlate, answer calls."""

    def __init__(self, script: CpScript, opts: ReplayOptions, control: Control, sink: Sink,
                 transcript: Transcript, result: ReplayResult, shift: timedelta) -> None:  # fmt: skip
        self.s = script
        self.opts = opts
        self.control = control
        self.sink = sink
        self.transcript = transcript
        self.result = result
        self.shift = shift
        self.stats = result.stats.setdefault(script.target_id, CpStats())
        self.tx = TransactionIds()
        self.pending: dict[str, asyncio.Future[Live]] = {}
        self.sent_at: dict[str, float] = {}
        self.used: set[int] = set()
        self.conn = ""
        self.ws: Any = None
        self.closed = False
        self.next = 0  #: index of the next own call to send
        self.live: list[Live | None] = [None] * len(self.own_calls)  #: what the peer answered to each own call
        self.peer_actions: list[str] = []  #: actions of the calls the live peer made

    @property
    def own_calls(self) -> list[Exchange]:
        """The recorded calls this side sends (the shells say which side they play)."""
        raise NotImplementedError

    @property
    def peer_calls(self) -> list[Exchange]:
        """The recorded calls the other side made (with this side's recorded answers)."""
        raise NotImplementedError

    def state(self, state: str, detail: str = "") -> None:
        self.stats.state = state
        self.sink(Event("state", self.s.target_id, text=state + (f": {detail}" if detail else ""),
                        clock=self.control.clock()))  # fmt: skip

    def prepare(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        """A recorded payload with ids and tags rewritten (clocks move later, on the text: :meth:`call`)."""
        payload = self.tx.rewrite(action, payload)
        if self.opts.id_tag_map:
            payload = map_id_tags(payload, self.opts.id_tag_map)
        return payload

    async def send_text(self, text: str, message_type: str, action: str, payload: Any = None) -> None:
        await self.ws.send(text)
        self.transcript.add(self.conn, self.s.target_id, self.out_dir, self.s.subprotocol, text)
        self.stats.sent += 1
        self.stats.last_action = action
        ev = Event("sent", self.s.target_id, action, message_type, text, clock=self.control.clock())
        if isinstance(payload, dict):
            ev.connector = payload.get("connectorId", payload.get("evseId"))
            ev.transaction = payload.get("transactionId")
            info, evse = payload.get("transactionInfo"), payload.get("evse")
            if ev.transaction is None and isinstance(info, dict):  # 2.0.1/2.1 TransactionEvent
                ev.transaction = info.get("transactionId")
            if ev.connector is None and isinstance(evse, dict):
                ev.connector = evse.get("id")
        self.sink(ev)

    out_dir = CP  # overridden by the CSMS shell

    async def call(self, ex: Exchange) -> Live:
        """Send one recorded CALL (rewritten) and wait for its answer; ConnectionClosed propagates."""
        payload = self.prepare(ex.action, ex.payload)
        mid = ex.message_id if self.opts.keep_message_ids and ex.message_id else fresh_message_id()
        fut: asyncio.Future[Live] = asyncio.get_running_loop().create_future()
        self.pending[mid] = fut
        text = orjson.dumps([2, mid, ex.action, payload]).decode()
        if self.shift:
            text = shift_timestamps_text(text, self.shift)
        self.sent_at[mid] = time.monotonic()
        try:
            if self.closed:
                raise ConnectionClosed(None, None)
            await self.send_text(text, "CALL", ex.action, payload)
            try:
                async with asyncio.timeout(self.opts.response_timeout):
                    live = await fut
            except TimeoutError:
                live = Live(None, message_id=mid)
        finally:
            self.pending.pop(mid, None)
            self.sent_at.pop(mid, None)
        self.tx.learn(ex.action, ex.answer_payload, live.payload)
        if ex.action == "StartTransaction" and live.payload:
            self.stats.transaction = live.payload.get("transactionId")
        elif ex.action == "TransactionEvent":  # 2.0.1/2.1: the charger names the transaction itself
            info = payload.get("transactionInfo")
            if isinstance(info, dict) and info.get("transactionId"):
                self.stats.transaction = info["transactionId"]
        return live

    def on_response(self, msg: list[Any], text: str) -> None:
        mid = msg[1] if len(msg) > 1 else None
        if not isinstance(mid, str):
            return
        fut = self.pending.get(mid)
        if fut is None or fut.done():
            return
        latency = (time.monotonic() - self.sent_at.get(mid, time.monotonic())) * 1000
        if msg[0] == 3 and len(msg) >= 3:
            fut.set_result(Live("result", msg[2] if isinstance(msg[2], dict) else {}, None, latency, mid))
        else:
            fut.set_result(Live("error", None, msg[2] if len(msg) > 2 else None, latency, mid))

    async def answer(self, msg: list[Any], book: list[Exchange]) -> None:
        """Answer a peer's CALL from ``book`` (same action, best payload match) or a schema default."""
        mid, action, payload = msg[1], msg[2], msg[3] if len(msg) > 3 else {}
        self.on_call(action, payload)
        ex = best_match(book, self.used, action, payload)
        if ex is not None:
            self.used.add(id(ex))
        if ex is not None and ex.answer == "error":
            text = encode_error(mid, ex.error_code or "InternalError", ex.error_description or "")
            await self.send_text(text, "CALLERROR", action)
            return
        body: dict[str, Any] | None
        if ex is not None and ex.answer == "result":
            body = self.answer_payload(ex, payload)
        else:
            self.result.uncovered[action] = self.result.uncovered.get(action, 0) + 1
            body = default_response(self.s.version, action)
            if body is None:
                await self.send_text(encode_error(mid, "NotImplemented", f"{action} not in the recording"),
                                     "CALLERROR", action)  # fmt: skip
                return
        await self.send_text(orjson.dumps([3, mid, body]).decode(), "CALLRESULT", action, body)

    def answer_payload(self, ex: Exchange, live_call: Any) -> dict[str, Any]:
        body = ex.answer_payload or {}
        return shift_timestamps(body, self.shift) if self.shift else body

    def on_call(self, action: str, payload: Any) -> None:
        """A live CALL arrived: noted for the extra/missing call comparison."""
        self.peer_actions.append(action)

    def divergences(self) -> list:
        cp = self.s.target_id
        out = []
        for ex, live in zip(self.own_calls, self.live, strict=True):
            out.extend(compare_exchange(cp, ex, live, slow_factor=self.opts.slow_factor,
                                        slow_floor_ms=self.opts.slow_floor_ms))  # fmt: skip
        out.extend(compare_calls(cp, [e.action for e in self.peer_calls], self.peer_actions))
        return out

    async def reader(self, ws: Any, book: list[Exchange]) -> None:
        """Receive until the connection closes; answers run one at a time, in arrival order."""
        try:
            async for text in ws:
                if isinstance(text, bytes):
                    text = text.decode("utf-8", errors="replace")
                self.transcript.add(self.conn, self.s.target_id, self.in_dir, self.s.subprotocol, text)
                self.stats.received += 1
                try:
                    msg = orjson.loads(text)
                except orjson.JSONDecodeError:
                    self.sink(Event("note", self.s.target_id, text=f"not JSON: {text[:80]}"))
                    continue
                if not isinstance(msg, list) or not msg or not isinstance(msg[0], int):
                    continue
                kind = {2: "CALL", 3: "CALLRESULT", 4: "CALLERROR"}.get(msg[0], "?")
                self.sink(Event("received", self.s.target_id, msg[2] if kind == "CALL" and len(msg) > 2 else "",
                                kind, text, clock=self.control.clock()))  # fmt: skip
                if msg[0] == 2 and len(msg) >= 3 and isinstance(msg[1], str) and isinstance(msg[2], str):
                    await self.answer(msg, book)
                elif msg[0] in (3, 4):
                    self.on_response(msg, text)
        except ConnectionClosed:
            pass
        finally:
            self.closed = True
            for fut in self.pending.values():
                if not fut.done():
                    fut.set_exception(ConnectionClosed(None, None))

    in_dir = CS


class ChargerShell(Peer):
    """One recorded charge point replayed against the target CSMS."""

    def __init__(self, *args: Any, url: str) -> None:
        super().__init__(*args)
        self.url = url

    @property
    def own_calls(self) -> list[Exchange]:
        return self.s.charger_calls

    @property
    def peer_calls(self) -> list[Exchange]:
        return self.s.csms_calls

    async def connect(self) -> ClientConnection:
        return await connect(
            self.url,
            subprotocols=[self.s.subprotocol],  # type: ignore[list-item]
            additional_headers=basic_auth(self.s.target_id, self.opts.auth),
            ssl=self.opts.ssl_context if self.url.startswith("wss://") else None,
            open_timeout=self.opts.response_timeout,
            close_timeout=2,
            ping_interval=None,
            max_size=None,
            compression=None,
        )

    async def run(self) -> None:
        calls = self.own_calls
        failures = 0
        await self.control.wait_until(self.s.first_offset, step=False)
        while not self.control.quitting:
            if failures:
                if failures > self.opts.reconnects:
                    self.state("failed", f"gave up after {failures} attempts")
                    return
                delay = min(self.opts.backoff_s * 2 ** (failures - 1), self.opts.backoff_max_s)
                self.state("reconnecting", f"in {delay:.1f} s")
                await asyncio.sleep(delay)
            try:
                ws = await self.connect()
            except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
                failures += 1
                self.state("connect-failed", str(exc) or type(exc).__name__)
                continue
            if ws.subprotocol != self.s.subprotocol:
                self.result.notes.append(f"{self.s.target_id}: the target chose subprotocol {ws.subprotocol!r}, "
                                         f"recorded {self.s.subprotocol!r}")  # fmt: skip
            self.stats.connections += 1
            if self.stats.connections > 1:
                self.stats.reconnects += 1
            self.ws, self.conn = ws, f"{self.s.target_id}#{self.stats.connections}"
            self.state("connected")
            self.closed = False
            reader = asyncio.create_task(self.reader(ws, self.peer_calls))
            try:
                while self.next < len(calls):
                    ex = calls[self.next]
                    await self.control.wait_until(ex.offset)
                    self.live[self.next] = await self.call(ex)
                    self.next += 1
                    failures = 0
                await self.linger(reader)
                self.state("done")
                return
            except ConnectionClosed:
                failures += 1
                self.state("dropped")
            finally:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
                await ws.close()
        self.state("quit")

    async def linger(self, reader: asyncio.Task[None]) -> None:
        """After its own calls, wait (bounded) for the recorded CSMS calls still to come; with none recorded,
        still give the CSMS ``linger_s`` to send calls the recording did not have (they are reported)."""
        if not self.s.csms_calls:
            deadline = time.monotonic() + self.opts.linger_s
            while time.monotonic() < deadline and not reader.done():
                await asyncio.sleep(0.02)
            return
        last = max(e.offset for e in self.s.csms_calls)
        if last > self.control.clock():
            await self.control.wait_until(last, step=False)
        deadline = time.monotonic() + self.opts.linger_s
        while time.monotonic() < deadline and len(self.peer_actions) < len(self.s.csms_calls):
            if reader.done():
                return
            await asyncio.sleep(0.02)


def target_url(base: str, cp_id: str) -> str:
    return f"{base.rstrip('/')}/{quote(cp_id, safe='')}"


async def run_as_charger(plan: Plan, opts: ReplayOptions, control: Control, sink: Sink) -> ReplayResult:
    """Replay every script of ``plan`` against ``opts.target``; returns when all are done (or quit)."""
    assert opts.target is not None
    control.bind()
    control.end = max((e.offset for s in plan.scripts for e in s.charger_calls + s.csms_calls), default=0.0)
    result = ReplayResult("as-charger", Transcript("replay"))
    shift = (datetime.now(UTC) - plan.start) if plan.start and opts.shift_timestamps else timedelta(0)
    shells = [
        ChargerShell(s, opts, control, sink, result.transcript, result, shift, url=target_url(opts.target, s.target_id))
        for s in plan.scripts
    ]
    t0 = time.monotonic()
    tasks = [asyncio.create_task(sh.run()) for sh in shells]
    done = await asyncio.gather(*tasks, return_exceptions=True)
    result.duration_s = time.monotonic() - t0
    for sh, outcome in zip(shells, done, strict=True):
        if isinstance(outcome, Quit):
            result.quit = True
            sh.stats.state = "quit"
        elif isinstance(outcome, BaseException):
            raise outcome
        divs = sh.divergences() if not result.quit else [d for d in sh.divergences() if d.kind != "not-sent"]
        sh.stats.divergences = len(divs)
        result.divergences.extend(divs)
        for d in divs:
            sink(Event("divergence", d.charge_point_id, d.action, text=d.line()))
    sink(Event("done", text=f"{result.frames} frames in {result.duration_s:.1f} s"))
    return result
