"""Check the fast schema-violation detector against jsonschema run on every payload, one by one.

    uv run python bench/check_schema_exact.py                     # the 100k bench file and the public data
    uv run python bench/check_schema_exact.py captures/fleet-demo.jsonl

The detector validates one payload per class (see ``ocpptool/analysis/schemas.py``); this script validates
every CALL and CALLRESULT payload with the compiled validator of its schema and builds the findings the
detector should give (one per charge point, action, kind and error line, with its message count). Both sets
must be equal. Exit 1 on any difference.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import orjson
import polars as pl

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))


def naive(messages: pl.DataFrame) -> Counter:
    from ocpptool.analysis import schemas

    out: Counter = Counter()
    m = messages.filter(
        pl.col("message_type").is_in(["CALL", "CALLRESULT"]), pl.col("action").is_not_null(),
        pl.col("payload").is_not_null(),
        ~pl.col("note").fill_null("").str.contains("without its payload", literal=True),
    )
    for r in m.iter_rows(named=True):
        d = schemas.VERSION_DIRS.get(r["ocpp_version"])
        kind = "request" if r["message_type"] == "CALL" else "response"
        v = d and schemas.validator(d, schemas.schema_name(d, r["action"], kind))
        if not v:
            continue
        try:
            errors = sorted({schemas.describe(e) for e in v.iter_errors(orjson.loads(r["payload"]))})
        except orjson.JSONDecodeError:
            errors = ["payload is not JSON"]
        name = schemas.schema_name(d, r["action"], kind)
        for e in errors:
            who = r["charge_point_id"] or r["conn"]
            out[f"{r['action']} {kind}(s) on {who} break the OCPP {r['ocpp_version']} schema {name}.json: {e}."] += 1
    return out


def fast(tables) -> Counter:
    from ocpptool.analysis import run

    f = run(tables, only=["schema-violation"]).findings
    out: Counter = Counter()
    for summary, value in f.select("summary", "value").iter_rows():
        n, _, rest = summary.partition(" ")
        assert int(n) == value, summary
        out[rest] += int(value)
    return out


def main(argv: list[str] | None = None) -> int:
    from bench_analyze import input_file

    from ocpptool.pipeline import load

    paths = (argv if argv is not None else sys.argv[1:]) or [
        str(input_file("jsonl", 100_000, 300, 1, quiet=False)[0]),
        *sorted(str(p) for p in (ROOT.parent / "shared" / "public-data").rglob("*")
                if p.is_file() and p.suffix not in (".md",) and p.name != "SHA256SUMS"),
    ]
    bad = 0
    for path in paths:
        try:
            tables, _ = load([path], progress=False)
        except Exception as exc:  # an input this machine cannot read (no tshark ...): say so, go on
            print(f"skip  {path}: {exc}")
            continue
        a, b = naive(tables.messages), fast(tables)
        same = a == b
        bad += not same
        print(f"{'same' if same else 'DIFF'}  {path}: {sum(a.values())} violating (message, error) pairs")
        for k in sorted(set(a) | set(b)):
            if a[k] != b[k]:
                print(f"      row by row {a[k]}, detector {b[k]}: {k[:200]}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
