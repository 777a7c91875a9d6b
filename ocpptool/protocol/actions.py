"""Per-version action knowledge: which actions exist, and who sends the CALL.

``ACTIONS`` is generated from the official schemas shipped in the ``ocpp`` package
(``scripts/gen_actions.py``). Who initiates an action is not in the schemas, so it is listed here from the
specifications. It is used to infer a direction when a log does not say (a Heartbeat CALL comes from the
charger; a response travels opposite to its CALL).
"""

from __future__ import annotations

from ._actions_data import ACTIONS

CP_TO_CSMS = "cp->csms"
CSMS_TO_CP = "csms->cp"
DIRECTIONS = (CP_TO_CSMS, CSMS_TO_CP)

#: Actions whose CALL the charge point sends, any version.
CP_INITIATED = frozenset(
    {
        # 1.6 core, firmware, security extension
        "Authorize", "BootNotification", "DiagnosticsStatusNotification", "FirmwareStatusNotification",
        "Heartbeat", "MeterValues", "StartTransaction", "StatusNotification", "StopTransaction",
        "SecurityEventNotification", "SignCertificate", "LogStatusNotification",
        "SignedFirmwareStatusNotification",
        # 2.0.1
        "ClearedChargingLimit", "Get15118EVCertificate", "GetCertificateStatus", "NotifyChargingLimit",
        "NotifyCustomerInformation", "NotifyDisplayMessages", "NotifyEVChargingNeeds",
        "NotifyEVChargingSchedule", "NotifyEvent", "NotifyMonitoringReport", "NotifyReport",
        "PublishFirmwareStatusNotification", "ReportChargingProfiles", "ReservationStatusUpdate",
        "TransactionEvent",
        # 2.1
        "BatterySwap", "GetCertificateChainStatus", "NotifyDERAlarm", "NotifyDERStartStop",
        "NotifyPeriodicEventStream", "NotifyPriorityCharging", "NotifySettlement",
        "PullDynamicScheduleUpdate", "ReportDERControl", "VatNumberValidation", "OpenPeriodicEventStream",
        "ClosePeriodicEventStream", "NotifyQRCodeScanned", "GetTariffs",
    }
)  # fmt: skip

#: Actions either side may send.
BIDIRECTIONAL = frozenset({"DataTransfer"})

ALL_ACTIONS = frozenset().union(*ACTIONS.values())


def call_direction(action: str | None) -> str | None:
    """The direction a CALL of this action travels, or None when either side may send it or it is unknown."""
    if action is None or action in BIDIRECTIONAL:
        return None
    if action in CP_INITIATED:
        return CP_TO_CSMS
    if action in ALL_ACTIONS:
        return CSMS_TO_CP
    return None


def opposite(direction: str | None) -> str | None:
    if direction == CP_TO_CSMS:
        return CSMS_TO_CP
    if direction == CSMS_TO_CP:
        return CP_TO_CSMS
    return None


_ALIASES = {
    "cp->csms": CP_TO_CSMS, "cp-to-csms": CP_TO_CSMS, "cp_to_csms": CP_TO_CSMS, "cs_to_csms": CP_TO_CSMS,
    "cs->csms": CP_TO_CSMS, "cp->cs": CP_TO_CSMS, "cs-to-csms": CP_TO_CSMS, "cp2csms": CP_TO_CSMS,
    "chargepoint>centralsystem": CP_TO_CSMS, "station->csms": CP_TO_CSMS, "upstream": CP_TO_CSMS,
    "cp_to_cs": CP_TO_CSMS, "cp-to-cs": CP_TO_CSMS, "send": CP_TO_CSMS, "tx": CP_TO_CSMS, "out": CP_TO_CSMS,
    "outgoing": CP_TO_CSMS, "request": None, "csms->cp": CSMS_TO_CP, "csms-to-cp": CSMS_TO_CP,
    "csms_to_cp": CSMS_TO_CP, "csms_to_cs": CSMS_TO_CP, "csms->cs": CSMS_TO_CP, "cs->cp": CSMS_TO_CP,
    "csms-to-cs": CSMS_TO_CP, "csms2cp": CSMS_TO_CP, "centralsystem>chargepoint": CSMS_TO_CP,
    "csms->station": CSMS_TO_CP, "downstream": CSMS_TO_CP, "cs_to_cp": CSMS_TO_CP, "cs-to-cp": CSMS_TO_CP,
    "recv": CSMS_TO_CP, "receive": CSMS_TO_CP, "received": CSMS_TO_CP, "rx": CSMS_TO_CP, "in": CSMS_TO_CP,
    "incoming": CSMS_TO_CP, "sent": CP_TO_CSMS, "charger->csms": CP_TO_CSMS, "csms->charger": CSMS_TO_CP,
    "outbound": CP_TO_CSMS, "inbound": CSMS_TO_CP,
}  # fmt: skip
# Words that only say "sent"/"received": their meaning depends on whose log it is.
_PERSPECTIVE_WORDS = frozenset(
    {"send", "sent", "tx", "out", "outgoing", "outbound", "recv", "receive", "received", "rx", "in", "incoming",
     "inbound"}
)


def normalise_direction(text: str | None, *, perspective: str = "cp") -> str | None:
    """Map the many spellings of a direction to ``cp->csms`` / ``csms->cp``.

    Words that only say "sent"/"received" depend on who wrote the log: ``perspective`` is ``"cp"`` for a
    charger's log (sent means cp->csms) or ``"csms"`` for a CSMS's log (sent means csms->cp).
    """
    if text is None:
        return None
    key = text.strip().lower().replace(" ", "")
    value = _ALIASES.get(key)
    if value is None:
        return None
    if perspective == "csms" and key in _PERSPECTIVE_WORDS:
        return opposite(value)
    return value
