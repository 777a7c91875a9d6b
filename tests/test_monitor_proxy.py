"""The monitor's recording proxy with real websockets / ocpp peers on loopback."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path

import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Frame, Opcode

from ocpptool.pipeline import load
from ocpptool.testing import ChargerConfig, Csms, CsmsCall, Faults, JsonlRecorder
from ocpptool.testing.monitor import monitor_running, run_recorded_charger


class SeeingConnection(ServerConnection):
    """A test CSMS connection that also notes the pings and pongs it receives."""

    def process_event(self, event):
        if isinstance(event, Frame) and event.opcode in (Opcode.PING, Opcode.PONG):
            self.controls = getattr(self, "controls", []) + [(event.opcode.name, bytes(event.data))]
        super().process_event(event)


@contextlib.asynccontextmanager
async def upstream_server(handler, **kw):
    kw.setdefault("subprotocols", ["ocpp1.6", "ocpp2.0.1"])
    kw.setdefault("close_timeout", 1)
    async with serve(handler, "127.0.0.1", 0, ping_interval=None, create_connection=SeeingConnection, **kw) as srv:
        yield f"ws://127.0.0.1:{srv.sockets[0].getsockname()[1]}/ocpp"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_relays_text_binary_ping_and_close_unchanged():
    """Text and binary frames, pings, the subprotocol choice, the path, the Authorization header and a close
    code with its reason all reach the other side exactly as sent."""
    seen: dict = {}
    texts = ['[2,"a1","Heartbeat",{}]', '  [2, "é\\u00e9", "DataTransfer", {"vendorId":"x","data":"∑ 😀"}] ']

    async def csms(ws):
        seen["path"], seen["auth"], seen["sub"] = ws.request.path, ws.request.headers.get("Authorization"), ws.subprotocol
        seen["got"] = [await ws.recv() for _ in range(3)]
        await ws.send('[3,"a1",{"currentTime":"2024-01-01T00:00:00Z"}]')
        await ws.send(b"\x00\xffbin")
        with contextlib.suppress(ConnectionClosed):
            await ws.recv()
        seen["close"] = (ws.close_code, ws.close_reason)
        seen["controls"] = getattr(ws, "controls", [])

    async def main():
        async with upstream_server(csms, subprotocols=["ocpp1.6"]) as url, monitor_running(url) as (proxy, view):
            auth = "Basic " + base64.b64encode(b"CP-7:pw").decode()
            async with connect(f"ws://127.0.0.1:{proxy.port}/CP-7", subprotocols=["ocpp2.0.1", "ocpp1.6"],
                               additional_headers={"Authorization": auth}, ping_interval=None) as ws:
                assert ws.subprotocol == "ocpp1.6"
                for t in texts:
                    await ws.send(t)
                await ws.send(b"\x01\x02")
                pong = await ws.ping(b"hello")
                await asyncio.wait_for(pong, 5)
                got = [await ws.recv(), await ws.recv()]
                await ws.close(4001, "bye now")
            for _ in range(50):
                if "close" in seen:
                    break
                await asyncio.sleep(0.05)
        return auth, got, view

    auth, got, view = run(main())
    assert seen["path"] == "/ocpp/CP-7" and seen["auth"] == auth and seen["sub"] == "ocpp1.6"
    assert seen["got"] == [*texts, b"\x01\x02"]
    assert got == ['[3,"a1",{"currentTime":"2024-01-01T00:00:00Z"}]', b"\x00\xffbin"]
    assert ("PING", b"hello") in seen["controls"]
    assert seen["close"] == (4001, "bye now")
    closed = [e for e in view.events if e.kind == "closed"]
    assert closed and closed[0].code == 4001 and "charger" in closed[0].detail


def test_csms_close_code_reaches_the_charger():
    """A close started by the CSMS reaches the charger with its code and reason."""

    async def csms(ws):
        await ws.recv()
        await ws.close(1012, "service restart")

    async def main():
        async with upstream_server(csms) as url, monitor_running(url) as (proxy, _), \
                connect(f"ws://127.0.0.1:{proxy.port}/CP-1", subprotocols=["ocpp1.6"], ping_interval=None) as ws:
            await ws.send('[2,"1","Heartbeat",{}]')
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
            return ws.close_code, ws.close_reason

    assert run(main()) == (1012, "service restart")


def _frames(path: Path) -> list[tuple[str, str, str]]:
    out = []
    for line in path.read_bytes().splitlines():
        r = orjson.loads(line)
        out.append((r["charge_point_id"], r["direction"], r["message"]))
    return out


def test_recording_equals_what_both_ends_saw(tmp_path):
    """With real ocpp chargers (1.6 and 2.0.1) and CSMS, every frame each end saw is in the recording, in
    order and unaltered, and `analyze` finds the same anomalies in the recording as in the CSMS's log."""
    from ocpptool.analysis import run as analyse

    cfgs = [ChargerConfig("CP-A", faults=Faults(meter_backwards_at=2, callerror_action="MeterValues")),
            ChargerConfig("CP-B", version="2.0.1", csms_calls=(CsmsCall("GetVariables"),))]
    rec = tmp_path / "rec.trace.jsonl"

    async def main():
        async with Csms(tmp_path / "csms.jsonl", cfgs) as csms, monitor_running(csms.url, record=str(rec)) as (proxy, _):
            log = JsonlRecorder(tmp_path / "chargers.jsonl")
            await asyncio.gather(*(run_recorded_charger(c, f"ws://127.0.0.1:{proxy.port}", log) for c in cfgs))
            log.close()
            await csms.wait_idle()

    run(main())
    tables, _ = load([str(rec)], progress=False)
    raw = [orjson.loads(x) for x in rec.read_bytes().splitlines()]
    rec_frames = [(r["chargePointId"], "cp->csms" if r["direction"] == "cp-to-csms" else "csms->cp", r["raw"]) for r in raw]
    for end in ("csms.jsonl", "chargers.jsonl"):
        want = _frames(tmp_path / end)
        for cp in ("CP-A", "CP-B"):
            for d in ("cp->csms", "csms->cp"):
                assert [f for f in rec_frames if f[:2] == (cp, d)] == [f for f in want if f[:2] == (cp, d)], (end, cp, d)
    assert tables.weirds.height == 0
    assert tables.messages.filter(tables.messages["message_type"] != "CALL")["action"].null_count() == 0
    direct, _ = load([str(tmp_path / "csms.jsonl")], progress=False)
    codes = lambda t: sorted(analyse(t).findings.select("code", "charge_point_id").iter_rows())  # noqa: E731
    assert codes(tables) == codes(direct) and ("meter-regression", "CP-A") in codes(tables)


def test_upstream_unreachable_closes_with_1014_and_the_proxy_keeps_serving():
    """With the CSMS down the charger is closed with 1014 and a reason; once it is back, chargers get through."""
    port = free_port()

    async def echo(ws):
        async for m in ws:
            await ws.send(m)

    async def main():
        async with monitor_running(f"ws://127.0.0.1:{port}/ocpp") as (proxy, view):
            async with connect(f"ws://127.0.0.1:{proxy.port}/CP-1", subprotocols=["ocpp1.6"], ping_interval=None) as ws:
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), 15)
                first = (ws.close_code, ws.close_reason)
            async with serve(echo, "127.0.0.1", port, subprotocols=["ocpp1.6"], ping_interval=None), \
                    connect(f"ws://127.0.0.1:{proxy.port}/CP-2", subprotocols=["ocpp1.6"], ping_interval=None) as ws:
                await ws.send('[2,"1","Heartbeat",{}]')
                second = await asyncio.wait_for(ws.recv(), 5)
        return first, second, view

    (code, reason), second, view = run(main())
    assert code == 1014 and "upstream unreachable" in reason
    assert second == '[2,"1","Heartbeat",{}]'
    assert [e.kind for e in view.events if e.charge_point_id == "CP-1"] == ["refused"]


def test_upstream_lost_for_one_charger_closes_it_with_1011_while_another_keeps_working():
    """When the CSMS drops one charger's connection, that charger gets 1011; another charger's traffic goes on."""

    async def csms(ws):
        async for m in ws:
            if ws.request.path.endswith("CP-BAD"):
                ws.transport.abort()
                return
            await ws.send(m)

    async def main():
        async with upstream_server(csms) as url, monitor_running(url) as (proxy, _):
            base = f"ws://127.0.0.1:{proxy.port}"
            async with connect(f"{base}/CP-GOOD", subprotocols=["ocpp1.6"], ping_interval=None) as good, \
                    connect(f"{base}/CP-BAD", subprotocols=["ocpp1.6"], ping_interval=None) as bad:
                await bad.send('[2,"x","Heartbeat",{}]')
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(bad.recv(), 5)
                echoes = []
                for i in range(5):
                    await good.send(f'[2,"{i}","Heartbeat",{{}}]')
                    echoes.append(await asyncio.wait_for(good.recv(), 5))
                return (bad.close_code, bad.close_reason), echoes

    (code, reason), echoes = run(main())
    assert code == 1011 and reason == "upstream connection lost"
    assert echoes == [f'[2,"{i}","Heartbeat",{{}}]' for i in range(5)]


def test_upstream_http_refusal_is_passed_to_the_charger():
    """A CSMS that refuses the upgrade (401) is answered to the charger with the same status."""

    async def reject(connection, request):
        return connection.respond(401, "no\n")

    async def main():
        async with upstream_server(lambda ws: None, process_request=reject) as url, monitor_running(url) as (proxy, view):
            with pytest.raises(InvalidStatus) as err:
                async with connect(f"ws://127.0.0.1:{proxy.port}/CP-1", subprotocols=["ocpp1.6"]):
                    pass
            return err.value.response.status_code, view

    status, view = run(main())
    assert status == 401 and view.events[0].kind == "refused" and view.events[0].code == 401


def test_slow_upstream_for_one_charger_does_not_delay_others():
    """A CSMS that stops reading one charger's connection holds back only that charger: another charger's
    round trips stay fast, and the stuck charger feels the back-pressure instead of the proxy buffering."""

    async def csms(ws):
        if ws.request.path.endswith("CP-SLOW"):
            await asyncio.sleep(3)  # does not read (for longer than the test needs)
            return
        async for m in ws:
            await ws.send(m)

    async def main():
        async with upstream_server(csms, max_size=None) as url, monitor_running(url) as (proxy, view):
            base = f"ws://127.0.0.1:{proxy.port}"
            async with connect(f"{base}/CP-SLOW", subprotocols=["ocpp1.6"], ping_interval=None) as slow, \
                    connect(f"{base}/CP-FAST", subprotocols=["ocpp1.6"], ping_interval=None) as fast:
                noise = base64.b64encode(os.urandom(75_000)).decode()  # incompressible: the bytes really travel
                big = '[2,"m","DataTransfer",{"vendorId":"x","data":"' + noise + '"}]'
                sent = 0

                async def flood():
                    nonlocal sent
                    for _ in range(2000):  # 200 MB if nothing pushed back
                        await slow.send(big)
                        sent += 1

                flooding = asyncio.create_task(flood())
                last = -1
                for _ in range(100):  # until the flood is stuck (every buffer on the way full), at most 10 s
                    await asyncio.sleep(0.3)
                    if sent == last:
                        break
                    last = sent
                rtts = []
                for i in range(20):
                    t0 = time.perf_counter()
                    await fast.send(f'[2,"{i}","Heartbeat",{{}}]')
                    await asyncio.wait_for(fast.recv(), 5)
                    rtts.append(time.perf_counter() - t0)
                stuck = not flooding.done()
                flooding.cancel()
                await asyncio.gather(flooding, return_exceptions=True)
                slow.transport.abort()
                return rtts, stuck, sent

    rtts, stuck, sent = run(main())
    assert max(rtts) < 0.5, rtts
    assert stuck and sent < 1000, sent


def test_redact_removes_secrets_from_recording_and_output(tmp_path):
    """--redact blanks AuthorizationKey and BasicAuthPassword values in the recording and the view while the
    charger still receives them unchanged; the Basic-auth password is never recorded."""
    secret, password = "0123456789abcdef-SECRET", "pw-SECRET-2"
    calls = [
        f'[2,"c1","ChangeConfiguration",{{"key":"AuthorizationKey","value":"{secret}"}}]',
        f'[2,"c2","SetVariables",{{"setVariableData":[{{"attributeValue":"{secret}","component":{{"name":"SecurityCtrlr"}},'
        f'"variable":{{"name":"BasicAuthPassword"}}}}]}}]',
    ]
    answer = f'[3,"c3",{{"configurationKey":[{{"key":"AuthorizationKey","readonly":false,"value":"{secret}"}}]}}]'

    async def csms(ws):
        for c in calls:
            await ws.send(c)
        await ws.recv()

    rec = tmp_path / "r.trace.jsonl"

    async def main():
        async with upstream_server(csms) as url, monitor_running(url, record=str(rec), redact=True) as (proxy, view):
            auth = "Basic " + base64.b64encode(f"CP-1:{password}".encode()).decode()
            async with connect(f"ws://127.0.0.1:{proxy.port}/CP-1", subprotocols=["ocpp1.6"],
                               additional_headers={"Authorization": auth}, ping_interval=None) as ws:
                got = [await ws.recv() for _ in calls]
                await ws.send(answer)
                await asyncio.sleep(0.3)
        return got, view

    got, view = run(main())
    assert got == calls
    text = rec.read_text()
    assert secret not in text and password not in text and text.count("***redacted***") == 6  # payload and raw of each of the 3 frames
    shown = " ".join(i.seen.text for i in view.infos) + " ".join(e.detail for e in view.events)
    assert secret not in shown and password not in shown and "basic user=CP-1" in shown
    tables, _ = load([str(rec)], progress=False)
    assert tables.messages.height == 3 and tables.weirds.height == 0


def _certs(tmp: Path) -> tuple[str, str]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    key, cert = tmp / "key.pem", tmp / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True)  # fmt: skip
    return str(cert), str(key)


def test_tls_on_both_sides_with_a_client_certificate(tmp_path):
    """wss from the charger to the proxy and from the proxy to a CSMS that requires a client certificate."""
    cert, key = _certs(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    server_ctx.load_verify_locations(cert)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    peer = {}

    async def csms(ws):
        peer["cert"] = ws.transport.get_extra_info("peercert")
        async for m in ws:
            await ws.send(m)

    async def main():
        async with serve(csms, "127.0.0.1", 0, ssl=server_ctx, subprotocols=["ocpp1.6"]) as srv:
            url = f"wss://127.0.0.1:{srv.sockets[0].getsockname()[1]}/ocpp"
            opts = dict(cert=cert, key=key, ca=cert, upstream_cert=cert, upstream_key=key)
            async with monitor_running(url, **opts) as (proxy, _):
                client = ssl.create_default_context(cafile=cert)
                async with connect(f"wss://127.0.0.1:{proxy.port}/CP-1", ssl=client, subprotocols=["ocpp1.6"]) as ws:
                    await ws.send('[2,"1","Heartbeat",{}]')
                    return await asyncio.wait_for(ws.recv(), 5)

    assert run(main()) == '[2,"1","Heartbeat",{}]'
    assert peer["cert"]["subject"] == ((("commonName", "localhost"),),)


def test_a_killed_monitor_loses_at_most_the_last_second_of_recording(tmp_path):
    """After `kill -9`, the recording holds every frame relayed more than a second before."""
    import os
    import signal
    import sys

    port = free_port()
    rec = tmp_path / "crash.trace.jsonl"

    async def csms(ws):
        async for m in ws:
            await ws.send(m)

    async def main():
        async with upstream_server(csms) as url:
            proc = subprocess.Popen([sys.executable, "-m", "ocpptool", "monitor", "--no-tui", "--no-frames", "--listen",
                                     f"127.0.0.1:{port}", "--upstream", url, "--record", str(rec), "--analyze-every", "0"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
            try:
                for _ in range(200):
                    try:
                        async with connect(f"ws://127.0.0.1:{port}/CP-1", subprotocols=["ocpp1.6"], ping_interval=None) as ws:
                            for i in range(50):
                                await ws.send(f'[2,"{i}","Heartbeat",{{}}]')
                                await ws.recv()
                            await asyncio.sleep(1.2)
                            os.kill(proc.pid, signal.SIGKILL)
                            return
                    except OSError:
                        await asyncio.sleep(0.1)
            finally:
                proc.kill()
                proc.wait(10)

    run(main())
    assert len(rec.read_bytes().splitlines()) == 100
