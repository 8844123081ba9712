/* The coordinator's bulk work in C11 (see bulk.h): pin scans, a rebuild's placement and
 * moves, the generation index's compaction. No compiler builtins; shared words through
 * <stdatomic.h>. */
#include "bulk.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define S_SEQ 0
#define S_ID 16
#define S_STATE 62

static const uint64_t GOLDEN = 0x9E3779B97F4A7C15ull;
#define SPARSE (UINT64_C(1) << 16) /* hash slots of a wanted set kept 1/8 full, at most */

/* ------------------------------------------------------------------ pin scans */

uint64_t pcd_pins_below_mark(const void *base, size_t size) {
    if (size < PCD_PIN_HEADER)
        return 0;
    uint64_t entries = (size - PCD_PIN_HEADER) / 8;
    /* acquire: the entries read after it are not read before it */
    uint64_t mark =
        atomic_load_explicit((const atomic_uint_least64_t *)base, memory_order_acquire);
    return mark < entries ? mark : entries;
}

static int wanted_table(pcd_wanted *w, unsigned bits) {
    uint32_t *table = calloc((size_t)1 << bits, sizeof *table);
    if (table == NULL)
        return PCD_ENOMEM;
    free(w->table);
    w->table = table;
    w->mask = ((uint64_t)1 << bits) - 1;
    w->shift = 64 - bits;
    for (uint64_t i = 0; i < w->n; i++) {
        uint64_t at = (w->keys[i] * GOLDEN) >> w->shift;
        while (table[at])
            at = (at + 1) & w->mask;
        table[at] = (uint32_t)(i + 1);
    }
    return PCD_OK;
}

int pcd_wanted_init(pcd_wanted *w, uint64_t hint) {
    unsigned bits = 4;
    memset(w, 0, sizeof *w);
    if (hint > UINT32_MAX)
        hint = UINT32_MAX;
    while (((uint64_t)1 << bits) < 2 * hint)
        bits++;
    w->room = hint > 8 ? hint : 8;
    w->keys = malloc(w->room * sizeof *w->keys);
    if (w->keys == NULL || wanted_table(w, bits) != PCD_OK) {
        pcd_wanted_free(w);
        return PCD_ENOMEM;
    }
    return PCD_OK;
}

int pcd_wanted_add(pcd_wanted *w, uint64_t generation) {
    if (generation == 0)
        return PCD_OK;
    uint64_t at = (generation * GOLDEN) >> w->shift;
    for (uint32_t i; (i = w->table[at]) != 0; at = (at + 1) & w->mask)
        if (w->keys[i - 1] == generation)
            return PCD_OK;
    if (w->n >= UINT32_MAX - 1)
        return PCD_ERANGE;
    if (w->n == w->room) {
        uint64_t room = 2 * w->room;
        uint64_t *keys = realloc(w->keys, room * sizeof *keys);
        if (keys == NULL)
            return PCD_ENOMEM;
        w->keys = keys;
        w->room = room;
    }
    w->keys[w->n++] = generation;
    /* at most 1/8 full up to SPARSE slots (a probe of an entry not wanted then mostly ends
     * at once: scans look up every entry), at most half full past it (memory) */
    uint64_t slots = w->mask + 1;
    if ((slots <= SPARSE ? 8 : 2) * w->n > slots)
        return wanted_table(w, 65 - w->shift);
    w->table[at] = (uint32_t)w->n;
    return PCD_OK;
}

void pcd_wanted_free(pcd_wanted *w) {
    free(w->keys);
    free(w->table);
    memset(w, 0, sizeof *w);
}

/* ------------------------------------------------------------------ a rebuild's placement */

static unsigned char *slot_at(const void *base, uint64_t slot) {
    return (unsigned char *)base + PCD_HEADER_SIZE + slot * PCD_SLOT_SIZE;
}

/* A slot of old copied to a slot of new (no reader maps new yet: plain stores), seq set. */
static void copy_slot(unsigned char *to, const unsigned char *from, uint64_t seq) {
    memcpy(to, from, PCD_SLOT_SIZE);
    memcpy(to + S_SEQ, &seq, 8);
}

int pcd_place(void *new_base, uint64_t capacity, uint64_t max_probe, const void *old_base,
              uint64_t old_capacity, const int64_t *slots, uint64_t n, int64_t *placed) {
    unsigned bits = 0;
    if (capacity < 2 || (capacity & (capacity - 1)) != 0)
        return PCD_ECAPACITY;
    while ((UINT64_C(1) << bits) < capacity)
        bits++;
    if (max_probe > capacity)
        max_probe = capacity;
    for (uint64_t i = 0; i < n; i++)
        if (slots[i] < 0 || (uint64_t)slots[i] >= old_capacity)
            return PCD_ERANGE;
    if (n == 0)
        return 1;
    if (n >= UINT32_MAX || capacity >= UINT32_MAX)
        return PCD_ENOMEM;
    /* the objects in order of home slot, ties in the order given: a counting sort (placed[]
     * holds each one's home meanwhile) */
    uint32_t *start = calloc(capacity + 1, sizeof *start);
    uint32_t *order = malloc(n * sizeof *order);
    if (start == NULL || order == NULL) {
        free(start);
        free(order);
        return PCD_ENOMEM;
    }
    for (uint64_t i = 0; i < n; i++) {
        placed[i] = (int64_t)pcd_home_slot(slot_at(old_base, (uint64_t)slots[i]) + S_ID, bits);
        start[placed[i] + 1]++;
    }
    for (uint64_t h = 0; h < capacity; h++)
        start[h + 1] += start[h];
    for (uint64_t i = 0; i < n; i++)
        order[start[placed[i]]++] = (uint32_t)i;
    free(start);
    /* linear probing in that order: each one at its home or just past the one before, a
     * running maximum; checked against the probe limit before anything is written */
    int64_t last = -1;
    for (uint64_t k = 0; k < n; k++) {
        uint32_t i = order[k];
        int64_t home = placed[i], at = home > last + 1 ? home : last + 1;
        if ((uint64_t)(at - home) >= max_probe) {
            free(order);
            return 0;
        }
        placed[i] = last = at;
    }
    uint64_t wrapped = 0; /* those past the last slot: order[0..wrapped) from now on */
    for (uint64_t k = 0; k < n; k++) {
        uint32_t i = order[k];
        const unsigned char *from = slot_at(old_base, (uint64_t)slots[i]);
        if ((uint64_t)placed[i] < capacity)
            copy_slot(slot_at(new_base, (uint64_t)placed[i]), from, 0);
        else
            order[wrapped++] = i;
    }
    /* the runs that wrap: each inserted from its home, as pcd_insert and then
     * pcd_set_state would write it */
    for (uint64_t k = 0; k < wrapped; k++) {
        uint32_t i = order[k];
        const unsigned char *from = slot_at(old_base, (uint64_t)slots[i]);
        uint64_t at = pcd_home_slot(from + S_ID, bits), probe = 0;
        while (probe < max_probe && slot_at(new_base, at)[S_STATE] != PCD_FREE) {
            at = (at + 1) & (capacity - 1);
            probe++;
        }
        if (probe == max_probe) {
            memset(slot_at(new_base, 0), 0, capacity * PCD_SLOT_SIZE);
            free(order);
            return 0;
        }
        int dying = from[S_STATE] == PCD_DYING;
        unsigned char *to = slot_at(new_base, at);
        copy_slot(to, from, dying ? 4 : 2);
        to[S_STATE] = dying ? PCD_DYING : PCD_SEALED;
        placed[i] = (int64_t)at;
    }
    free(order);
    return 1;
}

/* ------------------------------------------------------------------ a rebuild's moves */

int pcd_scatter(void *dst, uint64_t dst_n, const void *src, const int64_t *index, uint64_t n,
                size_t itemsize) {
    for (uint64_t i = 0; i < n; i++)
        if (index[i] >= 0 && (uint64_t)index[i] >= dst_n)
            return PCD_ERANGE;
    unsigned char *to = dst;
    const unsigned char *from = src;
    switch (itemsize) { /* (a constant size: each copy is one load and one store) */
    case 1:
        for (uint64_t i = 0; i < n; i++)
            if (index[i] >= 0)
                to[index[i]] = from[i];
        break;
    case 4:
        for (uint64_t i = 0; i < n; i++)
            if (index[i] >= 0)
                memcpy(to + 4 * (uint64_t)index[i], from + 4 * i, 4);
        break;
    case 8:
        for (uint64_t i = 0; i < n; i++)
            if (index[i] >= 0)
                memcpy(to + 8 * (uint64_t)index[i], from + 8 * i, 8);
        break;
    default:
        for (uint64_t i = 0; i < n; i++)
            if (index[i] >= 0)
                memcpy(to + itemsize * (uint64_t)index[i], from + itemsize * i, itemsize);
    }
    return PCD_OK;
}

int pcd_relink(int64_t head, const int32_t *old_next, uint64_t old_n, const int64_t *new_of_old,
               int32_t *prev, int32_t *next, uint64_t new_n, pcd_ring *out, int64_t *left,
               uint64_t *n_left) {
    out->head = out->tail = -1;
    out->linked = 0;
    *n_left = 0;
    uint64_t members = 0;
    for (int64_t old = head; old != -1; old = old_next[old]) {
        if (old < 0 || (uint64_t)old >= old_n || ++members > old_n)
            return PCD_ERANGE;
        int64_t at = new_of_old[old];
        if (at < 0) {
            left[(*n_left)++] = old;
            continue;
        }
        if ((uint64_t)at >= new_n)
            return PCD_ERANGE;
        prev[at] = (int32_t)out->tail;
        next[at] = -1;
        if (out->tail == -1)
            out->head = at;
        else
            next[out->tail] = (int32_t)at;
        out->tail = at;
        out->linked++;
    }
    return PCD_OK;
}

/* ------------------------------------------------------------------ the generation index */

int64_t pcd_compact(uint64_t *gens, int64_t *slots, uint64_t n, const int64_t *new_of_old,
                    uint64_t n_new) {
    if (new_of_old != NULL) {
        for (uint64_t i = 0; i < n; i++)
            if (slots[i] >= 0 && (uint64_t)slots[i] >= n_new)
                return PCD_ERANGE;
        for (uint64_t i = 0; i < n; i++)
            if (slots[i] >= 0)
                slots[i] = new_of_old[slots[i]];
    }
    uint64_t kept = 0;
    for (uint64_t i = 0; i < n; i++)
        if (slots[i] >= 0) {
            gens[kept] = gens[i];
            slots[kept++] = slots[i];
        }
    return (int64_t)kept;
}
