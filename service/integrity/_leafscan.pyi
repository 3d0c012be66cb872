from collections.abc import Callable

LEAF_VERSION: int

class Unsupported(Exception): ...

def scan(
    path: str,
    total: int,
    bounds: list[int],
    snapshots: dict[str, str],
    progress: Callable[[int, int], None] | None,
    threads: int,
    /,
) -> tuple[
    int,
    int,
    list[tuple[int, int]],
    list[tuple[int, bytes, int]],
    list[tuple[int, bytes, bytes]],
    list[int],
]: ...
def format_float(value: float, style: str, /) -> bytes | None: ...
def canonical_json(text: bytes, style: str, /) -> bytes | None: ...
