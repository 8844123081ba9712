/* What a C client maps of the store's memory (see maps.h). */
#define _GNU_SOURCE
#include "maps.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static size_t home(const segments *t, uint64_t id) {
    return (size_t)((id * UINT64_C(0x9E3779B97F4A7C15)) >> 32) & (t->cap - 1);
}

segment *segments_find(const segments *t, uint64_t id) {
    if (t->cap == 0)
        return NULL;
    for (size_t i = home(t, id);; i = (i + 1) & (t->cap - 1)) {
        segment *s = &t->slots[i];
        if (s->base == NULL)
            return NULL;
        if (s->id == id)
            return s;
    }
}

static int grow(segments *t) {
    size_t cap = t->cap ? 2 * t->cap : 64;
    segment *slots = calloc(cap, sizeof *slots);
    if (slots == NULL)
        return -1;
    segments bigger = {slots, cap, 0};
    for (size_t i = 0; i < t->cap; i++)
        if (t->slots[i].base != NULL) {
            size_t j = home(&bigger, t->slots[i].id);
            while (slots[j].base != NULL)
                j = (j + 1) & (cap - 1);
            slots[j] = t->slots[i];
            bigger.count++;
        }
    free(t->slots);
    *t = bigger;
    return 0;
}

segment *segments_add(segments *t, uint64_t id) {
    if (2 * (t->count + 1) > t->cap && grow(t) != 0)
        return NULL;
    size_t i = home(t, id);
    while (t->slots[i].base != NULL)
        i = (i + 1) & (t->cap - 1);
    segment *s = &t->slots[i];
    memset(s, 0, sizeof *s);
    s->id = id;
    t->count++;
    return s;
}

void segments_remove(segments *t, segment *s) {
    munmap(s->base, s->size);
    size_t i = (size_t)(s - t->slots);
    /* backward-shift deletion: move later entries of the run into the hole when their home
     * does not lie (cyclically) between the hole and them */
    for (size_t j = (i + 1) & (t->cap - 1); t->slots[j].base != NULL; j = (j + 1) & (t->cap - 1)) {
        size_t h = home(t, t->slots[j].id);
        int between = i <= j ? (i < h && h <= j) : (i < h || h <= j);
        if (!between) {
            t->slots[i] = t->slots[j];
            i = j;
        }
    }
    memset(&t->slots[i], 0, sizeof t->slots[i]);
    t->count--;
}

void segments_free(segments *t) {
    for (size_t i = 0; i < t->cap; i++)
        if (t->slots[i].base != NULL)
            munmap(t->slots[i].base, t->slots[i].size);
    free(t->slots);
    memset(t, 0, sizeof *t);
}

int map_file(int fd, uint64_t size, int writable, int populate, uint8_t **out,
             const char **what) {
    struct stat st;
    int err = 0;
    void *base = MAP_FAILED;
    if (fstat(fd, &st) != 0) {
        err = errno;
        *what = "fstat";
    } else if (size == 0 || size > SIZE_MAX || (uint64_t)st.st_size < size) {
        err = EPROTO; /* mapped, it would fault (SIGBUS) past the file's end */
        *what = "fstat";
    } else {
        int prot = PROT_READ | (writable ? PROT_WRITE : 0);
        base = mmap(NULL, (size_t)size, prot, MAP_SHARED | (populate ? MAP_POPULATE : 0), fd, 0);
        if (base == MAP_FAILED) {
            err = errno;
            *what = "mmap";
        }
    }
    close(fd);
    if (err == 0)
        *out = base;
    return err;
}
