"""The monitor's engine: a shell (proxy or follower) -> hub -> recorder, live state, analysis -> a view.

:func:`run_monitor` runs until ``stop`` is set or ``duration`` has passed. The view is any object with the
:class:`View` methods; it is called on the engine's event loop, in batches (at most every ``tick_s``), so a
view that renders slowly cannot stall the relays for long and a busy proxy does not flood it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from ..errors import UserError
from ..listen import client_tls, server_tls
from .events import ConnEvent, Seen
from .live import (
    ChargerRow,
    FrameInfo,
    IncrementalAnalysis,
    LiveState,
    _worker_init,
    analyse_delta,
    analyse_rows,
)
from .recorder import Recorder, redact

SWEEP_EVERY = 12  # every 12th analysis run looks at every charge point, not only those with new traffic


class View(Protocol):
    def frames(self, infos: list[FrameInfo]) -> None: ...
    def connection(self, ev: ConnEvent) -> None: ...
    def chargers(self, rows: list[ChargerRow]) -> None: ...
    def findings(self, rows: list[dict[str, Any]]) -> None: ...
    def notice(self, text: str) -> None: ...


@dataclass
class MonitorOptions:
    listen: tuple[str, int] | None = None
    upstream: str | None = None
    follow: str | None = None
    record: str | None = None
    rotate_bytes: int | None = None
    rotate_daily: bool = False
    redact: bool = False
    cert: str | None = None
    key: str | None = None
    client_ca: str | None = None
    ca: str | None = None
    upstream_cert: str | None = None
    upstream_key: str | None = None
    input_format: str | None = None
    log_tz: str | None = None
    analyse_every_s: float = 5.0  # 0 disables the incremental analysis
    min_severity: str = "warning"
    duration_s: float | None = None
    tick_s: float = 0.25
    analysis_options: Any = None


@dataclass
class Stats:
    connections: int = 0
    refused: int = 0
    frames: int = 0
    binary: int = 0
    recorded: int = 0
    findings: int = 0
    analysis_runs: int = 0
    recordings: list[str] = field(default_factory=list)


def _readable(path: str | None, option: str) -> None:
    import os

    if path is not None and not os.path.isfile(path):
        raise UserError(f"{option} {path}: no such file")


def ssl_contexts(o: MonitorOptions) -> tuple[ssl.SSLContext | None, ssl.SSLContext | None]:
    """The listener's and the upstream's TLS contexts (None: plain ws)."""
    for path, option in ((o.cert, "--cert"), (o.key, "--key"), (o.client_ca, "--client-ca"), (o.ca, "--ca"),
                         (o.upstream_cert, "--upstream-cert"), (o.upstream_key, "--upstream-key")):  # fmt: skip
        _readable(path, option)
    server = None
    if o.cert or o.key:
        if not (o.cert and o.key):
            raise UserError("--cert and --key go together (the listener's certificate chain and its private key)")
        server = server_tls(o.cert, o.key, o.client_ca, "--cert/--key")
    elif o.client_ca:
        raise UserError("--client-ca needs --cert and --key (client certificates need a TLS listener)")
    upstream = None
    if o.upstream and o.upstream.startswith("wss://"):
        upstream = client_tls(o.ca, o.upstream_cert, o.upstream_key, "--ca/--upstream-cert")
    elif o.ca or o.upstream_cert:
        raise UserError("--ca and --upstream-cert are for a wss:// upstream")
    return server, upstream


def check_options(o: MonitorOptions) -> None:
    if (o.listen is None) == (o.follow is None):
        raise UserError("give either --listen HOST:PORT with --upstream URL (proxy) or --follow FILE")
    if o.listen is not None:
        if not o.upstream:
            raise UserError("--listen needs --upstream ws://csms-host:port/path (where to relay the chargers)")
        if not o.upstream.startswith(("ws://", "wss://")):
            raise UserError(f"--upstream {o.upstream!r}: expected a ws:// or wss:// URL")
    elif o.upstream:
        raise UserError("--upstream is for the proxy (--listen), not for --follow")
    if o.analyse_every_s < 0:
        raise UserError("--analyze-every must be >= 0 seconds (0 turns the live analysis off)")
    if o.min_severity not in ("error", "warning", "info"):
        raise UserError(f"--min-severity {o.min_severity!r}: choose error, warning or info")


class Hub:
    """Fans the shell's stream out. Frame handling is O(1) and never awaits."""

    def __init__(self, o: MonitorOptions, view: View, recorder: Recorder | None) -> None:
        self.o = o
        self.view = view
        self.recorder = recorder
        self.live = LiveState()
        self.analysis = IncrementalAnalysis(min_severity=o.min_severity, options=o.analysis_options) \
            if o.analyse_every_s else None  # fmt: skip
        self.stats = Stats()
        self._infos: list[FrameInfo] = []
        self._pool: Any = None

    def frame(self, seen: Seen) -> None:
        if self.o.redact and not seen.binary:
            seen = replace(seen, text=redact(seen.text))
        self.stats.frames += 1
        if seen.binary:
            self.stats.binary += 1
        if self.recorder is not None and not seen.binary:
            self.recorder.write(seen)
            self.stats.recorded += 1
        self._infos.append(self.live.frame(seen))
        if self.analysis is not None:
            self.analysis.add(seen)

    def conn(self, ev: ConnEvent) -> None:
        if ev.kind == "opened":
            self.stats.connections += 1
        elif ev.kind == "refused":
            self.stats.refused += 1
        if ev.kind != "opened" and self.recorder is not None:
            self.recorder.encoder.forget(ev.conn)
        self.live.connection(ev)
        self.view.connection(ev)

    def tick(self) -> None:
        if self._infos:
            infos, self._infos = self._infos, []
            self.view.frames(infos)
        changed = self.live.take_changed()
        if changed:
            self.view.chargers(changed)
        if self.recorder is not None:
            self.recorder.flush()

    async def analyse(self, sweep: bool = False) -> float:
        """One analysis run (in the child process); returns its wall time in seconds."""
        if self.analysis is None or not (sweep or self.analysis.pending()):
            return 0.0
        if self._pool is None:
            await self.warm_up()
        a = self.analysis
        new_rows, cps = a.take(everything=sweep)
        t0 = time.monotonic()
        try:
            found = await asyncio.get_running_loop().run_in_executor(
                self._pool, analyse_delta, a.store, new_rows, cps, a.keep, self.o.analysis_options)
        except Exception as exc:  # a broken child must not take the relays down: say so, carry on
            self.view.notice(f"live analysis failed ({type(exc).__name__}: {exc}); it restarts with the traffic from now on")
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
            return time.monotonic() - t0
        new = self.analysis.new_findings(found)
        self.stats.analysis_runs += 1
        if new:
            self.stats.findings += len(new)
            self.view.findings(new)
        return time.monotonic() - t0

    async def warm_up(self) -> None:
        """Start the analysis child (a second or more: it imports Polars) before it is needed."""
        if self.analysis is None or self._pool is not None:
            return
        try:
            self._pool = _analysis_pool()
            await asyncio.get_running_loop().run_in_executor(self._pool, analyse_rows, [], None)
        except Exception as exc:  # no child process possible here: analyse in a thread instead
            self.view.notice(f"live analysis runs in a thread ({type(exc).__name__}: {exc})")
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=1)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _analysis_pool():
    """One child process for the live analysis: Polars and the detectors hold the GIL for stretches that
    would otherwise show up as relay latency (measured: p99 +218 ms in-process at 50 chargers)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init)


async def run_monitor(o: MonitorOptions, view: View, stop: asyncio.Event | None = None,
                      on_ready: Any = None) -> Stats:
    """Run the proxy or the follower until ``stop`` (or ``duration_s``); returns what happened."""
    check_options(o)
    stop = stop or asyncio.Event()
    server_ssl, upstream_ssl = ssl_contexts(o)
    recorder = None
    if o.record:
        try:
            recorder = Recorder(o.record, max_bytes=o.rotate_bytes, daily=o.rotate_daily)
        except OSError as exc:
            raise UserError(f"--record {o.record}: cannot write ({exc.strerror or exc})") from None
    hub = Hub(o, view, recorder)
    loop = asyncio.get_running_loop()
    if o.duration_s:
        loop.call_later(o.duration_s, stop.set)

    async def ticker() -> None:
        next_analysis = time.monotonic() + o.analyse_every_s
        runs = 0
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), o.tick_s)
            hub.tick()
            if o.analyse_every_s and time.monotonic() >= next_analysis:
                runs += 1
                took = await hub.analyse(sweep=runs % SWEEP_EVERY == 0)
                # at most ~1/4 of a core for the analysis, however long the history gets
                next_analysis = time.monotonic() + max(o.analyse_every_s, 3 * took)

    tick_task = asyncio.create_task(ticker())
    warm_task = asyncio.create_task(hub.warm_up())
    try:
        if o.follow:
            from .follow import Follower

            follower = Follower(o.follow, hub.frame, input_format=o.input_format, log_tz=o.log_tz,
                                on_notice=view.notice)  # fmt: skip
            follower.check()
            if on_ready:
                on_ready(None)
            await follower.run(stop)
        else:
            from .proxy import Proxy, ProxyConfig

            assert o.listen is not None and o.upstream is not None
            cfg = ProxyConfig(o.listen[0], o.listen[1], o.upstream, server_ssl, upstream_ssl)
            try:
                proxy = Proxy(cfg, hub.frame, hub.conn)
                await proxy.__aenter__()
            except OSError as exc:
                raise UserError(f"--listen {o.listen[0]}:{o.listen[1]}: cannot listen ({exc.strerror or exc})") from None
            try:
                view.notice(f"listening on {'wss' if server_ssl else 'ws'}://{o.listen[0]}:{proxy.port}/<charge point id>, "
                            f"relaying to {_shown_url(o.upstream)}/<charge point id>")  # fmt: skip
                if on_ready:
                    on_ready(proxy)
                await stop.wait()
            finally:
                await proxy.aclose()
    finally:
        stop.set()
        await tick_task
        await warm_task
        hub.tick()
        try:
            await hub.analyse(sweep=True)
        finally:
            hub.close()
        if recorder is not None:
            recorder.close()
            hub.stats.recordings = [str(p) for p in recorder.rotated] + [str(recorder.path)]
    return hub.stats


def _shown_url(url: str) -> str:
    """A URL as it may be printed: credentials in it (ws://user:password@host) are left out."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


class Output:
    """Lines to a stream without ever blocking the caller (the proxy's event loop).

    A reader that is slow or stopped (``ocpptool monitor | less``, a full pipe) must not stall the chargers
    behind the proxy: lines go to a thread that writes them, and past ``max_pending`` bytes waiting, new
    lines are dropped and counted (the recording keeps every frame). A stream without a file descriptor
    (a StringIO in tests) is written directly.
    """

    def __init__(self, stream: Any, *, max_pending: int = 4 << 20) -> None:
        self.stream = stream
        self.max_pending = max_pending
        self.dropped_lines = 0
        self.broken = False
        self._chunks: list[bytes] = []
        self._pending = 0
        self._cond = threading.Condition()
        self._closed = False
        try:
            self._fd: int | None = stream.fileno()
        except (AttributeError, OSError, ValueError):
            self._fd = None
        self._thread = None
        if self._fd is not None:
            stream.flush()
            self._thread = threading.Thread(target=self._run, name="ocpptool-output", daemon=True)
            self._thread.start()

    def write(self, text: str) -> None:
        if not text or self.broken:
            return
        if self._fd is None:
            try:
                self.stream.write(text)
                self.stream.flush()
            except BrokenPipeError:
                self.broken = True
            return
        data = text.encode("utf-8", "replace")
        with self._cond:
            if self._pending + len(data) > self.max_pending:
                self.dropped_lines += text.count("\n")
                return
            self._chunks.append(data)
            self._pending += len(data)
            self._cond.notify()

    def _run(self) -> None:
        assert self._fd is not None
        while True:
            with self._cond:
                while not self._chunks and not self._closed:
                    self._cond.wait()
                if not self._chunks:
                    return
                data = b"".join(self._chunks)
                self._chunks.clear()
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(self._fd, view):]
            except OSError:  # the reader went away: nothing more can be shown
                self.broken = True
                with self._cond:
                    self._chunks.clear()
                    self._pending = 0
                return
            with self._cond:
                self._pending -= len(data)
                self._cond.notify_all()

    def close(self, timeout: float = 2.0) -> None:
        """Write what is waiting (for at most ``timeout`` seconds: a reader that never reads cannot keep the
        process alive)."""
        if self._thread is None:
            return
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)


class LineView:
    """``--no-tui``: one line per frame, connection event and finding on stdout; problems also on stderr.

    Neither stream can stall the proxy (see :class:`Output`); lines a slow reader could not take are
    counted and said at the end.
    """

    def __init__(self, out=None, err=None, *, frames: bool = True) -> None:
        self.out = Output(out or sys.stdout)
        self.err = Output(err or sys.stderr)
        self.show_frames = frames

    def frames(self, infos: list[FrameInfo]) -> None:
        if self.show_frames:
            self.out.write("".join(
                f"{i.seen.ts.strftime('%Y-%m-%dT%H:%M:%S.%f')[:-3]}Z {i.seen.charge_point_id} {i.seen.direction} "
                f"{i.message_type} {i.action or '-'} {i.seen.text}\n" for i in infos))  # fmt: skip

    def connection(self, ev: ConnEvent) -> None:
        line = f"{ev.ts.strftime('%Y-%m-%dT%H:%M:%S.%f')[:-3]}Z {ev.charge_point_id} {ev.kind}: {ev.detail}\n"
        self.out.write(line)
        if ev.kind == "refused" or (ev.kind == "closed" and ev.code in (1011, 1014)):
            self.err.write(f"ocpptool: monitor: {ev.charge_point_id}: {ev.detail}\n")

    def chargers(self, rows: list[ChargerRow]) -> None:
        pass

    def findings(self, rows: list[dict[str, Any]]) -> None:
        self.out.write("".join(
            f"FINDING {r['severity']} {r['code']} {r['charge_point_id'] or '-'}"
            f"{' tx ' + r['transaction_id'] if r['transaction_id'] else ''}: {r['summary']}\n" for r in rows))  # fmt: skip

    def notice(self, text: str) -> None:
        self.err.write(f"ocpptool: monitor: {text}\n")

    def close(self) -> str | None:
        """Write what is waiting; a line saying how many lines were dropped, if any."""
        self.out.close()
        self.err.close()
        dropped = self.out.dropped_lines + self.err.dropped_lines
        if not dropped:
            return None
        return (f"ocpptool: monitor: {dropped:,} output lines dropped: the reader of the output was too slow "
                "(the recording has every frame)")


def run_lines(o: MonitorOptions, *, frames: bool = True, quiet: bool = False) -> Stats:
    """Run with the line view until Ctrl-C / SIGTERM (or ``duration_s``); a summary line on stderr at the end."""
    import signal

    view = LineView(frames=frames)

    async def main() -> Stats:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        return await run_monitor(o, view, stop)

    try:
        stats = asyncio.run(main())
    finally:
        dropped = view.close()
    if dropped:
        print(dropped, file=sys.stderr)
    if not quiet:
        print(summary_line(stats), file=sys.stderr)
    return stats


def summary_line(s: Stats) -> str:
    rec = f"; {s.recorded:,} recorded in {', '.join(s.recordings)}" if s.recordings else ""
    return (f"ocpptool: monitor: {s.connections:,} connections ({s.refused:,} refused), {s.frames:,} frames"
            f"{rec}; {s.findings:,} findings")  # fmt: skip
