/* The hand-off scenario's consumer in C (bench/c_consumer.py runs it): a client of the store
 * at argv[1] that blocks on its standard input for an object id (20 bytes), gets the object
 * (the C client: the directory and a pin when it can serve it, else a request), reads one
 * byte, releases it, and writes one byte to its standard output ("done"); each get timed
 * from the moment the read of its id returned, the first one untimed (it maps the
 * producer's memory). At the end of its input it writes the timings (ns), one a line. */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "plasma_coord.h"

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

/* Read exactly n bytes: 1, or 0 at the end of the input (or on an error). */
static int read_all(uint8_t *buf, size_t n) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(0, buf + got, n - got);
        if (r <= 0)
            return 0;
        got += (size_t)r;
    }
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: handoff_consumer SOCKET\n");
        return 2;
    }
    pc_client *client;
    int status = pc_connect(argv[1], "bench-c-consumer", &client);
    if (status) {
        fprintf(stderr, "connect: %s\n", pc_error_message(client));
        pc_close(client);
        return 1;
    }
    size_t n = 0, cap = 1024;
    uint64_t *samples = malloc(cap * sizeof *samples);
    uint8_t id[PC_ID_SIZE];
    int warm = 1;
    while (samples != NULL && read_all(id, sizeof id)) {
        uint64_t t0 = now_ns();
        pc_object object;
        if ((status = pc_get(client, id, 10.0, &object))) {
            fprintf(stderr, "get: %s\n", pc_error_message(client));
            break;
        }
        volatile uint8_t first = object.data_size ? object.data[0] : 0;
        (void)first;
        pc_release(client, &object);
        uint64_t elapsed = now_ns() - t0;
        if (!warm) {
            if (n == cap) {
                uint64_t *more = realloc(samples, 2 * cap * sizeof *samples);
                if (more == NULL)
                    break;
                samples = more;
                cap *= 2;
            }
            samples[n++] = elapsed;
        }
        warm = 0;
        if (write(1, "d", 1) != 1)
            break;
    }
    for (size_t i = 0; samples != NULL && !status && i < n; i++)
        printf("%llu\n", (unsigned long long)samples[i]);
    free(samples);
    pc_close(client);
    return status ? 1 : 0;
}
