"""Replay as a CSMS: accept the recorded charge points on ``--listen`` and re-enact the recorded CSMS.

A charger's calls are answered with the recorded answers (same action, most alike payload). 1.6
StartTransaction answers hand out the recorded transaction ids in order (a fresh id above every recorded
one once they run out), and every recorded CSMS call that names a transaction is rewritten to the id this
replay handed out. The recorded CSMS-initiated calls go out at their recorded offsets, counted from the
charger's connection, one in flight at a time. State is kept per charge point across reconnections.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from .as_charger import Peer
from .plan import Exchange, Plan
from .runtime import Control, Event, Quit, ReplayOptions, ReplayResult, Sink
from .transcript import Transcript


class CsmsShell(Peer):
    """The recorded CSMS side of one charge point."""

    out_dir = "csms->cp"
    in_dir = "cp->csms"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        recorded = [
            e.answer_payload.get("transactionId")
            for e in self.s.charger_calls
            if e.action == "StartTransaction" and e.answer_payload
        ]
        ints = [t for t in recorded if isinstance(t, int)]
        self._fresh_tx = max(ints, default=0) + 1
        self._handed: set[Any] = set()
        self.finished = asyncio.Event()
        self.last_frame = time.monotonic()

    @property
    def own_calls(self) -> list[Exchange]:
        return self.s.csms_calls

    @property
    def peer_calls(self) -> list[Exchange]:
        return self.s.charger_calls

    def on_call(self, action: str, payload: Any) -> None:
        super().on_call(action, payload)
        self.last_frame = time.monotonic()

    def answer_payload(self, ex: Exchange, live_call: Any) -> dict[str, Any]:
        body = super().answer_payload(ex, live_call)
        if ex.action == "StartTransaction" and "transactionId" in body:
            tx = body["transactionId"]
            if tx in self._handed:  # this recorded answer was used already: never hand an id out twice
                tx, self._fresh_tx = self._fresh_tx, self._fresh_tx + 1
                body = {**body, "transactionId": tx}
            self._handed.add(tx)
            self.tx.learn("StartTransaction", ex.answer_payload, body)
            self.stats.transaction = tx
        return body

    async def serve(self, ws: ServerConnection) -> None:
        self.stats.connections += 1
        if self.stats.connections > 1:
            self.stats.reconnects += 1
        self.ws, self.conn = ws, f"{self.s.target_id}#{self.stats.connections}"
        self.state("connected")
        self.closed = False
        reader = asyncio.create_task(self.reader(ws, self.peer_calls))
        base = self.control.clock() - self.s.first_offset
        try:
            while self.next < len(self.own_calls):
                ex = self.own_calls[self.next]
                await self.control.wait_until(base + ex.offset)
                self.live[self.next] = await self.call(ex)
                self.next += 1
            self.state("calls-done")
            self.finished.set()
            await reader
        except ConnectionClosed:
            self.state("disconnected")
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)


def _charge_point(ws: ServerConnection) -> str:
    path = ws.request.path if ws.request else "/"
    return path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]


async def run_as_csms(plan: Plan, opts: ReplayOptions, control: Control, sink: Sink,
                      ready: asyncio.Future[int] | None = None) -> ReplayResult:  # fmt: skip
    """Serve ``opts.listen`` until every recorded charge point has had its CSMS calls and gone quiet.

    ``ready`` (tests) receives the bound port once the server listens.
    """
    assert opts.listen is not None
    control.bind()
    result = ReplayResult("as-csms", Transcript("replay"))
    shift = (datetime.now(UTC) - plan.start) if plan.start and opts.shift_timestamps else timedelta(0)
    shells = {s.target_id: CsmsShell(s, opts, control, sink, result.transcript, result, shift) for s in plan.scripts}
    control.end = max((e.offset - s.first_offset for s in plan.scripts for e in s.csms_calls), default=0.0)
    for sh in shells.values():
        sh.stats.state = "waiting"
    active: set[asyncio.Task[Any]] = set()
    unknown: list[str] = []

    async def handler(ws: ServerConnection) -> None:
        cp = _charge_point(ws)
        shell = shells.get(cp)
        if shell is None:
            unknown.append(cp)
            sink(Event("note", cp, text=f"refused {cp}: not in the recording"))
            await ws.close(1008, "charge point not in the recording")
            return
        task = asyncio.current_task()
        if task:
            active.add(task)
        try:
            await shell.serve(ws)
        except Quit:
            pass
        finally:
            if task:
                active.discard(task)

    subprotocols = sorted({s.subprotocol for s in plan.scripts} | {"ocpp1.6", "ocpp2.0.1"})
    host, port = opts.listen
    t0 = time.monotonic()
    async with serve(handler, host, port, subprotocols=subprotocols,  # type: ignore[arg-type]
                     ping_interval=None, close_timeout=2, max_size=None, compression=None,
                     ssl=opts.ssl_context) as server:  # fmt: skip
        bound = server.sockets[0].getsockname()[1]
        if ready is not None and not ready.done():
            ready.set_result(bound)
        sink(Event("note", text=f"listening on {host}:{bound}"))
        last_activity = time.monotonic()
        while not control.quitting:
            await asyncio.sleep(0.05)
            now = time.monotonic()
            if active or any(sh.stats.sent or sh.stats.received for sh in shells.values()):
                last_activity = max([last_activity] + [sh.last_frame for sh in shells.values()])
            all_done = all(sh.finished.is_set() for sh in shells.values())
            quiet = now - max([sh.last_frame for sh in shells.values()] + [last_activity]) > opts.linger_s
            if all_done and quiet:
                break
            if now - last_activity > opts.idle_timeout_s:
                result.notes.append(f"stopped after {opts.idle_timeout_s:g} s without traffic")
                break
        result.quit = control.quitting
        server.close()
        for ws in list(server.connections):
            await ws.close(1001, "replay finished")
    result.duration_s = time.monotonic() - t0
    for cp in sorted(set(unknown)):
        result.notes.append(f"refused {cp}: not in the recording")
    for sh in shells.values():
        if not sh.stats.connections:
            result.notes.append(f"{sh.s.target_id} never connected")
        divs = sh.divergences()
        sh.stats.divergences = len(divs)
        result.divergences.extend(divs)
        for d in divs:
            sink(Event("divergence", d.charge_point_id, d.action, text=d.line()))
    sink(Event("done", text=f"{result.frames} frames in {result.duration_s:.1f} s"))
    return result
