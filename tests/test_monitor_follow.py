"""`monitor --follow`, the recorder's rotation and the monitor's command line."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from ocpptool.analysis import run as analyse
from ocpptool.cli import main
from ocpptool.monitor import MonitorOptions, run_monitor
from ocpptool.monitor.events import Seen
from ocpptool.monitor.recorder import Recorder
from ocpptool.pipeline import load
from ocpptool.tables.writers import frame_text
from ocpptool.testing.monitor import CollectView

DEMO = Path(__file__).parent.parent / "captures" / "fleet-demo.jsonl"


async def _until(cond, timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


def test_follow_reads_a_growing_rotated_and_truncated_file_and_finds_what_analyze_finds(tmp_path):
    """A log written in pieces (a line cut in half between polls), then rotated, then truncated, reaches the
    view frame by frame, and the live findings are the ones `analyze` reports for the whole file."""
    lines = DEMO.read_bytes().splitlines(keepends=True)
    path = tmp_path / "csms.log.jsonl"
    half = len(lines[300]) // 2

    async def main() -> CollectView:
        path.write_bytes(b"".join(lines[:300]) + lines[300][:half])
        o = MonitorOptions(follow=str(path), analyse_every_s=0.3, min_severity="warning")
        view = CollectView()
        stop = asyncio.Event()
        task = asyncio.create_task(run_monitor(o, view, stop))
        await _until(lambda: len(view.infos) == 300)
        with path.open("ab") as fh:
            fh.write(lines[300][half:] + b"".join(lines[301:500]))
        await _until(lambda: len(view.infos) == 500)
        os.rename(path, tmp_path / "csms.log.1.jsonl")
        path.write_bytes(b"".join(lines[500:700]))
        await _until(lambda: len(view.infos) == 700)
        path.write_bytes(b"")  # truncated ...
        with path.open("ab") as fh:  # ... and written again
            fh.write(b"".join(lines[700:]))
        await _until(lambda: len(view.infos) == len(lines))
        await asyncio.sleep(0.5)  # one more analysis run over the last frames
        stop.set()
        view.stats = await task
        return view

    view = asyncio.run(asyncio.wait_for(main(), 60))
    def message(line: bytes) -> str | None:
        try:
            return orjson.loads(line)["message"]
        except orjson.JSONDecodeError:
            return None  # the demo holds one broken line on purpose: it reaches the view as a weird

    want = [message(x) for x in lines]
    assert [i.seen.text for i, w in zip(view.infos, want, strict=True) if w is not None] == [w for w in want if w]
    assert [i.message_type for i, w in zip(view.infos, want, strict=True) if w is None] == ["weird"]
    assert any("rotated" in n for n in view.notices) and any("truncated" in n for n in view.notices)
    tables, _ = load([str(DEMO)], progress=False)
    full = analyse(tables).findings
    expected = sorted({(f["code"], f["charge_point_id"]) for f in full.iter_rows(named=True) if f["severity"] != "info"})
    # live findings judge the traffic so far: everything analyze finds in the end was reported (a transaction
    # open for hours may also have been reported as orphaned before its stop arrived)
    assert set(expected) <= {(f["code"], f["charge_point_id"]) for f in view.found}
    rows = view.rows
    assert rows and all(r.messages > 0 for r in rows.values())


def test_recorder_rotates_by_size_and_by_day_and_every_piece_reads_back(tmp_path):
    """A small --rotate-size splits the recording into several files, a new UTC day starts a new file, and
    `decode` reads every frame back from the pieces with the responses' actions."""
    path = tmp_path / "rec.trace.jsonl"
    rec = Recorder(path, max_bytes=4_000, daily=True)
    t0 = datetime.now(UTC)
    for i in range(60):
        ts = t0 + timedelta(seconds=i)
        rec.write(Seen(ts, "CP-1#1", "CP-1", "cp->csms", "ocpp1.6", f'[2,"m{i}","Heartbeat",{{}}]'))
        rec.write(Seen(ts + timedelta(milliseconds=2), "CP-1#1", "CP-1", "csms->cp", "ocpp1.6", f'[3,"m{i}",{{"currentTime":"2024-01-01T00:00:00Z"}}]'))
    size_pieces = len(rec.rotated) + 1
    rec.write(Seen(t0 + timedelta(days=1), "CP-1#1", "CP-1", "cp->csms", "ocpp1.6", '[2,"late","Heartbeat",{}]'))
    rec.close()
    files = sorted(str(p) for p in tmp_path.iterdir())
    assert size_pieces >= 3 and len(files) == size_pieces + 1
    assert all(os.path.getsize(f) <= 4_000 for f in files)
    assert path.read_text().count("\n") == 1  # the new day's frame is alone in the current file
    tables, _ = load(files, progress=False)
    assert tables.messages.height == 121 and tables.weirds.height == 0
    assert set(tables.messages["action"].to_list()) == {"Heartbeat"}


def test_monitor_follow_cli_prints_frames_and_findings(tmp_path, capsys):
    """`ocpptool monitor --follow FILE --no-tui` prints one line per frame and the findings as they appear."""
    rc = main(["monitor", "--follow", str(DEMO), "--no-tui", "--duration", "2", "--analyze-every", "0.5"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    lines = out.splitlines()
    assert sum(1 for x in lines if not x.startswith("FINDING")) == 839
    assert any(x.startswith("FINDING error meter-regression") for x in lines)
    assert "839 frames" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "either --listen"),
        (["--listen", "nope", "--upstream", "ws://x"], "--listen 'nope'"),
        (["--listen", ":9000"], "--listen needs --upstream"),
        (["--listen", ":9000", "--upstream", "http://x"], "ws:// or wss://"),
        (["--follow", "/does/not/exist"], "no such file"),
        (["--follow", "x", "--listen", ":1"], "either --listen"),
        (["--listen", ":9000", "--upstream", "ws://x", "--cert", "/no/cert.pem"], "--cert /no/cert.pem"),
        (["--listen", ":9000", "--upstream", "ws://x", "--rotate-size", "lots"], "--rotate-size"),
        (["--listen", ":9000", "--upstream", "ws://x", "--min-severity", "loud"], "--min-severity"),
    ],
)
def test_bad_monitor_options_give_one_line_and_exit_2(args, message, capsys):
    """Unusable monitor options are refused with one line on stderr and exit status 2."""
    assert main(["monitor", "--no-tui", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_following_a_capture_is_refused_clearly(tmp_path, capsys):
    """A packet capture cannot be followed: one line says so."""
    cap = next((Path(__file__).parent / "captures").glob("*.pcapng"))
    assert main(["monitor", "--no-tui", "--follow", str(cap)]) == 2
    assert "packet captures cannot be followed" in capsys.readouterr().err


def test_live_analysis_keeps_history_between_runs_and_finds_what_analyze_finds():
    """Fed in two deltas, the live analysis sees each charge point's whole history, so its findings over
    both runs are the ones `analyze` reports for the whole file; only the newest `keep` rows are kept."""
    from ocpptool.monitor.live import _STORES, IncrementalAnalysis

    tables, _ = load([str(DEMO)], progress=False)
    msgs = tables.messages.sort("idx")
    seen = [Seen(r["ts"], r["conn"], r["charge_point_id"], r["direction"], "ocpp1.6", r["_t"])
            for r in msgs.with_columns(_t=frame_text()).iter_rows(named=True)]  # fmt: skip
    live = IncrementalAnalysis(min_severity="warning")
    half = len(seen) // 2
    found = []
    for part in (seen[:half], seen[half:]):
        for s in part:
            live.add(s)
        found += live.analyse()
    found += live.analyse(everything=True)
    expected = {(f["code"], f["charge_point_id"]) for f in analyse(tables).findings.iter_rows(named=True)
                if f["severity"] != "info"}  # fmt: skip
    assert expected <= {(f["code"], f["charge_point_id"]) for f in found}
    assert sum(len(d) for d in _STORES[live.store].values()) == len(seen)
    small = IncrementalAnalysis(keep=10)
    for s in seen:
        small.add(s)
    small.analyse()
    assert max(len(d) for d in _STORES[small.store].values()) == 10
