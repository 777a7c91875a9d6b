"""Type stubs for the compiled JSON-lines splitter and payload walker (ocpptool/_speedups.c)."""

_Buffer = bytes | bytearray | memoryview

def split_jsonl(
    chunk: _Buffer, keys: tuple[bytes | None, ...], first_line: int
) -> tuple[dict[str, tuple[object, object]], list[tuple[int, int, int]], int]: ...
def count_lines(buffer: _Buffer) -> int: ...
def walk_payloads(
    stream: object,
    kinds: _Buffer | None,
    configs: tuple[tuple[bytes | None, tuple[bytes, ...], bool], ...],
    energy_only: bool = False,
    enums: tuple[bytes, ...] | None = None,
) -> tuple[
    tuple[object, object],
    tuple[tuple[tuple[object, object], ...], ...],
    dict[str, tuple[object, object]] | None,
    tuple[tuple[object, object], tuple[object, object], tuple[object, object]],
    tuple[tuple[object, object], tuple[object, object]] | None,
]: ...
def class_keys(stream: object, enums: tuple[bytes, ...]) -> tuple[tuple[object, object], tuple[object, object]]: ...
