/* What module.c (plasma._native._directory) and fast_get.c share: the Reader and PinTable
 * objects and the helpers that turn a directory read into Python objects. */
#ifndef PLASMA_NATIVE_MODULE_H
#define PLASMA_NATIVE_MODULE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "directory.h"

/* a directory mapped read-only (its map held by a buffer export) */
typedef struct {
    PyObject_HEAD
    pcd_reader r;
    Py_buffer directory;
    Py_buffer access;
    int has_access;
} Reader;

/* this client's pin table (its map held by a buffer export) */
typedef struct {
    PyObject_HEAD
    pcd_pins p;
    Py_buffer table;
} PinTable;

extern PyTypeObject ReaderType;
extern PyTypeObject PinTableType;

/* the read f as a Found (a new reference, or NULL with an exception set) */
PyObject *found_new_from(const pcd_found *f);

/* *out: the 20 bytes of oid (a bytes object of 20), or -1 with ValueError */
int id_bytes(PyObject *oid, const unsigned char **out);

/* The replica id of oid on node (an int, or None) when reader's directory may publish
 * copies: *bytes a new reference to it and *replica its bytes; else both NULL. -1 on an
 * error. */
int replica_of(Reader *reader, PyObject *oid, PyObject *node, PyObject **bytes,
               const unsigned char **replica);

/* fast_get.c: its types readied, then added to the module */
int fast_get_ready(void);
int fast_get_add(PyObject *module);

/* bulk_module.c: the coordinator's pin scans, placement and compaction added to the module */
int bulk_add(PyObject *module);

#endif
