/* The coordinator's bulk work in C11: pin scans, a rebuild's placement of every live object
 * in a new directory and its moves of what is kept by slot, and the compaction of the
 * store's generation index. Plain C with no dependency beyond libc, like directory.h:
 * bulk_module.c wraps it for Python, one call per scan, rebuild step or compaction (never a
 * call per entry), so the coordinator needs no numpy.
 *
 * Pin tables are written by their clients while they are scanned: each entry is read once
 * (a relaxed atomic load) and only that value is used, so a scan sees each entry as it was
 * at some moment (a snapshot entry by entry, as a copy of the table would be); the
 * high-water mark is read once, first (an acquire load), and clamped to the table. */
#ifndef PLASMA_BULK_H
#define PLASMA_BULK_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "directory.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------ pin scans */

/* How many entries of the pin table at base (size bytes, 8-byte aligned) are below its
 * high-water mark (the mark read once, clamped to the table's entries). */
uint64_t pcd_pins_below_mark(const void *base, size_t size);

/* Entry i of a pin table (i below the count pcd_pins_below_mark gave): one relaxed load
 * (inline: scans call it for every entry). */
static inline uint64_t pcd_pins_entry(const void *base, uint64_t i) {
    const unsigned char *p = (const unsigned char *)base + PCD_PIN_HEADER + 8 * i;
    return atomic_load_explicit((const atomic_uint_least64_t *)(const void *)p,
                                memory_order_relaxed);
}

/* A set of wanted generations (distinct, never 0), for matching pin entries against: the
 * values in keys[0..n) in the order first added, and a hash table of their indexes. */
typedef struct pcd_wanted {
    uint64_t *keys;
    uint64_t n;
    uint32_t *table; /* index + 1 of the key hashing there (linear probing), 0 free */
    uint64_t mask;   /* table slots - 1 */
    unsigned shift;  /* 64 - log2(table slots) */
    uint64_t room;   /* keys allocated */
} pcd_wanted;

/* An empty set with room for at least hint values (it grows past it). PCD_ENOMEM. */
int pcd_wanted_init(pcd_wanted *wanted, uint64_t hint);
/* Add generation (0 and ones already in are ignored). PCD_ENOMEM, PCD_ERANGE (2**32 - 1
 * values already). */
int pcd_wanted_add(pcd_wanted *wanted, uint64_t generation);
/* The index of generation in keys, or -1 (inline: scans call it for every entry). */
static inline int64_t pcd_wanted_find(const pcd_wanted *w, uint64_t generation) {
    uint64_t at = (generation * UINT64_C(0x9E3779B97F4A7C15)) >> w->shift;
    for (uint32_t i; (i = w->table[at]) != 0; at = (at + 1) & w->mask)
        if (w->keys[i - 1] == generation)
            return (int64_t)i - 1;
    return -1;
}
void pcd_wanted_free(pcd_wanted *wanted);

/* ------------------------------------------------------------------ a rebuild's placement */

/* Fill the empty directory new_base (capacity slots, probe limit max_probe; no reader maps
 * it yet) with the n live slots slots[0..n) of old_base (old_capacity slots): same
 * generation, id, location, state and flags, each where linear probing in order of home
 * slot (ties in the order given) puts it, seq 0; an object whose probe run wraps past the
 * last slot is then inserted as pcd_insert would (in that order, seq 2; a dying one is then
 * marked dying: seq 4). 1 with placed[i] the new slot of slots[i]; 0 when some object finds
 * no free slot within max_probe (new's slots are all zero again: nothing written is left);
 * PCD_ERANGE for a slot outside old, PCD_ECAPACITY, PCD_ENOMEM. */
int pcd_place(void *new_base, uint64_t capacity, uint64_t max_probe, const void *old_base,
              uint64_t old_capacity, const int64_t *slots, uint64_t n, int64_t *placed);

/* ------------------------------------------------------------------ a rebuild's moves */

/* dst[index[i]] = src[i] for every i < n with index[i] >= 0 (dst holds dst_n items and src
 * n items, each itemsize bytes): what is kept by slot moves with its object's slot. 0, or
 * PCD_ERANGE (nothing written) when some index[i] is not below dst_n. */
int pcd_scatter(void *dst, uint64_t dst_n, const void *src, const int64_t *index, uint64_t n,
                size_t itemsize);

/* A ring of slots: its first and last slot (-1: none) and how many are linked. */
typedef struct pcd_ring {
    int64_t head;
    int64_t tail;
    uint64_t linked;
} pcd_ring;

/* A CLOCK ring relinked through a rebuild (plasma/store/eviction.py). The ring starts at
 * head and goes on through old_next (old_n slots; -1 ends it). Each member's slot s moves
 * to new_of_old[s] (old_n entries; -1: left without a slot): it is linked at the back of
 * out, a ring in prev and next (new_n slots each; next[t] -1 at the tail), so the ring
 * keeps its order. The old slots of those left out go to left[0..*n_left) (room for old_n).
 * 0; PCD_ERANGE for a slot outside the arrays or a ring of more than old_n members (a
 * cycle): prev and next are then part-written. */
int pcd_relink(int64_t head, const int32_t *old_next, uint64_t old_n, const int64_t *new_of_old,
               int32_t *prev, int32_t *next, uint64_t new_n, pcd_ring *out, int64_t *left,
               uint64_t *n_left);

/* ------------------------------------------------------------------ the generation index */

/* The store's generation index (plasma/store/generations.py): gens[i] published at slot
 * slots[i], -1 for a removed entry. With new_of_old (n_new entries; NULL: none), every
 * slot s >= 0 becomes new_of_old[s] first (-1: the entry is removed). Then the entries kept
 * (slot >= 0) are moved to the front, in order: their number. PCD_ERANGE (nothing changed)
 * when some slot is not below n_new. */
int64_t pcd_compact(uint64_t *gens, int64_t *slots, uint64_t n, const int64_t *new_of_old,
                    uint64_t n_new);

#ifdef __cplusplus
}
#endif

#endif
