/* The CPython face of bulk.c: the coordinator's pin scans, a rebuild's placement and moves,
 * and the generation index's compaction, each one call (plasma.directory.PinScanner,
 * plasma.directory.Directory.copy_from, plasma.store.generations.GenerationIndex). Added to
 * plasma._native._directory by bulk_add. */
#include "bulk.h"
#include "module.h"

static PyObject *error(int code) {
    if (code == PCD_ENOMEM)
        return PyErr_NoMemory();
    PyErr_SetString(code == PCD_ERANGE ? PyExc_IndexError : PyExc_ValueError,
                    pcd_strerror(code));
    return NULL;
}

/* ------------------------------------------------------------------ pin scans */

/* The pin tables of a scan: each one's buffer, held for the scan. */
typedef struct {
    Py_buffer *views;
    Py_ssize_t n;
} tables_t;

static void tables_release(tables_t *t) {
    for (Py_ssize_t i = 0; i < t->n; i++)
        PyBuffer_Release(&t->views[i]);
    PyMem_Free(t->views);
    t->views = NULL;
    t->n = 0;
}

static int tables_get(PyObject *seq, tables_t *t) {
    t->views = NULL;
    t->n = 0;
    PyObject *fast = PySequence_Fast(seq, "the pin tables are a sequence of buffers");
    if (fast == NULL)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    t->views = PyMem_Calloc(n ? (size_t)n : 1, sizeof(Py_buffer));
    if (t->views == NULL) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_buffer *view = &t->views[i];
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(fast, i), view, PyBUF_SIMPLE) < 0)
            break;
        t->n++;
        if (view->len && ((uintptr_t)view->buf & 7) != 0) {
            PyErr_SetString(PyExc_ValueError, "a pin table must be 8-byte aligned");
            break;
        }
    }
    Py_DECREF(fast);
    if (PyErr_Occurred()) {
        tables_release(t);
        return -1;
    }
    return 0;
}

/* pin_count(tables): the pins (nonzero entries below the mark) in all of them */
static PyObject *pin_count(PyObject *module, PyObject *seq) {
    tables_t t;
    if (tables_get(seq, &t) < 0)
        return NULL;
    unsigned long long count = 0;
    for (Py_ssize_t i = 0; i < t.n; i++) {
        const void *base = t.views[i].buf;
        uint64_t below = pcd_pins_below_mark(base, (size_t)t.views[i].len);
        for (uint64_t e = 0; e < below; e++)
            count += pcd_pins_entry(base, e) != 0;
    }
    tables_release(&t);
    return PyLong_FromUnsignedLongLong(count);
}

/* pins_by_table(tables): each table's pins (nonzero entries below the mark), in order */
static PyObject *pins_by_table(PyObject *module, PyObject *seq) {
    tables_t t;
    if (tables_get(seq, &t) < 0)
        return NULL;
    PyObject *out = PyList_New(t.n);
    for (Py_ssize_t i = 0; out != NULL && i < t.n; i++) {
        const void *base = t.views[i].buf;
        uint64_t below = pcd_pins_below_mark(base, (size_t)t.views[i].len);
        PyObject *pins = PyList_New(0);
        for (uint64_t e = 0; pins != NULL && e < below; e++) {
            uint64_t gen = pcd_pins_entry(base, e);
            if (gen == 0)
                continue;
            PyObject *value = PyLong_FromUnsignedLongLong(gen);
            if (value == NULL || PyList_Append(pins, value) < 0)
                Py_CLEAR(pins);
            Py_XDECREF(value);
        }
        if (pins == NULL)
            Py_CLEAR(out);
        else
            PyList_SET_ITEM(out, i, pins);
    }
    tables_release(&t);
    return out;
}

/* the distinct nonzero generations of an iterable of ints */
static int wanted_from(PyObject *generations, pcd_wanted *w) {
    Py_ssize_t hint = PyObject_LengthHint(generations, 0);
    if (hint < 0)
        return -1;
    if (pcd_wanted_init(w, (uint64_t)hint) != PCD_OK) {
        PyErr_NoMemory();
        return -1;
    }
    PyObject *it = PyObject_GetIter(generations);
    if (it == NULL) {
        pcd_wanted_free(w);
        return -1;
    }
    PyObject *item;
    while ((item = PyIter_Next(it)) != NULL) {
        unsigned long long gen = PyLong_AsUnsignedLongLong(item);
        Py_DECREF(item);
        if (gen == (unsigned long long)-1 && PyErr_Occurred())
            break;
        int rc = pcd_wanted_add(w, gen);
        if (rc != PCD_OK) {
            error(rc);
            break;
        }
    }
    Py_DECREF(it);
    if (PyErr_Occurred()) {
        pcd_wanted_free(w);
        return -1;
    }
    return 0;
}

static int by_value(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

enum { MATCH_PINNED = 0, MATCH_COUNTS = 1, MATCH_HOLDERS = 2 };

/* a holder: (table, next holder of the same generation) */
typedef struct {
    uint32_t table;
    uint32_t next;
} holder_t;
#define NONE UINT32_MAX

typedef struct {
    uint64_t *count; /* per wanted: entries equal to it */
    uint32_t *head, *tail; /* per wanted (holders): its first and last holder, NONE */
    holder_t *holders;
    uint64_t nholders, room;
} matches_t;

static void matches_free(matches_t *m) {
    PyMem_Free(m->count);
    PyMem_Free(m->head);
    PyMem_Free(m->tail);
    PyMem_Free(m->holders);
}

/* table (a holder of wanted index found) added to its holders, unless it is the last one */
static int add_holder(matches_t *m, int64_t found, uint32_t table) {
    if (m->tail[found] != NONE && m->holders[m->tail[found]].table == table)
        return 0; /* (a table is a holder once) */
    if (m->nholders == m->room) {
        if (m->room >= NONE / 2)
            return -1;
        uint64_t room = m->room ? 2 * m->room : 64;
        holder_t *more = PyMem_Realloc(m->holders, room * sizeof *more);
        if (more == NULL)
            return -1;
        m->holders = more;
        m->room = room;
    }
    uint32_t h = (uint32_t)m->nholders++;
    m->holders[h].table = table;
    m->holders[h].next = NONE;
    if (m->tail[found] == NONE)
        m->head[found] = h;
    else
        m->holders[m->tail[found]].next = h;
    m->tail[found] = h;
    return 0;
}

/* one pass: every entry below the marks of t matched against w (each entry read once) */
static int match(const tables_t *t, const pcd_wanted *w, int holders, matches_t *m) {
    memset(m, 0, sizeof *m);
    m->count = PyMem_Calloc(w->n, sizeof *m->count);
    if (holders) {
        m->head = PyMem_Malloc(w->n * sizeof *m->head);
        m->tail = PyMem_Malloc(w->n * sizeof *m->tail);
    }
    if (m->count == NULL || (holders && (m->head == NULL || m->tail == NULL)))
        goto nomem;
    if (holders)
        for (uint64_t i = 0; i < w->n; i++)
            m->head[i] = m->tail[i] = NONE;
    for (Py_ssize_t i = 0; i < t->n; i++) {
        const void *base = t->views[i].buf;
        uint64_t below = pcd_pins_below_mark(base, (size_t)t->views[i].len);
        if (w->n == 1) { /* (one generation, the common case: a plain comparison) */
            uint64_t key = w->keys[0], hits = 0;
            for (uint64_t e = 0; e < below; e++)
                hits += pcd_pins_entry(base, e) == key;
            m->count[0] += hits;
            if (hits && holders && add_holder(m, 0, (uint32_t)i) < 0)
                goto nomem;
            continue;
        }
        for (uint64_t e = 0; e < below; e++) {
            uint64_t gen = pcd_pins_entry(base, e); /* read once */
            if (gen == 0)
                continue;
            int64_t found = pcd_wanted_find(w, gen);
            if (found < 0)
                continue;
            m->count[found]++;
            if (holders && add_holder(m, found, (uint32_t)i) < 0)
                goto nomem;
        }
    }
    return 0;
nomem:
    matches_free(m);
    PyErr_NoMemory();
    return -1;
}

/* the wanted generations some entry matched, ascending (a new array, *n of them) */
static uint64_t *matched_sorted(const pcd_wanted *w, const matches_t *m, uint64_t *n) {
    uint64_t *gens = PyMem_Malloc((w->n ? w->n : 1) * sizeof *gens);
    *n = 0;
    if (gens == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    for (uint64_t i = 0; i < w->n; i++)
        if (m->count[i])
            gens[(*n)++] = w->keys[i];
    qsort(gens, *n, sizeof *gens, by_value);
    return gens;
}

/* the result of one of the questions, from the matches */
static PyObject *answer(int what, const pcd_wanted *w, const matches_t *m, PyObject *clients) {
    if (what == MATCH_PINNED) {
        PyObject *out = PySet_New(NULL);
        for (uint64_t i = 0; out != NULL && i < w->n; i++) {
            if (!m->count[i])
                continue;
            PyObject *gen = PyLong_FromUnsignedLongLong(w->keys[i]);
            if (gen == NULL || PySet_Add(out, gen) < 0)
                Py_CLEAR(out);
            Py_XDECREF(gen);
        }
        return out;
    }
    uint64_t n;
    uint64_t *gens = matched_sorted(w, m, &n);
    if (gens == NULL)
        return NULL;
    PyObject *out = PyDict_New();
    for (uint64_t k = 0; out != NULL && k < n; k++) {
        int64_t i = pcd_wanted_find(w, gens[k]);
        PyObject *gen = PyLong_FromUnsignedLongLong(gens[k]);
        PyObject *value = NULL;
        if (gen != NULL && what == MATCH_COUNTS)
            value = PyLong_FromUnsignedLongLong(m->count[i]);
        else if (gen != NULL) {
            value = PyList_New(0);
            for (uint32_t h = m->head[i]; value != NULL && h != NONE; h = m->holders[h].next)
                if (PyList_Append(value, PySequence_Fast_GET_ITEM(clients, m->holders[h].table)) <
                    0)
                    Py_CLEAR(value);
        }
        if (value == NULL || PyDict_SetItem(out, gen, value) < 0)
            Py_CLEAR(out);
        Py_XDECREF(gen);
        Py_XDECREF(value);
    }
    PyMem_Free(gens);
    return out;
}

/* pins_match(tables, generations, what, clients): one pass over tables for the distinct
 * nonzero generations; None when there are none (no pass), else by what: 0 the set of
 * those pinned, 1 {generation: pins} of those pinned, 2 {generation: [clients[table] of
 * each table pinning it, in order]} (both dicts ascending by generation) */
static PyObject *pins_match(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "pins_match(tables, generations, what, clients)");
        return NULL;
    }
    long what = PyLong_AsLong(args[2]);
    if (what == -1 && PyErr_Occurred())
        return NULL;
    if (what < MATCH_PINNED || what > MATCH_HOLDERS) {
        PyErr_Format(PyExc_ValueError, "what: 0, 1 or 2, not %ld", what);
        return NULL;
    }
    pcd_wanted w;
    if (wanted_from(args[1], &w) < 0)
        return NULL;
    if (w.n == 0) {
        pcd_wanted_free(&w);
        Py_RETURN_NONE;
    }
    PyObject *clients = NULL, *out = NULL;
    tables_t t;
    if (tables_get(args[0], &t) < 0) {
        pcd_wanted_free(&w);
        return NULL;
    }
    if (what == MATCH_HOLDERS) {
        clients = PySequence_Fast(args[3], "clients is a sequence");
        if (clients != NULL && PySequence_Fast_GET_SIZE(clients) != t.n) {
            PyErr_SetString(PyExc_ValueError, "one client per table");
            Py_CLEAR(clients);
        }
    }
    matches_t m;
    if ((what != MATCH_HOLDERS || clients != NULL) &&
        match(&t, &w, what == MATCH_HOLDERS, &m) == 0) {
        out = answer((int)what, &w, &m, clients);
        matches_free(&m);
    }
    Py_XDECREF(clients);
    tables_release(&t);
    pcd_wanted_free(&w);
    return out;
}

/* ------------------------------------------------------------------ placement, compaction */

static int u64_of(PyObject *obj, unsigned long long *out) {
    *out = PyLong_AsUnsignedLongLong(obj);
    return *out == (unsigned long long)-1 && PyErr_Occurred() ? -1 : 0;
}

static int words(PyObject *obj, Py_buffer *view, int writable, const char *what) {
    if (PyObject_GetBuffer(obj, view, writable ? PyBUF_WRITABLE : PyBUF_SIMPLE) < 0)
        return -1;
    if (view->len % 8 != 0 || (view->len && ((uintptr_t)view->buf & 7) != 0)) {
        PyBuffer_Release(view);
        PyErr_Format(PyExc_ValueError, "%s: an aligned buffer of 8-byte words", what);
        return -1;
    }
    return 0;
}

/* place(new, capacity, max_probe, old, old_capacity, slots, placed): pcd_place, slots and
 * placed int64 buffers of the same length; True, or False when some object finds no slot
 * (new's slots all zero, placed undefined) */
static PyObject *place(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    unsigned long long capacity, probe, old_capacity;
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError,
                        "place(new, capacity, max_probe, old, old_capacity, slots, placed)");
        return NULL;
    }
    if (u64_of(args[1], &capacity) < 0 || u64_of(args[2], &probe) < 0 ||
        u64_of(args[4], &old_capacity) < 0)
        return NULL;
    Py_buffer new_buf = {0}, old_buf = {0}, slots = {0}, placed = {0};
    PyObject *out = NULL;
    if (words(args[5], &slots, 0, "slots") < 0 || words(args[6], &placed, 1, "placed") < 0 ||
        PyObject_GetBuffer(args[0], &new_buf, PyBUF_WRITABLE) < 0 ||
        PyObject_GetBuffer(args[3], &old_buf, PyBUF_SIMPLE) < 0)
        goto done;
    if (slots.len != placed.len) {
        PyErr_SetString(PyExc_ValueError, "as many places as slots");
        goto done;
    }
    if (slots.len && (char *)placed.buf < (char *)slots.buf + slots.len &&
        (char *)slots.buf < (char *)placed.buf + placed.len) {
        PyErr_SetString(PyExc_ValueError, "placed overlaps slots");
        goto done;
    }
    if (capacity > ((unsigned long long)new_buf.len - PCD_HEADER_SIZE) / PCD_SLOT_SIZE ||
        old_capacity > ((unsigned long long)old_buf.len - PCD_HEADER_SIZE) / PCD_SLOT_SIZE ||
        new_buf.len < PCD_HEADER_SIZE || old_buf.len < PCD_HEADER_SIZE) {
        PyErr_SetString(PyExc_ValueError, "a buffer is too short for its directory");
        goto done;
    }
    int rc = pcd_place(new_buf.buf, capacity, probe, old_buf.buf, old_capacity, slots.buf,
                       (uint64_t)slots.len / 8, placed.buf);
    if (rc == PCD_ERANGE)
        PyErr_SetString(PyExc_IndexError, "a slot outside the old directory");
    else if (rc < 0)
        error(rc);
    else
        out = PyBool_FromLong(rc);
done:
    if (new_buf.obj != NULL)
        PyBuffer_Release(&new_buf);
    if (old_buf.obj != NULL)
        PyBuffer_Release(&old_buf);
    if (placed.obj != NULL)
        PyBuffer_Release(&placed);
    if (slots.obj != NULL)
        PyBuffer_Release(&slots);
    return out;
}

/* compact(gens, slots, new_of_old): pcd_compact over two arrays of as many 8-byte words
 * (new_of_old None for no move); how many entries are kept (at the front) */
static PyObject *compact(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    Py_buffer gens, slots, map = {0};
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "compact(gens, slots, new_of_old)");
        return NULL;
    }
    if (words(args[0], &gens, 1, "gens") < 0)
        return NULL;
    if (words(args[1], &slots, 1, "slots") < 0) {
        PyBuffer_Release(&gens);
        return NULL;
    }
    PyObject *out = NULL;
    if (gens.len != slots.len)
        PyErr_SetString(PyExc_ValueError, "as many gens as slots");
    else if (args[2] == Py_None || words(args[2], &map, 0, "new_of_old") == 0) {
        int64_t kept = pcd_compact(gens.buf, slots.buf, (uint64_t)gens.len / 8,
                                   map.obj != NULL ? map.buf : NULL, (uint64_t)map.len / 8);
        if (kept == PCD_ERANGE)
            PyErr_SetString(PyExc_IndexError, "a slot outside new_of_old");
        else
            out = kept < 0 ? error((int)kept) : PyLong_FromLongLong(kept);
    }
    if (map.obj != NULL)
        PyBuffer_Release(&map);
    PyBuffer_Release(&gens);
    PyBuffer_Release(&slots);
    return out;
}

/* a buffer of 4-byte ints, aligned (the store's array('i') of ring links) */
static int ints32(PyObject *obj, Py_buffer *view, int writable, const char *what) {
    if (PyObject_GetBuffer(obj, view, writable ? PyBUF_WRITABLE : PyBUF_SIMPLE) < 0)
        return -1;
    if (view->len % 4 != 0 || (view->len && ((uintptr_t)view->buf & 3) != 0) ||
        (uint64_t)view->len / 4 > INT32_MAX) {
        PyBuffer_Release(view);
        PyErr_Format(PyExc_ValueError, "%s: an aligned buffer of 4-byte ints", what);
        return -1;
    }
    return 0;
}

/* scatter(dst, src, index): dst[index[i]] = src[i] for every index[i] >= 0; dst and src
 * buffers of items of one size, index 8-byte words, one per item of src */
static PyObject *scatter(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "scatter(dst, src, index)");
        return NULL;
    }
    Py_buffer dst = {0}, src = {0}, index = {0};
    PyObject *out = NULL;
    if (PyObject_GetBuffer(args[0], &dst, PyBUF_WRITABLE | PyBUF_ND | PyBUF_FORMAT) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[1], &src, PyBUF_ND | PyBUF_FORMAT) < 0)
        goto done;
    if (words(args[2], &index, 0, "index") < 0)
        goto done;
    if (dst.itemsize != src.itemsize || dst.itemsize <= 0)
        PyErr_SetString(PyExc_ValueError, "dst and src hold items of different sizes");
    else if (src.len / src.itemsize != index.len / 8)
        PyErr_SetString(PyExc_ValueError, "as many indexes as items of src");
    else if (pcd_scatter(dst.buf, (uint64_t)(dst.len / dst.itemsize), src.buf, index.buf,
                         (uint64_t)index.len / 8, (size_t)dst.itemsize) == PCD_ERANGE)
        PyErr_SetString(PyExc_IndexError, "an index outside dst");
    else
        out = Py_NewRef(Py_None);
done:
    if (index.obj != NULL)
        PyBuffer_Release(&index);
    if (src.obj != NULL)
        PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    return out;
}

/* relink(head, old_next, new_of_old, prev, next): pcd_relink; (head, tail, linked, [the
 * old slots of the members left out]) */
static PyObject *relink(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "relink(head, old_next, new_of_old, prev, next)");
        return NULL;
    }
    long long head = PyLong_AsLongLong(args[0]);
    if (head == -1 && PyErr_Occurred())
        return NULL;
    Py_buffer old_next = {0}, map = {0}, prev = {0}, next = {0};
    PyObject *out = NULL;
    int64_t *left = NULL;
    if (ints32(args[1], &old_next, 0, "old_next") < 0 ||
        words(args[2], &map, 0, "new_of_old") < 0 || ints32(args[3], &prev, 1, "prev") < 0 ||
        ints32(args[4], &next, 1, "next") < 0)
        goto done;
    uint64_t old_n = (uint64_t)old_next.len / 4, new_n = (uint64_t)prev.len / 4;
    if ((uint64_t)map.len / 8 != old_n || (uint64_t)next.len / 4 != new_n) {
        PyErr_SetString(PyExc_ValueError, "new_of_old as long as old_next, next as prev");
        goto done;
    }
    left = PyMem_Malloc((old_n ? old_n : 1) * sizeof *left);
    if (left == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    pcd_ring ring;
    uint64_t n_left;
    if (pcd_relink(head, old_next.buf, old_n, map.buf, prev.buf, next.buf, new_n, &ring, left,
                   &n_left) == PCD_ERANGE) {
        PyErr_SetString(PyExc_IndexError, "a ring slot outside the arrays, or a cycle");
        goto done;
    }
    PyObject *left_list = PyList_New((Py_ssize_t)n_left);
    for (uint64_t i = 0; left_list != NULL && i < n_left; i++) {
        PyObject *slot = PyLong_FromLongLong(left[i]);
        if (slot == NULL)
            Py_CLEAR(left_list);
        else
            PyList_SET_ITEM(left_list, (Py_ssize_t)i, slot);
    }
    if (left_list != NULL)
        out = Py_BuildValue("(LLKN)", (long long)ring.head, (long long)ring.tail,
                            (unsigned long long)ring.linked, left_list);
done:
    PyMem_Free(left);
    Py_buffer *views[] = {&old_next, &map, &prev, &next};
    for (size_t i = 0; i < 4; i++)
        if (views[i]->obj != NULL)
            PyBuffer_Release(views[i]);
    return out;
}

static PyMethodDef bulk_methods[] = {
    {"pin_count", pin_count, METH_O,
     "pin_count(tables): the pins (nonzero entries below the mark) in all the pin tables"},
    {"pins_by_table", pins_by_table, METH_O,
     "pins_by_table(tables): each pin table's pins, in order (one list per table)"},
    {"pins_match", (PyCFunction)(void (*)(void))pins_match, METH_FASTCALL,
     "pins_match(tables, generations, what, clients): one pass over the pin tables for the "
     "distinct nonzero generations, None if none; what 0: the set of those pinned, 1: "
     "{generation: pins}, 2: {generation: [clients[i] of each table i pinning it]}"},
    {"place", (PyCFunction)(void (*)(void))place, METH_FASTCALL,
     "place(new, capacity, max_probe, old, old_capacity, slots, placed): a rebuild's "
     "placement of old's live slots (int64) in the empty directory new, their new slots "
     "written to placed; False when some object finds no slot (none written)"},
    {"compact", (PyCFunction)(void (*)(void))compact, METH_FASTCALL,
     "compact(gens, slots, new_of_old): slots mapped through new_of_old (None: not), then "
     "the entries with a slot >= 0 moved to the front; how many"},
    {"scatter", (PyCFunction)(void (*)(void))scatter, METH_FASTCALL,
     "scatter(dst, src, index): dst[index[i]] = src[i] for every index[i] >= 0 (a rebuild "
     "moving what is kept by slot); IndexError (nothing written) for an index outside dst"},
    {"relink", (PyCFunction)(void (*)(void))relink, METH_FASTCALL,
     "relink(head, old_next, new_of_old, prev, next): a CLOCK ring's members relinked in "
     "order at their new slots; (head, tail, linked, [old slots of those left out])"},
    {NULL},
};

int bulk_add(PyObject *module) { return PyModule_AddFunctions(module, bulk_methods); }
