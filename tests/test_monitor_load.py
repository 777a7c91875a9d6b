"""The monitor under load: 200 real ocpp chargers at about 1 message/s each through the CLI's proxy."""

from __future__ import annotations

import asyncio
import os
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
    the recording and at the other end, byte for byte; none lost, none altered, none invented."""
    port = free_port()
    rec = tmp_path / "load.trace.jsonl"
    cfgs = fleet()

    async def main() -> None:
        async with Csms(tmp_path / "csms.jsonl", cfgs, response_timeout=10) as csms:
            cmd = [sys.executable, "-m", "ocpptool", "monitor", "--no-tui", "--no-frames", "--listen",
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
                assert all(r.timeouts == 0 for r in reports)
            finally:
                proc.terminate()  # SIGTERM: the monitor stops cleanly and flushes its recording
                out, err = proc.communicate(timeout=30)
            assert proc.returncode == 0, err
            assert b"200 connections (0 refused)" in err, err

    asyncio.run(main())
    at_chargers = frames_of(tmp_path / "chargers.jsonl", "charge_point_id", "direction", "message")
    at_csms = frames_of(tmp_path / "csms.jsonl", "charge_point_id", "direction", "message")
    recorded = frames_of(rec, "chargePointId", "direction", "raw")
    total = sum(at_csms.values())
    assert total >= CHARGERS * SECONDS * 2
    assert at_chargers == at_csms == recorded
    assert len({cp for cp, _, _ in recorded}) == CHARGERS
