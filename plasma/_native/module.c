/* plasma._native._directory: the CPython face of directory.c (the C read path of a get).
 *
 * Reader and PinTable hold a buffer export of the map they read or write (so the map cannot
 * be closed under them: a close is refused until they go); Found is a consistent read of a
 * slot, a tuple like plasma.directory.Found. pin_from_directory is the directory read of a
 * get in one call, with the signature of plasma._client_core.fast_path.pin_from_directory
 * (a client's plain get, with its record and view, is fast_get.c's Getter); the write_*
 * functions are the coordinator's ordered slot writes (plasma.directory.Directory uses
 * them; its pin scans, rebuild placement and index compaction are bulk_module.c's). Nothing here
 * releases the GIL: callers that share a PinTable between threads hold the client core's
 * lock anyway, and every call is a few hundred nanoseconds. */
#include "module.h"

/* plasma.records.ObjectLocation and plasma.ids.replica_id, imported on first use (the
 * package imports this module) */
static PyObject *ObjectLocation;
static PyObject *replica_id;

static int import_helpers(void) {
    if (ObjectLocation != NULL)
        return 0;
    PyObject *records = PyImport_ImportModule("plasma.records");
    if (records == NULL)
        return -1;
    PyObject *location = PyObject_GetAttrString(records, "ObjectLocation");
    Py_DECREF(records);
    if (location == NULL)
        return -1;
    PyObject *ids = PyImport_ImportModule("plasma.ids");
    if (ids == NULL) {
        Py_DECREF(location);
        return -1;
    }
    replica_id = PyObject_GetAttrString(ids, "replica_id");
    Py_DECREF(ids);
    if (replica_id == NULL) {
        Py_DECREF(location);
        return -1;
    }
    ObjectLocation = location;
    return 0;
}

static PyObject *error(int code) {
    PyErr_SetString(PyExc_ValueError, pcd_strerror(code));
    return NULL;
}

/* ------------------------------------------------------------------ Found */

/* A struct sequence (a tuple with named fields): (slot, seq, generation, location), equal
 * to plasma.directory.Found's tuple of the same read. */
static PyStructSequence_Field found_fields[] = {
    {"slot", "the slot read"},
    {"seq", "its sequence word then"},
    {"generation", "the object's generation"},
    {"location", "where its bytes are (an ObjectLocation)"},
    {NULL},
};

static PyStructSequence_Desc found_desc = {
    "plasma._native._directory.Found",
    "A consistent read of a sealed object's slot.",
    found_fields,
    4,
};

static PyTypeObject FoundType;

PyObject *found_new_from(const pcd_found *f) {
    if (import_helpers() < 0)
        return NULL;
    PyObject *args[5];
    args[0] = PyLong_FromUnsignedLong(f->segment);
    args[1] = PyLong_FromUnsignedLongLong(f->offset);
    args[2] = PyLong_FromUnsignedLongLong(f->data_size);
    args[3] = PyLong_FromUnsignedLong(f->metadata_size);
    args[4] = PyLong_FromUnsignedLong(f->node);
    PyObject *location = NULL;
    if (args[0] && args[1] && args[2] && args[3] && args[4])
        location = PyObject_Vectorcall(ObjectLocation, args, 5, NULL);
    for (int i = 0; i < 5; i++)
        Py_XDECREF(args[i]);
    if (location == NULL)
        return NULL;
    PyObject *found = PyStructSequence_New(&FoundType);
    PyObject *slot = PyLong_FromUnsignedLongLong(f->slot);
    PyObject *seq = PyLong_FromUnsignedLongLong(f->seq);
    PyObject *gen = PyLong_FromUnsignedLongLong(f->generation);
    if (found == NULL || slot == NULL || seq == NULL || gen == NULL) {
        Py_XDECREF(found);
        Py_XDECREF(slot);
        Py_XDECREF(seq);
        Py_XDECREF(gen);
        Py_DECREF(location);
        return NULL;
    }
    PyStructSequence_SET_ITEM(found, 0, slot);
    PyStructSequence_SET_ITEM(found, 1, seq);
    PyStructSequence_SET_ITEM(found, 2, gen);
    PyStructSequence_SET_ITEM(found, 3, location);
    return found;
}

/* slot, seq and generation of a read: a Found of either read path (both are tuples) */
static int as_found(PyObject *obj, pcd_found *out) {
    if (!PyTuple_Check(obj) || PyTuple_GET_SIZE(obj) != 4) {
        PyErr_Format(PyExc_TypeError, "expected a Found, got %.100s", Py_TYPE(obj)->tp_name);
        return -1;
    }
    out->slot = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(obj, 0));
    out->seq = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(obj, 1));
    out->generation = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(obj, 2));
    return PyErr_Occurred() ? -1 : 0;
}

/* ------------------------------------------------------------------ Reader */


static PyObject *reader_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *names[] = {"directory", "access", NULL};
    PyObject *directory, *access = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|O:Reader", names, &directory, &access))
        return NULL;
    Reader *self = (Reader *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    if (PyObject_GetBuffer(directory, &self->directory, PyBUF_SIMPLE) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    if (access != Py_None) {
        if (PyObject_GetBuffer(access, &self->access, PyBUF_WRITABLE) < 0) {
            PyBuffer_Release(&self->directory);
            Py_DECREF(self);
            return NULL;
        }
        self->has_access = 1;
    }
    int rc = pcd_reader_open(&self->r, self->directory.buf, (size_t)self->directory.len,
                             self->has_access ? self->access.buf : NULL,
                             self->has_access ? (size_t)self->access.len : 0);
    if (rc != PCD_OK) {
        Py_DECREF(self); /* (dealloc releases the buffers) */
        return error(rc);
    }
    return (PyObject *)self;
}

static void reader_dealloc(Reader *self) {
    if (self->directory.obj != NULL)
        PyBuffer_Release(&self->directory);
    if (self->has_access)
        PyBuffer_Release(&self->access);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

int id_bytes(PyObject *oid, const unsigned char **out) {
    if (!PyBytes_Check(oid) || PyBytes_GET_SIZE(oid) != PCD_ID_SIZE) {
        PyErr_SetString(PyExc_ValueError, "an object id is 20 bytes");
        return -1;
    }
    *out = (const unsigned char *)PyBytes_AS_STRING(oid);
    return 0;
}

static PyObject *reader_lookup(Reader *self, PyObject *args) {
    PyObject *oid;
    unsigned int flags = 0;
    const unsigned char *id;
    pcd_found f;
    if (!PyArg_ParseTuple(args, "O|I:lookup", &oid, &flags) || id_bytes(oid, &id) < 0)
        return NULL;
    if (!pcd_lookup(&self->r, id, flags, &f))
        Py_RETURN_NONE;
    return found_new_from(&f);
}

static PyObject *reader_unchanged(Reader *self, PyObject *found) {
    pcd_found f;
    if (as_found(found, &f) < 0)
        return NULL;
    return PyBool_FromLong(pcd_unchanged(&self->r, &f));
}

static PyObject *reader_dying(Reader *self, PyObject *found) {
    pcd_found f;
    if (as_found(found, &f) < 0)
        return NULL;
    return PyBool_FromLong(pcd_dying(&self->r, &f));
}

static PyObject *reader_superseded(Reader *self, void *closure) {
    return PyBool_FromLong(pcd_superseded(&self->r));
}
static PyObject *reader_replicas(Reader *self, void *closure) {
    return PyBool_FromLong(pcd_replicas(&self->r));
}
static PyObject *reader_token(Reader *self, void *closure) {
    return PyLong_FromUnsignedLongLong(pcd_token(&self->r));
}
static PyObject *reader_capacity(Reader *self, void *closure) {
    return PyLong_FromUnsignedLongLong(self->r.capacity);
}

static PyMethodDef reader_methods[] = {
    {"lookup", (PyCFunction)reader_lookup, METH_VARARGS,
     "lookup(oid, flags=0): the sealed object as a Found, or None (ask the coordinator)"},
    {"unchanged", (PyCFunction)reader_unchanged, METH_O,
     "unchanged(found): the slot was not written since, and the directory is current"},
    {"dying", (PyCFunction)reader_dying, METH_O,
     "dying(found): the object is now marked dying (its delete waits for pins)"},
    {NULL},
};

static PyGetSetDef reader_getset[] = {
    {"superseded", (getter)reader_superseded, NULL, "a rebuilt directory replaced this one"},
    {"replicas", (getter)reader_replicas, NULL, "copies on other nodes may be published"},
    {"token", (getter)reader_token, NULL, "this directory's name"},
    {"capacity", (getter)reader_capacity, NULL, "slots"},
    {NULL},
};

PyTypeObject ReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "plasma._native._directory.Reader",
    .tp_basicsize = sizeof(Reader),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Reader(directory, access=None): lookups in a directory mapped read-only.",
    .tp_new = reader_new,
    .tp_dealloc = (destructor)reader_dealloc,
    .tp_methods = reader_methods,
    .tp_getset = reader_getset,
};

/* ------------------------------------------------------------------ PinTable */


static PyObject *pins_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *names[] = {"table", NULL};
    PyObject *table;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:PinTable", names, &table))
        return NULL;
    PinTable *self = (PinTable *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    if (PyObject_GetBuffer(table, &self->table, PyBUF_WRITABLE) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    int rc = pcd_pins_open(&self->p, self->table.buf, (size_t)self->table.len);
    if (rc != PCD_OK) {
        Py_DECREF(self);
        return rc == PCD_ENOMEM ? PyErr_NoMemory() : error(rc);
    }
    return (PyObject *)self;
}

static void pins_dealloc(PinTable *self) {
    pcd_pins_close(&self->p);
    if (self->table.obj != NULL)
        PyBuffer_Release(&self->table);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *pins_pin(PinTable *self, PyObject *generation) {
    unsigned long long gen = PyLong_AsUnsignedLongLong(generation);
    if (gen == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    int64_t index = pcd_pin(&self->p, gen);
    if (index < 0)
        Py_RETURN_NONE;
    return PyLong_FromLongLong(index);
}

static PyObject *pins_unpin(PinTable *self, PyObject *index) {
    unsigned long long i = PyLong_AsUnsignedLongLong(index);
    if (i == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    int rc = pcd_unpin(&self->p, i);
    if (rc != PCD_OK)
        return error(rc);
    Py_RETURN_NONE;
}

static PyObject *pins_count(PinTable *self, void *closure) {
    return PyLong_FromUnsignedLongLong(self->p.count);
}
static PyObject *pins_entries(PinTable *self, void *closure) {
    return PyLong_FromUnsignedLongLong(self->p.entries);
}

static PyMethodDef pins_methods[] = {
    {"pin", (PyCFunction)pins_pin, METH_O, "pin(generation): the entry's index, or None (full)"},
    {"unpin", (PyCFunction)pins_unpin, METH_O, "unpin(index): give the entry back"},
    {NULL},
};

static PyGetSetDef pins_getset[] = {
    {"count", (getter)pins_count, NULL, "pins held"},
    {"entries", (getter)pins_entries, NULL, "pins the table holds at most"},
    {NULL},
};

PyTypeObject PinTableType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "plasma._native._directory.PinTable",
    .tp_basicsize = sizeof(PinTable),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "PinTable(table): this client's pins, in its pin table (writable, zero-filled).",
    .tp_new = pins_new,
    .tp_dealloc = (destructor)pins_dealloc,
    .tp_methods = pins_methods,
    .tp_getset = pins_getset,
};

/* ------------------------------------------------------------------ View */

/* The bytes of one object in a mapped segment, as a read-only buffer: what a client's views
 * of a pinned or referenced object are made from (memoryview(View(...))). It holds a buffer
 * export of the segment's map (the map cannot be closed under it), and when it goes (the
 * last view of it dropped, on whatever thread) it calls done(key) once. */
typedef struct {
    PyObject_HEAD
    Py_buffer segment;
    char *start;
    Py_ssize_t length;
    PyObject *done;
    PyObject *key;
} View;

static PyTypeObject ViewType;

static PyObject *view_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *names[] = {"segment", "offset", "length", "done", "key", NULL};
    PyObject *segment, *done, *key;
    Py_ssize_t offset, length;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OnnOO:View", names, &segment, &offset,
                                     &length, &done, &key))
        return NULL;
    View *self = (View *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    if (PyObject_GetBuffer(segment, &self->segment, PyBUF_SIMPLE) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    if (offset < 0 || length < 0 || offset > self->segment.len ||
        length > self->segment.len - offset) {
        Py_DECREF(self);
        PyErr_Format(PyExc_ValueError, "bytes [%zd, %zd + %zd) are not in the segment", offset,
                     offset, length);
        return NULL;
    }
    self->start = (char *)self->segment.buf + offset;
    self->length = length;
    Py_INCREF(done);
    self->done = done;
    Py_INCREF(key);
    self->key = key;
    return (PyObject *)self;
}

static void view_dealloc(View *self) {
    PyObject *done = self->done, *key = self->key;
    if (self->segment.obj != NULL)
        PyBuffer_Release(&self->segment);
    self->done = self->key = NULL;
    Py_TYPE(self)->tp_free((PyObject *)self);
    if (done != NULL) {
        /* (a finalizer: whatever exception is being handled stays as it was) */
        PyObject *type, *value, *traceback;
        PyErr_Fetch(&type, &value, &traceback);
        PyObject *result = PyObject_CallOneArg(done, key);
        if (result == NULL)
            PyErr_WriteUnraisable(done);
        Py_XDECREF(result);
        PyErr_Restore(type, value, traceback);
    }
    Py_XDECREF(done);
    Py_XDECREF(key);
}

static int view_getbuffer(View *self, Py_buffer *view, int flags) {
    return PyBuffer_FillInfo(view, (PyObject *)self, self->start, self->length, 1, flags);
}

static PyBufferProcs view_as_buffer = {
    .bf_getbuffer = (getbufferproc)view_getbuffer,
};

static PyTypeObject ViewType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "plasma._native._directory.View",
    .tp_basicsize = sizeof(View),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "View(segment, offset, length, done, key): bytes of an object, read-only; "
              "done(key) is called when it goes.",
    .tp_new = view_new,
    .tp_dealloc = (destructor)view_dealloc,
    .tp_as_buffer = &view_as_buffer,
};

/* views(segment, offset, data_size, metadata_size, done, key): the (data, metadata)
 * memoryviews of an object, both over one View (done(key) once both are gone) */
static PyObject *views(PyObject *module, PyObject *const *args, Py_ssize_t n) {
    if (n != 6) {
        PyErr_SetString(PyExc_TypeError,
                        "views(segment, offset, data_size, metadata_size, done, key)");
        return NULL;
    }
    Py_ssize_t offset = PyLong_AsSsize_t(args[1]);
    Py_ssize_t data = PyLong_AsSsize_t(args[2]);
    Py_ssize_t meta = PyLong_AsSsize_t(args[3]);
    if (PyErr_Occurred())
        return NULL;
    if (data < 0 || meta < 0 || data > PY_SSIZE_T_MAX - meta) {
        PyErr_SetString(PyExc_ValueError, "sizes must be >= 0");
        return NULL;
    }
    PyObject *view_args = Py_BuildValue("(OnnOO)", args[0], offset, data + meta, args[4], args[5]);
    if (view_args == NULL)
        return NULL;
    PyObject *view = view_new(&ViewType, view_args, NULL);
    Py_DECREF(view_args);
    if (view == NULL)
        return NULL;
    PyObject *whole = PyMemoryView_FromObject(view);
    Py_DECREF(view);
    if (whole == NULL)
        return NULL;
    PyObject *out = NULL, *head = NULL, *tail = NULL;
    PyObject *cut = PyLong_FromSsize_t(data);
    PyObject *first = cut != NULL ? PySlice_New(NULL, cut, NULL) : NULL;
    PyObject *second = cut != NULL ? PySlice_New(cut, NULL, NULL) : NULL;
    if (first != NULL && second != NULL) {
        head = PyObject_GetItem(whole, first);
        tail = head != NULL ? PyObject_GetItem(whole, second) : NULL;
        if (tail != NULL)
            out = PyTuple_Pack(2, head, tail);
    }
    Py_XDECREF(cut);
    Py_XDECREF(first);
    Py_XDECREF(second);
    Py_XDECREF(head);
    Py_XDECREF(tail);
    Py_DECREF(whole);
    return out;
}

/* ------------------------------------------------------------------ the get */

int replica_of(Reader *reader, PyObject *oid, PyObject *node, PyObject **bytes,
               const unsigned char **replica) {
    *bytes = NULL;
    *replica = NULL;
    if (node == Py_None || !pcd_replicas(&reader->r))
        return 0;
    if (import_helpers() < 0)
        return -1;
    PyObject *call[2] = {oid, node};
    PyObject *got = PyObject_Vectorcall(replica_id, call, 2, NULL);
    if (got == NULL)
        return -1;
    if (id_bytes(got, replica) < 0) {
        Py_DECREF(got);
        return -1;
    }
    *bytes = got;
    return 0;
}

typedef struct {
    PyObject *mapped;
    int failed;
} mapped_ctx;

static int is_mapped(void *ctx, uint32_t segment) {
    mapped_ctx *m = ctx;
    PyObject *key = PyLong_FromUnsignedLong(segment);
    if (key == NULL) {
        m->failed = 1;
        return 0;
    }
    int in = PyDict_CheckExact(m->mapped) ? PyDict_Contains(m->mapped, key)
                                          : PySequence_Contains(m->mapped, key);
    Py_DECREF(key);
    if (in < 0)
        m->failed = 1;
    return in > 0;
}

static PyObject *pin_from_directory(PyObject *module, PyObject *const *args, Py_ssize_t n) {
    if (n != 5) {
        PyErr_SetString(PyExc_TypeError,
                        "pin_from_directory(reader, pins, mapped, oid, node) takes 5 arguments");
        return NULL;
    }
    if (!PyObject_TypeCheck(args[0], &ReaderType) || !PyObject_TypeCheck(args[1], &PinTableType)) {
        PyErr_SetString(PyExc_TypeError, "pin_from_directory takes a Reader and a PinTable");
        return NULL;
    }
    Reader *reader = (Reader *)args[0];
    PinTable *pins = (PinTable *)args[1];
    const unsigned char *id, *replica = NULL;
    if (id_bytes(args[3], &id) < 0)
        return NULL;
    PyObject *replica_bytes = NULL;
    if (replica_of(reader, args[3], args[4], &replica_bytes, &replica) < 0)
        return NULL;
    mapped_ctx ctx = {args[2], 0};
    pcd_found f;
    int64_t index;
    int got = pcd_get(&reader->r, &pins->p, id, replica, is_mapped, &ctx, &f, &index);
    Py_XDECREF(replica_bytes);
    if (ctx.failed)
        return NULL;
    if (!got)
        Py_RETURN_NONE;
    PyObject *found = found_new_from(&f);
    PyObject *pin = found != NULL ? PyLong_FromLongLong(index) : NULL;
    if (pin == NULL) {
        Py_XDECREF(found);
        pcd_unpin(&pins->p, (uint64_t)index);
        return NULL;
    }
    PyObject *out = PyTuple_New(2);
    if (out == NULL) {
        Py_DECREF(found);
        Py_DECREF(pin);
        pcd_unpin(&pins->p, (uint64_t)index);
        return NULL;
    }
    PyTuple_SET_ITEM(out, 0, found);
    PyTuple_SET_ITEM(out, 1, pin);
    return out;
}

/* ------------------------------------------------------------------ the writer */

static int u64_arg(PyObject *obj, unsigned long long max, const char *what,
                   unsigned long long *out) {
    unsigned long long v = PyLong_AsUnsignedLongLong(obj);
    if (v == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    if (v > max) {
        PyErr_Format(PyExc_OverflowError, "%s %llu does not fit a directory slot", what, v);
        return -1;
    }
    *out = v;
    return 0;
}

/* the directory buffer args[0] (writable) and its capacity args[1] */
static int directory_arg(PyObject *const *args, Py_buffer *buf, unsigned long long *capacity) {
    if (u64_arg(args[1], UINT64_MAX, "capacity", capacity) < 0)
        return -1;
    if (PyObject_GetBuffer(args[0], buf, PyBUF_WRITABLE) < 0)
        return -1;
    if (*capacity > ((unsigned long long)buf->len - PCD_HEADER_SIZE) / PCD_SLOT_SIZE ||
        buf->len < PCD_HEADER_SIZE) {
        PyBuffer_Release(buf);
        PyErr_Format(PyExc_ValueError, "%zd bytes hold no directory of %llu slots", buf->len,
                     *capacity);
        return -1;
    }
    return 0;
}

static PyObject *done(Py_buffer *buf, int rc) {
    PyBuffer_Release(buf);
    if (rc != PCD_OK)
        return error(rc);
    Py_RETURN_NONE;
}

/* 1 with *out when obj (an int) is in 0..UINT32_MAX, 0 when it is not, -1 on an error */
static int u32_fits(PyObject *obj, uint32_t *out) {
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (v == -1 && !overflow && PyErr_Occurred())
        return -1;
    if (overflow || v < 0 || v > (long long)UINT32_MAX)
        return 0;
    *out = (uint32_t)v;
    return 1;
}

static PyObject *insert(PyObject *module, PyObject *const *args, Py_ssize_t n) {
    /* (directory, capacity, max_probe, generation, oid, segment, offset, data_size,
     *  metadata_size, node, flags) */
    unsigned long long capacity, probe, generation, offset, data_size, node, flags;
    uint32_t segment, metadata_size;
    uint64_t slot;
    uint8_t previous;
    Py_buffer buf;
    if (n != 11) {
        PyErr_SetString(PyExc_TypeError, "insert takes 11 arguments");
        return NULL;
    }
    PyObject *oid = args[4];
    if (!PyBytes_Check(oid)) {
        PyErr_SetString(PyExc_TypeError, "an object id is bytes");
        return NULL;
    }
    int fits_segment = u32_fits(args[5], &segment);
    int fits_metadata = fits_segment < 0 ? -1 : u32_fits(args[8], &metadata_size);
    if (fits_metadata < 0)
        return NULL;
    if (!fits_segment || !fits_metadata || PyBytes_GET_SIZE(oid) != PCD_ID_SIZE)
        return PyLong_FromLong(-1); /* does not fit a slot: served by requests only */
    if (u64_arg(args[2], UINT64_MAX, "max probe", &probe) < 0 ||
        u64_arg(args[3], UINT64_MAX, "generation", &generation) < 0 ||
        u64_arg(args[6], UINT64_MAX, "offset", &offset) < 0 ||
        u64_arg(args[7], UINT64_MAX, "data size", &data_size) < 0 ||
        u64_arg(args[9], UINT16_MAX, "node", &node) < 0 ||
        u64_arg(args[10], UINT8_MAX, "flags", &flags) < 0 ||
        directory_arg(args, &buf, &capacity) < 0)
        return NULL;
    pcd_slot fields = {
        .generation = generation,
        .segment = segment,
        .offset = offset,
        .data_size = data_size,
        .metadata_size = metadata_size,
        .node = (uint16_t)node,
        .state = PCD_SEALED,
        .flags = (uint8_t)flags,
    };
    memcpy(fields.id, PyBytes_AS_STRING(oid), PCD_ID_SIZE);
    int rc = pcd_insert(buf.buf, capacity, probe, &fields, &slot, &previous);
    PyBuffer_Release(&buf);
    if (rc < 0)
        return error(rc);
    if (rc == 0)
        return PyLong_FromLong(-1);
    return PyLong_FromUnsignedLongLong(slot << 1 | (previous == PCD_TOMBSTONE));
}

static PyObject *set_state(PyObject *module, PyObject *const *args, Py_ssize_t n) {
    unsigned long long slot, state, capacity;
    Py_buffer buf;
    if (n != 4) {
        PyErr_SetString(PyExc_TypeError, "set_state(directory, capacity, slot, state)");
        return NULL;
    }
    if (u64_arg(args[2], UINT64_MAX, "slot", &slot) < 0 ||
        u64_arg(args[3], UINT8_MAX, "state", &state) < 0 || directory_arg(args, &buf, &capacity) < 0)
        return NULL;
    return done(&buf, pcd_set_state(buf.buf, capacity, slot, (uint8_t)state));
}

static PyObject *clear_slot(PyObject *module, PyObject *const *args, Py_ssize_t n) {
    unsigned long long slot, capacity;
    Py_buffer buf;
    if (n != 3) {
        PyErr_SetString(PyExc_TypeError, "clear_slot(directory, capacity, slot)");
        return NULL;
    }
    if (u64_arg(args[2], UINT64_MAX, "slot", &slot) < 0 || directory_arg(args, &buf, &capacity) < 0)
        return NULL;
    return done(&buf, pcd_clear_slot(buf.buf, capacity, slot));
}

/* compact_ids(directory, capacity, recorded): the ids of the slots that read sealed, hold no
 * copy and have 0 in recorded (a byte by slot: 1 where the store keeps a record, so 0 for
 * its compact objects), in slot order. Only the directory's writer calls it (plain reads of
 * its own stores). */
static PyObject *compact_ids(PyObject *module, PyObject *const *args, Py_ssize_t n) {
    unsigned long long capacity;
    Py_buffer buf, recorded;
    if (n != 3) {
        PyErr_SetString(PyExc_TypeError, "compact_ids(directory, capacity, recorded)");
        return NULL;
    }
    if (PyObject_GetBuffer(args[2], &recorded, PyBUF_SIMPLE) < 0)
        return NULL;
    if (directory_arg(args, &buf, &capacity) < 0) {
        PyBuffer_Release(&recorded);
        return NULL;
    }
    PyObject *out = PyList_New(0);
    if ((unsigned long long)recorded.len < capacity) {
        PyErr_SetString(PyExc_ValueError, "recorded has fewer bytes than the directory slots");
        Py_CLEAR(out);
    }
    const unsigned char *slots = (const unsigned char *)buf.buf + PCD_HEADER_SIZE;
    const unsigned char *has_record = recorded.buf;
    for (unsigned long long i = 0; out != NULL && i < capacity; i++) {
        const unsigned char *slot = slots + i * PCD_SLOT_SIZE;
        /* (state and flags are the slot's last two bytes; its id follows seq and generation) */
        if (slot[PCD_SLOT_SIZE - 2] != PCD_SEALED || slot[PCD_SLOT_SIZE - 1] != 0 ||
            has_record[i])
            continue;
        PyObject *oid = PyBytes_FromStringAndSize((const char *)slot + 16, PCD_ID_SIZE);
        if (oid == NULL || PyList_Append(out, oid) < 0)
            Py_CLEAR(out);
        Py_XDECREF(oid);
    }
    PyBuffer_Release(&recorded);
    PyBuffer_Release(&buf);
    return out;
}

static PyObject *header_write(PyObject *directory, void (*write)(void *)) {
    Py_buffer buf;
    if (PyObject_GetBuffer(directory, &buf, PyBUF_WRITABLE) < 0)
        return NULL;
    if (buf.len < PCD_HEADER_SIZE) {
        PyBuffer_Release(&buf);
        return error(PCD_ESHORT);
    }
    write(buf.buf);
    return done(&buf, PCD_OK);
}

static PyObject *set_superseded(PyObject *module, PyObject *directory) {
    return header_write(directory, pcd_set_superseded);
}

static PyObject *set_ordered(PyObject *module, PyObject *directory) {
    return header_write(directory, pcd_set_ordered);
}

static PyMethodDef module_methods[] = {
    {"pin_from_directory", (PyCFunction)(void (*)(void))pin_from_directory, METH_FASTCALL,
     "pin_from_directory(reader, pins, mapped, oid, node): (found, pin index), or None"},
    {"views", (PyCFunction)(void (*)(void))views, METH_FASTCALL,
     "views(segment, offset, data_size, metadata_size, done, key): (data, metadata) "
     "read-only memoryviews of an object over one View"},
    {"insert", (PyCFunction)(void (*)(void))insert, METH_FASTCALL,
     "insert(directory, capacity, max_probe, generation, oid, segment, offset, data_size, "
     "metadata_size, node, flags): publish a sealed object in the first free or tombstone "
     "slot of its probe run; its slot times 2, plus 1 when that was a tombstone, or -1 (no "
     "such slot, or a field too large for a slot)"},
    {"set_state", (PyCFunction)(void (*)(void))set_state, METH_FASTCALL,
     "set_state(directory, capacity, slot, state): one seqlock write of a slot's state"},
    {"clear_slot", (PyCFunction)(void (*)(void))clear_slot, METH_FASTCALL,
     "clear_slot(directory, capacity, slot): the slot made a tombstone"},
    {"compact_ids", (PyCFunction)(void (*)(void))compact_ids, METH_FASTCALL,
     "compact_ids(directory, capacity, recorded): ids of the slots that read sealed, hold no "
     "copy and have 0 in recorded (a byte by slot), in slot order"},
    {"set_superseded", set_superseded, METH_O, "set_superseded(directory)"},
    {"set_ordered", set_ordered, METH_O,
     "set_ordered(directory): say that every slot write is ordered (release stores)"},
    {NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "plasma._native._directory",
    .m_doc = "The object directory's read path in C (plasma/_native/directory.c).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__directory(void) {
    if (PyStructSequence_InitType2(&FoundType, &found_desc) < 0 || PyType_Ready(&ReaderType) < 0 ||
        PyType_Ready(&PinTableType) < 0 || PyType_Ready(&ViewType) < 0 || fast_get_ready() < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Found", (PyObject *)&FoundType) < 0 ||
        PyModule_AddObjectRef(m, "Reader", (PyObject *)&ReaderType) < 0 ||
        PyModule_AddObjectRef(m, "PinTable", (PyObject *)&PinTableType) < 0 ||
        PyModule_AddObjectRef(m, "View", (PyObject *)&ViewType) < 0 || fast_get_add(m) < 0 ||
        bulk_add(m) < 0 ||
        PyModule_AddIntConstant(m, "PIN_HEADER", PCD_PIN_HEADER) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
