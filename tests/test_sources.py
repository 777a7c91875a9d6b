import gzip
import json
import subprocess
import sys

import polars as pl
import pytest

from ocpptool.sources import SourceError, expand_inputs, read_inputs
from ocpptool.tables.build import build_tables


def tables(*paths, **kw):
    return build_tables(read_inputs([str(p) for p in paths]), **kw)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


SESSION = [
    {"timestamp": "2024-05-01T10:00:00.000Z", "charge_point_id": "CP-1", "direction": "cp->csms",
     "message": '[2,"m1","BootNotification",{"chargePointVendor":"V","chargePointModel":"M"}]'},
    {"timestamp": "2024-05-01T10:00:00.250Z", "charge_point_id": "CP-1", "direction": "csms->cp",
     "message": '[3,"m1",{"status":"Accepted","currentTime":"2024-05-01T10:00:00Z","interval":60}]'},
    {"timestamp": "2024-05-01T10:01:00.000Z", "charge_point_id": "CP-1", "direction": "cp->csms",
     "message": '[2,"m2","Heartbeat",{}]'},
]


@pytest.mark.parametrize(
    ("ts_key", "cp_key", "dir_key", "msg_key", "up", "down"),
    [
        ("timestamp", "charge_point_id", "direction", "message", "cp->csms", "csms->cp"),
        ("ts", "chargePointId", "dir", "msg", "cp-to-csms", "csms-to-cp"),
        ("@timestamp", "identity", "direction", "frame", "CS_TO_CSMS", "CSMS_TO_CS"),
        ("time", "stationId", "direction", "raw", "upstream", "downstream"),
    ],
)
def test_json_lines_with_any_common_key_spelling_decode(tmp_path, ts_key, cp_key, dir_key, msg_key, up, down):
    """JSON-lines logs decode whatever the names of their time, charge point, direction and frame keys."""
    rows = [{ts_key: r["timestamp"], cp_key: r["charge_point_id"],
             dir_key: up if r["direction"] == "cp->csms" else down, msg_key: r["message"]} for r in SESSION]
    m = tables(write_jsonl(tmp_path / "x.log", rows)).messages
    assert m["charge_point_id"].to_list() == ["CP-1"] * 3
    assert m["direction"].to_list() == ["cp->csms", "csms->cp", "cp->csms"]
    assert m["action"].to_list() == ["BootNotification", "BootNotification", "Heartbeat"]
    assert m["latency_ms"][1] == pytest.approx(250.0)
    assert m["ocpp_version"].unique().to_list() == ["1.6"]


def test_frames_given_as_arrays_and_epoch_times_decode(tmp_path):
    """A frame stored as a JSON array and an epoch-milliseconds time are read like text frames and ISO times."""
    rows = [{"ts": 1714557600000, "cp": "CP-9", "direction": "cp->csms", "message": [2, "a", "Heartbeat", {}]},
            {"ts": 1714557600.5, "cp": "CP-9", "direction": "csms->cp",
             "message": [3, "a", {"currentTime": "2024-05-01T10:00:00Z"}]}]
    m = tables(write_jsonl(tmp_path / "x.jsonl", rows)).messages
    assert m["message_type"].to_list() == ["CALL", "CALLRESULT"]
    assert str(m["ts"][0]) == "2024-05-01 10:00:00+00:00"
    assert m["latency_ms"][1] == pytest.approx(500.0)


def test_a_broken_line_is_a_weird_and_everything_around_it_is_kept(tmp_path):
    """A malformed line in the middle of a good log is reported as a weird with its line number; no frame is lost."""
    p = tmp_path / "x.jsonl"
    lines = [json.dumps(SESSION[0]), '{"timestamp": "2024-05-01T10:00:00.1Z", "message": [2, "zz"', json.dumps(SESSION[1]),
             json.dumps({**SESSION[2], "message": '[2,"m2","Heartbeat",{]'}), json.dumps(SESSION[2])]
    p.write_text("\n".join(lines) + "\n")
    t = tables(p)
    assert t.messages.height == 3
    assert t.messages["source_pos"].to_list() == [1, 3, 5]
    assert sorted(t.weirds.select("source_pos", "reason").rows()) == [(2, "unparsable-line"), (4, "not-json")]


def test_gzip_directories_and_several_files_merge_by_time(tmp_path):
    """Gzip files, directories and several files are read together and merged by observed time."""
    d = tmp_path / "logs"
    d.mkdir()
    a = [dict(r, charge_point_id="A") for r in SESSION]
    b = [dict(r, charge_point_id="B", timestamp=r["timestamp"].replace("10:0", "10:3")) for r in SESSION[:2]]
    with gzip.open(d / "a.jsonl.gz", "wt") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in a))
    write_jsonl(d / "b.jsonl", b)
    m = tables(d).messages
    assert m.height == 5
    assert m["ts"].is_sorted()
    assert m["charge_point_id"].to_list() == ["A", "A", "A", "B", "B"]
    assert m.filter(pl.col("charge_point_id") == "B")["call_index"].to_list()[1] is not None


def test_stdin_is_read_when_the_input_is_a_dash(tmp_path):
    """`ocpptool decode -` reads the log from standard input."""
    data = "".join(json.dumps(r) + "\n" for r in SESSION)
    out = subprocess.run([sys.executable, "-m", "ocpptool", "decode", "-"], input=data, capture_output=True,
                         text=True, check=True)
    assert "3 messages from 1 source" in out.stdout


def test_local_times_without_a_zone_stay_unplaced_unless_the_zone_is_given(tmp_path):
    """Log times without a zone are not guessed: ts stays null with a hint, and --log-tz places them."""
    rows = [dict(r, timestamp=r["timestamp"][:-1].replace("T", " ")) for r in SESSION]
    p = write_jsonl(tmp_path / "x.jsonl", rows)
    t = tables(p)
    assert t.messages["ts"].null_count() == 3
    assert t.messages["ts_local"].null_count() == 0
    assert any("no time zone" in n for n in t.notes)
    placed = tables(p, log_tz="Europe/Berlin").messages
    assert str(placed["ts"][0]) == "2024-05-01 08:00:00+00:00"


def test_missing_and_odd_inputs_fail_with_one_clear_error(tmp_path):
    """Unreadable, empty, binary and unrecognised inputs raise a SourceError with a one-line message."""
    (tmp_path / "empty.log").write_bytes(b"")
    (tmp_path / "bin.dat").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "prose.txt").write_text("hello\nworld\n")
    for name, words in [("empty.log", "empty"), ("bin.dat", "binary"), ("prose.txt", "unrecognised"),
                        ("nope.log", "no such file")]:
        with pytest.raises(SourceError, match=words) as info:
            list(read_inputs(expand_inputs([str(tmp_path / name)])))
        assert "\n" not in str(info.value)
