/* The object directory's read path in C11: lookup, pin, re-check, unpin (and the writer's
 * ordered slot writes). Plain C with no dependency beyond libc: the CPython extension
 * (module.c) wraps it, and a C program compiles against it unchanged.
 *
 * The layout and the protocol are those of docs/protocol.md ("The object directory") and
 * plasma/directory.py. Every load of a shared word is a C11 acquire load and every store a
 * release store (<stdatomic.h>, nothing else): the memory-ordering argument is the one of
 * docs/protocol.md, written for acquire/release, so it holds on weakly ordered CPUs (arm64)
 * as well as on x86-64.
 *
 * Nothing here allocates but pcd_pins_open (its books), nothing blocks, nothing makes a
 * system call. Errors are return values, never aborts. */
#ifndef PLASMA_DIRECTORY_H
#define PLASMA_DIRECTORY_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PCD_ID_SIZE 20
#define PCD_VERSION 2
#define PCD_HEADER_SIZE 64
#define PCD_SLOT_SIZE 64
#define PCD_PIN_HEADER 64

/* a slot's state */
enum { PCD_FREE = 0, PCD_SEALED = 1, PCD_DYING = 2, PCD_TOMBSTONE = 3 };
/* a slot's flags: a read-only copy of an object on another node (published under its
 * replica id, plasma.ids.replica_id) */
#define PCD_REPLICA 1

/* error codes (negative returns) */
enum {
    PCD_OK = 0,
    PCD_EMAGIC = -1,    /* not a directory of this version (magic, version, slot size) */
    PCD_ECAPACITY = -2, /* capacity not a power of two >= 2 */
    PCD_ESHORT = -3,    /* the buffer is shorter than the header says */
    PCD_ENOMEM = -4,    /* no memory for the pin table's free list */
    PCD_ERANGE = -5,    /* an index or a slot outside the table */
    PCD_EUNORDERED = -6, /* on a CPU weaker than x86-64's, a directory whose writer does not
                          * say its stores are ordered (the header's ordered word) */
};

/* A message for an error code (static text). */
const char *pcd_strerror(int code);

/* A directory mapped read-only, with its access bytes (one per slot, readers set them to
 * 1; NULL for a client that may not write them). */
typedef struct pcd_reader {
    const unsigned char *base;
    uint64_t capacity;
    uint64_t max_probe; /* clamped to capacity */
    unsigned bits;      /* log2(capacity) */
    unsigned char *access;
} pcd_reader;

/* A consistent read of a sealed object's slot. */
typedef struct pcd_found {
    uint64_t slot;
    uint64_t seq;
    uint64_t generation;
    uint64_t offset;
    uint64_t data_size;
    uint32_t segment;
    uint32_t metadata_size;
    uint16_t node;
} pcd_found;

/* Check the header of the directory at base (size bytes) and fill reader. access may be
 * NULL; access bytes shorter than the capacity are ignored (set to NULL). On any CPU but
 * x86-64 (whose stores are seen in program order whatever the writer's code), a directory
 * whose header does not say ordered is refused (PCD_EUNORDERED): its slots cannot be read
 * consistently there. */
int pcd_reader_open(pcd_reader *reader, const void *base, size_t size, void *access,
                    size_t access_size);

/* The home slot of an id in a directory of 2**bits slots. */
uint64_t pcd_home_slot(const unsigned char id[PCD_ID_SIZE], unsigned bits);

/* Look the sealed object id up (flags: 0, or PCD_REPLICA for a copy, id then a replica
 * id): 1 and *found filled, or 0 (absent, not sealed, its slot being written: ask the
 * coordinator). */
int pcd_lookup(const pcd_reader *reader, const unsigned char id[PCD_ID_SIZE], unsigned flags,
               pcd_found *found);

/* 1 when found's slot was not written since it was read and the directory is still
 * current: read after the pin is stored, this makes the pin safe. */
int pcd_unchanged(const pcd_reader *reader, const pcd_found *found);

/* 1 when found's object is now marked dying (its delete waits for pins). */
int pcd_dying(const pcd_reader *reader, const pcd_found *found);

/* The header's words: superseded (a rebuilt directory replaced this one), replicas
 * (copies may be published: look the replica id up first), token (this directory's
 * name), ordered (the writer's stores are release stores). */
int pcd_superseded(const pcd_reader *reader);
int pcd_replicas(const pcd_reader *reader);
uint64_t pcd_token(const pcd_reader *reader);
int pcd_ordered(const pcd_reader *reader);

/* A client's pin table (writable, zero-filled when opened). */
typedef struct pcd_pins {
    unsigned char *base;
    uint64_t entries;
    uint64_t hwm;   /* entries at and past it were never used */
    uint64_t count; /* pins held */
    uint32_t *free; /* entries below hwm given back, a stack */
    uint64_t nfree;
    unsigned char *used; /* 1 for each entry pinned (its own books: the table is shared) */
} pcd_pins;

int pcd_pins_open(pcd_pins *pins, void *base, size_t size);
void pcd_pins_close(pcd_pins *pins);

/* Pin generation (never 0): the entry's index, or -1 when the table is full. */
int64_t pcd_pin(pcd_pins *pins, uint64_t generation);

/* Give an entry back (PCD_ERANGE for one that is not pinned: never twice). */
int pcd_unpin(pcd_pins *pins, uint64_t index);

/* Whether segment is mapped by the caller (ctx is the caller's). */
typedef int (*pcd_mapped_fn)(void *ctx, uint32_t segment);

/* The whole read of a get: the sealed object id (its copy under replica first, when
 * replica is not NULL), in a segment mapped says is mapped (NULL: any), pinned and
 * re-checked. 1 with *found and *pin filled; 0 when the directory cannot serve it (absent,
 * not sealed, changing, not mapped, the pin table full, the directory superseded: ask the
 * coordinator; nothing is left pinned). */
int pcd_get(const pcd_reader *reader, pcd_pins *pins, const unsigned char id[PCD_ID_SIZE],
            const unsigned char *replica, pcd_mapped_fn mapped, void *ctx, pcd_found *found,
            int64_t *pin);

/* The writer's side (the coordinator; tests). A slot's fields. */
typedef struct pcd_slot {
    uint64_t generation;
    unsigned char id[PCD_ID_SIZE];
    uint32_t segment;
    uint64_t offset;
    uint64_t data_size;
    uint32_t metadata_size;
    uint16_t node;
    uint8_t state;
    uint8_t flags;
} pcd_slot;

/* Seqlock writes of slot index slot of the directory at base (capacity slots; the caller
 * is its only writer): the whole slot, its state, a tombstone. PCD_ERANGE outside. */
int pcd_write_slot(void *base, uint64_t capacity, uint64_t slot, const pcd_slot *fields);
/* Publish fields (an id not in the directory) in the first free or tombstone slot of its
 * probe run: its home slot and at most max_probe - 1 after it (a seqlock write of the whole
 * slot, as pcd_write_slot). 1 with *slot and *previous (the state it had: PCD_FREE or
 * PCD_TOMBSTONE) filled; 0 when the run has no such slot; PCD_ECAPACITY for a capacity not
 * a power of two >= 2. */
int pcd_insert(void *base, uint64_t capacity, uint64_t max_probe, const pcd_slot *fields,
               uint64_t *slot, uint8_t *previous);
int pcd_set_state(void *base, uint64_t capacity, uint64_t slot, uint8_t state);
int pcd_clear_slot(void *base, uint64_t capacity, uint64_t slot);
/* Header words: superseded = 1; ordered = 1 (written once, before the directory is
 * handed out, by a writer that writes every slot with the functions above). */
void pcd_set_superseded(void *base);
void pcd_set_ordered(void *base);

#ifdef __cplusplus
}
#endif

#endif
