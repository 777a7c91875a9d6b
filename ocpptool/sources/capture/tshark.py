"""The tshark engine: Wireshark's dissectors decode the capture, we turn their output into RawBatch rows.

tshark (4.0 or later) runs once over the file, single pass, and streams one JSON line per interesting
packet (``-T ek`` with ``-e`` fields: exact strings, unlike ``-T fields`` which escapes ``\\n`` but not
``\\``). TCP reassembly, TLS decryption with a key log, the HTTP upgrade, WebSocket deframing,
defragmentation and permessage-deflate inflation are tshark's; this module keeps a small state per TCP
connection (never per packet) and follows the row conventions of :mod:`ocpptool.sources.capture`.

tshark 4.0 fields used: ``frame.number``, ``frame.time_epoch``, ``tcp.stream``, ``ip.src``/``ip.dst``,
``ipv6.src``/``ipv6.dst``, ``tcp.srcport``/``tcp.dstport``, ``tcp.flags.syn``/``fin``/``reset``,
``http.request.method``, ``http.request.uri``, ``http.response.code``, ``http.upgrade``,
``http.sec_websocket_key``, ``http.sec_websocket_protocol``, ``http.sec_websocket_extensions``,
``http.authorization``, ``websocket.opcode``, ``websocket.fin``, ``websocket.mask``, ``websocket.pmc``,
``websocket.payload_length``, ``websocket.payload.text`` (the unmasked, inflated, reassembled text),
``websocket.payload.close.status_code``, ``websocket.payload.close.reason``, ``tls.record.content_type``
and ``tls.record.opaque_type`` (TLS 1.3).

Known tshark 4.0 limits (rows become weirds, never silently lost): a fragmented message whose final
fragment is empty (what the ``websockets`` library sends for an iterable) is not reassembled, and a
fragmented compressed message is inflated from its last fragment only.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
import polars as pl

from ..base import CONN_META_SCHEMA, RAW_SCHEMA, ConnMeta, RawBatch, SourceError, SourceNote
from . import CaptureOptions
from ._http import auth_summary, request_target

INSTALL_HINT = (
    "tshark is needed for this capture (TLS or --engine tshark): install it with apt-get install tshark"
)
BATCH_ROWS = 5_000
#: an undecided connection (no OCPP subprotocol, no OCPP-looking text yet) holds back at most this many rows
MAX_PENDING = 2_000
#: ... and is declared non-OCPP once this many rows of any connection wait behind it
MAX_HELD = 50_000
OCPP_LOOKING = re.compile(r"^\s*\[\s*[2-6]\s*,")

FIELDS = (
    "frame.number",
    "frame.time_epoch",
    "tcp.stream",
    "ip.src",
    "ip.dst",
    "ipv6.src",
    "ipv6.dst",
    "tcp.srcport",
    "tcp.dstport",
    "tcp.flags.syn",
    "tcp.flags.fin",
    "tcp.flags.reset",
    "http.request.method",
    "http.request.uri",
    "http.response.code",
    "http.upgrade",
    "http.sec_websocket_key",
    "http.sec_websocket_protocol",
    "http.sec_websocket_extensions",
    "http.authorization",
    "websocket.opcode",
    "websocket.fin",
    "websocket.mask",
    "websocket.pmc",
    "websocket.payload_length",
    "websocket.payload.text",
    "websocket.payload.close.status_code",
    "websocket.payload.close.reason",
    "tls.record.content_type",
    "tls.record.opaque_type",  # TLS 1.3 hides the real type; 23 (application data) on the wire
)
DISPLAY_FILTER = (
    "websocket || http || tls || tcp.flags.syn == 1 || tcp.flags.fin == 1 || tcp.flags.reset == 1"
)
CP_TO_CSMS, CSMS_TO_CP = "cp->csms", "csms->cp"


MIN_VERSION = (3, 0)


def find_tshark() -> str:
    """tshark on PATH, checked with pyshark for a version whose ``-T ek`` fields this engine reads."""
    path = shutil.which("tshark")
    if not path:
        raise SourceError(INSTALL_HINT)
    try:
        from pyshark.tshark.tshark import get_tshark_version

        version = get_tshark_version(path)
    except Exception:  # noqa: BLE001 - an odd build that will not say its version: let tshark itself decide
        return path
    if (version.major, version.minor) < MIN_VERSION:
        raise SourceError(
            f"tshark {version} at {path} is too old for this engine (need {MIN_VERSION[0]}.{MIN_VERSION[1]} or "
            "newer): upgrade it (apt-get install tshark) or use --engine native"
        )
    return path


def command(path: str, options: CaptureOptions, keylog: str | None, tshark: str | None = None) -> list[str]:
    """The tshark command line for ``path`` (exposed for tests and ``--verbose`` users)."""
    cmd = [tshark or find_tshark(), "-r", path, "-n", "-T", "ek", "--enable-heuristic", "websocket_tcp"]
    cmd += ["-o", "websocket.decompress:TRUE", "-o", "tcp.desegment_tcp_streams:TRUE"]
    # Heuristics before port numbers: a WebSocket caught mid-stream on a well-known port (80, 8080...)
    # is otherwise taken for HTTP and lost (extralargeOPENEVSE.pcapng's web UI channel on port 80).
    cmd += ["-o", "tcp.try_heuristic_first:TRUE"]
    if keylog:
        cmd += ["-o", f"tls.keylog_file:{keylog}"]
    for port in options.ports:
        cmd += ["-d", f"tcp.port=={int(port)},websocket"]
    cmd += ["-Y", DISPLAY_FILTER]
    for f in FIELDS:
        cmd += ["-e", f]
    return cmd


def _endpoint(ip: str, port: str) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _ts_us(epoch: str) -> int:
    """``"1733486257.123456789"`` -> microseconds since the epoch (truncated, like the pcap reader)."""
    sec, _, frac = epoch.partition(".")
    return int(sec) * 1_000_000 + int((frac + "000000")[:6]) * (-1 if sec.startswith("-") else 1)




@dataclass
class _Conn:
    stream: str
    key: str = ""
    client: str | None = None  # "ip:port"
    server: str | None = None
    client_pair: tuple[str, str] | None = None  # (ip, port) of the charger
    url_path: str | None = None
    charge_point_id: str | None = None
    offer: str | None = None  # the client's first subprotocol offer
    subprotocol: str | None = None  # the server's choice
    compression: str | None = None
    auth: str | None = None
    ws_key: str | None = None
    opened: int | None = None
    closed: int | None = None
    close_code: int | None = None
    close_reason: str | None = None
    handshake_seen: bool = False
    tls: bool = False
    tls_app_pos: int | None = None
    tls_app_ts: int | None = None
    decrypted: bool = False
    websocket: bool = False
    ocpp: bool | None = None  # None: undecided (rows held back)
    ws_frames: int = 0
    messages: int = 0
    pending: int = 0
    duplicate_of: str | None = None
    first_pair: tuple[str, str, str, str] | None = (
        None  # src ip, src port, dst ip, dst port of the 1st packet
    )
    syn_from: tuple[str, str] | None = None
    masked_from: tuple[str, str] | None = None
    frag: dict[str, list[Any]] = field(default_factory=dict)  # direction -> [opcode, compressed, n]

    @property
    def subprotocol_or_offer(self) -> str | None:
        return self.subprotocol or self.offer

    def decide_by_subprotocol(self) -> None:
        sp = self.subprotocol_or_offer
        if sp is not None and self.ocpp is None:
            self.ocpp = sp.lower().startswith("ocpp")


class _Reader:
    def __init__(self, source: str, options: CaptureOptions) -> None:
        self.source = source
        self.options = options
        self.conns: dict[str, _Conn] = {}
        self.order: list[_Conn] = []
        self.tuple_uses: dict[str, int] = {}
        self.ws_keys: dict[str, _Conn] = {}
        self.pending: deque[tuple] = deque()  # (conn, row tuple) in frame order
        self.out: list[tuple] = []

    # ------------------------------------------------------------------ connections
    def conn(self, stream: str) -> _Conn:
        c = self.conns.get(stream)
        if c is None:
            c = self.conns[stream] = _Conn(stream)
            self.order.append(c)
        return c

    def _assign_key(self, c: _Conn) -> None:
        """Fix the client/server orientation and the connection key (once)."""
        if c.key:
            return
        assert c.first_pair is not None
        sip, sport, dip, dport = c.first_pair
        if c.client_pair is None:
            if c.masked_from is not None:
                c.client_pair = c.masked_from
            elif c.syn_from is not None:
                c.client_pair = c.syn_from
            elif int(dport) in self.options.ports or (
                int(sport) not in self.options.ports and int(dport) < int(sport)
            ):
                c.client_pair = (sip, sport)
            else:
                c.client_pair = (dip, dport)
        if c.client_pair == (sip, sport):
            client, server = _endpoint(sip, sport), _endpoint(dip, dport)
        else:
            client, server = _endpoint(dip, dport), _endpoint(sip, sport)
        c.client, c.server = client, server
        base = f"{client}->{server}"
        n = self.tuple_uses.get(base, 0) + 1
        self.tuple_uses[base] = n
        c.key = base if n == 1 else f"{base}#{n}"

    # ------------------------------------------------------------------ packets
    def packet(self, layers: dict[str, list[str]]) -> None:
        # Any: fields tshark writes for every TCP packet (frame_number, frame_time_epoch, tcp_*port) are
        # indexed without a check; the optional ones are tested before use.
        g: Callable[[str], Any] = layers.get
        stream_l = g("tcp_stream")
        if not stream_l:
            return
        pos = int(g("frame_number")[0])
        ts = _ts_us(g("frame_time_epoch")[0])
        ips = g("ipv6_src") or g("ip_src")
        ipd = g("ipv6_dst") or g("ip_dst")
        if not ips or not ipd:
            return
        src = (ips[-1], g("tcp_srcport")[-1])
        dst = (ipd[-1], g("tcp_dstport")[-1])
        c = self.conn(stream_l[-1])
        if c.first_pair is None:
            c.first_pair = (src[0], src[1], dst[0], dst[1])
            c.opened = ts
        syn = g("tcp_flags_syn")
        if syn and syn[-1] in ("1", "True") and c.syn_from is None and c.client_pair is None:
            c.syn_from = src
            c.opened = ts
        fin, rst = g("tcp_flags_fin"), g("tcp_flags_reset")
        ended = (fin and fin[-1] in ("1", "True")) or (rst and rst[-1] in ("1", "True"))
        if ended and c.closed is None:
            c.closed = ts
        ctypes = (g("tls_record_content_type") or []) + (g("tls_record_opaque_type") or [])
        if ctypes:
            c.tls = True
            if c.tls_app_pos is None and "23" in ctypes:
                c.tls_app_pos, c.tls_app_ts = pos, ts
        method = g("http_request_method")
        if method is not None or g("http_response_code") is not None:
            c.decrypted = True
            self._http(c, layers, src, ts)
        opcodes = g("websocket_opcode")
        if opcodes:
            c.decrypted = True
            self._websocket(c, layers, opcodes, src, pos, ts)
        if len(self.pending) >= BATCH_ROWS:
            self.flush()

    def _http(self, c: _Conn, layers: dict[str, list[str]], src: tuple[str, str], ts: int) -> None:
        g = layers.get
        upgrade = " ".join(g("http_upgrade") or []).lower()
        key = (g("http_sec_websocket_key") or (None,))[0]
        uri = (g("http_request_uri") or (None,))[0]
        if uri is not None and ("websocket" in upgrade or key):
            if c.handshake_seen and c.client_pair is not None:
                return  # only the first upgrade request counts
            c.handshake_seen = True
            c.client_pair = src
            c.url_path, c.charge_point_id = request_target(uri)
            protos = g("http_sec_websocket_protocol")
            if protos:
                c.offer = protos[0].split(",")[0].strip() or None
            c.auth = auth_summary((g("http_authorization") or (None,))[0])
            c.ws_key = key
            if key:
                first = self.ws_keys.get(key)
                if first is not None and first is not c:
                    self._assign_key(first)
                    c.duplicate_of = first.key
                else:
                    self.ws_keys[key] = c
            return
        codes = g("http_response_code")
        if codes and "101" in codes:
            c.handshake_seen = True
            if c.client_pair is None and not c.key:  # request not seen: the 101's receiver is the client
                # a packet that reached packet() has its IP addresses and TCP ports
                ipd = cast("list[str]", g("ipv6_dst") or g("ip_dst"))
                c.client_pair = (ipd[-1], cast("list[str]", g("tcp_dstport"))[-1])
            protos = g("http_sec_websocket_protocol")
            c.subprotocol = protos[0].strip() if protos else None
            exts = g("http_sec_websocket_extensions")
            c.compression = exts[0].strip() if exts else None
            if c.subprotocol is not None:
                c.ocpp = c.subprotocol.lower().startswith("ocpp")

    def _websocket(
        self,
        c: _Conn,
        layers: dict[str, list[str]],
        opcodes: list[str],
        src: tuple[str, str],
        pos: int,
        ts: int,
    ) -> None:
        g = layers.get
        c.websocket = True
        fins = g("websocket_fin") or []
        masks = g("websocket_mask") or []
        pmcs = g("websocket_pmc") or []
        lens = g("websocket_payload_length") or []
        texts = list(g("websocket_payload_text") or [])
        if c.client_pair is None and "1" in masks:
            c.masked_from = src
        self._assign_key(c)
        direction = CP_TO_CSMS if src == c.client_pair else CSMS_TO_CP
        codes = g("websocket_payload_close_status_code")
        if "8" in opcodes:
            if c.close_code is None and codes:
                c.close_code = int(codes[0])
                reasons = g("websocket_payload_close_reason")
                c.close_reason = reasons[0] if reasons else None
            if c.closed is None:
                c.closed = ts
        # Each completed data message, in order: (kind, text or None, weird reason, weird detail)
        done: list[list[Any]] = []
        for i, op_s in enumerate(opcodes):
            op = int(op_s)
            if op not in (0, 1, 2):
                continue
            c.ws_frames += 1
            fin = i < len(fins) and fins[i] in ("1", "True")
            compressed = i < len(pmcs) and pmcs[i] in ("1", "True")
            length = int(lens[i]) if i < len(lens) else 1
            open_ = c.frag.get(direction)
            if op in (1, 2):
                if fin:
                    done.append([op, None, False, compressed, length])
                    c.frag.pop(direction, None)
                else:
                    c.frag[direction] = [op, compressed, 1]
            elif open_ is not None:
                open_[2] += 1
                if fin:
                    c.frag.pop(direction, None)
                    done.append([open_[0], None, True, open_[1], length])
        expected = [d for d in done if d[0] == 1]
        usable = [d for d in expected if not (d[2] and (d[3] or d[4] == 0))]
        if len(texts) == len(expected):
            for d, t in zip(expected, texts, strict=True):
                d[1] = t
        else:  # tshark gives no text for empty messages and for messages it could not rebuild
            it = iter(texts)
            for d in usable:
                if d[4] > 0 or d[3]:
                    d[1] = next(it, None)
                else:
                    d[1] = ""
        for op, text, fragmented, compressed, _length in done:
            if op == 2:
                self._row(c, pos, ts, direction, None, "binary", "binary WebSocket message")
            elif text is not None and fragmented and compressed:
                self._row(
                    c,
                    pos,
                    ts,
                    direction,
                    None,
                    "inflate-failed",
                    "tshark 4.0 does not inflate fragmented compressed messages (use --engine native)",
                )
            elif text is None and fragmented:
                self._row(
                    c,
                    pos,
                    ts,
                    direction,
                    None,
                    "reassembly-failed",
                    "tshark 4.0 did not reassemble this fragmented message (empty final fragment?); "
                    "use --engine native",
                )
            elif text is None and compressed:
                self._row(
                    c,
                    pos,
                    ts,
                    direction,
                    None,
                    "inflate-failed",
                    "tshark could not inflate this message (its inflater may be out of step after an "
                    "earlier message it could not rebuild); use --engine native",
                )
            elif text is None:
                self._row(c, pos, ts, direction, "", None, None)
            else:
                self._row(c, pos, ts, direction, text, None, None)

    def _row(
        self,
        c: _Conn,
        pos: int,
        ts: int,
        direction: str,
        text: str | None,
        reason: str | None,
        detail: str | None,
    ) -> None:
        c.messages += 1
        if c.ocpp is None:
            c.decide_by_subprotocol()
        if c.ocpp is None and text is not None and OCPP_LOOKING.match(text):
            c.ocpp = True
        if c.ocpp is None:
            c.pending += 1
            if c.pending > MAX_PENDING:
                c.ocpp = False
        self.pending.append(
            (c, (ts, pos, c.key, c.charge_point_id, direction, c.subprotocol_or_offer, text, reason, detail))
        )

    # ------------------------------------------------------------------ output
    def flush(self, final: bool = False) -> None:
        """Move rows of decided connections (in frame order) to the output; drop non-OCPP and duplicates."""
        if final or len(self.pending) > MAX_HELD:
            for c in self.order:
                if c.ocpp is None and (final or c.pending):
                    c.ocpp = False
        while self.pending:
            c, row = self.pending[0]
            if c.ocpp is None:
                break
            self.pending.popleft()
            if c.ocpp and c.duplicate_of is None:
                self.out.append(row)

    def take(self) -> pl.DataFrame | None:
        if not self.out:
            return None
        cols = list(zip(*self.out, strict=True))
        self.out = []
        n = len(cols[0])
        df = pl.DataFrame(
            {
                "ts": pl.Series(cols[0], dtype=pl.Int64).cast(pl.Datetime("us")).dt.replace_time_zone("UTC"),
                "ts_text": pl.Series([None] * n, dtype=pl.String),
                "ts_hint": pl.Series([None] * n, dtype=pl.String),
                "source": pl.Series([self.source] * n, dtype=pl.String),
                "source_pos": pl.Series(cols[1], dtype=pl.Int64),
                "conn": pl.Series(cols[2], dtype=pl.String),
                "charge_point_id": pl.Series(cols[3], dtype=pl.String),
                "direction": pl.Series(cols[4], dtype=pl.String),
                "direction_inferred": pl.Series([False] * n, dtype=pl.Boolean),
                "subprotocol": pl.Series(cols[5], dtype=pl.String),
                "text": pl.Series(cols[6], dtype=pl.String),
                "weird_reason": pl.Series(cols[7], dtype=pl.String),
                "weird_detail": pl.Series(cols[8], dtype=pl.String),
                "note": pl.Series([None] * n, dtype=pl.String),
            }
        )
        return df.select([pl.col(k).cast(v) for k, v in RAW_SCHEMA.items()])

    def tls_rows(self, keylog: str | None) -> None:
        """One weird per TLS connection whose application data stayed encrypted."""
        for c in self.order:
            if c.tls and c.tls_app_pos is not None and not c.decrypted:
                self._assign_key(c)
                why = "no --keylog given" if not keylog else "the key log holds no secret for this session"
                self.out.append(
                    (
                        c.tls_app_ts,
                        c.tls_app_pos,
                        c.key,
                        None,
                        None,
                        None,
                        None,
                        "tls-undecrypted",
                        f"TLS connection {c.key} could not be decrypted ({why}); "
                        "give the NSS key log with --keylog or SSLKEYLOGFILE",
                    )
                )

    def meta(self) -> pl.DataFrame:
        rows = []
        for c in self.order:
            if not (
                c.websocket or c.handshake_seen or (c.tls and c.tls_app_pos is not None and not c.decrypted)
            ):
                continue
            self._assign_key(c)
            ocpp = c.ocpp if (c.websocket or c.handshake_seen) else None
            rows.append(
                {
                    "conn": c.key,
                    "source": self.source,
                    "charge_point_id": c.charge_point_id,
                    "url_path": c.url_path,
                    "client": c.client,
                    "server": c.server,
                    "subprotocol": c.subprotocol_or_offer,
                    "compression": c.compression,
                    "tls": c.tls,
                    "auth": c.auth,
                    "opened": c.opened,
                    "closed": c.closed,
                    "close_code": c.close_code,
                    "close_reason": c.close_reason,
                    "handshake_seen": c.handshake_seen,
                    "ocpp": ocpp,
                    "ws_frames": c.ws_frames,
                    "non_ocpp_frames": c.messages if ocpp is False else 0,
                    "duplicate_of": c.duplicate_of,
                }
            )
        schema = {**CONN_META_SCHEMA, "opened": pl.Int64(), "closed": pl.Int64()}
        df = pl.DataFrame(rows, schema=schema)
        return df.with_columns(
            pl.col("opened", "closed").cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
        ).select([pl.col(k).cast(v) for k, v in CONN_META_SCHEMA.items()])


def _first_error(stderr: str) -> str:
    for line in stderr.splitlines():
        line = line.strip()
        if not line or line.startswith("Running as user"):
            continue
        return line
    return ""


def read(
    path: str, source: str, options: CaptureOptions, keylog: str | None
) -> Iterator[RawBatch | ConnMeta | SourceNote]:
    """Yield RawBatch frames (in frame order) and, at the end, one ConnMeta with every connection (and a
    SourceNote if tshark described packets without the fields every TCP packet has: they are skipped, so
    one odd packet never costs the rest of the capture)."""
    cmd = command(path, options, keylog)
    reader = _Reader(source, options)
    skipped = 0
    env = {**os.environ, "LC_ALL": "C.UTF-8"}
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, env=env)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                if not line.startswith(b'{"timestamp"'):
                    continue
                try:
                    layers = orjson.loads(line).get("layers") or {}
                except orjson.JSONDecodeError:
                    continue
                try:
                    reader.packet(layers)
                except (KeyError, IndexError, TypeError, ValueError):
                    skipped += 1
                if len(reader.out) >= BATCH_ROWS:
                    batch = reader.take()
                    if batch is not None:
                        yield batch
            rc = proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        err.seek(0)
        stderr = err.read().decode("utf-8", "replace")
    if rc != 0:
        msg = _first_error(stderr)
        if "cut short in the middle of a packet" not in msg:
            raise SourceError(f"{path}: tshark failed: {msg or f'exit status {rc}'}")
    reader.flush(final=True)
    reader.tls_rows(keylog)
    batch = reader.take()
    if batch is not None:
        yield batch
    yield ConnMeta(reader.meta())
    if skipped:
        yield SourceNote(f"{source}: {skipped} packet(s) that tshark described without a frame number, time or "
                         "TCP ports were skipped")
