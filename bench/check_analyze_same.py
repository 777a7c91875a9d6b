"""Correctness gate for analysis speed work: this tree's ``analyze`` must give exactly what a reference commit's does.

    uv run python bench/check_analyze_same.py                  # against main, on every input below
    uv run python bench/check_analyze_same.py --ref a73b722 --skip-bench

For each input, both versions run the real CLI as a child process (``python -m ocpptool analyze INPUT
--format json --export DIR -q``; this tree also without ``--export``, which must print the same report); the reference is a ``git archive`` of ``--ref`` put first on
``PYTHONPATH`` (same interpreter, same dependencies). Compared exactly: the whole JSON report, and the
findings, transactions, meter_values and statuses tables of ``--export`` (``assert_frame_equal``, exact,
row order included). Inputs: the 100k-message bench file (``bench/out``, generated when missing), the
shipped ``captures/fleet-demo.jsonl``, every file under ``tests/captures`` and ``tests/data`` and the public
data in ``../shared/public-data`` when present. Exit 1 on any difference.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import polars as pl
from polars.testing import assert_frame_equal

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TABLES = ("findings", "transactions", "meter_values", "statuses")


def inputs(skip_bench: bool) -> list[tuple[str, list[str]]]:
    """(label, extra args) for every input: each file alone, keys passed for the TLS capture."""
    out: list[tuple[str, list[str]]] = []
    if not skip_bench:
        sys.path.insert(0, str(HERE))
        from bench_analyze import input_file

        path, _ = input_file("jsonl", 100_000, 300, 1, quiet=False)
        out.append((str(path), []))
    out.append((str(ROOT / "captures" / "fleet-demo.jsonl"), []))
    for d in (ROOT / "tests" / "captures", ROOT / "tests" / "data", ROOT.parent / "shared" / "public-data"):
        if not d.is_dir():
            continue
        for f in sorted(p for p in d.rglob("*") if p.is_file()):
            if f.suffix in (".md", ".keys") or f.name == "SHA256SUMS":
                continue
            keys = f.with_suffix(".keys")
            out.append((str(f), ["--keylog", str(keys)] if keys.exists() else []))
    return out


def run(pythonpath: str | None, path: str, extra: list[str], export: str, *, export_tables: bool = True
        ) -> tuple[int, bytes, str]:
    # cwd outside the work tree: ``python -m`` puts the cwd first on sys.path, ahead of PYTHONPATH
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    args = ["--export", export] if export_tables else []
    proc = subprocess.run(
        [sys.executable, "-m", "ocpptool", "analyze", path, "--format", "json", *args, "-q", *extra],
        capture_output=True, env=env, cwd=os.path.dirname(export),
    )
    return proc.returncode, proc.stdout, proc.stderr.decode(errors="replace").strip()


def _same_rows(a_dir: str, b_dir: str, name: str) -> bool:
    """Whether two tables hold the same rows, order aside (main before perf-analyze did not fully order
    findings that tie on time, charge point and first evidence)."""
    a, b = (pl.read_parquet(os.path.join(d, f"{name}.parquet")) for d in (a_dir, b_dir))
    key = [c for c in a.columns if a[c].dtype != pl.List]
    return a.height == b.height and a.sort(key, nulls_last=True).equals(b.sort(key, nulls_last=True))


def compare(path: str, extra: list[str], ref_tree: str) -> list[str]:
    problems: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        a_dir, b_dir = os.path.join(tmp, "ref"), os.path.join(tmp, "new")
        a = run(ref_tree, path, extra, a_dir)
        b = run(None, path, extra, b_dir)
        if a[0] != b[0]:
            return [f"exit code {a[0]} (ref) vs {b[0]} (this tree): {a[2][-300:]} | {b[2][-300:]}"]
        if a[0] not in (0, 3):
            return []  # both refuse the input the same way (exit code compared above)
        # without --export the analysis keeps only the energy register's samples: the same report
        c = run(None, path, extra, b_dir, export_tables=False)
        if c[:2] != b[:2]:
            problems.append("this tree's report differs without --export")
        ja, jb = json.loads(a[1]), json.loads(b[1])
        for key in sorted(set(ja) | set(jb)):
            if ja.get(key) != jb.get(key):
                problems.append(f"JSON report differs in {key!r}")
                if isinstance(ja.get(key), list) and isinstance(jb.get(key), list) and sorted(
                    map(json.dumps, ja[key])
                ) == sorted(map(json.dumps, jb[key])):
                    problems[-1] += " (same entries in another order)"
        for name in TABLES:
            try:
                assert_frame_equal(
                    pl.read_parquet(os.path.join(a_dir, f"{name}.parquet")),
                    pl.read_parquet(os.path.join(b_dir, f"{name}.parquet")),
                    check_exact=True,
                )
            except AssertionError as exc:
                problems.append(f"{name}: {str(exc).splitlines()[0][:300]}")
                if name == "findings" and _same_rows(a_dir, b_dir, name):
                    problems[-1] += " (same rows in another order)"
    return problems


def build_extension(tree: str) -> None:
    """The reference's own C extension, compiled into its tree (as setuptools does: the interpreter's compiler,
    -O2). Without it, the editable install's finder would hand the reference this tree's extension, whose
    output may have changed with this tree's Python."""
    src = os.path.join(tree, "ocpptool", "_speedups.c")
    if os.path.exists(src):
        out = os.path.join(tree, "ocpptool", "_speedups" + sysconfig.get_config_var("EXT_SUFFIX"))
        cc = shlex.split(sysconfig.get_config_var("CC") or "cc")
        subprocess.run([*cc, "-O2", "-shared", "-fPIC", "-I" + sysconfig.get_paths()["include"], src, "-o", out],
                       check=True)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ref", default="main", help="commit to compare against (default main)")
    p.add_argument("--skip-bench", action="store_true", help="leave out the 100k-message bench file")
    p.add_argument("paths", nargs="*", help="only these inputs")
    a = p.parse_args(argv)
    todo = [(x, []) for x in a.paths] if a.paths else inputs(a.skip_bench)
    with tempfile.TemporaryDirectory() as ref_tree:
        archive = subprocess.run(["git", "archive", a.ref, "ocpptool"], cwd=ROOT, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", ref_tree], input=archive.stdout, check=True)
        build_extension(ref_tree)
        failed = 0
        for path, extra in todo:
            problems = compare(path, extra, ref_tree)
            rel = os.path.relpath(path, ROOT)
            print(f"{'DIFF' if problems else 'same'}  {rel}", flush=True)
            for line in problems:
                print(f"      {line}")
            failed += bool(problems)
    print(f"{len(todo) - failed} same, {failed} different (reference {a.ref})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
