/* A C producer: COUNT frames of VALUES float32 each, written in place into the store
 * (pc_create, fill, pc_seal), then their count (pc_create_and_seal: a small object, written
 * into the client's arena with no round trip). A Python consumer reads them as numpy
 * arrays with no copy (frames.py consume), and so does consumer.c.
 *
 *     producer [--socket PATH] [COUNT [VALUES]]      (default 4 frames of 262144 values)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "frames.h"
#include "plasma_coord.h"

static int failed(pc_client *client, const char *what, int status) {
    fprintf(stderr, "producer: %s: %s: %s\n", what, pc_status_name(status),
            pc_error_message(client));
    pc_close(client);
    return 1;
}

int main(int argc, char **argv) {
    const char *socket_path = NULL; /* $PLASMA_COORD_SOCKET, else /tmp/plasma-coord.sock */
    int arg = 1;
    if (argc > 2 && strcmp(argv[1], "--socket") == 0) {
        socket_path = argv[2];
        arg = 3;
    }
    uint32_t count = argc > arg ? (uint32_t)strtoul(argv[arg], NULL, 10) : 4;
    uint64_t values = argc > arg + 1 ? strtoull(argv[arg + 1], NULL, 10) : 262144;

    pc_client *client;
    int status = pc_connect(socket_path, "c-producer", &client);
    if (status)
        return failed(client, "connect", status);
    for (uint32_t i = 0; i < count; i++) {
        uint8_t id[PC_ID_SIZE];
        uint8_t *data;
        frame_id(i, id);
        status = pc_create(client, id, values * sizeof(float), "float32", 7, &data);
        if (status)
            return failed(client, "create", status);
        for (uint64_t j = 0; j < values; j++) {
            float v = frame_value(i, j);
            memcpy(data + j * sizeof v, &v, sizeof v);
        }
        if ((status = pc_seal(client, id)))
            return failed(client, "seal", status);
    }
    uint8_t count_id[PC_ID_SIZE];
    uint8_t le[4] = {(uint8_t)count, (uint8_t)(count >> 8), (uint8_t)(count >> 16),
                     (uint8_t)(count >> 24)};
    frame_id(COUNT_INDEX, count_id);
    if ((status = pc_create_and_seal(client, count_id, le, sizeof le, NULL, 0)))
        return failed(client, "create_and_seal", status);
    if ((status = pc_flush(client))) /* every seal applied (or its error) */
        return failed(client, "flush", status);
    printf("sealed %u frames of %llu float32 values\n", count, (unsigned long long)values);
    pc_close(client);
    return 0;
}
