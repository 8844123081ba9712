/* Races on a shared directory, at the level of the C read path (plasma/_native/directory.c).
 *
 * One writer process plays the coordinator: it publishes objects (their bytes in a shared
 * arena, derived from the generation), marks them dying, waits a grace period, scans every
 * reader's pin table and frees the unpinned ones (a tombstone, then poison in their bytes,
 * then the bytes reused by the next object), at full speed over a few ids that collide in
 * a small directory. Reader processes get objects with pcd_get (lookup, pin, re-check),
 * check that the slot read is one write's (every field derives from the generation), check
 * every byte of the object twice around a hold, and unpin. With the protocol intact no
 * check may fail.
 *
 *   races MODE SECONDS READERS
 *
 * MODE: "safe" (the library's get) or "hidepins" (the negative control: every pin erased as
 * soon as the get returns, so the writer frees under the readers, which must see it).
 * Prints one line of counts; exits 0 when the run shows what MODE expects (no failed check
 * and some checks for "safe"; some failed check for "hidepins"), 1 otherwise, 2 on a setup
 * error. Bounded in
 * time and in operations; nothing sleeps to wait for another process. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../../plasma/_native/directory.h"

#define CAPACITY 16
#define IDS 12
#define BLOCKS 64
#define WORDS 32 /* an object's u64 words */
#define PINS 16
#define MAX_READERS 8
#define MAX_OPS 200000000L
#define GRACE 0.001 /* seconds between a mark and the scan (the coordinator waits 2 ms) */

typedef struct {
    atomic_int stop;
    atomic_long checks, failed, torn, gets, hidden;
    atomic_long published, freed, deferred;
} control;

static unsigned char *dir_base;
static unsigned char *pin_base[MAX_READERS];
static _Atomic uint64_t *arena; /* BLOCKS objects of WORDS words */
static control *ctl;
static int readers;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint64_t rng(uint64_t *state) { /* xorshift64 */
    uint64_t x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *state = x;
}

static void make_id(int i, unsigned char id[PCD_ID_SIZE]) {
    memset(id, 0, PCD_ID_SIZE);
    memcpy(id, &i, sizeof i);
    id[19] = 0xA5;
}

/* what every word of the object of generation gen holds */
static uint64_t word(uint64_t gen, int k) { return gen * 0x9E3779B97F4A7C15ull + (uint64_t)k; }

/* the fields a slot of generation gen must hold (gen's low 16 bits name its block) */
static int slot_consistent(const pcd_found *f) {
    uint64_t block = f->generation & 0xffff;
    return block < BLOCKS && f->offset == block * WORDS * 8 && f->data_size == WORDS * 8 &&
           f->segment == 1 && f->metadata_size == (uint32_t)(f->generation >> 16) % 997 &&
           f->node == (uint16_t)((f->generation >> 16) % 7);
}

static int object_intact(const pcd_found *f) {
    _Atomic uint64_t *obj = arena + f->offset / 8;
    for (int k = 0; k < WORDS; k++)
        if (atomic_load_explicit(&obj[k], memory_order_relaxed) != word(f->generation, k))
            return 0;
    return 1;
}

/* ------------------------------------------------------------------ the writer */

typedef struct {
    int block;    /* -1: not published */
    uint64_t gen; /* its generation */
    uint64_t slot;
    int dying;
    double next; /* sealed: when it is marked dying; dying: when its grace period ends */
} object;

static int pinned_anywhere(uint64_t gen) {
    for (int r = 0; r < readers; r++) {
        uint64_t hwm = atomic_load_explicit((_Atomic uint64_t *)(void *)pin_base[r],
                                            memory_order_acquire);
        if (hwm > PINS)
            hwm = PINS;
        for (uint64_t e = 0; e < hwm; e++)
            if (atomic_load_explicit(
                    (_Atomic uint64_t *)(void *)(pin_base[r] + PCD_PIN_HEADER + 8 * e),
                    memory_order_acquire) == gen)
                return 1;
    }
    return 0;
}

/* the coordinator's insert (probe and write in one call), any slot of the directory in
 * reach */
static int insert(const pcd_slot *s, uint64_t *slot) {
    uint8_t previous;
    return pcd_insert(dir_base, CAPACITY, CAPACITY, s, slot, &previous) == 1;
}

/* the writer's books: blocks not in use, and objects retired (their slot cleared or
 * rewritten) whose block waits for a grace period and a scan */
static int free_blocks[BLOCKS], nfree;
static struct {
    uint64_t gen;
    int block;
    double due;
} retired[BLOCKS];
static int nretired;

static void retire(uint64_t gen, int block) {
    retired[nretired].gen = gen;
    retired[nretired].block = block;
    retired[nretired].due = now() + GRACE;
    nretired++;
}

/* free the retired blocks whose grace period is over and that no reader pins */
static void reclaim(void) {
    double t = now();
    for (int j = 0; j < nretired;) {
        if (t < retired[j].due || pinned_anywhere(retired[j].gen)) {
            if (t >= retired[j].due)
                atomic_fetch_add(&ctl->deferred, 1);
            j++;
            continue;
        }
        int block = retired[j].block;
        for (int k = 0; k < WORDS; k++) /* poison: a reader of freed memory sees it */
            atomic_store_explicit(&arena[block * WORDS + k], ~0ull, memory_order_relaxed);
        free_blocks[nfree++] = block;
        retired[j] = retired[--nretired];
        atomic_fetch_add(&ctl->freed, 1);
    }
}

/* a new object of id in a free block: its slot's fields */
static int fill(const unsigned char id[PCD_ID_SIZE], uint64_t *counter, pcd_slot *s) {
    if (nfree == 0)
        return -1;
    int b = free_blocks[--nfree];
    uint64_t gen = (++*counter << 16) | (uint64_t)b;
    for (int k = 0; k < WORDS; k++)
        atomic_store_explicit(&arena[b * WORDS + k], word(gen, k), memory_order_relaxed);
    memset(s, 0, sizeof *s);
    s->generation = gen;
    s->segment = 1;
    s->offset = (uint64_t)b * WORDS * 8;
    s->data_size = WORDS * 8;
    s->metadata_size = (uint32_t)(gen >> 16) % 997;
    s->node = (uint16_t)((gen >> 16) % 7);
    s->state = PCD_SEALED;
    memcpy(s->id, id, PCD_ID_SIZE);
    return b;
}

/* Each step picks an id: an absent one is published; a sealed one, once its time is up, is
 * deleted (marked dying; after the grace period its slot is cleared if no reader pins it)
 * or replaced in place (its slot rewritten with a new object: every field changes under
 * readers, which only the seqlock tells them) and the old one retired. */
static void writer(double seconds) {
    object objs[IDS];
    uint64_t state = 0x1234567, counter = 1;
    nfree = BLOCKS;
    for (int b = 0; b < BLOCKS; b++)
        free_blocks[b] = b;
    for (int i = 0; i < IDS; i++)
        objs[i].block = -1;
    double end = now() + seconds;
    for (long op = 0; op < MAX_OPS && now() < end; op++) {
        reclaim();
        int i = (int)(rng(&state) % IDS);
        object *o = &objs[i];
        unsigned char id[PCD_ID_SIZE];
        pcd_slot s;
        make_id(i, id);
        double t = now();
        if (o->block < 0) { /* publish */
            int b = fill(id, &counter, &s);
            if (b < 0)
                continue;
            if (!insert(&s, &o->slot)) {
                free_blocks[nfree++] = b;
                continue;
            }
            o->block = b;
            o->gen = s.generation;
            o->dying = 0;
            o->next = t + (double)(rng(&state) % 1000) * 1e-6; /* sealed up to 1 ms */
            atomic_fetch_add(&ctl->published, 1);
        } else if (!o->dying && t >= o->next && rng(&state) % 2) { /* replace in place */
            int b = fill(id, &counter, &s);
            if (b < 0)
                continue;
            pcd_write_slot(dir_base, CAPACITY, o->slot, &s);
            retire(o->gen, o->block);
            o->block = b;
            o->gen = s.generation;
            o->next = t + (double)(rng(&state) % 1000) * 1e-6;
            atomic_fetch_add(&ctl->published, 1);
        } else if (!o->dying && t >= o->next) { /* delete: mark it */
            pcd_set_state(dir_base, CAPACITY, o->slot, PCD_DYING);
            o->dying = 1;
            o->next = t + GRACE;
        } else if (o->dying && t >= o->next && !pinned_anywhere(o->gen)) { /* free it */
            pcd_clear_slot(dir_base, CAPACITY, o->slot);
            retire(o->gen, o->block); /* (no pin: its grace period is over already) */
            o->block = -1;
        }
    }
    atomic_store(&ctl->stop, 1);
}

/* ------------------------------------------------------------------ the readers */

static int reader(int index, const char *mode) {
    pcd_reader r;
    pcd_pins pins;
    uint64_t state = 0x9876543ull + (uint64_t)index * 7919;
    if (pcd_reader_open(&r, dir_base, PCD_HEADER_SIZE + CAPACITY * PCD_SLOT_SIZE, NULL, 0) ||
        pcd_pins_open(&pins, pin_base[index], PCD_PIN_HEADER + 8 * PINS))
        return 2;
    int hide = strcmp(mode, "hidepins") == 0;
    for (long n = 0; n < MAX_OPS && !atomic_load(&ctl->stop); n++) {
        unsigned char id[PCD_ID_SIZE];
        pcd_found f;
        int64_t pin;
        make_id((int)(rng(&state) % IDS), id);
        if (!pcd_get(&r, &pins, id, NULL, NULL, NULL, &f, &pin))
            continue;
        atomic_fetch_add(&ctl->gets, 1);
        if (hide) {
            atomic_store((_Atomic uint64_t *)(void *)(pin_base[index] + PCD_PIN_HEADER + 8 * pin), 0);
            atomic_fetch_add(&ctl->hidden, 1);
        }
        if (!slot_consistent(&f)) {
            atomic_fetch_add(&ctl->torn, 1);
        } else {
            int ok = object_intact(&f);
            for (volatile int spin = 0; spin < 2000; spin++) /* hold it a while */
                ;
            ok = ok && object_intact(&f);
            atomic_fetch_add(&ctl->checks, 1);
            if (!ok)
                atomic_fetch_add(&ctl->failed, 1);
        }
        if (pcd_unpin(&pins, (uint64_t)pin) != PCD_OK)
            return 2;
    }
    pcd_pins_close(&pins);
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: races safe|hidepins SECONDS READERS\n");
        return 2;
    }
    const char *mode = argv[1];
    double seconds = atof(argv[2]);
    readers = atoi(argv[3]);
    if (readers < 1 || readers > MAX_READERS || seconds <= 0 ||
        (strcmp(mode, "safe") && strcmp(mode, "hidepins"))) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    size_t dir_size = PCD_HEADER_SIZE + CAPACITY * PCD_SLOT_SIZE;
    size_t pin_size = PCD_PIN_HEADER + 8 * PINS;
    size_t total = sizeof(control) + dir_size + MAX_READERS * pin_size + BLOCKS * WORDS * 8 + 64;
    unsigned char *mem = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
        perror("mmap");
        return 2;
    }
    ctl = (control *)(void *)mem;
    dir_base = mem + 64 * ((sizeof(control) + 63) / 64);
    for (int r = 0; r < MAX_READERS; r++)
        pin_base[r] = dir_base + dir_size + r * pin_size;
    arena = (_Atomic uint64_t *)(void *)(pin_base[MAX_READERS - 1] + pin_size);
    /* the header, as plasma.directory.Directory writes it */
    uint32_t version = PCD_VERSION, slot_size = PCD_SLOT_SIZE;
    uint64_t capacity = CAPACITY, probe = CAPACITY, token = 12345;
    memcpy(dir_base, "PLSMDIR1", 8);
    memcpy(dir_base + 8, &version, 4);
    memcpy(dir_base + 12, &slot_size, 4);
    memcpy(dir_base + 16, &capacity, 8);
    memcpy(dir_base + 32, &probe, 8);
    memcpy(dir_base + 48, &token, 8);
    pcd_set_ordered(dir_base);

    pid_t pids[MAX_READERS];
    for (int r = 0; r < readers; r++) {
        pids[r] = fork();
        if (pids[r] < 0) {
            perror("fork");
            return 2;
        }
        if (pids[r] == 0)
            _exit(reader(r, mode));
    }
    writer(seconds);
    int setup_error = 0;
    for (int r = 0; r < readers; r++) {
        int status;
        if (waitpid(pids[r], &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status))
            setup_error = 1;
    }
    long checks = atomic_load(&ctl->checks), failed = atomic_load(&ctl->failed),
         torn = atomic_load(&ctl->torn);
    printf("mode %s gets %ld checks %ld failed %ld torn %ld published %ld freed %ld "
           "deferred %ld hidden %ld\n",
           mode, atomic_load(&ctl->gets), checks, failed, torn, atomic_load(&ctl->published),
           atomic_load(&ctl->freed), atomic_load(&ctl->deferred), atomic_load(&ctl->hidden));
    if (setup_error)
        return 2;
    if (strcmp(mode, "safe") == 0)
        return failed == 0 && torn == 0 && checks > 0 ? 0 : 1;
    return failed > 0 ? 0 : 1;
}
