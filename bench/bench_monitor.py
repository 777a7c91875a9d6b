"""Monitor benchmark: the recording proxy's added latency and CPU use at N chargers x 1 message/s.

    uv run python bench/bench_monitor.py                 # 200 chargers, 30 s per case
    uv run python bench/bench_monitor.py --quick         # 50 chargers, 10 s per case (smoke check)
    uv run python bench/bench_monitor.py --chargers 500 --seconds 60

This process runs N chargers, each sending one Heartbeat a second and timing every call from send to
answer; the CSMS runs in a second process (so the direct case crosses processes too, as in the field). ``--peers raw`` (the default) uses minimal websockets peers, so the
peers' own CPU (the ``ocpp`` library validates every payload against its JSON schema on both ends) does not
swamp the proxy's share on a 2-core machine; ``--peers ocpp`` uses the real ``ocpp`` peers of
:mod:`ocpptool.testing` (the load test in the suite does too). The proxy is the
real CLI in a child process (``python -m ocpptool monitor --no-tui --no-frames --listen ... --upstream ...
--record ...``), so its CPU time is its own. Cases:

- ``direct``: chargers -> CSMS (the baseline round trip);
- ``proxy``: chargers -> proxy -> CSMS, recording, live analysis off (``--analyze-every 0``);
- ``proxy+analysis``: the same with the live analysis every 5 s (the default).

For each case: median and p99 round trip, the proxy's CPU seconds (user+sys from /proc, measured over the
traffic only, not start-up) as a share of one core, the same including its live-analysis child process,
its peak RSS, and the frames relayed. Every proxied
case checks that the recording holds exactly the frames the CSMS logged (none lost or altered), and every
case that no call timed out; a failed check marks the case FAILED and the script exits non-zero.
Results: a table on stdout and ``bench/out/monitor-results.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the proxy's live-analysis child)."""
    out = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            kids = (task / "children").read_text().split()
        except OSError:
            continue
        for k in kids:
            out += _tree(int(k))
    return out


def _tree_cpu_s(pid: int) -> float:
    total = 0.0
    for p in _tree(pid):
        with contextlib.suppress(OSError):
            total += _cpu_s(p)
    return total


def _hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _frames(path: Path, cp: str, direction: str, text: str) -> Counter:
    import orjson

    out: Counter = Counter()
    for line in path.read_bytes().splitlines():
        r = orjson.loads(line)
        out[(r[cp], r[direction].replace("-to-", "->"), r[text])] += 1
    return out


class _RawCsms:
    """A minimal CSMS for ``--peers raw``: answers every CALL with a CALLRESULT, logs every frame."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path

    async def __aenter__(self):
        from websockets.asyncio.server import serve

        from ocpptool.testing import JsonlRecorder
        from ocpptool.testing.peers import _utc_now

        self.log = JsonlRecorder(self.log_path)

        async def handler(ws):
            cp = ws.request.path.rsplit("/", 1)[-1]
            async for m in ws:
                self.log.write(_utc_now(), cp, "cp->csms", "ocpp1.6", m)
                mid = m.split('"', 2)[1]
                answer = f'[3,"{mid}",{{"currentTime":"{_utc_now().isoformat()}"}}]'
                self.log.write(_utc_now(), cp, "csms->cp", "ocpp1.6", answer)
                await ws.send(answer)

        self.server = await serve(handler, "127.0.0.1", 0, subprotocols=["ocpp1.6"], ping_interval=None)
        self.url = f"ws://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/ocpp"
        return self

    async def __aexit__(self, *exc):
        self.server.close()
        await self.server.wait_closed()
        self.log.close()

    async def wait_idle(self) -> None:
        await asyncio.sleep(0.2)


class _CsmsProcess:
    """The CSMS in its own process, so that every case crosses processes (direct too) as it does in the field."""

    def __init__(self, peers: str, log: Path, chargers: int, seconds: int) -> None:
        self.cmd = [sys.executable, __file__, "--role", "csms", "--peers", peers, "--log", str(log),
                    "--chargers", str(chargers), "--seconds", str(seconds)]  # fmt: skip

    async def __aenter__(self):
        self.proc = await asyncio.create_subprocess_exec(*self.cmd, stdout=asyncio.subprocess.PIPE)
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 60)
        if not line:
            raise RuntimeError("the CSMS process did not start")
        self.url = line.decode().strip()
        return self

    async def wait_idle(self) -> None:
        await asyncio.sleep(0.5)

    async def __aexit__(self, *exc):
        self.proc.terminate()
        await asyncio.wait_for(self.proc.wait(), 30)


async def _serve_csms(peers: str, log: Path, chargers: int, seconds: int) -> None:
    import signal

    from ocpptool.testing import ChargerConfig, Csms

    cfgs = [ChargerConfig(f"BENCH-{i:04d}") for i in range(chargers)]
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with (Csms(log, cfgs, response_timeout=10) if peers == "ocpp" else _RawCsms(log)) as csms:
        print(csms.url, flush=True)
        await asyncio.wait_for(stop.wait(), seconds + 600)


async def _raw_charger(cp: str, url: str, seconds: int, log, latencies: list[float]):
    """A minimal charger for ``--peers raw``: one Heartbeat a second, timed to its answer."""
    from types import SimpleNamespace

    from websockets.asyncio.client import connect

    from ocpptool.testing.peers import _utc_now

    async with connect(f"{url}/{cp}", subprotocols=["ocpp1.6"], ping_interval=None, open_timeout=30) as ws:
        start = time.monotonic()
        for i in range(seconds + 2):
            await asyncio.sleep(max(0.0, start + i - time.monotonic()))
            frame = f'[2,"{cp}-{i}","Heartbeat",{{}}]'
            t0 = time.perf_counter()
            log.write(_utc_now(), cp, "cp->csms", "ocpp1.6", frame)
            await ws.send(frame)
            answer = await asyncio.wait_for(ws.recv(), 10)
            latencies.append(time.perf_counter() - t0)
            log.write(_utc_now(), cp, "csms->cp", "ocpp1.6", answer)
    return SimpleNamespace(timeouts=0)


async def _case(name: str, chargers: int, seconds: int, work: Path, peers: str = "raw") -> dict:
    from ocpptool.testing import ChargerConfig, JsonlRecorder
    from ocpptool.testing.monitor import run_recorded_charger

    cfgs = [ChargerConfig(f"BENCH-{i:04d}", heartbeats=seconds, heartbeat_interval=1.0, sessions=(),
                          response_timeout=10, max_duration=seconds + 60) for i in range(chargers)]  # fmt: skip
    csms_log, charger_log, rec = work / f"{name}-csms.jsonl", work / f"{name}-chargers.jsonl", work / f"{name}.trace.jsonl"
    for p in (csms_log, charger_log, rec):
        p.unlink(missing_ok=True)
    result: dict = {"case": name, "peers": peers, "chargers": chargers, "seconds": seconds, "load_before": os.getloadavg()[0]}
    latencies: list[float] = []
    async with _CsmsProcess(peers, csms_log, chargers, seconds) as csms:
        proc = None
        url = csms.url.rsplit("/ocpp", 1)[0]
        if name != "direct":
            port = _free_port()
            cmd = [sys.executable, "-m", "ocpptool", "monitor", "--no-tui", "--no-frames", "--listen",
                   f"127.0.0.1:{port}", "--upstream", csms.url, "--record", str(rec),
                   "--analyze-every", "5" if "analysis" in name else "0"]  # fmt: skip
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            deadline = time.monotonic() + 30
            while True:
                try:
                    _, w = await asyncio.open_connection("127.0.0.1", port)
                    w.close()
                    break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError(f"proxy did not start: {proc.stderr.read() if proc.stderr else ''}") from None
                    await asyncio.sleep(0.1)
            url = f"ws://127.0.0.1:{port}"
        else:
            url = csms.url
        log = JsonlRecorder(charger_log)
        cpu0 = _cpu_s(proc.pid) if proc else 0.0
        tree0 = _tree_cpu_s(proc.pid) if proc else 0.0
        t0 = time.monotonic()

        async def one(i: int, cfg):
            await asyncio.sleep(i / chargers)  # spread the connections (and so the heartbeats) over a second
            if peers == "raw":
                return await _raw_charger(cfg.id, url, seconds, log, latencies)
            return await run_recorded_charger(cfg, url, log, latencies)

        reports = await asyncio.gather(*(one(i, c) for i, c in enumerate(cfgs)))
        wall = time.monotonic() - t0
        log.close()
        await csms.wait_idle()
        if proc:
            result["proxy_cpu_s"] = round(_cpu_s(proc.pid) - cpu0, 2)
            result["proxy_cpu_share"] = round(result["proxy_cpu_s"] / wall, 3)
            result["with_analysis_child_cpu_s"] = round(_tree_cpu_s(proc.pid) - tree0, 2)
            result["proxy_peak_rss_mb"] = round(_hwm_mb(proc.pid), 1)
            proc.terminate()
            _, err = proc.communicate(timeout=60)
            result["proxy_summary"] = err.decode().strip().splitlines()[-1] if err else ""
    lat = sorted(x * 1000 for x in latencies)
    result.update(
        wall_s=round(wall, 1), calls=len(lat), timeouts=sum(r.timeouts for r in reports),
        median_ms=round(statistics.median(lat), 2), p99_ms=round(lat[int(len(lat) * 0.99) - 1], 2),
        frames=sum(_frames(csms_log, "charge_point_id", "direction", "message").values()),
    )  # fmt: skip
    ok = result["timeouts"] == 0 and result["calls"] >= chargers * (seconds + 2)
    if name != "direct":
        at_csms = _frames(csms_log, "charge_point_id", "direction", "message")
        ok &= _frames(charger_log, "charge_point_id", "direction", "message") == at_csms == _frames(
            rec, "chargePointId", "direction", "raw")
    result["ok"] = ok
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chargers", type=int, default=200)
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default=None, help="cases whose name contains this")
    ap.add_argument("--peers", choices=("raw", "ocpp"), default="raw",
                    help="raw: minimal websockets peers (measure the proxy); ocpp: the ocpp package on both ends")
    ap.add_argument("--role", default="bench", help=argparse.SUPPRESS)
    ap.add_argument("--log", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role == "csms":
        asyncio.run(_serve_csms(args.peers, Path(args.log), args.chargers, args.seconds))
        return 0
    if args.quick:
        args.chargers, args.seconds = 50, 10
    OUT.mkdir(exist_ok=True)
    results = []
    for name in ("direct", "proxy", "proxy+analysis"):
        if args.only and args.only not in name:
            continue
        print(f"{name}: {args.chargers} chargers x 1 msg/s for {args.seconds} s ...", file=sys.stderr, flush=True)
        results.append(asyncio.run(_case(name, args.chargers, args.seconds, OUT, args.peers)))
    base = next((r for r in results if r["case"] == "direct"), None)
    print(f"\n{'case':16s} {'load':>5s} {'calls':>7s} {'median ms':>10s} {'p99 ms':>8s} {'added med/p99 ms':>17s} "
          f"{'proxy CPU s':>11s} {'% core':>7s} {'+child CPU s':>12s} {'RSS MB':>7s}  check")  # fmt: skip
    for r in results:
        added = f"{r['median_ms'] - base['median_ms']:+.2f}/{r['p99_ms'] - base['p99_ms']:+.2f}" if base and r is not base else ""
        print(f"{r['case']:16s} {r['load_before']:5.2f} {r['calls']:7d} {r['median_ms']:10.2f} {r['p99_ms']:8.2f} "
              f"{added:>17s} {r.get('proxy_cpu_s', ''):>11} {100 * r.get('proxy_cpu_share', 0):6.1f}% "
              f"{r.get('with_analysis_child_cpu_s', ''):>12} {r.get('proxy_peak_rss_mb', ''):>7}  "
              f"{'ok' if r['ok'] else 'FAILED'}")  # fmt: skip
    (OUT / "monitor-results.json").write_text(json.dumps(results, indent=1))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
