"""Regenerate the recorded sample logs in captures/ with real OCPP peers on loopback.

    uv run python scripts/make_samples.py

Writes ``captures/fleet-demo.jsonl``: a recording CSMS (``ocpptool.testing.peers.Csms``) serves
8 scripted chargers (6 on OCPP 1.6, 2 on 2.0.1) over real websockets on 127.0.0.1 and logs every
frame verbatim with its observed time. Faults are injected with the peers' knobs, so every
anomaly in the log is genuine traffic (see FLEET below and captures/README.md).

Post-processing, on purpose: after recording, two malformed lines are *inserted* (every recorded
frame stays in the file) to show that readers must report bad lines and keep everything around them:

* a line that is not JSON: a copy of the following record cut off mid-way (a torn write);
* a well-formed JSON record whose ``message`` is a truncated frame (a copy of the following
  record's frame cut after 30 characters).

Then the fleet-demo section of ``captures/README.md`` (between the fleet-demo markers) is
regenerated with the counts by charger and action. Message ids are random UUIDs and scheduling
varies slightly, so counts can differ by a few frames between runs; the anomalies do not.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from ocpptool.testing import ChargerConfig, CsmsCall, Faults, FleetResult, Session, record_fleet

ROOT = Path(__file__).resolve().parent.parent
CAPTURES = ROOT / "captures"
FLEET_LOG = CAPTURES / "fleet-demo.jsonl"
README = CAPTURES / "README.md"
BEGIN, END = "<!-- fleet-demo:begin -->", "<!-- fleet-demo:end -->"


def _charger(id: str, **kw: Any) -> ChargerConfig:
    """A fleet member: 10 heartbeats every 0.25 s (~2.5 s per charger), a meter sample every 0.06 s."""
    return ChargerConfig(id, heartbeats=10, heartbeat_interval=0.25, meter_interval=0.06, **kw)


FLEET: list[ChargerConfig] = [
    _charger(  # two connectors charging at the same time, plus CSMS-initiated calls
        "CP-001",
        vendor="Voltbox",
        model="VB-DUO-22",
        connectors=2,
        sessions=(
            Session(1, "04A1B2C3D4E5F6", 0.0, 24, 11.0),
            Session(2, "04F0E1D2C3B4A5", 0.4, 24, 7.4),
        ),
        csms_calls=(
            CsmsCall("ChangeConfiguration", after=0.1),
            CsmsCall("TriggerMessage", after=0.3, connector_id=2),
            CsmsCall("GetConfiguration", after=0.6),
            CsmsCall("RemoteStartTransaction", after=3.0, connector_id=1, remote_samples=8),
        ),
    ),
    _charger(  # payload clock 15 minutes fast
        "CP-002",
        vendor="Acme",
        model="AC22-T",
        sessions=(Session(1, "049C8D7E6F5A4B", 0.2, 20, 7.2),),
        meter_style="bare",
        faults=Faults(clock_offset_s=15 * 60),
    ),
    _charger(  # energy register goes backwards within the transaction
        "CP-003",
        vendor="Acme",
        model="AC11-S",
        sessions=(Session(1, "04112233445566", 0.1, 20, 11.0),),
        meter_style="kwh",
        faults=Faults(meter_backwards_at=9, meter_backwards_wh=1800),
    ),
    _charger(  # one MeterValues CALL the CSMS never answers (charger times out after 1 s)
        "CP-004",
        vendor="Acme",
        model="AC22-T",
        sessions=(Session(1, "04778899AABBCC", 0.3, 18, 3.7),),
        response_timeout=1.0,
        faults=Faults(unanswered_action="MeterValues"),
    ),
    _charger(  # the CSMS handler raises on the first MeterValues: CALLERROR InternalError
        "CP-005",
        vendor="Northgrid",
        model="NG-DC50",
        sessions=(Session(1, "04DDEEFF001122", 0.15, 20, 50.0),),
        faults=Faults(callerror_action="MeterValues"),
    ),
    _charger(  # connection cut mid-transaction: transaction never stopped
        "CP-006",
        vendor="Northgrid",
        model="NG-AC7",
        sessions=(Session(1, "04334455667788", 0.25, 20, 7.4),),
        faults=Faults(drop_after_samples=7),
    ),
    _charger(  # 1.6, a blocked badge first (Authorize -> Blocked, no transaction), then a good one
        "CP-007",
        vendor="Voltbox",
        model="VB-ONE-11",
        sessions=(Session(1, "BLOCKED0A0B0C", 0.1, 0), Session(1, "04A0A1A2A3A4A5", 0.6, 16, 11.0)),
        meter_style="kwh",
    ),
    _charger(  # 2.0.1, two EVSEs; one local and one remote (RequestStartTransaction) session
        "CS-101",
        version="2.0.1",
        vendor="Ionic",
        model="IX-2",
        connectors=2,
        sessions=(Session(1, "04C0FFEE000001", 0.1, 22, 11.0),),
        csms_calls=(
            CsmsCall("GetVariables", after=0.1),
            CsmsCall("TriggerMessage", after=0.25),
            CsmsCall("RequestStartTransaction", after=0.5, connector_id=2, remote_samples=16),
        ),
    ),
    _charger(  # 2.0.1, energy in kWh, two sessions one after the other
        "CS-102",
        version="2.0.1",
        vendor="Ionic",
        model="IX-1",
        sessions=(Session(1, "04BADA55000002", 0.05, 12, 7.4), Session(1, "04BADA55000003", 1.5, 12, 22.0)),
        meter_style="kwh",
        csms_calls=(CsmsCall("SetVariables", after=0.2),),
    ),
]


def insert_malformed(path: Path) -> list[tuple[int, str]]:
    """Insert two malformed lines into the recorded log; return their 1-based line numbers."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    n = len(lines)
    a, b = n // 3, (2 * n) // 3
    torn = lines[a][: len(lines[a]) // 2] + "\n"  # not JSON: a record cut off mid-way
    record = json.loads(lines[b])
    record["message"] = record["message"][:30]  # a truncated OCPP frame inside a valid JSON line
    bad_frame = json.dumps(record, ensure_ascii=False) + "\n"
    lines.insert(b, bad_frame)
    lines.insert(a, torn)
    path.write_text("".join(lines), encoding="utf-8")
    return [
        (a + 1, "not JSON (torn copy of the next line)"),
        (b + 2, "JSON record whose message is a truncated frame"),
    ]


def summarize(path: Path) -> dict:
    """Counts by charger and action, from the log itself (malformed lines are counted apart)."""
    frames: Counter[str] = Counter()
    calls: dict[str, Counter[str]] = defaultdict(Counter)
    kinds: Counter[str] = Counter()
    bad: list[int] = []
    action_of: dict[tuple[str, str], str] = {}
    version: dict[str, str] = {}
    for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            rec = json.loads(line)
            frame = json.loads(rec["message"])
        except (ValueError, KeyError):
            bad.append(no)
            continue
        cp = rec["charge_point_id"]
        version[cp] = rec["subprotocol"]
        frames[cp] += 1
        kind = {2: "CALL", 3: "CALLRESULT", 4: "CALLERROR"}[frame[0]]
        kinds[kind] += 1
        if kind == "CALL":
            action_of[(cp, frame[1])] = frame[2]
            origin = "" if rec["direction"] == "cp->csms" else " (CSMS)"
            calls[cp][frame[2] + origin] += 1
    return {"frames": frames, "calls": calls, "kinds": kinds, "bad": bad, "version": version}


FAULTS_TEXT = {
    "CP-001": "none; 2 connectors with overlapping transactions; ChangeConfiguration, TriggerMessage, "
    "GetConfiguration and RemoteStartTransaction (connector 1, once idle) from the CSMS",
    "CP-002": "payload clock 15 min fast (every payload timestamp ~900 s ahead of the observed time); "
    "meter values with no measurand/unit",
    "CP-003": "Energy.Active.Import.Register drops by 1.8 kWh at the 10th sample of its transaction "
    "(values in kWh)",
    "CP-004": "one MeterValues CALL never answered; the charger times out after 1 s and goes on",
    "CP-005": "the CSMS MeterValues handler raises once: CALLERROR InternalError",
    "CP-006": "TCP connection aborted after the 7th MeterValues of its transaction: no StopTransaction, "
    "no close frame",
    "CP-007": "none; first badge BLOCKED... gets Authorize Blocked (no transaction), then a normal session (kWh)",
    "CS-101": "none (2.0.1); GetVariables, TriggerMessage, RequestStartTransaction (EVSE 2) from the CSMS",
    "CS-102": "none (2.0.1); two sessions in a row, meter values in kWh; SetVariables from the CSMS",
}


def readme_section(result: FleetResult, stats: dict, malformed: list[tuple[int, str]], lines: int) -> str:
    out = [BEGIN, "## fleet-demo.jsonl", ""]
    n16 = sum(c.version == "1.6" for c in FLEET)
    out.append(
        "Recorded by `uv run python scripts/make_samples.py` (which also regenerates this section): the "
        "recording `Csms` of `ocpptool.testing.peers` serves "
        f"{len(FLEET)} scripted chargers ({n16} on OCPP 1.6, {len(FLEET) - n16} on 2.0.1), all built with "
        "the `ocpp` package and talking over real websockets on 127.0.0.1. The CSMS wraps the connection "
        "it hands to the library and logs every frame it receives and sends. One JSON object per line: "
        "`timestamp` (observed UTC time at the CSMS), `charge_point_id`, `direction` (`cp->csms` / "
        "`csms->cp`, from the charger's point of view), `subprotocol`, `message` (the frame text exactly "
        "as on the wire)."
    )
    out.append("")
    out.append(
        "Every anomaly below is genuine traffic produced by a fault knob (`ocpptool.testing.Faults`), not "
        "an edited frame; the only edits are the two malformed lines, *inserted* after recording (every "
        "recorded frame is still in the file). Message ids are random UUIDs and task scheduling varies, "
        "so a regenerated file differs in ids, times and by a few frames; the set of anomalies does not."
    )
    out.append("")
    out.append(
        f"{lines} lines: {sum(stats['frames'].values())} recorded frames "
        f"({stats['kinds']['CALL']} CALL, {stats['kinds']['CALLRESULT']} CALLRESULT, "
        f"{stats['kinds']['CALLERROR']} CALLERROR) and {len(stats['bad'])} malformed lines inserted on purpose. "
        f"Time is compressed: the whole fleet ran for {result.duration_s:.1f} s; a meter sample every 0.06 s "
        "stands for one minute of charging (energy steps are those of a one-minute sample interval)."
    )
    out += [
        "",
        "### Chargers and faults",
        "",
        "| charger | protocol | frames | transactions | fault / notes |",
    ]
    out.append("|---|---|---|---|---|")
    for cfg in FLEET:
        rep = result.chargers[cfg.id]
        txs = ", ".join(str(t)[:8] + ("…" if len(str(t)) > 8 else "") for t in rep.transactions)
        out.append(
            f"| {cfg.id} | {stats['version'][cfg.id]} | {stats['frames'][cfg.id]} | {txs} | {FAULTS_TEXT[cfg.id]} |"
        )
    actions = sorted({a for c in stats["calls"].values() for a in c})
    out += ["", "### CALLs by charger and action", "", "CSMS-initiated calls are marked (CSMS).", ""]
    out.append("| action | " + " | ".join(c.id for c in FLEET) + " | total |")
    out.append("|---" * (len(FLEET) + 2) + "|")
    for a in actions:
        row = [stats["calls"][c.id][a] for c in FLEET]
        out.append(f"| {a} | " + " | ".join(str(x) if x else "" for x in row) + f" | {sum(row)} |")
    out += ["", "### Anomalies (ground truth)", ""]
    for cp, action, uid in result.unanswered:
        out.append(f"- unanswered CALL: {cp} {action} `{uid}`")
    for cp, action in result.call_errors:
        out.append(f"- CALLERROR: {cp} {action} (handler raised; InternalError)")
    dropped = [r for r in result.chargers.values() if r.dropped]
    for r in dropped:
        out.append(
            f"- dropped connection mid-transaction: {r.id}, transaction {r.transactions[0]} never stopped"
        )
    out.append("- clock: CP-002 payload timestamps ~900 s ahead of the observed time")
    out.append("- meter going backwards: CP-003, once, by 1.8 kWh")
    for no, what in malformed:
        out.append(f"- malformed line {no}: {what}")
    out += ["", END]
    return "\n".join(out) + "\n"


def write_readme(section: str) -> None:
    header = (
        "# Sample captures\n\n"
        "Recorded or captured OCPP traffic used by tests, docs and demos. Each sample has its own section.\n\n"
    )
    text = README.read_text(encoding="utf-8") if README.exists() else header
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section.rstrip("\n") + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    README.write_text(text, encoding="utf-8")


def main() -> int:
    t0 = time.monotonic()
    result = record_fleet(FLEET, FLEET_LOG)
    malformed = insert_malformed(FLEET_LOG)
    stats = summarize(FLEET_LOG)
    lines = len(FLEET_LOG.read_text(encoding="utf-8").splitlines())
    write_readme(readme_section(result, stats, malformed, lines))
    elapsed = time.monotonic() - t0

    print(f"wrote {FLEET_LOG.relative_to(ROOT)}: {lines} lines, {result.frames} frames, {elapsed:.1f} s")
    print("  kinds: " + ", ".join(f"{k} {v}" for k, v in sorted(stats["kinds"].items())))
    for cfg in FLEET:
        rep = result.chargers[cfg.id]
        top = ", ".join(f"{a} {n}" for a, n in stats["calls"][cfg.id].most_common())
        print(f"  {cfg.id} ({cfg.version}) frames {stats['frames'][cfg.id]}, tx {rep.transactions}: {top}")
    print(f"  unanswered: {result.unanswered}")
    print(f"  call errors: {result.call_errors}")
    print(f"  dropped: {[r.id for r in result.chargers.values() if r.dropped]}")
    print(f"  malformed lines inserted: {malformed}")
    print(f"updated {README.relative_to(ROOT)}")
    ok = (
        len(result.unanswered) == 1
        and len(result.call_errors) == 1
        and stats["bad"] == [no for no, _ in malformed]
        and sum(r.dropped for r in result.chargers.values()) == 1
    )
    if not ok:
        print("unexpected anomaly set, see above", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
