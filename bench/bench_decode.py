"""End-to-end decode benchmark: generate fleet logs, run the real CLI on each, measure time and peak memory.

    uv run python bench/bench_decode.py              # full run: JSON lines 100k + 1M, mobilityhouse log 1M,
                                                     # the 1M JSON lines written as an Open OCPP Trace
    uv run python bench/bench_decode.py --quick      # smoke check: 100k of each format
    uv run python bench/bench_decode.py --messages 2000000 --repeat 3

Inputs go to ``bench/out/`` (git-ignored) and are reused when a file with the same parameters exists (its
``.meta.json`` says so). Each case runs ``ocpptool decode FILE -o bench/out/FILE.parquet -q`` as a child
process; wall time is measured around it and the child's own peak RSS and CPU time come from ``wait4``
(exact, per child, no polling). The output Parquet is then checked against the generator's counts (rows,
rows per message type, every response paired with its call): a failed check marks the case FAILED and
the script exits non-zero, so a broken decode cannot pass as a fast one.

Results: a table on stdout and ``bench/out/results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out"
sys.path.insert(0, str(HERE))

import gen_fleet  # noqa: E402

EXT = {"jsonl": "jsonl", "mobilityhouse": "log", "trace": "trace.jsonl"}


def input_file(fmt: str, messages: int, chargers: int, seed: int, quiet: bool) -> tuple[Path, dict]:
    """The generated input for these parameters, made now unless an identical one exists."""
    if fmt == "trace":
        return trace_file(messages, chargers, seed, quiet)
    path = OUT / f"fleet-{fmt}-{messages}-c{chargers}-s{seed}.{EXT[fmt]}"
    meta_path = Path(str(path) + ".meta.json")
    want = {"format": fmt, "messages": messages, "chargers": chargers, "seed": seed, "gzip": False,
            "share_201": 0.04}
    if path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if (meta.get("params") == want and meta.get("generator_version") == gen_fleet.GENERATOR_VERSION
                and meta.get("bytes") == path.stat().st_size):
            return path, meta
    if not quiet:
        print(f"generating {path.name} ...", file=sys.stderr, flush=True)
    meta = gen_fleet.generate(str(path), fmt=fmt, messages=messages, chargers=chargers, seed=seed, quiet=True)
    if not quiet:
        print(f"  {meta['frames']:,} frames, {meta['bytes'] / 1e6:,.0f} MB in {meta['seconds']:.1f} s "
              f"({meta['frames'] / meta['seconds']:,.0f} frames/s)", file=sys.stderr)
    return path, meta


def trace_file(messages: int, chargers: int, seed: int, quiet: bool) -> tuple[Path, dict]:
    """The JSON lines input written as an Open OCPP Trace by ``ocpptool decode -o x.trace.jsonl`` (the same
    frames, so the same checks apply), made now unless an identical one exists."""
    src, src_meta = input_file("jsonl", messages, chargers, seed, quiet)
    path = OUT / f"fleet-trace-{messages}-c{chargers}-s{seed}.trace.jsonl"
    meta_path = Path(str(path) + ".meta.json")
    if path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("from") == src_meta and meta.get("bytes") == path.stat().st_size:
            return path, meta
    if not quiet:
        print(f"writing {path.name} from {src.name} ...", file=sys.stderr, flush=True)
    r = run_child(cli_command() + ["decode", str(src), "-o", str(path), "-q"])
    if r["exit_code"] != 0:
        raise SystemExit(f"could not write the trace input: {r['stderr'][-500:]}")
    meta = {**src_meta, "bytes": path.stat().st_size, "from": src_meta, "written_in_s": r["seconds"]}
    meta_path.write_text(json.dumps(meta))
    return path, meta


def cli_command() -> list[str]:
    """The installed ``ocpptool`` entry point (the real CLI), else ``python -m ocpptool``."""
    exe = shutil.which("ocpptool", path=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    return [exe] if exe else [sys.executable, "-m", "ocpptool"]


def run_child(cmd: list[str], stdout: Path | None = None, env: dict | None = None) -> dict:
    """Run ``cmd`` (stdout to ``stdout`` or nowhere); wall seconds, the child's peak RSS (MB) and CPU seconds
    (from wait4), exit code, stderr."""
    errf = OUT / ".stderr.txt"
    with open(errf, "wb") as err, open(stdout or os.devnull, "wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=ROOT, env=env)
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)  # already reaped: keep Popen from waiting again
    return {
        "seconds": wall,
        "peak_rss_mb": ru.ru_maxrss / 1024,  # KiB on Linux
        "cpu_seconds": ru.ru_utime + ru.ru_stime,
        "exit_code": proc.returncode,
        "stderr": errf.read_text(errors="replace").strip(),
    }


def check_output(parquet: Path, meta: dict) -> tuple[list[str], dict]:
    """Compare the decoded table with what the generator wrote; returns (problems, facts)."""
    import polars as pl

    problems: list[str] = []
    df = pl.read_parquet(parquet)
    facts = {"rows": df.height, "table_mb": df.estimated_size() / 1e6}
    if df.height != meta["frames"]:
        problems.append(f"row count {df.height:,} != {meta['frames']:,} frames generated")
    got = dict(df.group_by("message_type").len().iter_rows())
    want = {k: v for k, v in meta["by_type"].items() if v}
    if got != want:
        problems.append(f"rows per message type {got} != generated {want}")
    resp = df.filter(pl.col("message_type").is_in(["CALLRESULT", "CALLERROR"]))
    unpaired = resp["call_index"].null_count()
    facts["unpaired_responses"] = unpaired
    if unpaired:
        problems.append(f"{unpaired:,} responses not paired with their call")
    no_dir = df["direction"].null_count()
    if no_dir:
        problems.append(f"{no_dir:,} rows without a direction")
    return problems, facts


def run_case(name: str, fmt: str, messages: int, args) -> dict:
    path, meta = input_file(fmt, messages, args.chargers, args.seed, args.quiet)
    out = OUT / (path.name + ".parquet")
    cmd = cli_command() + ["decode", str(path), "-o", str(out), "-q"]
    runs = []
    for _ in range(args.repeat):
        if out.exists():
            out.unlink()
        load = os.getloadavg()[0]
        r = run_child(cmd)
        r["loadavg_before"] = load
        runs.append(r)
        if r["exit_code"] != 0:
            break
    best = min(runs, key=lambda r: r["seconds"])
    res = {
        "case": name,
        "format": fmt,
        "messages": meta["frames"],
        "input_mb": meta["bytes"] / 1e6,
        "input": str(path.relative_to(ROOT)),
        "command": " ".join(["ocpptool"] + cmd[len(cli_command()):]),
        "seconds": best["seconds"],
        "messages_per_s": meta["frames"] / best["seconds"],
        "cpu_seconds": best["cpu_seconds"],
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "runs": [{k: v for k, v in r.items() if k != "stderr"} for r in runs],
        "exit_code": best["exit_code"],
    }
    if best["exit_code"] != 0 or not out.exists():
        res["status"] = "FAILED"
        res["problems"] = [f"exit code {best['exit_code']}: {best['stderr'][-2000:]}"]
        res["output_mb"] = None
        return res
    res["output_mb"] = out.stat().st_size / 1e6
    problems, facts = check_output(out, meta)
    res.update(facts)
    res["status"] = "FAILED" if problems else "ok"
    if problems:
        res["problems"] = problems
    return res


def print_table(results: list[dict]) -> None:
    head = f"{'case':<22}{'messages':>11}{'input MB':>10}{'seconds':>9}{'messages/s':>12}{'CPU s':>8}" \
           f"{'peak RSS MB':>13}{'output MB':>11}{'table MB':>10}  status"
    print(head)
    print("-" * len(head))
    for r in results:
        out = f"{r['output_mb']:>11.1f}" if r.get("output_mb") is not None else f"{'-':>11}"
        tbl = f"{r['table_mb']:>10.0f}" if r.get("table_mb") is not None else f"{'-':>10}"
        print(f"{r['case']:<22}{r['messages']:>11,}{r['input_mb']:>10.0f}{r['seconds']:>9.2f}"
              f"{r['messages_per_s']:>12,.0f}{r['cpu_seconds']:>8.1f}{r['peak_rss_mb']:>13,.0f}{out}{tbl}  "
              f"{r['status']}")
    for r in results:
        for p in r.get("problems", []):
            print(f"  {r['case']}: {p}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Decode benchmark of the ocpptool CLI on generated fleet logs.")
    p.add_argument("--messages", type=int, default=1_000_000,
                   help="size of the large cases (default 1,000,000); the small JSON lines case is a tenth")
    p.add_argument("--quick", action="store_true", help="100k messages of each format only (smoke check)")
    p.add_argument("--chargers", type=int, default=300)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--repeat", type=int, default=1, help="runs per case; the fastest is reported (default 1)")
    p.add_argument("--only", action="append", help="run only cases whose name contains this (repeatable)")
    p.add_argument("-q", "--quiet", action="store_true")
    args = p.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)

    def label(n: int) -> str:
        return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k" if n % 1000 == 0 else str(n)

    # jsonl-1k is the fixed cost (interpreter, imports, writing a file): subtract it to see the rate of
    # the decode itself on the small cases.
    if args.quick:
        cases = [("jsonl-1k", "jsonl", 1_000), ("jsonl-100k", "jsonl", 100_000),
                 ("mobilityhouse-100k", "mobilityhouse", 100_000)]
    else:
        small = max(1, args.messages // 10)
        cases = [
            ("jsonl-1k", "jsonl", 1_000),
            (f"jsonl-{label(small)}", "jsonl", small),
            (f"jsonl-{label(args.messages)}", "jsonl", args.messages),
            (f"mobilityhouse-{label(args.messages)}", "mobilityhouse", args.messages),
            (f"trace-{label(args.messages)}", "trace", args.messages),
        ]
    if args.only:
        cases = [c for c in cases if any(o in c[0] for o in args.only)]

    results = []
    for name, fmt, n in cases:
        if not args.quiet:
            print(f"running {name} ...", file=sys.stderr, flush=True)
        results.append(run_case(name, fmt, n, args))
    print_table(results)

    big = [r for r in results if r["messages"] >= 100_000]  # the 1k case is the fixed cost, not a rate
    jl = sorted((r for r in big if r["format"] == "jsonl" and r["status"] == "ok"), key=lambda r: r["messages"])
    growth = None
    if len(jl) >= 2:
        a, b = jl[0], jl[-1]
        growth = {
            "small": a["case"], "large": b["case"],
            "input_ratio": b["messages"] / a["messages"],
            "rss_ratio": b["peak_rss_mb"] / a["peak_rss_mb"],
            "rss_mb_per_100k_messages_marginal":
                (b["peak_rss_mb"] - a["peak_rss_mb"]) / ((b["messages"] - a["messages"]) / 100_000),
            "rss_over_table_small": a["peak_rss_mb"] / a["table_mb"],
            "rss_over_table_large": b["peak_rss_mb"] / b["table_mb"],
            "rss_over_input_large": b["peak_rss_mb"] / b["input_mb"],
        }
        print(f"\nmemory vs input ({a['case']} -> {b['case']}): {growth['input_ratio']:.0f}x the messages, "
              f"{growth['rss_ratio']:.1f}x the peak RSS "
              f"(+{growth['rss_mb_per_100k_messages_marginal']:.0f} MB per 100k messages); at {b['case']} "
              f"peak RSS is {growth['rss_over_table_large']:.1f}x the decoded table in memory "
              f"and {growth['rss_over_input_large']:.2f}x the input file")
    targets = {"jsonl": 300_000, "mobilityhouse": 150_000}
    for r in big:
        goal = targets.get(r["format"])
        if goal and r["status"] == "ok":
            verdict = "meets" if r["messages_per_s"] >= goal else "misses"
            print(f"{r['case']}: {r['messages_per_s']:,.0f} messages/s {verdict} the {goal:,}/s target")

    doc = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "loadavg_at_end": os.getloadavg()},
        "args": {k: v for k, v in vars(args).items()},
        "results": results,
        "memory_growth": growth,
        "targets_messages_per_s": targets,
    }
    (OUT / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    if not args.quiet:
        print(f"\nwrote {OUT.relative_to(ROOT)}/results.json", file=sys.stderr)
    return 1 if any(r["status"] != "ok" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
