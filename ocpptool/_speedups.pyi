"""Type stubs for the compiled JSON-lines splitter (ocpptool/_speedups.c)."""

_Buffer = bytes | bytearray | memoryview

def split_jsonl(
    chunk: _Buffer, keys: tuple[bytes | None, ...], first_line: int
) -> tuple[dict[str, tuple[object, object]], list[tuple[int, int, int]], int]: ...
def count_lines(buffer: _Buffer) -> int: ...
