"""The command line: thin typer commands over the library; :func:`main` maps errors to exit codes."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.console import Console

from . import __version__
from .errors import ExitStatus, UserError

app = typer.Typer(
    name="ocpptool",
    help="Decode, analyse, replay and monitor OCPP-J traffic from packet captures and logs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from .sources.jsonl import splitter_state

        typer.echo(f"ocpptool {__version__} ({splitter_state()})")
        raise typer.Exit()


@app.callback()
def _root(
    traceback: Annotated[bool, typer.Option("--traceback", help="Show the full traceback on errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    del traceback, version  # both handled before typer runs: --traceback in main(), --version by its callback


def _parse_time(text: str | None, option: str) -> datetime | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UserError(f"{option}: cannot read {text!r} as a time (use ISO 8601, e.g. 2024-05-01T10:00:00Z)") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _check_tz(log_tz: str | None) -> None:
    if log_tz is None:
        return
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(log_tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise UserError(f"--log-tz: unknown time zone {log_tz!r} (use a name like UTC or Europe/Berlin)") from None


InputsArg = Annotated[
    list[str], typer.Argument(help="Captures, logs, traces, directories or - for stdin (gzip is fine).", show_default=False)
]
InputFormatOpt = Annotated[
    str | None,
    typer.Option("--input-format", "-I", help="Force a reader instead of detecting it (see `ocpptool formats`)."),
]
EngineOpt = Annotated[
    str, typer.Option("--engine", help="Capture decoder: auto (native, or tshark with a key log), native or tshark.")
]
KeylogOpt = Annotated[
    str | None,
    typer.Option("--keylog", help="TLS key log (NSS format) for wss captures; SSLKEYLOGFILE is honoured too."),
]
PortOpt = Annotated[
    list[int] | None,
    typer.Option("--port", help="Treat this TCP port as OCPP WebSocket even without a handshake (repeatable)."),
]
LogTzOpt = Annotated[
    str | None, typer.Option("--log-tz", help="Time zone of log timestamps written without one (e.g. Europe/Berlin).")
]


@app.command()
def decode(
    inputs: InputsArg,
    output: Annotated[str | None, typer.Option("--output", "-o", help="Write the messages table here.")] = None,
    fmt: Annotated[
        str | None, typer.Option("--format", "-f", help="Output format: parquet, csv, jsonl or trace (default: by extension).")
    ] = None,
    cp: Annotated[list[str] | None, typer.Option("--cp", help="Only these charge points (repeatable).")] = None,
    action: Annotated[list[str] | None, typer.Option("--action", help="Only these actions (repeatable).")] = None,
    since: Annotated[str | None, typer.Option("--since", help="Only messages at or after this time (ISO 8601).")] = None,
    until: Annotated[str | None, typer.Option("--until", help="Only messages before this time (ISO 8601).")] = None,
    input_format: InputFormatOpt = None,
    log_tz: LogTzOpt = None,
    weirds: Annotated[str | None, typer.Option("--weirds", help="Also write the weirds table here (same format rules).")] = None,
    engine: EngineOpt = "auto",
    keylog: KeylogOpt = None,
    port: PortOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr.")] = False,
) -> None:
    """Decode every OCPP-J frame into a messages table; print a summary or write it out."""
    from .pipeline import filter_messages, load, stage
    from .sources.capture import CaptureOptions
    from .summary import print_summary
    from .tables.writers import format_for, write_messages

    out_fmt = format_for(output, fmt) if output else None
    weird_fmt = format_for(weirds, None if not fmt or fmt == "trace" else fmt) if weirds else None
    if weird_fmt == "trace":
        raise UserError("--weirds cannot be written as an Open OCPP Trace (it has no frames); use .parquet or .csv")
    _check_tz(log_tz)
    t_since, t_until = _parse_time(since, "--since"), _parse_time(until, "--until")
    capture = CaptureOptions(engine=engine, keylog=keylog, ports=tuple(port or ()))
    tables, paths = load(inputs, input_format=input_format, log_tz=log_tz, capture=capture, progress=not quiet)
    tables.messages = filter_messages(tables.messages, cps=cp, actions=action, since=t_since, until=t_until)
    err = Console(stderr=True, soft_wrap=True)
    if output:
        assert out_fmt is not None
        stage(f"writing {tables.messages.height:,} messages to {output}", not quiet and tables.messages.height > 200_000)
        write_messages(tables.messages, output, out_fmt)
        if weirds:
            assert weird_fmt is not None
            write_messages(tables.weirds, weirds, weird_fmt)
        if not quiet:
            err.print(f"wrote {tables.messages.height:,} messages to {output} ({out_fmt})"
                      + (f"; {tables.weirds.height:,} weirds" if tables.weirds.height else ""))
            for note in tables.notes:
                err.print(f"note: {note}")
    else:
        out = Console()
        if not out.is_terminal:
            out = Console(width=200)  # a pipe or file: do not squeeze tables into 80 columns
        print_summary(tables, out, sources=paths)


def _options(settings: list[str] | None):
    from dataclasses import fields, replace

    from .analysis import Options

    opts = Options()
    known = {f.name: f.type for f in fields(Options)}
    for item in settings or []:
        name, sep, value = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in known:
            raise UserError(f"--set {item!r}: expected NAME=VALUE with NAME one of {', '.join(known)}")
        try:
            typed = int(value) if known[name] in (int, "int") else float(value)
        except ValueError:
            raise UserError(f"--set {item!r}: {value!r} is not a number") from None
        change: dict[str, Any] = {name: typed}  # int or float, as the field is
        opts = replace(opts, **change)
    return opts


@app.command()
def analyze(
    inputs: InputsArg,
    fmt: Annotated[str, typer.Option("--format", "-f", help="Report format: text or json.")] = "text",
    export: Annotated[
        str | None, typer.Option("--export", help="Write every table (messages, findings, ...) as Parquet here.")
    ] = None,
    fail_on: Annotated[
        str | None, typer.Option("--fail-on", help="Exit 3 if there is a finding at this severity or above: warning or error.")
    ] = None,
    settings: Annotated[
        list[str] | None, typer.Option("--set", help="Change a threshold, e.g. --set clock_drift_s=120 (see `ocpptool explain --options`).")
    ] = None,
    only: Annotated[list[str] | None, typer.Option("--only", help="Run only these detectors (repeatable).")] = None,
    cp: Annotated[list[str] | None, typer.Option("--cp", help="Only these charge points (repeatable).")] = None,
    input_format: InputFormatOpt = None,
    log_tz: LogTzOpt = None,
    engine: EngineOpt = "auto",
    keylog: KeylogOpt = None,
    port: PortOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr.")] = False,
) -> None:
    """Find what breaks billing: clock drift, orphaned or duplicate transactions, meters going backwards..."""
    from .analysis import DETECTORS, run
    from .analysis.registry import SEVERITY_RANK, _load_detectors
    from .pipeline import export_tables, load, restrict_cps, stage
    from .report import print_report, to_json
    from .sources.capture import CaptureOptions

    if fmt not in ("text", "json"):
        raise UserError(f"--format {fmt!r}: choose text or json")
    if fail_on not in (None, "warning", "error"):
        raise UserError(f"--fail-on {fail_on!r}: choose warning or error")
    _check_tz(log_tz)
    options = _options(settings)
    _load_detectors()
    unknown = [c for c in only or [] if c not in DETECTORS]
    if unknown:
        raise UserError(f"--only: unknown detector {', '.join(unknown)} (see `ocpptool explain`)")
    capture = CaptureOptions(engine=engine, keylog=keylog, ports=tuple(port or ()))
    tables, _ = load(inputs, input_format=input_format, log_tz=log_tz, capture=capture, progress=not quiet)
    if cp:
        tables = restrict_cps(tables, cp)
    stage(f"analysing {tables.messages.height:,} messages", not quiet and tables.messages.height > 100_000)
    analysis = run(tables, options, only=only, meter_values=bool(export))  # all samples only to export them
    if export:
        export_tables(analysis, export)
    if fmt == "json":
        sys.stdout.buffer.write(to_json(analysis))
        sys.stdout.flush()
    else:
        out = Console()
        if not out.is_terminal:
            out = Console(width=200)
        print_report(analysis, out)
    if fail_on and analysis.findings.height:
        worst = min(SEVERITY_RANK[s] for s in analysis.findings["severity"].to_list())
        if worst <= SEVERITY_RANK[fail_on]:
            raise typer.Exit(ExitStatus.FINDINGS)


@app.command()
def explain(
    code: Annotated[str | None, typer.Argument(help="A finding code; without it, list them all.")] = None,
    options: Annotated[bool, typer.Option("--options", help="List the thresholds --set can change.")] = False,
) -> None:
    """Explain what a finding code means (or list every code)."""
    import textwrap
    from dataclasses import fields

    from .analysis import DETECTORS, Options
    from .analysis.registry import FAMILIES, _load_detectors

    _load_detectors()
    if options:
        for f in fields(Options):
            typer.echo(f"{f.name:30s} default {f.default}")
        return
    if code is None:
        for family in FAMILIES:
            typer.echo(f"{family}:")
            for det in DETECTORS.values():
                if det.family == family:
                    typer.echo(f"  {det.code:34s} {det.severity:8s} {det.title}")
        return
    d = DETECTORS.get(code)
    if d is None:
        import difflib

        near = difflib.get_close_matches(code, list(DETECTORS), n=3)
        hint = f" (did you mean {', '.join(near)}?)" if near else " (`ocpptool explain` lists them)"
        raise UserError(f"unknown finding code {code!r}{hint}")
    typer.echo(f"{d.code} ({d.severity}, {d.family}): {d.title}\n")
    typer.echo(textwrap.fill(d.explanation, width=100))


@app.command()
def replay(
    inputs: InputsArg,
    target: Annotated[str | None, typer.Option("--target", help="ws:// or wss:// CSMS URL; the charge point id is appended.")] = None,
    role: Annotated[str, typer.Option("--as", help="Replay the chargers (charger) or the CSMS (csms).")] = "charger",
    listen: Annotated[str | None, typer.Option("--listen", help="As a CSMS: HOST:PORT to accept chargers on.")] = None,
    speed: Annotated[str, typer.Option("--speed", help="1 real time, 10 ten times faster, max as fast as answered.")] = "1",
    cp: Annotated[list[str] | None, typer.Option("--cp", help="Only these charge points (repeatable).")] = None,
    action: Annotated[list[str] | None, typer.Option("--action", help="Only these actions (repeatable).")] = None,
    since: Annotated[str | None, typer.Option("--since", help="Only messages at or after this time.")] = None,
    until: Annotated[str | None, typer.Option("--until", help="Only messages before this time.")] = None,
    cp_map: Annotated[list[str] | None, typer.Option("--cp-map", help="OLD=NEW charge point id (repeatable).")] = None,
    cp_prefix: Annotated[str, typer.Option("--cp-prefix", help="Prefix every charge point id.")] = "",
    id_tag_map: Annotated[list[str] | None, typer.Option("--id-tag-map", help="OLD=NEW idTag (repeatable).")] = None,
    keep_message_ids: Annotated[bool, typer.Option("--keep-message-ids", help="Send the recorded message ids.")] = False,
    auth_file: Annotated[str | None, typer.Option("--auth-file", help="CP_ID:password lines for Basic auth.")] = None,
    ca: Annotated[str | None, typer.Option("--ca", help="CA bundle to verify the peer (wss).")] = None,
    cert: Annotated[str | None, typer.Option("--cert", help="Client (or, as a CSMS, server) certificate.")] = None,
    key: Annotated[str | None, typer.Option("--key", help="Private key for --cert.")] = None,
    record: Annotated[str | None, typer.Option("--record", help="Write the live transcript as Open OCPP Trace.")] = None,
    report: Annotated[str | None, typer.Option("--report", help="Write the divergence report as JSON.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan; connect to nothing.")] = False,
    tui: Annotated[bool | None, typer.Option("--tui/--no-tui", help="Live view (default: when stdout is a terminal).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="With --no-tui: print every frame.")] = False,
    response_timeout: Annotated[float, typer.Option("--response-timeout", help="Seconds to wait for an answer.")] = 10.0,
    reconnects: Annotated[int, typer.Option("--reconnects", help="Reconnect attempts in a row before a charge point gives up (exit 4).")] = 5,
    idle_timeout: Annotated[float, typer.Option("--idle-timeout", help="As a CSMS: stop after this many seconds without traffic.")] = 60.0,
    no_shift: Annotated[bool, typer.Option("--no-time-shift", help="Keep payload timestamps as recorded.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr.")] = False,
    input_format: InputFormatOpt = None,
    log_tz: LogTzOpt = None,
) -> None:
    """Re-enact recorded traffic against a CSMS (as chargers) or toward chargers (--as csms)."""
    args = dict(locals())
    from .replay.command import ReplayArgs
    from .replay.command import replay as run_replay

    _check_tz(log_tz)
    args.update(since=_parse_time(since, "--since"), until=_parse_time(until, "--until"))
    rc = run_replay(ReplayArgs(**args))
    if rc:
        raise typer.Exit(rc)


@app.command()
def monitor(
    listen: Annotated[str | None, typer.Option("--listen", help="Proxy: listen here for chargers (HOST:PORT).")] = None,
    upstream: Annotated[str | None, typer.Option("--upstream", help="Proxy: the CSMS (ws[s]://host:port/path); the charger's path is appended.")] = None,
    follow: Annotated[str | None, typer.Option("--follow", help="Instead of a proxy: tail this growing log or trace.")] = None,
    record: Annotated[str | None, typer.Option("--record", "-o", help="Record every frame to this Open OCPP Trace file.")] = None,
    rotate_size: Annotated[str | None, typer.Option("--rotate-size", help="Rotate the recording at this size (e.g. 100M).")] = None,
    rotate_daily: Annotated[bool, typer.Option("--rotate-daily", help="Rotate the recording at UTC midnight.")] = False,
    redact: Annotated[bool, typer.Option("--redact", help="Blank AuthorizationKey / BasicAuthPassword values in recordings and output.")] = False,
    cert: Annotated[str | None, typer.Option("--cert", help="TLS listener: certificate chain (PEM).")] = None,
    key: Annotated[str | None, typer.Option("--key", help="TLS listener: private key (PEM).")] = None,
    client_ca: Annotated[str | None, typer.Option("--client-ca", help="TLS listener: require charger certificates from this CA.")] = None,
    ca: Annotated[str | None, typer.Option("--ca", help="wss upstream: trust this CA (PEM) instead of the system's.")] = None,
    upstream_cert: Annotated[str | None, typer.Option("--upstream-cert", help="wss upstream: client certificate (PEM).")] = None,
    upstream_key: Annotated[str | None, typer.Option("--upstream-key", help="wss upstream: its private key (PEM).")] = None,
    no_tui: Annotated[bool, typer.Option("--no-tui", help="Print lines instead of the live view (the default when stdout is not a terminal).")] = False,
    no_frames: Annotated[bool, typer.Option("--no-frames", help="Lines: connections and findings only.")] = False,
    analyze_every: Annotated[float, typer.Option("--analyze-every", help="Seconds between live analysis runs (0: off).")] = 5.0,
    min_severity: Annotated[str, typer.Option("--min-severity", help="Live findings at this severity or above: error, warning, info.")] = "warning",
    settings: Annotated[list[str] | None, typer.Option("--set", help="Change a detector threshold (as for analyze).")] = None,
    duration: Annotated[float | None, typer.Option("--duration", help="Stop after this many seconds.")] = None,
    input_format: InputFormatOpt = None,
    log_tz: LogTzOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No summary on stderr at the end.")] = False,
) -> None:
    """Watch live traffic: a recording proxy between chargers and a CSMS (or --follow a growing file)."""
    from .monitor import MonitorOptions, parse_listen
    from .monitor.engine import check_options, run_lines
    from .monitor.recorder import parse_size

    _check_tz(log_tz)
    try:
        rotate = parse_size(rotate_size) if rotate_size else None
    except ValueError:
        raise UserError(f"--rotate-size {rotate_size!r}: expected a size like 100M, 2G or 500000") from None
    opts = MonitorOptions(
        listen=parse_listen(listen) if listen else None, upstream=upstream, follow=follow, record=record,
        rotate_bytes=rotate, rotate_daily=rotate_daily, redact=redact, cert=cert, key=key, client_ca=client_ca, ca=ca,
        upstream_cert=upstream_cert, upstream_key=upstream_key, input_format=input_format, log_tz=log_tz,
        analyse_every_s=analyze_every, min_severity=min_severity, duration_s=duration, analysis_options=_options(settings),
    )  # fmt: skip
    check_options(opts)
    if no_tui or not sys.stdout.isatty():
        run_lines(opts, frames=not no_frames, quiet=quiet)
    else:
        from .ui.monitor_app import run_app

        run_app(opts)


@app.command()
def formats() -> None:
    """List the input formats ocpptool detects."""
    from .sources import input_formats

    for name, desc in input_formats().items():
        typer.echo(f"{name:14s} {desc}")
    typer.echo(f"{'pcap':14s} packet captures (pcap, pcapng): OCPP-J over WebSocket on any TCP port")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; every error becomes one line on stderr and an exit status (see ``ExitStatus``)."""
    from .sources.base import SourceError
    from .tables.writers import WriteError

    args = sys.argv[1:] if argv is None else argv
    show_tb = "--traceback" in args
    try:
        rc = app(args=args, prog_name="ocpptool", standalone_mode=False)
        if isinstance(rc, int) and rc:
            return rc  # typer.Exit(code) inside a command comes back as a return value here
    except (UserError, SourceError, WriteError) as exc:
        if show_tb:
            raise
        print(f"ocpptool: error: {exc}", file=sys.stderr)
        return ExitStatus.BAD_INPUT
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        print("ocpptool: aborted", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("ocpptool: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return ExitStatus.OK
    except Exception as exc:  # the one place that catches everything
        show = getattr(exc, "show", None)
        if show is not None and hasattr(exc, "exit_code"):  # click's UsageError / ClickException (vendored)
            show()
            return exc.exit_code  # type: ignore[attr-defined]
        if show_tb:
            raise
        print(f"ocpptool: internal error: {type(exc).__name__}: {exc} (run with --traceback for details)", file=sys.stderr)
        return ExitStatus.ERROR
    return ExitStatus.OK


def run() -> None:
    # Polars' allocator (jemalloc) hands freed pages back to the OS quickly by default; decoding frees and
    # allocates large column buffers all the time, and faulting them back in cost about a quarter of the CPU
    # time of a large decode. Keeping freed pages for 2 s saves most of that for about 10 % more peak memory
    # (30 s saved a little more for 25 % more). Set before Polars loads; a user's own setting wins.
    import os

    os.environ.setdefault("_RJEM_MALLOC_CONF", "dirty_decay_ms:2000,muzzy_decay_ms:2000")
    sys.exit(main())
