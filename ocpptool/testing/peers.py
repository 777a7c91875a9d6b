"""Real OCPP peers on loopback: a recording CSMS and scripted charge points.

Both sides are built with the `ocpp` package (mobilityhouse) and talk OCPP-J over real
`websockets` connections on 127.0.0.1, so the traffic they produce is genuine: every frame
is serialised, validated and routed by the library exactly as in production code.

* :class:`Csms` -- a central system serving ``ocpp1.6`` and ``ocpp2.0.1`` on a random free
  port. The charge point id is the last segment of the URL path. It records every frame it
  receives (``cp->csms``) and sends (``csms->cp``) verbatim, with the observed UTC time, to a
  JSON-lines log (one object per line, flushed per line) by wrapping the websocket connection
  handed to the library (:class:`RecordingConnection`).
* :func:`run_charger` -- connects one scripted charge point (:class:`ChargerConfig`) and runs
  its session: BootNotification, StatusNotification per connector, Heartbeats, Authorize,
  StartTransaction / MeterValues / StopTransaction (1.6) or TransactionEvent
  Started/Updated/Ended (2.0.1), and answers CSMS-initiated calls (:class:`CsmsCall`).
* :func:`run_fleet` / :func:`record_fleet` -- a CSMS plus several chargers, concurrently.

Fault knobs live in :class:`Faults` (one per charger); each produces a genuine anomaly in the
recorded traffic (see the field docs). Everything is bounded: loops have counts, waits have
timeouts, and a run ends by itself. Time is compressible: intervals are parameters, so a
"session" takes seconds.

Example::

    from ocpptool.testing import ChargerConfig, Faults, Session, record_fleet

    record_fleet(
        [ChargerConfig("CP-1"), ChargerConfig("CP-2", faults=Faults(clock_offset_s=900))],
        "out.jsonl",
    )
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import random
import uuid
import zlib
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from ocpp import v16, v201
from ocpp.exceptions import OCPPError
from ocpp.messages import MessageType, unpack
from ocpp.routing import after, on
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

__all__ = [
    "SUBPROTOCOLS",
    "ChargerConfig",
    "ChargerReport",
    "Csms",
    "CsmsCall",
    "Faults",
    "FleetResult",
    "JsonlRecorder",
    "RecordingConnection",
    "Session",
    "record_fleet",
    "run_charger",
    "run_fleet",
]

#: OCPP version -> websocket subprotocol.
SUBPROTOCOLS = {"1.6": "ocpp1.6", "2.0.1": "ocpp2.0.1"}

# The library logs handler failures with logger.exception; keep that out of stderr
# (a NullHandler stops Python's last-resort handler) while leaving it visible to pytest/caplog.
LOGGER = logging.getLogger("ocpptool.testing.peers")
LOGGER.addHandler(logging.NullHandler())


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Faults:
    """Fault knobs for one charger. Defaults: no fault. Each knob yields a genuine anomaly.

    Charger side:

    * ``clock_offset_s``: the charger's clock runs this many seconds fast (negative: slow);
      every payload timestamp it sends is shifted, the recorded observed time is not.
    * ``meter_backwards_at``: in the charger's first transaction, the energy register drops by
      ``meter_backwards_wh`` at this sample index (0-based) and keeps rising from there.
    * ``drop_after_samples``: in the charger's first transaction, the charger aborts the TCP
      connection (no close handshake) after this many meter samples were answered; the
      transaction is never stopped and the charger's run ends.

    CSMS side (applied by the :class:`Csms` for this charger id):

    * ``unanswered_action``: the CSMS never answers the first CALL with this action (the frame is
      received and recorded, no CALLRESULT/CALLERROR is ever sent); the charger's library call
      times out after ``ChargerConfig.response_timeout`` and the charger carries on.
    * ``callerror_action``: the CSMS handler for the first CALL with this action raises, so the
      library answers a CALLERROR (``InternalError``).
    * ``resend_start``: the CSMS does not answer the first StartTransaction (1.6) /
      TransactionEvent(Started) (2.0.1); the charger times out and re-sends it once, same payload,
      new message id, which the CSMS then answers.

    More charger-side knobs:

    * ``reboots``: before its real run, the charger connects, sends a BootNotification and drops the
      connection this many times in a row (a boot loop: every reboot is a new connection).
    * ``silent_after_boot_s``: after booting (and its first StatusNotifications) the charger stays
      connected but sends nothing for this long (pair it with a short CSMS heartbeat interval).
    * ``seqno_skip_at``: 2.0.1 only: in the first transaction, the TransactionEvent Updated with this
      sample index (0-based) skips one seqNo.
    """

    clock_offset_s: float = 0.0
    meter_backwards_at: int | None = None
    meter_backwards_wh: int = 1500
    drop_after_samples: int | None = None
    unanswered_action: str | None = None
    callerror_action: str | None = None
    resend_start: bool = False
    reboots: int = 0
    silent_after_boot_s: float = 0.0
    seqno_skip_at: int | None = None


@dataclass(frozen=True)
class Session:
    """One charging session a charger runs by itself (a remote start adds more)."""

    connector_id: int = 1
    id_tag: str = "04A1B2C3D4E5F6"
    start_after: float = 0.0  #: seconds after the BootNotification was accepted
    samples: int = 8  #: MeterValues (1.6) / TransactionEvent Updated (2.0.1) count
    power_kw: float = 7.4


@dataclass(frozen=True)
class CsmsCall:
    """A call the CSMS makes to the charger, ``after`` seconds after accepting its boot.

    1.6 actions: RemoteStartTransaction, ChangeConfiguration, TriggerMessage, GetConfiguration.
    2.0.1 actions: RequestStartTransaction, GetVariables, SetVariables, TriggerMessage.
    A remote start makes the charger run a :class:`Session` on ``connector_id`` with
    ``remote_samples`` samples.
    """

    action: str
    after: float = 0.2
    connector_id: int = 1
    remote_samples: int = 6


@dataclass(frozen=True)
class ChargerConfig:
    """A scripted charge point. Intervals are in (compressible) real seconds."""

    id: str
    version: str = "1.6"  #: "1.6" or "2.0.1"
    vendor: str = "Acme"
    model: str = "AC22-T"
    connectors: int = 1
    sessions: tuple[Session, ...] = (Session(),)
    heartbeats: int = 3
    heartbeat_interval: float = 0.2
    meter_interval: float = 0.05
    #: simulated seconds of charging one meter sample stands for (sets the energy step:
    #: ``power_kw * sample_period_s / 3600`` kWh per sample, with a little jitter).
    sample_period_s: float = 60.0
    #: "full" (measurand, unit Wh, context...), "bare" (value only: defaults apply), "kwh" (unit kWh)
    meter_style: str = "full"
    response_timeout: float = 1.0
    csms_calls: tuple[CsmsCall, ...] = ()
    faults: Faults = Faults()
    max_duration: float = 30.0  #: hard bound on the whole charger run


@dataclass
class ChargerReport:
    """What a charger did, as seen from the charger (for tests and summaries)."""

    id: str
    transactions: list[Any] = field(default_factory=list)  #: ids (int for 1.6, str for 2.0.1)
    timeouts: int = 0
    call_errors: int = 0
    resent: int = 0
    dropped: bool = False
    csms_calls_received: int = 0


@dataclass
class FleetResult:
    log_path: Path
    chargers: dict[str, ChargerReport]
    issued_transaction_ids: dict[str, list[int]]  #: by charger id, 1.6 StartTransaction answers
    unanswered: list[tuple[str, str, str]]  #: (charger id, action, message id) left unanswered on purpose
    call_errors: list[tuple[str, str]]  #: (charger id, action) whose CSMS handler raised on purpose
    frames: int  #: frames recorded
    duration_s: float


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _fmt_observed(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --------------------------------------------------------------------------- recording


class JsonlRecorder:
    """Append-only JSON-lines frame log, one object per frame, flushed per line."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: IO[str] | None = self.path.open("w", encoding="utf-8")
        self.count = 0

    def write(self, ts: datetime, cp_id: str, direction: str, subprotocol: str, message: str) -> None:
        if self._fh is None:
            raise RuntimeError("recorder is closed")
        record = {
            "timestamp": _fmt_observed(ts),
            "charge_point_id": cp_id,
            "direction": direction,
            "subprotocol": subprotocol,
            "message": message,
        }
        self._fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._fh.flush()
        self.count += 1

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class RecordingConnection:
    """Wraps the server-side websocket handed to the ocpp ChargePoint; records recv()/send().

    A lock orders the log: a frame sent is logged (with its pre-send time) before any frame
    received while the send was in progress; a send that fails is not logged.
    """

    def __init__(self, ws: ServerConnection, recorder: JsonlRecorder, cp_id: str, subprotocol: str):
        self.ws = ws
        self._recorder = recorder
        self._cp_id = cp_id
        self._subprotocol = subprotocol
        self._lock = asyncio.Lock()

    async def recv(self) -> str:
        message = await self.ws.recv()
        ts = _utc_now()
        if isinstance(message, bytes):  # OCPP-J is text; keep the bytes' text verbatim anyway
            message = message.decode("utf-8", errors="replace")
        async with self._lock:
            self._recorder.write(ts, self._cp_id, "cp->csms", self._subprotocol, message)
        return message

    async def send(self, message: str) -> None:
        async with self._lock:
            ts = _utc_now()
            await self.ws.send(message)
            self._recorder.write(ts, self._cp_id, "csms->cp", self._subprotocol, message)


# --------------------------------------------------------------------------- CSMS


class _CsmsMixin:
    """Fault injection and CSMS-initiated calls shared by the 1.6 and 2.0.1 CSMS peers."""

    id: str
    _ocpp_version: str

    def _setup(self, csms: Csms, config: ChargerConfig | None) -> None:
        self.csms = csms
        self.config = config
        faults = config.faults if config else Faults()
        self._ignore: set[str] = set()
        if faults.unanswered_action:
            self._ignore.add(faults.unanswered_action)
        if faults.resend_start:
            self._ignore.add("StartTransaction" if self._ocpp_version == "1.6" else "TransactionEvent")
        self._callerror = faults.callerror_action
        self.booted = asyncio.Event()

    async def route_message(self, raw_msg: str) -> None:
        # The never-answered CALL is dropped here rather than held in a sleeping handler: the
        # library handles calls inline in its receive loop, so a sleeping handler would also stall
        # (and re-time) every later frame of this charger. On the wire the two are identical.
        with contextlib.suppress(OCPPError, ValueError):
            msg = unpack(raw_msg)
            started = msg.action != "TransactionEvent" or msg.payload.get("eventType") == "Started"
            if msg.message_type_id == MessageType.Call and msg.action in self._ignore and started:
                self._ignore.discard(msg.action)
                self.csms.unanswered.append((self.id, msg.action, msg.unique_id))
                return
        await super().route_message(raw_msg)  # type: ignore[misc]

    def _fault_point(self, action: str) -> None:
        if self._callerror == action:
            self._callerror = None
            self.csms.call_errors.append((self.id, action))
            raise RuntimeError(f"simulated backend failure in {action} handler")

    async def run_initiated(self) -> None:
        """Make this charger's CSMS-initiated calls (bounded: one per configured CsmsCall)."""
        if self.config is None or not self.config.csms_calls:
            return
        await asyncio.wait_for(self.booted.wait(), timeout=self.config.max_duration)
        start = asyncio.get_running_loop().time()
        for spec in sorted(self.config.csms_calls, key=lambda c: c.after):
            delay = spec.after - (asyncio.get_running_loop().time() - start)
            if delay > 0:
                await asyncio.sleep(delay)
            with contextlib.suppress(TimeoutError, ConnectionClosed, OCPPError):
                await self.call(self._initiated_payload(spec))  # type: ignore[attr-defined]

    def _initiated_payload(self, spec: CsmsCall) -> Any:
        raise NotImplementedError


class Csms16(_CsmsMixin, v16.ChargePoint):
    """OCPP 1.6 central system side of one connection."""

    @on("BootNotification")
    def on_boot(self, charge_point_vendor: str, charge_point_model: str, **_: Any):
        self._fault_point("BootNotification")
        self.booted.set()
        return v16.call_result.BootNotification(
            current_time=_utc_now().isoformat(timespec="seconds").replace("+00:00", "Z"),
            interval=self.csms.heartbeat_interval_s,
            status="Accepted",
        )

    @on("Heartbeat")
    def on_heartbeat(self, **_: Any):
        self._fault_point("Heartbeat")
        return v16.call_result.Heartbeat(current_time=_utc_now().isoformat().replace("+00:00", "Z"))

    @on("StatusNotification")
    def on_status(self, connector_id: int, error_code: str, status: str, **_: Any):
        self._fault_point("StatusNotification")
        return v16.call_result.StatusNotification()

    @on("Authorize")
    def on_authorize(self, id_tag: str, **_: Any):
        self._fault_point("Authorize")
        return v16.call_result.Authorize(id_tag_info={"status": self.csms.tag_status(id_tag)})

    @on("StartTransaction")
    def on_start(self, connector_id: int, id_tag: str, meter_start: int, timestamp: str, **_: Any):
        self._fault_point("StartTransaction")
        tx = self.csms.next_transaction_id(self.id)
        return v16.call_result.StartTransaction(
            transaction_id=tx, id_tag_info={"status": self.csms.tag_status(id_tag)}
        )

    @on("MeterValues")
    def on_meter_values(self, connector_id: int, meter_value: list, **_: Any):
        self._fault_point("MeterValues")
        return v16.call_result.MeterValues()

    @on("StopTransaction")
    def on_stop(self, meter_stop: int, timestamp: str, transaction_id: int, **kw: Any):
        self._fault_point("StopTransaction")
        info = {"status": self.csms.tag_status(kw["id_tag"])} if kw.get("id_tag") else None
        return v16.call_result.StopTransaction(id_tag_info=info)

    @on("DataTransfer")
    def on_data_transfer(self, vendor_id: str, **_: Any):
        self._fault_point("DataTransfer")
        return v16.call_result.DataTransfer(status="UnknownVendorId")

    def _initiated_payload(self, spec: CsmsCall) -> Any:
        if spec.action == "RemoteStartTransaction":
            return v16.call.RemoteStartTransaction(
                id_tag=f"REMOTE{spec.connector_id:02d}", connector_id=spec.connector_id
            )
        if spec.action == "ChangeConfiguration":
            return v16.call.ChangeConfiguration(key="MeterValueSampleInterval", value="60")
        if spec.action == "TriggerMessage":
            return v16.call.TriggerMessage(
                requested_message="StatusNotification", connector_id=spec.connector_id
            )
        if spec.action == "GetConfiguration":
            return v16.call.GetConfiguration(key=["HeartbeatInterval", "MeterValuesSampledData"])
        raise ValueError(f"unsupported 1.6 CSMS call {spec.action!r}")


class Csms201(_CsmsMixin, v201.ChargePoint):
    """OCPP 2.0.1 central system side of one connection."""

    @on("BootNotification")
    def on_boot(self, charging_station: dict, reason: str, **_: Any):
        self._fault_point("BootNotification")
        self.booted.set()
        return v201.call_result.BootNotification(
            current_time=_utc_now().isoformat(timespec="seconds").replace("+00:00", "Z"),
            interval=self.csms.heartbeat_interval_s,
            status="Accepted",
        )

    @on("Heartbeat")
    def on_heartbeat(self, **_: Any):
        self._fault_point("Heartbeat")
        return v201.call_result.Heartbeat(current_time=_utc_now().isoformat().replace("+00:00", "Z"))

    @on("StatusNotification")
    def on_status(self, **_: Any):
        self._fault_point("StatusNotification")
        return v201.call_result.StatusNotification()

    @on("Authorize")
    def on_authorize(self, id_token: dict, **_: Any):
        self._fault_point("Authorize")
        return v201.call_result.Authorize(
            id_token_info={"status": self.csms.tag_status(id_token["id_token"])}
        )

    @on("TransactionEvent")
    def on_transaction_event(self, event_type: str, transaction_info: dict, **kw: Any):
        self._fault_point("TransactionEvent")
        token = kw.get("id_token")
        info = {"status": self.csms.tag_status(token["id_token"])} if token else None
        return v201.call_result.TransactionEvent(id_token_info=info)

    @on("MeterValues")
    def on_meter_values(self, **_: Any):
        self._fault_point("MeterValues")
        return v201.call_result.MeterValues()

    @on("NotifyEvent")
    def on_notify_event(self, **_: Any):
        self._fault_point("NotifyEvent")
        return v201.call_result.NotifyEvent()

    def _initiated_payload(self, spec: CsmsCall) -> Any:
        if spec.action == "RequestStartTransaction":
            return v201.call.RequestStartTransaction(
                id_token={"idToken": f"REMOTE{spec.connector_id:02d}", "type": "Central"},
                remote_start_id=self.csms.next_remote_start_id(),
                evse_id=spec.connector_id,
            )
        if spec.action == "GetVariables":
            return v201.call.GetVariables(
                get_variable_data=[
                    {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}},
                    {"component": {"name": "SampledDataCtrlr"}, "variable": {"name": "TxUpdatedInterval"}},
                ]
            )
        if spec.action == "SetVariables":
            return v201.call.SetVariables(
                set_variable_data=[
                    {
                        "attributeValue": "60",
                        "component": {"name": "SampledDataCtrlr"},
                        "variable": {"name": "TxUpdatedInterval"},
                    }
                ]
            )
        if spec.action == "TriggerMessage":
            return v201.call.TriggerMessage(
                requested_message="StatusNotification", evse={"id": spec.connector_id, "connectorId": 1}
            )
        raise ValueError(f"unsupported 2.0.1 CSMS call {spec.action!r}")


class Csms:
    """A recording CSMS on 127.0.0.1 (random free port unless ``port`` is given).

    ``chargers`` supplies, by charger id, the CSMS-side :class:`Faults` and the
    :class:`CsmsCall` s to make; unknown charger ids are served with no faults and no calls.
    Use as ``async with Csms(path, chargers) as csms: ... csms.url ...``; leaving the block
    closes the server, every connection and the log.
    """

    def __init__(
        self,
        log_path: str | Path,
        chargers: Sequence[ChargerConfig] = (),
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        heartbeat_interval_s: int = 300,
        response_timeout: float = 2.0,
        first_transaction_id: int = 1001,
    ) -> None:
        self.log_path = Path(log_path)
        self.configs: dict[str, ChargerConfig] = {c.id: c for c in chargers}
        self.host = host
        self.port = port
        self.heartbeat_interval_s = heartbeat_interval_s
        self.response_timeout = response_timeout
        self._tx_ids = itertools.count(first_transaction_id)
        self._remote_ids = itertools.count(1)
        #: 1.6 transaction ids handed out, by charger id, in issue order
        self.issued_transaction_ids: dict[str, list[int]] = {}
        #: (charger id, action, message id) of CALLs deliberately left unanswered
        self.unanswered: list[tuple[str, str, str]] = []
        #: (charger id, action) of handlers that raised on purpose
        self.call_errors: list[tuple[str, str]] = []
        self.connections: dict[str, _CsmsMixin] = {}
        self._recorder: JsonlRecorder | None = None
        self._frames_at_close = 0
        self._server: Server | None = None
        self._handlers: set[asyncio.Task[Any]] = set()

    # -- bookkeeping used by the handlers
    def next_transaction_id(self, cp_id: str) -> int:
        tx = next(self._tx_ids)
        self.issued_transaction_ids.setdefault(cp_id, []).append(tx)
        return tx

    def next_remote_start_id(self) -> int:
        return next(self._remote_ids)

    @staticmethod
    def tag_status(tag: str) -> str:
        return "Blocked" if tag.upper().startswith("BLOCK") else "Accepted"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 literal needs brackets
        return f"ws://{host}:{self.port}/ocpp"

    @property
    def frames_recorded(self) -> int:
        return self._recorder.count if self._recorder else self._frames_at_close

    async def __aenter__(self) -> Csms:
        self._recorder = JsonlRecorder(self.log_path)
        self._server = await serve(
            self._handle,
            self.host,
            self.port,
            subprotocols=list(SUBPROTOCOLS.values()),  # type: ignore[arg-type]
            ping_interval=None,
            close_timeout=2,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            await asyncio.wait_for(self._server.wait_closed(), timeout=10)
            self._server = None
        if self._recorder is not None:
            self._frames_at_close = self._recorder.count
            self._recorder.close()
            self._recorder = None

    async def wait_idle(self, timeout: float = 5.0) -> None:
        """Wait (bounded) until every charger connection handler has finished."""
        pending = [t for t in self._handlers if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    async def _handle(self, ws: ServerConnection) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        path = ws.request.path if ws.request else "/"
        cp_id = path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
        subprotocol = ws.subprotocol
        if subprotocol is None or self._recorder is None:
            await ws.close(1002, "OCPP subprotocol required")
            return
        conn = RecordingConnection(ws, self._recorder, cp_id, subprotocol)
        cls = Csms16 if subprotocol == "ocpp1.6" else Csms201
        cp = cls(cp_id, conn, response_timeout=self.response_timeout, logger=LOGGER)
        cp._setup(self, self.configs.get(cp_id))
        self.connections[cp_id] = cp
        initiated = asyncio.create_task(cp.run_initiated())
        try:
            await cp.start()
        except ConnectionClosed:
            pass
        finally:
            initiated.cancel()
            await asyncio.gather(initiated, return_exceptions=True)


# --------------------------------------------------------------------------- charge points


class _Stop(Exception):
    """The charger's connection is gone; unwind the task quietly."""


_TIMEOUT = object()


class _ChargerMixin:
    """Clock, meter, task and call plumbing shared by the 1.6 and 2.0.1 charge points."""

    _connection: ClientConnection
    _call_lock: asyncio.Lock
    call: Any

    def _setup(self, cfg: ChargerConfig) -> None:
        self.cfg = cfg
        self.report = ChargerReport(cfg.id)
        self._rng = random.Random(zlib.crc32(cfg.id.encode()))
        self._tasks: set[asyncio.Task[Any]] = set()
        self._dropped = False
        self._cut_after: str | None = None  # message id whose answer triggers the connection cut
        self._tx_started = 0  # transactions started so far (the faults target the first one)
        self._busy: set[int] = set()
        self._accepted_remote = False  # connectors/EVSEs with a session in progress (or reserved)
        self._csms_calls = asyncio.Event() if cfg.csms_calls else None
        self._register = {c: self._rng.randrange(200_000, 9_000_000) for c in range(1, cfg.connectors + 1)}

    # -- clock and meter
    def now(self) -> str:
        """The charger's clock (skewed by ``Faults.clock_offset_s``), as an OCPP timestamp."""
        ts = _utc_now() + timedelta(seconds=self.cfg.faults.clock_offset_s)
        return ts.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def _advance(self, connector: int, power_kw: float, sample: int, faulty: bool) -> int:
        step = power_kw * 1000 * self.cfg.sample_period_s / 3600 * self._rng.uniform(0.9, 1.1)
        self._register[connector] += max(1, round(step))
        f = self.cfg.faults
        if faulty and f.meter_backwards_at == sample:
            self._register[connector] -= f.meter_backwards_wh
        return self._register[connector]

    # -- tasks
    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        async def guarded() -> None:
            with contextlib.suppress(_Stop, ConnectionClosed):
                await coro

        task = asyncio.ensure_future(guarded())
        self._tasks.add(task)
        return task

    async def _join_tasks(self) -> None:
        while pending := [t for t in self._tasks if not t.done()]:
            await asyncio.gather(*pending)

    async def _cancel_tasks(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def route_message(self, raw_msg: str) -> None:
        await super().route_message(raw_msg)  # type: ignore[misc]
        # Count a CSMS-initiated CALL only once it is answered and its @after hook (which may spawn
        # a remote-started session) has run, so the script never closes before either.
        with contextlib.suppress(OCPPError, ValueError):
            msg = unpack(raw_msg)
            if msg.message_type_id == MessageType.Call:
                self._got_csms_call()
            elif self._cut_after is not None and msg.unique_id == self._cut_after:
                self._abort()

    def _got_csms_call(self) -> None:
        self.report.csms_calls_received += 1
        if self._csms_calls is not None and self.report.csms_calls_received >= len(self.cfg.csms_calls):
            self._csms_calls.set()

    # -- calls
    async def _call(
        self, payload: Any, *, resend_on_timeout: bool = False, unique_id: str | None = None
    ) -> Any:
        """Call the CSMS; None on CALLERROR, _TIMEOUT on timeout, _Stop when disconnected."""
        for attempt in range(2 if resend_on_timeout else 1):
            if self._dropped:
                raise _Stop
            try:
                return await self.call(payload, suppress=False, unique_id=unique_id if attempt == 0 else None)
            except OCPPError:
                self.report.call_errors += 1
                return None
            except TimeoutError:
                self.report.timeouts += 1
                if resend_on_timeout and attempt == 0:
                    self.report.resent += 1
            except ConnectionClosed as e:
                raise _Stop from e
        return _TIMEOUT

    def _abort(self) -> None:
        """Abort the TCP connection without a close handshake (a genuine cut)."""
        if not self._dropped:
            self._dropped = True
            self.report.dropped = True
            self._connection.transport.abort()

    async def _send(self, message: str) -> None:
        if self._dropped:
            raise _Stop
        await super()._send(message)  # type: ignore[misc]

    # -- script
    async def script(self) -> None:
        if not await self.boot():
            return
        await self.initial_status()
        if self.cfg.faults.silent_after_boot_s > 0:
            await asyncio.sleep(self.cfg.faults.silent_after_boot_s)  # connected, but says nothing
        self._spawn(self._heartbeats())
        for s in self.cfg.sessions:
            self._spawn(self._session_after(s))
        await self._join_tasks()
        if self._csms_calls is not None and not self._dropped:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._csms_calls.wait(), timeout=max(2.0, self.cfg.response_timeout))
        await self._join_tasks()  # sessions started remotely

    async def _heartbeats(self) -> None:
        for _ in range(self.cfg.heartbeats):
            await asyncio.sleep(self.cfg.heartbeat_interval)
            await self._call(self._heartbeat_payload())

    async def _session_after(self, s: Session, remote: bool = False, **kw: Any) -> None:
        await asyncio.sleep(s.start_after)
        self._busy.add(s.connector_id)
        try:
            await self.session(s, remote=remote, **kw)
        finally:
            self._busy.discard(s.connector_id)

    def _free(self, connector: int | None) -> bool:
        """Reserve ``connector`` for a remote start if it exists and is idle."""
        c = connector or 1
        if 1 <= c <= self.cfg.connectors and c not in self._busy:
            self._busy.add(c)
            return True
        return False

    def _is_first_transaction(self) -> bool:
        self._tx_started += 1
        return self._tx_started == 1

    def _arm_cut(self, faulty: bool, samples_done: int) -> str | None:
        """Message id of the sample after whose answer the connection is cut, if this is the one.

        The reader aborts the connection as soon as that answer arrives (before the library hands
        it to the waiting call), so no other CALL (e.g. a Heartbeat queued on the library's call
        lock) can slip in between; ``_send`` refuses everything after the cut.
        """
        if faulty and self.cfg.faults.drop_after_samples == samples_done:
            self._cut_after = str(uuid.uuid4())
            return self._cut_after
        return None

    def _after_sample(self) -> None:
        if self._cut_after is not None:  # the cut sample went unanswered: cut anyway
            self._abort()
        if self._dropped:
            raise _Stop

    # version specific
    async def boot(self) -> bool:
        raise NotImplementedError

    async def initial_status(self) -> None:
        raise NotImplementedError

    def _heartbeat_payload(self) -> Any:
        raise NotImplementedError

    async def session(self, s: Session, remote: bool = False) -> None:
        raise NotImplementedError


class Charger16(_ChargerMixin, v16.ChargePoint):
    """Scripted OCPP 1.6 charge point."""

    def _heartbeat_payload(self) -> Any:
        return v16.call.Heartbeat()

    async def boot(self) -> bool:
        res = await self._call(
            v16.call.BootNotification(
                charge_point_model=self.cfg.model,
                charge_point_vendor=self.cfg.vendor,
                charge_point_serial_number=f"SN-{self.cfg.id}",
                firmware_version="1.4.2",
            )
        )
        return res not in (None, _TIMEOUT) and res.status == "Accepted"

    async def _status(self, connector: int, status: str) -> None:
        await self._call(
            v16.call.StatusNotification(
                connector_id=connector, error_code="NoError", status=status, timestamp=self.now()
            )
        )

    async def initial_status(self) -> None:
        for c in range(0, self.cfg.connectors + 1):
            await self._status(c, "Available")

    def _sampled(self, wh: int, power_kw: float, context: str = "Sample.Periodic") -> list[dict[str, Any]]:
        style = self.cfg.meter_style
        if style == "bare":
            return [{"value": str(wh)}]
        if style == "kwh":
            return [
                {
                    "value": f"{wh / 1000:.3f}",
                    "measurand": "Energy.Active.Import.Register",
                    "unit": "kWh",
                    "context": context,
                }
            ]
        power_w = round(power_kw * 1000 * self._rng.uniform(0.97, 1.03))
        return [
            {
                "value": str(wh),
                "context": context,
                "format": "Raw",
                "measurand": "Energy.Active.Import.Register",
                "location": "Outlet",
                "unit": "Wh",
            },
            {"value": str(power_w), "context": context, "measurand": "Power.Active.Import", "unit": "W"},
        ]

    async def session(self, s: Session, remote: bool = False) -> None:
        c = s.connector_id
        await self._status(c, "Preparing")
        if not remote:
            res = await self._call(v16.call.Authorize(id_tag=s.id_tag))
            if res is not _TIMEOUT and res is not None and res.id_tag_info.get("status") != "Accepted":
                await self._status(c, "Available")
                return
        faulty = self._is_first_transaction()
        meter_start = self._register[c]
        res = await self._call(
            v16.call.StartTransaction(
                connector_id=c, id_tag=s.id_tag, meter_start=meter_start, timestamp=self.now()
            ),
            resend_on_timeout=True,
        )
        if res is None or res is _TIMEOUT:
            await self._status(c, "Available")
            return
        tx = res.transaction_id
        self.report.transactions.append(tx)
        await self._status(c, "Charging")
        for i in range(s.samples):
            await asyncio.sleep(self.cfg.meter_interval)
            wh = self._advance(c, s.power_kw, i, faulty)
            await self._call(
                v16.call.MeterValues(
                    connector_id=c,
                    transaction_id=tx,
                    meter_value=[{"timestamp": self.now(), "sampledValue": self._sampled(wh, s.power_kw)}],
                ),
                unique_id=self._arm_cut(faulty, i + 1),
            )
            self._after_sample()
        await self._status(c, "Finishing")
        await self._call(
            v16.call.StopTransaction(
                meter_stop=self._register[c],
                timestamp=self.now(),
                transaction_id=tx,
                reason="EVDisconnected" if s.samples % 2 else "Local",
                id_tag=s.id_tag,
            )
        )
        await self._status(c, "Available")

    # -- CSMS-initiated calls
    @on("RemoteStartTransaction")
    def on_remote_start(self, id_tag: str, connector_id: int | None = None, **_: Any):
        self._accepted_remote = self._free(connector_id)
        return v16.call_result.RemoteStartTransaction(
            status="Accepted" if self._accepted_remote else "Rejected"
        )

    @after("RemoteStartTransaction")
    def after_remote_start(self, id_tag: str, connector_id: int | None = None, **_: Any):
        connector = connector_id or 1
        if self._accepted_remote:
            spec = next((c for c in self.cfg.csms_calls if c.action == "RemoteStartTransaction"), None)
            samples = spec.remote_samples if spec else 4
            self._spawn(self._session_after(Session(connector, id_tag, 0.0, samples), remote=True))

    @on("ChangeConfiguration")
    def on_change_configuration(self, key: str, value: str, **_: Any):
        known = {"MeterValueSampleInterval", "HeartbeatInterval", "MeterValuesSampledData"}
        return v16.call_result.ChangeConfiguration(status="Accepted" if key in known else "NotSupported")

    @on("GetConfiguration")
    def on_get_configuration(self, key: list | None = None, **_: Any):
        values = {
            "HeartbeatInterval": "300",
            "MeterValueSampleInterval": "60",
            "MeterValuesSampledData": "Energy.Active.Import.Register,Power.Active.Import",
        }
        keys = key or list(values)
        return v16.call_result.GetConfiguration(
            configuration_key=[
                {"key": k, "readonly": False, "value": values[k]} for k in keys if k in values
            ],
            unknown_key=[k for k in keys if k not in values] or None,
        )

    @on("TriggerMessage")
    def on_trigger(self, requested_message: str, connector_id: int | None = None, **_: Any):
        ok = requested_message in ("StatusNotification", "Heartbeat", "MeterValues")
        return v16.call_result.TriggerMessage(status="Accepted" if ok else "NotImplemented")

    @after("TriggerMessage")
    def after_trigger(self, requested_message: str, connector_id: int | None = None, **_: Any):
        c = connector_id or 1
        if requested_message == "StatusNotification":
            self._spawn(self._status(c, "Available"))
        elif requested_message == "Heartbeat":
            self._spawn(self._call(v16.call.Heartbeat()))
        elif requested_message == "MeterValues":
            sampled = self._sampled(self._register.get(c, 0), 0.0, context="Trigger")
            self._spawn(
                self._call(
                    v16.call.MeterValues(
                        connector_id=c, meter_value=[{"timestamp": self.now(), "sampledValue": sampled}]
                    )
                )
            )


class Charger201(_ChargerMixin, v201.ChargePoint):
    """Scripted OCPP 2.0.1 charging station (one connector per EVSE)."""

    def _heartbeat_payload(self) -> Any:
        return v201.call.Heartbeat()

    async def boot(self) -> bool:
        res = await self._call(
            v201.call.BootNotification(
                charging_station={
                    "model": self.cfg.model,
                    "vendorName": self.cfg.vendor,
                    "serialNumber": f"SN-{self.cfg.id}",
                    "firmwareVersion": "2.3.0",
                },
                reason="PowerUp",
            )
        )
        return res not in (None, _TIMEOUT) and res.status == "Accepted"

    async def _status(self, evse: int, status: str) -> None:
        await self._call(
            v201.call.StatusNotification(
                timestamp=self.now(), connector_status=status, evse_id=evse, connector_id=1
            )
        )

    async def initial_status(self) -> None:
        for evse in range(1, self.cfg.connectors + 1):
            await self._status(evse, "Available")

    def _meter_value(self, wh: int, power_kw: float, context: str) -> list[dict[str, Any]]:
        style = self.cfg.meter_style
        if style == "bare":
            sampled: list[dict[str, Any]] = [{"value": wh}]
        elif style == "kwh":
            sampled = [
                {
                    "value": round(wh / 1000, 3),
                    "context": context,
                    "measurand": "Energy.Active.Import.Register",
                    "unitOfMeasure": {"unit": "kWh"},
                }
            ]
        else:
            power_w = round(power_kw * 1000 * self._rng.uniform(0.97, 1.03))
            sampled = [
                {
                    "value": wh,
                    "context": context,
                    "measurand": "Energy.Active.Import.Register",
                    "location": "Outlet",
                    "unitOfMeasure": {"unit": "Wh"},
                },
                {
                    "value": power_w,
                    "context": context,
                    "measurand": "Power.Active.Import",
                    "unitOfMeasure": {"unit": "W"},
                },
            ]
        return [{"timestamp": self.now(), "sampledValue": sampled}]

    async def _event(
        self,
        event_type: str,
        seq: int,
        trigger: str,
        info: dict[str, Any],
        unique_id: str | None = None,
        **extra: Any,
    ) -> Any:
        payload = v201.call.TransactionEvent(
            event_type=event_type,
            timestamp=self.now(),
            trigger_reason=trigger,
            seq_no=seq,
            transaction_info=info,
            **extra,
        )
        return await self._call(payload, resend_on_timeout=event_type == "Started", unique_id=unique_id)

    async def session(self, s: Session, remote: bool = False, remote_start_id: int | None = None) -> None:
        evse = s.connector_id
        token = {"idToken": s.id_tag, "type": "Central" if remote else "ISO14443"}
        await self._status(evse, "Occupied")
        if not remote:
            res = await self._call(v201.call.Authorize(id_token=token))
            if res is not _TIMEOUT and res is not None and res.id_token_info.get("status") != "Accepted":
                await self._status(evse, "Available")
                return
        faulty = self._is_first_transaction()
        tx = str(uuid.UUID(int=self._rng.getrandbits(128), version=4))
        info: dict[str, Any] = {"transactionId": tx, "chargingState": "Charging"}
        if remote_start_id is not None:
            info["remoteStartId"] = remote_start_id
        res = await self._event(
            "Started",
            0,
            "RemoteStart" if remote else "Authorized",
            info,
            id_token=token,
            evse={"id": evse, "connectorId": 1},
            meter_value=self._meter_value(self._register[evse], s.power_kw, "Transaction.Begin"),
        )
        if res is _TIMEOUT:
            await self._status(evse, "Available")
            return
        self.report.transactions.append(tx)
        seq = 1
        for i in range(s.samples):
            await asyncio.sleep(self.cfg.meter_interval)
            wh = self._advance(evse, s.power_kw, i, faulty)
            if faulty and self.cfg.faults.seqno_skip_at == i:
                seq += 1  # a TransactionEvent that was never sent
            await self._event(
                "Updated",
                seq,
                "MeterValuePeriodic",
                {"transactionId": tx, "chargingState": "Charging"},
                meter_value=self._meter_value(wh, s.power_kw, "Sample.Periodic"),
                unique_id=self._arm_cut(faulty, i + 1),
            )
            seq += 1
            self._after_sample()
        await self._event(
            "Ended",
            seq,
            "EVDeparted" if s.samples % 2 else "StopAuthorized",
            {
                "transactionId": tx,
                "chargingState": "Idle",
                "stoppedReason": "EVDisconnected" if s.samples % 2 else "Local",
            },
            meter_value=self._meter_value(self._register[evse], s.power_kw, "Transaction.End"),
        )
        await self._status(evse, "Available")

    # -- CSMS-initiated calls
    @on("RequestStartTransaction")
    def on_request_start(self, id_token: dict, remote_start_id: int, evse_id: int | None = None, **_: Any):
        self._accepted_remote = self._free(evse_id)
        return v201.call_result.RequestStartTransaction(
            status="Accepted" if self._accepted_remote else "Rejected"
        )

    @after("RequestStartTransaction")
    def after_request_start(self, id_token: dict, remote_start_id: int, evse_id: int | None = None, **_: Any):
        evse = evse_id or 1
        if self._accepted_remote:
            spec = next((c for c in self.cfg.csms_calls if c.action == "RequestStartTransaction"), None)
            samples = spec.remote_samples if spec else 4
            s = Session(evse, id_token["id_token"], 0.0, samples)
            self._spawn(self._session_after(s, remote=True, remote_start_id=remote_start_id))

    @on("GetVariables")
    def on_get_variables(self, get_variable_data: list, **_: Any):
        values = {
            ("OCPPCommCtrlr", "HeartbeatInterval"): "300",
            ("SampledDataCtrlr", "TxUpdatedInterval"): "60",
        }
        results = []
        for item in get_variable_data:
            key = (item["component"]["name"], item["variable"]["name"])
            result: dict[str, Any] = {
                "attributeStatus": "Accepted" if key in values else "UnknownVariable",
                "component": {"name": key[0]},
                "variable": {"name": key[1]},
            }
            if key in values:
                result["attributeValue"] = values[key]
            results.append(result)
        return v201.call_result.GetVariables(get_variable_result=results)

    @on("SetVariables")
    def on_set_variables(self, set_variable_data: list, **_: Any):
        return v201.call_result.SetVariables(
            set_variable_result=[
                {
                    "attributeStatus": "Accepted",
                    "component": {"name": d["component"]["name"]},
                    "variable": {"name": d["variable"]["name"]},
                }
                for d in set_variable_data
            ]
        )

    @on("TriggerMessage")
    def on_trigger(self, requested_message: str, evse: dict | None = None, **_: Any):
        ok = requested_message in ("StatusNotification", "Heartbeat")
        return v201.call_result.TriggerMessage(status="Accepted" if ok else "NotImplemented")

    @after("TriggerMessage")
    def after_trigger(self, requested_message: str, evse: dict | None = None, **_: Any):
        if requested_message == "StatusNotification":
            self._spawn(self._status((evse or {}).get("id", 1), "Available"))
        elif requested_message == "Heartbeat":
            self._spawn(self._call(v201.call.Heartbeat()))


# --------------------------------------------------------------------------- runners


def connect_charger(cfg: ChargerConfig, csms_url: str, *, open_timeout: float = 5) -> Any:
    """The WebSocket a charger opens: ``csms_url`` + ``/<cfg.id>``, its version's subprotocol, no pings."""
    return connect(
        f"{csms_url.rstrip('/')}/{cfg.id}",
        subprotocols=[SUBPROTOCOLS[cfg.version]],  # type: ignore[list-item]
        open_timeout=open_timeout,
        close_timeout=2,
        ping_interval=None,
    )


async def drive(cp: Any, work: Awaitable[Any], timeout: float, *tolerated: type[BaseException]) -> None:
    """Run a charger's ``work`` while its reader runs; a scripted stop, a closed connection and ``tolerated``
    errors end it quietly, and its tasks and reader are always cleaned up."""
    reader = asyncio.create_task(cp.start())
    try:
        with contextlib.suppress(_Stop, ConnectionClosed, *tolerated):
            await asyncio.wait_for(work, timeout=timeout)
    finally:
        await cp._cancel_tasks()
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


async def run_charger(cfg: ChargerConfig, csms_url: str) -> ChargerReport:
    """Connect ``cfg`` to ``csms_url`` (``/<cfg.id>`` is appended) and run its script to the end."""
    if cfg.version not in SUBPROTOCOLS:
        raise ValueError(f"unsupported OCPP version {cfg.version!r}")
    cls = Charger16 if cfg.version == "1.6" else Charger201
    for _ in range(cfg.faults.reboots):
        await _boot_and_drop(cls, cfg, csms_url)
    async with connect_charger(cfg, csms_url) as ws:
        cp = cls(cfg.id, ws, response_timeout=cfg.response_timeout, logger=LOGGER)
        cp._setup(cfg)
        await drive(cp, cp.script(), cfg.max_duration)
    return cp.report


async def _boot_and_drop(cls: type, cfg: ChargerConfig, csms_url: str) -> None:
    """One iteration of a boot loop: connect, BootNotification, connection gone."""
    async with connect_charger(cfg, csms_url) as ws:
        cp = cls(cfg.id, ws, response_timeout=cfg.response_timeout, logger=LOGGER)
        cp._setup(cfg)
        await drive(cp, cp.boot(), cfg.response_timeout * 2, TimeoutError)


async def run_fleet(
    chargers: Sequence[ChargerConfig],
    log_path: str | Path,
    *,
    stagger_s: float = 0.02,
    csms_options: Mapping[str, Any] | None = None,
) -> FleetResult:
    """Serve a recording :class:`Csms` and run ``chargers`` against it concurrently."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    async with Csms(log_path, chargers, **(csms_options or {})) as csms:

        async def one(i: int, cfg: ChargerConfig) -> ChargerReport:
            await asyncio.sleep(i * stagger_s)
            return await run_charger(cfg, csms.url)

        reports = await asyncio.gather(*(one(i, c) for i, c in enumerate(chargers)))
        await csms.wait_idle()
    return FleetResult(
        log_path=Path(log_path),
        chargers={r.id: r for r in reports},
        issued_transaction_ids={k: list(v) for k, v in csms.issued_transaction_ids.items()},
        unanswered=list(csms.unanswered),
        call_errors=list(csms.call_errors),
        frames=csms.frames_recorded,
        duration_s=loop.time() - t0,
    )


def record_fleet(chargers: Sequence[ChargerConfig], log_path: str | Path, **kwargs: Any) -> FleetResult:
    """Synchronous wrapper around :func:`run_fleet` (runs its own event loop)."""
    return asyncio.run(run_fleet(chargers, log_path, **kwargs))
