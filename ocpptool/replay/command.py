"""``ocpptool replay``: option checks, the plan, the run (live view or plain lines), the report."""

from __future__ import annotations

import asyncio
import math
import ssl
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TextIO
from urllib.parse import urlsplit

import orjson

from ..errors import ExitStatus, UserError
from ..listen import client_tls, parse_listen, server_tls
from .plan import Plan, build_plan, describe, parse_map
from .runtime import Control, Event, ReplayOptions, ReplayResult


@dataclass
class ReplayArgs:
    """The command line, as typer hands it over (strings; checked by :func:`check`)."""

    inputs: list[str]
    target: str | None = None
    role: str = "charger"
    listen: str | None = None
    speed: str = "1"
    cp: list[str] | None = None
    action: list[str] | None = None
    since: datetime | None = None
    until: datetime | None = None
    cp_map: list[str] | None = None
    cp_prefix: str = ""
    id_tag_map: list[str] | None = None
    keep_message_ids: bool = False
    auth_file: str | None = None
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    record: str | None = None
    report: str | None = None
    dry_run: bool = False
    tui: bool | None = None  #: None: a live view when stdout is a terminal
    verbose: bool = False
    response_timeout: float = 10.0
    reconnects: int = 5
    idle_timeout: float = 60.0
    no_shift: bool = False
    quiet: bool = False
    input_format: str | None = None
    log_tz: str | None = None


def parse_speed(text: str) -> float:
    """``1``, ``10``, ``0.5`` or ``max`` (as fast as the peer answers)."""
    if text.strip().lower() == "max":
        return math.inf
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"--speed {text!r}: use a number (1 is real time, 10 ten times faster) or max") from None
    if not value > 0 or math.isinf(value):
        raise UserError(f"--speed {text!r}: must be above 0 (or max)")
    return value


def check_target(target: str) -> str:
    """Only ws:// and wss:// URLs with a host are accepted: replay never sends anywhere else."""
    parts = urlsplit(target)
    if parts.scheme not in ("ws", "wss"):
        raise UserError(f"--target {target!r}: only ws:// and wss:// targets are accepted")
    if not parts.hostname:
        raise UserError(f"--target {target!r}: no host in the URL")
    try:
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        raise UserError(f"--target {target!r}: bad port") from None
    return target


def read_auth(path: str) -> dict[str, str]:
    """``CP_ID:password`` or ``CP_ID password`` per line (``*`` for every charge point; # comments)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UserError(f"--auth-file {path}: cannot read ({exc.strerror})") from None
    out: dict[str, str] = {}
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        cp, sep, pw = line.partition(":") if ":" in line else line.partition(" ")
        if not sep or not cp.strip():
            raise UserError(f"--auth-file {path}:{n}: expected CHARGE_POINT:PASSWORD")
        out[cp.strip()] = pw.strip()
    return out


def check(args: ReplayArgs) -> ReplayOptions:
    """Turn the command line into options, or raise one clear UserError."""
    opts = ReplayOptions(speed=parse_speed(args.speed), keep_message_ids=args.keep_message_ids,
                         response_timeout=args.response_timeout, shift_timestamps=not args.no_shift,
                         reconnects=args.reconnects, idle_timeout_s=args.idle_timeout)  # fmt: skip
    if args.role not in ("charger", "csms"):
        raise UserError(f"--as {args.role!r}: choose charger (replay the chargers) or csms (replay the CSMS)")
    if args.key and not args.cert:
        raise UserError("--key needs --cert")
    if args.role == "charger":
        if args.listen:
            raise UserError("--listen is for --as csms; as chargers, give --target ws://host:port/path")
        if not args.target and not args.dry_run:
            raise UserError("--target ws[s]://host:port/path is required (or --dry-run to see the plan)")
        if args.target:
            opts.target = check_target(args.target)
            if (args.ca or args.cert) and not args.target.startswith("wss://"):
                raise UserError("--ca/--cert need a wss:// target")
    else:
        if args.target:
            raise UserError("--target is for replaying chargers; as a CSMS, give --listen HOST:PORT")
        if not args.listen and not args.dry_run:
            raise UserError("--as csms needs --listen HOST:PORT")
        if args.listen:
            opts.listen = parse_listen(args.listen)
        if args.ca and not args.cert:
            raise UserError("--as csms serves TLS with --cert/--key (and --ca to require client certificates)")
    if args.cert or args.ca:
        if args.role == "csms":
            assert args.cert is not None  # checked above: as a CSMS, --ca needs --cert
            opts.ssl_context = server_tls(args.cert, args.key, args.ca, "--cert/--key/--ca")
        else:
            which = "--cert/--key" if args.cert and args.ca is None else "--ca/--cert/--key"
            opts.ssl_context = client_tls(args.ca, args.cert, args.key, which)
    elif opts.target and opts.target.startswith("wss://"):
        opts.ssl_context = ssl.create_default_context()
    try:
        opts.id_tag_map = parse_map(args.id_tag_map, "--id-tag-map")
        parse_map(args.cp_map, "--cp-map")
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if args.auth_file:
        opts.auth = read_auth(args.auth_file)
    for option, path in (("--record", args.record), ("--report", args.report)):
        if path and not Path(path).resolve().parent.is_dir():
            raise UserError(f"{option} {path}: the directory does not exist")
    if args.response_timeout <= 0:
        raise UserError("--response-timeout must be above 0")
    if args.reconnects < 0:
        raise UserError("--reconnects must be 0 or more")
    if args.idle_timeout <= 0:
        raise UserError("--idle-timeout must be more than 0 seconds")
    return opts


def make_plan(args: ReplayArgs, progress: bool = True) -> Plan:
    from ..pipeline import filter_messages, load

    tables, _ = load(args.inputs, input_format=args.input_format, log_tz=args.log_tz, progress=progress)
    messages = filter_messages(tables.messages, cps=args.cp, actions=args.action, since=args.since, until=args.until)
    plan = build_plan(messages, cp_map=parse_map(args.cp_map, "--cp-map"), cp_prefix=args.cp_prefix)
    if not plan.scripts:
        raise UserError("nothing to replay: no OCPP calls with a time left after the filters")
    return plan


class PlainSink:
    """``--no-tui``: state changes, divergences and notes as lines; every frame with ``--verbose``."""

    def __init__(self, out: TextIO, verbose: bool = False, progress: TextIO | None = None, every_s: float = 5.0) -> None:
        self.out = out
        self.verbose = verbose
        self.progress = progress
        self.every_s = every_s
        self.frames = 0
        self._t0 = self._last = time.monotonic()

    def __call__(self, ev: Event) -> None:
        if ev.kind in ("sent", "received"):
            self.frames += 1
            if self.progress is not None and self.frames % 500 == 0:
                now = time.monotonic()
                if now - self._last >= self.every_s:  # long runs: a progress line on stderr every few seconds
                    self._last = now
                    rate = self.frames / (now - self._t0)
                    self.progress.write(f"replay: +{ev.clock:,.1f} s recorded time, {self.frames:,} frames ({rate:,.0f}/s)\n")
                    self.progress.flush()
            if self.verbose:
                arrow = ">>" if ev.kind == "sent" else "<<"
                self.out.write(f"{ev.clock:10.3f} {ev.cp} {arrow} {ev.text}\n")
            return
        if ev.kind == "done":
            return
        label = {"state": "", "divergence": "divergence: ", "note": "note: "}.get(ev.kind, "")
        self.out.write(f"{ev.clock:10.3f} {ev.cp} {label}{ev.text}\n" if ev.cp else f"{label}{ev.text}\n")


async def execute(plan: Plan, opts: ReplayOptions, control: Control, sink, ready=None) -> ReplayResult:
    """Run the plan in the chosen role on the current event loop."""
    if opts.listen is not None:
        from .as_csms import run_as_csms

        return await run_as_csms(plan, opts, control, sink, ready)
    from .as_charger import run_as_charger

    return await run_as_charger(plan, opts, control, sink)


def print_report(result: ReplayResult, out: TextIO) -> None:
    from .divergence import summarise

    rate = result.frames / result.duration_s if result.duration_s else 0.0
    out.write(f"replay {result.mode}: {len(result.stats)} charge points, {result.frames:,} frames in "
              f"{result.duration_s:,.2f} s ({rate:,.0f} frames/s)" + (" (quit early)" if result.quit else "") + "\n")  # fmt: skip
    reconnects = sum(s.reconnects for s in result.stats.values())
    if reconnects:
        out.write(f"reconnections: {reconnects}\n")
    counts = summarise(result.divergences)
    if counts:
        out.write("divergences: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + "\n")
        for d in result.divergences[:50]:
            out.write(f"  {d.line()}\n")
        if len(result.divergences) > 50:
            out.write(f"  ... {len(result.divergences) - 50} more (--report FILE.json has them all)\n")
    else:
        out.write("divergences: none\n")
    if result.uncovered:
        out.write("not covered by the recording (answered with a schema-valid default): "
                  + ", ".join(f"{a} x{n}" for a, n in sorted(result.uncovered.items())) + "\n")  # fmt: skip
    for note in result.notes:
        out.write(f"note: {note}\n")


def replay(args: ReplayArgs) -> int:
    """The whole command. Returns the exit status: 0, or ``ExitStatus.PEER_FAILED`` when a charge point
    gave up reconnecting (the report and the recording are still written first)."""
    opts = check(args)
    plan = make_plan(args, progress=not args.quiet)
    if args.dry_run:
        for line in describe(plan):
            sys.stdout.write(line + "\n")
        return 0
    tui = sys.stdout.isatty() if args.tui is None else args.tui
    control = Control(opts.speed)
    try:
        if tui:
            from ..ui.replay_app import run_app

            result = run_app(plan, opts, control)
        else:
            result = asyncio.run(execute(plan, opts, control, PlainSink(sys.stdout, args.verbose, progress=None if args.quiet else sys.stderr)))
    except OSError as exc:  # only binding --listen raises it; connection failures are retried and reported
        raise UserError(f"--listen {args.listen}: {exc.strerror or exc}") from None
    if result is None:
        raise UserError("the replay stopped before it produced a result")
    print_report(result, sys.stdout)
    if args.report:
        try:
            Path(args.report).write_bytes(orjson.dumps(result.to_dict(), option=orjson.OPT_INDENT_2))
        except OSError as exc:
            raise UserError(f"--report {args.report}: cannot write ({exc.strerror})") from None
    if args.record:
        n = result.transcript.write_trace(args.record)
        if not args.quiet:
            sys.stderr.write(f"recorded {n:,} frames to {args.record}\n")
    failed = sorted(cp for cp, st in result.stats.items() if st.state == "failed")
    if failed:
        where = args.target if args.role == "charger" else "this replay"
        names = ", ".join(failed[:5]) + (" ..." if len(failed) > 5 else "")
        sys.stderr.write(f"ocpptool: error: {len(failed)} of {len(result.stats)} charge points could not reach "
                         f"{where} and gave up after {args.reconnects + 1} attempts ({names})\n")  # fmt: skip
        return ExitStatus.PEER_FAILED
    return 0
