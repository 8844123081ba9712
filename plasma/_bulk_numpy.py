"""The coordinator's bulk work in numpy (internal): the fallback of plasma/_native/bulk.c.

Pin scans, a rebuild's placement and the generation index's compaction are C calls in
:mod:`plasma._native` (the coordinator does not import numpy: 15 MiB of its memory). Where
the extension is not built, or ``$PLASMA_COORD_NATIVE`` is ``0``, :mod:`plasma.directory`
and :mod:`plasma.store.generations` import this module instead, on first use: the same
functions (same arguments, same answers) as vectorised numpy passes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from plasma.ids import ID_SIZE

if TYPE_CHECKING:
    from plasma.directory import Directory

PIN_HEADER = 64
HEADER_SIZE = 64
SLOT_SIZE = 64
_GOLDEN = 0x9E3779B97F4A7C15
PINNED, COUNTS, HOLDERS = 0, 1, 2  # pins_match's questions

# the slot layout as a numpy record (the rebuild copies slots in bulk)
SLOT_DTYPE = np.dtype(
    {
        "names": [
            "seq",
            "gen",
            "id",
            "segment",
            "offset",
            "data",
            "metadata",
            "node",
            "state",
            "flags",
        ],
        "formats": ["<u8", "<u8", "V20", "<u4", "<u8", "<u8", "<u4", "<u2", "u1", "u1"],
        "offsets": [0, 8, 16, 36, 40, 48, 56, 60, 62, 63],
        "itemsize": SLOT_SIZE,
    }
)


# ---------------------------------------------------------------- pin scans


def _unique(values: np.ndarray) -> np.ndarray:
    """The distinct ``values``, sorted: ``np.unique``, which imports numpy.ma (19 ms and
    1.2 MiB, on the coordinator's first pin scan)."""
    values = np.sort(values)
    keep = np.empty(len(values), dtype=bool)
    keep[:1] = True
    np.not_equal(values[1:], values[:-1], out=keep[1:])
    return values[keep]


def _below_mark(table: Any) -> np.ndarray:
    """A view of the entries below a table's high-water mark (clamped to the table)."""
    words = np.frombuffer(table, dtype="<u8")
    first = PIN_HEADER // 8
    return words[first : first + min(int(words[0]), len(words) - first)]


def snapshot(tables: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """``(pins, ends)``: every table's entries below its mark copied into one array (0 for
    free entries: the client writes its table while we read, so numpy must not see it
    change under one operation), table ``i``'s ending at ``ends[i]``."""
    views = [_below_mark(table) for table in tables]
    pins = np.concatenate(views) if views else np.zeros(0, dtype="<u8")
    ends = np.cumsum([len(v) for v in views], dtype=np.int64)
    return pins, ends


def match(pins: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(positions, which)``: the entries of ``pins`` equal to one of ``wanted`` (sorted,
    unique, no 0), and the index in ``wanted`` of each. A few wanted: one comparison each;
    more: a hash table of them (an array indexed by the hash of a generation: which wanted
    one hashes there, or -2 where several do), looked up for every entry at once; entries
    hashing where several do are then binary-searched."""
    if len(wanted) <= 4:
        positions_of = [np.flatnonzero(pins == g) for g in wanted.tolist()]
        positions = np.concatenate(positions_of)
        which = np.repeat(np.arange(len(wanted)), [len(p) for p in positions_of])
        return positions, which
    bits = min(max(10, (4 * len(wanted)).bit_length()), 24)
    shift = np.uint64(64 - bits)
    golden = np.uint64(_GOLDEN)
    homes = (wanted * golden) >> shift  # (wraps mod 2**64)
    table = np.full(1 << bits, -1, dtype=np.int32)
    table[homes] = np.arange(len(wanted), dtype=np.int32)
    table[np.bincount(homes.astype(np.intp), minlength=len(table)) > 1] = -2
    hashed = pins * golden
    hashed >>= shift
    found = table[hashed]
    direct = np.flatnonzero(found >= 0)
    which = found[direct].astype(np.int64)
    hit = wanted[which] == pins[direct]
    positions, which = direct[hit], which[hit]
    shared = np.flatnonzero(found == -2)
    if len(shared):
        values = pins[shared]
        index = np.searchsorted(wanted, values)
        np.minimum(index, len(wanted) - 1, out=index)
        hit = wanted[index] == values
        positions = np.concatenate([positions, shared[hit]])
        which = np.concatenate([which, index[hit]])
    return positions, which


def pins_match(
    tables: Sequence[Any], generations: Iterable[int], what: int, clients: Sequence[Any] | None
) -> Any:
    """As ``plasma._native.native.pins_match``: one pass for the distinct nonzero
    ``generations`` (None if none); ``what`` PINNED: the set of those pinned, COUNTS:
    {generation: pins}, HOLDERS: {generation: [clients[i] of each table i pinning it]}."""
    wanted = _unique(np.fromiter(generations, dtype="<u8"))
    wanted = wanted[wanted != 0]
    if not len(wanted):
        return None
    pins, ends = snapshot(tables)
    positions, which = match(pins, wanted)
    if what == PINNED:
        return set(wanted[_unique(which)].tolist())
    if what == COUNTS:
        n = np.bincount(which, minlength=len(wanted))
        return dict(zip(wanted[n > 0].tolist(), n[n > 0].tolist(), strict=True))
    assert clients is not None
    owners = np.searchsorted(ends, positions, side="right")
    # each (wanted, owner) pair once, ordered by wanted then owner: as one number
    pairs = _unique(which * len(tables) + owners)
    out: dict[int, list[Any]] = {}
    for w, owner in zip(*divmod(pairs, len(tables)), strict=True):
        out.setdefault(int(wanted[w]), []).append(clients[owner])
    return out


def pin_count(tables: Sequence[Any]) -> int:
    """The pins (nonzero entries below the mark) in all ``tables``."""
    return int(np.count_nonzero(snapshot(tables)[0]))


def pins_by_table(tables: Sequence[Any]) -> list[list[int]]:
    """Each table's pins, in order."""
    pins, ends = snapshot(tables)
    return [table[table != 0].tolist() for table in np.split(pins, ends[:-1])] if tables else []


# ---------------------------------------------------------------- a rebuild's placement


def slot_records(directory: Directory) -> np.ndarray:
    """A directory's slots as numpy records (a view: drop it before the buffer is closed)."""
    return np.frombuffer(
        directory._mv, dtype=SLOT_DTYPE, count=directory.capacity, offset=HEADER_SIZE
    )


def home_slots(ids: np.ndarray, bits: int) -> np.ndarray:
    """:func:`plasma.directory.home_slot` of each id of a ``(n, 20)`` uint8 array."""
    a = np.ascontiguousarray(ids[:, 0:8]).view("<u8").ravel()
    b = np.ascontiguousarray(ids[:, 8:16]).view("<u8").ravel()
    c = np.ascontiguousarray(ids[:, 16:20]).view("<u4").ravel().astype(np.uint64)
    return ((a ^ b ^ c) * np.uint64(_GOLDEN)) >> np.uint64(64 - bits)  # wraps mod 2**64


def place_in_bulk(new: Directory, old: Directory, slots: Any, placed: Any) -> bool:
    """:meth:`plasma.directory.Directory.copy_from`'s bulk placement (linear probing in
    order of home slot is a running maximum) of ``old``'s ``slots`` (int64), their new slots
    written to ``placed``; False, and ``new``'s slots all zero, when some object finds no
    slot within the probe limit."""
    fits = _place(new, old, np.frombuffer(slots, dtype=np.int64), placed)
    if not fits:
        slot_records(new)[:] = np.zeros(1, dtype=SLOT_DTYPE)
    return fits


def _place(new: Directory, old: Directory, slots: Any, out: Any) -> bool:
    n = len(slots)
    if not n:
        return True
    rows = slot_records(old)[slots]  # a copy
    rows["seq"] = 0
    ids = np.ascontiguousarray(rows["id"]).view(np.uint8).reshape(n, ID_SIZE)
    homes = home_slots(ids, new.capacity.bit_length() - 1).astype(np.int64)
    order = np.argsort(homes, kind="stable")
    home = homes[order]
    index = np.arange(n)
    pos = index + np.maximum.accumulate(home - index)  # first free slot at or after home
    if (pos - home >= new.max_probe).any():
        return False
    placed = np.frombuffer(out, dtype=np.int64)
    placed[:] = -1
    inside = pos < new.capacity
    slot_records(new)[pos[inside]] = rows[order[inside]]
    placed[order[inside]] = pos[inside]
    for i in order[~inside].tolist():  # runs that wrap past the last slot: one by one
        placed[i] = new._copy_slot(old, int(slots[i]))
        if placed[i] < 0:
            return False
    return True


# ---------------------------------------------------------------- the generation index


def compact(gens: Any, slots: Any, new_of_old: Any) -> int:
    """As ``plasma._native.native.compact``: every slot ``s >= 0`` of ``slots`` (int64)
    mapped to ``new_of_old[s]`` (unless None), then the entries of ``gens`` (uint64) and
    ``slots`` whose slot is ``>= 0`` moved to the front, in order: how many."""
    g = np.frombuffer(gens, dtype=np.uint64)
    s = np.frombuffer(slots, dtype=np.int64)
    if new_of_old is not None:
        live = s >= 0
        s[live] = np.frombuffer(new_of_old, dtype=np.int64)[s[live]]
    keep = s >= 0
    kept = int(keep.sum())
    g[:kept] = g[keep]  # (the right side is a copy)
    s[:kept] = s[keep]
    return kept
