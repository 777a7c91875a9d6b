"""ocpptool: decode, analyse, replay and monitor OCPP-J traffic."""

__version__ = "0.1.0"
