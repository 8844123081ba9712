/* The wire protocol's frames, written and read (see wire.h).
 *
 * A minimal MessagePack writer and reader for the fixed shapes of the messages this client
 * sends and reads, rather than a MessagePack library: the shapes are a dozen arrays of
 * integers, strings and byte strings, so the whole codec is this file; it allocates
 * nothing when reading (strings point into the frame), skips what it does not know with a
 * loop (no recursion: any nesting is safe), and leaves the client with no dependency
 * beyond libc. Every read is bounds-checked: whatever the bytes, parsing either fills the
 * message or returns -1. */
#include "wire.h"

#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ writing */

void wire_out_free(wire_out *out) {
    free(out->buf);
    out->buf = NULL;
    out->len = out->cap = 0;
    out->failed = 0;
}

static uint8_t *room(wire_out *out, size_t n) {
    if (out->failed)
        return NULL;
    if (out->cap - out->len < n) {
        size_t cap = out->cap ? out->cap : 256;
        while (cap - out->len < n)
            cap *= 2;
        uint8_t *buf = realloc(out->buf, cap);
        if (buf == NULL) {
            out->failed = 1;
            return NULL;
        }
        out->buf = buf;
        out->cap = cap;
    }
    uint8_t *at = out->buf + out->len;
    out->len += n;
    return at;
}

static void put_be(wire_out *out, uint8_t type, uint64_t v, unsigned bytes) {
    uint8_t *at = room(out, 1 + bytes);
    if (at == NULL)
        return;
    at[0] = type;
    for (unsigned i = 0; i < bytes; i++)
        at[1 + i] = (uint8_t)(v >> (8 * (bytes - 1 - i)));
}

void wire_array(wire_out *out, uint32_t n) {
    if (n < 16) {
        uint8_t *at = room(out, 1);
        if (at != NULL)
            at[0] = (uint8_t)(0x90 | n);
    } else if (n <= 0xffff)
        put_be(out, 0xdc, n, 2);
    else
        put_be(out, 0xdd, n, 4);
}

void wire_uint(wire_out *out, uint64_t v) {
    if (v < 128) {
        uint8_t *at = room(out, 1);
        if (at != NULL)
            at[0] = (uint8_t)v;
    } else if (v <= 0xff)
        put_be(out, 0xcc, v, 1);
    else if (v <= 0xffff)
        put_be(out, 0xcd, v, 2);
    else if (v <= 0xffffffffu)
        put_be(out, 0xce, v, 4);
    else
        put_be(out, 0xcf, v, 8);
}

void wire_f64(wire_out *out, double v) {
    uint64_t bits;
    memcpy(&bits, &v, 8);
    put_be(out, 0xcb, bits, 8);
}

void wire_nil(wire_out *out) {
    uint8_t *at = room(out, 1);
    if (at != NULL)
        at[0] = 0xc0;
}

void wire_bool(wire_out *out, int v) {
    uint8_t *at = room(out, 1);
    if (at != NULL)
        at[0] = v ? 0xc3 : 0xc2;
}

static void put_bytes(wire_out *out, const void *p, size_t n) {
    uint8_t *at = room(out, n);
    if (at != NULL && n)
        memcpy(at, p, n);
}

void wire_str(wire_out *out, const char *s, size_t n) {
    if (n < 32) {
        uint8_t *at = room(out, 1);
        if (at != NULL)
            at[0] = (uint8_t)(0xa0 | n);
    } else if (n <= 0xff)
        put_be(out, 0xd9, n, 1);
    else if (n <= 0xffff)
        put_be(out, 0xda, n, 2);
    else
        put_be(out, 0xdb, n, 4);
    put_bytes(out, s, n);
}

void wire_bin(wire_out *out, const void *p, size_t n) {
    if (n <= 0xff)
        put_be(out, 0xc4, n, 1);
    else if (n <= 0xffff)
        put_be(out, 0xc5, n, 2);
    else
        put_be(out, 0xc6, n, 4);
    put_bytes(out, p, n);
}

void wire_one_id(wire_out *out, const uint8_t id[WIRE_ID_SIZE]) {
    wire_array(out, 1);
    wire_bin(out, id, WIRE_ID_SIZE);
}

void wire_begin(wire_out *out, const char *tag, uint32_t nfields) {
    out->frame = out->len;
    room(out, WIRE_HEADER);
    wire_array(out, nfields + 1);
    wire_str(out, tag, strlen(tag));
}

int wire_end(wire_out *out) {
    if (out->failed)
        return -1;
    uint64_t n = out->len - out->frame - WIRE_HEADER;
    for (int i = 0; i < 4; i++)
        out->buf[out->frame + i] = (uint8_t)(n >> (8 * i));
    return 0;
}

/* ------------------------------------------------------------------ reading */

static int get_be(wire_in *in, unsigned bytes, uint64_t *v) {
    if ((size_t)(in->end - in->p) < bytes)
        return -1;
    uint64_t x = 0;
    for (unsigned i = 0; i < bytes; i++)
        x = x << 8 | in->p[i];
    in->p += bytes;
    *v = x;
    return 0;
}

static int next_byte(wire_in *in, uint8_t *b) {
    if (in->p >= in->end)
        return -1;
    *b = *in->p++;
    return 0;
}

static int read_array(wire_in *in, uint32_t *n) {
    uint8_t b;
    uint64_t v;
    if (next_byte(in, &b))
        return -1;
    if ((b & 0xf0) == 0x90) {
        *n = b & 0x0f;
        return 0;
    }
    if (b != 0xdc && b != 0xdd)
        return -1;
    if (get_be(in, b == 0xdc ? 2 : 4, &v))
        return -1;
    *n = (uint32_t)v;
    return 0;
}

static int read_int(wire_in *in, int64_t *out) {
    uint8_t b;
    uint64_t v;
    if (next_byte(in, &b))
        return -1;
    if (b < 0x80) {
        *out = b;
        return 0;
    }
    if (b >= 0xe0) {
        *out = (int8_t)b;
        return 0;
    }
    static const unsigned sizes[8] = {1, 2, 4, 8, 1, 2, 4, 8}; /* 0xcc..0xcf, 0xd0..0xd3 */
    if (b < 0xcc || b > 0xd3 || get_be(in, sizes[b - 0xcc], &v))
        return -1;
    if (b <= 0xcf) {
        if (v > INT64_MAX)
            return -1;
        *out = (int64_t)v;
        return 0;
    }
    unsigned bits = 8 * sizes[b - 0xcc];
    if (bits < 64 && (v >> (bits - 1)) & 1)
        v |= ~UINT64_C(0) << bits; /* sign-extend */
    memcpy(out, &v, 8);
    return 0;
}

/* A non-negative integer: up to 2**64 - 1 as msgspec writes it (uint64), or a signed
 * format holding a value >= 0. */
static int read_uint(wire_in *in, uint64_t *out) {
    if (in->p < in->end && *in->p >= 0xcc && *in->p <= 0xcf) {
        uint8_t b = *in->p++;
        return get_be(in, 1u << (b - 0xcc), out);
    }
    int64_t v;
    if (read_int(in, &v) || v < 0)
        return -1;
    *out = (uint64_t)v;
    return 0;
}

/* A str (0xa0-0xbf, 0xd9-0xdb) or a bin (0xc4-0xc6): its bytes. */
static int read_raw(wire_in *in, int want_str, const uint8_t **p, size_t *n) {
    uint8_t b;
    uint64_t len;
    if (next_byte(in, &b))
        return -1;
    if (want_str && (b & 0xe0) == 0xa0)
        len = b & 0x1f;
    else if (want_str && b >= 0xd9 && b <= 0xdb) {
        if (get_be(in, 1u << (b - 0xd9), &len))
            return -1;
    } else if (!want_str && b >= 0xc4 && b <= 0xc6) {
        if (get_be(in, 1u << (b - 0xc4), &len))
            return -1;
    } else
        return -1;
    if ((uint64_t)(in->end - in->p) < len)
        return -1;
    *p = in->p;
    *n = (size_t)len;
    in->p += len;
    return 0;
}

static int read_str(wire_in *in, const char **s, size_t *n) {
    const uint8_t *p;
    if (read_raw(in, 1, &p, n))
        return -1;
    *s = (const char *)p;
    return 0;
}

static int read_bool(wire_in *in, int *v) {
    uint8_t b;
    if (next_byte(in, &b) || (b != 0xc2 && b != 0xc3))
        return -1;
    *v = b == 0xc3;
    return 0;
}

/* Consume a nil: 1; anything else is left in place: 0. */
static int take_nil(wire_in *in) {
    if (in->p < in->end && *in->p == 0xc0) {
        in->p++;
        return 1;
    }
    return 0;
}

/* Skip n values, nested or not: a loop over how many values are still to skip (each
 * container adds its items), so no input can make it recurse. */
static int skip(wire_in *in, uint64_t n) {
    while (n) {
        uint8_t b;
        uint64_t len = 0, items = 0;
        if (next_byte(in, &b))
            return -1;
        n--;
        if (b < 0x80 || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3)
            continue;
        if ((b & 0xf0) == 0x80)
            items = 2u * (b & 0x0f);
        else if ((b & 0xf0) == 0x90)
            items = b & 0x0f;
        else if ((b & 0xe0) == 0xa0)
            len = b & 0x1f;
        else if (b >= 0xc4 && b <= 0xc6) { /* bin */
            if (get_be(in, 1u << (b - 0xc4), &len))
                return -1;
        } else if (b >= 0xc7 && b <= 0xc9) { /* ext: length, type, data */
            if (get_be(in, 1u << (b - 0xc7), &len))
                return -1;
            len += 1;
        } else if (b == 0xca || b == 0xcb)
            len = b == 0xca ? 4 : 8;
        else if (b >= 0xcc && b <= 0xd3)
            len = 1u << ((b - 0xcc) & 3);
        else if (b >= 0xd4 && b <= 0xd8) /* fixext: type, 1-16 bytes */
            len = 1 + (1u << (b - 0xd4));
        else if (b >= 0xd9 && b <= 0xdb) {
            if (get_be(in, 1u << (b - 0xd9), &len))
                return -1;
        } else if (b == 0xdc || b == 0xdd) {
            if (get_be(in, b == 0xdc ? 2 : 4, &items))
                return -1;
        } else if (b == 0xde || b == 0xdf) {
            if (get_be(in, b == 0xde ? 2 : 4, &items))
                return -1;
            items *= 2;
        } else
            return -1; /* 0xc1: never used */
        if ((uint64_t)(in->end - in->p) < len)
            return -1;
        in->p += len;
        /* every value takes a byte at least: more items than bytes left is malformed
         * (and n cannot overflow) */
        if (items > (uint64_t)(in->end - in->p))
            return -1;
        n += items;
    }
    return 0;
}

/* A record: an array of at least `need` fields; *extra is how many follow them. */
static int record(wire_in *in, uint32_t need, uint32_t *extra) {
    uint32_t n;
    if (read_array(in, &n) || n < need)
        return -1;
    *extra = n - need;
    return 0;
}

static int read_location(wire_in *in, wire_location *loc) {
    uint32_t extra;
    if (record(in, 5, &extra) || read_uint(in, &loc->segment) || read_uint(in, &loc->offset) ||
        read_uint(in, &loc->data_size) || read_uint(in, &loc->metadata_size) ||
        read_int(in, &loc->node))
        return -1;
    return skip(in, extra);
}

static int read_segment(wire_in *in, wire_segment *seg) {
    uint32_t extra;
    if (record(in, 4, &extra) || read_uint(in, &seg->id) || read_uint(in, &seg->size) ||
        read_int(in, &seg->node) || read_uint(in, &seg->page_size))
        return -1;
    seg->writable = 1;
    if (extra) {
        extra--;
        if (read_bool(in, &seg->writable))
            return -1;
    }
    return skip(in, extra);
}

static int read_result(wire_in *in, wire_location *loc, const char **code, size_t *n) {
    if (in->p < in->end && ((*in->p & 0xe0) == 0xa0 || (*in->p >= 0xd9 && *in->p <= 0xdb)))
        return read_str(in, code, n);
    *code = NULL;
    *n = 0;
    return read_location(in, loc);
}

static int read_tables(wire_in *in, int *has, wire_tables *t) {
    uint32_t extra;
    *has = 0;
    if (take_nil(in))
        return 0;
    if (record(in, 2, &extra) || read_uint(in, &t->directory_size) ||
        read_uint(in, &t->access_size))
        return -1;
    t->pin_size = 0;
    if (extra) {
        extra--;
        if (read_uint(in, &t->pin_size))
            return -1;
    }
    *has = 1;
    return skip(in, extra);
}

enum { LIST_LOCATIONS, LIST_RESULTS, LIST_SEGMENTS, LIST_UINTS, LIST_ANY };

/* Read a list of items of kind, each checked, into *list. */
static int read_list(wire_in *in, int kind, wire_list *list) {
    uint32_t n;
    if (read_array(in, &n))
        return -1;
    list->items.p = in->p;
    list->count = n;
    for (uint32_t i = 0; i < n; i++) {
        wire_location loc;
        wire_segment seg;
        const char *code;
        size_t len;
        uint64_t v;
        int bad = kind == LIST_LOCATIONS  ? read_location(in, &loc)
                  : kind == LIST_RESULTS  ? read_result(in, &loc, &code, &len)
                  : kind == LIST_SEGMENTS ? read_segment(in, &seg)
                  : kind == LIST_UINTS    ? read_uint(in, &v)
                                          : skip(in, 1);
        if (bad)
            return -1;
    }
    list->items.end = in->p;
    return 0;
}

int wire_next_segment(wire_list *list, wire_segment *out) {
    if (list->count == 0 || read_segment(&list->items, out))
        return -1;
    list->count--;
    return 0;
}

int wire_next_result(wire_list *list, wire_location *loc, const char **code, size_t *code_len) {
    if (list->count == 0 || read_result(&list->items, loc, code, code_len))
        return -1;
    list->count--;
    return 0;
}

int wire_next_uint(wire_list *list, uint64_t *out) {
    if (list->count == 0 || read_uint(&list->items, out))
        return -1;
    list->count--;
    return 0;
}

static const struct {
    const char *tag;
    int kind;
    uint32_t fields; /* required, after the tag and seq */
} KINDS[] = {
    {"Connected", WIRE_CONNECTED, 8},      {"Ok", WIRE_OK, 0},
    {"Error", WIRE_ERROR, 2},              {"Created", WIRE_CREATED, 1},
    {"Got", WIRE_GOT, 1},                  {"Deleted", WIRE_DELETED, 3},
    {"Contained", WIRE_CONTAINED, 1},      {"ArenaGranted", WIRE_ARENA_GRANTED, 4},
    {"TablesMoved", WIRE_TABLES_MOVED, 0}, {"Reclaim", WIRE_RECLAIM, 0},
    {"SegmentsDropped", WIRE_SEGMENTS_DROPPED, 1},
};

/* The fields of msg's kind after seq; *left counts down the fields not read yet (the
 * optional ones are read while some are left). */
static int read_fields(wire_in *in, wire_msg *m, uint32_t *left) {
    wire_list deleted, deferred, missing;
    switch (m->kind) {
    case WIRE_CONNECTED:
        *left -= 8;
        if (read_uint(in, &m->client_id) || read_uint(in, &m->protocol_version) ||
            read_uint(in, &m->capacity) || skip(in, 2) || read_uint(in, &m->max_frame) ||
            read_uint(in, &m->max_object_size))
            return -1;
        m->node = -1;
        if (!take_nil(in) && read_int(in, &m->node))
            return -1;
        m->alignment = 64;
        if (*left && (--*left, read_uint(in, &m->alignment)))
            return -1;
        if (*left && (--*left, read_tables(in, &m->has_tables, &m->tables)))
            return -1;
        return 0;
    case WIRE_ERROR:
        *left -= 2;
        return read_str(in, &m->code, &m->code_len) || read_str(in, &m->message, &m->message_len);
    case WIRE_CREATED:
    case WIRE_GOT:
        *left -= 1;
        if (read_list(in, m->kind == WIRE_GOT ? LIST_RESULTS : LIST_LOCATIONS, &m->results))
            return -1;
        break; /* segments follow */
    case WIRE_DELETED:
        *left -= 3;
        if (read_list(in, LIST_ANY, &deleted) || read_list(in, LIST_ANY, &deferred) ||
            read_list(in, LIST_ANY, &missing))
            return -1;
        m->missing = missing.count;
        return 0;
    case WIRE_CONTAINED:
        *left -= 1;
        return read_bool(in, &m->present);
    case WIRE_ARENA_GRANTED:
        *left -= 4;
        if (read_uint(in, &m->segment) || read_uint(in, &m->offset) || read_uint(in, &m->size) ||
            read_uint(in, &m->grant))
            return -1;
        break; /* segments follow */
    case WIRE_TABLES_MOVED:
        if (*left && (--*left, read_tables(in, &m->has_tables, &m->tables)))
            return -1;
        return 0;
    case WIRE_SEGMENTS_DROPPED:
        *left -= 1;
        return read_list(in, LIST_UINTS, &m->ids);
    default:
        return 0;
    }
    if (*left && (--*left, read_list(in, LIST_SEGMENTS, &m->segments)))
        return -1;
    return 0;
}

int wire_parse(const uint8_t *payload, size_t len, wire_msg *m) {
    wire_in in = {payload, payload + len};
    uint32_t n;
    const char *tag;
    size_t tag_len;
    memset(m, 0, sizeof *m);
    m->node = -1;
    if (read_array(&in, &n) || n < 2 || read_str(&in, &tag, &tag_len) || read_uint(&in, &m->seq))
        return -1;
    uint32_t left = n - 2;
    for (size_t i = 0; i < sizeof KINDS / sizeof KINDS[0]; i++)
        if (strlen(KINDS[i].tag) == tag_len && memcmp(KINDS[i].tag, tag, tag_len) == 0) {
            if (left < KINDS[i].fields)
                return -1;
            m->kind = KINDS[i].kind;
            break;
        }
    if (read_fields(&in, m, &left) || skip(&in, left))
        return -1;
    return in.p == in.end ? 0 : -1;
}
