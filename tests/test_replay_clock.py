"""The replay clock and its control: pacing by --speed, pause, step, faster/slower and quit."""

from __future__ import annotations

import asyncio
import math
import threading
import time

import pytest

from ocpptool.replay.runtime import Control, Quit

pytestmark = pytest.mark.timeout(20)


def test_speed_10_waits_a_tenth_of_the_recorded_gap_and_max_does_not_wait():
    """A CALL recorded 0.5 s in goes out after ~0.05 s at --speed 10, and at once at --speed max."""

    async def gap(speed: float) -> float:
        c = Control(speed)
        c.bind()
        t = time.monotonic()
        await c.wait_until(0.5)
        return time.monotonic() - t

    assert 0.04 <= asyncio.run(gap(10.0)) < 0.3
    assert asyncio.run(gap(math.inf)) < 0.02


def test_paused_holds_calls_and_each_step_releases_exactly_one():
    """While paused nothing is due; each step lets one waiting CALL through, connection waits are not held."""

    async def main() -> list[int]:
        c = Control(1.0)
        c.bind()
        c.pause()
        released: list[int] = []

        async def sender(i: int) -> None:
            await c.wait_until(100.0 + i)  # far in the future: only steps can release these
            released.append(i)

        tasks = [asyncio.create_task(sender(i)) for i in range(3)]
        await asyncio.wait_for(c.wait_until(50.0, step=False), 1)  # not a CALL: a pause does not hold it
        await asyncio.sleep(0.05)
        counts = [len(released)]
        for _ in range(2):
            c.step()
            await asyncio.sleep(0.05)
            counts.append(len(released))
        c.quit()
        done = await asyncio.gather(*tasks, return_exceptions=True)
        assert sum(isinstance(d, Quit) for d in done) == 1
        return counts

    assert asyncio.run(main()) == [0, 1, 2]


def test_faster_and_slower_walk_the_speed_steps_and_work_from_another_thread():
    """The live view's keys run on the UI thread; the change lands on the replay's loop."""

    async def main() -> tuple[float, float]:
        c = Control(1.0)
        c.bind()
        t = threading.Thread(target=lambda: (c.faster(), c.faster(), c.slower()))
        t.start()
        t.join()
        await asyncio.sleep(0.05)  # the commands hop onto this loop
        up = c.speed
        for _ in range(20):
            c.faster()
        return up, c.speed

    assert asyncio.run(main()) == (2.0, math.inf)
