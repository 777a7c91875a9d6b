"""Correctness gate for decode speed work: the tables of a reference commit and of this tree must be equal.

    uv run python bench/check_same.py --ref main              # compare with the main branch's code
    uv run python bench/check_same.py --ref a73b722 FILE ...  # extra inputs on top of the default set

The reference commit's ``ocpptool/`` is exported with ``git archive`` into a temporary directory and run
with this environment's Python (``PYTHONPATH``), one child process per input and side. Each child decodes
the input with :func:`ocpptool.pipeline.load` and writes the messages, weirds and connections tables as
Parquet; the two sides must be equal column by column (names, types, values, order) and give the same notes.

Default inputs: the 100k benchmark files of each format (generated if missing), ``captures/fleet-demo.jsonl``,
every file in ../shared/public-data that decodes, the Open OCPP Trace fixtures, the test logs and
captures, and a generated "nasty" JSON-lines file and log with broken frames, escapes and odd spacing.
Exit status 1 when any input differs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHARED = ROOT.parent / "shared"
OUT = HERE / "out"

CHILD = r"""
import json, sys
from ocpptool.pipeline import load
from ocpptool.tables.writers import write_parquet
src, out = sys.argv[1], sys.argv[2]
try:
    t, _ = load([src], progress=False)
except Exception as exc:  # an input that does not decode on either side is compared by its error
    json.dump({"error": f"{type(exc).__name__}: {exc}"}, open(out + "/result.json", "w"))
    sys.exit(0)
for name in ("messages", "weirds", "connections"):
    write_parquet(getattr(t, name), f"{out}/{name}.parquet")
json.dump({"notes": t.notes}, open(out + "/result.json", "w"))
"""

_FRAMES = [
    '[2,"a1","Heartbeat",{}]', '[3,"a1",{"currentTime":"2024-05-01T10:00:00Z"}]',
    '[2, "a2" , "Authorize" , {"idTag": "X\\"Y"} ]', '[3,"a2",{"idTagInfo":{"status":"Accepted"}}]',
    '[2,"a\\u0033","BootNotification",{"chargePointVendor":"V","chargePointModel":"M"}]',
    '[3,"a3",{"status":"Accepted","currentTime":"2024-05-01T10:00:00Z","interval":300}]',
    '[4,"a4","NotImplemented","no",{}]', '[2,"a5","DataTransfer",{"vendorId":"x"}', '[2,"a6","Heartbeat",{}',
    '[2,"a7","Heartbeat",{} {}]', '[3,"a8",{"a":1},]', '[3,"a9",{"a":[1,2}]', '[2,"b1","Heartbeat",{"k":nan}]',
    '[3,"b2",{"s":"\\ud800"}]', '[3,"b3",{"s":"tab\there"}]', '[6,"b4","NotifyPeriodicEventStream",{"id":1}]',
    '[5,"b5","InternalError","x",{}]', '[2,"b6","Heartbeat",{}] trailing', '[3,"b7",{}]  ', '[3,"b8",[]]',
    '[3,"b9",{"a":"]"}]', '[2,"c1","Heartbeat",{"x":{"y":[1,{"z":"}"}]}}]', '[3,"c2",{"a":1e400}]',
    '[3,"c3",{"a":01}]', '[3,"c4",{"a":tru}]', '[3,"c5",{"a":"x"}]]', '[9,"c6",{}]', '[]', '{}', 'hello',
    '[3,"c7",{"a":"\\x"}]', '[2,"c8","Heartbeat",{}, ]', '[3,"c9",{"é":"ü"}]', '[3,"d1",{"a":1}\n]',
]


def nasty_inputs(directory: Path, seed: int = 5) -> list[Path]:
    """A JSON-lines file (frames as text and as arrays) and a mobilityhouse log full of edge cases."""
    rng = random.Random(seed)
    jl, log = [], []
    for i in range(3000):
        f = rng.choice(_FRAMES)
        cp = f"CP-{rng.randrange(7)}"
        d = rng.choice(["cp->csms", "csms->cp", "in", "out"])
        ts = f"2024-05-01T10:{i // 60 % 60:02d}:{i % 60:02d}.{i % 1000:03d}Z"
        try:
            as_array = rng.random() < 0.4 and isinstance(json.loads(f), list)
        except ValueError:
            as_array = False
        msg = f if as_array else json.dumps(f)
        jl.append(f'{{"timestamp":"{ts}","charge_point_id":"{cp}","direction":"{d}","message":{msg}}}')
        if rng.random() < 0.01:
            jl.append('{"timestamp": broken')
        verb = "receive message" if d in ("cp->csms", "in") else "send"
        one_line = f.replace("\n", " ")
        log.append(f"2024-05-01 10:{i // 60 % 60:02d}:{i % 60:02d},{i % 1000:03d} - ocpp - INFO - {cp}: {verb} "
                   f"{one_line}")
        if one_line.startswith("[4,"):
            log.append(f"2024-05-01 10:{i // 60 % 60:02d}:{i % 60:02d},{i % 1000:03d} - ocpp - WARNING - "
                       f"Received a CALLError: <CallError - unique_id=a4, error_code=NotImplemented, "
                       f"error_description=no, error_details={{}}>")
    # an over-long line (cut by the text readers) and a broken one, in the middle of the log
    huge = '{"data":"' + "x" * 2_500_000 + '"}'
    log.insert(1500, f'2024-05-01 10:25:00,000 - ocpp - INFO - CP-1: receive message [2,"h1","DataTransfer",{huge}]')
    log.insert(1600, f'2024-05-01 10:26:00,000 - ocpp - INFO - CP-1: receive message [2,"h2","DataTransfer",{huge}')
    a, b = directory / "nasty.jsonl", directory / "nasty-mobilityhouse.log"
    a.write_text("\n".join(jl) + "\n")
    b.write_text("\n".join(log) + "\n")
    return [a, b]


def default_inputs(scratch: Path) -> list[Path]:
    sys.path.insert(0, str(HERE))
    from bench_decode import input_file

    out = [input_file(fmt, 100_000, 300, 1, quiet=False)[0] for fmt in ("jsonl", "mobilityhouse")]
    out.append(ROOT / "captures" / "fleet-demo.jsonl")
    for base in (SHARED / "public-data", SHARED / "open-ocpp-trace" / "fixtures", ROOT / "tests" / "data",
                 ROOT / "tests" / "captures"):
        if base.is_dir():
            out.extend(p for p in sorted(base.rglob("*")) if p.is_file() and p.suffix not in (".md", ".json", ".keys")
                       and p.name != "SHA256SUMS")
    out.extend(nasty_inputs(scratch))
    return out


def run_side(pythonpath: str, src: Path, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=pythonpath)
    subprocess.run([sys.executable, "-c", CHILD, str(src), str(out)], env=env, check=True, cwd=pythonpath)
    return json.loads((out / "result.json").read_text())


def compare(a: Path, b: Path, ra: dict, rb: dict) -> list[str]:
    import polars as pl

    if "error" in ra or "error" in rb:
        return [] if ra == rb else [f"errors differ: {ra} vs {rb}"]
    problems = [] if ra["notes"] == rb["notes"] else [f"notes differ: {ra['notes']} vs {rb['notes']}"]
    for name in ("messages", "weirds", "connections"):
        x, y = pl.read_parquet(a / f"{name}.parquet"), pl.read_parquet(b / f"{name}.parquet")
        if x.schema != y.schema:
            problems.append(f"{name}: schema differs")
        elif x.height != y.height:
            problems.append(f"{name}: {x.height} rows vs {y.height}")
        elif not x.equals(y):
            bad = [c for c in x.columns if not x[c].equals(y[c])]
            problems.append(f"{name}: columns differ: {bad}")
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ref", default="main", help="git commit to compare with (default main)")
    p.add_argument("--no-defaults", action="store_true", help="only the inputs given")
    p.add_argument("inputs", nargs="*")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="check_same-") as tmp:
        t = Path(tmp)
        ref = t / "ref"
        ref.mkdir()
        tar = subprocess.run(["git", "archive", args.ref, "ocpptool"], cwd=ROOT, check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(ref)], input=tar.stdout, check=True)
        inputs = ([] if args.no_defaults else default_inputs(t)) + [Path(x).resolve() for x in args.inputs]
        failed = 0
        for i, src in enumerate(inputs):
            ra = run_side(str(ref), src, t / f"{i}-ref")
            rb = run_side(str(ROOT), src, t / f"{i}-new")
            problems = compare(t / f"{i}-ref", t / f"{i}-new", ra, rb)
            label = src.relative_to(ROOT.parent) if src.is_relative_to(ROOT.parent) else src
            print(f"{'DIFF' if problems else 'same'}  {label}" + ("  (error on both sides)" if "error" in ra and not problems else ""))
            for pr in problems:
                print(f"      {pr}")
            failed += bool(problems)
        print(f"{len(inputs) - failed}/{len(inputs)} inputs give identical tables", file=sys.stderr)
        return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
