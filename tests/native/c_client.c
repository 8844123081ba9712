/* The C client (clients/c) driven by tests/test_c_client.py, one command a run:
 *
 *   put SOCKET MODE ID...          seal each object (pattern(id, SIZE) bytes), then flush;
 *                                  MODE is arena:SIZE (pc_create_and_seal) or inplace:SIZE
 *   get SOCKET TIMEOUT OUT ID...   get each, append its data to file OUT, release it
 *   later SOCKET TIMEOUT OUT ID... the same, but the first id alone first, then say "ready"
 *                                  and wait for a line before the others
 *   hold SOCKET ID...              get each, say "held", wait for end of input, release
 *   gone SOCKET ID                 take an arena, get ID, say "held", wait for a line (the
 *                                  coordinator is killed meanwhile), then print what each
 *                                  call returns
 *   reclaim SOCKET ID              take an arena, say "arena", then wait for ID (reading
 *                                  the socket meanwhile: a Reclaim is answered) and print it
 *   connect SOCKET                 print how connecting went
 *   errors SOCKET                  bad calls, each printed as "what: status"
 *
 * Every status is printed as its name; the exit status is 0 unless a call that must work
 * failed (then its message is on stderr). */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plasma_coord.h"

#define MAX_IDS 64

static pc_client *client;

static int die(const char *what, int status) {
    fprintf(stderr, "%s: %s: %s\n", what, pc_status_name(status), pc_error_message(client));
    pc_close(client);
    exit(1);
}

static void must(const char *what, int status) {
    if (status)
        die(what, status);
}

/* The bytes the tests expect in an object: (id[0] + 131 j) mod 251. */
static void pattern(const uint8_t *id, uint8_t *out, uint64_t n) {
    for (uint64_t j = 0; j < n; j++)
        out[j] = (uint8_t)((id[0] + 131 * j) % 251);
}

static int parse_ids(char **args, int n, uint8_t ids[][PC_ID_SIZE]) {
    if (n > MAX_IDS)
        n = MAX_IDS;
    for (int i = 0; i < n; i++)
        if (pc_id_from_hex(args[i], ids[i]) != PC_OK) {
            fprintf(stderr, "not an id: %s\n", args[i]);
            exit(2);
        }
    return n;
}

static void connect_or_die(const char *path) {
    must("connect", pc_connect(path, "c-client-test", &client));
}

static void wait_for_input(void) {
    int ch;
    while ((ch = getchar()) != EOF && ch != '\n')
        ;
}

static int put(char **args, int n) {
    uint8_t ids[MAX_IDS][PC_ID_SIZE];
    int inplace = strncmp(args[0], "inplace:", 8) == 0;
    uint64_t size = strtoull(strchr(args[0], ':') + 1, NULL, 10);
    n = parse_ids(args + 1, n - 1, ids);
    uint8_t *bytes = malloc(size ? size : 1);
    for (int i = 0; i < n; i++) {
        if (inplace) {
            uint8_t *data;
            must("create", pc_create(client, ids[i], size, "meta", 4, &data));
            pattern(ids[i], data, size);
            must("seal", pc_seal(client, ids[i]));
        } else {
            pattern(ids[i], bytes, size);
            must("create_and_seal", pc_create_and_seal(client, ids[i], bytes, size, "meta", 4));
        }
    }
    free(bytes);
    must("flush", pc_flush(client));
    printf("sealed %d\n", n);
    return 0;
}

static void get_into(FILE *out, uint8_t ids[][PC_ID_SIZE], int n, double timeout) {
    for (int i = 0; i < n; i++) {
        pc_object object;
        must("get", pc_get(client, ids[i], timeout, &object));
        fwrite(object.data, 1, object.data_size, out);
        must("release", pc_release(client, &object));
    }
}

/* get, or with later: the first id, then "ready" and a line to wait for, then the rest */
static int get(char **args, int n, int later) {
    uint8_t ids[MAX_IDS][PC_ID_SIZE];
    double timeout = strtod(args[0], NULL);
    FILE *out = fopen(args[1], "wb");
    if (out == NULL) {
        perror(args[1]);
        return 1;
    }
    n = parse_ids(args + 2, n - 2, ids);
    int first = later ? 1 : 0;
    get_into(out, ids, first, timeout);
    if (later) {
        printf("ready\n");
        fflush(stdout);
        wait_for_input();
    }
    get_into(out, ids + first, n - first, timeout);
    fclose(out);
    printf("got %d, directory %d\n", n, pc_reads_directory(client));
    return 0;
}

static int hold(char **args, int n) {
    uint8_t ids[MAX_IDS][PC_ID_SIZE];
    pc_object objects[MAX_IDS];
    n = parse_ids(args, n, ids);
    for (int i = 0; i < n; i++)
        must("get", pc_get(client, ids[i], 5.0, &objects[i]));
    printf("held %d\n", n);
    fflush(stdout);
    wait_for_input();
    for (int i = 0; i < n; i++)
        must("release", pc_release(client, &objects[i]));
    must("flush", pc_flush(client));
    printf("released %d\n", n);
    return 0;
}

static int gone(char **args) {
    uint8_t id[PC_ID_SIZE], first[PC_ID_SIZE] = {1}, second[PC_ID_SIZE] = {2};
    pc_object object, again;
    parse_ids(args, 1, &id);
    must("create_and_seal", pc_create_and_seal(client, first, "x", 1, NULL, 0)); /* an arena */
    must("get", pc_get(client, id, 5.0, &object));
    printf("held\n");
    fflush(stdout);
    wait_for_input(); /* the coordinator is killed meanwhile */
    printf("create_and_seal: %s\n",
           pc_status_name(pc_create_and_seal(client, second, "y", 1, NULL, 0)));
    uint8_t expected[64];
    uint64_t n = object.data_size < sizeof expected ? object.data_size : sizeof expected;
    pattern(id, expected, n);
    printf("view: %s\n", memcmp(object.data, expected, n) == 0 ? "intact" : "changed");
    printf("get: %s\n", pc_status_name(pc_get(client, id, 0, &again)));
    printf("message: %s\n", pc_error_message(client));
    printf("flush: %s\n", pc_status_name(pc_flush(client)));
    printf("release: %s\n", pc_status_name(pc_release(client, &object)));
    pc_close(client);
    return 0;
}

static int reclaim(char **args) {
    uint8_t id[PC_ID_SIZE], mine[PC_ID_SIZE] = {3};
    pc_object object;
    parse_ids(args, 1, &id);
    must("create_and_seal", pc_create_and_seal(client, mine, "x", 1, NULL, 0)); /* an arena */
    must("flush", pc_flush(client));
    printf("arena\n");
    fflush(stdout);
    must("get", pc_get(client, id, 30.0, &object));
    printf("got %.*s\n", (int)object.data_size, (const char *)object.data);
    must("release", pc_release(client, &object));
    pc_close(client);
    return 0;
}

static int connect_only(const char *path) {
    int status = pc_connect(path, "c-client-test", &client);
    printf("%s: %s\n", pc_status_name(status), status ? pc_error_message(client) : "connected");
    pc_close(client);
    return 0;
}

static void show(const char *what, int status) {
    printf("%s: %s\n", what, pc_status_name(status));
}

static int errors(void) {
    uint8_t id[PC_ID_SIZE] = {0xe1}, missing[PC_ID_SIZE] = {0xe2}, big[PC_ID_SIZE] = {0xe3};
    pc_object object, bogus = {0};
    uint8_t *data;
    show("get_nan_timeout", pc_get(client, id, NAN, &object));
    show("get_missing", pc_get(client, missing, 0, &object));
    show("release_not_held", pc_release(client, &bogus));
    show("create_null_metadata", pc_create(client, id, 8, NULL, 4, &data));
    show("create_too_large", pc_create(client, big, UINT64_C(1) << 62, NULL, 0, &data));
    must("create_and_seal", pc_create_and_seal(client, id, "first", 5, NULL, 0));
    /* sent without waiting: the coordinator's answer comes back from flush */
    show("create_and_seal_existing", pc_create_and_seal(client, id, "again", 5, NULL, 0));
    show("flush_after_existing", pc_flush(client));
    must("get", pc_get(client, id, 5.0, &object));
    show("get_after_errors", PC_OK);
    printf("data: %.*s\n", (int)object.data_size, (const char *)object.data);
    must("release", pc_release(client, &object));
    show("release_twice", pc_release(client, &object));
    show("seal_unknown", pc_seal(client, missing));
    show("flush_after_seal_unknown", pc_flush(client));
    show("abort_unknown", pc_abort(client, missing));
    show("delete_missing", pc_delete(client, missing));
    int present = -1;
    must("contains", pc_contains(client, id, &present));
    printf("contains: %d\n", present);
    show("delete", pc_delete(client, id));
    must("contains", pc_contains(client, id, &present));
    printf("contains_after_delete: %d\n", present);
    pc_close(client);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: c_client COMMAND SOCKET ...\n");
        return 2;
    }
    const char *command = argv[1], *path = argv[2];
    if (strcmp(command, "connect") == 0)
        return connect_only(path);
    connect_or_die(path);
    if (strcmp(command, "put") == 0 && argc > 4)
        return put(argv + 3, argc - 3);
    if ((strcmp(command, "get") == 0 || strcmp(command, "later") == 0) && argc > 5)
        return get(argv + 3, argc - 3, strcmp(command, "later") == 0);
    if (strcmp(command, "hold") == 0)
        return hold(argv + 3, argc - 3);
    if (strcmp(command, "gone") == 0 && argc == 4)
        return gone(argv + 3);
    if (strcmp(command, "reclaim") == 0 && argc == 4)
        return reclaim(argv + 3);
    if (strcmp(command, "errors") == 0)
        return errors();
    fprintf(stderr, "unknown command or arguments: %s\n", command);
    pc_close(client);
    return 2;
}
