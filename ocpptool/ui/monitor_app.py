"""The monitor's live view (Textual): chargers, the message stream (filterable), findings as they appear.

The app only renders. The engine (proxy or follower, recorder, live state, incremental analysis) runs on
its own event loop in a thread worker and hands the app small messages (:class:`Frames`,
:class:`Chargers`, :class:`Findings`, :class:`Notice`) in batches, a few times a second; widgets never decode.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from typing import Any

from textual.app import App, ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import DataTable, Footer, Header, Input, Static

from ..monitor.engine import MonitorOptions, Stats, _shown_url, run_monitor
from ..monitor.events import ConnEvent
from ..monitor.live import CHARGER_COLUMNS, MESSAGE_COLUMNS, ChargerRow, FrameInfo

KEEP_FRAMES = 5_000  # the stream keeps this many recent frames (the recording keeps everything)
SHOW_FRAMES = 500  # rows in the messages table


class Frames(Message):
    def __init__(self, infos: list[FrameInfo]) -> None:
        super().__init__()
        self.infos = infos


class Chargers(Message):
    def __init__(self, rows: list[tuple[str, ...]]) -> None:
        super().__init__()
        self.rows = rows


class Findings(Message):
    def __init__(self, rows: list[dict[str, Any]]) -> None:
        super().__init__()
        self.rows = rows


class Notice(Message):
    def __init__(self, text: str, problem: bool = False) -> None:
        super().__init__()
        self.text = text
        self.problem = problem


class Stopped(Message):
    def __init__(self, stats: Stats | None, error: str | None) -> None:
        super().__init__()
        self.stats = stats
        self.error = error


class _Bridge:
    """The engine's view: turns engine calls into app messages (``post_message`` is thread-safe)."""

    def __init__(self, app: App) -> None:
        self.app = app

    def frames(self, infos: list[FrameInfo]) -> None:
        self.app.post_message(Frames(infos))

    def connection(self, ev: ConnEvent) -> None:
        problem = ev.kind == "refused" or (ev.kind == "closed" and ev.code in (1011, 1014))
        self.app.post_message(Notice(f"{ev.ts:%H:%M:%S} {ev.charge_point_id} {ev.kind}: {ev.detail}", problem))

    def chargers(self, rows: list[ChargerRow]) -> None:
        self.app.post_message(Chargers([r.cells() for r in rows]))

    def findings(self, rows: list[dict[str, Any]]) -> None:
        self.app.post_message(Findings(rows))

    def notice(self, text: str) -> None:
        self.app.post_message(Notice(text))


class MonitorApp(App):
    """``MonitorApp(options).run()``; ``options`` as for :func:`ocpptool.monitor.run_monitor`."""

    TITLE = "ocpptool monitor"
    CSS = """
    #left { width: 45%; }
    #chargers { height: 1fr; }
    #events { height: 8; border-top: solid $accent; }
    #filter { height: 3; }
    #messages { height: 1fr; }
    #findings { height: 10; border-top: solid $error; }
    """
    BINDINGS = [("q", "quit", "Quit"), ("ctrl+q", "quit", "Quit"), ("f", "focus_filter", "Filter"), ("escape", "clear_filter", "Clear filter")]

    def __init__(self, options: MonitorOptions) -> None:
        super().__init__()
        self.options = options
        self.frames: deque[FrameInfo] = deque(maxlen=KEEP_FRAMES)
        self.filter = ""
        self.finding_count = 0
        self.error: str | None = None
        self.stats: Stats | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._engine_ready = threading.Event()
        self._charger_keys: set[str] = set()
        self._events: deque[str] = deque(maxlen=200)
        if options.analyse_every_s:
            # The live analysis runs in a child process; multiprocessing's helper process must start while
            # sys.stderr is still a real file (Textual replaces it while the app runs).
            from multiprocessing import resource_tracker

            resource_tracker.ensure_running()

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal():
            with Vertical(id="left"):
                yield DataTable(id="chargers", cursor_type="row")
                yield Static(id="events")
            with Vertical():
                yield Input(placeholder="filter: charge point and/or action (space-separated), Enter", id="filter")
                yield DataTable(id="messages", cursor_type="row")
        yield DataTable(id="findings", cursor_type="row")
        yield Footer()

    def on_mount(self) -> None:
        chargers = self.query_one("#chargers", DataTable)
        for col in CHARGER_COLUMNS:
            chargers.add_column(col, key=col)
        self.query_one("#messages", DataTable).add_columns(*MESSAGE_COLUMNS)
        self.query_one("#findings", DataTable).add_columns("severity", "code", "charge point", "transaction", "summary")
        o = self.options
        self.sub_title = o.follow or f"{o.listen[0]}:{o.listen[1]} -> {_shown_url(o.upstream or '')}" if o.listen else o.follow or ""
        self.run_worker(self._engine, thread=True, exclusive=True, name="engine")

    # -- the engine, on its own loop in a thread
    def _engine(self) -> None:
        async def main() -> Stats:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self._engine_ready.set()
            return await run_monitor(self.options, _Bridge(self), self._stop)

        stats, error = None, None
        try:
            stats = asyncio.run(main())
        except Exception as exc:  # shown in the app, re-raised as a UserError by run_app
            error = str(exc) or type(exc).__name__
        finally:
            self._engine_ready.set()
        self.post_message(Stopped(stats, error))

    def stop_engine(self) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)

    def on_unmount(self) -> None:
        self.stop_engine()  # whatever ended the app, the engine (and its listening socket) stops too

    async def action_quit(self) -> None:
        self.stop_engine()
        self.exit()

    def action_focus_filter(self) -> None:
        self.query_one("#filter", Input).focus()

    def action_clear_filter(self) -> None:
        self.query_one("#filter", Input).value = ""
        self._set_filter("")

    # -- rendering
    def _matches(self, info: FrameInfo) -> bool:
        if not self.filter:
            return True
        words = self.filter.lower().split()
        cp, action = info.seen.charge_point_id.lower(), info.action.lower()
        return all(w in (cp, action) or (len(w) > 2 and w in cp) for w in words)

    def on_frames(self, msg: Frames) -> None:
        self.frames.extend(msg.infos)
        table = self.query_one("#messages", DataTable)
        for info in msg.infos:
            if self._matches(info):
                table.add_row(*info.cells())
        while table.row_count > SHOW_FRAMES:
            table.remove_row(next(iter(table.rows)))
        table.move_cursor(row=table.row_count - 1)

    def on_chargers(self, msg: Chargers) -> None:
        table = self.query_one("#chargers", DataTable)
        for cells in msg.rows:
            key = cells[0]
            if key in self._charger_keys:
                for col, value in zip(CHARGER_COLUMNS, cells, strict=True):
                    table.update_cell(key, col, value)
            else:
                self._charger_keys.add(key)
                table.add_row(*cells, key=key)

    def on_findings(self, msg: Findings) -> None:
        table = self.query_one("#findings", DataTable)
        for f in msg.rows:
            self.finding_count += 1
            table.add_row(f["severity"], f["code"], f["charge_point_id"] or "", f["transaction_id"] or "", f["summary"])
        self.title = f"ocpptool monitor - {self.finding_count} findings"

    def on_notice(self, msg: Notice) -> None:
        self._events.append(("! " if msg.problem else "") + msg.text)
        self.query_one("#events", Static).update("\n".join(list(self._events)[-6:]))

    def on_stopped(self, msg: Stopped) -> None:
        self.stats, self.error = msg.stats, msg.error
        if msg.error:
            self.exit(return_code=2)

    def on_input_submitted(self, msg: Input.Submitted) -> None:
        self._set_filter(msg.value)

    def on_data_table_row_selected(self, msg: DataTable.RowSelected) -> None:
        if msg.data_table.id == "chargers" and msg.row_key.value:
            self.query_one("#filter", Input).value = msg.row_key.value
            self._set_filter(msg.row_key.value)

    def _set_filter(self, text: str) -> None:
        self.filter = text.strip()
        table = self.query_one("#messages", DataTable)
        table.clear()
        rows = [i for i in self.frames if self._matches(i)][-SHOW_FRAMES:]
        for info in rows:
            table.add_row(*info.cells())


def run_app(options: MonitorOptions) -> Stats | None:
    """Run the live view until the user quits; engine errors become one-line UserErrors."""
    from ..errors import UserError
    from ..monitor.engine import summary_line

    app = MonitorApp(options)
    app.run()
    app.stop_engine()
    if app.error:
        raise UserError(app.error)
    if app.stats:
        import sys

        print(summary_line(app.stats), file=sys.stderr)
    return app.stats
