"""The monitor's Textual view, headless with a pilot."""

from __future__ import annotations

import asyncio
from pathlib import Path

from textual.widgets import DataTable, Input

from ocpptool.monitor import MonitorOptions
from ocpptool.testing import ChargerConfig, Csms, Faults, run_charger
from ocpptool.ui.monitor_app import MonitorApp

DEMO = Path(__file__).parent.parent / "captures" / "fleet-demo.jsonl"


async def _until(pilot, cond, timeout: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, f"timed out ({pilot.app.error})"
        await pilot.pause(0.1)


def test_view_shows_chargers_stream_and_findings_and_filters_by_charger():
    """Following a fleet log, the view lists its chargers, streams its frames, shows the findings as they
    appear, and a filter narrows the stream to one charge point and action."""
    app = MonitorApp(MonitorOptions(follow=str(DEMO), analyse_every_s=0.5))

    async def main():
        async with app.run_test(size=(200, 50)) as pilot:
            chargers = app.query_one("#chargers", DataTable)
            messages = app.query_one("#messages", DataTable)
            findings = app.query_one("#findings", DataTable)
            await _until(pilot, lambda: findings.row_count >= 4 and len(app.frames) == 839)
            cps = {chargers.get_row_at(i)[0] for i in range(chargers.row_count)}
            codes = {findings.get_row_at(i)[1] for i in range(findings.row_count)}
            assert messages.row_count == 500  # the newest 500 of 839
            await pilot.press("f")
            app.query_one("#filter", Input).value = "CP-004 MeterValues"
            await pilot.press("enter")
            await pilot.pause(0.2)
            shown = [messages.get_row_at(i) for i in range(messages.row_count)]
            await pilot.press("ctrl+q")  # "q" would go into the focused filter box
            return cps, codes, shown

    cps, codes, shown = asyncio.run(asyncio.wait_for(main(), 100))
    assert {"CP-001", "CP-004"} <= cps and len(cps) >= 9
    assert {"meter-regression", "call-error", "clock-drift"} <= codes
    assert shown and all(r[1] == "CP-004" and r[4] == "MeterValues" for r in shown)


def test_view_of_the_proxy_shows_a_charger_connect_charge_and_close(tmp_path):
    """Through the proxy, a real charger appears as connected with its running transaction, and as closed
    once it hangs up."""
    cfg = ChargerConfig("CP-UI", meter_interval=0.3, faults=Faults(meter_backwards_at=1))  # charges for ~3 s

    async def main():
        async with Csms(tmp_path / "csms.jsonl", [cfg]) as csms:
            app = MonitorApp(MonitorOptions(listen=("127.0.0.1", 0), upstream=csms.url, analyse_every_s=0.5))
            async with app.run_test(size=(200, 50)) as pilot:
                chargers = app.query_one("#chargers", DataTable)
                await _until(pilot, lambda: app._engine_ready.is_set() and app._loop is not None)
                # the engine reports its port in a notice: "listening on ws://127.0.0.1:PORT/..."
                await _until(pilot, lambda: any("listening on" in e for e in app._events))
                port = int(next(e for e in app._events if "listening on" in e).split(":")[2].split("/")[0])
                charger = asyncio.create_task(run_charger(cfg, f"ws://127.0.0.1:{port}"))
                seen_tx = False
                while not charger.done():
                    if chargers.row_count:
                        row = chargers.get_row("CP-UI")
                        seen_tx |= row[1] == "connected" and row[2] != ""  # the transactions column
                    await pilot.pause(0.05)
                await charger
                await _until(pilot, lambda: chargers.get_row("CP-UI")[1].startswith("closed"))
                findings = app.query_one("#findings", DataTable)
                await _until(pilot, lambda: findings.row_count >= 1)
                code = findings.get_row_at(0)[1]
                await pilot.press("q")
            return seen_tx, code

    seen_tx, code = asyncio.run(asyncio.wait_for(main(), 100))
    assert seen_tx and code == "meter-regression"
