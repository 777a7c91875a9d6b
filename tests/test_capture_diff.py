"""Differential tests: the native engine and the tshark engine read the same captures to the same tables.

Both follow the row conventions of :mod:`ocpptool.sources.capture`, so the messages tables must be equal
frame by frame (every column) and the WebSocket connections must agree on what they are. ``wss`` is left
out (only tshark can decrypt TLS) and so is ``ws_fragmented_lib`` (fragments tshark 4.0 cannot rebuild;
see tests/captures/README.md).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from ocpptool.pipeline import load
from ocpptool.sources.capture import CaptureOptions

from .conftest import PUBLIC, REPO, need

CAPTURES = REPO / "tests" / "captures"
ONLY_TSHARK = {"wss", "ws_fragmented_lib"}
OURS = sorted(p.stem for p in CAPTURES.glob("*.pcapng") if p.stem not in ONLY_TSHARK)
PUBLIC_PCAPS = [
    "checkocpp/capt.pcapng",
    "checkocpp/capt_error.pcapng",
    "checkocpp/capt_error2.0.pcapng",
    "checkocpp/capt_error2.0.1.pcapng",
    "checkocpp/extralargeOPENEVSE.pcapng",
    "evsetool/cap.pcapng",
]
CONN_COLUMNS = ["conn", "charge_point_id", "subprotocol", "compression", "close_code", "ocpp", "duplicate_of"]

pytestmark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")


def both(path: Path):
    native, _ = load([str(path)], capture=CaptureOptions(engine="native"), progress=False)
    tshark, _ = load([str(path)], capture=CaptureOptions(engine="tshark"), progress=False)
    return native, tshark


def websocket_connections(connections: pl.DataFrame) -> pl.DataFrame:
    """The WebSocket connections (ocpp known); undecryptable TLS background traffic is not compared."""
    return connections.filter(pl.col("ocpp").is_not_null()).select(CONN_COLUMNS).sort("conn")


def assert_same(path: Path) -> None:
    native, tshark = both(path)
    assert tshark.messages.height > 0
    assert_frame_equal(native.messages, tshark.messages, check_exact=True)
    assert_frame_equal(websocket_connections(native.connections), websocket_connections(tshark.connections))


@pytest.mark.parametrize("name", OURS)
def test_engines_agree_on_our_captures(name: str) -> None:
    """--engine native and --engine tshark give the same messages and connections for a capture."""
    assert_same(CAPTURES / f"{name}.pcapng")


@pytest.mark.shared
@pytest.mark.parametrize("rel", PUBLIC_PCAPS)
def test_engines_agree_on_public_captures(rel: str) -> None:
    """Both engines read third-party captures (deflate, IPv6, 'any'-interface duplicates) the same way."""
    assert_same(need(PUBLIC / rel))
