"""Analysis overhead benchmark: ``ocpptool analyze`` against ``ocpptool decode`` on the same fleet log.

    uv run python bench/bench_analyze.py                 # 1M-message JSON lines, best of 2, with the breakdown
    uv run python bench/bench_analyze.py --quick         # 100k messages, once
    uv run python bench/bench_analyze.py --messages 300000 --repeat 3 --no-breakdown

Both commands run as child processes of the real CLI, exactly as a user runs them, on the same generated
JSON lines file (``bench/out/``, made by ``gen_fleet.py`` and reused when its ``.meta.json`` matches):

- ``decode FILE -o bench/out/FILE.parquet -q``
- ``analyze FILE --format json -q`` (the report goes to a file)

Wall time is measured around each child; its CPU time and peak RSS come from ``wait4``. The overhead is
``analyze / decode - 1`` (issue 4's target: at most 30 %). Both outputs are checked so that a broken run
cannot pass as a fast one: the Parquet file has one row per generated frame; the report counts every
message, its 1.6 transactions equal the StartTransaction calls in the file (and the generator's count, less
the ids it allocated for starts cut off by the end of the file), and it has ``call-error`` findings (the
generator answers some calls with CALLERRORs). Then, unless ``--no-breakdown``, two more ``analyze`` runs print
the time of each step on stderr (:func:`ocpptool.analysis.registry.run`): ``OCPPTOOL_TIMINGS=together`` as a
normal run does it (derived tables, shared frames, the detectors collected together, some on a second
thread), and ``OCPPTOOL_TIMINGS=1`` with every detector collected on its own.

Results: a table on stdout and ``bench/out/analyze-results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out"
sys.path.insert(0, str(HERE))

from bench_decode import cli_command, input_file, run_child  # noqa: E402


def check_decode(parquet: Path, meta: dict) -> list[str]:
    import polars as pl

    rows = pl.scan_parquet(parquet).select(pl.len()).collect().item()
    return [] if rows == meta["frames"] else [f"decode wrote {rows:,} rows, the generator {meta['frames']:,} frames"]


def starts_16(path: Path) -> int:
    """StartTransaction CALLs in the file (the generator allocates ids ahead, so some of its ``transactions_16``
    may fall after the cut that ends the file)."""
    needle = b'\\"StartTransaction\\",{'
    with open(path, "rb") as f:
        return sum(1 for line in f if needle in line)


def check_report(report: Path, meta: dict, starts: int) -> tuple[list[str], dict]:
    doc = json.loads(report.read_bytes())
    problems = []
    counts: dict[str, int] = {}
    for f in doc["findings"]:
        counts[f["code"]] = counts.get(f["code"], 0) + 1
    tx16 = sum(1 for t in doc["transactions"] if t.get("ocpp_version") == "1.6")
    if doc["summary"]["messages"] != meta["frames"]:
        problems.append(f"report counts {doc['summary']['messages']:,} messages, the generator {meta['frames']:,}")
    if tx16 != starts or not 0 <= meta["transactions_16"] - starts <= meta["params"]["chargers"] * 2:
        problems.append(f"report has {tx16:,} 1.6 transactions; the file has {starts:,} StartTransaction calls, "
                        f"the generator allocated {meta['transactions_16']:,} ids")
    if meta["by_type"].get("CALLERROR", 0) and not counts.get("call-error"):
        problems.append("no call-error finding although the generator sent CALLERRORs")
    return problems, {"findings_by_code": counts, "transactions": len(doc["transactions"]), "transactions_16": tx16}


def precompile() -> None:
    """Byte-compile ocpptool and the installed packages first, as an install does: where
    PYTHONDONTWRITEBYTECODE is set (or a tree was just edited) every run would otherwise compile the modules
    it imports from source, ~0.15 s more for both commands (more for analyze, which imports more)."""
    import subprocess
    import sysconfig

    for where in (ROOT / "ocpptool", sysconfig.get_paths()["purelib"]):
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(where)], check=False, capture_output=True)


_TIMING = re.compile(r"^timing (.+?)\s+wall\s+([\d.]+) s\s+cpu\s+([\d.]+) s$")


def breakdown(path: Path, mode: str = "1") -> tuple[list[dict], dict]:
    env = dict(os.environ, OCPPTOOL_TIMINGS=mode)
    r = run_child([*cli_command(), "analyze", str(path), "--format", "json", "-q"], env=env)
    steps = []
    for line in r["stderr"].splitlines():
        m = _TIMING.match(line.strip())
        if m:
            steps.append({"step": m[1], "wall": float(m[2]), "cpu": float(m[3])})
    return steps, r


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=1_000_000)
    p.add_argument("--repeat", type=int, default=2, help="runs of each command; the fastest counts (default 2)")
    p.add_argument("--quick", action="store_true", help="100k messages, one run each")
    p.add_argument("--no-breakdown", action="store_true", help="skip the per-step timing runs")
    a = p.parse_args(argv)
    if a.quick:
        a.messages, a.repeat = 100_000, 1
    OUT.mkdir(parents=True, exist_ok=True)
    path, meta = input_file("jsonl", a.messages, 300, 1, quiet=False)
    parquet = OUT / f"{path.name}.parquet"
    report = OUT / f"{path.name}.report.json"
    cases = {
        "decode": ([*cli_command(), "decode", str(path), "-o", str(parquet), "-q"], None),
        "analyze": ([*cli_command(), "analyze", str(path), "--format", "json", "-q"], report),
    }
    starts = starts_16(path)
    precompile()
    runs: dict[str, list[dict]] = {name: [] for name in cases}
    problems: list[str] = []
    extra: dict = {}
    for i in range(a.repeat):
        for name, (cmd, stdout) in cases.items():
            print(f"{name} run {i + 1}/{a.repeat} ...", file=sys.stderr, flush=True)
            load = os.getloadavg()[0]
            r = run_child(cmd, stdout)
            r["load_before"] = load
            runs[name].append(r)
            if r["exit_code"] != 0:
                problems.append(f"{name} exited {r['exit_code']}: {r['stderr'][-300:]}")
            elif name == "decode":
                problems += check_decode(parquet, meta)
            else:
                found, extra = check_report(report, meta, starts)
                problems += found
    best = {name: min(rs, key=lambda r: r["seconds"]) for name, rs in runs.items()}
    overhead = best["analyze"]["seconds"] / best["decode"]["seconds"] - 1
    cpu_overhead = best["analyze"]["cpu_seconds"] / best["decode"]["cpu_seconds"] - 1
    print(f"\n{a.messages:,} messages ({path.stat().st_size / 1e6:,.0f} MB JSON lines), best of {a.repeat}")
    print(f"{'command':10s} {'seconds':>8s} {'CPU s':>7s} {'peak RSS MB':>12s} {'load before':>12s}")
    for name, r in best.items():
        print(f"{name:10s} {r['seconds']:8.2f} {r['cpu_seconds']:7.2f} {r['peak_rss_mb']:12,.0f} "
              f"{r['load_before']:12.2f}")
    print(f"analysis overhead: {overhead:+.0%} wall, {cpu_overhead:+.0%} CPU (target: at most +30 %)")
    steps: list[dict] = []
    together: list[dict] = []
    if not a.no_breakdown:
        # the real run's steps (detectors collected together, some on a second thread; CPU is the process's,
        # so a step's CPU includes what the second thread did meanwhile), then every detector on its own
        for mode, title, out in (
            ("together", "analysis steps as run (CPU: the whole process during the step):", together),
            ("1", "analysis steps, each detector collected on its own (shared frames counted in each reader):", steps),
        ):
            print(f"breakdown run (OCPPTOOL_TIMINGS={mode}) ...", file=sys.stderr, flush=True)
            found_steps, r = breakdown(path, mode)
            out += found_steps
            if r["exit_code"] != 0 or not found_steps:
                problems.append(f"breakdown run failed: {r['stderr'][-300:]}")
            print(f"\n{title}")
            for s in sorted(found_steps, key=lambda s: -s["cpu"]) if mode == "1" else found_steps:
                if s["cpu"] >= 0.01 or s["wall"] >= 0.01:
                    print(f"  {s['step']:50s} {s['wall']:7.3f} s  CPU {s['cpu']:7.3f} s")
            print(f"  {'(sum)':50s} {sum(s['wall'] for s in found_steps):7.3f} s  "
                  f"CPU {sum(s['cpu'] for s in found_steps):7.3f} s")
    for line in problems:
        print(f"FAILED: {line}")
    results = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "input": {"path": str(path), "bytes": path.stat().st_size, **{k: meta[k] for k in ("frames", "by_type")}},
        "runs": {name: [{k: v for k, v in r.items() if k != "stderr"} for r in rs] for name, rs in runs.items()},
        "overhead_wall": overhead,
        "overhead_cpu": cpu_overhead,
        "steps": steps,
        "steps_together": together,
        "checks": extra,
        "problems": problems,
    }
    (OUT / "analyze-results.json").write_text(json.dumps(results, indent=2) + "\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
