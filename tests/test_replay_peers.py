"""Replay against real peers on loopback: the `ocpp` package's CSMS and charge points over websockets."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
from datetime import datetime
from pathlib import Path

import orjson
import pytest
from websockets.asyncio.server import serve

from ocpptool.pipeline import load
from ocpptool.replay.command import ReplayArgs, check, execute, make_plan
from ocpptool.replay.defaults import default_response
from ocpptool.replay.plan import build_plan
from ocpptool.replay.runtime import Control, Event
from ocpptool.testing import ChargerConfig, Csms, CsmsCall, Session, record_fleet, run_charger

pytestmark = pytest.mark.timeout(60)

CSMS_CALLS_16 = (CsmsCall("ChangeConfiguration", after=0.05), CsmsCall("GetConfiguration", after=0.1))
FLEET = [
    ChargerConfig("CP-A", connectors=2, heartbeats=1, csms_calls=CSMS_CALLS_16,
                  sessions=(Session(1, "TAG-A1", 0.0, 3), Session(2, "TAG-A2", 0.05, 3))),
    ChargerConfig("CP-B", heartbeats=1, sessions=(Session(1, "TAG-B", 0.0, 2),)),
    ChargerConfig("CS-C", version="2.0.1", heartbeats=1, sessions=(Session(1, "TAG-C", 0.0, 2),),
                  csms_calls=(CsmsCall("GetVariables", after=0.05),)),
]  # fmt: skip


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("rec") / "csms.jsonl"
    record_fleet(FLEET, path)
    return path


def frames(path: Path, direction: str = "cp->csms", cp: str | None = None) -> list[list]:
    out = []
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if rec["direction"] == direction and (cp is None or rec["charge_point_id"] == cp):
            out.append(json.loads(rec["message"]))
    return out


def calls(path: Path, cp: str, direction: str = "cp->csms") -> list[list]:
    return [f for f in frames(path, direction, cp) if f[0] == 2]


def run_replay(path: Path, sink=None, **kw):
    args = ReplayArgs([str(path)], **kw)
    opts = check(args)
    return make_plan(args, progress=False), opts


def _times(payload, out):
    if isinstance(payload, dict):
        for k, v in payload.items():
            if k == "timestamp":
                out.append(datetime.fromisoformat(v.replace("Z", "+00:00")))
            else:
                _times(v, out)
    elif isinstance(payload, list):
        for v in payload:
            _times(v, out)
    return out


def test_a_real_csms_receives_the_recorded_chargers_message_by_message(recorded, tmp_path):
    """Every recorded charger CALL reaches a real CSMS in order, its transaction ids carried into later messages."""
    live_log = tmp_path / "live.jsonl"
    events: list[Event] = []

    async def main():
        async with Csms(live_log, FLEET, first_transaction_id=9001) as csms:
            plan, opts = run_replay(recorded, target=csms.url, speed="max")
            result = await execute(plan, opts, Control(opts.speed), events.append)
            await csms.wait_idle(2)
            return result, csms.issued_transaction_ids

    result, issued = asyncio.run(main())
    assert result.divergences == [], [d.line() for d in result.divergences]
    recorded_ids = {cp: [f[2]["transactionId"] for f in frames(recorded, "csms->cp", cp) if f[0] == 3
                         and "transactionId" in f[2]] for cp in ("CP-A", "CP-B")}  # fmt: skip
    for cfg in FLEET:
        rec, live = calls(recorded, cfg.id), calls(live_log, cfg.id)
        assert [c[2] for c in live] == [c[2] for c in rec], cfg.id
        shifts = set()
        for r, v in zip(rec, live, strict=True):
            assert v[1] != r[1]  # fresh message ids by default
            rt, vt = _times(r[3], []), _times(v[3], [])
            shifts |= {b - a for a, b in zip(rt, vt, strict=True)}
            if cfg.version == "1.6" and "transactionId" in r[3]:
                issued_here = issued[cfg.id][recorded_ids[cfg.id].index(r[3]["transactionId"])]
                assert v[3] == {**r[3], "transactionId": issued_here, **({"timestamp": v[3]["timestamp"]} if "timestamp" in r[3] else {}),
                                **({"meterValue": v[3]["meterValue"]} if "meterValue" in r[3] else {})}  # fmt: skip
            elif cfg.version == "2.0.1" and r[2] == "TransactionEvent":
                assert v[3]["transactionInfo"] == r[3]["transactionInfo"]  # chosen by the charger: kept
        assert len(shifts) == 1, (cfg.id, shifts)  # one offset for every payload clock
        assert next(iter(shifts)).total_seconds() > 0
    assert set(issued["CP-A"]).isdisjoint(recorded_ids["CP-A"])
    # the CSMS's own calls were answered from the recording
    answered = [f[2] for f in frames(live_log, "cp->csms", "CP-A") if f[0] == 3]
    assert answered == [f[2] for f in frames(recorded, "cp->csms", "CP-A") if f[0] == 3]
    assert len(answered) == len(CSMS_CALLS_16)
    assert not result.uncovered
    assert {e.kind for e in events} >= {"state", "sent", "received", "done"}


def test_a_different_csms_answer_is_reported_as_a_divergence(recorded, tmp_path):
    """Mapping a tag to one the live CSMS blocks shows up as status divergences on that charger only."""

    async def main():
        async with Csms(tmp_path / "live.jsonl", FLEET) as csms:
            plan, opts = run_replay(recorded, target=csms.url, speed="max", id_tag_map=["TAG-B=BLOCKED-1"])
            return await execute(plan, opts, Control(opts.speed), lambda e: None)

    result = asyncio.run(main())
    kinds = {(d.charge_point_id, d.kind, d.action, d.recorded, d.live) for d in result.divergences}
    assert ("CP-B", "status", "Authorize", "Accepted", "Blocked") in kinds
    assert {d.charge_point_id for d in result.divergences} == {"CP-B"}


def test_a_real_charge_point_receives_the_recorded_csms_calls(recorded):
    """A real `ocpp` charge point connecting to --as csms is answered from the recording and gets its CSMS calls."""
    plan, opts = run_replay(recorded, role="csms", listen="127.0.0.1:0", speed="max", cp=["CP-A", "CS-C"])
    opts.linger_s = 0.3

    async def main():
        ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        server = asyncio.create_task(execute(plan, opts, Control(opts.speed), lambda e: None, ready))
        port = await asyncio.wait_for(ready, 5)
        url = f"ws://127.0.0.1:{port}/ocpp"
        reports = await asyncio.gather(*(run_charger(c.__class__(**{**c.__dict__, "csms_calls": ()}), url)
                                         for c in FLEET if c.id in ("CP-A", "CS-C")))  # fmt: skip
        return await asyncio.wait_for(server, 20), {r.id: r for r in reports}

    result, reports = asyncio.run(main())
    assert reports["CP-A"].csms_calls_received == len(CSMS_CALLS_16)
    assert reports["CS-C"].csms_calls_received == 1
    recorded_tx = [f[2]["transactionId"] for f in frames(recorded, "csms->cp", "CP-A") if f[0] == 3 and "transactionId" in f[2]]
    assert reports["CP-A"].transactions == recorded_tx  # the ids this replay handed out: the recorded ones
    assert not [d for d in result.divergences if d.kind in ("error", "status", "missing-response")]
    sent = [orjson.loads(t) for _, _, cp, d, _, t in result.transcript.rows if d == "csms->cp" and cp == "CP-A"]
    assert [f[2] for f in sent if f[0] == 2] == [c.action for c in CSMS_CALLS_16]


def test_a_dropped_connection_is_reopened_and_nothing_is_lost(recorded):
    """When the CSMS drops the connection mid-session, replay reconnects and resends the unanswered call."""
    plan, opts = run_replay(recorded, target="ws://127.0.0.1:1/ocpp", speed="max", cp=["CP-A"])
    opts.backoff_s = 0.05
    script = plan.scripts[0]
    per_conn: list[list[str]] = []

    async def handler(ws):
        got: list[str] = []
        per_conn.append(got)
        async for text in ws:
            msg = orjson.loads(text)
            if msg[0] != 2:
                continue
            got.append(msg[2])
            if len(per_conn) == 1 and len(got) == 5:
                ws.transport.abort()  # no close handshake: the TCP connection just goes away
                return
            body = default_response("1.6", msg[2])
            if msg[2] == "StartTransaction":
                body["transactionId"] = 40 + len(got)
            await ws.send(orjson.dumps([3, msg[1], body]).decode())

    async def main():
        async with serve(handler, "127.0.0.1", 0, subprotocols=["ocpp1.6"]) as server:  # type: ignore[list-item]
            opts.target = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ocpp"
            return await execute(plan, opts, Control(opts.speed), lambda e: None)

    result = asyncio.run(main())
    assert len(per_conn) == 2
    assert per_conn[0][:-1] + per_conn[1] == [e.action for e in script.charger_calls]
    assert result.stats["CP-A"].reconnects == 1
    assert not [d for d in result.divergences if d.kind in ("not-sent", "missing-response")]


def _serve_in_thread(log: Path):
    """A real CSMS on its own loop in a thread, for tests that run the CLI as a child process."""
    loop = asyncio.new_event_loop()
    csms = Csms(log, FLEET)
    started = threading.Event()

    def run():
        asyncio.set_event_loop(loop)
        loop.run_until_complete(csms.__aenter__())
        started.set()
        loop.run_forever()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert started.wait(10)

    def stop():
        asyncio.run_coroutine_threadsafe(csms.aclose(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        t.join(10)
        loop.close()

    return csms, stop


def cli(*args):
    return subprocess.run([sys.executable, "-m", "ocpptool", "replay", *args], capture_output=True, text=True, timeout=60)


def test_the_cli_replays_records_and_reports_and_the_recording_reads_back(recorded, tmp_path):
    """`replay --record` writes an Open OCPP Trace that decodes and replays again; --report is JSON."""
    csms, stop = _serve_in_thread(tmp_path / "live.jsonl")
    try:
        out = cli(str(recorded), "--target", csms.url, "--speed", "max", "--no-tui",
                  "--record", str(tmp_path / "live.trace.jsonl"), "--report", str(tmp_path / "r.json"))
    finally:
        stop()
    assert out.returncode == 0, out.stderr
    assert "divergences: none" in out.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["divergences"] == [] and set(report["charge_points"]) == {"CP-A", "CP-B", "CS-C"}
    tables = load([str(tmp_path / "live.trace.jsonl")], progress=False)[0]
    assert tables.messages.height == report["frames"]
    assert tables.weirds.height == 0
    again = build_plan(tables.messages)
    original = build_plan(load([str(recorded)], progress=False)[0].messages)
    assert [[e.action for e in s.charger_calls] for s in again.scripts] == [
        [e.action for e in s.charger_calls] for s in original.scripts]
    analysed = subprocess.run([sys.executable, "-m", "ocpptool", "analyze", str(tmp_path / "live.trace.jsonl"),
                               "--format", "json"], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert analysed.returncode == 0, analysed.stderr
    assert json.loads(analysed.stdout)["transactions"]


def test_dry_run_prints_the_plan_and_connects_to_nothing(recorded):
    """--dry-run lists every charge point's calls and never opens a connection to the target."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    out = cli(str(recorded), "--target", f"ws://127.0.0.1:{port}/ocpp", "--dry-run", "--cp-prefix", "lab-")
    assert out.returncode == 0, out.stderr
    assert "CP-A as lab-CP-A [ocpp1.6]" in out.stdout and "CS-C as lab-CS-C [ocpp2.0.1]" in out.stdout
    assert "StartTransaction" in out.stdout
    with pytest.raises(TimeoutError):
        listener.accept()
    listener.close()


@pytest.mark.parametrize("bad", [
    ["--target", "http://127.0.0.1:9000/ocpp"], ["--target", "ws:///ocpp"], [], ["--speed", "0", "--target", "ws://h/"],
    ["--as", "csms"], ["--as", "csms", "--target", "ws://h/"], ["--id-tag-map", "X", "--target", "ws://h/"],
    ["--target", "ws://h/", "--ca", "/nonexistent.pem"], ["--target", "ws://h/", "--record", "/nonexistent/x.trace.jsonl"],
    ["--as", "csms", "--listen", "127.0.0.1:99999"],
])  # fmt: skip
def test_bad_targets_and_options_get_one_line_and_exit_2(recorded, bad):
    """Replay refuses what it cannot safely do with one line on stderr and exit 2, before connecting."""
    out = cli(str(recorded), *bad)
    assert out.returncode == 2, out
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("ocpptool: error:"), out.stderr


def test_an_unreachable_target_ends_with_exit_4_after_the_report_is_written(recorded, tmp_path):
    """When a charge point cannot reach the target it gives up after --reconnects retries, the report still
    lists every call as not sent, and the command ends with one error line and exit status 4."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens here: every connect is refused
    report = tmp_path / "report.json"
    out = cli(str(recorded), "--target", f"ws://127.0.0.1:{port}/ocpp", "--speed", "max", "--no-tui", "--cp", "CP-A",
              "--reconnects", "1", "--report", str(report))  # fmt: skip
    assert out.returncode == 4, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("ocpptool: error: 1 of 1 charge points could not reach") and "CP-A" in last, out.stderr
    doc = json.loads(report.read_text())
    not_sent = [d for d in doc["divergences"] if d["kind"] == "not-sent"]
    assert len(not_sent) == len(calls(recorded, "CP-A")) > 0
    assert {d["kind"] for d in doc["divergences"]} <= {"not-sent", "missing-call"}  # recorded CSMS calls never came


def test_a_csms_call_the_recording_did_not_cover_gets_a_valid_default_and_is_reported(recorded, tmp_path):
    """A live CSMS call absent from the recording is answered schema-valid, counted as not covered and as extra."""
    extra = [ChargerConfig("CP-B", csms_calls=(CsmsCall("TriggerMessage", after=0.01),))]
    live_log = tmp_path / "live.jsonl"

    async def main():
        async with Csms(live_log, extra) as csms:
            plan, opts = run_replay(recorded, target=csms.url, speed="max", cp=["CP-B"])
            return await execute(plan, opts, Control(opts.speed), lambda e: None)

    result = asyncio.run(main())
    assert result.uncovered == {"TriggerMessage": 1}
    [answer] = [f for f in frames(live_log, "cp->csms", "CP-B") if f[0] == 3]
    assert answer[2] == {"status": "Accepted"}  # the minimal valid TriggerMessage.conf
    assert [(d.kind, d.action) for d in result.divergences] == [("extra-call", "TriggerMessage")]


async def _answering_server(handler_seen: list, ssl_context=None):
    async def handler(ws):
        handler_seen.append(ws)
        async for text in ws:
            msg = orjson.loads(text)
            if msg[0] == 2:
                await ws.send(orjson.dumps([3, msg[1], default_response("1.6", msg[2])]).decode())

    return await serve(handler, "127.0.0.1", 0, subprotocols=["ocpp1.6"], ssl=ssl_context)  # type: ignore[list-item]


def test_basic_auth_is_sent_per_charge_point_from_the_auth_file(recorded, tmp_path):
    """--auth-file gives each charge point its own Basic credentials (user = the charge point id on the wire)."""
    auth = tmp_path / "auth.txt"
    auth.write_text("# lab credentials\nlab-CP-A:s3cret\n*:fallback\n")
    seen: list = []

    async def main():
        server = await _answering_server(seen)
        try:
            url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ocpp"
            plan, opts = run_replay(recorded, target=url, speed="max", cp=["CP-A", "CP-B"], cp_prefix="lab-",
                                    auth_file=str(auth))  # fmt: skip
            await execute(plan, opts, Control(opts.speed), lambda e: None)
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(main())
    import base64

    got = {ws.request.path: base64.b64decode(ws.request.headers["Authorization"].split()[1]).decode() for ws in seen}
    assert got == {"/ocpp/lab-CP-A": "lab-CP-A:s3cret", "/ocpp/lab-CP-B": "lab-CP-B:fallback"}


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl."""
    import shutil

    if not shutil.which("openssl"):
        pytest.skip("openssl not installed")
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=test-ca", cwd=d)  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}", cwd=d)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.pem", "-days", "2", *(["-extfile", "san.ext"] if name == "server" else []), cwd=d)  # fmt: skip
    return d


def test_wss_with_a_custom_ca_and_a_client_certificate(recorded, pki):
    """Against a wss:// CSMS that requires client certificates, --ca/--cert/--key connect and replay everything."""
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki / "server.pem", pki / "server.key")
    ctx.load_verify_locations(pki / "ca.pem")
    ctx.verify_mode = ssl.CERT_REQUIRED
    seen: list = []

    async def main():
        server = await _answering_server(seen, ctx)
        try:
            url = f"wss://127.0.0.1:{server.sockets[0].getsockname()[1]}/ocpp"
            plan, opts = run_replay(recorded, target=url, speed="max", cp=["CP-B"], ca=str(pki / "ca.pem"),
                                    cert=str(pki / "client.pem"), key=str(pki / "client.key"))  # fmt: skip
            return await execute(plan, opts, Control(opts.speed), lambda e: None)
        finally:
            server.close()
            await server.wait_closed()

    result = asyncio.run(main())
    peer = seen[0].transport.get_extra_info("peercert")
    assert dict(x[0] for x in peer["subject"])["commonName"] == "client"
    assert result.stats["CP-B"].sent == len(calls(recorded, "CP-B")) + len(calls(recorded, "CP-B", "csms->cp"))
    assert not [d for d in result.divergences if d.kind in ("not-sent", "missing-response")]


def test_listening_on_a_port_already_taken_is_one_line_and_exit_2(recorded):
    """--as csms on a busy port says so in one line instead of a traceback."""
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        out = cli(str(recorded), "--as", "csms", "--listen", f"127.0.0.1:{busy.getsockname()[1]}", "--no-tui")
    finally:
        busy.close()
    assert out.returncode == 2, out
    assert out.stderr.startswith("ocpptool: error: --listen") and out.stderr.count("\n") == 1, out.stderr


def test_the_cli_as_csms_serves_a_real_charge_point_and_records_it(recorded, tmp_path):
    """`replay --as csms --listen` answers a real charge point, sends it the recorded calls and records the session."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    trace = tmp_path / "bench.trace.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "ocpptool", "replay", str(recorded), "--as", "csms", "--cp", "CP-A",
                             "--listen", f"127.0.0.1:{port}", "--speed", "max", "--no-tui", "--record", str(trace)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        cfg = next(c for c in FLEET if c.id == "CP-A")
        cfg = cfg.__class__(**{**cfg.__dict__, "csms_calls": ()})

        async def charger():
            for _ in range(100):  # the CLI needs a moment to read the recording and listen
                try:
                    return await run_charger(cfg, f"ws://127.0.0.1:{port}/ocpp")
                except OSError:
                    await asyncio.sleep(0.1)
            raise AssertionError("replay --as csms never listened")

        report = asyncio.run(charger())
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert report.csms_calls_received == len(CSMS_CALLS_16)
    assert "replay as-csms: 1 charge points" in out
    messages = load([str(trace)], progress=False)[0].messages
    sent = messages.filter((messages["direction"] == "csms->cp") & (messages["message_type"] == "CALL"))
    assert sent["action"].to_list() == [c.action for c in CSMS_CALLS_16]


def test_as_csms_stops_after_the_idle_timeout_when_no_charger_comes(recorded):
    """`replay --as csms --idle-timeout 1` with no charger connecting ends by itself after about a second."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    out = cli(str(recorded), "--as", "csms", "--listen", f"127.0.0.1:{port}", "--idle-timeout", "1", "--no-tui")
    assert out.returncode == 0, out.stderr
    assert "note: stopped after 1 s without traffic" in out.stdout
    bad = cli(str(recorded), "--as", "csms", "--listen", f"127.0.0.1:{port}", "--idle-timeout", "0", "--no-tui")
    assert bad.returncode == 2 and "--idle-timeout" in bad.stderr
