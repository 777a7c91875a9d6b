"""OCPP versions: from the WebSocket subprotocol when known, otherwise inferred from what was said.

Versions are spelled ``"1.6"``, ``"2.0"``, ``"2.0.1"``, ``"2.1"``. Inference looks at actions that exist
in only one version and at payload shapes that differ (a 1.6 BootNotification has ``chargePointVendor``,
a 2.x one has ``chargingStation``); it never guesses when the evidence is silent.
"""

from __future__ import annotations

from ._actions_data import ACTIONS

VERSIONS = ("1.6", "2.0", "2.0.1", "2.1")

_SUBPROTOCOLS = {
    "ocpp1.6": "1.6",
    "ocpp1.6j": "1.6",
    "ocpp2.0": "2.0",
    "ocpp2.0.1": "2.0.1",
    "ocpp2.1": "2.1",
}

ONLY_16 = ACTIONS["1.6"] - ACTIONS["2.0.1"] - ACTIONS["2.1"]
ONLY_2X = (ACTIONS["2.0.1"] | ACTIONS["2.1"]) - ACTIONS["1.6"]
ONLY_21 = ACTIONS["2.1"] - ACTIONS["2.0.1"] - ACTIONS["1.6"]

# Payload keys that only one family uses, for actions both families share.
_KEYS_16 = ('"chargePointVendor"', '"connectorId"', '"idTag"', '"transactionId":', '"chargePointModel"')
_KEYS_2X = ('"chargingStation"', '"evseId"', '"idToken"', '"connectorStatus"', '"transactionInfo"')


def from_subprotocol(subprotocol: str | None) -> str | None:
    """``ocpp1.6`` -> ``1.6`` ... None when absent or not an OCPP subprotocol."""
    if not subprotocol:
        return None
    return _SUBPROTOCOLS.get(subprotocol.strip().lower())


def family_of(action: str | None, payload: str | None = None) -> str | None:
    """``"1.6"``, ``"2.1"``, ``"2.x"`` (2.0, 2.0.1 or 2.1) or None, from one CALL."""
    if action in ONLY_21:
        return "2.1"
    if action in ONLY_16:
        return "1.6"
    if action in ONLY_2X:
        return "2.x"
    if payload:
        if any(k in payload for k in _KEYS_2X):
            return "2.x"
        if any(k in payload for k in _KEYS_16):
            return "1.6"
    return None


def infer(evidence: list[str | None]) -> str | None:
    """Combine :func:`family_of` results for one connection into a version, or None if silent.

    ``2.x`` evidence alone says ``2.0.1`` (by far the most deployed 2.x), unless 2.1-only actions appear.
    """
    seen = {e for e in evidence if e}
    if not seen:
        return None
    if "1.6" in seen and len(seen) == 1:
        return "1.6"
    if "2.1" in seen:
        return "2.1"
    if "2.x" in seen and "1.6" not in seen:
        return "2.0.1"
    return None  # contradictory evidence: say nothing
