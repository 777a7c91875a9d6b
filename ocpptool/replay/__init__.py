"""Replay recorded OCPP-J traffic: as chargers against a CSMS, or as a CSMS toward chargers.

messages -> :mod:`.plan` (pure) -> :mod:`.as_charger` / :mod:`.as_csms` (websockets shells) -> transcript
(RawMessages, the same pipeline as every input) and a divergence report (:mod:`.divergence`, pure).
"""
