/* plasma._native._directory.Getter: a get of one object served from the directory in one
 * call, and its drop in C when the last view of it goes (the client core's hot path).
 *
 * A Getter is the C half of a client's references (plasma._client_core.refs.Refs): it shares
 * Refs' dicts of held and cached references and the client core's lock (an RLock of this
 * module, so that C takes it with no call), and keeps the counts
 * of the release-delay cache (cache_bytes, cache_limit, release_delay) that both halves
 * update. get(oid) looks oid up in the directory, pins it, re-checks and returns a read-only
 * memoryview of its data, recording the pin in held as a Pinned (a record with the fields
 * Refs' own records have). When that view goes, the record moves to the cache (evicting the
 * oldest beyond its bounds) or its pin is let go, in C. Whatever is not that plain case is
 * left to Refs' Python code: an id held or cached already, the lock held by another thread,
 * a possible hang-up on the socket, a forked child or closed client, a record Refs replaced.
 * Nothing here blocks in a get, and neither takes the lock where it is free and no Python
 * code runs: holding the GIL throughout is enough then (see getter_get).
 *
 * Whether the coordinator hung up, a get learns from a flag its Getter's watcher thread sets
 * (one load, no syscall; see "the watcher"), or, where that thread could not be started, from
 * a poll(2) of the socket at most every interval_ns. */
#include "module.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "structmember.h"


/* ------------------------------------------------------------------ Pinned */

/* A reference held by a pin: the directory read it was taken on, the pin-table entry, how
 * many views of it live (Refs counts them too) and whether a delete revoked it. */
typedef struct {
    PyObject_HEAD
    pcd_found f;
    long long pin;
    Py_ssize_t views;
    char revoked;
} Pinned;

static PyTypeObject PinnedType;

/* One spare object of each type a get makes (a Pinned, a GetView), kept when one goes and
 * taken by the next get: an allocation and a free the fewer each (after a wake-up the
 * allocator's lines are as cold as the rest). Only ever used with the GIL held. */
static PyObject *spare_pinned, *spare_view;

static PyObject *take_spare(PyObject **spare, PyTypeObject *type) {
    PyObject *op = *spare;
    if (op == NULL)
        return _PyObject_New(type);
    *spare = NULL;
    return PyObject_Init(op, type);
}

static void keep_spare(PyObject **spare, PyObject *op) {
    if (*spare == NULL)
        *spare = op;
    else
        Py_TYPE(op)->tp_free(op);
}

static void pinned_dealloc(Pinned *self) { keep_spare(&spare_pinned, (PyObject *)self); }

static Py_ssize_t pinned_size(const Pinned *rec) {
    return (Py_ssize_t)(rec->f.data_size + rec->f.metadata_size);
}

static PyObject *pinned_found(Pinned *self, void *closure) {
    return found_new_from(&self->f);
}

static PyObject *pinned_loc(Pinned *self, void *closure) {
    PyObject *found = found_new_from(&self->f);
    if (found == NULL)
        return NULL;
    PyObject *loc = PyStructSequence_GET_ITEM(found, 3);
    Py_INCREF(loc);
    Py_DECREF(found);
    return loc;
}

static PyMemberDef pinned_members[] = {
    {"views", T_PYSSIZET, offsetof(Pinned, views), 0, "views of the object alive"},
    {"revoked", T_BOOL, offsetof(Pinned, revoked), 0, "a delete waits for this reference"},
    {"pin", T_LONGLONG, offsetof(Pinned, pin), READONLY, "the pin-table entry"},
    {NULL},
};

static PyGetSetDef pinned_getset[] = {
    {"found", (getter)pinned_found, NULL, "the directory read the pin was taken on", NULL},
    {"loc", (getter)pinned_loc, NULL, "where the object's bytes are (an ObjectLocation)", NULL},
    {NULL},
};

static PyTypeObject PinnedType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "plasma._native._directory.Pinned",
    .tp_basicsize = sizeof(Pinned),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_dealloc = (destructor)pinned_dealloc,
    .tp_doc = "A reference held by a directory pin (made by Getter.get).",
    .tp_members = pinned_members,
    .tp_getset = pinned_getset,
};

/* ------------------------------------------------------------------ RLock */

/* A reentrant lock, as threading.RLock, whose state C reads and changes with no call: the
 * client core's lock where this module is built (a get tries it, a drop takes it). */
typedef struct {
    PyObject_HEAD
    PyThread_type_lock lock;
    unsigned long owner; /* the thread holding it, when count > 0 */
    unsigned long count;
} RLock;

static PyTypeObject RLockType;

static PyObject *rlock_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    if (PyTuple_GET_SIZE(args) > 0 || (kwds != NULL && PyDict_GET_SIZE(kwds) > 0)) {
        PyErr_SetString(PyExc_TypeError, "RLock() takes no arguments");
        return NULL;
    }
    RLock *self = (RLock *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->lock = PyThread_allocate_lock();
    if (self->lock == NULL) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    return (PyObject *)self;
}

static void rlock_dealloc(RLock *self) {
    if (self->lock != NULL) {
        if (self->count > 0)
            PyThread_release_lock(self->lock);
        PyThread_free_lock(self->lock);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* 1 when taken (now, or after waiting without the GIL if wait), 0 when not, -1 on an
 * error (a signal handler raised while waiting) */
static int rlock_take(RLock *self, int wait) {
    unsigned long me = PyThread_get_thread_ident();
    if (self->count > 0 && self->owner == me) {
        self->count++;
        return 1;
    }
    if (!PyThread_acquire_lock(self->lock, NOWAIT_LOCK)) {
        if (!wait)
            return 0;
        PyLockStatus got;
        do {
            Py_BEGIN_ALLOW_THREADS
            got = PyThread_acquire_lock_timed(self->lock, -1, 1);
            Py_END_ALLOW_THREADS
            if (got == PY_LOCK_INTR && Py_MakePendingCalls() < 0)
                return -1;
        } while (got != PY_LOCK_ACQUIRED);
    }
    self->owner = me;
    self->count = 1;
    return 1;
}

static int rlock_give(RLock *self) {
    if (self->count == 0 || self->owner != PyThread_get_thread_ident()) {
        PyErr_SetString(PyExc_RuntimeError, "cannot release un-acquired lock");
        return -1;
    }
    if (--self->count == 0) {
        self->owner = 0;
        PyThread_release_lock(self->lock);
    }
    return 0;
}

static PyObject *rlock_acquire(RLock *self, PyObject *args, PyObject *kwds) {
    static char *names[] = {"blocking", NULL};
    int blocking = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|p:acquire", names, &blocking))
        return NULL;
    int got = rlock_take(self, blocking);
    return got < 0 ? NULL : PyBool_FromLong(got);
}

static PyObject *rlock_enter(RLock *self, PyObject *unused) {
    if (rlock_take(self, 1) < 0)
        return NULL;
    Py_RETURN_TRUE;
}

static PyObject *rlock_release(RLock *self, PyObject *const *args, Py_ssize_t n) {
    if (rlock_give(self) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef rlock_methods[] = {
    {"acquire", (PyCFunction)(void (*)(void))rlock_acquire, METH_VARARGS | METH_KEYWORDS,
     "acquire(blocking=True): whether it was taken"},
    {"release", (PyCFunction)(void (*)(void))rlock_release, METH_FASTCALL, "release()"},
    {"__enter__", (PyCFunction)rlock_enter, METH_NOARGS, "acquire()"},
    {"__exit__", (PyCFunction)(void (*)(void))rlock_release, METH_FASTCALL, "release()"},
    {NULL},
};

static PyTypeObject RLockType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "plasma._native._directory.RLock",
    .tp_basicsize = sizeof(RLock),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "RLock(): a reentrant lock (as threading.RLock) a Getter reads with no call.",
    .tp_new = rlock_new,
    .tp_dealloc = (destructor)rlock_dealloc,
    .tp_methods = rlock_methods,
};

/* ------------------------------------------------------------------ the watcher */

/* A thread that waits for the coordinator to hang up on a client's socket, so that a get
 * learns it from a flag (an acquire load) instead of a poll(2) of its own. It runs no Python
 * code and holds no Python object (no finalizer or collection can run on it), with every
 * signal blocked (they go to the interpreter's threads, as without it).
 *
 * It waits in epoll_wait on a set of two: the socket (EPOLLRDHUP; EPOLLHUP and EPOLLERR
 * always count) and an eventfd that stops it. Not in poll(2) on the socket: a poll in
 * progress holds the socket's file, so a close of the descriptor while it waits would not
 * release the socket (the coordinator would not see the client go, and would keep its pins),
 * and a poll that began after a close could look at whatever reused the number. An epoll set
 * holds neither: it was given the socket once, while it was open, and forgets it when it
 * closes. It is stopped (woken by the eventfd, and joined) before its client closes the
 * socket all the same, so that a client's thread lives as long as its connection; only the
 * process that started it does that (a forked child has no such thread: it closes its copies
 * of the descriptors, and never touches the parent's thread or set). */

enum { WATCHING, HUNG_UP, GAVE_UP }; /* a watcher's state (GAVE_UP: epoll_wait failed) */
enum { SOCKET_EVENT, STOP_EVENT };    /* what an event of its set is about */

#define WATCHER_STACK (64 * 1024)

typedef struct {
    atomic_int state;  /* set once by the thread (release), read by gets (acquire) */
    int epoll_fd;      /* the set waited on */
    int stop_fd;       /* an eventfd: a write stops the thread */
    pid_t pid;         /* the process the thread runs in */
    pthread_t thread;
} Watcher;

static void *watch_socket(void *arg) {
    Watcher *w = arg;
    struct epoll_event event;
    int n;
    do
        n = epoll_wait(w->epoll_fd, &event, 1, -1);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        atomic_store_explicit(&w->state, GAVE_UP, memory_order_release);
    else if (event.data.u32 == SOCKET_EVENT)
        atomic_store_explicit(&w->state, HUNG_UP, memory_order_release);
    return NULL; /* (a hang-up is for good: nothing more to wait for) */
}

static void watcher_free(Watcher *w) {
    if (w->stop_fd >= 0)
        close(w->stop_fd);
    if (w->epoll_fd >= 0)
        close(w->epoll_fd);
    free(w);
}

/* A thread watching socket fd, or NULL where one cannot be had (no memory, no descriptors,
 * no thread: EAGAIN under RLIMIT_NPROC; fd not a socket): gets poll it then. */
static Watcher *watcher_start(int fd) {
    Watcher *w = malloc(sizeof *w);
    if (w == NULL)
        return NULL;
    atomic_init(&w->state, WATCHING);
    w->pid = getpid();
    w->stop_fd = eventfd(0, EFD_CLOEXEC);
    w->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event on_socket = {.events = EPOLLRDHUP, .data.u32 = SOCKET_EVENT};
    struct epoll_event on_stop = {.events = EPOLLIN, .data.u32 = STOP_EVENT};
    if (w->stop_fd < 0 || w->epoll_fd < 0 ||
        epoll_ctl(w->epoll_fd, EPOLL_CTL_ADD, fd, &on_socket) < 0 ||
        epoll_ctl(w->epoll_fd, EPOLL_CTL_ADD, w->stop_fd, &on_stop) < 0) {
        watcher_free(w);
        return NULL;
    }
    pthread_attr_t attr;
    sigset_t all, before;
    if (pthread_attr_init(&attr) != 0) {
        watcher_free(w);
        return NULL;
    }
    pthread_attr_setstacksize(&attr, WATCHER_STACK < PTHREAD_STACK_MIN ? PTHREAD_STACK_MIN
                                                                       : WATCHER_STACK);
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &before); /* (the thread starts with this mask) */
    int rc = pthread_create(&w->thread, &attr, watch_socket, w);
    pthread_sigmask(SIG_SETMASK, &before, NULL);
    pthread_attr_destroy(&attr);
    if (rc != 0) {
        watcher_free(w);
        return NULL;
    }
    pthread_setname_np(w->thread, "plasma-watch"); /* (what top -H and /proc show) */
    return w;
}

/* The thread stopped and joined (in the process that started it), the descriptors closed. */
static void watcher_stop(Watcher *w) {
    if (w->pid == getpid()) {
        uint64_t one = 1;
        while (write(w->stop_fd, &one, sizeof one) < 0 && errno == EINTR)
            ;
        pthread_join(w->thread, NULL);
    }
    watcher_free(w);
}

/* ------------------------------------------------------------------ Getter */

typedef struct {
    PyObject_HEAD
    PyObject *reader;            /* a Reader, or None: nothing is served */
    PyObject *pins;              /* a PinTable, or None: pins are not ours (forked, closed) */
    PyObject *segments;          /* dict: segment id -> its map */
    PyObject *held, *cache;      /* Refs' dicts: id -> record */
    RLock *lock;                 /* the client core's */
    PyObject *drop;              /* Refs._drop_view(id): the whole drop, in Python */
    PyObject *evict;             /* Refs._evict_oldest(): the oldest cached reference let go */
    PyObject *unpinned;          /* Outbox.unpins.append: a dying object's pin let go */
    PyCFunction unpin_fn;        /* unpinned's C function when it is a built-in one-argument */
    PyObject *unpin_self;        /* method (deque.append), called directly; else NULL */
    PyObject *id_type;           /* plasma.ObjectID */
    Py_ssize_t id_offset;        /* where an ObjectID keeps its bytes (its slot "_b") */
    PyObject *node;              /* this client's node (replicas), or None */
    int fd;                      /* the coordinator's socket, or -1 */
    Watcher *watcher;            /* the thread watching it, or NULL: gets poll it */
    long long interval_ns;       /* between two polls of it for a hang-up (no watcher) */
    long long next_look;         /* CLOCK_MONOTONIC ns */
    Py_ssize_t release_delay, cache_limit, cache_bytes;
} Getter;

static PyTypeObject GetterType;

static PyObject *getter_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *names[] = {"segments", "held",     "cache",   "lock", "drop",
                            "evict",    "unpinned", "id_type", NULL};
    PyObject *segments, *held, *cache, *lock, *drop, *evict, *unpinned, *id_type;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!O!O!O!OOOO:Getter", names, &PyDict_Type,
                                     &segments, &PyDict_Type, &held, &PyDict_Type, &cache,
                                     &RLockType, &lock,
                                     &drop, &evict, &unpinned, &id_type))
        return NULL;
    Getter *self = (Getter *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    PyObject **slots[] = {&self->segments, &self->held,     &self->cache,   &self->drop,
                          &self->evict,    &self->unpinned, &self->id_type, (PyObject **)&self->lock};
    PyObject *given[] = {segments, held, cache, drop, evict, unpinned, id_type, lock};
    for (size_t i = 0; i < sizeof(given) / sizeof(given[0]); i++) {
        Py_INCREF(given[i]);
        *slots[i] = given[i];
    }
    PyObject *slot = PyObject_GetAttrString(id_type, "_b");
    if (slot == NULL || !PyObject_TypeCheck(slot, &PyMemberDescr_Type) ||
        ((PyMemberDescrObject *)slot)->d_member->type != T_OBJECT_EX) {
        Py_XDECREF(slot);
        Py_DECREF(self);
        PyErr_SetString(PyExc_TypeError, "id_type must keep its bytes in a slot _b");
        return NULL;
    }
    self->id_offset = ((PyMemberDescrObject *)slot)->d_member->offset;
    Py_DECREF(slot);
    if (PyCFunction_Check(unpinned) && PyCFunction_GET_FLAGS(unpinned) == METH_O) {
        /* (borrowed: unpinned, which this Getter holds, holds it) */
        self->unpin_fn = PyCFunction_GET_FUNCTION(unpinned);
        self->unpin_self = PyCFunction_GET_SELF(unpinned);
    }
    Py_INCREF(Py_None);
    self->reader = Py_None;
    Py_INCREF(Py_None);
    self->pins = Py_None;
    Py_INCREF(Py_None);
    self->node = Py_None;
    self->fd = -1;
    return (PyObject *)self;
}

static int getter_traverse(Getter *self, visitproc visit, void *arg) {
    Py_VISIT(self->reader);
    Py_VISIT(self->pins);
    Py_VISIT(self->segments);
    Py_VISIT(self->held);
    Py_VISIT(self->cache);
    Py_VISIT(self->lock);
    Py_VISIT(self->drop);
    Py_VISIT(self->evict);
    Py_VISIT(self->unpinned);
    Py_VISIT(self->id_type);
    Py_VISIT(self->node);
    return 0;
}

static int getter_clear(Getter *self) {
    Py_CLEAR(self->reader);
    Py_CLEAR(self->pins);
    Py_CLEAR(self->segments);
    Py_CLEAR(self->held);
    Py_CLEAR(self->cache);
    Py_CLEAR(self->lock);
    Py_CLEAR(self->drop);
    Py_CLEAR(self->evict);
    Py_CLEAR(self->unpinned);
    self->unpin_fn = NULL;
    self->unpin_self = NULL;
    Py_CLEAR(self->id_type);
    Py_CLEAR(self->node);
    return 0;
}

static void getter_dealloc(Getter *self) {
    PyObject_GC_UnTrack(self);
    if (self->watcher != NULL)
        watcher_stop(self->watcher);
    getter_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* 1 when the socket may have hung up (Python looks then, and serves nothing if so): its
 * watcher saw a hang-up; without one, it is polled once every interval_ns at most, a read of
 * the clock between looks */
static int may_have_hung_up(Getter *g) {
    if (g->fd < 0)
        return 0;
    if (g->watcher != NULL) {
        int state = atomic_load_explicit(&g->watcher->state, memory_order_acquire);
        if (state != GAVE_UP)
            return state == HUNG_UP;
    }
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    long long now = (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
    if (now < g->next_look)
        return 0;
    g->next_look = now + g->interval_ns;
    struct pollfd look = {.fd = g->fd, .events = POLLRDHUP};
    if (poll(&look, 1, 0) == 0)
        return 0;
    g->next_look = 0; /* (an event or an error: look again next time) */
    return 1;
}

/* watch(fd): the watcher of the socket before (if any) stopped and joined, then fd watched */
static PyObject *getter_watch(Getter *self, PyObject *arg) {
    long fd = PyLong_AsLong(arg);
    if (fd == -1 && PyErr_Occurred())
        return NULL;
    if (fd > INT_MAX) {
        PyErr_SetString(PyExc_OverflowError, "fd is not a descriptor");
        return NULL;
    }
    if (self->watcher != NULL) {
        watcher_stop(self->watcher);
        self->watcher = NULL;
    }
    self->fd = fd < 0 ? -1 : (int)fd;
    self->next_look = 0; /* (without a watcher, a new socket is polled with the next get) */
    if (self->fd >= 0)
        self->watcher = watcher_start(self->fd);
    return PyBool_FromLong(self->watcher != NULL);
}

static PyObject *getter_get_hung_up(Getter *self, void *closure) {
    int state = self->watcher != NULL
                    ? atomic_load_explicit(&self->watcher->state, memory_order_acquire)
                    : GAVE_UP;
    if (state == GAVE_UP)
        Py_RETURN_NONE;
    return PyBool_FromLong(state == HUNG_UP);
}

/* ---------------------------------------------------------- the view and the drop */

/* The data of a pinned object as a read-only buffer: what get's memoryview is made of. It
 * holds a buffer export of the segment's map (the map cannot be closed under it) and, when
 * it goes, drops its record. */
typedef struct {
    PyObject_HEAD
    Py_buffer segment;
    char *start;
    Py_ssize_t length;
    Getter *getter; /* NULL until the view is whole: then its going drops the record */
    Pinned *rec;
    PyObject *key;
} GetView;

static PyTypeObject GetViewType;

/* The record's pin given back (telling the coordinator when the object is dying): what
 * Refs._let_go does for a pinned reference. */
static void let_go(Getter *g, PyObject *key, Pinned *rec) {
    if (g->pins == Py_None)
        return;
    int rc = pcd_unpin(&((PinTable *)g->pins)->p, (uint64_t)rec->pin);
    if (rc != PCD_OK) {
        PyErr_SetString(PyExc_ValueError, pcd_strerror(rc));
        PyErr_WriteUnraisable((PyObject *)g);
        return;
    }
    if (g->reader != Py_None && pcd_dying(&((Reader *)g->reader)->r, &rec->f)) {
        /* (a built-in method called as its vectorcall would, minus the dispatch) */
        PyObject *r = g->unpin_fn != NULL ? g->unpin_fn(g->unpin_self, key)
                                          : PyObject_CallOneArg(g->unpinned, key);
        if (r == NULL)
            PyErr_WriteUnraisable(g->unpinned);
        Py_XDECREF(r);
    }
}

/* The oldest cached reference let go: 0, or -1 with an exception set */
static int evict_oldest(Getter *g, int *locked) {
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    if (!PyDict_Next(g->cache, &pos, &key, &value)) {
        g->cache_bytes = 0; /* (nothing cached: nothing counted) */
        return 0;
    }
    if (Py_TYPE(value) != &PinnedType) { /* Refs' own record: its own code, locked */
        if (!*locked) {
            if (rlock_take(g->lock, 1) < 0)
                return -1;
            *locked = 1;
        }
        PyObject *r = PyObject_CallNoArgs(g->evict);
        Py_XDECREF(r);
        return r == NULL ? -1 : 0;
    }
    Py_INCREF(key);
    Py_INCREF(value);
    int rc = PyDict_DelItem(g->cache, key);
    if (rc == 0) {
        g->cache_bytes -= pinned_size((Pinned *)value);
        let_go(g, key, (Pinned *)value);
    }
    Py_DECREF(key);
    Py_DECREF(value);
    return rc;
}

/* Refs._drop_view for a record get made: its view went. The plain cases here, the rest in
 * Python (called after the lock is let go, as it takes it itself). */
static void getter_drop(Getter *g, PyObject *key, Pinned *rec) {
    /* Locked by another thread: wait (as the Python drop does). Free or this thread's: what
     * follows runs no Python code (the GIL is not let go), unless it takes it first. */
    int in_python = 0, locked = 0;
    if (g->lock->count > 0 && g->lock->owner != PyThread_get_thread_ident()) {
        if (rlock_take(g->lock, 1) < 0) {
            PyErr_WriteUnraisable((PyObject *)g->lock);
            return;
        }
        locked = 1;
    }
    if (--rec->views > 0)
        goto unlock;
    PyObject *now = g->pins != Py_None ? PyDict_GetItemWithError(g->held, key) : NULL;
    if (now != (PyObject *)rec) { /* a forked child, a closed client: Refs knows what to do */
        if (PyErr_Occurred())
            PyErr_WriteUnraisable(g->held);
        rec->views++;
        in_python = 1;
        goto unlock;
    }
    Py_INCREF(rec);
    if (PyDict_DelItem(g->held, key) < 0) {
        PyErr_WriteUnraisable(g->held);
    } else if (rec->revoked || g->release_delay <= 0) {
        let_go(g, key, rec);
    } else if (PyDict_SetItem(g->cache, key, (PyObject *)rec) < 0) {
        PyErr_WriteUnraisable(g->cache);
        let_go(g, key, rec);
    } else {
        g->cache_bytes += pinned_size(rec);
        while (PyDict_GET_SIZE(g->cache) > g->release_delay || g->cache_bytes > g->cache_limit) {
            if (evict_oldest(g, &locked) < 0) {
                PyErr_WriteUnraisable(g->evict);
                break;
            }
        }
    }
    Py_DECREF(rec);
unlock:
    if (locked && rlock_give(g->lock) < 0)
        PyErr_WriteUnraisable((PyObject *)g->lock);
    if (in_python) {
        PyObject *r = PyObject_CallOneArg(g->drop, key);
        if (r == NULL)
            PyErr_WriteUnraisable(g->drop);
        Py_XDECREF(r);
    }
}

static void getview_dealloc(GetView *self) {
    Getter *g = self->getter;
    Pinned *rec = self->rec;
    PyObject *key = self->key;
    if (self->segment.obj != NULL)
        PyBuffer_Release(&self->segment);
    keep_spare(&spare_view, (PyObject *)self);
    if (g != NULL && !PyErr_Occurred()) {
        getter_drop(g, key, rec);
    } else if (g != NULL) {
        /* (a finalizer: whatever exception is being handled stays as it was) */
        PyObject *type, *value, *traceback;
        PyErr_Fetch(&type, &value, &traceback);
        getter_drop(g, key, rec);
        PyErr_Restore(type, value, traceback);
    }
    Py_XDECREF(g);
    Py_XDECREF(rec);
    Py_XDECREF(key);
}

static int getview_getbuffer(GetView *self, Py_buffer *view, int flags) {
    return PyBuffer_FillInfo(view, (PyObject *)self, self->start, self->length, 1, flags);
}

static PyBufferProcs getview_as_buffer = {
    .bf_getbuffer = (getbufferproc)getview_getbuffer,
};

static PyTypeObject GetViewType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "plasma._native._directory.GetView",
    .tp_basicsize = sizeof(GetView),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The data of an object a Getter pinned, read-only.",
    .tp_dealloc = (destructor)getview_dealloc,
    .tp_as_buffer = &getview_as_buffer,
};

/* ------------------------------------------------------------------ the get */

typedef struct {
    PyObject *segments;
    PyObject *map; /* (borrowed) the map of the segment last said mapped */
    int failed;
} segment_ctx;

static int segment_mapped(void *ctx, uint32_t segment) {
    segment_ctx *c = ctx;
    PyObject *key = PyLong_FromUnsignedLong(segment);
    if (key == NULL) {
        c->failed = 1;
        return 0;
    }
    c->map = PyDict_GetItemWithError(c->segments, key);
    Py_DECREF(key);
    if (c->map == NULL && PyErr_Occurred())
        c->failed = 1;
    return c->map != NULL;
}

/* get with the lock held and key (20 bytes) neither held nor cached */
static PyObject *serve(Getter *g, PyObject *key) {
    Reader *reader = (Reader *)g->reader;
    PinTable *pins = (PinTable *)g->pins;
    PyObject *replica_bytes;
    const unsigned char *replica;
    if (replica_of(reader, key, g->node, &replica_bytes, &replica) < 0)
        return NULL;
    segment_ctx ctx = {g->segments, NULL, 0};
    pcd_found f;
    int64_t index;
    int got = pcd_get(&reader->r, &pins->p, (const unsigned char *)PyBytes_AS_STRING(key),
                      replica, segment_mapped, &ctx, &f, &index);
    Py_XDECREF(replica_bytes);
    if (ctx.failed)
        return NULL;
    if (!got)
        Py_RETURN_NONE;
    Pinned *rec = (Pinned *)take_spare(&spare_pinned, &PinnedType);
    GetView *view = rec != NULL ? (GetView *)take_spare(&spare_view, &GetViewType) : NULL;
    if (view == NULL) {
        Py_XDECREF(rec);
        pcd_unpin(&pins->p, (uint64_t)index);
        return NULL;
    }
    rec->f = f;
    rec->pin = index;
    rec->views = 1;
    rec->revoked = 0;
    view->getter = NULL;
    view->rec = rec; /* (the view's reference: rec's own goes to held below) */
    Py_INCREF(key);
    view->key = key;
    if (PyObject_GetBuffer(ctx.map, &view->segment, PyBUF_SIMPLE) < 0) {
        view->segment.obj = NULL;
        goto failed;
    }
    if (f.offset > (uint64_t)view->segment.len ||
        f.data_size > (uint64_t)view->segment.len - f.offset) {
        PyErr_Format(PyExc_ValueError, "object %R is not in its segment's map", key);
        goto failed;
    }
    view->start = (char *)view->segment.buf + f.offset;
    view->length = (Py_ssize_t)f.data_size;
    Py_INCREF(rec);
    if (PyDict_SetItem(g->held, key, (PyObject *)rec) < 0) {
        Py_DECREF(rec);
        goto failed;
    }
    Py_DECREF(rec);
    Py_INCREF(g);
    view->getter = g; /* from now on its going drops the record */
    PyObject *out = PyMemoryView_FromObject((PyObject *)view);
    Py_DECREF(view);
    return out;
failed:
    Py_DECREF(view);
    pcd_unpin(&pins->p, (uint64_t)index);
    return NULL;
}

static PyObject *getter_get(Getter *g, PyObject *obj) {
    if (g->reader == Py_None || g->pins == Py_None)
        Py_RETURN_NONE;
    PyObject *key;
    if (PyBytes_CheckExact(obj)) {
        Py_INCREF(obj);
        key = obj;
    } else if ((PyObject *)Py_TYPE(obj) == g->id_type &&
               (key = *(PyObject **)((char *)obj + g->id_offset)) != NULL) {
        Py_INCREF(key);
    } else {
        Py_RETURN_NONE;
    }
    PyObject *out = NULL;
    if (!PyBytes_CheckExact(key) || PyBytes_GET_SIZE(key) != PCD_ID_SIZE ||
        may_have_hung_up(g)) {
        Py_DECREF(key);
        Py_RETURN_NONE;
    }
    /* The lock held (by another thread, or by this one in the middle of Refs' work): the
     * Python path, which waits for it. Free, nobody takes it before this returns, as long as
     * no Python code runs (the GIL is not let go): it is taken only where some does (the
     * replica id, replicas being published). */
    int locked = 0;
    if (g->lock->count > 0 ||
        (g->node != Py_None && pcd_replicas(&((Reader *)g->reader)->r) &&
         !(locked = rlock_take(g->lock, 0)))) {
        Py_DECREF(key);
        Py_RETURN_NONE;
    }
    int known = PyDict_Contains(g->held, key);
    if (known == 0)
        known = PyDict_Contains(g->cache, key);
    if (known == 0) {
        out = serve(g, key);
    } else if (known > 0) { /* (reused by Refs, after taking in revocations) */
        Py_INCREF(Py_None);
        out = Py_None;
    }
    if (locked && rlock_give(g->lock) < 0)
        Py_CLEAR(out);
    Py_DECREF(key);
    return out;
}

/* ------------------------------------------------------------------ Bound */

/* A client's get method as one C call: get(oid) served by the Getter when it is one plain
 * id with no other argument, else (or when the Getter cannot serve it) the method it stands
 * in for, called on the client with the same arguments. It holds the client weakly (it
 * lives in the client's own dict: no cycle keeps a dropped client, and its socket, alive). */
typedef struct {
    PyObject_HEAD
    Getter *getter;
    PyObject *method; /* the function it stands in for */
    PyObject *owner;  /* a weak reference to the client */
    vectorcallfunc vectorcall;
} Bound;

static PyTypeObject BoundType;

#define BOUND_STACK_ARGS 8

static PyObject *bound_call(Bound *self, PyObject *const *args, size_t nargsf,
                            PyObject *kwnames) {
    Py_ssize_t n = PyVectorcall_NARGS(nargsf);
    Py_ssize_t nkw = kwnames != NULL ? PyTuple_GET_SIZE(kwnames) : 0;
    if (n == 1 && nkw == 0) {
        PyObject *got = getter_get(self->getter, args[0]);
        if (got != Py_None)
            return got; /* (a view, or NULL: an error) */
        Py_DECREF(got);
    }
    PyObject *owner = PyWeakref_GetObject(self->owner); /* (borrowed) */
    if (owner == NULL)
        return NULL;
    if (owner == Py_None) {
        PyErr_SetString(PyExc_ReferenceError, "the client of this get method is gone");
        return NULL;
    }
    PyObject *stack[BOUND_STACK_ARGS], **all = stack;
    if (1 + n + nkw > BOUND_STACK_ARGS) {
        all = PyMem_Malloc((size_t)(1 + n + nkw) * sizeof(PyObject *));
        if (all == NULL)
            return PyErr_NoMemory();
    }
    Py_INCREF(owner);
    all[0] = owner;
    memcpy(all + 1, args, (size_t)(n + nkw) * sizeof(PyObject *));
    PyObject *out = PyObject_Vectorcall(self->method, all, (size_t)(n + 1), kwnames);
    Py_DECREF(owner);
    if (all != stack)
        PyMem_Free(all);
    return out;
}

static int bound_traverse(Bound *self, visitproc visit, void *arg) {
    Py_VISIT(self->getter);
    Py_VISIT(self->method);
    Py_VISIT(self->owner);
    return 0;
}

static int bound_clear(Bound *self) {
    Py_CLEAR(self->getter);
    Py_CLEAR(self->method);
    Py_CLEAR(self->owner);
    return 0;
}

static void bound_dealloc(Bound *self) {
    PyObject_GC_UnTrack(self);
    bound_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *bound_get_method(Bound *self, void *closure) {
    Py_INCREF(self->method);
    return self->method;
}

static PyGetSetDef bound_getset[] = {
    {"__wrapped__", (getter)bound_get_method, NULL, "the method it stands in for", NULL},
    {NULL},
};

static PyTypeObject BoundType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "plasma._native._directory.Bound",
    .tp_basicsize = sizeof(Bound),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "A client's get method served by a Getter where it can (Getter.bind).",
    .tp_vectorcall_offset = offsetof(Bound, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_dealloc = (destructor)bound_dealloc,
    .tp_traverse = (traverseproc)bound_traverse,
    .tp_clear = (inquiry)bound_clear,
    .tp_getset = bound_getset,
};

static PyObject *getter_bind(Getter *g, PyObject *const *args, Py_ssize_t n) {
    if (n != 2 || !PyCallable_Check(args[0]) || !PyWeakref_CheckRef(args[1])) {
        PyErr_SetString(PyExc_TypeError,
                        "bind(method, owner): a callable and a weak reference to the client");
        return NULL;
    }
    Bound *self = PyObject_GC_New(Bound, &BoundType);
    if (self == NULL)
        return NULL;
    Py_INCREF(g);
    self->getter = g;
    Py_INCREF(args[0]);
    self->method = args[0];
    Py_INCREF(args[1]);
    self->owner = args[1];
    self->vectorcall = (vectorcallfunc)bound_call;
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

static PyMethodDef getter_methods[] = {
    {"get", (PyCFunction)getter_get, METH_O,
     "get(oid): a read-only memoryview of the data of the sealed object oid (an ObjectID, or "
     "20 bytes) read from the directory and pinned; None when this is not the plain case "
     "(ask Refs, or the coordinator)"},
    {"watch", (PyCFunction)getter_watch, METH_O,
     "watch(fd): look at socket fd (-1: none) for a hang-up from now on, the socket watched "
     "before let go first (its thread stopped and joined: call it before closing a socket). "
     "True: a thread waits for the hang-up, and a get reads its flag; False: none could be "
     "started (or fd is -1), and a get polls the socket every interval_ns at most"},
    {"bind", (PyCFunction)(void (*)(void))getter_bind, METH_FASTCALL,
     "bind(method, owner): a client's get method in one C call: get(oid) when called with "
     "one argument that get serves, else method(owner(), *args, **kwargs); owner is a weak "
     "reference to the client"},
    {NULL},
};

static PyObject *getter_get_reader(Getter *self, void *closure) {
    Py_INCREF(self->reader);
    return self->reader;
}

static PyObject *getter_get_pins(Getter *self, void *closure) {
    Py_INCREF(self->pins);
    return self->pins;
}

static PyObject *getter_get_node(Getter *self, void *closure) {
    Py_INCREF(self->node);
    return self->node;
}

static int set_checked(PyObject **slot, PyObject *value, PyTypeObject *type, const char *what) {
    if (value == NULL || (value != Py_None && type != NULL && !PyObject_TypeCheck(value, type)) ||
        (type == NULL && value != Py_None && !PyLong_Check(value))) {
        PyErr_Format(PyExc_TypeError, "%s must be %s or None", what,
                     type != NULL ? type->tp_name : "an int");
        return -1;
    }
    Py_INCREF(value);
    Py_SETREF(*slot, value);
    return 0;
}

static int getter_set_reader(Getter *self, PyObject *value, void *closure) {
    return set_checked(&self->reader, value, &ReaderType, "reader");
}

static int getter_set_pins(Getter *self, PyObject *value, void *closure) {
    return set_checked(&self->pins, value, &PinTableType, "pins");
}

static PyObject *getter_get_fd(Getter *self, void *closure) {
    return PyLong_FromLong(self->fd);
}

static int getter_set_node(Getter *self, PyObject *value, void *closure) {
    return set_checked(&self->node, value, NULL, "node");
}

static PyGetSetDef getter_getset[] = {
    {"reader", (getter)getter_get_reader, (setter)getter_set_reader,
     "the directory's Reader, or None (nothing is served)", NULL},
    {"pins", (getter)getter_get_pins, (setter)getter_set_pins,
     "this client's PinTable, or None (pins are let go by Refs' Python code)", NULL},
    {"fd", (getter)getter_get_fd, NULL, "the coordinator's socket, watched (-1: none)", NULL},
    {"hung_up", (getter)getter_get_hung_up, NULL,
     "whether the thread watching the socket saw a hang-up; None when no thread watches "
     "it (a get polls it then, every interval_ns at most)",
     NULL},
    {"node", (getter)getter_get_node, (setter)getter_set_node,
     "this client's node, or None: its copy of an object is read first", NULL},
    {NULL},
};

static PyMemberDef getter_members[] = {
    {"interval_ns", T_LONGLONG, offsetof(Getter, interval_ns), 0,
     "ns between two polls of the socket for a hang-up, where no thread watches it"},
    {"release_delay", T_PYSSIZET, offsetof(Getter, release_delay), 0,
     "cached references kept at most"},
    {"cache_limit", T_PYSSIZET, offsetof(Getter, cache_limit), 0, "cached bytes kept at most"},
    {"cache_bytes", T_PYSSIZET, offsetof(Getter, cache_bytes), 0, "cached bytes now"},
    {NULL},
};

static PyTypeObject GetterType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "plasma._native._directory.Getter",
    .tp_basicsize = sizeof(Getter),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Getter(segments, held, cache, lock, drop, evict, unpinned, id_type): "
              "gets served from the directory in one call (the C half of a client's "
              "references; see plasma/_native/fast_get.c).",
    .tp_new = getter_new,
    .tp_dealloc = (destructor)getter_dealloc,
    .tp_traverse = (traverseproc)getter_traverse,
    .tp_clear = (inquiry)getter_clear,
    .tp_methods = getter_methods,
    .tp_members = getter_members,
    .tp_getset = getter_getset,
};

int fast_get_ready(void) {
    if (PyType_Ready(&RLockType) < 0 || PyType_Ready(&PinnedType) < 0 ||
        PyType_Ready(&GetViewType) < 0 || PyType_Ready(&GetterType) < 0 ||
        PyType_Ready(&BoundType) < 0)
        return -1;
    return 0;
}

int fast_get_add(PyObject *module) {
    if (PyModule_AddObjectRef(module, "RLock", (PyObject *)&RLockType) < 0 ||
        PyModule_AddObjectRef(module, "Pinned", (PyObject *)&PinnedType) < 0 ||
        PyModule_AddObjectRef(module, "Getter", (PyObject *)&GetterType) < 0)
        return -1;
    return 0;
}
