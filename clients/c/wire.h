/* The wire protocol of plasma-coord (internal to the C client): frames of MessagePack,
 * written and read for the fixed message shapes this client uses (docs/protocol.md,
 * plasma/protocol.py). Pure code: no I/O, no allocation but the output buffer's growth.
 *
 * Every message is a tagged array-like msgspec Struct: an array of the class name and the
 * fields in declaration order. Records inside messages (SegmentInfo, ObjectLocation,
 * TablesInfo, ArenaObject) are arrays of their fields, untagged. A reader takes the
 * fields it knows and skips any that follow (a newer coordinator may add some at the
 * end); a record shorter than its required fields, or of the wrong types, is malformed. */
#ifndef PLASMA_COORD_WIRE_H
#define PLASMA_COORD_WIRE_H

#include <stddef.h>
#include <stdint.h>

#define WIRE_HEADER 4 /* u32 little-endian payload length */
#define WIRE_ID_SIZE 20

/* ------------------------------------------------------------------ writing */

typedef struct wire_out {
    uint8_t *buf;
    size_t len, cap;
    size_t frame; /* where the current frame's header is */
    int failed;   /* out of memory: every later write is dropped */
} wire_out;

void wire_out_free(wire_out *out);
/* Start a frame of message tag with nfields fields after the tag. */
void wire_begin(wire_out *out, const char *tag, uint32_t nfields);
/* Finish the frame begun last (its length); 0, or -1 when out of memory. */
int wire_end(wire_out *out);
void wire_array(wire_out *out, uint32_t n);
void wire_uint(wire_out *out, uint64_t v);
void wire_f64(wire_out *out, double v);
void wire_nil(wire_out *out);
void wire_bool(wire_out *out, int v);
void wire_str(wire_out *out, const char *s, size_t n);
void wire_bin(wire_out *out, const void *p, size_t n);
/* A list of one id: [id] */
void wire_one_id(wire_out *out, const uint8_t id[WIRE_ID_SIZE]);

/* ------------------------------------------------------------------ reading */

typedef struct wire_in {
    const uint8_t *p, *end;
} wire_in;

/* A list checked while parsing: its count and its items' bytes, read item by item. */
typedef struct wire_list {
    wire_in items;
    uint32_t count;
} wire_list;

typedef struct wire_location {
    uint64_t segment, offset, data_size, metadata_size;
    int64_t node;
} wire_location;

typedef struct wire_segment {
    uint64_t id, size, page_size;
    int64_t node;
    int writable;
} wire_segment;

typedef struct wire_tables {
    uint64_t directory_size, access_size, pin_size;
} wire_tables;

/* the replies and pushes this client reads */
enum {
    WIRE_UNKNOWN = 0, /* a message this client ignores (after its seq) */
    WIRE_CONNECTED,
    WIRE_OK,
    WIRE_ERROR,
    WIRE_CREATED,
    WIRE_GOT,
    WIRE_DELETED,
    WIRE_CONTAINED,
    WIRE_ARENA_GRANTED,
    WIRE_TABLES_MOVED,
    WIRE_RECLAIM,
    WIRE_SEGMENTS_DROPPED,
};

typedef struct wire_msg {
    int kind;
    uint64_t seq;
    /* Connected */
    uint64_t client_id, protocol_version, capacity, max_frame, max_object_size, alignment;
    int64_t node; /* -1: none */
    /* Connected, TablesMoved */
    int has_tables;
    wire_tables tables;
    /* Error */
    const char *code, *message;
    size_t code_len, message_len;
    /* Created: locations; Got: results (a location or an error code each) */
    wire_list results;
    /* Created, Got, ArenaGranted: segments to map, in order */
    wire_list segments;
    /* ArenaGranted */
    uint64_t segment, offset, size, grant;
    /* Deleted: how many were missing; Contained */
    uint32_t missing;
    int present;
    /* SegmentsDropped */
    wire_list ids;
} wire_msg;

/* Parse one frame's payload: 0, or -1 when it is malformed. Lists are checked whole;
 * strings point into the payload. */
int wire_parse(const uint8_t *payload, size_t len, wire_msg *msg);

/* The next item of a checked list (0, or -1 past the end). */
int wire_next_segment(wire_list *list, wire_segment *out);
/* A location (*code NULL), or an error code string. */
int wire_next_result(wire_list *list, wire_location *loc, const char **code, size_t *code_len);
int wire_next_uint(wire_list *list, uint64_t *out);

#endif
