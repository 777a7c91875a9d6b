"""The compiled JSON-lines splitter (ocpptool/_speedups.c) gives exactly what the Polars reader gives.

Each case decodes the same file twice, once with the splitter and once with ``OCPPTOOL_PURE=1`` (the
Polars/Python reader, the reference), and compares the messages, weirds and connections tables.
"""

from __future__ import annotations

import json
import shutil
import sysconfig
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from ocpptool.pipeline import load
from ocpptool.sources import jsonl

try:
    from ocpptool import _speedups
except ImportError:  # pragma: no cover - checked by the first test
    _speedups = None

needs_speedups = pytest.mark.skipif(_speedups is None, reason="ocpptool._speedups is not built")


def _both(path: Path, monkeypatch, fmt: str | None) -> tuple:
    monkeypatch.delenv("OCPPTOOL_PURE", raising=False)
    fast, _ = load([str(path)], input_format=fmt, progress=False)
    monkeypatch.setenv("OCPPTOOL_PURE", "1")
    ref, _ = load([str(path)], input_format=fmt, progress=False)
    monkeypatch.delenv("OCPPTOOL_PURE")
    return fast, ref


def _same(path: Path, monkeypatch, fmt: str | None = "jsonl") -> object:
    fast, ref = _both(path, monkeypatch, fmt)
    assert_frame_equal(fast.messages, ref.messages)
    assert_frame_equal(fast.weirds, ref.weirds)
    assert_frame_equal(fast.connections, ref.connections)
    assert fast.notes == ref.notes
    return fast


def test_the_compiled_splitter_is_built_where_a_compiler_is():
    """Installing ocpptool on a machine with a C compiler builds the splitter (else JSON lines are slow)."""
    if not (shutil.which(sysconfig.get_config_var("CC").split()[0] if sysconfig.get_config_var("CC") else "cc")):
        pytest.skip("no C compiler on this machine: ocpptool runs without the splitter")
    assert _speedups is not None, "ocpptool._speedups did not build: see the output of `uv sync -v`"


def _line(frame: object, ts: object = "2024-05-01T10:00:00.123456Z", cp: object = "CP-1",
          direction: object = "cp->csms", **extra: object) -> str:
    obj = {"timestamp": ts, "charge_point_id": cp, "direction": direction, "subprotocol": "ocpp1.6",
           "message": frame, **extra}
    return json.dumps(obj, ensure_ascii=False)


# Lines the splitter must hand to the general reader, and lines it takes; each next to ordinary ones.
ODD_LINES = [
    _line('[2,"a","Heartbeat",{}]'),
    _line('[2,"a","Heartbeat",{"x":"\\ud800"}]'),  # lone surrogate inside the frame
    '{"timestamp":"2024-05-01T10:00:00Z","charge_point_id":"CP-1","direction":"cp->csms","message":"[2,\\"b\\",\\"X\\",{\\"s\\":\\"\\ud83d\\ude00\\"}]"}',
    _line('[2,"c","DataTransfer",{"v":1e400}]'),  # infinite number: not JSON for the reference
    _line('[2,"d","DataTransfer",{"v":1.5e-7,"w":-0,"z":[true,false,null]}]'),
    _line('[2,"e","DataTransfer",' + "[" * 70 + "]" * 70 + "]"),
    _line('[2,"f","DataTransfer",{"a":' + "[" * 70 + "]" * 70 + "}]"),
    _line('[3,"a",{"currentTime":"2024-05-01T10:00:00Z","interval":300,"status":"Accepted"}]', direction="csms->cp"),
    _line('[3,"a","Extra",{}]', direction="csms->cp"),
    _line('[4,"g","NotImplemented","no handler",{}]', direction="csms->cp"),
    _line('[4,"g","InternalError","boom",{"cause":"x"}]', direction="csms->cp"),
    _line('[4,"g","InternalError","say \\"hi\\"",{}]', direction="csms->cp"),
    _line('[5,"h","GenericError","later",{ }]'),
    _line('[6,"i","NotifyPeriodicEventStream",{"id":1}]'),
    _line('[ 2 , "j" , "Heartbeat" , {} ]'),
    _line(' [2,"k","Heartbeat",{}]'),
    _line('[2,"l","Heartbeat",{}] '),
    _line('[2,"m","Heartbeat",{}\t]'),
    _line('[2,"n","Heartbeat",{},{}]'),
    _line('[2,"o","Heartbeat",{"a":}]'),
    _line('[2,"p","Heartbeat",[]]'),
    _line('[2,"q\\u0001","Heartbeat",{}]'),
    _line('[2,"r\u0001","Heartbeat",{}]'),
    _line('[2,"ü €","Auth\u00e9",{"idTag":"ä\\n\\t\\"x\\"\\/"}]'),
    _line('[7,"s","Heartbeat",{}]'),
    _line('[20,"t","Heartbeat",{}]'),
    _line('[2,5,"Heartbeat",{}]'),
    _line('[2,"u","Heartbeat",{"n":01}]'),
    _line('[2,"v","Heartbeat",{"n":1.}]'),
    _line('[2,"w","Heartbeat",{"n":.5}]'),
    _line('[2,"x","Heartbeat",{"t":tru}]'),
    _line('[2,"y","Heartbeat",{"k" : "v" , "k2":[1 ,2]}]'),
    _line(["2", "z", "Heartbeat", {}]),  # the frame as a JSON array, not text
    _line([2, "z2", "Heartbeat", {"a": 1}]),
    _line('[2,"ts1","Heartbeat",{}]', ts="2024-05-01T10:00:00+05:30"),
    _line('[2,"ts2","Heartbeat",{}]', ts="2024-05-01T10:00:00.1234567Z"),
    _line('[2,"ts3","Heartbeat",{}]', ts="2023-02-29T10:00:00Z"),
    _line('[2,"ts4","Heartbeat",{}]', ts="2024-02-29T23:59:59.5-01:00"),
    _line('[2,"ts5","Heartbeat",{}]', ts="2024-05-01 10:00:00"),
    _line('[2,"ts6","Heartbeat",{}]', ts=1714557600.25),
    _line('[2,"ts7","Heartbeat",{}]', ts=None),
    _line('[2,"ts8","Heartbeat",{}]', ts="2024-05-01T24:00:00Z"),
    _line('[2,"ts9","Heartbeat",{}]', ts="1899-12-31T23:59:59Z"),
    _line('[2,"cp1","Heartbeat",{}]', cp=7),
    _line('[2,"cp2","Heartbeat",{}]', cp=None),
    _line('[2,"cp3","Heartbeat",{}]', cp="CP\\u002d\u00e9"),
    _line('[2,"dir","Heartbeat",{}]', direction="in"),
    _line('[2,"extra","Heartbeat",{}]', meta={"a": [1, 2.5, "x", None, {"b": True}]}),
    '{"timestamp":"2024-05-01T10:00:00Z","charge_point_id":"CP-1","charge_point_id":"CP-2","message":"[2,\\"dup\\",\\"Heartbeat\\",{}]"}',
    '{"times\\u0074amp":"2024-05-01T10:00:00Z","charge_point_id":"CP-1","message":"[2,\\"esc\\",\\"Heartbeat\\",{}]"}',
    '{"timestamp":"2024-05-01T10:00:00Z","charge_point_id":"CP-1","message":"[2,\\"crlf\\",\\"Heartbeat\\",{}]"}\r',
    '{"timestamp":"2024-05-01T10:00:00Z","charge_point_id":"CP-1"}',
    '{"timestamp":"2024-05-01T10:00:00Z","charge_point_id":"CP-1","message":null}',
    '{"timestamp":"2024-05-01T10:00:00Z","charge_point_id":"CP-1","message":"[2,\\"trunc\\",\\"Heartbeat\\",{}]"',
    '{"timestamp":"2024-05-01T10:00:00Z", "message": "[2,\\"x\\",\\"Heartbeat\\",{}]"} trailing',
    "[1, 2, 3]",
    "   ",
    "",
    "\t{}",
    _line('[2,"after","Heartbeat",{}]'),
]


@needs_speedups
def test_odd_lines_decode_as_the_general_reader_decodes_them(tmp_path, monkeypatch):
    """Escapes, surrogates, odd numbers and spacing, error frames, zones and broken lines: same tables."""
    path = tmp_path / "odd.jsonl"
    path.write_bytes(("\n".join(ODD_LINES) + "\n").encode() + b'{"message":"[2,\\"bin\\",\\"H\\",{\\"a\\":\\"\xff\\"}]"}\n')
    t = _same(path, monkeypatch)
    assert t.messages.height > 30 and t.weirds.height > 5


@needs_speedups
def test_the_splitter_takes_the_usual_lines_and_leaves_the_rest(tmp_path):
    """Usual CALL/CALLRESULT/CALLERROR lines are split in C; broken or unusual ones are handed over."""
    keys = (b"timestamp", b"charge_point_id", b"direction", b"message", b"subprotocol", None)
    usual = [ODD_LINES[0], ODD_LINES[7], ODD_LINES[9], ODD_LINES[13], ODD_LINES[14], ODD_LINES[23]]
    odd = [ODD_LINES[1], ODD_LINES[3], ODD_LINES[10], ODD_LINES[18], ODD_LINES[32], ODD_LINES[-8]]
    chunk = ("\n".join(usual + odd) + "\n").encode()
    cols, slow, lines = _speedups.split_jsonl(chunk, keys, 1)
    assert lines == len(usual) + len(odd)
    assert [s[0] for s in slow] == list(range(len(usual) + 1, len(usual) + len(odd) + 1))
    for line_no, start, end in slow:
        assert chunk[start:end] == (usual + odd)[line_no - 1].encode()


_JSON_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=8)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | _JSON_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_JSON_TEXT, inner, max_size=3),
    max_leaves=8,
)


@st.composite
def frames(draw) -> object:
    """Frame text as loggers write it, sometimes spaced, escaped, broken or given as a JSON array."""
    mid = draw(st.sampled_from(["1", "a-b", "ü", 'q"', "x\\y", ""]) | _JSON_TEXT)
    action = draw(st.sampled_from(["Heartbeat", "MeterValues", "A\u00e9"]) | _JSON_TEXT)
    payload = draw(st.dictionaries(_JSON_TEXT, _JSON, max_size=3))
    kind = draw(st.sampled_from([2, 3, 4, 5, 6, 7, "2"]))
    if kind in (2, 6):
        value: list = [kind, mid, action, payload]
    elif kind == 3:
        value = [kind, mid, payload]
    else:
        value = [kind, mid, action, draw(_JSON_TEXT), draw(st.sampled_from([{}, {"a": 1}, []]))]
    style = draw(st.sampled_from(["compact", "compact", "compact", "spaced", "ascii", "array", "cut"]))
    if style == "array":
        return value
    if style == "spaced":
        return json.dumps(value, ensure_ascii=False)
    if style == "ascii":
        return json.dumps(value, ensure_ascii=True, separators=(",", ":"))
    text = orjson.dumps(value).decode()
    return text[: draw(st.integers(0, len(text)))] if style == "cut" else text


_TS = st.sampled_from(["2024-05-01T10:00:00.123456Z", "2024-05-01T10:00:00Z", "2024-05-01T10:00:00.5+02:00",
                       "2024-05-01T10:00:00.123456789Z", "2024-05-01 10:00:00", "", "x"]) | st.integers(0, 2 * 10**12)


@st.composite
def jsonl_lines(draw) -> str:
    obj = {"timestamp": draw(_TS), "charge_point_id": draw(st.sampled_from(["CP-1", "CP-2", "é"]) | _JSON_TEXT),
           "direction": draw(st.sampled_from(["cp->csms", "csms->cp", "in", "out", "?"])),
           "message": draw(frames())}
    for key in draw(st.lists(st.sampled_from(["timestamp", "direction", "message", "subprotocol"]), max_size=2)):
        del_or_null = draw(st.sampled_from(["del", "null", "num"]))
        if del_or_null == "del":
            obj.pop(key, None)
        else:
            obj[key] = None if del_or_null == "null" else 42
    if draw(st.booleans()):
        obj["extra"] = draw(_JSON)
    text = json.dumps(obj, ensure_ascii=draw(st.booleans()), separators=draw(st.sampled_from([(",", ":"), (", ", ": ")])))
    cut = draw(st.sampled_from([None, None, None, None, 1, 10, -2]))
    return text if cut is None else text[:cut]


@needs_speedups
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(jsonl_lines(), min_size=1, max_size=12), st.sampled_from([b"\n", b"\r\n"]), st.booleans())
def test_generated_json_lines_decode_as_the_general_reader_decodes_them(tmp_path, monkeypatch, lines, eol, final_eol):
    """Random frames, values, zones, spacing and broken lines give the same tables with and without C."""
    path = tmp_path / "gen.jsonl"
    anchor = [_line(f'[2,"{i}","Heartbeat",{{}}]') for i in range(3)]  # so that the file sniffs as JSON lines
    body = eol.join(line.encode() for line in anchor + lines) + (eol if final_eol else b"")
    path.write_bytes(body)
    _same(path, monkeypatch)


@needs_speedups
def test_chunks_of_a_file_keep_every_line_and_its_number(tmp_path, monkeypatch):
    """Cutting a file into tiny chunks (lines longer than a chunk included) loses no line or number."""
    lines = [_line(f'[2,"{i}","DataTransfer",{{"data":"{"x" * (i * 37 % 300)}"}}]') for i in range(200)]
    lines[50] = lines[50][:40]  # a broken line in the middle
    path = tmp_path / "many.jsonl"
    path.write_text("\n".join(lines))  # no newline at the end
    monkeypatch.setattr(jsonl, "CHUNK_BYTES", 1000)
    t = _same(path, monkeypatch)
    assert t.messages.height == 199
    assert t.weirds["source_pos"].to_list() == [51]
    assert t.messages["message_id"].to_list() == [str(i) for i in range(200) if i != 50]
    assert t.messages["source_pos"].to_list() == [i + 1 for i in range(200) if i != 50]


@needs_speedups
@pytest.mark.parametrize("blank", [False, True])
def test_a_lone_surrogate_breaks_its_line_whatever_its_neighbours(tmp_path, monkeypatch, blank):
    """A line with an unpaired \\ud800 escape is an unreadable line on both paths, blank lines or not (the
    Polars NDJSON reader alone would take it, the line-by-line check refuses it)."""
    lone = '{"timestamp":"2024-05-01T10:00:01Z","charge_point_id":"CP-1","message":"[2,\\"s\\",\\"H\\",{\\"k\\ud800\\":1}]"}'
    lines = [_line('[2,"a","Heartbeat",{}]'), lone, _line('[2,"b","Heartbeat",{}]')] + ([""] if blank else [])
    path = tmp_path / "lone.jsonl"
    path.write_text("\n".join(lines) + "\n")
    t = _same(path, monkeypatch)
    assert t.messages["message_id"].to_list() == ["a", "b"]
    assert t.weirds.select("source_pos", "reason").rows() == [(2, "unparsable-line")]


def _trace(raw: object = '[2,"a","Heartbeat",{}]', **fields: object) -> str:
    rec = {"schemaVersion": "1.1", "timestamp": "2024-05-01T10:00:00.5Z", "ocppVersion": "1.6", "transport": "json",
           "chargePointId": "CP-1", "direction": "cp-to-csms", "messageType": "CALL", "messageId": "a",
           "action": "Heartbeat", "payload": {}, "raw": raw, **fields}
    return json.dumps({k: v for k, v in rec.items() if v is not ...}, ensure_ascii=False)


TRACE_LINES = [
    _trace(),
    _trace(meta={"ocpptool": {"conn": "CP-1#2", "source": "x.pcap"}}),
    _trace(meta={"ocpptool": {"conn": 7}}),
    _trace(meta={"ocpptool": {"conn": None}}),
    _trace(meta={"ocpptool": "CP-1#3"}),
    _trace(meta={"other": {"conn": "z"}, "ocpptool": {"x": [1, {"conn": "no"}], "conn": "CP-1#4"}}),
    _trace(meta=[1, 2]),
    _trace(meta={"ocpp\\u0074ool": {"conn": "CP-1#5"}}),
    _trace(raw=...),  # no raw: the frame is rebuilt from the fields
    _trace(raw=None, messageType="CALLRESULT", payload={"status": "Accepted"}),
    _trace(raw='[3,"a",{"status":"Accepted"}]', direction="csms-to-cp", messageType="CALLRESULT"),
    _trace(raw='[4,"a","NotImplemented","",{}]', direction="csms-to-cp", messageType="CALLERROR"),
    _trace(raw='[2,"a","Heartbeat",{]', ocppVersion="2.0.1"),
    _trace(ocppVersion=None),
    _trace(timestamp="2024-05-01T12:00:00+02:00"),
    '{"schemaVersion":"1.1","timestamp":"2024-05-01T10:00:00Z","chargePointId":"CP-1","direction":"cp-to-csms","messageType":"CALL","raw":"[2,\\"b\\",\\"Heartbeat\\",{}]","meta":{"ocpptool":{"conn":"a"},"ocpptool":{"conn":"b"}}}',
    '{"schemaVersion":"1.1","timestamp":"2024-05-01T10:00:00Z"',
]


@needs_speedups
def test_odd_trace_records_decode_as_the_general_reader_decodes_them(tmp_path, monkeypatch):
    """Open OCPP Trace records (connection in meta.ocpptool.conn, raw missing or null, odd meta) give the
    same tables with and without the compiled splitter."""
    path = tmp_path / "odd.trace.jsonl"
    path.write_text("\n".join(TRACE_LINES) + "\n")
    fast = _same(path, monkeypatch, "trace")
    assert {"CP-1#2", "CP-1#4"} <= set(fast.messages["conn"].to_list())


@needs_speedups
def test_a_written_trace_reads_back_as_the_log_it_came_from(tmp_path, monkeypatch):
    """A fleet log written as an Open OCPP Trace and read back through the splitter gives the same messages."""
    from ocpptool.tables.writers import write_messages

    src = Path(__file__).parent.parent / "captures" / "fleet-demo.jsonl"
    t, _ = load([str(src)], progress=False)
    out = tmp_path / "fleet.trace.jsonl"
    write_messages(t.messages, str(out), "trace")
    back = _same(out, monkeypatch, None)
    cols = ["ts", "conn", "charge_point_id", "direction", "message_type", "message_id", "action", "payload",
            "error_code", "error_description", "call_index", "response_index"]
    assert_frame_equal(back.messages.select(cols), t.messages.select(cols))



def test_trace_records_hold_awkward_values_exactly(tmp_path):
    """Quotes, backslashes, control characters and non-ASCII text in ids, actions, charge points and error
    texts are escaped in the written trace: every record parses and gives back the values and the frame."""
    from ocpptool.tables.writers import trace_lines

    lines = [
        _line('[2,"a\\\\\\"b","Auth\u00e9",{"idTag":"x"}]', cp='CP "1"\\'),
        _line('[3,"a\\\\\\"b",{"status":"Accepted"}]', cp='CP "1"\\', direction="csms->cp"),
        _line('[2,"tab\\tid","DataTransfer",{"data":"\\u0001"}]', cp="CP-\u00e9"),
        _line('[4,"tab\\tid","GenericError","say \\"no\\"\\n",{"why":"x"}]', cp="CP-\u00e9", direction="csms->cp"),
    ]
    path = tmp_path / "awkward.jsonl"
    path.write_text("\n".join(lines) + "\n")
    t, _ = load([str(path)], progress=False)
    records = [orjson.loads(x) for x in trace_lines(t.messages).to_list()]
    assert [r["messageId"] for r in records] == ['a\\"b', 'a\\"b', "tab\tid", "tab\tid"]
    assert records[0]["chargePointId"] == 'CP "1"\\' and records[2]["chargePointId"] == "CP-\u00e9"
    assert records[3]["error"] == {"code": "GenericError", "description": 'say "no"\n', "details": {"why": "x"}}
    for rec, frame in zip(records, ['[2,"a\\\\\\"b","Auth\u00e9",{"idTag":"x"}]', '[3,"a\\\\\\"b",{"status":"Accepted"}]',
                                    '[2,"tab\\tid","DataTransfer",{"data":"\\u0001"}]',
                                    '[4,"tab\\tid","GenericError","say \\"no\\"\\n",{"why":"x"}]'], strict=True):
        assert orjson.loads(rec["raw"]) == orjson.loads(frame)


@needs_speedups
def test_frames_stored_as_arrays_keep_their_text_as_written(tmp_path, monkeypatch):
    """A frame stored as a JSON array (not as text) is decoded from its bytes in the log on both paths:
    spacing kept, and backslashes intact (Polars' own re-serialisation of nested values drops their
    escaping, which turned C:\\new into a newline)."""
    lines = [
        '{"timestamp":"2024-05-01T10:00:00Z","charge_point_id":"CP-1","direction":"cp->csms",'
        '"message":[2, "a", "DataTransfer", {"vendorId": "x", "data": "C:\\\\new"}]}',
        '{"timestamp":"2024-05-01T10:00:01Z","charge_point_id":"CP-1","direction":"csms->cp",'
        '"message":[3,"a",{"status":"Accepted"}]}',
        '{"meta":{"message":[9]},"timestamp":"2024-05-01T10:00:02Z","charge_point_id":"CP-1",'
        '"direction":"cp->csms","message":[2,"b","Heartbeat",{}]}',
    ]
    path = tmp_path / "arrays.jsonl"
    path.write_text("\n".join(lines) + "\n")
    t = _same(path, monkeypatch)
    assert t.messages["payload"].to_list() == ['{"vendorId": "x", "data": "C:\\\\new"}', '{"status":"Accepted"}', "{}"]
    assert orjson.loads(t.messages["payload"][0])["data"] == "C:\\new"


@needs_speedups
def test_a_log_the_splitter_cannot_take_is_left_whole_to_the_general_reader(tmp_path, monkeypatch):
    """After 256 lines it cannot take (here: every message id holds an escaped quote), the splitter hands
    the whole chunk over at once, and the tables are the general reader's."""
    keys = (b"timestamp", b"charge_point_id", b"direction", b"message", b"subprotocol", None)
    lines = [_line(f'[2,"q\\"{i}","Heartbeat",{{}}]') for i in range(300)] + [_line('[2,"t","Heartbeat",{}]')]
    chunk = ("\n".join(lines) + "\n").encode()
    assert _speedups.split_jsonl(chunk, keys, 1)[2] == -1
    assert _speedups.split_jsonl(chunk[-2000:].split(b"\n", 1)[1], keys, 1)[2] > 0
    path = tmp_path / "quotes.jsonl"
    path.write_bytes(chunk)
    t = _same(path, monkeypatch)
    assert t.messages.height == 301


def test_without_the_splitter_json_lines_still_decode_and_the_user_is_told(tmp_path, monkeypatch):
    """Where the extension was not built, JSON lines decode with Polars alone and a note (once, for two
    files) says why it is slower and how to get the splitter; --version says whether it is on."""
    import subprocess
    import sys

    for name in ("a.jsonl", "b.jsonl"):
        (tmp_path / name).write_text(_line('[2,"1","Heartbeat",{}]') + "\n")
    monkeypatch.setattr(jsonl, "_speedups", None)
    t, _ = load([str(tmp_path)], progress=False)
    assert t.messages.height == 2
    assert [n for n in t.notes if "compiled splitter" in n] == [jsonl._NOT_BUILT]
    out = subprocess.run([sys.executable, "-m", "ocpptool", "--version"], capture_output=True, text=True, check=True)
    assert "compiled JSON-lines splitter: " + ("on" if _speedups is not None else "not built") in out.stdout
    if _speedups is not None:  # the analysis' payload walker lives in the same extension
        assert "payload walker: on" in out.stdout
