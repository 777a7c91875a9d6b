"""Sans-I/O OCPP-J protocol core.

Text in, typed records out. This package imports only the standard library and orjson: no polars,
pyshark, websockets or textual (``tests/test_boundaries.py`` checks this in a fresh interpreter), so it
can be reused by every source, the replay planner and the monitor without dragging I/O along.

- :mod:`.frames`: parse one OCPP-J frame (``[2,id,action,payload]`` ...) into a :class:`Frame`, or a
  :class:`Weird` saying why it is not one. ``decode`` never raises.
- :mod:`.versions`: OCPP versions from subprotocols, or inferred from actions and payload shapes.
- :mod:`.actions`: who initiates each action, per version (used to infer directions).
- :mod:`.correlate`: pairs responses with calls per connection (the Open OCPP Trace rule).
"""

from .correlate import Correlator, Event
from .frames import Frame, MessageType, Weird, decode

__all__ = ["Correlator", "Event", "Frame", "MessageType", "Weird", "decode"]
