"""Record the real packet captures in tests/captures/ (regenerable by anyone with dumpcap and root or
the capture capability).

For each scenario: start ``dumpcap`` on the loopback interface with a capture filter on the scenario's
random high port, run the recording CSMS of :mod:`ocpptool.testing.peers` and real `ocpp` charge points
over `websockets` against it, wait until the CSMS is idle, give dumpcap a moment to take the last
frames, stop it with SIGINT and wait for it. Beside each ``NAME.pcapng`` go the CSMS's own frame log
``NAME.jsonl`` (every frame verbatim with the CSMS's receive/send time) and, for TLS, ``NAME.keys``
(the NSS key log of the session; the throwaway certificate and key live in a temporary directory only).

Usage: ``uv run python scripts/make_captures.py [--out DIR] [SCENARIO ...]`` (default: all, into
tests/captures). Everything is bounded: each scenario has a deadline, loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.extensions.permessage_deflate import (
    ClientPerMessageDeflateFactory,
    ServerPerMessageDeflateFactory,
)

from ocpptool.testing import peers
from ocpptool.testing.peers import ChargerConfig, CsmsCall, Faults, Session

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "tests" / "captures"
SCENARIO_TIMEOUT = 60.0


@dataclass
class Scenario:
    name: str
    doc: str
    chargers: list[ChargerConfig]
    host: str = "127.0.0.1"
    compression: str | None = None  # None or "deflate" (websockets' default permessage-deflate)
    no_context_takeover: bool = False
    tls: bool = False
    fragment: str | None = (
        None  # "frames": fixed-size fragments, non-empty final; "library": ws.send(iterable)
    )
    fragment_over: int = 200  # fragment messages longer than this many bytes
    fragment_size: int = 64
    extra: dict[str, Any] = field(default_factory=dict)


def _quick(cid: str, version: str = "1.6", **kw: Any) -> ChargerConfig:
    base: dict[str, Any] = dict(
        heartbeats=2,
        heartbeat_interval=0.05,
        meter_interval=0.02,
        sessions=(Session(samples=3),),
        max_duration=15.0,
    )
    base.update(kw)
    return ChargerConfig(cid, version=version, **base)


def scenarios() -> dict[str, Scenario]:
    fleet = [
        _quick("CP-A1"),
        _quick("CP-A2", csms_calls=(CsmsCall("GetConfiguration", after=0.05),)),
        _quick(
            "CP-A3", connectors=2, sessions=(Session(1, samples=2), Session(2, samples=2, start_after=0.05))
        ),
        _quick("CS-B1", version="2.0.1", csms_calls=(CsmsCall("GetVariables", after=0.05),)),
    ]
    out = [
        Scenario("ws_plain", "ws on 127.0.0.1, 3 chargers on OCPP 1.6 and 1 on 2.0.1, no compression", fleet),
        Scenario(
            "ws_deflate",
            "the same fleet with permessage-deflate (websockets' default: context takeover both ways)",
            fleet,
            compression="deflate",
        ),
        Scenario(
            "ws_deflate_nctx",
            "permessage-deflate with server_no_context_takeover and client_no_context_takeover, "
            "server_max_window_bits=12",
            [_quick("CP-N1"), _quick("CS-N2", version="2.0.1")],
            no_context_takeover=True,
        ),
        Scenario(
            "ws_fragmented",
            "messages over 200 bytes (StartTransaction, MeterValues, TransactionEvent, ...) sent as "
            "64-byte fragments (non-empty final fragment) by both sides, no compression",
            [_quick("CP-F1"), _quick("CS-F2", version="2.0.1")],
            fragment="frames",
        ),
        Scenario(
            "ws_fragmented_lib",
            "fragments as websockets sends an iterable (empty final fragment) with permessage-deflate: "
            "beyond what tshark 4.0 reassembles (only the native engine decodes these messages)",
            [_quick("CP-L1", sessions=(Session(samples=1),))],
            compression="deflate",
            fragment="library",
        ),
        Scenario(
            "ws_ipv6",
            "ws on [::1], one 1.6 and one 2.0.1 charger, permessage-deflate",
            [_quick("CP-V6"), _quick("CS-V6", version="2.0.1")],
            host="::1",
            compression="deflate",
        ),
        Scenario(
            "wss",
            "wss (TLS 1.3, self-signed certificate) on 127.0.0.1; NSS key log in wss.keys",
            [_quick("CP-S1"), _quick("CS-S2", version="2.0.1")],
            compression="deflate",
            tls=True,
        ),
        Scenario(
            "ws_reset",
            "a charger aborts its TCP connection mid-transaction (after 2 meter samples); another "
            "charger carries on",
            [
                _quick("CP-R1", sessions=(Session(samples=5),), faults=Faults(drop_after_samples=2)),
                _quick("CP-R2"),
            ],
        ),
    ]
    return {s.name: s for s in out}


# ------------------------------------------------------------------------------------------ transport


class Fragmenting:
    """Wraps a websockets connection: text messages longer than ``over`` go out fragmented."""

    def __init__(self, ws: Any, sc: Scenario) -> None:
        self._ws = ws
        self._sc = sc

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ws, name)

    async def send(self, message: Any, *args: Any, **kw: Any) -> None:
        sc = self._sc
        if not isinstance(message, str) or len(message.encode()) <= sc.fragment_over:
            await self._ws.send(message, *args, **kw)
            return
        data = message.encode()
        n = sc.fragment_size
        if sc.fragment == "library":
            # split on character boundaries: websockets wants str chunks for a text message
            chunks = [message[i : i + n] for i in range(0, len(message), n)]
            await self._ws.send(chunks)
            return
        parts = [data[i : i + n] for i in range(0, len(data), n)]
        ws = self._ws
        async with ws.send_context():
            ws.protocol.send_text(parts[0], fin=False)
        for part in parts[1:-1]:
            async with ws.send_context():
                ws.protocol.send_continuation(part, fin=False)
        async with ws.send_context():
            ws.protocol.send_continuation(parts[-1], fin=True)


def _ws_kwargs(sc: Scenario, server: bool) -> dict[str, Any]:
    if sc.no_context_takeover:
        if server:
            ext: Any = ServerPerMessageDeflateFactory(
                server_no_context_takeover=True,
                client_no_context_takeover=True,
                server_max_window_bits=12,
                require_client_max_window_bits=False,
            )
        else:
            ext = ClientPerMessageDeflateFactory(
                server_no_context_takeover=True, client_no_context_takeover=True, client_max_window_bits=True
            )
        return {"compression": None, "extensions": [ext]}
    return {"compression": sc.compression}


@contextlib.contextmanager
def patched_transport(sc: Scenario, server_ssl: ssl.SSLContext | None, client_ssl: ssl.SSLContext | None):
    """Point peers' ``serve``/``connect`` at the scenario's transport (compression, TLS, fragments)."""
    real_serve, real_connect = peers.serve, peers.connect

    def serve(handler: Callable, *args: Any, **kw: Any):
        kw.update(_ws_kwargs(sc, server=True))
        if server_ssl is not None:
            kw["ssl"] = server_ssl
        if sc.fragment:

            async def wrapped(ws: Any) -> None:
                await handler(Fragmenting(ws, sc))

            return real_serve(wrapped, *args, **kw)
        return real_serve(handler, *args, **kw)

    @contextlib.asynccontextmanager
    async def connect(uri: str, *args: Any, **kw: Any):
        kw.update(_ws_kwargs(sc, server=False))
        if client_ssl is not None:
            kw["ssl"] = client_ssl
            kw["server_hostname"] = "localhost"
        async with real_connect(uri, *args, **kw) as ws:
            yield Fragmenting(ws, sc) if sc.fragment else ws

    peers.serve, peers.connect = serve, connect  # type: ignore[assignment]
    try:
        yield
    finally:
        peers.serve, peers.connect = real_serve, real_connect  # type: ignore[assignment]


class ScenarioCsms(peers.Csms):
    scheme = "ws"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}/ocpp"


async def run_scenario_peers(sc: Scenario, log: Path, port: int, server_ssl, client_ssl) -> int:
    with patched_transport(sc, server_ssl, client_ssl):
        csms = ScenarioCsms(log, sc.chargers, host=sc.host, port=port)
        csms.scheme = "wss" if sc.tls else "ws"
        async with csms:

            async def one(i: int, cfg: ChargerConfig) -> None:
                await asyncio.sleep(i * 0.03)
                await peers.run_charger(cfg, csms.url)

            await asyncio.wait_for(
                asyncio.gather(*(one(i, c) for i, c in enumerate(sc.chargers))), timeout=SCENARIO_TIMEOUT
            )
            await csms.wait_idle()
        return csms.frames_recorded


# ------------------------------------------------------------------------------------------ capture


def free_port(host: str) -> int:
    """A random free high port (outside the usual ephemeral range, so clients never collide with it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(50):
        port = random.randint(20000, 32000)
        with socket.socket(family, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port found")


def make_certificate(tmp: Path) -> tuple[Path, Path]:
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


def dumpcap_path() -> str:
    for name in ("dumpcap", "tshark"):
        path = shutil.which(name)
        if path:
            return path
    raise SystemExit("dumpcap (or tshark) is needed: apt-get install tshark")


def start_capture(pcap: Path, port: int) -> tuple[subprocess.Popen, Any]:
    err = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop_capture
    proc = subprocess.Popen(
        [dumpcap_path(), "-q", "-i", "lo", "-f", f"tcp port {port}", "-w", str(pcap)],
        stdout=subprocess.DEVNULL,
        stderr=err,
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        err.seek(0)
        text = err.read().decode("utf-8", "replace")
        if "Capturing on" in text:
            time.sleep(0.3)  # the filter is attached; give the ring buffer a moment
            return proc, err
        if proc.poll() is not None:
            err.close()
            raise RuntimeError(
                f"dumpcap failed: {text.strip().splitlines()[-1] if text.strip() else proc.returncode}"
            )
        time.sleep(0.05)
    stop_capture(proc, err)
    raise RuntimeError("dumpcap did not start capturing within 10 s")


def stop_capture(proc: subprocess.Popen, err: Any) -> str:
    time.sleep(0.5)  # let the last frames (close, FIN) reach the capture
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    err.seek(0)
    text = err.read().decode("utf-8", "replace")
    err.close()
    return text


def record(sc: Scenario, out: Path) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    pcap, log, keys = out / f"{sc.name}.pcapng", out / f"{sc.name}.jsonl", out / f"{sc.name}.keys"
    for p in (pcap, log, keys):
        p.unlink(missing_ok=True)
    port = free_port(sc.host)
    with tempfile.TemporaryDirectory() as tmpdir:
        server_ssl = client_ssl = None
        if sc.tls:
            cert, key = make_certificate(Path(tmpdir))
            server_ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            server_ssl.load_cert_chain(cert, key)
            client_ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            client_ssl.load_verify_locations(cert)
            client_ssl.keylog_filename = str(keys)
        proc, err = start_capture(pcap, port)
        try:
            frames = asyncio.run(run_scenario_peers(sc, log, port, server_ssl, client_ssl))
        finally:
            stop_capture(proc, err)
    os.chmod(pcap, 0o644)
    return {"name": sc.name, "frames_logged": frames, "pcap_bytes": pcap.stat().st_size}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default tests/captures)")
    ap.add_argument("names", nargs="*", help=f"scenarios (default all): {', '.join(scenarios())}")
    args = ap.parse_args(argv)
    table = scenarios()
    unknown = [n for n in args.names if n not in table]
    if unknown:
        ap.error(f"unknown scenario(s): {', '.join(unknown)}")
    for name in args.names or list(table):
        info = record(table[name], args.out)
        print(
            f"{info['name']}: {info['frames_logged']} frames logged, {info['pcap_bytes']:,} bytes",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
