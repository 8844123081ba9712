/* The C client of plasma-coord (see plasma_coord.h): a blocking connection, the replies and
 * pushes it reads, the segments and tables it maps, the objects it holds, and its arena.
 *
 * The steps are those of the Python client core (plasma/_client_core): the handshake maps
 * the directory and the pin table sent with Connected; a get reads the directory and pins
 * through plasma/_native/directory.c (pcd_get: lookup, pin, re-check), else sends a Get
 * and maps the segments its reply lists, from the descriptors that came with it (SCM_RIGHTS,
 * in order); a release clears the pin (telling the coordinator with Unpin when the object
 * is dying) or sends a Release; small objects go into an arena and are registered by
 * SealArena without waiting. Pushes are handled whenever the socket is read: Reclaim is
 * answered by giving the arena back, SegmentsDropped unmaps, an Error with seq 0 is the
 * coordinator's reason for closing. Unlike the Python clients, this one keeps no cache of
 * released objects: each get takes its own pin or reference, and each release gives it
 * back at once (so Revoked, which concerns cached references, needs no answer). */
#define _GNU_SOURCE
#include "plasma_coord.h"

#include <errno.h>
#include <math.h>
#include <poll.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "directory.h"
#include "maps.h"
#include "wire.h"

#define PROTOCOL_VERSION 2
#define DEFAULT_SOCKET "/tmp/plasma-coord.sock"
/* objects up to ARENA_OBJECT_LIMIT bytes (data + metadata) go into an arena of at least
 * ARENA_SIZE bytes, room for ARENA_OBJECTS of them, at most 1/64 of the store (the Python
 * clients' sizes: plasma/_client_core/core.py) */
#define ARENA_SIZE (UINT64_C(1) << 20)
#define ARENA_OBJECTS 16
#define ARENA_OBJECT_LIMIT (UINT64_C(1) << 20)
#define RECV_SIZE (256 * 1024)
#define MAX_REPLY_FRAME (UINT64_C(1) << 30)
#define MAX_FDS 253 /* the kernel's SCM_MAX_FD */
/* a get served without a request looks for a hang-up (one poll) at most this often */
#define LOOK_INTERVAL_NS 1000000
#define MESSAGE_SIZE 4200 /* the coordinator's strings are at most 4096 characters */

/* An object this client holds: a pin (pin >= 0, taken on the directory read found) or a
 * coordinator reference. */
typedef struct held {
    uint32_t stamp; /* odd while in use: a handle names an entry and its stamp */
    int64_t pin;
    pcd_found found;
    uint64_t segment;
    uint8_t id[PC_ID_SIZE];
} held;

struct pc_client {
    int fd;
    int fatal; /* the status of every call once the connection is gone (0: usable) */
    char fatal_message[MESSAGE_SIZE];
    int deferred; /* the error of a call sent without waiting, not returned yet */
    char deferred_message[MESSAGE_SIZE];
    char error[MESSAGE_SIZE]; /* the last error's message */
    uint64_t seq;
    uint64_t client_id, capacity, alignment;
    wire_out out;   /* the requests of the call under way */
    wire_out aside; /* answers sent while reading (to Reclaim) */
    /* bytes received: frames before in_pos are handled, the last one handled stays
     * intact (its strings are the caller's) until the next read */
    uint8_t *in;
    size_t in_len, in_pos, in_cap;
    int *fds; /* descriptors received, not yet taken by a segment or table, oldest first */
    size_t nfds, fds_cap;
    segments segs;
    /* reads without requests */
    uint8_t *directory, *access, *pin_map;
    uint64_t directory_size, access_size, pin_size;
    int reading; /* reader and pins are open */
    pcd_reader reader;
    pcd_pins pins;
    int tables_asked;
    uint64_t next_look;
    /* objects held, by handle */
    held *held;
    uint32_t held_cap, nfree;
    uint32_t *free; /* entries not in use */
    struct {
        int active;
        uint64_t segment, cursor, end, grant, seq; /* seq: of the Arena request */
    } arena;
};

/* ------------------------------------------------------------------ errors */

static const char *const NAMES[] = {
    "ok",          "object_exists", "object_not_found", "object_not_sealed",
    "store_full",  "timeout",       "placement_impossible", "bad_request",
    "permission_denied", "unsupported", "object_lost", "io_error",
    "error",       "disconnected",  "protocol",         "system",
    "no_memory",   "invalid_argument",
};
#define NNAMES ((int)(sizeof NAMES / sizeof NAMES[0]))

const char *pc_status_name(int status) {
    return status <= 0 && -status < NNAMES ? NAMES[-status] : "unknown";
}

/* The status of an error code the coordinator sent (those of plasma.errors). */
static int status_of(const char *code, size_t len) {
    for (int i = 1; i <= -PC_EIO_ERROR; i++)
        if (strlen(NAMES[i]) == len && memcmp(NAMES[i], code, len) == 0)
            return -i;
    return PC_EERROR;
}

/* The status of the coordinator's Error m, its message written to out (with the code in
 * front when this client does not know it: a newer coordinator's). */
static int error_reply(const wire_msg *m, char *out, size_t size) {
    int status = status_of(m->code, m->code_len);
    if (status == PC_EERROR)
        snprintf(out, size, "%.*s: %.*s", (int)m->code_len, m->code, (int)m->message_len,
                 m->message);
    else
        snprintf(out, size, "%.*s", (int)m->message_len, m->message);
    return status;
}

static int fail(pc_client *c, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(pc_client *c, int status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->error, sizeof c->error, fmt, ap);
    va_end(ap);
    return status;
}

/* The connection is gone: status (and the message) from now on; the first reason stays. */
static int gone(pc_client *c, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int gone(pc_client *c, int status, const char *fmt, ...) {
    if (!c->fatal) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->fatal_message, sizeof c->fatal_message, fmt, ap);
        va_end(ap);
        c->fatal = status;
        c->reading = 0; /* a dead store's directory serves nothing (views stay mapped) */
    }
    memcpy(c->error, c->fatal_message, sizeof c->error);
    return c->fatal;
}

static int system_error(pc_client *c, int err, const char *what) {
    char buf[256];
    return gone(c, PC_ESYSTEM, "%s failed: %s", what, strerror_r(err, buf, sizeof buf));
}

/* Whether a call may talk to the coordinator: the connection's status, else the error of
 * an earlier call sent without waiting (returned once, as the Python clients raise it
 * from the next call). */
static int usable(pc_client *c) {
    if (c->fatal) {
        memcpy(c->error, c->fatal_message, sizeof c->error);
        return c->fatal;
    }
    if (c->deferred) {
        int status = c->deferred;
        c->deferred = 0;
        memcpy(c->error, c->deferred_message, sizeof c->error);
        return status;
    }
    return PC_OK;
}

/* ------------------------------------------------------------------ sending */

static int send_all(pc_client *c, wire_out *out) {
    size_t sent = 0;
    if (out->failed) {
        wire_out_free(out);
        return fail(c, PC_ENOMEM, "out of memory for a request");
    }
    while (sent < out->len) {
        ssize_t n = send(c->fd, out->buf + sent, out->len - sent, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int err = errno;
            char buf[256];
            out->len = 0;
            return gone(c, PC_EDISCONNECTED, "the connection to the coordinator broke: %s",
                        strerror_r(err, buf, sizeof buf));
        }
        sent += (size_t)n;
    }
    out->len = 0;
    return PC_OK;
}

static uint64_t next_seq(pc_client *c) { return ++c->seq; }

/* Frames of request tag with [id] and, when ack >= 0, the ack flag. */
static void ids_request(wire_out *out, const char *tag, uint64_t seq, const uint8_t *id, int ack) {
    wire_begin(out, tag, ack >= 0 ? 3 : 2);
    wire_uint(out, seq);
    wire_one_id(out, id);
    if (ack >= 0)
        wire_bool(out, ack);
    wire_end(out);
}

/* ------------------------------------------------------------------ mapping */

static int take_fd(pc_client *c) {
    if (c->nfds == 0)
        return -1;
    int fd = c->fds[0];
    memmove(c->fds, c->fds + 1, --c->nfds * sizeof *c->fds);
    return fd;
}

static int map_segments(pc_client *c, wire_list list, int for_writing) {
    wire_segment info;
    while (list.count) {
        if (wire_next_segment(&list, &info))
            return gone(c, PC_EPROTOCOL, "a malformed segment list");
        int fd = take_fd(c);
        if (fd < 0)
            return gone(c, PC_EPROTOCOL, "segment %llu arrived without its file descriptor",
                        (unsigned long long)info.id);
        uint8_t *base;
        const char *what;
        int err = map_file(fd, info.size, info.writable, for_writing, &base, &what);
        if (err == EPROTO)
            return gone(c, PC_EPROTOCOL, "segment %llu is shorter than the %llu bytes it says",
                        (unsigned long long)info.id, (unsigned long long)info.size);
        if (err)
            return system_error(c, err, what);
        if (segments_find(&c->segs, info.id) != NULL) { /* (each is sent once) */
            munmap(base, info.size);
            continue;
        }
        segment *s = segments_add(&c->segs, info.id);
        if (s == NULL) {
            munmap(base, info.size);
            return gone(c, PC_ENOMEM, "out of memory for the segment table");
        }
        s->base = base;
        s->size = info.size;
        s->writable = info.writable;
    }
    return PC_OK;
}

static void close_tables(pc_client *c, int with_pins) {
    if (c->directory != NULL)
        munmap(c->directory, c->directory_size);
    if (c->access != NULL)
        munmap(c->access, c->access_size);
    c->directory = c->access = NULL;
    if (with_pins && c->pin_map != NULL) {
        pcd_pins_close(&c->pins);
        munmap(c->pin_map, c->pin_size);
        c->pin_map = NULL;
    }
}

/* The directory (and access bytes, and the pin table when sent) from their descriptors,
 * replacing the directory read before. One this client cannot read (pcd_reader_open
 * refuses it) leaves it reading through requests. */
static int map_tables(pc_client *c, const wire_tables *t) {
    const uint64_t sizes[3] = {t->directory_size, t->access_size, t->pin_size};
    uint8_t *maps[3] = {NULL, NULL, NULL};
    int status = PC_OK;
    for (int i = 0; i < 3; i++) {
        if (!sizes[i])
            continue;
        int fd = take_fd(c);
        const char *what;
        int err = fd < 0 ? EPROTO : map_file(fd, sizes[i], i > 0, i == 2, &maps[i], &what);
        if (err) {
            status = err == EPROTO
                         ? gone(c, PC_EPROTOCOL, "the directory's tables arrived without their "
                                                 "descriptors, or shorter than they say")
                         : system_error(c, err, what);
            for (int j = 0; j < i; j++)
                if (maps[j] != NULL)
                    munmap(maps[j], sizes[j]);
            return status;
        }
    }
    c->reading = 0;
    close_tables(c, maps[2] != NULL);
    c->directory = maps[0];
    c->directory_size = sizes[0];
    c->access = maps[1];
    c->access_size = sizes[1];
    if (maps[2] != NULL) {
        c->pin_map = maps[2];
        c->pin_size = sizes[2];
        if (pcd_pins_open(&c->pins, c->pin_map, c->pin_size) != PCD_OK) {
            munmap(c->pin_map, c->pin_size);
            c->pin_map = NULL;
        }
    }
    c->reading = c->directory != NULL && c->pin_map != NULL && !c->fatal &&
                 pcd_reader_open(&c->reader, c->directory, c->directory_size, c->access,
                                 c->access_size) == PCD_OK;
    return PC_OK;
}

static segment *live_segment(pc_client *c, uint64_t id) {
    segment *s = segments_find(&c->segs, id);
    return s != NULL && !s->dropped ? s : NULL;
}

static int mapped(void *ctx, uint32_t segment_id) {
    return live_segment(ctx, segment_id) != NULL;
}

/* The segment of an object at offset (data then metadata), when it is mapped (writable,
 * if asked) and holds the whole object; else NULL. */
static segment *object_segment(pc_client *c, uint64_t id, uint64_t offset, uint64_t data_size,
                               uint64_t metadata_size, int writable) {
    segment *s = live_segment(c, id);
    if (s == NULL || (writable && !s->writable))
        return NULL;
    if (offset > s->size || data_size > s->size - offset ||
        metadata_size > s->size - offset - data_size)
        return NULL;
    return s;
}

static void unuse_segment(pc_client *c, uint64_t id) {
    segment *s = segments_find(&c->segs, id);
    if (s != NULL && s->users && --s->users == 0 && s->dropped)
        segments_remove(&c->segs, s);
}

/* ------------------------------------------------------------------ receiving */

static void drop_arena(pc_client *c, int give_back);
static int handle(pc_client *c, const wire_msg *m, uint64_t waiting);

/* Read what the socket has (waiting for it when block): 1 when bytes came, 0 when none
 * were there, else the connection's status. */
static int receive(pc_client *c, int block) {
    if (c->in_pos) {
        memmove(c->in, c->in + c->in_pos, c->in_len - c->in_pos);
        c->in_len -= c->in_pos;
        c->in_pos = 0;
    }
    size_t need = c->in_len + RECV_SIZE;
    if (c->in_len >= WIRE_HEADER) {
        uint64_t frame = (uint64_t)c->in[0] | (uint64_t)c->in[1] << 8 |
                         (uint64_t)c->in[2] << 16 | (uint64_t)c->in[3] << 24;
        if (frame > MAX_REPLY_FRAME)
            return gone(c, PC_EPROTOCOL, "a reply frame of %llu bytes", (unsigned long long)frame);
        if (WIRE_HEADER + frame > need)
            need = WIRE_HEADER + (size_t)frame;
    }
    if (need > c->in_cap) {
        uint8_t *in = realloc(c->in, need);
        if (in == NULL)
            return gone(c, PC_ENOMEM, "out of memory for a reply of %zu bytes", need);
        c->in = in;
        c->in_cap = need;
    }
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(MAX_FDS * sizeof(int))];
    } control;
    struct iovec iov = {c->in + c->in_len, c->in_cap - c->in_len};
    struct msghdr msg = {0};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.buf;
    msg.msg_controllen = sizeof control.buf;
    ssize_t n;
    do
        n = recvmsg(c->fd, &msg, MSG_CMSG_CLOEXEC | (block ? 0 : MSG_DONTWAIT));
    while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return 0;
    if (n < 0) {
        char buf[256];
        int err = errno;
        return gone(c, PC_EDISCONNECTED, "the connection to the coordinator broke: %s",
                    strerror_r(err, buf, sizeof buf));
    }
    int truncated = (msg.msg_flags & MSG_CTRUNC) != 0;
    for (struct cmsghdr *h = CMSG_FIRSTHDR(&msg); h != NULL; h = CMSG_NXTHDR(&msg, h)) {
        if (h->cmsg_level != SOL_SOCKET || h->cmsg_type != SCM_RIGHTS)
            continue;
        size_t count = (h->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < count; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(h) + i * sizeof(int), sizeof fd);
            if (truncated || n == 0) {
                close(fd);
                continue;
            }
            if (c->nfds == c->fds_cap) {
                size_t cap = c->fds_cap ? 2 * c->fds_cap : 16;
                int *fds = realloc(c->fds, cap * sizeof *fds);
                if (fds == NULL) {
                    close(fd);
                    truncated = 1;
                    continue;
                }
                c->fds = fds;
                c->fds_cap = cap;
            }
            c->fds[c->nfds++] = fd;
        }
    }
    if (truncated)
        return gone(c, PC_EPROTOCOL, "segment descriptors were lost (truncated, or no memory)");
    if (n == 0)
        return gone(c, PC_EDISCONNECTED, "the coordinator closed the connection");
    c->in_len += (size_t)n;
    return 1;
}

/* The next whole frame received, parsed: 1, 0 when there is none yet, or the status of a
 * malformed one (the connection is then unusable). */
static int next_frame(pc_client *c, wire_msg *m) {
    size_t avail = c->in_len - c->in_pos;
    if (avail < WIRE_HEADER)
        return 0;
    const uint8_t *at = c->in + c->in_pos;
    uint64_t len = (uint64_t)at[0] | (uint64_t)at[1] << 8 | (uint64_t)at[2] << 16 |
                   (uint64_t)at[3] << 24;
    if (len > avail - WIRE_HEADER)
        return 0;
    if (wire_parse(at + WIRE_HEADER, (size_t)len, m) != 0)
        return gone(c, PC_EPROTOCOL, "the coordinator sent a malformed message");
    c->in_pos += WIRE_HEADER + (size_t)len;
    return 1;
}

/* Handle every whole frame received; the reply to request waiting (0: none) is returned
 * in *reply with 1. */
static int drain(pc_client *c, uint64_t waiting, wire_msg *reply) {
    int r;
    while ((r = next_frame(c, reply)) == 1) {
        int status = handle(c, reply, waiting);
        if (status)
            return status;
        if (waiting && reply->seq == waiting)
            return 1;
    }
    return r;
}

/* Send what the call put in c->out and wait for the reply to its last request (seq): PC_OK
 * with *reply, or the error (the coordinator's Error reply included). */
static int call(pc_client *c, uint64_t seq, wire_msg *reply) {
    int status = send_all(c, &c->out);
    if (status)
        return status;
    for (;;) {
        int r = drain(c, seq, reply);
        if (r == 1)
            break;
        if (r < 0)
            return r;
        if (c->fatal)
            return usable(c);
        if ((r = receive(c, 1)) < 0)
            return r;
    }
    if (reply->kind == WIRE_ERROR)
        return error_reply(reply, c->error, sizeof c->error);
    return PC_OK;
}

/* call(), whose reply must be of kind (the answer to request). */
static int call_for(pc_client *c, uint64_t seq, int kind, const char *request, wire_msg *reply) {
    int status = call(c, seq, reply);
    if (status == PC_OK && reply->kind != kind)
        return gone(c, PC_EPROTOCOL, "the coordinator's answer to %s is not the reply it needs",
                    request);
    return status;
}

/* A message this client did not wait for, or the one it waits for (seq waiting): map what
 * it brings, answer what it asks, keep the errors it carries. */
static int handle(pc_client *c, const wire_msg *m, uint64_t waiting) {
    int status = PC_OK;
    switch (m->kind) {
    case WIRE_CREATED:
    case WIRE_GOT:
    case WIRE_ARENA_GRANTED:
        status = map_segments(c, m->segments, m->kind != WIRE_GOT);
        break;
    case WIRE_CONNECTED:
    case WIRE_TABLES_MOVED:
        if (m->has_tables)
            status = map_tables(c, &m->tables);
        if (m->kind == WIRE_TABLES_MOVED)
            c->tables_asked = 0;
        break;
    case WIRE_RECLAIM: /* the store is short of memory: give back the arena's unused tail */
        if (c->arena.active) {
            drop_arena(c, 1);
            status = send_all(c, &c->aside);
        }
        break;
    case WIRE_SEGMENTS_DROPPED: {
        wire_list ids = m->ids;
        uint64_t id;
        while (wire_next_uint(&ids, &id) == 0) {
            segment *s = segments_find(&c->segs, id);
            if (s != NULL && s->users)
                s->dropped = 1; /* (unmapped when the last object in it goes) */
            else if (s != NULL)
                segments_remove(&c->segs, s);
        }
        break;
    }
    case WIRE_ERROR:
        if (m->seq == 0) /* the coordinator's reason for closing the connection */
            return gone(c, error_reply(m, c->error, sizeof c->error), "%s", c->error);
        if (m->seq != waiting && !c->deferred) { /* a call sent without waiting failed */
            c->deferred = error_reply(m, c->deferred_message, sizeof c->deferred_message);
        }
        /* a SealArena may have failed: the store and this client may disagree about the
         * arena, so write there no more */
        if (m->seq != waiting && c->arena.active && m->seq > c->arena.seq) {
            drop_arena(c, 1);
            status = send_all(c, &c->aside);
        }
        break;
    default:
        break;
    }
    return status;
}

/* Whether the connection is still there, looked at (one poll) at most every
 * LOOK_INTERVAL_NS, for a get served without a request: what the coordinator pushed is
 * handled (a Reclaim answered), a hang-up makes the client unusable. PC_OK or the status. */
static int look(pc_client *c) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    uint64_t t = (uint64_t)now.tv_sec * 1000000000u + (uint64_t)now.tv_nsec;
    if (t < c->next_look)
        return PC_OK;
    c->next_look = t + LOOK_INTERVAL_NS;
    wire_msg m;
    int r = drain(c, 0, &m); /* frames that came with an earlier reply */
    if (r < 0)
        return r;
    struct pollfd p = {c->fd, POLLIN | POLLRDHUP, 0};
    if (poll(&p, 1, 0) <= 0)
        return PC_OK;
    /* what came before a hang-up first: the coordinator's reason, if it gave one */
    while ((r = receive(c, 0)) > 0)
        if ((r = drain(c, 0, &m)) < 0)
            return r;
    if (c->fatal)
        return usable(c);
    if (p.revents & (POLLRDHUP | POLLHUP | POLLERR))
        return gone(c, PC_EDISCONNECTED, "the coordinator closed the connection");
    return PC_OK;
}

/* ------------------------------------------------------------------ connecting */

static int connect_socket(pc_client *c, const char *path) {
    const char *where = path;
    if (path == NULL) {
        path = getenv("PLASMA_COORD_SOCKET");
        where = "$PLASMA_COORD_SOCKET";
        if (path == NULL || !*path) {
            path = DEFAULT_SOCKET;
            where = "the default path; $PLASMA_COORD_SOCKET is not set";
        }
    }
    struct sockaddr_un addr = {0};
    addr.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof addr.sun_path)
        return gone(c, PC_EINVALID, "the socket path %s (%s) is longer than %zu bytes", path,
                    where, sizeof addr.sun_path - 1);
    strcpy(addr.sun_path, path);
    c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        return system_error(c, errno, "socket");
    if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        char buf[256];
        int err = errno;
        const char *why = strerror_r(err, buf, sizeof buf);
        if (where == path)
            return gone(c, PC_EDISCONNECTED, "cannot connect to plasma-coord at %s: %s", path,
                        why);
        return gone(c, PC_EDISCONNECTED, "cannot connect to plasma-coord at %s (%s): %s", path,
                    where, why);
    }
    return PC_OK;
}

int pc_connect(const char *socket_path, const char *client_name, pc_client **client) {
    pc_client *c = calloc(1, sizeof *c);
    *client = c;
    if (c == NULL)
        return PC_ENOMEM;
    c->fd = -1;
    c->alignment = 64;
    int status = connect_socket(c, socket_path);
    if (status)
        return status;
    const char *name = client_name != NULL ? client_name : "";
    size_t name_len = strnlen(name, 4096);
    cpu_set_t cpus;
    int ncpus = 0;
    if (sched_getaffinity(0, sizeof cpus, &cpus) == 0)
        ncpus = CPU_COUNT(&cpus);
    uint64_t seq = next_seq(c);
    wire_begin(&c->out, "Connect", 4);
    wire_uint(&c->out, seq);
    wire_uint(&c->out, PROTOCOL_VERSION);
    wire_str(&c->out, name, name_len);
    wire_array(&c->out, (uint32_t)ncpus);
    for (int cpu = 0; ncpus && cpu < CPU_SETSIZE; cpu++)
        if (CPU_ISSET(cpu, &cpus))
            wire_uint(&c->out, (uint64_t)cpu);
    wire_end(&c->out);
    wire_msg reply;
    status = call_for(c, seq, WIRE_CONNECTED, "Connect", &reply);
    if (status) {
        if (!c->fatal) /* (the coordinator closes a connection it refuses) */
            gone(c, status, "%s", c->error);
        return status;
    }
    c->client_id = reply.client_id;
    c->capacity = reply.capacity;
    if (reply.alignment && !(reply.alignment & (reply.alignment - 1)))
        c->alignment = reply.alignment;
    return PC_OK;
}

void pc_close(pc_client *c) {
    if (c == NULL)
        return;
    if (c->fd >= 0)
        close(c->fd);
    while (c->nfds)
        close(take_fd(c));
    c->reading = 0;
    close_tables(c, 1);
    segments_free(&c->segs);
    wire_out_free(&c->out);
    wire_out_free(&c->aside);
    free(c->in);
    free(c->fds);
    free(c->held);
    free(c->free);
    free(c);
}

const char *pc_error_message(const pc_client *c) {
    return c != NULL ? c->error : "out of memory for the client";
}

uint64_t pc_client_id(const pc_client *c) { return c->client_id; }

int pc_reads_directory(const pc_client *c) { return c->reading; }

/* ------------------------------------------------------------------ objects held */

static int hold(pc_client *c, const uint8_t id[PC_ID_SIZE], uint64_t segment_id, int64_t pin,
                const pcd_found *found, pc_object *obj) {
    if (c->nfree == 0) {
        uint32_t cap = c->held_cap ? 2 * c->held_cap : 64;
        held *entries = realloc(c->held, cap * sizeof *entries);
        if (entries == NULL)
            return fail(c, PC_ENOMEM, "out of memory for the objects held");
        c->held = entries;
        uint32_t *free_list = realloc(c->free, cap * sizeof *free_list);
        if (free_list == NULL)
            return fail(c, PC_ENOMEM, "out of memory for the objects held");
        c->free = free_list;
        for (uint32_t i = cap; i > c->held_cap; i--) {
            c->held[i - 1].stamp = 0;
            c->free[c->nfree++] = i - 1;
        }
        c->held_cap = cap;
    }
    uint32_t index = c->free[--c->nfree];
    held *h = &c->held[index];
    h->stamp++; /* odd: in use */
    h->pin = pin;
    if (found != NULL)
        h->found = *found;
    h->segment = segment_id;
    memcpy(h->id, id, PC_ID_SIZE);
    live_segment(c, segment_id)->users++;
    obj->handle = (uint64_t)h->stamp << 32 | index;
    return PC_OK;
}

int pc_release(pc_client *c, pc_object *obj) {
    if (c == NULL || obj == NULL)
        return PC_EINVALID;
    uint32_t index = (uint32_t)obj->handle, stamp = (uint32_t)(obj->handle >> 32);
    if (index >= c->held_cap || c->held[index].stamp != stamp || !(stamp & 1))
        return fail(c, PC_EINVALID, "release of an object this client does not hold");
    held *h = &c->held[index];
    if (h->pin >= 0) {
        pcd_unpin(&c->pins, (uint64_t)h->pin);
        /* its delete waits for pins: tell the coordinator, which scans again soon */
        if (c->reading && pcd_dying(&c->reader, &h->found)) {
            ids_request(&c->aside, "Unpin", next_seq(c), h->id, -1);
            send_all(c, &c->aside);
        }
    } else if (!c->fatal) {
        ids_request(&c->aside, "Release", next_seq(c), h->id, 0);
        send_all(c, &c->aside); /* (a broken connection shows on the next call) */
    }
    unuse_segment(c, h->segment);
    h->stamp++;
    c->free[c->nfree++] = index;
    memset(obj, 0, sizeof *obj);
    return PC_OK;
}

static int check_id(pc_client *c, const uint8_t *id) {
    return id == NULL ? fail(c, PC_EINVALID, "no object id") : PC_OK;
}

/* What a call that sends a request about object id checks first: a client, an id, a usable
 * connection. */
static int ready(pc_client *c, const uint8_t *id) {
    if (c == NULL)
        return PC_EINVALID;
    int status = check_id(c, id);
    return status ? status : usable(c);
}

/* ------------------------------------------------------------------ get */



static void fill(pc_object *obj, const segment *s, uint64_t offset, uint64_t data_size,
                 uint64_t metadata_size) {
    obj->data = s->base + offset;
    obj->data_size = data_size;
    obj->metadata = s->base + offset + data_size;
    obj->metadata_size = metadata_size;
}

/* The directory's read of id, pinned and re-checked (pcd_get): 1 with *obj filled, or 0
 * when it cannot serve it (then ask the coordinator). */
static int get_pinned(pc_client *c, const uint8_t id[PC_ID_SIZE], pc_object *obj) {
    pcd_found f;
    int64_t pin;
    if (!pcd_get(&c->reader, &c->pins, id, NULL, mapped, c, &f, &pin))
        return 0;
    segment *s = object_segment(c, f.segment, f.offset, f.data_size, f.metadata_size, 0);
    if (s == NULL || hold(c, id, f.segment, pin, &f, obj) != PC_OK) {
        pcd_unpin(&c->pins, (uint64_t)pin);
        return 0;
    }
    fill(obj, s, f.offset, f.data_size, f.metadata_size);
    return 1;
}

int pc_get(pc_client *c, const uint8_t id[PC_ID_SIZE], double timeout, pc_object *obj) {
    if (c == NULL || obj == NULL)
        return PC_EINVALID;
    memset(obj, 0, sizeof *obj);
    int status = check_id(c, id);
    if (status)
        return status;
    if (isnan(timeout))
        return fail(c, PC_EINVALID, "timeout must be seconds >= 0 or PC_WAIT_FOREVER, not NaN");
    if (c->reading && (status = look(c)) == PC_OK && c->reading && get_pinned(c, id, obj))
        return PC_OK;
    if (status || (status = usable(c)))
        return status;
    if (c->reading && !c->tables_asked && pcd_superseded(&c->reader)) {
        c->tables_asked = 1; /* ask for the current directory, with the Get */
        wire_begin(&c->out, "Tables", 2);
        wire_uint(&c->out, next_seq(c));
        wire_uint(&c->out, pcd_token(&c->reader));
        wire_end(&c->out);
    }
    uint64_t seq = next_seq(c);
    wire_begin(&c->out, "Get", 3);
    wire_uint(&c->out, seq);
    wire_one_id(&c->out, id);
    if (timeout < 0 || isinf(timeout))
        wire_nil(&c->out);
    else
        wire_f64(&c->out, timeout);
    wire_end(&c->out);
    wire_msg reply;
    if ((status = call_for(c, seq, WIRE_GOT, "Get", &reply)))
        return status;
    wire_location loc;
    const char *code;
    size_t code_len;
    if (wire_next_result(&reply.results, &loc, &code, &code_len))
        return gone(c, PC_EPROTOCOL, "the coordinator's answer to Get has no result");
    char hex[2 * PC_ID_SIZE + 1];
    pc_id_to_hex(id, hex);
    if (code != NULL)
        return fail(c, status_of(code, code_len), "object %s is not available (%.*s, timeout=%g)",
                    hex, (int)code_len, code, timeout);
    segment *s = object_segment(c, loc.segment, loc.offset, loc.data_size, loc.metadata_size, 0);
    if (s == NULL || (status = hold(c, id, loc.segment, -1, NULL, obj)) != PC_OK) {
        ids_request(&c->out, "Release", next_seq(c), id, 0); /* give the reference back */
        send_all(c, &c->out);
        if (status)
            return status;
        return gone(c, PC_EPROTOCOL, "object %s lies outside the segments mapped", hex);
    }
    fill(obj, s, loc.offset, loc.data_size, loc.metadata_size);
    return PC_OK;
}

/* ------------------------------------------------------------------ create and seal */

int pc_create(pc_client *c, const uint8_t id[PC_ID_SIZE], uint64_t data_size,
              const void *metadata, uint64_t metadata_size, uint8_t **data) {
    if (c == NULL || data == NULL)
        return PC_EINVALID;
    *data = NULL;
    if (metadata_size && metadata == NULL)
        return fail(c, PC_EINVALID, "metadata_size is %llu but metadata is NULL",
                    (unsigned long long)metadata_size);
    int status = ready(c, id);
    if (status)
        return status;
    uint64_t seq = next_seq(c);
    wire_begin(&c->out, "Create", 7);
    wire_uint(&c->out, seq);
    wire_bin(&c->out, id, PC_ID_SIZE);
    wire_uint(&c->out, data_size);
    wire_uint(&c->out, metadata_size);
    wire_nil(&c->out);    /* node: this client's */
    wire_f64(&c->out, 0); /* timeout: do not wait for room */
    wire_nil(&c->out);    /* interleave: none */
    wire_end(&c->out);
    wire_msg reply;
    if ((status = call_for(c, seq, WIRE_CREATED, "Create", &reply)))
        return status;
    wire_location loc;
    const char *code;
    size_t len;
    if (wire_next_result(&reply.results, &loc, &code, &len) || code != NULL)
        return gone(c, PC_EPROTOCOL, "the coordinator's answer to Create has no location");
    segment *s = object_segment(c, loc.segment, loc.offset, data_size, metadata_size, 1);
    if (s == NULL)
        return gone(c, PC_EPROTOCOL, "the object created lies outside the segments mapped");
    if (metadata_size)
        memcpy(s->base + loc.offset + data_size, metadata, metadata_size);
    *data = s->base + loc.offset;
    return PC_OK;
}

int pc_seal(pc_client *c, const uint8_t id[PC_ID_SIZE]) {
    int status = ready(c, id);
    if (status)
        return status;
    ids_request(&c->out, "Seal", next_seq(c), id, 0);
    ids_request(&c->out, "Release", next_seq(c), id, 0); /* the creator's reference */
    return send_all(c, &c->out);
}

/* A request [tag, seq, id] (Abort, Contains) and its reply, of kind. */
static int id_call(pc_client *c, const char *tag, const uint8_t *id, int kind, wire_msg *reply) {
    int status = ready(c, id);
    if (status)
        return status;
    uint64_t seq = next_seq(c);
    wire_begin(&c->out, tag, 2);
    wire_uint(&c->out, seq);
    wire_bin(&c->out, id, PC_ID_SIZE);
    wire_end(&c->out);
    return call_for(c, seq, kind, tag, reply);
}

int pc_abort(pc_client *c, const uint8_t id[PC_ID_SIZE]) {
    wire_msg reply;
    return id_call(c, "Abort", id, WIRE_OK, &reply);
}

static uint64_t aligned(pc_client *c, uint64_t n) {
    uint64_t mask = c->alignment - 1;
    return n > UINT64_MAX - mask ? UINT64_MAX : (n + mask) & ~mask;
}

/* Stop writing into the arena (its segment may go); with give_back, put a ReturnArena for
 * it in c->aside, to send. */
static void drop_arena(pc_client *c, int give_back) {
    c->arena.active = 0;
    unuse_segment(c, c->arena.segment);
    if (give_back) {
        wire_begin(&c->aside, "ReturnArena", 2);
        wire_uint(&c->aside, next_seq(c));
        wire_uint(&c->aside, c->arena.grant);
        wire_end(&c->aside);
    }
}

/* A fresh arena with room for an object of nbytes (the old one's tail goes back to the
 * store when the coordinator reads the request). */
static int new_arena(pc_client *c, uint64_t nbytes) {
    if (c->arena.active)
        drop_arena(c, 0);
    uint64_t need = aligned(c, nbytes) ? aligned(c, nbytes) : c->alignment;
    uint64_t most = c->capacity / 64 > ARENA_SIZE ? c->capacity / 64 : ARENA_SIZE;
    uint64_t room = ARENA_OBJECTS * need < most ? ARENA_OBJECTS * need : most;
    uint64_t size = room > ARENA_SIZE ? room : ARENA_SIZE;
    uint64_t seq = next_seq(c);
    wire_begin(&c->out, "Arena", 4);
    wire_uint(&c->out, seq);
    wire_uint(&c->out, size > need ? size : need);
    wire_nil(&c->out);
    wire_uint(&c->out, need);
    wire_end(&c->out);
    wire_msg reply;
    int status = call_for(c, seq, WIRE_ARENA_GRANTED, "Arena", &reply);
    if (status)
        return status;
    segment *s = object_segment(c, reply.segment, reply.offset, reply.size, 0, 1);
    if (s == NULL)
        return gone(c, PC_EPROTOCOL, "the arena granted lies outside the segments mapped");
    s->users++;
    c->arena.active = 1;
    c->arena.segment = reply.segment;
    c->arena.cursor = reply.offset;
    c->arena.end = reply.offset + reply.size;
    c->arena.grant = reply.grant;
    c->arena.seq = seq;
    return PC_OK;
}

int pc_create_and_seal(pc_client *c, const uint8_t id[PC_ID_SIZE], const void *data,
                       uint64_t data_size, const void *metadata, uint64_t metadata_size) {
    if (c == NULL)
        return PC_EINVALID;
    if ((data_size && data == NULL) || (metadata_size && metadata == NULL))
        return fail(c, PC_EINVALID, "a size is not 0 but its bytes are NULL");
    int status = ready(c, id);
    if (status)
        return status;
    if (data_size > ARENA_OBJECT_LIMIT || metadata_size > ARENA_OBJECT_LIMIT - data_size) {
        uint8_t *at;
        if ((status = pc_create(c, id, data_size, metadata, metadata_size, &at)))
            return status;
        memcpy(at, data, data_size);
        return pc_seal(c, id);
    }
    uint64_t total = data_size + metadata_size;
    uint64_t need = aligned(c, total) ? aligned(c, total) : c->alignment;
    if (!c->arena.active || c->arena.end - c->arena.cursor < need ||
        live_segment(c, c->arena.segment) == NULL) {
        if ((status = new_arena(c, total)))
            return status;
    }
    segment *s = live_segment(c, c->arena.segment);
    uint64_t offset = c->arena.cursor;
    c->arena.cursor += need;
    if (data_size)
        memcpy(s->base + offset, data, data_size);
    if (metadata_size)
        memcpy(s->base + offset + data_size, metadata, metadata_size);
    wire_begin(&c->out, "SealArena", 4);
    wire_uint(&c->out, next_seq(c));
    wire_uint(&c->out, c->arena.grant);
    wire_array(&c->out, 1);
    wire_array(&c->out, 4);
    wire_bin(&c->out, id, PC_ID_SIZE);
    wire_uint(&c->out, offset);
    wire_uint(&c->out, data_size);
    wire_uint(&c->out, metadata_size);
    wire_bool(&c->out, 0);
    wire_end(&c->out);
    return send_all(c, &c->out);
}

/* ------------------------------------------------------------------ the rest */

int pc_delete(pc_client *c, const uint8_t id[PC_ID_SIZE]) {
    int status = ready(c, id);
    if (status)
        return status;
    uint64_t seq = next_seq(c);
    ids_request(&c->out, "Delete", seq, id, -1);
    wire_msg reply;
    if ((status = call_for(c, seq, WIRE_DELETED, "Delete", &reply)))
        return status;
    if (reply.missing) {
        char hex[2 * PC_ID_SIZE + 1];
        pc_id_to_hex(id, hex);
        return fail(c, PC_EOBJECT_NOT_FOUND, "not found or not sealed: %s", hex);
    }
    return PC_OK;
}

int pc_contains(pc_client *c, const uint8_t id[PC_ID_SIZE], int *present) {
    if (present == NULL)
        return PC_EINVALID;
    wire_msg reply;
    int status = id_call(c, "Contains", id, WIRE_CONTAINED, &reply);
    if (status)
        return status;
    *present = reply.present;
    return PC_OK;
}

int pc_flush(pc_client *c) {
    if (c == NULL)
        return PC_EINVALID;
    int status = usable(c);
    if (status)
        return status;
    uint64_t seq = next_seq(c);
    wire_begin(&c->out, "Sync", 1);
    wire_uint(&c->out, seq);
    wire_end(&c->out);
    wire_msg reply;
    if ((status = call_for(c, seq, WIRE_OK, "Sync", &reply)))
        return status;
    return usable(c); /* what failed of the calls sent before it */
}

static int hex_digit(char ch) {
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

int pc_id_from_hex(const char *hex, uint8_t id[PC_ID_SIZE]) {
    if (hex == NULL || strnlen(hex, 2 * PC_ID_SIZE + 1) != 2 * PC_ID_SIZE)
        return PC_EINVALID;
    uint8_t out[PC_ID_SIZE];
    for (int i = 0; i < PC_ID_SIZE; i++) {
        int hi = hex_digit(hex[2 * i]), lo = hex_digit(hex[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return PC_EINVALID;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    memcpy(id, out, PC_ID_SIZE);
    return PC_OK;
}

void pc_id_to_hex(const uint8_t id[PC_ID_SIZE], char hex[2 * PC_ID_SIZE + 1]) {
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < PC_ID_SIZE; i++) {
        hex[2 * i] = digits[id[i] >> 4];
        hex[2 * i + 1] = digits[id[i] & 15];
    }
    hex[2 * PC_ID_SIZE] = '\0';
}
