/* The C client's frame reader (clients/c/wire.c) against frames msgspec wrote, then against
 * garbage: `wire_fuzz FILE ROUNDS` reads length-prefixed frames from FILE (written by
 * tests/test_c_client.py with plasma.protocol.encode), prints one line of what each parses
 * to, then parses ROUNDS mutations of them (bytes changed, frames cut short) and prints how
 * many parsed. Under AddressSanitizer and UBSan, any read out of bounds aborts it. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wire.h"

#define MAX_FRAMES 64

static const char *const KINDS[] = {
    "unknown", "connected", "ok",      "error",  "created", "got",
    "deleted", "contained", "arena",   "tables", "reclaim", "dropped",
};

static void print_segments(wire_list list) {
    wire_segment s;
    printf(" segments=[");
    while (list.count && wire_next_segment(&list, &s) == 0)
        printf("(%" PRIu64 ",%" PRIu64 ",%" PRId64 ",%" PRIu64 ",%d)", s.id, s.size, s.node,
               s.page_size, s.writable);
    printf("]");
}

static void print_results(wire_list list) {
    wire_location l;
    const char *code;
    size_t len;
    printf(" results=[");
    while (list.count && wire_next_result(&list, &l, &code, &len) == 0) {
        if (code != NULL)
            printf("'%.*s'", (int)len, code);
        else
            printf("(%" PRIu64 ",%" PRIu64 ",%" PRIu64 ",%" PRIu64 ",%" PRId64 ")", l.segment,
                   l.offset, l.data_size, l.metadata_size, l.node);
    }
    printf("]");
}

static void print_tables(const wire_msg *m) {
    if (m->has_tables)
        printf(" tables=%" PRIu64 ",%" PRIu64 ",%" PRIu64, m->tables.directory_size,
               m->tables.access_size, m->tables.pin_size);
    else
        printf(" tables=none");
}

static void print(const wire_msg *m) {
    printf("%s %" PRIu64, KINDS[m->kind], m->seq);
    switch (m->kind) {
    case WIRE_CONNECTED:
        printf(" client=%" PRIu64 " version=%" PRIu64 " capacity=%" PRIu64 " max_frame=%" PRIu64
               " max_object=%" PRIu64 " node=%" PRId64 " alignment=%" PRIu64,
               m->client_id, m->protocol_version, m->capacity, m->max_frame, m->max_object_size,
               m->node, m->alignment);
        print_tables(m);
        break;
    case WIRE_ERROR:
        printf(" %.*s: %.*s", (int)m->code_len, m->code, (int)m->message_len, m->message);
        break;
    case WIRE_CREATED:
    case WIRE_GOT:
        print_results(m->results);
        print_segments(m->segments);
        break;
    case WIRE_ARENA_GRANTED:
        printf(" segment=%" PRIu64 " offset=%" PRIu64 " size=%" PRIu64 " grant=%" PRIu64,
               m->segment, m->offset, m->size, m->grant);
        print_segments(m->segments);
        break;
    case WIRE_TABLES_MOVED:
        print_tables(m);
        break;
    case WIRE_DELETED:
        printf(" missing=%u", m->missing);
        break;
    case WIRE_CONTAINED:
        printf(" present=%d", m->present);
        break;
    case WIRE_SEGMENTS_DROPPED: {
        wire_list ids = m->ids;
        uint64_t id;
        printf(" ids=[");
        while (ids.count && wire_next_uint(&ids, &id) == 0)
            printf("%" PRIu64 ",", id);
        printf("]");
        break;
    }
    default:
        break;
    }
    printf("\n");
}

/* Everything a caller reads of a parsed message, so the sanitizers see every read. */
static void consume(const wire_msg *m) {
    wire_list list = m->results;
    wire_location l;
    wire_segment s;
    const char *code;
    size_t len;
    uint64_t v;
    volatile uint64_t sink = 0;
    while (list.count && wire_next_result(&list, &l, &code, &len) == 0)
        sink += code != NULL ? (uint64_t)code[len ? len - 1 : 0] : l.offset;
    list = m->segments;
    while (list.count && wire_next_segment(&list, &s) == 0)
        sink += s.size;
    list = m->ids;
    while (list.count && wire_next_uint(&list, &v) == 0)
        sink += v;
    if (m->kind == WIRE_ERROR && m->code_len && m->message_len)
        sink += (uint64_t)m->code[m->code_len - 1] + (uint64_t)m->message[m->message_len - 1];
    (void)sink;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: wire_fuzz FILE ROUNDS\n");
        return 2;
    }
    FILE *f = fopen(argv[1], "rb");
    if (f == NULL) {
        perror(argv[1]);
        return 2;
    }
    uint8_t *frames[MAX_FRAMES];
    size_t sizes[MAX_FRAMES], n = 0;
    uint8_t header[4];
    while (n < MAX_FRAMES && fread(header, 1, 4, f) == 4) {
        sizes[n] = (size_t)header[0] | (size_t)header[1] << 8 | (size_t)header[2] << 16 |
                   (size_t)header[3] << 24;
        frames[n] = malloc(sizes[n]);
        if (frames[n] == NULL || fread(frames[n], 1, sizes[n], f) != sizes[n])
            return 2;
        n++;
    }
    fclose(f);
    wire_msg m;
    for (size_t i = 0; i < n; i++) {
        if (wire_parse(frames[i], sizes[i], &m) != 0) {
            printf("malformed\n");
            continue;
        }
        print(&m);
    }
    long rounds = strtol(argv[2], NULL, 10), parsed = 0;
    uint64_t x = 0x9E3779B97F4A7C15u;
    for (long r = 0; r < rounds && n; r++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17; /* xorshift64 */
        size_t which = x % n, len = sizes[which];
        if (x >> 60 == 0 && len) /* sometimes cut short */
            len = (size_t)(x >> 8) % len;
        uint8_t *copy = malloc(len ? len : 1); /* exactly len: a read past it is caught */
        memcpy(copy, frames[which], len);
        for (int k = 0; k < 1 + (int)((x >> 20) % 4) && len; k++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            copy[x % len] = (uint8_t)(x >> 32);
        }
        if (wire_parse(copy, len, &m) == 0) {
            parsed++;
            consume(&m);
        }
        free(copy);
    }
    printf("fuzzed %ld, parsed %ld\n", rounds, parsed);
    for (size_t i = 0; i < n; i++)
        free(frames[i]);
    return 0;
}
