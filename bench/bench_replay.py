"""Replay benchmark: ``ocpptool replay --speed max`` against a local CSMS running in a separate process.

The recording is a generated 1.6/2.0.1 fleet (``gen_fleet.py``, 100 chargers by default). The CSMS is
either a lean one (websockets + orjson, schema-valid answers from the official schemas, issuing
transaction ids; it does nothing else, so it measures the replay) or the `ocpp` package's CSMS from
``ocpptool.testing.peers`` (which also writes every frame to a log, so it is usually the bottleneck).
The replay runs as the real CLI in a child process, with ``--no-tui`` and with the live view in a
pseudo-terminal (``--tui``), so the two can be compared. CPU time and peak RSS come from ``wait4``.
The run checks itself: every recorded charger CALL must be sent and answered.

    uv run python bench/bench_replay.py                  # 100 chargers, 100k recorded frames, lean CSMS, view off and on
    uv run python bench/bench_replay.py --csms both      # also against the ocpp package's CSMS
    uv run python bench/bench_replay.py --quick          # 20k frames
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import itertools
import json
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out"
sys.path.insert(0, str(HERE))


# --------------------------------------------------------------------------- the CSMS child


async def serve_lean(port_file: str) -> None:
    import orjson
    from websockets.asyncio.server import serve

    from ocpptool.replay.defaults import default_response

    tx_ids = itertools.count(1)
    cache: dict[tuple[str, str], dict] = {}

    def answer(version: str, action: str) -> dict:
        key = (version, action)
        if key not in cache:
            cache[key] = default_response(version, action) or {}
        body = cache[key]
        if action == "StartTransaction":
            return {"transactionId": next(tx_ids), "idTagInfo": {"status": "Accepted"}}
        if action in ("BootNotification", "Heartbeat"):
            now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
            return {**body, "currentTime": now, **({"interval": 300} if action == "BootNotification" else {})}
        return body

    async def handler(ws) -> None:
        version = "2.0.1" if ws.subprotocol == "ocpp2.0.1" else "1.6"
        async for text in ws:
            msg = orjson.loads(text)
            if msg[0] == 2:
                await ws.send(orjson.dumps([3, msg[1], answer(version, msg[2])]).decode())

    async with serve(handler, "127.0.0.1", 0, subprotocols=["ocpp1.6", "ocpp2.0.1"],  # type: ignore[list-item]
                     compression=None, ping_interval=None, max_size=None) as server:  # fmt: skip
        Path(port_file).write_text(str(server.sockets[0].getsockname()[1]))
        await asyncio.Future()  # until SIGTERM


async def serve_ocpp(port_file: str) -> None:
    from ocpptool.testing.peers import Csms

    async with Csms(OUT / "bench-replay-ocpp-csms.jsonl", response_timeout=30) as csms:
        Path(port_file).write_text(str(csms.port))
        await asyncio.Future()


def serve_main(kind: str, port_file: str) -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    asyncio.run(serve_lean(port_file) if kind == "lean" else serve_ocpp(port_file))


# --------------------------------------------------------------------------- the runs


def recording(messages: int, chargers: int, seed: int) -> tuple[Path, dict]:
    import gen_fleet

    path = OUT / f"replay-fleet-{messages}-c{chargers}-s{seed}.jsonl"
    meta_path = Path(str(path) + ".meta.json")
    if path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("generator_version") == gen_fleet.GENERATOR_VERSION and meta.get("bytes") == path.stat().st_size:
            return path, meta
    print(f"generating {path.name} ...", file=sys.stderr, flush=True)
    return path, gen_fleet.generate(str(path), fmt="jsonl", messages=messages, chargers=chargers, seed=seed, quiet=True)


def plan_counts(path: Path) -> tuple[int, int, int, float]:
    """Charge points, charger and CSMS calls in the plan, and the CPU seconds of start-up (read, decode, plan).

    From ``replay --dry-run`` in a child process: the parent never loads the recording itself, because Linux
    children inherit the parent's peak RSS as the floor of their own ``ru_maxrss`` (see "Peak RSS has a
    floor" in bench/README.md), which would inflate the replay's figure.
    """
    outf = OUT / ".dry-run.txt"
    with open(outf, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "ocpptool", "replay", str(path), "--dry-run", "-q"], cwd=ROOT,
                                stdout=fh, stderr=subprocess.DEVNULL)  # fmt: skip
        _, status, ru = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    rows = re.findall(r"\]: (\d+) charger calls, (\d+) CSMS calls", outf.read_text())
    return len(rows), sum(int(a) for a, _ in rows), sum(int(b) for _, b in rows), ru.ru_utime + ru.ru_stime


def start_csms(kind: str) -> tuple[subprocess.Popen, int]:
    port_file = OUT / f".csms-port-{os.getpid()}"
    port_file.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, __file__, "--serve", kind, "--port-file", str(port_file)], cwd=ROOT)
    for _ in range(200):
        if port_file.exists() and port_file.read_text():
            port = int(port_file.read_text())
            port_file.unlink()
            return proc, port
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"the {kind} CSMS did not start")


def stop(proc: subprocess.Popen) -> dict:
    proc.send_signal(signal.SIGTERM)
    _, _, ru = os.wait4(proc.pid, 0)
    proc.returncode = 0
    return {"cpu_seconds": ru.ru_utime + ru.ru_stime, "peak_rss_mb": ru.ru_maxrss / 1024}


def run_replay(path: Path, port: int, view: bool, report: Path) -> dict:
    cmd = [sys.executable, "-m", "ocpptool", "replay", str(path), "--target", f"ws://127.0.0.1:{port}/ocpp",
           "--speed", "max", "--report", str(report), "--tui" if view else "--no-tui"]  # fmt: skip
    errf = OUT / ".replay-stderr.txt"
    drained = bytearray()
    with open(errf, "wb") as err:
        t0 = time.perf_counter()
        if view:  # a real terminal for Textual: a pty of 120x40, its output drained by a thread
            master, slave = pty.openpty()
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
            env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}
            proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=err, cwd=ROOT, env=env)
            os.close(slave)

            def drain() -> None:
                while True:
                    try:
                        chunk = os.read(master, 65536)
                    except OSError:
                        return
                    if not chunk:
                        return
                    drained.extend(chunk[-4096:])

            reader = threading.Thread(target=drain, daemon=True)
            reader.start()
        else:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, cwd=ROOT)
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if view:
            os.close(master)
    out = {"command": " ".join(["ocpptool"] + cmd[3:]), "wall_s": wall, "exit_code": proc.returncode,
           "cpu_seconds": ru.ru_utime + ru.ru_stime, "peak_rss_mb": ru.ru_maxrss / 1024,
           "stderr": errf.read_text(errors="replace").strip()[-1500:]}  # fmt: skip
    if proc.returncode == 0 and report.exists():
        out["report"] = json.loads(report.read_text())
    return out


def check(rep: dict, calls: int) -> list[str]:
    problems = []
    sent = sum(cp["sent"] for cp in rep["charge_points"].values())
    if sent < calls:
        problems.append(f"sent {sent:,} frames, the recording has {calls:,} charger calls")
    lost = {k: v for k, v in rep["divergence_counts"].items() if k in ("not-sent", "missing-response")}
    if lost:
        problems.append(f"calls lost: {lost}")
    return problems


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--serve", choices=["lean", "ocpp"], help=argparse.SUPPRESS)
    ap.add_argument("--port-file", help=argparse.SUPPRESS)
    ap.add_argument("--messages", type=int, default=100_000, help="recorded frames (default 100,000)")
    ap.add_argument("--chargers", type=int, default=100)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--csms", choices=["lean", "ocpp", "both"], default="lean")
    ap.add_argument("--view", choices=["off", "on", "both"], default="both")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="20,000 recorded frames")
    args = ap.parse_args()
    if args.serve:
        serve_main(args.serve, args.port_file)
        return
    OUT.mkdir(exist_ok=True)
    path, meta = recording(20_000 if args.quick else args.messages, args.chargers, args.seed)
    chargers, calls, csms_calls, startup_cpu = plan_counts(path)
    print(f"recording: {path.name}: {chargers} chargers, {calls:,} charger calls, {csms_calls:,} CSMS calls; "
          f"start-up (read, decode, plan) {startup_cpu:.1f} CPU s; load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    results = []
    for kind in (["lean", "ocpp"] if args.csms == "both" else [args.csms]):
        for view in {"off": [False], "on": [True], "both": [False, True]}[args.view]:
            for _ in range(args.repeat):
                load_before = os.getloadavg()[0]
                csms, port = start_csms(kind)
                try:
                    r = run_replay(path, port, view, OUT / "bench-replay-report.json")
                finally:
                    r_csms = stop(csms)
                rep = r.pop("report", None)
                row = {"csms": kind, "view": view, "loadavg_before": load_before, **r, "csms_cpu_seconds": r_csms["cpu_seconds"]}
                if rep is None:
                    row["status"] = "FAILED"
                    print(f"{kind:5s} view={'on ' if view else 'off'} FAILED: exit {r['exit_code']}: {r['stderr']}")
                else:
                    row.update(frames=rep["frames"], replay_s=rep["duration_s"], messages_per_s=rep["messages_per_s"],
                               divergences=rep["divergence_counts"], problems=check(rep, calls))  # fmt: skip
                    row["status"] = "FAILED" if row["problems"] else "ok"
                    # what one free core would sustain: frames per CPU second of the replay phase alone
                    row["frames_per_replay_cpu_s"] = rep["frames"] / max(r["cpu_seconds"] - startup_cpu, 1e-3)
                    print(f"{kind:5s} view={'on ' if view else 'off'} {rep['frames']:>8,} frames in {rep['duration_s']:6.2f} s "
                          f"= {rep['messages_per_s']:>8,.0f} msg/s (wall incl. start-up {r['wall_s']:.1f} s); replay CPU "
                          f"{r['cpu_seconds']:.1f} s ({row['frames_per_replay_cpu_s']:,.0f} frames per replay-phase CPU s), peak RSS {r['peak_rss_mb']:.0f} MB; CSMS CPU {r_csms['cpu_seconds']:.1f} s; "
                          f"load {load_before:.2f}; {row['status']} {'; '.join(row['problems'])}")  # fmt: skip
                r.pop("stderr", None)
                row.pop("stderr", None)
                results.append(row)
    (OUT / "replay-results.json").write_text(json.dumps(results, indent=2))
    if any(r["status"] != "ok" for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
