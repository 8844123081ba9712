/* The object directory's read path in C11 (see directory.h and docs/protocol.md).
 *
 * Shared words are read and written only through <stdatomic.h>: acquire loads and release
 * stores of naturally aligned 1, 2, 4 and 8-byte words (the layout aligns every field). No
 * compiler builtins, no fences beyond what acquire and release imply. */
#include "directory.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the directory's integers are little-endian: this reader reads them natively"
#endif

_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2, "64-bit atomics must be lock-free (shared memory)");
_Static_assert(sizeof(atomic_uint_least64_t) == 8, "an atomic u64 is a plain u64 in memory");

/* header offsets */
#define H_VERSION 8
#define H_SLOT_SIZE 12
#define H_CAPACITY 16
#define H_SUPERSEDED 24
#define H_PROBE 32
#define H_REPLICAS 40
#define H_TOKEN 48
#define H_ORDERED 56
/* slot offsets */
#define S_SEQ 0
#define S_GEN 8
#define S_ID 16 /* u64 at 16, u64 at 24, u32 at 32 */
#define S_SEGMENT 36
#define S_OFFSET 40
#define S_DATA 48
#define S_META 56
#define S_NODE 60
#define S_STATE 62
#define S_FLAGS 63

static const char MAGIC[8] = {'P', 'L', 'S', 'M', 'D', 'I', 'R', '1'};
static const uint64_t GOLDEN = 0x9E3779B97F4A7C15ull;

#define ACQ memory_order_acquire
#define REL memory_order_release

static inline uint64_t load64(const unsigned char *p) {
    return atomic_load_explicit((const atomic_uint_least64_t *)(const void *)p, ACQ);
}
static inline uint32_t load32(const unsigned char *p) {
    return atomic_load_explicit((const atomic_uint_least32_t *)(const void *)p, ACQ);
}
static inline uint16_t load16(const unsigned char *p) {
    return atomic_load_explicit((const atomic_uint_least16_t *)(const void *)p, ACQ);
}
static inline uint8_t load8(const unsigned char *p) {
    return atomic_load_explicit((const atomic_uchar *)(const void *)p, ACQ);
}
static inline void store64(unsigned char *p, uint64_t v) {
    atomic_store_explicit((atomic_uint_least64_t *)(void *)p, v, REL);
}
static inline void store32(unsigned char *p, uint32_t v) {
    atomic_store_explicit((atomic_uint_least32_t *)(void *)p, v, REL);
}
static inline void store16(unsigned char *p, uint16_t v) {
    atomic_store_explicit((atomic_uint_least16_t *)(void *)p, v, REL);
}
static inline void store8(unsigned char *p, uint8_t v) {
    atomic_store_explicit((atomic_uchar *)(void *)p, v, REL);
}

const char *pcd_strerror(int code) {
    switch (code) {
    case PCD_OK:
        return "no error";
    case PCD_EMAGIC:
        return "not a version 2 object directory (magic, version or slot size)";
    case PCD_ECAPACITY:
        return "the directory's capacity is not a power of two >= 2";
    case PCD_ESHORT:
        return "the file is shorter than its header says";
    case PCD_ENOMEM:
        return "no memory for the pin table's free list";
    case PCD_ERANGE:
        return "an index outside the table, or an entry not pinned";
    case PCD_EUNORDERED:
        return "the directory's writer does not order its stores, and this CPU does not "
               "order them for it";
    default:
        return "unknown error";
    }
}

int pcd_reader_open(pcd_reader *reader, const void *base, size_t size, void *access,
                    size_t access_size) {
    const unsigned char *b = base;
    uint32_t version, slot_size;
    uint64_t capacity, probe;
    if (size < PCD_HEADER_SIZE)
        return PCD_ESHORT;
    memcpy(&version, b + H_VERSION, 4);
    memcpy(&slot_size, b + H_SLOT_SIZE, 4);
    if (memcmp(b, MAGIC, 8) != 0 || version != PCD_VERSION || slot_size != PCD_SLOT_SIZE)
        return PCD_EMAGIC;
    memcpy(&capacity, b + H_CAPACITY, 8);
    memcpy(&probe, b + H_PROBE, 8);
    if (capacity < 2 || (capacity & (capacity - 1)) != 0)
        return PCD_ECAPACITY;
    if (capacity > (size - PCD_HEADER_SIZE) / PCD_SLOT_SIZE)
        return PCD_ESHORT;
#if !defined(__x86_64__)
    if (load64(b + H_ORDERED) != 1)
        return PCD_EUNORDERED;
#endif
    reader->base = b;
    reader->capacity = capacity;
    reader->max_probe = probe < capacity ? probe : capacity;
    reader->bits = 0;
    while ((UINT64_C(1) << reader->bits) < capacity)
        reader->bits++;
    reader->access = access != NULL && access_size >= capacity ? access : NULL;
    return PCD_OK;
}

uint64_t pcd_home_slot(const unsigned char id[PCD_ID_SIZE], unsigned bits) {
    uint64_t a, b;
    uint32_t c;
    memcpy(&a, id, 8);
    memcpy(&b, id + 8, 8);
    memcpy(&c, id + 16, 4);
    return ((a ^ b ^ c) * GOLDEN) >> (64 - bits);
}

int pcd_lookup(const pcd_reader *reader, const unsigned char id[PCD_ID_SIZE], unsigned flags,
               pcd_found *found) {
    uint64_t a, b, slot = pcd_home_slot(id, reader->bits);
    uint32_t c;
    const uint64_t mask = reader->capacity - 1;
    memcpy(&a, id, 8);
    memcpy(&b, id + 8, 8);
    memcpy(&c, id + 16, 4);
    for (uint64_t i = 0; i < reader->max_probe; i++, slot = (slot + 1) & mask) {
        const unsigned char *s = reader->base + PCD_HEADER_SIZE + slot * PCD_SLOT_SIZE;
        /* seq, the fields, seq again: all acquire loads, so none of them is satisfied
         * before the one before it (the writer's stores are releases, in the opposite
         * order: seq odd, the fields, seq even) */
        uint64_t seq = load64(s + S_SEQ);
        if (seq & 1)
            return 0;
        uint8_t state = load8(s + S_STATE);
        uint8_t kind = load8(s + S_FLAGS);
        uint64_t ka = load64(s + S_ID), kb = load64(s + S_ID + 8);
        uint32_t kc = load32(s + S_ID + 16);
        uint64_t gen = load64(s + S_GEN);
        uint32_t segment = load32(s + S_SEGMENT);
        uint64_t offset = load64(s + S_OFFSET);
        uint64_t data_size = load64(s + S_DATA);
        uint32_t metadata_size = load32(s + S_META);
        uint16_t node = load16(s + S_NODE);
        if (load64(s + S_SEQ) != seq)
            return 0;
        if (state == PCD_FREE)
            return 0;
        /* (a dying slot of an earlier object, or a slot of the other kind: go on) */
        if (ka == a && kb == b && kc == c && state == PCD_SEALED && kind == flags && gen != 0) {
            unsigned char *access = reader->access;
            if (access != NULL && load8(access + slot) == 0) /* read first: no line bouncing */
                store8(access + slot, 1);
            found->slot = slot;
            found->seq = seq;
            found->generation = gen;
            found->segment = segment;
            found->offset = offset;
            found->data_size = data_size;
            found->metadata_size = metadata_size;
            found->node = node;
            return 1;
        }
    }
    return 0;
}

int pcd_superseded(const pcd_reader *reader) { return load64(reader->base + H_SUPERSEDED) != 0; }

int pcd_replicas(const pcd_reader *reader) { return load8(reader->base + H_REPLICAS) != 0; }

uint64_t pcd_token(const pcd_reader *reader) { return load64(reader->base + H_TOKEN); }

int pcd_ordered(const pcd_reader *reader) { return load64(reader->base + H_ORDERED) == 1; }

int pcd_unchanged(const pcd_reader *reader, const pcd_found *found) {
    if (found->slot >= reader->capacity)
        return 0;
    const unsigned char *s = reader->base + PCD_HEADER_SIZE + found->slot * PCD_SLOT_SIZE;
    return load64(s + S_SEQ) == found->seq && !pcd_superseded(reader);
}

int pcd_dying(const pcd_reader *reader, const pcd_found *found) {
    if (found->slot >= reader->capacity)
        return 0; /* a read of an older directory: its slot may lie anywhere here */
    const unsigned char *s = reader->base + PCD_HEADER_SIZE + found->slot * PCD_SLOT_SIZE;
    return load8(s + S_STATE) == PCD_DYING && load64(s + S_GEN) == found->generation;
}

int pcd_pins_open(pcd_pins *pins, void *base, size_t size) {
    uint64_t entries = size < PCD_PIN_HEADER ? 0 : (size - PCD_PIN_HEADER) / 8;
    if (size < PCD_PIN_HEADER)
        return PCD_ESHORT;
    if (entries > UINT32_MAX)
        entries = UINT32_MAX;
    pins->free = malloc((entries ? entries : 1) * sizeof(uint32_t));
    pins->used = calloc(entries ? entries : 1, 1);
    if (pins->free == NULL || pins->used == NULL) {
        free(pins->free);
        free(pins->used);
        pins->free = NULL;
        pins->used = NULL;
        return PCD_ENOMEM;
    }
    pins->base = base;
    pins->entries = entries;
    pins->hwm = 0;
    pins->count = 0;
    pins->nfree = 0;
    return PCD_OK;
}

void pcd_pins_close(pcd_pins *pins) {
    free(pins->free);
    free(pins->used);
    pins->free = NULL;
    pins->used = NULL;
    pins->entries = pins->nfree = pins->hwm = pins->count = 0;
}

int64_t pcd_pin(pcd_pins *pins, uint64_t generation) {
    uint64_t index;
    if (generation == 0)
        return -1; /* (0 is a free entry) */
    if (pins->nfree)
        index = pins->free[--pins->nfree];
    else if (pins->hwm < pins->entries) {
        index = pins->hwm++;
        /* the mark first: a scan that sees the pin sees a mark covering it (the pin's
         * release store below keeps this store before it) */
        store64(pins->base, pins->hwm);
    } else
        return -1;
    store64(pins->base + PCD_PIN_HEADER + 8 * index, generation);
    pins->used[index] = 1;
    pins->count++;
    return (int64_t)index;
}

int pcd_unpin(pcd_pins *pins, uint64_t index) {
    unsigned char *entry = pins->base + PCD_PIN_HEADER + 8 * index;
    if (index >= pins->hwm || !pins->used[index])
        return PCD_ERANGE; /* (given back twice, it would be handed out twice) */
    /* a release store: every read of the object's bytes is done before the entry reads
     * free (a weakly ordered CPU could otherwise let a load of the object pass it) */
    store64(entry, 0);
    pins->used[index] = 0;
    pins->free[pins->nfree++] = (uint32_t)index;
    pins->count--;
    return PCD_OK;
}

int pcd_get(const pcd_reader *reader, pcd_pins *pins, const unsigned char id[PCD_ID_SIZE],
            const unsigned char *replica, pcd_mapped_fn mapped, void *ctx, pcd_found *found,
            int64_t *pin) {
    if (!(replica != NULL && pcd_lookup(reader, replica, PCD_REPLICA, found)) &&
        !pcd_lookup(reader, id, 0, found))
        return 0;
    if (mapped != NULL && !mapped(ctx, found->segment))
        return 0;
    int64_t index = pcd_pin(pins, found->generation);
    if (index < 0)
        return 0; /* the pin table is full */
    /* the pin was stored before this re-read in program order; the store may still be on
     * its way when the re-read is made (acquire/release do not order a store before a
     * later load), which the coordinator's grace period covers (docs/protocol.md) */
    if (!pcd_unchanged(reader, found)) {
        pcd_unpin(pins, (uint64_t)index);
        return 0;
    }
    *pin = index;
    return 1;
}

/* ------------------------------------------------------------------ the writer */

static unsigned char *slot_at(void *base, uint64_t slot) {
    return (unsigned char *)base + PCD_HEADER_SIZE + slot * PCD_SLOT_SIZE;
}

/* seq odd, then every field (release stores: none is seen before seq odd), then seq even
 * (a release store: seen only after every field) */
static uint64_t begin_write(unsigned char *s) {
    uint64_t seq = atomic_load_explicit((atomic_uint_least64_t *)(void *)s, memory_order_relaxed);
    store64(s + S_SEQ, seq + 1);
    return seq;
}

/* the seqlock write of a whole slot s (see begin_write) */
static void write_fields(unsigned char *s, const pcd_slot *f) {
    uint64_t a, b;
    uint32_t c;
    uint64_t seq = begin_write(s);
    memcpy(&a, f->id, 8);
    memcpy(&b, f->id + 8, 8);
    memcpy(&c, f->id + 16, 4);
    store64(s + S_GEN, f->generation);
    store64(s + S_ID, a);
    store64(s + S_ID + 8, b);
    store32(s + S_ID + 16, c);
    store32(s + S_SEGMENT, f->segment);
    store64(s + S_OFFSET, f->offset);
    store64(s + S_DATA, f->data_size);
    store32(s + S_META, f->metadata_size);
    store16(s + S_NODE, f->node);
    store8(s + S_STATE, f->state);
    store8(s + S_FLAGS, f->flags);
    store64(s + S_SEQ, seq + 2);
}

int pcd_write_slot(void *base, uint64_t capacity, uint64_t slot, const pcd_slot *f) {
    if (slot >= capacity)
        return PCD_ERANGE;
    write_fields(slot_at(base, slot), f);
    return PCD_OK;
}

/* The probe, then the same seqlock write as pcd_write_slot; the ordering argument is
 * docs/protocol.md's ("Memory ordering"): seq odd, every field, seq even, each a release
 * store, so a reader that saw any field of this write sees seq changed on its re-read. The
 * probe's loads of the state bytes order nothing for readers: they are this writer's own
 * last stores (the coordinator is the only writer of slots), read back in program order. A
 * reader probing past a free slot being filled here either sees it free (the id it looks
 * for is not there yet: it asks the coordinator) or seq odd or changed (it gives up and
 * asks), as with any slot write. */
int pcd_insert(void *base, uint64_t capacity, uint64_t max_probe, const pcd_slot *f,
               uint64_t *slot, uint8_t *previous) {
    unsigned bits = 0;
    if (capacity < 2 || (capacity & (capacity - 1)) != 0)
        return PCD_ECAPACITY;
    while ((UINT64_C(1) << bits) < capacity)
        bits++;
    uint64_t at = pcd_home_slot(f->id, bits);
    if (max_probe > capacity)
        max_probe = capacity;
    for (uint64_t i = 0; i < max_probe; i++, at = (at + 1) & (capacity - 1)) {
        unsigned char *s = slot_at(base, at);
        /* relaxed: the writer's own last store to it (see above) */
        uint8_t state =
            atomic_load_explicit((atomic_uchar *)(void *)(s + S_STATE), memory_order_relaxed);
        if (state == PCD_FREE || state == PCD_TOMBSTONE) {
            write_fields(s, f);
            *slot = at;
            *previous = state;
            return 1;
        }
    }
    return 0;
}

int pcd_set_state(void *base, uint64_t capacity, uint64_t slot, uint8_t state) {
    if (slot >= capacity)
        return PCD_ERANGE;
    unsigned char *s = slot_at(base, slot);
    uint64_t seq = begin_write(s);
    store8(s + S_STATE, state);
    store64(s + S_SEQ, seq + 2);
    return PCD_OK;
}

int pcd_clear_slot(void *base, uint64_t capacity, uint64_t slot) {
    pcd_slot empty;
    memset(&empty, 0, sizeof empty);
    empty.state = PCD_TOMBSTONE;
    return pcd_write_slot(base, capacity, slot, &empty);
}

void pcd_set_superseded(void *base) { store64((unsigned char *)base + H_SUPERSEDED, 1); }

void pcd_set_ordered(void *base) { store64((unsigned char *)base + H_ORDERED, 1); }
