/* What a C client maps of the store's memory (internal): segments by id, and the shared
 * tables of reads without requests (the directory, its access bytes, the pin table). */
#ifndef PLASMA_COORD_MAPS_H
#define PLASMA_COORD_MAPS_H

#include <stddef.h>
#include <stdint.h>

typedef struct segment {
    uint64_t id;
    uint8_t *base; /* NULL: a free slot of the table */
    uint64_t size;
    int writable;
    uint32_t users;  /* objects held in it, and the arena */
    int dropped;     /* the coordinator gave it back: unmapped once users reaches 0 */
} segment;

/* Segments by id: open addressing, linear probing, at most half full. */
typedef struct segments {
    segment *slots;
    size_t cap, count;
} segments;

segment *segments_find(const segments *t, uint64_t id);
/* A new entry for id (its fields to fill, base first), or NULL when out of memory. */
segment *segments_add(segments *t, uint64_t id);
/* Unmap s and take it out of the table. */
void segments_remove(segments *t, segment *s);
/* Unmap everything and free the table. */
void segments_free(segments *t);

/* Map fd (of a file that must be at least size bytes: checked with fstat first, so no
 * access within size can fault with SIGBUS) shared; close fd in every case. 0 and *out,
 * or an errno value (EPROTO: the file is shorter than size) with *what naming the call. */
int map_file(int fd, uint64_t size, int writable, int populate, uint8_t **out,
             const char **what);

#endif
