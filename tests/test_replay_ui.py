"""The replay live view, headless with Textual's pilot, driving a real replay against a real CSMS on loopback."""

from __future__ import annotations

import asyncio

import pytest

from ocpptool.replay.command import ReplayArgs, check, make_plan
from ocpptool.replay.runtime import Control
from ocpptool.testing import ChargerConfig, Csms, Session, record_fleet
from ocpptool.ui.replay_app import CpTable, ReplayApp

pytestmark = pytest.mark.timeout(60)

FLEET = [
    ChargerConfig("UI-1", heartbeats=1, sessions=(Session(1, "TAG-1", 0.0, 2),)),
    ChargerConfig("UI-2", version="2.0.1", heartbeats=1, sessions=(Session(1, "TAG-2", 0.0, 2),)),
]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    path = tmp_path_factory.mktemp("ui") / "csms.jsonl"
    record_fleet(FLEET, path)
    return path


async def _until(pilot, cond, timeout=10.0):
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        assert loop.time() < end, "timed out"
        await pilot.pause(0.05)


def _calls_sent(app: ReplayApp) -> int:
    return sum(s.sent for s in app.stats.values())


def test_the_live_view_shows_each_charge_point_and_its_keys_pause_step_resume(recorded, tmp_path):
    """Pause stops sending, step sends exactly one CALL, resume finishes; rows show state, counts and transaction."""

    async def main():
        async with Csms(tmp_path / "live.jsonl", FLEET, first_transaction_id=7001) as csms:
            args = ReplayArgs([str(recorded)], target=csms.url, speed="1")
            opts = check(args)
            plan = make_plan(args, progress=False)
            control = Control(opts.speed)
            control.pause()  # start paused so the steps below are deterministic
            app = ReplayApp(plan, opts, control, exit_when_done=False)
            async with app.run_test(size=(140, 40)) as pilot:
                table = app.query_one("#cps", CpTable)
                assert str(table.render()).count("\n") == 2  # a header and one row per charge point
                await _until(pilot, lambda: all(s.state == "connected" for s in app.stats.values()))
                assert _calls_sent(app) == 0
                for expected in (1, 2):
                    await pilot.press("n")
                    await _until(pilot, lambda e=expected: sum(s.received for s in app.stats.values()) >= e)
                    await pilot.pause(0.3)
                    assert _calls_sent(app) == expected
                await pilot.press("plus", "plus", "plus")  # 1x -> 2x -> 5x -> 10x
                assert control.speed == 10.0
                await pilot.press("r")
                await _until(pilot, lambda: app.result is not None, timeout=20)
                assert not control.paused
                await pilot.pause(0.3)
                rows = {cp: table.row(cp) for cp in ("UI-1", "UI-2")}
                assert [rows[cp][1] for cp in rows] == ["done", "done"]
                assert rows["UI-1"][3] == "7001"  # the id the live CSMS issued
                recorded_201 = {e.payload["transactionInfo"]["transactionId"] for e in plan.by_target()["UI-2"].charger_calls
                                if e.action == "TransactionEvent"}  # fmt: skip
                assert rows["UI-2"][3] in recorded_201  # 2.0.1: the id the charger chose, as recorded
                assert int(rows["UI-1"][4]) == app.result.stats["UI-1"].sent > 5
                assert rows["UI-1"][7] == "0"
                shown = str(table.render())
                assert "UI-1" in shown and "7001" in shown and "done" in shown
                await pilot.press("q")
            return app.result

    result = asyncio.run(main())
    assert result is not None and not result.quit and result.divergences == []


def test_quit_from_the_live_view_stops_the_replay_and_keeps_a_report(recorded, tmp_path):
    """q during a slow replay ends every charge point promptly; the result says it was quit early."""

    async def main():
        async with Csms(tmp_path / "live.jsonl", FLEET) as csms:
            args = ReplayArgs([str(recorded)], target=csms.url, speed="0.1")
            opts = check(args)
            app = ReplayApp(make_plan(args, progress=False), opts, Control(opts.speed))
            async with app.run_test() as pilot:
                await _until(pilot, lambda: _calls_sent(app) >= 2)
                await pilot.press("q")
                await _until(pilot, lambda: app.result is not None, timeout=10)
            return app.result

    result = asyncio.run(main())
    assert result.quit
    assert 2 <= sum(s.sent for s in result.stats.values()) < 20
