"""The replay live view (Textual). It only renders: the replay runs in a thread worker on its own loop.

The replay's sink appends :class:`~ocpptool.replay.runtime.Event` objects to a deque (one O(1) append
per frame, no locks, no Textual call on the hot path); a 10 Hz timer drains it into the charge point
table, the message log and the progress bar. Posting a Textual message per frame would cost the replay
thread more than sending the frame does, so only the end of the run is posted as a message
(:class:`ReplayApp.Finished`). Keys drive :class:`~ocpptool.replay.runtime.Control`, which hops onto the
replay's loop.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from typing import Any

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.widget import Widget
from textual.widgets import Footer, Header

from ..replay.plan import Plan
from ..replay.runtime import Control, CpStats, Event, ReplayOptions, ReplayResult

COLUMNS = ("charge point", "state", "connector", "transaction", "sent", "received", "last action", "divergences")
LOG_PER_TICK = 20  #: at most this many frames are written to the log per refresh; the rest are counted
REFRESH_S = 0.5  #: log, clock and progress at 2 Hz: enough to follow (1 Hz saved little CPU: bench/README.md)
TABLE_EVERY = 1  #: the charge point table at the same rate


class ReplayApp(App[ReplayResult | None]):
    CSS = """
    #cps { height: 1fr; }
    #log { height: 1fr; border-top: solid $accent; }
    #clock { height: 1; }
    """
    BINDINGS = [
        Binding("p", "pause", "Pause"),
        Binding("r", "resume", "Resume"),
        Binding("plus,f", "faster", "Faster"),
        Binding("minus,s", "slower", "Slower"),
        Binding("n", "step", "Step"),
        Binding("q", "quit_replay", "Quit"),
    ]

    class Finished(Message):
        def __init__(self, result: ReplayResult | None, error: BaseException | None) -> None:
            super().__init__()
            self.result = result
            self.error = error

    def __init__(self, plan: Plan, opts: ReplayOptions, control: Control, *, exit_when_done: bool = True) -> None:
        super().__init__()
        self.plan = plan
        self.opts = opts
        self.control = control
        self.exit_when_done = exit_when_done
        self.events: deque[Event] = deque()
        self.stats: dict[str, CpStats] = {s.target_id: CpStats() for s in plan.scripts}
        self.result: ReplayResult | None = None
        self.error: BaseException | None = None
        self.frames = 0
        self.skipped_log = 0
        self._dirty: set[str] = set()
        self._ticks = 0
        self.title = "ocpptool replay"

    def compose(self) -> ComposeResult:
        yield Header()
        yield CpTable(self.stats, id="cps")
        yield ClockBar(id="clock")
        yield LogTail(id="log")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#cps", CpTable).focus()
        self.sub_title = self._mode()
        self.run_worker(self._run, thread=True, exclusive=True, name="replay")
        self.set_interval(REFRESH_S, self.refresh_view)

    def _mode(self) -> str:
        where = self.opts.target or (f"listen {self.opts.listen[0]}:{self.opts.listen[1]}" if self.opts.listen else "")
        return f"{len(self.plan.scripts)} charge points -> {where}"

    # -- the worker (its own thread and event loop)
    def _run(self) -> None:
        from ..replay.command import execute

        result, error = None, None
        try:
            result = asyncio.run(execute(self.plan, self.opts, self.control, self.events.append))
        except BaseException as exc:  # handed to the UI thread, re-raised by run_app
            error = exc
        self.post_message(self.Finished(result, error))

    # -- rendering
    def refresh_view(self) -> None:
        log = self.query_one("#log", LogTail)
        written = 0
        events = self.events
        for _ in range(len(events)):
            ev = events.popleft()
            st = self.stats.get(ev.cp)
            if ev.kind in ("sent", "received"):
                self.frames += 1
                if st is not None:
                    if ev.kind == "sent":
                        st.sent += 1
                        if ev.message_type == "CALL":
                            st.last_action = ev.action
                        if ev.connector is not None:
                            st.connector = ev.connector
                        if ev.transaction is not None:
                            st.transaction = ev.transaction
                    else:
                        st.received += 1
                        if ev.message_type == "CALL":
                            st.last_action = ev.action
                    self._dirty.add(ev.cp)
                if written < LOG_PER_TICK:
                    log.write(self._line(ev))
                    written += 1
                else:
                    self.skipped_log += 1
                continue
            if ev.kind == "state" and st is not None:
                st.state = ev.text
                self._dirty.add(ev.cp)
            elif ev.kind == "divergence" and st is not None:
                st.divergences += 1
                self._dirty.add(ev.cp)
                log.write(Text(f"divergence {ev.text}", style="bold yellow"))
            elif ev.kind == "note":
                log.write(Text(f"note: {ev.text}", style="magenta"))
        if self.skipped_log:
            log.write(Text(f"... {self.skipped_log:,} frames not shown (too fast to read)", style="dim"))
            self.skipped_log = 0
        log.refresh()
        self._ticks += 1
        if self._ticks % TABLE_EVERY == 0 or self.result is not None or self.control.paused:
            self._update_table()
        speed = "max" if math.isinf(self.control.speed) else f"{self.control.speed:g}x"
        state = "paused" if self.control.paused else "running"
        if self.result is not None or self.error is not None:
            state = "finished"
        self.query_one("#clock", ClockBar).show(self.control.clock(), self.plan.duration_s,
                                                f"{speed}  {state}  {self.frames:,} frames")  # fmt: skip

    def _update_table(self) -> None:
        self.query_one("#cps", CpTable).refresh()
        self._dirty.clear()

    @staticmethod
    def _line(ev: Event) -> Text:
        arrow, style = (">>", "green") if ev.kind == "sent" else ("<<", "cyan")
        if ev.message_type == "CALLERROR":
            style = "red"
        text = Text(f"{ev.clock:9.3f} ", style="dim")
        text.append(f"{ev.cp} {arrow} ", style=f"bold {style}")
        text.append(ev.text[:300], style=style)
        return text

    def on_unmount(self) -> None:
        self.control.quit()  # never leave the worker running (paused) behind a closed view

    def on_replay_app_finished(self, message: Finished) -> None:
        self.result, self.error = message.result, message.error
        self.refresh_view()
        if self.exit_when_done or self.error is not None:
            self.exit(self.result)

    # -- keys
    def action_pause(self) -> None:
        self.control.pause()

    def action_resume(self) -> None:
        self.control.resume()

    def action_faster(self) -> None:
        self.control.faster()

    def action_slower(self) -> None:
        self.control.slower()

    def action_step(self) -> None:
        self.control.step()

    def action_quit_replay(self) -> None:
        if self.result is not None or self.error is not None:
            self.exit(self.result)
        else:
            self.control.quit()  # the worker unwinds, reports, and Finished exits the app


class CpTable(Widget, can_focus=True):
    """A row per charge point, drawn as one block of text (up/down/page keys scroll it).

    Textual's DataTable costs about 1 ms of CPU per cell redrawn; at 8 columns and a screenful of busy
    charge points that took a fifth of a core away from the replay. This widget formats only the rows
    on screen, as one Rich Text, and never triggers a re-layout.
    """

    BINDINGS = [
        Binding("up", "move(-1)", show=False), Binding("down", "move(1)", show=False),
        Binding("pageup", "move(-20)", show=False), Binding("pagedown", "move(20)", show=False),
        Binding("home", "move(-1000000)", show=False), Binding("end", "move(1000000)", show=False),
    ]  # fmt: skip
    WIDTHS = (16, 22, 9, 12, 8, 8, 26, 11)

    def __init__(self, stats: dict[str, CpStats], **kw: Any) -> None:
        super().__init__(**kw)
        self.stats = stats
        self.order = list(stats)
        self.top = 0

    def action_move(self, delta: int) -> None:
        rows = max(1, self.size.height - 1)
        self.top = max(0, min(self.top + delta, max(0, len(self.order) - rows)))
        self.refresh()

    def row(self, cp: str) -> tuple[str, ...]:
        st = self.stats[cp]
        return (cp, st.state, _s(st.connector), _s(st.transaction), str(st.sent), str(st.received),
                st.last_action, str(st.divergences))  # fmt: skip

    def render(self) -> Text:
        text = Text(" ".join(f"{c[:w]:<{w}}" for c, w in zip(COLUMNS, self.WIDTHS, strict=True)), style="bold reverse")
        rows = max(0, self.size.height - 1)
        for cp in self.order[self.top: self.top + rows]:
            values = self.row(cp)
            style = "red" if values[1].startswith(("failed", "connect-failed", "dropped")) else (
                "yellow" if values[7] != "0" else ("green" if values[1] == "done" else ""))
            text.append("\n")
            text.append(" ".join(f"{v[:w]:<{w}}" for v, w in zip(values, self.WIDTHS, strict=True)), style=style)
        text.no_wrap = True
        text.overflow = "ellipsis"
        return text


class LogTail(Widget):
    """The newest frames, newest at the bottom, scrolling as they arrive.

    Textual's RichLog re-lays out the screen whenever its line count changes (every tick here), which
    cost more CPU than the replay itself; this tail only redraws itself. The full history is what
    ``--record`` writes.
    """

    def __init__(self, keep: int = 300, **kw: Any) -> None:
        super().__init__(**kw)
        self.lines: deque[Text] = deque(maxlen=keep)

    def write(self, line: Text) -> None:
        self.lines.append(line)

    def render(self) -> Text:
        height = max(1, self.size.height)
        text = Text("\n").join(list(self.lines)[-height:])
        text.no_wrap = True
        text.overflow = "ellipsis"
        return text


class ClockBar(Widget):
    """The progress bar and the replay clock on one line, redrawn without a re-layout (cheap at 4 Hz)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self._text = Text("")

    def show(self, clock: float, end: float, tail: str) -> None:
        done = min(clock / end, 1.0) if end > 0 else 1.0
        width = max(10, self.size.width - 60)
        filled = int(done * width)
        text = Text("━" * filled, style="bold green")
        text.append("━" * (width - filled), style="grey37")
        text.append(f" {done:4.0%}  +{clock:,.1f} s / {end:,.1f} s  {tail}")
        self._text = text
        self.refresh()

    def render(self) -> Text:
        return self._text


def _s(value: Any) -> str:
    return "" if value is None else str(value)


def run_app(plan: Plan, opts: ReplayOptions, control: Control) -> ReplayResult | None:
    """Show the live view until the replay ends (or the user quits); return the replay's result."""
    app = ReplayApp(plan, opts, control)
    app.run()
    if app.error is not None:
        raise app.error
    return app.result
