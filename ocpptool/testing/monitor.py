"""Helpers for testing and benchmarking ``ocpptool monitor`` with real peers on loopback.

* :func:`monitor_running` -- the monitor's proxy in this event loop, with a :class:`CollectView`.
* :func:`run_recorded_charger` -- :func:`ocpptool.testing.peers.run_charger`, plus a JSON-lines log of every
  frame as the charger sent and received it (the charger's end of a "both ends and the recording" count).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from ..monitor.engine import MonitorOptions, Stats, run_monitor
from ..monitor.events import ConnEvent
from ..monitor.live import ChargerRow, FrameInfo
from .peers import (
    LOGGER,
    SUBPROTOCOLS,
    Charger16,
    Charger201,
    ChargerConfig,
    ChargerReport,
    JsonlRecorder,
    _utc_now,
    connect_charger,
    drive,
)


@dataclass
class CollectView:
    """A view that keeps everything it is shown."""

    infos: list[FrameInfo] = field(default_factory=list)
    events: list[ConnEvent] = field(default_factory=list)
    rows: dict[str, ChargerRow] = field(default_factory=dict)
    found: list[dict[str, Any]] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    stats: Stats | None = None

    def frames(self, infos: list[FrameInfo]) -> None:
        self.infos.extend(infos)

    def connection(self, ev: ConnEvent) -> None:
        self.events.append(ev)

    def chargers(self, rows: list[ChargerRow]) -> None:
        self.rows.update({r.charge_point_id: r for r in rows})

    def findings(self, rows: list[dict[str, Any]]) -> None:
        self.found.extend(rows)

    def notice(self, text: str) -> None:
        self.notices.append(text)


@contextlib.asynccontextmanager
async def monitor_running(upstream: str, **options: Any) -> AsyncIterator[tuple[Any, CollectView]]:
    """Run the monitor's proxy on a free loopback port; yields ``(proxy, view)``; stops it on exit."""
    options.setdefault("analyse_every_s", 0)
    o = MonitorOptions(listen=("127.0.0.1", 0), upstream=upstream, **options)
    view = CollectView()
    stop = asyncio.Event()
    ready: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run_monitor(o, view, stop, on_ready=ready.set_result))
    done, _ = await asyncio.wait([task, ready], timeout=10, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()  # raises the monitor's error
    if ready not in done:
        task.cancel()
        raise TimeoutError("monitor did not start within 10 s")
    try:
        yield ready.result(), view
    finally:
        stop.set()
        view.stats = await asyncio.wait_for(task, 30)


class _ChargerEnd:
    """The charger's websocket, logging what the charger sends (cp->csms) and receives (csms->cp)."""

    def __init__(self, ws: Any, log: JsonlRecorder, cp_id: str, subprotocol: str) -> None:
        self.ws, self._log, self._cp, self._sub = ws, log, cp_id, subprotocol

    async def recv(self) -> str:
        message = await self.ws.recv()
        self._log.write(_utc_now(), self._cp, "csms->cp", self._sub, message)
        return message

    async def send(self, message: str) -> None:
        self._log.write(_utc_now(), self._cp, "cp->csms", self._sub, message)
        await self.ws.send(message)


async def run_recorded_charger(cfg: ChargerConfig, url: str, log: JsonlRecorder,
                               latencies: list[float] | None = None) -> ChargerReport:
    """Run ``cfg``'s script against ``url`` (``/<id>`` appended), logging every frame at the charger.

    With ``latencies``, the time from each CALL the charger sends to its response is appended (seconds).
    """
    cls = Charger16 if cfg.version == "1.6" else Charger201
    async with connect_charger(cfg, url, open_timeout=10) as ws:
        end = _ChargerEnd(ws, log, cfg.id, SUBPROTOCOLS[cfg.version])
        cp = cls(cfg.id, end, response_timeout=cfg.response_timeout, logger=LOGGER)
        cp._setup(cfg)
        if latencies is not None:
            original = cp.call

            async def timed(payload: Any, *args: Any, **kwargs: Any) -> Any:
                t0 = time.perf_counter()
                result = await original(payload, *args, **kwargs)
                latencies.append(time.perf_counter() - t0)
                return result

            cp.call = timed  # type: ignore[method-assign]
        await drive(cp, cp.script(), cfg.max_duration)
    return cp.report
