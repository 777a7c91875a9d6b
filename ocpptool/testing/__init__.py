"""Test helpers: real OCPP peers on loopback (see :mod:`ocpptool.testing.peers`)."""

from ocpptool.testing.peers import (
    SUBPROTOCOLS,
    ChargerConfig,
    ChargerReport,
    Csms,
    CsmsCall,
    Faults,
    FleetResult,
    JsonlRecorder,
    RecordingConnection,
    Session,
    record_fleet,
    run_charger,
    run_fleet,
)

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
