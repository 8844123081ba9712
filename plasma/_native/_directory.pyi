from collections.abc import Callable, Iterable, Sequence
from typing import Any

from plasma.records import ObjectLocation

PIN_HEADER: int

class Found:
    slot: int
    seq: int
    generation: int
    location: ObjectLocation

class Reader:
    capacity: int
    superseded: bool
    replicas: bool
    token: int
    def __init__(self, directory: Any, access: Any = None) -> None: ...
    def lookup(self, oid: bytes, flags: int = 0) -> Found | None: ...
    def unchanged(self, found: Found) -> bool: ...
    def dying(self, found: Found) -> bool: ...

class PinTable:
    count: int
    entries: int
    def __init__(self, table: Any) -> None: ...
    def pin(self, generation: int) -> int | None: ...
    def unpin(self, index: int) -> None: ...

class View:
    def __init__(
        self, segment: Any, offset: int, length: int, done: Callable[[Any], object], key: Any
    ) -> None: ...
    def __buffer__(self, flags: int) -> memoryview: ...

class RLock:
    def __init__(self) -> None: ...
    def acquire(self, blocking: bool = True) -> bool: ...
    def release(self) -> None: ...
    def __enter__(self) -> bool: ...
    def __exit__(self, *exc: object) -> None: ...

class Pinned:
    views: int
    revoked: bool
    @property
    def pin(self) -> int: ...
    @property
    def found(self) -> Found: ...
    @property
    def loc(self) -> ObjectLocation: ...

class Bound:
    __wrapped__: Callable[..., Any]
    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

class Getter:
    reader: Reader | None
    pins: PinTable | None
    node: int | None
    @property
    def fd(self) -> int: ...
    @property
    def hung_up(self) -> bool | None: ...
    interval_ns: int
    release_delay: int
    cache_limit: int
    cache_bytes: int
    def __init__(
        self,
        segments: dict[int, Any],
        held: dict[bytes, Any],
        cache: dict[bytes, Any],
        lock: RLock,
        drop: Callable[[bytes], object],
        evict: Callable[[], object],
        unpinned: Callable[[bytes], object],
        id_type: type,
    ) -> None: ...
    def get(self, oid: Any) -> memoryview | None: ...
    def watch(self, fd: int) -> bool: ...
    def bind(self, method: Callable[..., Any], owner: Any) -> Bound: ...

def views(
    segment: Any,
    offset: int,
    data_size: int,
    metadata_size: int,
    done: Callable[[Any], object],
    key: Any,
) -> tuple[memoryview, memoryview]: ...
def pin_from_directory(
    reader: Reader, pins: PinTable, mapped: Any, oid: bytes, node: int | None
) -> tuple[Found, int] | None: ...
def insert(
    directory: Any,
    capacity: int,
    max_probe: int,
    generation: int,
    oid: bytes,
    segment: int,
    offset: int,
    data_size: int,
    metadata_size: int,
    node: int,
    flags: int,
) -> int: ...
def set_state(directory: Any, capacity: int, slot: int, state: int) -> None: ...
def clear_slot(directory: Any, capacity: int, slot: int) -> None: ...
def set_superseded(directory: Any) -> None: ...
def set_ordered(directory: Any) -> None: ...
def pin_count(tables: Sequence[Any]) -> int: ...
def pins_by_table(tables: Sequence[Any]) -> list[list[int]]: ...
def pins_match(
    tables: Sequence[Any], generations: Iterable[int], what: int, clients: Sequence[Any] | None
) -> Any: ...
def place(
    new: Any, capacity: int, max_probe: int, old: Any, old_capacity: int, slots: Sequence[int]
) -> list[int] | None: ...
def compact(gens: Any, slots: Any, new_of_old: Any) -> int: ...
