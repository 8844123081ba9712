/* A C consumer: waits for the count of frames (up to TIMEOUT seconds), gets each frame,
 * checks every value and prints a summary line per frame (the same lines frames.py consume
 * prints), then releases it. Gets are served from the store's shared directory with a pin
 * (no message) when it can; else by a request that waits for the seal.
 *
 *     consumer [--socket PATH] [TIMEOUT]      (default 10 s)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "frames.h"
#include "plasma_coord.h"

static int failed(pc_client *client, const char *what, int status) {
    fprintf(stderr, "consumer: %s: %s: %s\n", what, pc_status_name(status),
            pc_error_message(client));
    pc_close(client);
    return 1;
}

int main(int argc, char **argv) {
    const char *socket_path = NULL;
    int arg = 1;
    if (argc > 2 && strcmp(argv[1], "--socket") == 0) {
        socket_path = argv[2];
        arg = 3;
    }
    double timeout = argc > arg ? strtod(argv[arg], NULL) : 10.0;

    pc_client *client;
    int status = pc_connect(socket_path, "c-consumer", &client);
    if (status)
        return failed(client, "connect", status);
    uint8_t id[PC_ID_SIZE];
    pc_object object;
    frame_id(COUNT_INDEX, id);
    if ((status = pc_get(client, id, timeout, &object)))
        return failed(client, "get the count", status);
    if (object.data_size != 4) {
        fprintf(stderr, "consumer: the count is %llu bytes, not 4\n",
                (unsigned long long)object.data_size);
        pc_close(client);
        return 1;
    }
    const uint8_t *b = object.data;
    uint32_t count = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 |
                     (uint32_t)b[3] << 24;
    pc_release(client, &object);
    int wrong = 0;
    for (uint32_t i = 0; i < count; i++) {
        frame_id(i, id);
        if ((status = pc_get(client, id, timeout, &object)))
            return failed(client, "get a frame", status);
        uint64_t n = object.data_size / sizeof(float);
        double sum = 0;
        for (uint64_t j = 0; j < n; j++) {
            float v;
            memcpy(&v, object.data + j * sizeof v, sizeof v);
            sum += v;
            wrong += v != frame_value(i, j);
        }
        printf("frame %u: %llu values, sum %.1f, metadata %.*s\n", i, (unsigned long long)n,
               sum, (int)object.metadata_size, (const char *)object.metadata);
        pc_release(client, &object);
    }
    pc_close(client);
    if (wrong) {
        fprintf(stderr, "consumer: %d values differ from what the producer wrote\n", wrong);
        return 1;
    }
    return 0;
}
