"""Generate a large, deterministic, realistic OCPP fleet log as the CSMS saw it (for benchmarks).

A discrete-event simulation: every charger (and each of its connectors) is a small state machine that
schedules its next exchange; a single heap orders all frames of the fleet by time, so the output is a day
of interleaved traffic like a real CSMS log. Memory is constant (the heap holds a few entries per charger)
and the file is written as it is produced.

Per OCPP 1.6 charger: BootNotification, StatusNotification per connector, Heartbeats, Authorize (a few
rejected), Start/StopTransaction with CSMS-issued transaction ids, MeterValues every ~60 s with
Energy.Active.Import.Register (rising), Power.Active.Import, Voltage and Current.Import; CSMS-initiated
RemoteStartTransaction, ChangeConfiguration, TriggerMessage, GetConfiguration and DataTransfer (which some
chargers answer with a CALLERROR NotImplemented). A few CP calls get a CALLERROR InternalError from the
CSMS. A few percent of the chargers speak OCPP 2.0.1 (TransactionEvent, SetVariables,
RequestStartTransaction). Every CALL gets its response shortly after on the same charger; a charger never
has two of its own CALLs outstanding at once. The file ends after exactly ``--messages`` frames (a log cut
at that point, so the very last calls may be unanswered, as in a real rotated log).

Formats:
  jsonl          {"timestamp": ..., "charge_point_id": ..., "direction": "cp->csms", "subprotocol": ..., "message": "[...]"}
  mobilityhouse  2024-05-01 10:00:00,123 - ocpp - INFO - CP-0001: receive message [...] / ...: send [...]
                 plus the library's "Received a CALLError: <CallError ...>'" WARNING after a CALLERROR it
                 receives (an extra line that is not an extra frame).

A ``PATH.meta.json`` next to the output records the parameters and the exact counts (frames, lines, per
message type), which the benchmark uses to check the decoder's row count.

    uv run python bench/gen_fleet.py --format jsonl --messages 1000000 --out bench/out/fleet.jsonl
"""

from __future__ import annotations

import argparse
import gzip
import heapq
import json
import os
import random
import sys
import time
from pathlib import Path

GENERATOR_VERSION = 1
START_UNIX = 1714521600  # 2024-05-01T00:00:00Z
US = 1_000_000
MIN = 60 * US

CP_TO_CSMS, CSMS_TO_CP = 0, 1
LINE, PROC, WARN = 1, 0, 2  # heap entry kinds


# ------------------------------------------------------------------------------------------ the fleet


class Charger:
    __slots__ = ("cid", "v201", "heads", "cp_busy", "csms_busy", "interval", "dt_unsupported",
                 "vendor", "model", "serial", "fw", "connectors", "phases", "max_kw")

    def __init__(self, cid: str, v201: bool, rng: random.Random) -> None:
        self.cid = cid
        self.v201 = v201
        self.heads: tuple[str, str] = ("", "")
        self.cp_busy = 0  # time the charger's last own CALL was answered (one outstanding CALL at a time)
        self.csms_busy = 0  # same for the CSMS's CALLs to this charger
        self.interval = 300
        self.dt_unsupported = rng.random() < 0.25
        self.vendor, self.model, self.max_kw, self.phases = rng.choice(MODELS)
        self.serial = f"SN-{rng.getrandbits(32):08X}"
        self.fw = rng.choice(("1.4.2", "1.4.3", "2.0.1-b7", "3.11.0"))
        self.connectors = 2 if self.max_kw <= 22 else 1


MODELS = [
    ("Voltbox", "VB-DUO-22", 22.0, 3),
    ("Voltbox", "VB-SOLO-11", 11.0, 3),
    ("ChargeCo", "CC-Wall-7", 7.4, 1),
    ("ChargeCo", "CC-Pillar-22", 22.0, 3),
    ("Amperio", "AMP-DC50", 50.0, 3),
]

CHANGE_CONFIG = [
    ("MeterValueSampleInterval", "60"),
    ("HeartbeatInterval", "300"),
    ("LocalAuthorizeOffline", "true"),
    ("ConnectionTimeOut", "90"),
    ("MeterValuesSampledData", "Energy.Active.Import.Register,Power.Active.Import,Voltage,Current.Import"),
]


class Sim:
    """The simulation; :meth:`run` writes lines through ``emit``."""

    def __init__(self, n_chargers: int, seed: int, share_201: float) -> None:
        self.rng = rng = random.Random(seed)
        self.rand = rng.random
        self.bits = rng.getrandbits
        self.heap: list = []
        self.seq = 0
        self.tx_id = 100_000
        self.tags = [f"04{rng.getrandbits(48):012X}" for _ in range(max(50, n_chargers * 4))]
        n201 = round(n_chargers * share_201)
        self.chargers = []
        for i in range(n_chargers):
            v201 = i >= n_chargers - n201
            cid = f"CS-{i + 1:04d}" if v201 else f"CP-{i + 1:04d}"
            self.chargers.append(Charger(cid, v201, rng))
        rng.shuffle(self.chargers)
        # The CSMS restarts at midnight: every charger reconnects within the first few minutes.
        for ch in self.chargers:
            self.schedule(rng.randrange(0, 5 * MIN), self.boot, ch, None)

    # ---------------------------------------------------------------------------------- plumbing

    def ri(self, lo: int, hi: int) -> int:
        """A uniform int in [lo, hi) (cheaper than randrange; the tiny bias does not matter here)."""
        return lo + int(self.rand() * (hi - lo))

    def schedule(self, t: int, fn, ch: Charger, state) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, PROC, fn, ch, state))

    def line(self, t: int, ch: Charger, direction: int, frame: str, kind: int = LINE) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, kind, direction, ch, frame))

    def uid(self) -> str:
        h = f"{self.bits(128):032x}"
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{VARIANT[h[16]]}{h[17:20]}-{h[20:]}"

    def cp_call(self, t: int, ch: Charger, action: str, payload: str, result: str, *,
                err: float = 0.002) -> int:
        """A CALL from the charger answered by the CSMS; returns when the response was sent."""
        rand = self.rand
        busy = ch.cp_busy + 2_000 + int(rand() * 38_000)
        if busy > t:
            t = busy
        h = f"{self.bits(128):032x}"
        mid = f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{VARIANT[h[16]]}{h[17:20]}-{h[20:]}"
        tr = t + 1_500 + int(rand() * 58_500)  # the CSMS answers in 1.5-60 ms
        heap = self.heap
        seq = self.seq
        heapq.heappush(heap, (t, seq + 1, LINE, CP_TO_CSMS, ch, f'[2,"{mid}","{action}",{payload}]'))
        if err and rand() < err:
            resp = f'[4,"{mid}","InternalError","An unexpected error occurred.",{{}}]'
        else:
            resp = f'[3,"{mid}",{result}]'
        heapq.heappush(heap, (tr, seq + 2, LINE, CSMS_TO_CP, ch, resp))
        self.seq = seq + 2
        ch.cp_busy = tr
        return tr

    def csms_call(self, t: int, ch: Charger, action: str, payload: str, result: str | None) -> int:
        """A CALL from the CSMS answered by the charger (``result`` None: CALLERROR NotImplemented)."""
        t = max(t, ch.csms_busy + self.ri(2_000, 40_000))
        mid = self.uid()
        self.line(t, ch, CSMS_TO_CP, f'[2,"{mid}","{action}",{payload}]')
        tr = t + self.ri(40_000, 600_000)  # chargers answer in 40-600 ms (cellular)
        if result is None:
            self.line(tr, ch, CP_TO_CSMS,
                      f'[4,"{mid}","NotImplemented","Request Action is recognized but not supported by the receiver",{{}}]')
            self.line(tr, ch, CP_TO_CSMS, mid, WARN)
        else:
            self.line(tr, ch, CP_TO_CSMS, f'[3,"{mid}",{result}]')
        ch.csms_busy = tr
        return tr

    # ------------------------------------------------------------------------------ charger level

    def boot(self, t: int, ch: Charger, _state) -> None:
        now = iso_ms(t)
        if ch.v201:
            t = self.cp_call(
                t, ch, "BootNotification",
                f'{{"reason":"PowerUp","chargingStation":{{"model":"{ch.model}","vendorName":"{ch.vendor}",'
                f'"serialNumber":"{ch.serial}","firmwareVersion":"{ch.fw}"}}}}',
                f'{{"currentTime":"{iso_s(t)}","interval":{ch.interval},"status":"Accepted"}}', err=0)
            for evse in range(1, ch.connectors + 1):
                t = self.cp_call(t, ch, "StatusNotification",
                                 f'{{"timestamp":"{iso_ms(t)}","connectorStatus":"Available","evseId":{evse},'
                                 f'"connectorId":1}}', "{}", err=0)
        else:
            t = self.cp_call(
                t, ch, "BootNotification",
                f'{{"chargePointModel":"{ch.model}","chargePointVendor":"{ch.vendor}",'
                f'"chargePointSerialNumber":"{ch.serial}","firmwareVersion":"{ch.fw}"}}',
                f'{{"currentTime":"{now[:-5]}Z","interval":{ch.interval},"status":"Accepted"}}', err=0)
            for c in range(0, ch.connectors + 1):
                t = self.cp_call(t, ch, "StatusNotification",
                                 f'{{"connectorId":{c},"errorCode":"NoError","status":"Available",'
                                 f'"timestamp":"{iso_ms(t)}"}}', "{}", err=0)
        self.schedule(t + ch.interval * US + self.ri(-2 * US, 2 * US), self.heartbeat, ch, None)
        self.schedule(t + self.ri(10 * MIN, 240 * MIN), self.csms_ops, ch, None)
        for c in range(1, ch.connectors + 1):
            self.schedule(t + self.ri(5 * US, 90 * MIN), self.connector, ch, Conn(c))

    def heartbeat(self, t: int, ch: Charger, _state) -> None:
        t = self.cp_call(t, ch, "Heartbeat", "{}", f'{{"currentTime":"{iso_ms(t)}"}}', err=0.0005)
        self.schedule(t + ch.interval * US + self.ri(-2 * US, 2 * US), self.heartbeat, ch, None)

    def csms_ops(self, t: int, ch: Charger, _state) -> None:
        """Occasional CSMS-initiated operations (not the remote starts: those are part of a session)."""
        rng = self.rng
        r = rng.random()
        if ch.v201:
            if r < 0.6:
                name, value = rng.choice((("TxUpdatedInterval", "60"), ("HeartbeatInterval", "300")))
                comp = "SampledDataCtrlr" if name.startswith("Tx") else "OCPPCommCtrlr"
                var = f'"component":{{"name":"{comp}"}},"variable":{{"name":"{name}"}}'
                self.csms_call(t, ch, "SetVariables",
                               f'{{"setVariableData":[{{"attributeValue":"{value}",{var}}}]}}',
                               f'{{"setVariableResult":[{{"attributeStatus":"Accepted",{var}}}]}}')
            else:
                self.csms_call(t, ch, "GetVariables",
                               '{"getVariableData":[{"component":{"name":"OCPPCommCtrlr"},'
                               '"variable":{"name":"HeartbeatInterval"}}]}',
                               '{"getVariableResult":[{"attributeStatus":"Accepted","attributeValue":"300",'
                               '"component":{"name":"OCPPCommCtrlr"},"variable":{"name":"HeartbeatInterval"}}]}')
        elif r < 0.45:
            key, value = rng.choice(CHANGE_CONFIG)
            status = "Accepted" if rng.random() < 0.92 else rng.choice(("Rejected", "NotSupported", "RebootRequired"))
            self.csms_call(t, ch, "ChangeConfiguration", f'{{"key":"{key}","value":"{value}"}}',
                           f'{{"status":"{status}"}}')
        elif r < 0.65:
            self.csms_call(t, ch, "GetConfiguration", '{"key":["HeartbeatInterval","MeterValueSampleInterval"]}',
                           '{"configurationKey":[{"key":"HeartbeatInterval","readonly":false,"value":"300"},'
                           '{"key":"MeterValueSampleInterval","readonly":false,"value":"60"}]}')
        elif r < 0.85:
            tr = self.csms_call(t, ch, "TriggerMessage", '{"requestedMessage":"StatusNotification","connectorId":1}',
                                '{"status":"Accepted"}')
            self.cp_call(tr + self.ri(20_000, 300_000), ch, "StatusNotification",
                         f'{{"connectorId":1,"errorCode":"NoError","status":"Available","timestamp":"{iso_ms(tr)}"}}',
                         "{}")
        else:
            self.csms_call(t, ch, "DataTransfer", '{"vendorId":"com.example.csms","messageId":"tariff","data":"0.39"}',
                           None if ch.dt_unsupported else '{"status":"Accepted"}')
        self.schedule(t + self.ri(60 * MIN, 480 * MIN), self.csms_ops, ch, None)

    # ----------------------------------------------------------------------------- connector level

    def connector(self, t: int, ch: Charger, st: Conn) -> None:
        (self.evse201 if ch.v201 else self.conn16)(t, ch, st)

    def conn16(self, t: int, ch: Charger, st: Conn) -> None:
        rng = self.rng
        c = st.n
        s = st.state
        if s == IDLE:
            st.tag = rng.choice(self.tags)
            if rng.random() < 0.12:  # started from the app: the CSMS sends RemoteStartTransaction
                st.remote = True
                st.tag = f"APP{rng.getrandbits(32):08X}"
                t = self.csms_call(t, ch, "RemoteStartTransaction", f'{{"connectorId":{c},"idTag":"{st.tag}"}}',
                                   '{"status":"Accepted"}')
                st.state = PREPARING
                return self.schedule(t + self.ri(300_000, 3 * US), self.connector, ch, st)
            st.remote = False
            ok = rng.random() >= 0.03
            t = self.cp_call(t, ch, "Authorize", f'{{"idTag":"{st.tag}"}}',
                             f'{{"idTagInfo":{{"status":"{"Accepted" if ok else rng.choice(("Invalid", "Blocked", "Expired"))}"}}}}')
            if not ok:
                return self.schedule(t + self.ri(2 * MIN, 60 * MIN), self.connector, ch, st)
            st.state = PREPARING
            return self.schedule(t + self.ri(200_000, 2 * US), self.connector, ch, st)
        if s == PREPARING:
            t = self.cp_call(t, ch, "StatusNotification",
                             f'{{"connectorId":{c},"errorCode":"NoError","status":"Preparing","timestamp":"{iso_ms(t)}"}}',
                             "{}")
            self.tx_id += 1
            st.tx = self.tx_id
            st.new_session(rng, ch, t)
            t = self.cp_call(t + self.ri(3 * US, 40 * US), ch, "StartTransaction",
                             f'{{"connectorId":{c},"idTag":"{st.tag}","meterStart":{int(st.wh)},'
                             f'"timestamp":"{iso_ms(t)}"}}',
                             f'{{"idTagInfo":{{"status":"Accepted"}},"transactionId":{st.tx}}}', err=0)
            t = self.cp_call(t, ch, "StatusNotification",
                             f'{{"connectorId":{c},"errorCode":"NoError","status":"Charging","timestamp":"{iso_ms(t)}"}}',
                             "{}")
            st.state = CHARGING
            st.last = t
            return self.schedule(t + 60 * US + self.ri(-US, US), self.connector, ch, st)
        if s == CHARGING:
            w = st.advance(rng, t)
            ts = iso_ms(t)
            v = 230.0 + rng.uniform(-4.0, 4.0)
            amps = w / (v * ch.phases)
            self.cp_call(
                t, ch, "MeterValues",
                f'{{"connectorId":{c},"transactionId":{st.tx},"meterValue":[{{"timestamp":"{ts}","sampledValue":['
                f'{{"value":"{int(st.wh)}","context":"Sample.Periodic","format":"Raw","measurand":"Energy.Active.Import.Register","location":"Outlet","unit":"Wh"}},'
                f'{{"value":"{int(w)}","context":"Sample.Periodic","format":"Raw","measurand":"Power.Active.Import","location":"Outlet","unit":"W"}},'
                f'{{"value":"{v:.1f}","context":"Sample.Periodic","format":"Raw","measurand":"Voltage","phase":"L1-N","location":"Outlet","unit":"V"}},'
                f'{{"value":"{amps:.2f}","context":"Sample.Periodic","format":"Raw","measurand":"Current.Import","phase":"L1","location":"Outlet","unit":"A"}}]}}]}}',
                "{}")
            if t >= st.end:
                st.state = STOPPING
                return self.schedule(t + self.ri(5 * US, 50 * US), self.connector, ch, st)
            return self.schedule(t + 60 * US + self.ri(-US, US), self.connector, ch, st)
        if s == STOPPING:
            st.advance(rng, t)
            reason = rng.choice(("EVDisconnected", "EVDisconnected", "Local", "Remote")) if not st.remote else "Remote"
            t = self.cp_call(t, ch, "StatusNotification",
                             f'{{"connectorId":{c},"errorCode":"NoError","status":"Finishing","timestamp":"{iso_ms(t)}"}}',
                             "{}")
            t = self.cp_call(t + self.ri(200_000, 2 * US), ch, "StopTransaction",
                             f'{{"meterStop":{int(st.wh)},"timestamp":"{iso_ms(t)}","transactionId":{st.tx},'
                             f'"reason":"{reason}","idTag":"{st.tag}"}}',
                             '{"idTagInfo":{"status":"Accepted"}}', err=0)
            st.state = UNPLUG
            return self.schedule(t + self.ri(10 * US, 5 * MIN), self.connector, ch, st)
        if s == UNPLUG:
            t = self.cp_call(t, ch, "StatusNotification",
                             f'{{"connectorId":{c},"errorCode":"NoError","status":"Available","timestamp":"{iso_ms(t)}"}}',
                             "{}")
            st.state = IDLE
            return self.schedule(t + int(rng.expovariate(1 / 50) * MIN) + MIN, self.connector, ch, st)

    def evse201(self, t: int, ch: Charger, st: Conn) -> None:
        rng = self.rng
        e = st.n
        s = st.state
        if s == IDLE:
            st.seq_no = 0
            if rng.random() < 0.12:
                st.remote = True
                st.tag = f"APP{rng.getrandbits(32):08X}"
                st.rsid = self.ri(1, 1 << 30)
                t = self.csms_call(t, ch, "RequestStartTransaction",
                                   f'{{"idToken":{{"idToken":"{st.tag}","type":"Central"}},"remoteStartId":{st.rsid},"evseId":{e}}}',
                                   '{"status":"Accepted"}')
                st.ttype = "Central"
            else:
                st.remote = False
                st.tag = rng.choice(self.tags)
                st.ttype = "ISO14443"
                ok = rng.random() >= 0.03
                t = self.cp_call(t, ch, "Authorize", f'{{"idToken":{{"idToken":"{st.tag}","type":"ISO14443"}}}}',
                                 f'{{"idTokenInfo":{{"status":"{"Accepted" if ok else "Invalid"}"}}}}')
                if not ok:
                    return self.schedule(t + self.ri(2 * MIN, 60 * MIN), self.connector, ch, st)
            t = self.cp_call(t + self.ri(300_000, 3 * US), ch, "StatusNotification",
                             f'{{"timestamp":"{iso_ms(t)}","connectorStatus":"Occupied","evseId":{e},"connectorId":1}}',
                             "{}")
            st.tx = self.uid()
            st.new_session(rng, ch, t)
            trig = "RemoteStart" if st.remote else "Authorized"
            rs = f',"remoteStartId":{st.rsid}' if st.remote else ""
            t = self.cp_call(
                t + self.ri(3 * US, 30 * US), ch, "TransactionEvent",
                f'{{"eventType":"Started","timestamp":"{iso_ms(t)}","triggerReason":"{trig}","seqNo":0,'
                f'"transactionInfo":{{"transactionId":"{st.tx}","chargingState":"Charging"{rs}}},'
                f'"meterValue":[{{"timestamp":"{iso_ms(t)}","sampledValue":[{{"value":{int(st.wh)},'
                f'"context":"Transaction.Begin","measurand":"Energy.Active.Import.Register","location":"Outlet",'
                f'"unitOfMeasure":{{"unit":"Wh"}}}}]}}],"evse":{{"id":{e},"connectorId":1}},'
                f'"idToken":{{"idToken":"{st.tag}","type":"{st.ttype}"}}}}',
                '{"idTokenInfo":{"status":"Accepted"}}', err=0)
            st.state = CHARGING
            st.last = t
            return self.schedule(t + 60 * US + self.ri(-US, US), self.connector, ch, st)
        if s in (CHARGING, STOPPING):
            w = st.advance(rng, t)
            st.seq_no += 1
            v = 230.0 + rng.uniform(-4.0, 4.0)
            ending = s == STOPPING
            ctx = "Transaction.End" if ending else "Sample.Periodic"
            head = (f'"eventType":"Ended","timestamp":"{iso_ms(t)}","triggerReason":"EVCommunicationLost",'
                    f'"seqNo":{st.seq_no},"transactionInfo":{{"transactionId":"{st.tx}","chargingState":"Idle",'
                    f'"stoppedReason":"EVDisconnected"}}') if ending else (
                    f'"eventType":"Updated","timestamp":"{iso_ms(t)}","triggerReason":"MeterValuePeriodic",'
                    f'"seqNo":{st.seq_no},"transactionInfo":{{"transactionId":"{st.tx}","chargingState":"Charging"}}')
            t = self.cp_call(
                t, ch, "TransactionEvent",
                f'{{{head},"meterValue":[{{"timestamp":"{iso_ms(t)}","sampledValue":['
                f'{{"value":{int(st.wh)},"context":"{ctx}","measurand":"Energy.Active.Import.Register","location":"Outlet","unitOfMeasure":{{"unit":"Wh"}}}},'
                f'{{"value":{int(w)},"context":"{ctx}","measurand":"Power.Active.Import","location":"Outlet","unitOfMeasure":{{"unit":"W"}}}},'
                f'{{"value":{v:.1f},"context":"{ctx}","measurand":"Voltage","phase":"L1-N","location":"Outlet","unitOfMeasure":{{"unit":"V"}}}}]}}]}}',
                "{}")
            if ending:
                st.state = UNPLUG
                return self.schedule(t + self.ri(5 * US, 60 * US), self.connector, ch, st)
            if t >= st.end:
                st.state = STOPPING
                return self.schedule(t + self.ri(5 * US, 50 * US), self.connector, ch, st)
            return self.schedule(t + 60 * US + self.ri(-US, US), self.connector, ch, st)
        if s == UNPLUG:
            t = self.cp_call(t, ch, "StatusNotification",
                             f'{{"timestamp":"{iso_ms(t)}","connectorStatus":"Available","evseId":{e},"connectorId":1}}',
                             "{}")
            st.state = IDLE
            return self.schedule(t + int(rng.expovariate(1 / 50) * MIN) + MIN, self.connector, ch, st)


IDLE, PREPARING, CHARGING, STOPPING, UNPLUG = range(5)


class Conn:
    """One connector (1.6) or EVSE (2.0.1) and its session."""

    __slots__ = ("n", "state", "tag", "remote", "tx", "wh", "kw", "end", "start", "last", "seq_no", "rsid",
                 "ttype")

    def __init__(self, n: int) -> None:
        self.n = n
        self.state = IDLE
        self.wh = 0.0
        self.remote = False
        self.tag = ""
        self.tx: int | str = 0
        self.kw = 0.0
        self.end = self.start = self.last = 0
        self.seq_no = 0
        self.rsid = 0
        self.ttype = ""

    def new_session(self, rng: random.Random, ch: Charger, t: int) -> None:
        if not self.wh:
            self.wh = float(rng.randrange(100_000, 9_000_000))  # the meter's lifetime register
        self.kw = min(ch.max_kw, rng.choice((3.7, 7.4, 11.0, 11.0, 22.0, 50.0))) * rng.uniform(0.85, 0.99)
        self.start = self.last = t
        minutes = min(600.0, max(6.0, rng.expovariate(1 / 110)))
        self.end = t + int(minutes * MIN)

    def advance(self, rng: random.Random, t: int) -> float:
        """Power now (W, tapering in the last fifth of the session); the register rises by it."""
        span = max(1, self.end - self.start)
        frac = (t - self.start) / span
        w = self.kw * 1000.0 * (1.0 if frac < 0.8 else max(0.15, (1.0 - frac) * 5)) * rng.uniform(0.97, 1.03)
        self.wh += w * (t - self.last) / 3.6e9
        self.last = t
        return w


# ------------------------------------------------------------------------------------------ timestamps

_sec_cache: dict[int, tuple[str, str]] = {}


def _secs(t: int) -> tuple[str, str]:
    """(``2024-05-01T10:00:00``, ``2024-05-01 10:00:00``) for time ``t`` (µs since START_UNIX)."""
    s = t // US
    got = _sec_cache.get(s)
    if got is None:
        if len(_sec_cache) > 4096:
            _sec_cache.clear()
        iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(START_UNIX + s))
        got = _sec_cache[s] = (iso, iso.replace("T", " "))
    return got


def iso_ms(t: int) -> str:
    return f"{_secs(t)[0]}.{(t // 1000) % 1000:03d}Z"


def iso_s(t: int) -> str:
    return _secs(t)[0] + "Z"


# ----------------------------------------------------------------------------------------------- main


def generate(out: str, *, fmt: str, messages: int, chargers: int, seed: int = 1, use_gzip: bool = False,
             share_201: float = 0.04, quiet: bool = False) -> dict:
    """Write the log; returns the counts (also written to ``out + '.meta.json'``)."""
    sim = Sim(chargers, seed, share_201)
    jsonl = fmt == "jsonl"
    for ch in sim.chargers:
        proto = "ocpp2.0.1" if ch.v201 else "ocpp1.6"
        if jsonl:
            ch.heads = tuple(
                f'", "charge_point_id": "{ch.cid}", "direction": "{d}", "subprotocol": "{proto}", "message": "'
                for d in ("cp->csms", "csms->cp")
            )
        else:  # the CSMS's log: it receives the charger's frames and sends its own
            ch.heads = (f" - ocpp - INFO - {ch.cid}: receive message ", f" - ocpp - INFO - {ch.cid}: send ")
    tmp = out + ".part"
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    f = (
        gzip.open(tmp, "wt", encoding="utf-8", compresslevel=6)  # noqa: SIM115 - closed in finally
        if use_gzip
        else open(tmp, "w", encoding="utf-8", buffering=1 << 20)  # noqa: SIM115
    )
    heap = sim.heap
    pop = heapq.heappop
    counts = {"CALL": 0, "CALLRESULT": 0, "CALLERROR": 0}
    type_names = {"2": "CALL", "3": "CALLRESULT", "4": "CALLERROR"}
    by_type = dict.fromkeys("234", 0)
    frames = lines = 0
    buf: list[str] = []
    flush_every = 20_000
    report = 200_000
    t0 = time.perf_counter()
    last_sec = -1
    sec_iso = sec_sp = ""
    t_last = 0
    try:
        while frames < messages:
            t, _, kind, a, b, c = pop(heap)
            if kind == PROC:
                a(t, b, c)
                continue
            s = t // US
            if s != last_sec:
                last_sec = s
                sec_iso, sec_sp = _secs(t)
            if kind == WARN:
                if not jsonl:
                    buf.append(f"{sec_sp},{(t // 1000) % 1000:03d} - ocpp - WARNING - Received a CALLError: "
                               f"<CallError - unique_id={c}, error_code=NotImplemented, error_description="
                               "Request Action is recognized but not supported by the receiver, error_details={}>'\n")
                    lines += 1
                continue
            if jsonl:
                buf.append(f'{{"timestamp": "{sec_iso}.{t % US:06d}Z{b.heads[a]}{c.replace(DQ, QUOTE)}"}}\n')
            else:
                buf.append(f"{sec_sp},{(t // 1000) % 1000:03d}{b.heads[a]}{c}\n")
            by_type[c[1]] += 1
            frames += 1
            lines += 1
            t_last = t
            if len(buf) >= flush_every:
                f.write("".join(buf))
                buf.clear()
                if not quiet and frames >= report:
                    report += 200_000
                    el = time.perf_counter() - t0
                    print(f"  {frames:,} frames, {frames / el:,.0f}/s", file=sys.stderr)
        f.write("".join(buf))
    finally:
        f.close()
    os.replace(tmp, out)
    elapsed = time.perf_counter() - t0
    counts = {type_names[k]: v for k, v in by_type.items()}
    meta = {
        "generator_version": GENERATOR_VERSION,
        "params": {"format": fmt, "messages": messages, "chargers": chargers, "seed": seed, "gzip": use_gzip,
                   "share_201": share_201},
        "frames": frames,
        "lines": lines,
        "by_type": counts,
        "chargers_201": sum(1 for ch in sim.chargers if ch.v201),
        "transactions_16": sim.tx_id - 100_000,
        "first_ts": iso_ms(0)[:10],
        "simulated_hours": round(t_last / US / 3600, 2),
        "bytes": os.path.getsize(out),
        "seconds": round(elapsed, 2),
    }
    Path(out + ".meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


QUOTE = '\\"'
DQ = '"'
VARIANT = {h: '89ab'[int(h, 16) & 3] for h in '0123456789abcdef'}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--format", choices=("jsonl", "mobilityhouse"), default="jsonl")
    p.add_argument("--messages", type=int, default=1_000_000, help="frames to write (default 1,000,000)")
    p.add_argument("--chargers", type=int, default=300, help="chargers in the fleet (default 300)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--share-201", type=float, default=0.04, help="share of OCPP 2.0.1 chargers (default 0.04)")
    p.add_argument("--out", required=True)
    p.add_argument("--gzip", action="store_true", help="gzip the output (add .gz to --out yourself)")
    p.add_argument("-q", "--quiet", action="store_true")
    a = p.parse_args(argv)
    if a.messages < 1 or a.chargers < 1:
        p.error("--messages and --chargers must be positive")
    meta = generate(a.out, fmt=a.format, messages=a.messages, chargers=a.chargers, seed=a.seed,
                    use_gzip=a.gzip, share_201=a.share_201, quiet=a.quiet)
    if not a.quiet:
        print(f"wrote {meta['frames']:,} frames ({meta['lines']:,} lines, {meta['bytes'] / 1e6:,.1f} MB, "
              f"{meta['simulated_hours']} h of fleet time) to {a.out} in {meta['seconds']:.1f} s "
              f"({meta['frames'] / max(meta['seconds'], 1e-9):,.0f} frames/s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
