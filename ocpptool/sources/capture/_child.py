"""The native engine in a process of its own (opt-in: ``OCPPTOOL_CAPTURE_CHILD=1``).

The engine is Python (with numpy); decoding its batches into tables is Polars. In one process the two share
one interpreter lock. With ``OCPPTOOL_CAPTURE_CHILD=1`` the engine runs in a child process (``python -m
ocpptool.sources.capture._child``) that reads the capture file itself and streams what it yields to the
parent over a pipe: RawBatch and ConnMeta frames as Arrow IPC, notes and errors as text, and how far it has
read (for the progress line). A thread in the parent drains the pipe into a short queue, so both processes
work at once; memory stays bounded by that queue.

It is not the default because it did not pay on the project's 2-core machine: for the 1M-message benchmark
capture it cost about 1.3 CPU seconds more (a second interpreter with Polars and numpy, Arrow IPC both ways,
300 MB through a pipe) and was 10-40 % slower in wall time whenever other work held a core (measured
alternately, load 1.6-2.5). It may pay on a machine with idle cores; measure with
``OCPPTOOL_CAPTURE_CHILD=1 ocpptool decode ...`` before relying on it.

Wire format, one record after another: a kind byte, an 8-byte little-endian length, then the body.
"""

from __future__ import annotations

import io
import os
import queue
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator

import polars as pl

from ..base import ConnMeta, SourceError, SourceItem, SourceNote
from . import CaptureOptions

BATCH, META, NOTE, ERROR, READ, END = b"B", b"M", b"N", b"E", b"R", b"Z"
AHEAD = 2  # batches read from the pipe ahead of the decoder


def wanted(path: str) -> bool:
    """Whether to read this capture in a child process: asked for, and a file the child can open."""
    return os.environ.get("OCPPTOOL_CAPTURE_CHILD") == "1" and path != "-" and os.path.isfile(path)


def read(path: str, source: str, options: CaptureOptions,
         on_bytes: Callable[[int], None] | None = None) -> Iterator[SourceItem]:  # fmt: skip
    """What :func:`native.read` would yield for ``path``, produced in a child process."""
    cmd = [sys.executable, "-m", "ocpptool.sources.capture._child", path, source,
           ",".join(str(p) for p in options.ports)]  # fmt: skip
    env = {**os.environ, "OCPPTOOL_CAPTURE_CHILD": "0"}
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, env=env)
        try:  # a 1 MB pipe instead of 64 KB: far fewer switches between the two processes per batch
            import fcntl

            fcntl.fcntl(proc.stdout.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)  # type: ignore[union-attr]
        except (ImportError, OSError):
            pass
        items: queue.Queue = queue.Queue(AHEAD)
        stop = threading.Event()

        def pump() -> None:
            assert proc.stdout is not None
            pipe = proc.stdout
            try:
                while not stop.is_set():
                    head = pipe.read(9)
                    if len(head) < 9:
                        items.put((None, b""))
                        return
                    body = pipe.read(int.from_bytes(head[1:], "little"))
                    items.put((head[:1], body))
                    if head[:1] == END:
                        return
            except (OSError, ValueError) as exc:
                items.put((None, str(exc).encode()))

        reader = threading.Thread(target=pump, name="capture-child-reader", daemon=True)
        reader.start()
        try:
            while True:
                kind, body = items.get()
                if kind == BATCH:
                    yield pl.read_ipc(io.BytesIO(body))
                elif kind == READ:
                    if on_bytes:
                        on_bytes(int.from_bytes(body, "little"))
                elif kind == META:
                    yield ConnMeta(pl.read_ipc(io.BytesIO(body)))
                elif kind == NOTE:
                    yield SourceNote(body.decode())
                elif kind == ERROR:
                    raise SourceError(body.decode())
                elif kind == END:
                    break
                else:  # the child died
                    proc.wait()
                    err.seek(0)
                    lines = err.read().decode(errors="replace").strip().splitlines()
                    why = lines[-1] if lines else f"exit status {proc.returncode}"
                    raise SourceError(f"{path}: the capture reader process failed ({why})")
            proc.wait()
        finally:
            stop.set()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            while reader.is_alive():  # unblock the pump if it waits on a full queue
                try:
                    items.get_nowait()
                except queue.Empty:
                    reader.join(0.05)
            if proc.stdout is not None:
                proc.stdout.close()


def _send(out, kind: bytes, body: bytes) -> None:
    out.write(kind + len(body).to_bytes(8, "little"))
    out.write(body)


def _ipc(df: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.write_ipc(buf, compression="uncompressed", compat_level=pl.CompatLevel.oldest())  # plain strings: half the time
    return buf.getvalue()


def main(argv: list[str]) -> int:
    import gzip

    from . import native

    path, source, ports = argv
    options = CaptureOptions(engine="native", ports=tuple(int(p) for p in ports.split(",") if p))
    out = sys.stdout.buffer
    try:
        with open(path, "rb") as raw:
            gz = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            stream = gzip.GzipFile(fileobj=raw, mode="rb") if gz else raw
            seen = 0
            for item in native.read(stream, source, options):  # type: ignore[arg-type]
                now = raw.tell()
                if now > seen:
                    _send(out, READ, (now - seen).to_bytes(8, "little"))
                    seen = now
                if isinstance(item, pl.DataFrame):
                    _send(out, BATCH, _ipc(item))
                elif isinstance(item, ConnMeta):
                    _send(out, META, _ipc(item.frame))
                elif isinstance(item, SourceNote):
                    _send(out, NOTE, item.text.encode())
    except SourceError as exc:
        _send(out, ERROR, str(exc).encode())
    except (OSError, EOFError) as exc:
        _send(out, ERROR, f"{path}: read error ({exc})".encode())
    _send(out, END, b"")
    out.flush()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except BrokenPipeError:  # the parent stopped reading (it was interrupted or failed): nothing to say
        os._exit(1)
