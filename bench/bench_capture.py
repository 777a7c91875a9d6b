"""Capture benchmark: the native pcap engine against tshark, on large synthetic OCPP-J captures.

    uv run python bench/bench_capture.py              # full run: 100k and 1M messages (tshark on both: minutes)
    uv run python bench/bench_capture.py --quick      # smoke check: 100k messages only
    uv run python bench/bench_capture.py --messages 300000 3000000 --no-tshark
    uv run python bench/bench_capture.py --traffic fleet  # realistic fleet traffic instead (see below)
    uv run python bench/bench_capture.py --repeat 2       # every case twice, in rounds; the fastest counts

Inputs go to ``bench/out/`` (git-ignored) and are reused when a file with the same parameters and generator
exists (its ``.meta.json`` says so). Two kinds of traffic (``--traffic``):

- ``simple`` (default): :func:`ocpptool.testing.pcap.write_big_capture`, short MeterValues CALLs (one
  sampled value, ~190 bytes) and ``{}`` CALLRESULTs on random chargers: the cheapest messages to decode;
- ``fleet``: the fleet of bench/gen_fleet.py (boots, heartbeats, authorisations, transactions, MeterValues
  with four measurands, CSMS-initiated calls, CALLERRORs; 1.6 and 2.0.1; ~370 bytes per message on
  average), written as the CSMS port's packets by :func:`ocpptool.testing.pcap.write_fleet_capture`.
  Closer to a real fleet, and heavier for both engines.
 Every case
is a child process, timed from outside (wall) with its own peak RSS and CPU time from ``wait4``:

- ``decode``: ``ocpptool decode FILE -o bench/out/FILE.parquet -q --engine native`` (the real CLI);
- ``engine``: the native engine alone (iterate ``ocpptool.sources.capture.native.read``, count rows);
- ``tshark``: ``tshark -r FILE -o websocket.decompress:TRUE -Y websocket.payload.text -T fields
  -e websocket.payload.text > /dev/null``, Wireshark extracting the same payloads.

The decode's Parquet is read back and must hold exactly the generated messages (rows, CALL/CALLRESULT
counts, every response paired); the engine must count them too, without weirds. tshark's output is not
kept during its timed run; instead a small capture made with the same parameters is run through tshark
first, untimed, and every message must come out as decompressed text. Any failed check marks the case
FAILED and the script exits non-zero.

Results: a table on stdout and ``bench/out/capture-results.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out"
sys.path.insert(0, str(HERE))

from bench_decode import cli_command  # noqa: E402

# This process stays small on purpose: it imports neither ocpptool nor polars, and generates, decodes and
# checks only in child processes. A child's peak RSS from wait4 can never be below this process's own peak,
# because Linux carries the pre-exec peak over exec (and subprocess uses vfork), so a parent that had read
# a large Parquet file would inflate every later child's figure. Its own peak is reported as a floor.
GENERATOR = ROOT / "ocpptool" / "testing" / "pcap.py"
GENERATOR_VERSION = hashlib.sha256(GENERATOR.read_bytes()).hexdigest()[:16]
FLEET_VERSION = hashlib.sha256(GENERATOR.read_bytes() + (HERE / "gen_fleet.py").read_bytes()).hexdigest()[:16]
SAMPLE_MESSAGES = 20_000  # the untimed tshark output check
PROGRESS_EVERY = 10.0  # seconds between progress lines on stderr while a child runs

# The engine alone, in a child process: stream the capture through native.read and count what comes out.
ENGINE_CHILD = """
import json, sys
import polars as pl
from ocpptool.sources.base import ConnMeta
from ocpptool.sources.capture import CaptureOptions, native
rows = weirds = batches = conns = 0
with open(sys.argv[1], "rb") as fh:
    for item in native.read(fh, sys.argv[1], CaptureOptions(engine="native")):
        if isinstance(item, pl.DataFrame):
            batches += 1
            rows += item.height
            weirds += item["weird_reason"].is_not_null().sum()
        elif isinstance(item, ConnMeta):
            conns += item.frame.height
print(json.dumps({"rows": rows, "weirds": int(weirds), "batches": batches, "connections": conns}))
"""


def tshark_command(path: Path) -> list[str]:
    return ["tshark", "-r", str(path), "-o", "websocket.decompress:TRUE", "-Y", "websocket.payload.text",
            "-T", "fields", "-e", "websocket.payload.text"]  # fmt: skip


def label(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k" if n % 1000 == 0 else str(n)


def say(args, msg: str) -> None:
    if not args.quiet:
        print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------------------


def input_file(messages: int, args) -> tuple[Path, dict]:
    """The synthetic capture for these parameters, written now unless an identical one exists."""
    share = f"{args.compress_share:g}"
    fleet = args.traffic == "fleet"
    kind = "capture-fleet" if fleet else "capture"
    path = OUT / f"{kind}-{messages}-c{args.chargers}-z{share}-s{args.seed}.pcap"
    meta_path = Path(str(path) + ".meta.json")
    want = {"messages": messages, "chargers": args.chargers, "compress_share": args.compress_share,
            "seed": args.seed, **({"traffic": "fleet"} if fleet else {})}  # fmt: skip
    version = FLEET_VERSION if fleet else GENERATOR_VERSION
    if path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if (meta.get("params") == want and meta.get("generator_version") == version
                and meta.get("bytes") == path.stat().st_size):  # fmt: skip
            return path, meta
    say(args, f"generating {path.name} ...")
    t0 = time.perf_counter()
    extra: dict = {}
    if fleet:
        log = OUT / f".fleet-for-capture-{messages}-c{args.chargers}-s{args.seed}.jsonl"
        gen = subprocess.run([sys.executable, str(HERE / "gen_fleet.py"), "--format", "jsonl", "--messages",
                              str(messages), "--chargers", str(args.chargers), "--seed", str(args.seed), "--out",
                              str(log)], capture_output=True, text=True, cwd=ROOT)  # fmt: skip
        if gen.returncode != 0:
            raise SystemExit(f"generating {log.name} failed: {gen.stderr.strip()[-2000:]}")
        fleet_meta = json.loads(Path(str(log) + ".meta.json").read_text())
        extra = {"by_type": fleet_meta["by_type"], "calls": fleet_meta["by_type"]["CALL"]}
        cmd = [sys.executable, "-m", "ocpptool.testing.pcap", str(path), "--from-jsonl", str(log),
               "--compress-share", str(args.compress_share)]  # fmt: skip
    else:
        cmd = [sys.executable, "-m", "ocpptool.testing.pcap", str(path), str(messages), "--chargers",
               str(args.chargers), "--compress-share", str(args.compress_share), "--seed", str(args.seed)]  # fmt: skip
    gen = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if gen.returncode != 0:
        raise SystemExit(f"generating {path.name} failed: {gen.stderr.strip()[-2000:]}")
    if fleet:
        log.unlink()
        Path(str(log) + ".meta.json").unlink()
    seconds = time.perf_counter() - t0
    facts = json.loads(gen.stdout.strip().splitlines()[-1])
    facts.pop("seconds", None)
    meta = {"params": want, "generator_version": version, "seconds": seconds, **facts, **extra}
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    say(args, f"  {facts['messages']:,} messages, {facts['packets']:,} packets, {facts['bytes'] / 1e6:,.0f} MB "
              f"in {seconds:.1f} s ({facts['messages'] / max(seconds, 1e-9):,.0f} messages/s)")  # fmt: skip
    return path, meta


# ---------------------------------------------------------------------------------------------------------
# running a child
# ---------------------------------------------------------------------------------------------------------


def _proc_rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _file_pos(pid: int, path: Path) -> int | None:
    """How far the child has read into ``path`` (from /proc/PID/fdinfo), if it can be seen."""
    target = str(path.resolve())
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    with open(f"/proc/{pid}/fdinfo/{fd}") as fh:
                        for line in fh:
                            if line.startswith("pos:"):
                                return int(line.split()[1])
            except OSError:
                continue
    except OSError:
        pass
    return None


def run_child(cmd: list[str], name: str, args, *, watch: Path | None = None, stdout: Path | None = None) -> dict:
    """Run ``cmd`` from the project root; wall seconds, the child's peak RSS (MB) and CPU seconds (wait4).

    While it runs, a thread prints a progress line on stderr every few seconds (elapsed time, current RSS,
    how much of ``watch`` has been read). The main thread blocks in ``wait4``, so the wall time is exact.
    """
    errf = OUT / f".{name}.stderr.txt"
    size = watch.stat().st_size if watch else 0
    done = threading.Event()
    with open(errf, "wb") as err, open(stdout or os.devnull, "wb") as outf:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=outf, stderr=err, cwd=ROOT)

        def progress() -> None:
            while not done.wait(PROGRESS_EVERY):
                parts = [f"  {name}: {time.perf_counter() - t0:,.0f} s"]
                rss = _proc_rss_mb(proc.pid)
                if rss is not None:
                    parts.append(f"RSS {rss:,.0f} MB")
                pos = _file_pos(proc.pid, watch) if watch else None
                if pos is not None and size:
                    parts.append(f"{min(pos / size, 1):.0%} of the file read")
                if not done.is_set():
                    say(args, ", ".join(parts) + " ...")

        watcher = threading.Thread(target=progress, daemon=True)
        watcher.start()
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        done.set()
    watcher.join()
    proc.returncode = os.waitstatus_to_exitcode(status)  # already reaped: keep Popen from waiting again
    return {
        "seconds": wall,
        "peak_rss_mb": ru.ru_maxrss / 1024,  # KiB on Linux
        "cpu_seconds": ru.ru_utime + ru.ru_stime,
        "exit_code": proc.returncode,
        "stderr": errf.read_text(errors="replace").strip(),
    }


# ---------------------------------------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------------------------------------


# Reads the decode's Parquet back (in a child, see above) and prints what the checks need.
PARQUET_CHILD = """
import json, sys
import polars as pl
df = pl.read_parquet(sys.argv[1])
types = dict(df.group_by("message_type").len().iter_rows())
unpaired = df.filter(pl.col("message_type") == "CALLRESULT")["call_index"].null_count()
print(json.dumps({"rows": df.height, "by_type": types, "unpaired": unpaired,
                  "no_direction": df["direction"].null_count()}))
"""


def check_parquet(parquet: Path, meta: dict) -> tuple[list[str], dict]:
    """The decoded table must hold exactly the generated messages, CALLs paired with CALLRESULTs."""
    out = subprocess.run([sys.executable, "-c", PARQUET_CHILD, str(parquet)], capture_output=True, text=True,
                         cwd=ROOT)  # fmt: skip
    if out.returncode != 0:
        return [f"reading {parquet.name} back failed: {out.stderr.strip()[-1000:]}"], {}
    got = json.loads(out.stdout)
    problems: list[str] = []
    facts = {"rows": got["rows"], "output_mb": parquet.stat().st_size / 1e6}
    if got["rows"] != meta["messages"]:
        problems.append(f"row count {got['rows']:,} != {meta['messages']:,} messages generated")
    by_type = meta.get("by_type") or {"CALL": meta["calls"], "CALLRESULT": meta["calls"]}
    want = {k: v for k, v in by_type.items() if v}
    if got["by_type"] != want:
        problems.append(f"rows per message type {got['by_type']} != generated {want}")
    if got["unpaired"]:
        problems.append(f"{got['unpaired']:,} CALLRESULTs not paired with their CALL")
    if got["no_direction"]:
        problems.append(f"{got['no_direction']:,} rows without a direction")
    return problems, facts


def check_tshark_sample(args) -> dict:
    """Untimed: tshark on a small capture with the same parameters must print every message, inflated."""
    path, meta = input_file(SAMPLE_MESSAGES, args)
    out = subprocess.run(tshark_command(path), capture_output=True, cwd=ROOT, timeout=600)
    lines = out.stdout.decode(errors="replace").splitlines()
    bad = [ln for ln in lines if not ln.startswith(('[2,"', '[3,"', '[4,"'))]
    problems = []
    if out.returncode != 0:
        problems.append(f"tshark exit code {out.returncode}: {out.stderr.decode(errors='replace')[-500:]}")
    if len(lines) != meta["messages"]:
        problems.append(f"tshark printed {len(lines):,} payload lines for {meta['messages']:,} messages")
    if bad:
        problems.append(f"{len(bad):,} tshark lines are not OCPP-J text (not inflated?), e.g. {bad[0][:60]!r}")
    return {"capture": str(path.relative_to(ROOT)), "messages": meta["messages"], "lines": len(lines),
            "status": "FAILED" if problems else "ok", "problems": problems}  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# the cases
# ---------------------------------------------------------------------------------------------------------


def result(case: str, kind: str, path: Path, meta: dict, cmd: list[str], r: dict, load: float) -> dict:
    return {
        "case": case,
        "kind": kind,
        "messages": meta["messages"],
        "input": str(path.relative_to(ROOT)),
        "input_mb": meta["bytes"] / 1e6,
        "command": " ".join(cmd),
        "seconds": r["seconds"],
        "messages_per_s": meta["messages"] / r["seconds"],
        "cpu_seconds": r["cpu_seconds"],
        "peak_rss_mb": r["peak_rss_mb"],
        "exit_code": r["exit_code"],
        "loadavg_before": load,
    }


def run_decode(path: Path, meta: dict, args) -> dict:
    case = f"decode-{label(meta['messages'])}"
    out = OUT / (path.name + ".parquet")
    if out.exists():
        out.unlink()
    cmd = cli_command() + ["decode", str(path), "-o", str(out), "-q", "--engine", "native"]
    say(args, f"running {case} ...")
    load = os.getloadavg()[0]
    r = run_child(cmd, case, args, watch=path)
    res = result(case, "decode", path, meta, ["ocpptool"] + cmd[len(cli_command()):], r, load)
    problems = []
    if r["exit_code"] != 0 or not out.exists():
        problems.append(f"exit code {r['exit_code']}: {r['stderr'][-2000:]}")
    else:
        problems, facts = check_parquet(out, meta)
        res.update(facts)
    res["status"] = "FAILED" if problems else "ok"
    res["problems"] = problems
    return res


def run_engine(path: Path, meta: dict, args) -> dict:
    case = f"engine-{label(meta['messages'])}"
    cmd = [sys.executable, "-c", ENGINE_CHILD, str(path)]
    counts = OUT / f".{case}.stdout.json"
    say(args, f"running {case} ...")
    load = os.getloadavg()[0]
    r = run_child(cmd, case, args, watch=path, stdout=counts)
    res = result(case, "engine", path, meta, ["python", "-c", "<iterate native.read>", str(path)], r, load)
    problems = []
    if r["exit_code"] != 0:
        problems.append(f"exit code {r['exit_code']}: {r['stderr'][-2000:]}")
    else:
        got = json.loads(counts.read_text())
        res.update(got)
        if got["rows"] != meta["messages"]:
            problems.append(f"engine rows {got['rows']:,} != {meta['messages']:,} messages generated")
        if got["weirds"]:
            problems.append(f"{got['weirds']:,} weird rows")
        if got["connections"] != meta["chargers"]:
            problems.append(f"{got['connections']} connections != {meta['chargers']} chargers")
    res["status"] = "FAILED" if problems else "ok"
    res["problems"] = problems
    return res


def run_tshark(path: Path, meta: dict, args) -> dict:
    case = f"tshark-{label(meta['messages'])}"
    cmd = tshark_command(path)
    say(args, f"running {case} (the slowest case; progress below every 10 s) ...")
    load = os.getloadavg()[0]
    r = run_child(cmd, case, args, watch=path)
    res = result(case, "tshark", path, meta, cmd + [">", "/dev/null"], r, load)
    problems = [] if r["exit_code"] == 0 else [f"exit code {r['exit_code']}: {r['stderr'][-2000:]}"]
    res["status"] = "FAILED" if problems else "ok"
    res["problems"] = problems
    return res


def print_table(results: list[dict]) -> None:
    tshark = {r["messages"]: r["seconds"] for r in results if r["kind"] == "tshark" and r["status"] == "ok"}
    head = (f"{'case':<14}{'messages':>11}{'input MB':>10}{'seconds':>10}{'msgs/s':>11}{'CPU s':>9}"
            f"{'peak RSS MB':>13}{'vs tshark':>11}  status")  # fmt: skip
    print(head)
    print("-" * len(head))
    for r in results:
        t = tshark.get(r["messages"])
        r["speedup_vs_tshark"] = t / r["seconds"] if t else None
        speed = f"{r['speedup_vs_tshark']:>10.1f}x" if t else f"{'-':>11}"
        print(f"{r['case']:<14}{r['messages']:>11,}{r['input_mb']:>10.0f}{r['seconds']:>10.2f}"
              f"{r['messages_per_s']:>11,.0f}{r['cpu_seconds']:>9.1f}{r['peak_rss_mb']:>13,.0f}{speed}  "
              f"{r['status']}")  # fmt: skip
    for r in results:
        for p in r.get("problems", []):
            print(f"  {r['case']}: {p}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="The native capture engine against tshark on synthetic captures.")
    p.add_argument("--messages", type=int, nargs="+", default=[100_000, 1_000_000], metavar="N",
                   help="capture sizes in messages, even numbers (default: 100000 1000000)")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="100k messages only (tshark too): a smoke check")
    p.add_argument("--chargers", type=int, default=200, help="connections, one charger each (default 200)")
    p.add_argument("--compress-share", type=float, default=0.25,
                   help="share of the chargers using permessage-deflate (default 0.25)")  # fmt: skip
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--traffic", choices=("simple", "fleet"), default="simple",
                   help="simple: short MeterValues pairs (default); fleet: bench/gen_fleet.py's realistic fleet")
    p.add_argument("--no-tshark", action="store_true", help="skip the tshark runs (and its output check)")
    p.add_argument("--repeat", type=int, default=1, metavar="K",
                   help="run every case K times and keep the fastest (the machine's noise is large; default 1)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error("--repeat must be 1 or more")
    sizes = [100_000] if args.quick else sorted(set(args.messages))
    if any(n < 2 or n % 2 for n in sizes):
        p.error("--messages: each size must be an even number >= 2 (CALL + CALLRESULT pairs)")
    if not 0 <= args.compress_share <= 1:
        p.error("--compress-share must be between 0 and 1")
    use_tshark = not args.no_tshark
    if use_tshark and shutil.which("tshark") is None:
        p.error("tshark is not installed (or pass --no-tshark)")
    OUT.mkdir(parents=True, exist_ok=True)

    inputs = [input_file(n, args) for n in sizes]
    sample = None
    if use_tshark:
        say(args, f"checking tshark's output on {SAMPLE_MESSAGES:,} messages (untimed) ...")
        sample = check_tshark_sample(args)
        for prob in sample["problems"]:
            say(args, f"  tshark check: {prob}")

    def best(runs: list[dict]) -> dict:
        """The fastest of ``--repeat`` runs (a failed run is kept: it fails the case); every run's time is kept."""
        failed = [r for r in runs if r["status"] != "ok"]
        chosen = failed[0] if failed else min(runs, key=lambda r: r["seconds"])
        chosen["all_seconds"] = [round(r["seconds"], 3) for r in runs]
        chosen["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
        return chosen

    results = []
    for path, meta in inputs:
        cases = [run_decode, run_engine] + ([run_tshark] if use_tshark else [])
        runs: list[list[dict]] = [[] for _ in cases]
        for _ in range(args.repeat):  # rounds, so that a slow spell of the machine does not fall on one case
            for i, run in enumerate(cases):
                runs[i].append(run(path, meta, args))
        results.extend(best(r) for r in runs)
    print_table(results)
    print()

    eng = sorted((r for r in results if r["kind"] == "engine" and r["status"] == "ok"), key=lambda r: r["messages"])
    growth = None
    if len(eng) >= 2:
        a, b = eng[0], eng[-1]
        growth = {"small": a["case"], "large": b["case"], "messages_ratio": b["messages"] / a["messages"],
                  "engine_rss_ratio": b["peak_rss_mb"] / a["peak_rss_mb"]}  # fmt: skip
        print(f"engine memory ({a['case']} -> {b['case']}): {growth['messages_ratio']:.0f}x the messages, "
              f"{growth['engine_rss_ratio']:.2f}x the peak RSS ({a['peak_rss_mb']:,.0f} -> {b['peak_rss_mb']:,.0f} MB)")
    floor = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"this script's own peak RSS: {floor:,.0f} MB (no child's peak RSS can read lower)")
    if sample is not None:
        print(f"tshark output check ({sample['messages']:,} messages, untimed): {sample['status']}")

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    doc = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "tshark": subprocess.run(["tshark", "--version"], capture_output=True, text=True).stdout
                    .splitlines()[0] if use_tshark else None,
                    "loadavg_at_end": os.getloadavg()},  # fmt: skip
        "commit": commit.stdout.strip() or None,
        "args": {**vars(args), "sizes": sizes},
        "inputs": [{"path": str(p.relative_to(ROOT)), **m} for p, m in inputs],
        "tshark_output_check": sample,
        "results": results,
        "engine_memory_growth": growth,
        "parent_peak_rss_mb": floor,
    }
    results_path = OUT / ("capture-results.json" if args.traffic == "simple" else "capture-results-fleet.json")
    results_path.write_text(json.dumps(doc, indent=2) + "\n")
    say(args, f"\nwrote {results_path.relative_to(ROOT)}")
    failed = any(r["status"] != "ok" for r in results) or (sample is not None and sample["status"] != "ok")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
