"""The monitor under load: 200 real ocpp chargers at about 1 message/s each through the CLI's proxy, whose
output nobody reads until the end (a stalled terminal or pipe must not stall the chargers)."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import time
from collections import Counter

import orjson

from ocpptool.testing import ChargerConfig, Csms, JsonlRecorder, Session
from ocpptool.testing.monitor import run_recorded_charger

CHARGERS = 200
SECONDS = 14  # heartbeats / meter samples per charger, one a second


def fleet() -> list[ChargerConfig]:
    """Half the chargers only send heartbeats, half charge (one MeterValues a second); every tenth is 2.0.1."""
    out = []
    for i in range(CHARGERS):
        version = "2.0.1" if i % 10 == 9 else "1.6"
        if i % 2:
            out.append(ChargerConfig(f"LOAD-{i:03d}", version=version, heartbeats=0, meter_interval=1.0,
                                     sessions=(Session(samples=SECONDS - 2),), response_timeout=10, max_duration=60))
        else:
            out.append(ChargerConfig(f"LOAD-{i:03d}", version=version, heartbeats=SECONDS, heartbeat_interval=1.0,
                                     sessions=(), response_timeout=10, max_duration=60))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def frames_of(path, cp_key: str, dir_key: str, text_key: str) -> Counter:
    out: Counter = Counter()
    for line in path.read_bytes().splitlines():
        r = orjson.loads(line)
        d = r[dir_key].replace("-to-", "->")
        out[(r[cp_key], d, r[text_key])] += 1
    return out


def test_200_chargers_through_the_cli_proxy_lose_and_alter_nothing(tmp_path):
    """200 chargers x ~1 msg/s for ~15 s through `ocpptool monitor --no-tui`: every frame each end saw is in
    the recording and at the other end, byte for byte; none lost, none altered, none invented. The monitor
    prints every frame to a pipe that is only read once it has stopped (megabytes, far beyond what a pipe
    holds): no charger waits for it, and every line is printed or counted as dropped."""
    port = free_port()
    rec = tmp_path / "load.trace.jsonl"
    cfgs = fleet()

    async def main() -> None:
        async with Csms(tmp_path / "csms.jsonl", cfgs, response_timeout=10) as csms:
            cmd = [sys.executable, "-m", "ocpptool", "monitor", "--no-tui", "--listen",
                   f"127.0.0.1:{port}", "--upstream", csms.url, "--record", str(rec), "--duration", "60"]
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "COLUMNS": "200"})
            try:
                deadline = time.monotonic() + 20
                while True:  # wait until it listens
                    try:
                        _, w = await asyncio.open_connection("127.0.0.1", port)
                        w.close()
                        break
                    except OSError:
                        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                        await asyncio.sleep(0.1)
                log = JsonlRecorder(tmp_path / "chargers.jsonl")

                async def one(i: int, cfg: ChargerConfig):
                    await asyncio.sleep(i * 0.01)
                    return await run_recorded_charger(cfg, f"ws://127.0.0.1:{port}", log)

                reports = await asyncio.gather(*(one(i, c) for i, c in enumerate(cfgs)))
                log.close()
                await csms.wait_idle()
                late = [c.id for c, r in zip(cfgs, reports, strict=True) if r.timeouts]
                assert not late, f"chargers with unanswered calls: {late}"
            finally:
                proc.terminate()  # SIGTERM: the monitor stops cleanly and flushes its recording
                out, err = proc.communicate(timeout=30)
            assert proc.returncode == 0, err
            assert b"200 connections (0 refused)" in err, err
            printed[:] = [line for line in out.decode().splitlines() if line.split(" ", 3)[2:3] in (["cp->csms"], ["csms->cp"])]
            dropped = re.search(r"([\d,]+) output lines dropped", err.decode())
            printed.append(int(dropped.group(1).replace(",", "")) if dropped else 0)

    printed: list = []
    asyncio.run(main())
    at_chargers = frames_of(tmp_path / "chargers.jsonl", "charge_point_id", "direction", "message")
    at_csms = frames_of(tmp_path / "csms.jsonl", "charge_point_id", "direction", "message")
    recorded = frames_of(rec, "chargePointId", "direction", "raw")
    total = sum(at_csms.values())
    assert total >= CHARGERS * SECONDS * 2
    assert at_chargers == at_csms == recorded
    assert len({cp for cp, _, _ in recorded}) == CHARGERS
    *lines, dropped = printed
    assert len(lines) + dropped == total
    assert len(lines) > 0


def test_output_to_a_reader_that_never_reads_drops_lines_instead_of_blocking():
    """The line view's output behind a full pipe: writing returns at once, lines past the limit are counted
    as dropped, and what the reader gets later is the first lines, whole and in order."""
    from ocpptool.monitor.engine import Output

    r, w = os.pipe()
    with os.fdopen(w, "w") as stream, os.fdopen(r, "rb") as reader:
        out = Output(stream, max_pending=200_000)
        lines = [f"line {i:06d} " + "x" * 90 + "\n" for i in range(20_000)]  # 2 MB: far beyond pipe + limit
        t0 = time.monotonic()
        for line in lines:
            out.write(line)
        assert time.monotonic() - t0 < 5  # it did not wait for the reader
        assert out.dropped_lines > 10_000
        got: list[bytes] = []

        def drain() -> None:
            got.append(reader.read())

        import threading

        t = threading.Thread(target=drain)
        t.start()
        out.close(timeout=10)
        stream.close()
        t.join(10)
    received = got[0].decode().splitlines(keepends=True)
    assert received == lines[: len(received)]
    assert len(received) + out.dropped_lines == len(lines)
