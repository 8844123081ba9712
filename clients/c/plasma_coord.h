/* plasma_coord.h: a C client of plasma-coord (C11; usable unchanged from C++).
 *
 * A process in C, C++ or any language with a C FFI shares objects with the store's Python
 * clients: it connects to a coordinator (its Unix socket), gets objects by id (through the
 * shared object directory and a pin, with no message, when the directory can serve them;
 * else by a Get request that waits up to a timeout), releases them, and creates, fills and
 * seals objects (small ones written into an arena of its own, with no round trip).
 *
 * Errors are return codes (PC_OK, or a negative PC_E* code) with a message
 * (pc_error_message); nothing here aborts, raises a signal or exits. A coordinator that goes
 * away is PC_EDISCONNECTED on every later call (never SIGPIPE: sends use MSG_NOSIGNAL);
 * objects got before stay readable (their memory stays mapped until pc_close).
 *
 * A pc_client is one connection: use it from one thread at a time (a lock of your own
 * around it, or one client per thread), and not in a forked child (connect another one
 * there). The wire protocol and the directory are docs/protocol.md's; the directory's
 * lookup, pin, re-check and unpin are plasma/_native/directory.c, the same code the
 * Python clients run. */
#ifndef PLASMA_COORD_H
#define PLASMA_COORD_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PC_ID_SIZE 20
/* a timeout that waits as long as it takes (any negative number does) */
#define PC_WAIT_FOREVER (-1.0)

/* Status codes. The first ones are the coordinator's stable error codes (plasma.errors:
 * pc_status_name gives the same strings); the last ones are the client's own. */
enum {
    PC_OK = 0,
    PC_EOBJECT_EXISTS = -1,        /* "object_exists" */
    PC_EOBJECT_NOT_FOUND = -2,     /* "object_not_found" */
    PC_EOBJECT_NOT_SEALED = -3,    /* "object_not_sealed" */
    PC_ESTORE_FULL = -4,           /* "store_full" */
    PC_ETIMEOUT = -5,              /* "timeout" */
    PC_EPLACEMENT_IMPOSSIBLE = -6, /* "placement_impossible" */
    PC_EBAD_REQUEST = -7,          /* "bad_request" */
    PC_EPERMISSION_DENIED = -8,    /* "permission_denied" */
    PC_EUNSUPPORTED = -9,          /* "unsupported" */
    PC_EOBJECT_LOST = -10,         /* "object_lost" */
    PC_EIO_ERROR = -11,            /* "io_error" */
    PC_EERROR = -12,      /* "error": a code this client does not know (in the message) */
    PC_EDISCONNECTED = -13, /* "disconnected": the connection is gone (closed, broken) */
    PC_EPROTOCOL = -14,   /* "protocol": the coordinator sent what this client cannot use */
    PC_ESYSTEM = -15,     /* "system": a system call failed (the message names it) */
    PC_ENOMEM = -16,      /* "no_memory" */
    PC_EINVALID = -17,    /* "invalid_argument": a bad argument; nothing was sent */
};

/* The stable name of a status code ("object_not_found", ...; "unknown" for others). */
const char *pc_status_name(int status);

typedef struct pc_client pc_client;

/* Connect to the coordinator at socket_path (NULL: $PLASMA_COORD_SOCKET, else
 * /tmp/plasma-coord.sock) as client_name (NULL: ""). Sets *client in every case but
 * PC_ENOMEM: on failure it is a client whose pc_error_message says why (e.g. the
 * coordinator's "permission_denied: uid 1000 may not use this store ..."), to pc_close. */
int pc_connect(const char *socket_path, const char *client_name, pc_client **client);

/* Close the connection and unmap everything: objects got before are gone (release them
 * first, or not: the coordinator drops this client's references and pins with it).
 * NULL is fine. */
void pc_close(pc_client *client);

/* The message of the last call that failed (static text for a NULL client). */
const char *pc_error_message(const pc_client *client);

/* This client's id (the coordinator's: plasma-coord stats lists it). */
uint64_t pc_client_id(const pc_client *client);

/* Whether gets are served through the object directory (1) or by requests only (0: the
 * coordinator sent no directory, or this CPU cannot read it). */
int pc_reads_directory(const pc_client *client);

/* An object got for reading: its bytes stay valid until pc_release. */
typedef struct pc_object {
    const uint8_t *data;
    uint64_t data_size;
    const uint8_t *metadata; /* right after the data */
    uint64_t metadata_size;
    uint64_t handle; /* the client's (0 once released) */
} pc_object;

/* Get the sealed object id: from the directory with a pin when it can serve it (no
 * message), else by a Get request that waits up to timeout seconds for the object to be
 * sealed (0: not at all; PC_WAIT_FOREVER). PC_EOBJECT_NOT_FOUND / PC_ETIMEOUT when it is
 * not there in time. Every successful get is released once. */
int pc_get(pc_client *client, const uint8_t id[PC_ID_SIZE], double timeout, pc_object *object);

/* Give an object got back (it may go once no one holds it); object->handle becomes 0.
 * Works on a client whose coordinator went away too. PC_EINVALID for an object not held. */
int pc_release(pc_client *client, pc_object *object);

/* Create object id of data_size bytes with metadata (metadata_size bytes, copied; NULL
 * when 0), placed on this client's NUMA node; *data is where to write its bytes, until
 * pc_seal or pc_abort. Does not wait for room: PC_ESTORE_FULL when there is none. */
int pc_create(pc_client *client, const uint8_t id[PC_ID_SIZE], uint64_t data_size,
              const void *metadata, uint64_t metadata_size, uint8_t **data);

/* Seal an object pc_create made: it is immutable and every client may get it; this
 * client's reference goes with it (stop using *data). Sent without waiting: an error
 * comes back from a later call (or pc_flush). */
int pc_seal(pc_client *client, const uint8_t id[PC_ID_SIZE]);

/* Abandon an object pc_create made and did not seal (waits for the coordinator). */
int pc_abort(pc_client *client, const uint8_t id[PC_ID_SIZE]);

/* Create, fill (data, then metadata, copied) and seal an object in one call. Up to
 * 1 MiB in all it is written into this client's arena and registered without waiting
 * (its error comes back from a later call, or pc_flush); a larger one is pc_create +
 * copy + pc_seal. */
int pc_create_and_seal(pc_client *client, const uint8_t id[PC_ID_SIZE], const void *data,
                       uint64_t data_size, const void *metadata, uint64_t metadata_size);

/* Delete a sealed object: hidden at once, its memory freed once no one holds it.
 * PC_EOBJECT_NOT_FOUND when there is no such sealed object. */
int pc_delete(pc_client *client, const uint8_t id[PC_ID_SIZE]);

/* Whether the store holds the sealed object id (*present 1 or 0). */
int pc_contains(pc_client *client, const uint8_t id[PC_ID_SIZE], int *present);

/* Wait until the coordinator has applied everything sent before (seals included); returns
 * the error of a call sent without waiting, if one failed. */
int pc_flush(pc_client *client);

/* Ids as text: 40 hex digits (either case) to bytes (PC_EINVALID for anything else), and
 * bytes to 40 lowercase digits and a NUL. */
int pc_id_from_hex(const char *hex, uint8_t id[PC_ID_SIZE]);
void pc_id_to_hex(const uint8_t id[PC_ID_SIZE], char hex[2 * PC_ID_SIZE + 1]);

#ifdef __cplusplus
}
#endif

#endif
