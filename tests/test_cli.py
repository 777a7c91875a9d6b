import json
import subprocess
import sys

import polars as pl
import pytest

from .conftest import FIXTURES, need


def run(*args, input=None):
    return subprocess.run([sys.executable, "-m", "ocpptool", *args], capture_output=True, text=True, input=input,
                          timeout=120)


@pytest.fixture
def trace():
    return need(FIXTURES / "normal-session" / "trace.jsonl")


def test_decode_prints_a_summary_by_charge_point_and_action(trace):
    """Without -o, decode prints counts by charge point, action and type, and the time span."""
    out = run("decode", str(trace))
    assert out.returncode == 0, out.stderr
    assert "22 messages from 1 source" in out.stdout
    assert "CS-SYNTHETIC-001" in out.stdout
    assert "StatusNotification" in out.stdout
    assert "2024-01-15 10:00:00" in out.stdout


@pytest.mark.parametrize("ext", ["parquet", "csv", "jsonl"])
def test_decode_writes_the_messages_table_in_the_format_of_the_extension(trace, tmp_path, ext):
    """-o out.parquet / .csv / .jsonl writes every message with the table's columns."""
    out = tmp_path / f"m.{ext}"
    r = run("decode", str(trace), "-o", str(out))
    assert r.returncode == 0, r.stderr
    df = {"parquet": pl.read_parquet, "csv": pl.read_csv, "jsonl": pl.read_ndjson}[ext](out)
    assert df.height == 22
    assert {"ts", "charge_point_id", "direction", "message_type", "message_id", "action", "payload",
            "call_index", "latency_ms"} <= set(df.columns)


def test_filters_pick_charge_points_actions_and_times(trace, tmp_path):
    """--action, --since and --until narrow the written table, responses included."""
    out = tmp_path / "m.parquet"
    r = run("decode", str(trace), "-o", str(out), "--action", "StatusNotification", "--since", "2024-01-15T10:00:30Z")
    assert r.returncode == 0, r.stderr
    df = pl.read_parquet(out)
    assert set(df["action"]) == {"StatusNotification"}
    assert set(df["message_type"]) == {"CALL", "CALLRESULT"}
    r = run("decode", str(trace), "-o", str(out), "--cp", "nobody")
    assert pl.read_parquet(out).height == 0


def test_trace_output_is_valid_open_ocpp_trace(trace, tmp_path):
    """-o x.trace.jsonl writes Open OCPP Trace v1.1 records with the required fields."""
    out = tmp_path / "x.trace.jsonl"
    assert run("decode", str(trace), "-o", str(out)).returncode == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 22
    for rec in records:
        assert {"schemaVersion", "timestamp", "transport", "direction", "messageType"} <= rec.keys()


@pytest.mark.parametrize(
    ("content", "words"),
    [(b"", "empty file"), (b"\x00\x01\x02binary", "binary file"), (b"just some prose\n", "unrecognised input")],
)
def test_bad_input_gets_one_line_on_stderr_and_exit_2(tmp_path, content, words):
    """An empty, binary or unrecognised file gives one clear line on stderr, exit 2, and no traceback."""
    p = tmp_path / "in.log"
    p.write_bytes(content)
    r = run("decode", str(p))
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and words in r.stderr
    assert "Traceback" not in r.stderr


def test_traceback_flag_shows_the_traceback(tmp_path):
    """--traceback shows where an error came from."""
    p = tmp_path / "in.log"
    p.write_bytes(b"")
    r = run("--traceback", "decode", str(p))
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_bad_options_are_one_line_errors(trace, tmp_path):
    """Unknown output extensions, time zones and times are reported plainly with exit 2."""
    for args in (["-o", str(tmp_path / "x.xyz")], ["--log-tz", "Mars/Olympus"], ["--since", "yesterday"],
                 ["--input-format", "nonsense"]):
        r = run("decode", str(trace), *args)
        assert r.returncode == 2, args
        assert "Traceback" not in r.stderr and r.stderr.strip(), args


def test_a_wss_capture_without_key_log_says_how_to_decode_it():
    """Encrypted OCPP in a capture is not silently empty: the summary says to pass --keylog."""
    from pathlib import Path

    wss = Path(__file__).resolve().parent / "captures" / "wss.pcapng"
    r = run("decode", str(wss))
    assert r.returncode == 0, r.stderr
    assert "0 messages" in r.stdout and "--keylog" in r.stdout
    keys = wss.with_name("wss.keys")
    r = run("decode", str(wss), "--keylog", str(keys))
    assert "54 messages" in r.stdout
