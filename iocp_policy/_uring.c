/*
 * iocp_policy._uring -- an io_uring completion port, managed by hand.
 *
 * How io_uring really behaves (what this file relies on)
 * ======================================================
 *
 * io_uring_setup(2) returns an fd and fills `struct io_uring_params` with the
 * offsets of three shared regions that we mmap(2): the submission ring (SQ:
 * head, tail, mask, flags, and an index array), the completion ring (CQ:
 * head, tail, mask, overflow counter, and the CQE array), and the SQE array.
 * With IORING_FEAT_SINGLE_MMAP (5.4) the SQ and CQ rings share one mapping.
 *
 * Ownership of the ring indices is split:
 *   - SQ tail: written by us, read by the kernel.  We fill an SQE, then
 *     publish it with a store-release of the tail; the kernel reads the tail
 *     with acquire semantics.  Publishing first and filling later would let
 *     the kernel read a half-written SQE.
 *   - SQ head: written by the kernel (while it consumes SQEs inside
 *     io_uring_enter), read by us with load-acquire to know which slots are
 *     free again.
 *   - CQ tail: written by the kernel, read by us with load-acquire.  Without
 *     acquire we could read a CQE's fields before the kernel's writes to them
 *     are visible.
 *   - CQ head: written by us with store-release after we copied a CQE out.
 *     Releasing the slot before copying lets the kernel overwrite it.
 *
 * The key of an operation is the SQE's `user_data`.  Here it is the address
 * of the OpObject that owns the operation's memory (Py_buffer views, the
 * bytes being received into, msghdr, iovecs, sockaddr).  The ring holds a
 * strong reference to every OpObject from submission until its *final* CQE:
 *   - a one-shot op has one CQE;
 *   - a multishot op (IORING_ACCEPT_MULTISHOT, IORING_POLL_ADD_MULTI) posts
 *     CQEs with IORING_CQE_F_MORE set while it stays armed, and a last one
 *     without it;
 *   - a cancelled op still posts its CQE (-ECANCELED, or its real result if
 *     the cancel lost the race).  IORING_OP_ASYNC_CANCEL only *asks*; the
 *     kernel may be copying into our buffer at that very moment.
 * So memory is released on the final CQE and never before, whatever Python
 * does with the op in between.  A ring that is destroyed while ops are
 * still in flight (and cannot reap them within a bounded wait) moves them to
 * a module-level graveyard: leaking a buffer is a bug report, freeing one the
 * kernel may still write is memory corruption.
 *
 * Setup flags, richest first, dropped one by one on EINVAL (each kernel
 * release only adds flags, so dropping the newest first finds the best set):
 *   IORING_SETUP_DEFER_TASKRUN (6.1)  completion work runs only when we call
 *       io_uring_enter(IORING_ENTER_GETEVENTS): no interrupts of the loop
 *       thread, batched work.  Consequence: you must enter the kernel to see
 *       completions; peeking at the CQ alone can miss them.
 *   IORING_SETUP_SINGLE_ISSUER (6.0)  only one task submits.  We create the
 *       ring IORING_SETUP_R_DISABLED and enable it lazily, so the issuer is
 *       the thread that first *runs* the loop, not the one that built it.
 *       Another thread entering gets -EEXIST.
 *   IORING_SETUP_TASKRUN_FLAG (5.19)  the kernel sets IORING_SQ_TASKRUN in
 *       the SQ flags when completion work is pending, so an iteration with
 *       nothing to submit and nothing to wait for can skip the syscall.
 *   IORING_SETUP_COOP_TASKRUN (5.19)  no inter-processor interrupt to run
 *       completion work.
 *   IORING_SETUP_SUBMIT_ALL (5.18)  one bad SQE does not stop the batch.
 *   IORING_SETUP_CQSIZE (5.5)  a CQ larger than the SQ: multishot ops can
 *       post many CQEs per SQE.
 * Required: IORING_FEAT_EXT_ARG (5.11, timeouts passed to io_uring_enter so
 * no timeout SQEs are needed) and IORING_FEAT_NODROP (5.5, CQ overflow is kept
 * in the kernel and flushed by the next IORING_ENTER_GETEVENTS, signalled by
 * IORING_SQ_CQ_OVERFLOW).
 *
 * Cross-thread wakeup: a non-blocking pipe with a multishot IORING_OP_POLL_ADD
 * armed on its read end.  Other threads write(2) one byte to it (coalesced
 * through an atomic flag); the poll completion is ring work like any other,
 * so it also wakes an io_uring_enter() waiting under DEFER_TASKRUN.  A pipe
 * rather than an eventfd because the write end doubles as the interpreter's
 * signal wakeup fd (signal.set_wakeup_fd writes one byte per signal, which
 * an eventfd refuses): a signal that arrives just before we block in the
 * kernel still wakes us.  The pipe lives as long as the Ring object, across
 * reset(), so the fd number handed to the signal module stays valid.
 *
 * READ/WRITE on files opened O_NONBLOCK (pipes, FIFOs, ttys): kernels before
 * about 6.1 honour the flag and complete the request with -EAGAIN instead of
 * waiting; newer ones arm an internal poll for files that support it.  We
 * accept both: an -EAGAIN completion is not delivered, the op arms a
 * one-shot POLL_ADD for its direction under the same user_data and, when
 * that fires, resubmits the same READ/WRITE on the same pinned memory.
 * Python sees one completion.  (`inject_rw_nowait` submits with RWF_NOWAIT
 * so that tests can walk this path on any kernel.)
 *
 * poll_fd(op, fd, events) polls a descriptor the ring then *owns* (a pidfd
 * for process exit): it is closed right after the op's final CQE, never
 * while the kernel may still resolve it.
 *
 * One io_uring_enter() per loop iteration submits every SQE queued since the
 * last one and waits for completions (or not at all when the loop has ready
 * callbacks and the kernel says no completion work is pending).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/io_uring.h>
#include <linux/time_types.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* Constants newer than the oldest uapi headers we build against. */
#ifndef IORING_SETUP_SUBMIT_ALL
#define IORING_SETUP_SUBMIT_ALL (1U << 7)
#endif
#ifndef IORING_SETUP_COOP_TASKRUN
#define IORING_SETUP_COOP_TASKRUN (1U << 8)
#endif
#ifndef IORING_SETUP_TASKRUN_FLAG
#define IORING_SETUP_TASKRUN_FLAG (1U << 9)
#endif
#ifndef IORING_SETUP_SINGLE_ISSUER
#define IORING_SETUP_SINGLE_ISSUER (1U << 12)
#endif
#ifndef IORING_SETUP_DEFER_TASKRUN
#define IORING_SETUP_DEFER_TASKRUN (1U << 13)
#endif
#ifndef IORING_SQ_TASKRUN
#define IORING_SQ_TASKRUN (1U << 2)
#endif
#ifndef IORING_ENTER_EXT_ARG
#define IORING_ENTER_EXT_ARG (1U << 3)
#endif
#ifndef IORING_ENTER_REGISTERED_RING
#define IORING_ENTER_REGISTERED_RING (1U << 4)
#endif
#ifndef IORING_FEAT_EXT_ARG
#define IORING_FEAT_EXT_ARG (1U << 8)
#endif
#ifndef IORING_FEAT_CQE_SKIP
#define IORING_FEAT_CQE_SKIP (1U << 11)
#endif
#ifndef IORING_FEAT_NATIVE_WORKERS
#define IORING_FEAT_NATIVE_WORKERS (1U << 9)
#endif
#ifndef IORING_FEAT_RSRC_TAGS
#define IORING_FEAT_RSRC_TAGS (1U << 10)
#endif
#ifndef IORING_FEAT_LINKED_FILE
#define IORING_FEAT_LINKED_FILE (1U << 12)
#endif
#ifndef IORING_FEAT_REG_REG_RING
#define IORING_FEAT_REG_REG_RING (1U << 13)
#endif
#ifndef IORING_ACCEPT_MULTISHOT
#define IORING_ACCEPT_MULTISHOT (1U << 0)
#endif
#ifndef IORING_POLL_ADD_MULTI
#define IORING_POLL_ADD_MULTI (1U << 0)
#endif
#ifndef IOSQE_CQE_SKIP_SUCCESS
#define IOSQE_CQE_SKIP_SUCCESS (1U << 6)
#endif
#define REGISTER_PROBE 8
#define REGISTER_ENABLE_RINGS 12
#define REGISTER_RING_FDS 20

#ifndef __NR_io_uring_setup
#define __NR_io_uring_setup 425
#endif
#ifndef __NR_io_uring_enter
#define __NR_io_uring_enter 426
#endif
#ifndef __NR_io_uring_register
#define __NR_io_uring_register 427
#endif

#define load_acquire(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define store_release(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)

/* user_data values that are not OpObject addresses (objects are aligned). */
#define UD_IGNORE 0ULL /* cancel requests: their own CQE carries nothing we need */
#define UD_WAKE 1ULL   /* the wake pipe's poll (cross-thread wakeups, signals) */

#define IOV_LIMIT 1024 /* IOV_MAX on Linux */

#ifndef RWF_NOWAIT
#define RWF_NOWAIT 0x00000008
#endif

/* Phases of a READ/WRITE op that met -EAGAIN (see the essay). */
#define PHASE_IO 0    /* the READ/WRITE itself is in flight */
#define PHASE_POLL 1  /* a POLL_ADD for its direction is in flight; then resubmit */

static PyObject *graveyard; /* list: ops abandoned in flight, never freed */

/* ------------------------------------------------------------------------ */
/* syscalls                                                                   */

static int sys_setup(unsigned entries, struct io_uring_params *p) {
    return (int)syscall(__NR_io_uring_setup, entries, p);
}

static int sys_enter(int fd, unsigned to_submit, unsigned min_complete,
                     unsigned flags, void *arg, size_t argsz) {
    return (int)syscall(__NR_io_uring_enter, fd, to_submit, min_complete,
                        flags, arg, argsz);
}

static int sys_register(int fd, unsigned opcode, void *arg, unsigned nr) {
    return (int)syscall(__NR_io_uring_register, fd, opcode, arg, nr);
}

/* ------------------------------------------------------------------------ */
/* Op: one operation's state and memory                                       */

enum op_kind {
    K_NONE = 0,
    K_RECV,           /* recv into a fresh bytes object */
    K_RECV_INTO,      /* recv into a caller's writable buffer */
    K_SEND,           /* send one buffer */
    K_SENDV,          /* sendmsg with an iovec gathered from a list */
    K_RECVFROM,       /* recvmsg into a fresh bytes object, with address */
    K_RECVFROM_INTO,  /* recvmsg into a caller's buffer, with address */
    K_ACCEPT,         /* accept, one-shot or multishot */
    K_POLL,           /* readiness poll, one-shot or multishot */
    K_READ,           /* read(2) into a fresh bytes object (pipes, ttys) */
    K_READ_INTO,      /* read(2) into a caller's buffer */
    K_WRITE,          /* write(2) one buffer */
    K_POST,           /* a result delivered through the port (IORING_OP_NOP) */
};

typedef struct OpObject {
    PyObject_HEAD
    PyObject *callback;  /* called as callback(res) for each CQE */
    PyObject *fileobj;   /* what the caller bound the op to (for repr/debug) */
    PyObject *data;      /* bytes the kernel writes into (K_RECV/K_READ/K_RECVFROM) */
    Py_buffer *views;    /* buffers pinned until the final CQE */
    struct iovec *iov;   /* iovecs for K_SENDV */
    int nviews;
    int cap;
    int fd;
    uint8_t kind;
    uint8_t active;      /* submitted and its final CQE not yet seen */
    uint8_t cancelling;  /* an ASYNC_CANCEL was queued for it */
    uint8_t data_ready;  /* `data` holds a completed result not yet taken */
    uint8_t multishot;   /* armed with a multishot flag */
    uint8_t phase;       /* PHASE_IO or PHASE_POLL (READ/WRITE after -EAGAIN) */
    uint8_t owns_fd;     /* owned_fd is ours: closed after the final CQE */
    int owned_fd;        /* the descriptor a poll_fd() op polls */
    unsigned io_len;     /* byte count of a READ/WRITE, for resubmission */
    int msg_flags;       /* msghdr.msg_flags written back by recvmsg */
    int post_res;        /* the result a K_POST op delivers */
    socklen_t addrlen;
    struct msghdr msg;
    struct iovec iov1;
    struct sockaddr_storage addr;
    struct OpObject *prev, *next; /* the ring's in-flight list */
    PyObject *weakreflist;
} OpObject;

static PyTypeObject Op_Type;

static void op_release_views(OpObject *op) {
    for (int i = 0; i < op->nviews; i++) PyBuffer_Release(&op->views[i]);
    op->nviews = 0;
}

/* Close the descriptor a poll_fd() op owns.  Only after its final CQE (or
   when the kernel was never given the SQE): a poll resolved the fd to a file
   at submission, but closing earlier would let the number be reused by a
   file the caller then mistakes for ours. */
static void op_close_owned(OpObject *op) {
    if (op->owns_fd) {
        close(op->owned_fd);
        op->owns_fd = 0;
        op->owned_fd = -1;
    }
}

static int op_reserve(OpObject *op, int n) {
    if (op->cap >= n) return 0;
    Py_buffer *v = PyMem_Realloc(op->views, sizeof(Py_buffer) * (size_t)n);
    if (v == NULL) { PyErr_NoMemory(); return -1; }
    op->views = v;
    struct iovec *iov = PyMem_Realloc(op->iov, sizeof(struct iovec) * (size_t)n);
    if (iov == NULL) { PyErr_NoMemory(); return -1; }
    op->iov = iov;
    op->cap = n;
    return 0;
}

static int Op_init(OpObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"fd", "callback", "fileobj", NULL};
    int fd;
    PyObject *cb, *fileobj = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iO|O:Op", kwlist, &fd, &cb, &fileobj))
        return -1;
    if (self->active) {
        PyErr_SetString(PyExc_RuntimeError, "cannot re-initialise an operation in flight");
        return -1;
    }
    self->fd = fd;
    Py_INCREF(cb);
    Py_XSETREF(self->callback, cb);
    Py_INCREF(fileobj);
    Py_XSETREF(self->fileobj, fileobj);
    return 0;
}

static int Op_traverse(OpObject *self, visitproc visit, void *arg) {
    Py_VISIT(self->callback);
    Py_VISIT(self->fileobj);
    /* views pin exporters; they are released on the final CQE only, so they
       are deliberately not visited: the GC must never clear them. */
    return 0;
}

static int Op_clear(OpObject *self) {
    /* Only references the kernel never touches may be dropped here.  While
       the op is active its views and data are kernel memory. */
    Py_CLEAR(self->callback);
    Py_CLEAR(self->fileobj);
    return 0;
}

static void Op_dealloc(OpObject *self) {
    PyObject_GC_UnTrack(self);
    if (self->weakreflist != NULL) PyObject_ClearWeakRefs((PyObject *)self);
    /* An active op is referenced by its ring, so it cannot reach dealloc. */
    op_release_views(self);
    op_close_owned(self);
    PyMem_Free(self->views);
    PyMem_Free(self->iov);
    Py_CLEAR(self->callback);
    Py_CLEAR(self->fileobj);
    Py_CLEAR(self->data);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *decode_sockaddr(struct sockaddr_storage *ss, socklen_t len) {
    char host[INET6_ADDRSTRLEN];
    if (len == 0) Py_RETURN_NONE;
    switch (ss->ss_family) {
    case AF_INET: {
        struct sockaddr_in *a = (struct sockaddr_in *)ss;
        if (inet_ntop(AF_INET, &a->sin_addr, host, sizeof host) == NULL)
            return PyErr_SetFromErrno(PyExc_OSError);
        return Py_BuildValue("(si)", host, (int)ntohs(a->sin_port));
    }
    case AF_INET6: {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
        if (inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host) == NULL)
            return PyErr_SetFromErrno(PyExc_OSError);
        return Py_BuildValue("(siII)", host, (int)ntohs(a->sin6_port),
                             (unsigned)ntohl(a->sin6_flowinfo), (unsigned)a->sin6_scope_id);
    }
    case AF_UNIX: {
        /* Same rules as the socket module: abstract names are bytes, paths
           are decoded with the filesystem encoding, unnamed is ''. */
        struct sockaddr_un *a = (struct sockaddr_un *)ss;
        size_t off = offsetof(struct sockaddr_un, sun_path);
        if (len <= off) return PyUnicode_FromString("");
        size_t n = len - off;
        if (a->sun_path[0] == 0) return PyBytes_FromStringAndSize(a->sun_path, (Py_ssize_t)n);
        n = strnlen(a->sun_path, n);
        return PyUnicode_DecodeFSDefaultAndSize(a->sun_path, (Py_ssize_t)n);
    }
    default:
        return PyBytes_FromStringAndSize((const char *)ss, (Py_ssize_t)len);
    }
}

static PyObject *Op_get_data(OpObject *self, void *c) {
    /* Hands the completed bytes over (ownership moves to the caller). */
    if (self->active || !self->data_ready || self->data == NULL) Py_RETURN_NONE;
    PyObject *d = self->data;
    self->data = NULL;
    self->data_ready = 0;
    return d;
}

static PyObject *Op_get_address(OpObject *self, void *c) {
    /* While active the kernel may be writing the address. */
    if (self->active) Py_RETURN_NONE;
    if (self->kind == K_ACCEPT ? self->multishot
                               : (self->kind != K_RECVFROM && self->kind != K_RECVFROM_INTO))
        Py_RETURN_NONE;
    return decode_sockaddr(&self->addr, self->addrlen);
}

static PyObject *Op_get_active(OpObject *self, void *c) { return PyBool_FromLong(self->active); }
static PyObject *Op_get_cancelling(OpObject *self, void *c) { return PyBool_FromLong(self->cancelling); }
static PyObject *Op_get_fd(OpObject *self, void *c) { return PyLong_FromLong(self->fd); }
static PyObject *Op_get_msg_flags(OpObject *self, void *c) { return PyLong_FromLong(self->msg_flags); }

static PyObject *Op_get_callback(OpObject *self, void *c) {
    PyObject *cb = self->callback ? self->callback : Py_None;
    Py_INCREF(cb);
    return cb;
}

static int Op_set_callback(OpObject *self, PyObject *v, void *c) {
    if (v == NULL) v = Py_None;
    Py_INCREF(v);
    Py_XSETREF(self->callback, v);
    return 0;
}

static PyObject *Op_get_fileobj(OpObject *self, void *c) {
    PyObject *f = self->fileobj ? self->fileobj : Py_None;
    Py_INCREF(f);
    return f;
}

static PyObject *Op_repr(OpObject *self) {
    static const char *names[] = {"idle", "recv", "recv_into", "send", "sendv", "recvfrom",
                                  "recvfrom_into", "accept", "poll", "read", "read_into", "write", "post"};
    if (self->active && self->phase == PHASE_POLL)
        return PyUnicode_FromFormat("<uring.Op fd=%d %s active waiting-for-readiness%s>", self->fd,
                                    names[self->kind], self->cancelling ? " cancelling" : "");
    const char *k = self->kind < sizeof(names) / sizeof(names[0]) ? names[self->kind] : "?";
    return PyUnicode_FromFormat("<uring.Op fd=%d %s%s%s>", self->fd, k,
                                self->active ? " active" : "",
                                self->cancelling ? " cancelling" : "");
}

static PyGetSetDef Op_getset[] = {
    {"data", (getter)Op_get_data, NULL, "completed bytes (taken on read)", NULL},
    {"address", (getter)Op_get_address, NULL, "peer address of the last recvfrom", NULL},
    {"active", (getter)Op_get_active, NULL, "submitted and not finally completed", NULL},
    {"cancelling", (getter)Op_get_cancelling, NULL, "a cancel request is queued", NULL},
    {"fd", (getter)Op_get_fd, NULL, "file descriptor", NULL},
    {"msg_flags", (getter)Op_get_msg_flags, NULL, "msg_flags of the last recvmsg", NULL},
    {"callback", (getter)Op_get_callback, (setter)Op_set_callback, "completion callback", NULL},
    {"fileobj", (getter)Op_get_fileobj, NULL, "bound object", NULL},
    {NULL},
};

static PyTypeObject Op_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "iocp_policy._uring.Op",
    .tp_basicsize = sizeof(OpObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Op(fd, callback, fileobj=None): a reusable io_uring operation slot.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Op_init,
    .tp_dealloc = (destructor)Op_dealloc,
    .tp_traverse = (traverseproc)Op_traverse,
    .tp_clear = (inquiry)Op_clear,
    .tp_getset = Op_getset,
    .tp_repr = (reprfunc)Op_repr,
    .tp_weaklistoffset = offsetof(OpObject, weakreflist),
};

/* ------------------------------------------------------------------------ */
/* Ring                                                                       */

typedef struct {
    PyObject_HEAD
    int fd;
    int wake_rfd, wake_wfd; /* the wake pipe: kept across reset(), closed with the Ring */
    int rw_nowait;          /* test injection: READ/WRITE with RWF_NOWAIT */
    unsigned setup_flags;
    unsigned features;
    unsigned sq_entries, cq_entries;
    unsigned *sq_khead, *sq_ktail, *sq_kflags, *sq_array;
    unsigned sq_mask;
    struct io_uring_sqe *sqes;
    unsigned sqe_tail;  /* our copy of the SQ tail (next slot to fill) */
    unsigned *cq_khead, *cq_ktail, *cq_koverflow;
    unsigned cq_mask;
    struct io_uring_cqe *cqes;
    void *sq_ptr, *cq_ptr;
    size_t sq_sz, cq_sz, sqes_sz;
    int enabled;            /* R_DISABLED rings start disabled */
    pthread_t owner;        /* thread that enabled the ring */
    int reg_index;          /* registered ring fd index, -1 if none */
    int wake_pending;       /* atomic: a wakeup write is outstanding */
    int wake_armed;         /* the wake pipe's poll is in flight */
    int closed;
    int closing;            /* suppress callbacks while reaping in close() */
    int dispatching;
    int abandoned;
    OpObject head;          /* sentinel of the in-flight list (never a Python object) */
    Py_ssize_t ninflight;
    PyObject *error_handler;
    unsigned char opcodes[256];
    unsigned p_entries, p_cq_factor, p_reject; /* constructor arguments, for reset() */
    unsigned long long n_enter, n_submit, n_cqe, n_wait, n_overflow;
} RingObject;

static PyTypeObject Ring_Type;

static void ring_link(RingObject *r, OpObject *op) {
    op->next = r->head.next;
    op->prev = &r->head;
    r->head.next->prev = op;
    r->head.next = op;
    r->ninflight++;
}

static void ring_unlink(RingObject *r, OpObject *op) {
    op->prev->next = op->next;
    op->next->prev = op->prev;
    op->prev = op->next = NULL;
    r->ninflight--;
}

static void ring_enable(RingObject *r) {
    if (r->enabled) return;
    if (r->setup_flags & IORING_SETUP_R_DISABLED) {
        /* The enabling task becomes the SINGLE_ISSUER submitter. */
        if (sys_register(r->fd, REGISTER_ENABLE_RINGS, NULL, 0) < 0) return;
    }
    r->enabled = 1;
    r->owner = pthread_self();
    /* Registered ring fds are per thread: only use the index from the
       thread that registered it (checked in ring_enter). */
    struct io_uring_rsrc_update upd;
    memset(&upd, 0, sizeof upd);
    upd.offset = -1U;
    upd.data = (uint64_t)r->fd;
    if (sys_register(r->fd, REGISTER_RING_FDS, &upd, 1) == 1) r->reg_index = (int)upd.offset;
}

/* Returns the syscall result or -errno.  `timeout` < 0 means no timeout. */
static int ring_enter(RingObject *r, unsigned to_submit, unsigned min_complete,
                      unsigned flags, double timeout, int release_gil) {
    struct io_uring_getevents_arg arg;
    struct __kernel_timespec ts;
    int ret, fd = r->fd;
    ring_enable(r);
    memset(&arg, 0, sizeof arg);
    arg.sigmask_sz = _NSIG / 8;
    if (timeout >= 0) {
        double s = (double)(long long)timeout;
        ts.tv_sec = (long long)s;
        /* Round up: waking before the timer is due costs a spin. */
        ts.tv_nsec = (long long)((timeout - s) * 1e9 + 0.999);
        if (ts.tv_nsec >= 1000000000) { ts.tv_sec += 1; ts.tv_nsec -= 1000000000; }
        arg.ts = (uint64_t)(uintptr_t)&ts;
    }
    flags |= IORING_ENTER_EXT_ARG;
    if (r->reg_index >= 0 && pthread_equal(r->owner, pthread_self())) {
        fd = r->reg_index;
        flags |= IORING_ENTER_REGISTERED_RING;
    }
    r->n_enter++;
    if (min_complete) r->n_wait++;
    if (release_gil) {
        Py_BEGIN_ALLOW_THREADS
        ret = sys_enter(fd, to_submit, min_complete, flags, &arg, sizeof arg);
        Py_END_ALLOW_THREADS
    } else {
        ret = sys_enter(fd, to_submit, min_complete, flags, &arg, sizeof arg);
    }
    if (ret < 0) return -errno;
    r->n_submit += (unsigned)ret;
    return ret;
}

static unsigned ring_pending(RingObject *r) {
    return r->sqe_tail - load_acquire(r->sq_khead);
}

static PyObject *wrong_thread_error(void) {
    PyErr_SetString(PyExc_RuntimeError,
                    "this io_uring ring was created with IORING_SETUP_SINGLE_ISSUER and "
                    "belongs to another thread (the one that first ran the event loop)");
    return NULL;
}

/* Get a zeroed SQE, flushing the SQ to the kernel if it is full.  Never
   drops a submission: either returns a slot or raises. */
static struct io_uring_sqe *ring_get_sqe(RingObject *r) {
    for (int attempt = 0; attempt < 64; attempt++) {
        unsigned head = load_acquire(r->sq_khead);
        if (r->sqe_tail - head < r->sq_entries) {
            struct io_uring_sqe *sqe = &r->sqes[r->sqe_tail & r->sq_mask];
            memset(sqe, 0, sizeof *sqe);
            return sqe;
        }
        /* SQ full: submit without waiting.  -EBUSY/-EAGAIN mean the kernel
           wants completions reaped first (old-kernel CQ overflow); flushing
           with GETEVENTS moves overflowed CQEs back into the CQ. */
        int ret = ring_enter(r, r->sqe_tail - head, 0, IORING_ENTER_GETEVENTS, -1, 0);
        if (ret == -EEXIST) return (struct io_uring_sqe *)wrong_thread_error();
        if (ret < 0 && ret != -EBUSY && ret != -EAGAIN && ret != -EINTR) {
            errno = -ret;
            return (struct io_uring_sqe *)PyErr_SetFromErrno(PyExc_OSError);
        }
    }
    errno = EBUSY;
    PyErr_SetString(PyExc_BlockingIOError,
                    "io_uring submission queue stays full: the kernel refuses submissions "
                    "until completions are reaped");
    return NULL;
}

/* Publish an SQE: the store-release of the tail makes the filled SQE visible
   to the kernel.  From here on the op's memory belongs to the kernel. */
static void ring_commit(RingObject *r, OpObject *op, struct io_uring_sqe *sqe) {
    sqe->user_data = (uint64_t)(uintptr_t)op;
    r->sqe_tail++;
    store_release(r->sq_ktail, r->sqe_tail);
    op->active = 1;
    op->cancelling = 0;
    op->phase = PHASE_IO;
    Py_INCREF(op); /* the in-flight reference, dropped after the final CQE */
    ring_link(r, op);
}

static int check_submit(RingObject *r, PyObject *o) {
    if (Py_TYPE(o) != &Op_Type && !PyObject_TypeCheck(o, &Op_Type)) {
        PyErr_Format(PyExc_TypeError, "expected an Op, got %.100s", Py_TYPE(o)->tp_name);
        return -1;
    }
    if (r->closed || r->closing) {
        PyErr_SetString(PyExc_RuntimeError, "the completion port is closed");
        return -1;
    }
    if (((OpObject *)o)->active) {
        PyErr_SetString(PyExc_RuntimeError, "operation already in flight");
        return -1;
    }
    return 0;
}

static int arg_int(PyObject *o, long *out) {
    long v = PyLong_AsLong(o);
    if (v == -1 && PyErr_Occurred()) return -1;
    *out = v;
    return 0;
}

/* Prepare a fresh bytes object of `n` bytes for the kernel to write into. */
static int op_prepare_bytes(OpObject *op, Py_ssize_t n) {
    op->data_ready = 0;
    if (op->data != NULL && Py_REFCNT(op->data) == 1 && PyBytes_GET_SIZE(op->data) == n)
        return 0; /* reuse the untaken buffer of a failed recv */
    Py_CLEAR(op->data);
    op->data = PyBytes_FromStringAndSize(NULL, n);
    return op->data == NULL ? -1 : 0;
}

static int op_pin(OpObject *op, PyObject *buf, int writable) {
    if (op_reserve(op, 1) < 0) return -1;
    if (PyObject_GetBuffer(buf, &op->views[0], writable ? PyBUF_WRITABLE : PyBUF_SIMPLE) < 0)
        return -1;
    op->nviews = 1;
    return 0;
}

/* Fill the SQE of a READ/WRITE op from the memory it already pins: used at
   submission and again after an -EAGAIN was turned into a poll. */
static void fill_rw_sqe(RingObject *r, OpObject *op, struct io_uring_sqe *sqe) {
    sqe->fd = op->fd;
    sqe->len = op->io_len;
    sqe->off = (uint64_t)-1; /* current file position (IORING_FEAT_RW_CUR_POS) */
    if (r->rw_nowait) sqe->rw_flags = RWF_NOWAIT;
    if (op->kind == K_WRITE) {
        sqe->opcode = IORING_OP_WRITE;
        sqe->addr = (uint64_t)(uintptr_t)op->views[0].buf;
    } else {
        sqe->opcode = IORING_OP_READ;
        sqe->addr = (uint64_t)(uintptr_t)(op->kind == K_READ ? PyBytes_AS_STRING(op->data)
                                                              : op->views[0].buf);
    }
}

/* --- submissions ---------------------------------------------------------- */

/* recv(op, nbytes, flags=0): receive into a new bytes object (op.data). */
static PyObject *Ring_recv(RingObject *r, PyObject *const *args, Py_ssize_t nargs) {
    long n, flags = 0;
    if (nargs < 2 || nargs > 3) return PyErr_Format(PyExc_TypeError, "recv(op, nbytes, flags=0)");
    if (check_submit(r, args[0]) < 0 || arg_int(args[1], &n) < 0) return NULL;
    if (nargs == 3 && arg_int(args[2], &flags) < 0) return NULL;
    if (n < 0) return PyErr_Format(PyExc_ValueError, "negative buffersize in recv");
    OpObject *op = (OpObject *)args[0];
    if (op_prepare_bytes(op, n) < 0) return NULL;
    struct io_uring_sqe *sqe = ring_get_sqe(r);
    if (sqe == NULL) return NULL;
    op->kind = K_RECV;
    sqe->opcode = IORING_OP_RECV;
    sqe->fd = op->fd;
    sqe->addr = (uint64_t)(uintptr_t)PyBytes_AS_STRING(op->data);
    sqe->len = (unsigned)n;
    sqe->msg_flags = (unsigned)flags;
    ring_commit(r, op, sqe);
    Py_RETURN_NONE;
}

/* Shared by recv_into / read_into: pin a writable buffer. */
static PyObject *submit_into(RingObject *r, PyObject *const *args, Py_ssize_t nargs,
                             int kind, const char *usage) {
    long n = 0, flags = 0;
    if (nargs < 2 || nargs > 4) return PyErr_Format(PyExc_TypeError, "%s", usage);
    if (check_submit(r, args[0]) < 0) return NULL;
    if (nargs >= 3 && arg_int(args[2], &n) < 0) return NULL;
    if (nargs == 4 && arg_int(args[3], &flags) < 0) return NULL;
    if (n < 0) return PyErr_Format(PyExc_ValueError, "negative buffersize in recv_into");
    OpObject *op = (OpObject *)args[0];
    if (op_pin(op, args[1], 1) < 0) return NULL;
    Py_ssize_t len = op->views[0].len;
    if (n == 0 || n > len) {
        if (n > len) {
            op_release_views(op);
            return PyErr_Format(PyExc_ValueError, "buffer too small for requested bytes");
        }
        n = (long)len;
    }
    struct io_uring_sqe *sqe = ring_get_sqe(r);
    if (sqe == NULL) { op_release_views(op); return NULL; }
    op->kind = (uint8_t)kind;
    if (kind == K_RECV_INTO) {
        sqe->opcode = IORING_OP_RECV;
        sqe->fd = op->fd;
        sqe->addr = (uint64_t)(uintptr_t)op->views[0].buf;
        sqe->len = (unsigned)n;
        sqe->msg_flags = (unsigned)flags;
    } else {
        op->io_len = (unsigned)n;
        fill_rw_sqe(r, op, sqe);
    }
    ring_commit(r, op, sqe);
    Py_RETURN_NONE;
}

static PyObject *Ring_recv_into(RingObject *r, PyObject *const *args, Py_ssize_t nargs) {
    return submit_into(r, args, nargs, K_RECV_INTO, "recv_into(op, buffer, nbytes=0, flags=0)");
}

static PyObject *Ring_read_into(RingObject *r, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs > 3) return PyErr_Format(PyExc_TypeError, "read_into(op, buffer, nbytes=0)");
    return submit_into(r, args, nargs, K_READ_INTO, "read_into(op, buffer, nbytes=0)");
}

/* read(op, nbytes): read(2) into a new bytes object (op.data). */
static PyObject *Ring_read(RingObject *r, PyObject *const *args, Py_ssize_t nargs) {
    long n;
    if (nargs != 2) return PyErr_Format(PyExc_TypeError, "read(op, nbytes)");
    if (check_submit(r, args[0]) < 0 || arg_int(args[1], &n) < 0) return NULL;
    if (n < 0) return PyErr_Format(PyExc_ValueError, "negative read size");
    OpObject *op = (OpObject *)args[0];
    if (op_prepare_bytes(op, n) < 0) return NULL;
    struct io_uring_sqe *sqe = ring_get_sqe(r);
    if (sqe == NULL) return NULL;
    op->kind = K_READ;
    op->io_len = (unsigned)n;
    fill_rw_sqe(r, op, sqe);
    ring_commit(r, op, sqe);
    Py_RETURN_NONE;
}

/* Shared by send / write: pin one read-only buffer. */
static PyObject *submit_out(RingObject *r, PyObject *const *args, Py_ssize_t nargs, int kind) {
    long flags = 0;
    if (nargs < 2 || nargs > 3)
        return PyErr_Format(PyExc_TypeError, kind == K_SEND ? "send(op, data, flags=0)" : "write(op, data)");
    if (check_submit(r, args[0]) < 0) return NULL;
    if (nargs == 3 && arg_int(args[2], &flags) < 0) return NULL;
    OpObject *op = (OpObject *)args[0];
    if (op_pin(op, args[1], 0) < 0) return NULL;
    struct io_uring_sqe *sqe = ring_get_sqe(r);
    if (sqe == NULL) { op_release_views(op); return NULL; }
    op->kind = (uint8_t)kind;
    if (kind == K_SEND) {
        sqe->fd = op->fd;
        sqe->addr = (uint64_t)(uintptr_t)op->views[0].buf;
        sqe->len = (unsigned)op->views[0].len;
        sqe->opcode = IORING_OP_SEND;
        /* MSG_NOSIGNAL: a peer reset must be an error code, not SIGPIPE. */
        sqe->msg_flags = (unsigned)flags | MSG_NOSIGNAL;
    } else {
        /* Linux moves at most MAX_RW_COUNT per call anyway: a partial write. */
        Py_ssize_t len = op->views[0].len;
        op->io_len = (unsigned)(len > 0x7ffff000 ? 0x7ffff000 : len);
        fill_rw_sqe(r, op, sqe);
    }
    ring_commit(r, op, sqe);
    Py_RETURN_NONE;
}

static PyObject *Ring_send(RingObject *r, PyObject *const *args, Py_ssize_t nargs) {
    return submit_out(r, args, nargs, K_SEND);
}

static PyObject *Ring_write(RingObject *r, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) return PyErr_Format(PyExc_TypeError, "write(op, data)");
    return submit_out(r, args, nargs, K_WRITE);
}

/* sendv(op, buffers): sendmsg(2) gathering up to IOV_MAX buffers of a
   sequence.  The result is the number of bytes sent, possibly partial. */
static PyObject *Ring_sendv(RingObject *r, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) return PyErr_Format(PyExc_TypeError, "sendv(op, buffers)");
    if (check_submit(r, args[0]) < 0) return NULL;
    OpObject *op = (OpObject *)args[0];
    PyObject *seq = PySequence_Fast(args[1], "sendv() expects a sequence of buffers");
    if (seq == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n > IOV_LIMIT) n = IOV_LIMIT;
    if (n == 0) { Py_DECREF(seq); return PyErr_Format(PyExc_ValueError, "sendv() needs at least one buffer"); }
    if (op_reserve(op, (int)n) < 0) { Py_DECREF(seq); return NULL; }
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (PyObject_GetBuffer(items[i], &op->views[i], PyBUF_SIMPLE) < 0) {
            op_release_views(op);
            Py_DECREF(seq);
            return NULL;
        }
        op->nviews = (int)i + 1;
        op->iov[i].iov_base = op->views[i].buf;
        op->iov[i].iov_len = (size_t)op->views[i].len;
    }
    Py_DECREF(seq); /* the views keep every exporter alive */
    struct io_uring_sqe *sqe = ring_get_sqe(r);
    if (sqe == NULL) { op_release_views(op); return NULL; }
    memset(&op->msg, 0, sizeof op->msg);
    op->msg.msg_iov = op->iov;
    op->msg.msg_iovlen = (size_t)n;
    op->kind = K_SENDV;
    sqe->opcode = IORING_OP_SENDMSG;
    sqe->fd = op->fd;
    sqe->addr = (uint64_t)(uintptr_t)&op->msg;
    sqe->len = 1;
    sqe->msg_flags = MSG_NOSIGNAL;
    ring_commit(r, op, sqe);
    Py_RETURN_NONE;
}

/* recvfrom(op, nbytes, flags=0) / recvfrom_into(op, buffer, nbytes=0, flags=0):
   recvmsg(2) with the peer address kept in the op (op.address). */
static PyObject *submit_recvmsg(RingObject *r, OpObject *op, void *buf, size_t len, long flags, int kind) {
    struct io_uring_sqe *sqe = ring_get_sqe(r);
    if (sqe == NULL) return NULL;
    memset(&op->msg, 0, sizeof op->msg);
    op->iov1.iov_base = buf;
    op->iov1.iov_len = len;
    op->msg.msg_name = &op->addr;
    op->msg.msg_namelen = sizeof op->addr;
    op->msg.msg_iov = &op->iov1;
    op->msg.msg_iovlen = 1;
    op->addrlen = 0;
    op->msg_flags = 0;
    op->kind = (uint8_t)kind;
    sqe->opcode = IORING_OP_RECVMSG;
    sqe->fd = op->fd;
    sqe->addr = (uint64_t)(uintptr_t)&op->msg;
    sqe->len = 1;
    sqe->msg_flags = (unsigned)flags;
    ring_commit(r, op, sqe);
    Py_RETURN_NONE;
}

static PyObject *Ring_recvfrom(RingObject *r, PyObject *const *args, Py_ssize_t nargs) {
    long n, flags = 0;
    if (nargs < 2 || nargs > 3) return PyErr_Format(PyExc_TypeError, "recvfrom(op, nbytes, flags=0)");
    if (check_submit(r, args[0]) < 0 || arg_int(args[1], &n) < 0) return NULL;
    if (nargs == 3 && arg_int(args[2], &flags) < 0) return NULL;
    if (n < 0) return PyErr_Format(PyExc_ValueError, "negative buffersize in recvfrom");
    OpObject *op = (OpObject *)args[0];
    if (op_prepare_bytes(op, n) < 0) return NULL;
    return submit_recvmsg(r, op, PyBytes_AS_STRING(op->data), (size_t)n, flags, K_RECVFROM);
}

static PyObject *Ring_recvfrom_into(RingObject *r, PyObject *const *args, Py_ssize_t nargs) {
    long n = 0, flags = 0;
    if (nargs < 2 || nargs > 4) return PyErr_Format(PyExc_TypeError, "recvfrom_into(op, buffer, nbytes=0, flags=0)");
    if (check_submit(r, args[0]) < 0) return NULL;
    if (nargs >= 3 && arg_int(args[2], &n) < 0) return NULL;
    if (nargs == 4 && arg_int(args[3], &flags) < 0) return NULL;
    OpObject *op = (OpObject *)args[0];
    if (op_pin(op, args[1], 1) < 0) return NULL;
    Py_ssize_t len = op->views[0].len;
    if (n < 0 || n > len) {
        op_release_views(op);
        return PyErr_Format(PyExc_ValueError, "nbytes is greater than the length of the buffer");
    }
    if (n == 0) n = (long)len;
    PyObject *res = submit_recvmsg(r, op, op->views[0].buf, (size_t)n, flags, K_RECVFROM_INTO);
    if (res == NULL) op_release_views(op);
    return res;
}

/* accept(op, multishot=False): the result is the new fd (SOCK_CLOEXEC and
   SOCK_NONBLOCK already set).  Multishot keeps posting one CQE per
   connection with IORING_CQE_F_MORE until it ends. */
static PyObject *Ring_accept(RingObject *r, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2) return PyErr_Format(PyExc_TypeError, "accept(op, multishot=False)");
    if (check_submit(r, args[0]) < 0) return NULL;
    int multishot = nargs == 2 ? PyObject_IsTrue(args[1]) : 0;
    if (multishot < 0) return NULL;
    OpObject *op = (OpObject *)args[0];
    struct io_uring_sqe *sqe = ring_get_sqe(r);
    if (sqe == NULL) return NULL;
    op->kind = K_ACCEPT;
    op->multishot = (uint8_t)multishot;
    sqe->opcode = IORING_OP_ACCEPT;
    sqe->fd = op->fd;
    sqe->accept_flags = SOCK_CLOEXEC | SOCK_NONBLOCK;
    if (multishot) {
        /* One address buffer cannot serve several CQEs that the kernel may
           post before we read the first: multishot takes no address. */
        sqe->ioprio = IORING_ACCEPT_MULTISHOT;
        op->addrlen = 0;
    } else {
        op->addrlen = sizeof op->addr;
        sqe->addr = (uint64_t)(uintptr_t)&op->addr;
        sqe->addr2 = (uint64_t)(uintptr_t)&op->addrlen;
    }
    ring_commit(r, op, sqe);
    Py_RETURN_NONE;
}

/* poll(op, events, multishot=False): readiness as a completion; res is the
   returned poll mask. */
static PyObject *Ring_poll(RingObject *r, PyObject *const *args, Py_ssize_t nargs) {
    long events;
    if (nargs < 2 || nargs > 3) return PyErr_Format(PyExc_TypeError, "poll(op, events, multishot=False)");
    if (check_submit(r, args[0]) < 0 || arg_int(args[1], &events) < 0) return NULL;
    int multishot = nargs == 3 ? PyObject_IsTrue(args[2]) : 0;
    if (multishot < 0) return NULL;
    OpObject *op = (OpObject *)args[0];
    struct io_uring_sqe *sqe = ring_get_sqe(r);
    if (sqe == NULL) return NULL;
    op->kind = K_POLL;
    op->multishot = (uint8_t)multishot;
    sqe->opcode = IORING_OP_POLL_ADD;
    sqe->fd = op->fd;
    sqe->poll32_events = (uint32_t)events; /* little-endian hosts only (x86_64, aarch64) */
    if (multishot) sqe->len = IORING_POLL_ADD_MULTI;
    ring_commit(r, op, sqe);
    Py_RETURN_NONE;
}

/* poll_fd(op, fd, events): a one-shot poll of `fd` (not op.fd) that the ring
   takes over: fd is closed right after the op's final completion, however
   it ends (readiness, cancel, close of the port).  If this raises, fd was
   not taken and stays the caller's. */
static PyObject *Ring_poll_fd(RingObject *r, PyObject *const *args, Py_ssize_t nargs) {
    long fd, events;
    if (nargs != 3) return PyErr_Format(PyExc_TypeError, "poll_fd(op, fd, events)");
    if (check_submit(r, args[0]) < 0 || arg_int(args[1], &fd) < 0 || arg_int(args[2], &events) < 0)
        return NULL;
    if (fd < 0 || fd > INT_MAX) return PyErr_Format(PyExc_ValueError, "invalid file descriptor %ld", fd);
    OpObject *op = (OpObject *)args[0];
    struct io_uring_sqe *sqe = ring_get_sqe(r);
    if (sqe == NULL) return NULL;
    op->kind = K_POLL;
    op->multishot = 0;
    op->owned_fd = (int)fd;
    op->owns_fd = 1;
    sqe->opcode = IORING_OP_POLL_ADD;
    sqe->fd = (int)fd;
    sqe->poll32_events = (uint32_t)events;
    ring_commit(r, op, sqe);
    Py_RETURN_NONE;
}

/* post(op, res): deliver `res` to op's callback at the next run(), as a
   completion (a NOP travels through the ring so ordering and wakeups are
   those of any other completion).  Used for results known at submission
   time: callers are never called back from inside a submission. */
static PyObject *Ring_post(RingObject *r, PyObject *const *args, Py_ssize_t nargs) {
    long res;
    if (nargs != 2) return PyErr_Format(PyExc_TypeError, "post(op, res)");
    if (check_submit(r, args[0]) < 0 || arg_int(args[1], &res) < 0) return NULL;
    OpObject *op = (OpObject *)args[0];
    struct io_uring_sqe *sqe = ring_get_sqe(r);
    if (sqe == NULL) return NULL;
    op->kind = K_POST;
    op->post_res = (int)res;
    sqe->opcode = IORING_OP_NOP;
    sqe->fd = -1;
    ring_commit(r, op, sqe);
    Py_RETURN_NONE;
}

/* cancel(op) -> bool: ask the kernel to cancel an in-flight op.  The op's
   callback still runs with its final result (-ECANCELED or a result that won
   the race), and its memory stays pinned until then. */
static PyObject *Ring_cancel(RingObject *r, PyObject *o) {
    if (!PyObject_TypeCheck(o, &Op_Type)) return PyErr_Format(PyExc_TypeError, "expected an Op");
    OpObject *op = (OpObject *)o;
    if (!op->active || op->cancelling || r->closed) Py_RETURN_FALSE;
    struct io_uring_sqe *sqe = ring_get_sqe(r);
    if (sqe == NULL) return NULL;
    sqe->opcode = IORING_OP_ASYNC_CANCEL;
    sqe->fd = -1;
    sqe->addr = (uint64_t)(uintptr_t)op;
    sqe->user_data = UD_IGNORE;
    if (r->features & IORING_FEAT_CQE_SKIP) sqe->flags = IOSQE_CQE_SKIP_SUCCESS;
    r->sqe_tail++;
    store_release(r->sq_ktail, r->sqe_tail);
    op->cancelling = 1;
    Py_RETURN_TRUE;
}

static int ring_arm_wake(RingObject *r) {
    struct io_uring_sqe *sqe = ring_get_sqe(r);
    if (sqe == NULL) return -1;
    sqe->opcode = IORING_OP_POLL_ADD;
    sqe->fd = r->wake_rfd;
    sqe->poll32_events = POLLIN;
    sqe->len = IORING_POLL_ADD_MULTI;
    sqe->user_data = UD_WAKE;
    r->sqe_tail++;
    store_release(r->sq_ktail, r->sqe_tail);
    r->wake_armed = 1;
    return 0;
}

/* --- completions ---------------------------------------------------------- */

static void fetch_exception(PyObject **exc) {
#if PY_VERSION_HEX >= 0x030C0000
    *exc = PyErr_GetRaisedException();
#else
    PyObject *t, *v, *tb;
    PyErr_Fetch(&t, &v, &tb);
    PyErr_NormalizeException(&t, &v, &tb);
    if (tb != NULL) PyException_SetTraceback(v, tb);
    Py_XDECREF(t);
    Py_XDECREF(tb);
    *exc = v;
#endif
}

/* Publish an SQE for an op that is already in flight (same user_data, same
   in-flight reference): the next step of a READ/WRITE that met -EAGAIN. */
static void ring_resubmit(RingObject *r, OpObject *op, struct io_uring_sqe *sqe) {
    sqe->user_data = (uint64_t)(uintptr_t)op;
    r->sqe_tail++;
    store_release(r->sq_ktail, r->sqe_tail);
}

/* A READ/WRITE completed with -EAGAIN (O_NONBLOCK file, older kernel, or
   inject_rw_nowait), or the poll armed for it completed.  Returns 1 if the
   op was re-armed (nothing to deliver), 0 to deliver *res as the op's final
   result.  A cancel requested meanwhile wins: nothing was transferred, so
   -ECANCELED is the truth. */
static int rw_retry(RingObject *r, OpObject *op, int32_t *res) {
    struct io_uring_sqe *sqe;
    if (op->phase == PHASE_POLL) {
        op->phase = PHASE_IO;
        if (*res < 0) return 0; /* the poll failed or was cancelled: final */
        if (op->cancelling || r->closing) { *res = -ECANCELED; return 0; }
        sqe = ring_get_sqe(r);
        if (sqe == NULL) { PyErr_Clear(); *res = -EAGAIN; return 0; }
        fill_rw_sqe(r, op, sqe);
        ring_resubmit(r, op, sqe);
        return 1;
    }
    if (op->cancelling || r->closing) { *res = -ECANCELED; return 0; }
    sqe = ring_get_sqe(r);
    if (sqe == NULL) { PyErr_Clear(); return 0; } /* cannot wait: -EAGAIN it is */
    sqe->opcode = IORING_OP_POLL_ADD;
    sqe->fd = op->fd;
    sqe->poll32_events = op->kind == K_WRITE ? POLLOUT : POLLIN;
    op->phase = PHASE_POLL;
    ring_resubmit(r, op, sqe);
    return 1;
}

/* Handle one CQE.  Returns -1 with an exception set only for exceptions
   that must stop the loop (BaseException that is not an Exception, or a
   failing error handler). */
static int ring_dispatch_one(RingObject *r, uint64_t ud, int32_t res, uint32_t cflags) {
    if (ud == UD_IGNORE) return 0;
    if (ud == UD_WAKE) {
        char buf[256];
        /* Drain: wakeup() bytes and signal numbers (the interpreter keeps
           its own record of which signals fired).  A short read means
           empty; more bytes written later post another CQE. */
        while (read(r->wake_rfd, buf, sizeof buf) == (ssize_t)sizeof buf) {
        }
        /* Clear the coalescing flag only *after* draining.  Cleared before,
           a wakeup() racing in between writes a byte the drain swallows and
           leaves the flag set: every later wakeup() then skips its write and
           the loop can sleep forever.  Cleared after, a wakeup() that saw the
           flag still set had queued its callback before checking it, and the
           loop runs that callback in this very iteration. */
        __atomic_store_n(&r->wake_pending, 0, __ATOMIC_RELEASE);
        if (!(cflags & IORING_CQE_F_MORE)) {
            r->wake_armed = 0;
            if (!r->closing && !r->closed && ring_arm_wake(r) < 0) return -1;
        }
        return 0;
    }
    OpObject *op = (OpObject *)(uintptr_t)ud;
    int final = !(cflags & IORING_CQE_F_MORE);
    if ((op->kind == K_READ || op->kind == K_READ_INTO || op->kind == K_WRITE) &&
        (res == -EAGAIN || op->phase == PHASE_POLL) && rw_retry(r, op, &res))
        return 0; /* re-armed: the op stays in flight, its memory pinned */
    switch (op->kind) {
    case K_RECV:
    case K_READ:
    case K_RECVFROM:
        if (res >= 0) {
            /* Shrink in place: we hold the only reference.  A failure
               here leaves op.data empty and is reported through res. */
            if (_PyBytes_Resize(&op->data, res) < 0) { PyErr_Clear(); res = -ENOMEM; }
            else op->data_ready = 1;
        }
        if (op->kind != K_RECVFROM) break;
        /* fall through */
    case K_RECVFROM_INTO:
        op->msg_flags = op->msg.msg_flags;
        op->addrlen = res >= 0 ? op->msg.msg_namelen : 0;
        break;
    case K_POST:
        if (res != -ECANCELED) res = op->post_res;
        break;
    default:
        break;
    }
    if (final) {
        op->active = 0;
        op->cancelling = 0;
        ring_unlink(r, op);
        op_release_views(op); /* the kernel is done with this memory */
        op_close_owned(op);   /* and with the descriptor of a poll_fd() */
    }
    int rc = 0;
    PyObject *cb = op->callback;
    if (!r->closing && cb != NULL && cb != Py_None) {
        Py_INCREF(cb);
        PyObject *arg = PyLong_FromLong(res);
        PyObject *ret = arg ? PyObject_CallOneArg(cb, arg) : NULL;
        Py_XDECREF(arg);
        Py_DECREF(cb);
        if (ret != NULL) {
            Py_DECREF(ret);
        } else if (PyErr_ExceptionMatches(PyExc_Exception) && r->error_handler != NULL &&
                   r->error_handler != Py_None) {
            PyObject *exc;
            fetch_exception(&exc);
            PyObject *hret = PyObject_CallFunctionObjArgs(r->error_handler, (PyObject *)op, exc, NULL);
            Py_XDECREF(exc);
            if (hret == NULL) rc = -1;
            Py_XDECREF(hret);
        } else {
            rc = -1;
        }
    }
    if (final) Py_DECREF(op); /* drop the in-flight reference */
    return rc;
}

/* Copy out and dispatch up to `budget` CQEs.  The CQ head is released after
   each copy so a callback that raises leaves the rest of the CQ intact. */
static int ring_reap(RingObject *r, unsigned budget) {
    while (budget--) {
        unsigned head = *r->cq_khead; /* only we write the CQ head */
        unsigned tail = load_acquire(r->cq_ktail);
        if (head == tail) return 0;
        struct io_uring_cqe *cqe = &r->cqes[head & r->cq_mask];
        uint64_t ud = cqe->user_data;
        int32_t res = cqe->res;
        uint32_t cflags = cqe->flags;
        store_release(r->cq_khead, head + 1);
        r->n_cqe++;
        if (ring_dispatch_one(r, ud, res, cflags) < 0) return -1;
    }
    return 0;
}

static int ring_cq_ready(RingObject *r) {
    return *r->cq_khead != load_acquire(r->cq_ktail);
}

/* Is a syscall needed to make pending completions visible? */
static int ring_needs_enter(RingObject *r) {
    unsigned sqf = load_acquire(r->sq_kflags);
    if (sqf & IORING_SQ_CQ_OVERFLOW) return 1;
    if (r->setup_flags & IORING_SETUP_TASKRUN_FLAG) return (sqf & IORING_SQ_TASKRUN) != 0;
    /* Without the flag, COOP/DEFER rings only run completion work when we
       enter; plain rings run it on return to user space by themselves. */
    return (r->setup_flags & (IORING_SETUP_COOP_TASKRUN | IORING_SETUP_DEFER_TASKRUN)) != 0;
}

static double parse_timeout(PyObject *o, int *err) {
    *err = 0;
    if (o == Py_None) return -1.0;
    double t = PyFloat_AsDouble(o);
    if (t == -1.0 && PyErr_Occurred()) { *err = 1; return 0; }
    if (t < 0) t = 0;
    if (t > 86400.0 * 365) t = 86400.0 * 365;
    return t;
}

/* run(timeout): submit everything queued, wait up to `timeout` seconds
   (None = forever, 0 = do not wait) for at least one completion, and call
   each completed op's callback.  One io_uring_enter() at most, plus one per
   CQ overflow flush. */
static PyObject *Ring_run(RingObject *r, PyObject *timeout_obj) {
    int err;
    double timeout = parse_timeout(timeout_obj, &err);
    if (err) return NULL;
    if (r->closed) return PyErr_Format(PyExc_RuntimeError, "the completion port is closed");
    if (r->dispatching) return PyErr_Format(PyExc_RuntimeError, "completion port run() is not reentrant");
    if (r->enabled && (r->setup_flags & IORING_SETUP_SINGLE_ISSUER) &&
        !pthread_equal(r->owner, pthread_self()))
        return wrong_thread_error();
    r->dispatching = 1;
    unsigned pending = ring_pending(r);
    int wait = timeout != 0 && !ring_cq_ready(r);
    if (pending || wait || !r->enabled || ring_needs_enter(r)) {
        /* The GIL is released around every enter, waiting or not, as the
           stdlib loop's select() does: a thread waiting for the GIL (an
           executor or worker thread handing back a result) may get its turn
           here, not only after the 5 ms switch interval.  (Iterations that
           need no syscall do not yield: measured, a bare release/reacquire
           costs up to 25 % on chained call_soon and does not reliably hand
           the GIL over.) */
        int ret = ring_enter(r, pending, wait ? 1 : 0, IORING_ENTER_GETEVENTS,
                             wait ? timeout : -1, 1);
        if (ret < 0) {
            switch (-ret) {
            case EINTR:
                /* A signal arrived while we slept: run the Python-level
                   handlers now (KeyboardInterrupt propagates from here). */
                if (PyErr_CheckSignals() < 0) goto error;
                break;
            case ETIME:
            case EAGAIN:
            case EBUSY:
                break;
            case EEXIST:
                wrong_thread_error();
                goto error;
            default:
                errno = -ret;
                PyErr_SetFromErrno(PyExc_OSError);
                goto error;
            }
        }
    }
    for (int round = 0; round < 4; round++) {
        if (ring_reap(r, r->cq_entries) < 0) goto error;
        if (!(load_acquire(r->sq_kflags) & IORING_SQ_CQ_OVERFLOW)) break;
        /* The kernel kept CQEs that did not fit (IORING_FEAT_NODROP); an
           enter with GETEVENTS moves them into the CQ. */
        r->n_overflow++;
        int ret = ring_enter(r, 0, 0, IORING_ENTER_GETEVENTS, -1, 0);
        if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY) break;
    }
    r->dispatching = 0;
    Py_RETURN_NONE;
error:
    r->dispatching = 0;
    return NULL;
}

/* wakeup(): make a run() blocked in another thread return.  Thread-safe. */
static PyObject *Ring_wakeup(RingObject *r, PyObject *unused) {
    if (r->closed) Py_RETURN_NONE;
    if (__atomic_exchange_n(&r->wake_pending, 1, __ATOMIC_ACQ_REL) == 0) {
        char zero = 0;
        ssize_t w = write(r->wake_wfd, &zero, 1); /* EAGAIN: pipe full, so already readable */
        (void)w;
    }
    Py_RETURN_NONE;
}

/* wakeup_fd(): the wake pipe's write end, for signal.set_wakeup_fd().  Any
   byte written to it wakes run() like wakeup() does.  Stable for the life
   of the Ring (reset() keeps it); closed by close(). */
static PyObject *Ring_wakeup_fd(RingObject *r, PyObject *unused) {
    if (r->wake_wfd < 0) return PyErr_Format(PyExc_RuntimeError, "the completion port is closed");
    return PyLong_FromLong(r->wake_wfd);
}

static void ring_close_wake_pipe(RingObject *r) {
    if (r->wake_rfd >= 0) close(r->wake_rfd);
    if (r->wake_wfd >= 0) close(r->wake_wfd);
    r->wake_rfd = r->wake_wfd = -1;
}

/* --- lifetime ------------------------------------------------------------- */

static void ring_unmap(RingObject *r) {
    if (r->sqes != NULL && r->sqes != MAP_FAILED) munmap(r->sqes, r->sqes_sz);
    if (r->cq_ptr != NULL && r->cq_ptr != MAP_FAILED && r->cq_ptr != r->sq_ptr) munmap(r->cq_ptr, r->cq_sz);
    if (r->sq_ptr != NULL && r->sq_ptr != MAP_FAILED) munmap(r->sq_ptr, r->sq_sz);
    r->sqes = NULL;
    r->sq_ptr = r->cq_ptr = NULL;
}

static double now_monotonic(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Cancel everything in flight and reap it within `timeout` seconds.  Ops the
   kernel has not released by then go to the graveyard (kept alive forever)
   rather than being freed.  Callbacks are not called while closing. */
static Py_ssize_t ring_shutdown(RingObject *r, double timeout) {
    if (r->closed) return 0;
    r->closing = 1;
    int can_enter = !(r->enabled && (r->setup_flags & IORING_SETUP_SINGLE_ISSUER) &&
                      !pthread_equal(r->owner, pthread_self()));
    if (can_enter && r->enabled) {
        /* Queue cancels for every in-flight op and the wake poll. */
        for (OpObject *op = r->head.next; op != &r->head; op = op->next) {
            if (op->cancelling) continue;
            unsigned head = load_acquire(r->sq_khead);
            if (r->sqe_tail - head >= r->sq_entries) {
                int ret = ring_enter(r, r->sqe_tail - head, 0, IORING_ENTER_GETEVENTS, -1, 0);
                if (ret < 0 && ret != -EBUSY && ret != -EAGAIN && ret != -EINTR) break;
                if (r->sqe_tail - load_acquire(r->sq_khead) >= r->sq_entries) break;
            }
            struct io_uring_sqe *sqe = &r->sqes[r->sqe_tail & r->sq_mask];
            memset(sqe, 0, sizeof *sqe);
            sqe->opcode = IORING_OP_ASYNC_CANCEL;
            sqe->fd = -1;
            sqe->addr = (uint64_t)(uintptr_t)op;
            sqe->user_data = UD_IGNORE;
            r->sqe_tail++;
            store_release(r->sq_ktail, r->sqe_tail);
            op->cancelling = 1;
        }
        if (r->wake_armed && r->sqe_tail - load_acquire(r->sq_khead) < r->sq_entries) {
            struct io_uring_sqe *sqe = &r->sqes[r->sqe_tail & r->sq_mask];
            memset(sqe, 0, sizeof *sqe);
            sqe->opcode = IORING_OP_ASYNC_CANCEL;
            sqe->fd = -1;
            sqe->addr = UD_WAKE;
            sqe->user_data = UD_IGNORE;
            r->sqe_tail++;
            store_release(r->sq_ktail, r->sqe_tail);
        }
        double deadline = now_monotonic() + timeout;
        while (r->ninflight > 0 || r->wake_armed) {
            double left = deadline - now_monotonic();
            if (left <= 0) break;
            if (left > 0.1) left = 0.1;
            int ret = ring_enter(r, ring_pending(r), 1, IORING_ENTER_GETEVENTS, left, 1);
            if (ret < 0 && ret != -ETIME && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY) break;
            if (ring_reap(r, r->cq_entries) < 0) PyErr_Clear();
        }
    } else if (!r->enabled) {
        /* Nothing was ever submitted to the kernel: SQEs still sit in the
           SQ and no memory was handed over. */
        while (r->head.next != &r->head) {
            OpObject *op = r->head.next;
            op->active = 0;
            ring_unlink(r, op);
            op_release_views(op);
            op_close_owned(op);
            Py_DECREF(op);
        }
        r->wake_armed = 0;
    } else {
        /* Another thread owns the ring.  If it has exited, the kernel
           cancelled and completed its requests at thread exit; whatever
           is in the CQ can be reaped without entering. */
        if (ring_reap(r, r->cq_entries * 2) < 0) PyErr_Clear();
    }
    Py_ssize_t left = r->ninflight;
    if (left > 0) {
        /* Leak rather than free memory the kernel may still write. */
        while (r->head.next != &r->head) {
            OpObject *op = r->head.next;
            ring_unlink(r, op);
            /* A poll holds its own reference to the file: the descriptor
               number can go, so that abandoning costs no fd. */
            op_close_owned(op);
            if (graveyard == NULL || PyList_Append(graveyard, (PyObject *)op) < 0) PyErr_Clear();
            /* The list took its own reference; our in-flight one is
               deliberately kept too, so the op can never be freed. */
        }
        r->abandoned += (int)left;
    }
    ring_unmap(r);
    if (r->fd >= 0) close(r->fd);
    r->fd = -1;
    /* The wake pipe stays: reset() reuses it, close()/dealloc close it. */
    r->closed = 1;
    r->closing = 0;
    return left;
}

static PyObject *Ring_close(RingObject *r, PyObject *const *args, Py_ssize_t nargs) {
    double timeout = 5.0;
    if (nargs > 1) return PyErr_Format(PyExc_TypeError, "close(timeout=5.0)");
    if (nargs == 1) {
        int err;
        timeout = parse_timeout(args[0], &err);
        if (err) return NULL;
        if (timeout < 0) timeout = 5.0;
    }
    if (r->dispatching) return PyErr_Format(PyExc_RuntimeError, "cannot close the port from a completion callback");
    Py_ssize_t left = ring_shutdown(r, timeout);
    ring_close_wake_pipe(r);
    return PyLong_FromSsize_t(left);
}

static int Ring_traverse(RingObject *r, visitproc visit, void *arg) {
    Py_VISIT(r->error_handler);
    for (OpObject *op = r->head.next; op != NULL && op != &r->head; op = op->next)
        Py_VISIT((PyObject *)op);
    return 0;
}

/* Shutdown from GC or dealloc: these may run while an exception is being
   raised (e.g. a failed __init__), which must survive untouched. */
static void ring_shutdown_quietly(RingObject *r) {
    if (r->closed || r->head.next == NULL) return;
    PyObject *t, *v, *tb;
    PyErr_Fetch(&t, &v, &tb);
    ring_shutdown(r, 1.0);
    PyErr_Clear();
    PyErr_Restore(t, v, tb);
}

static int Ring_clear(RingObject *r) {
    Py_CLEAR(r->error_handler);
    /* In-flight ops stay referenced: shutdown reaps or buries them. */
    ring_shutdown_quietly(r);
    return 0;
}

static void Ring_dealloc(RingObject *r) {
    PyObject_GC_UnTrack(r);
    ring_shutdown_quietly(r);
    ring_close_wake_pipe(r);
    Py_CLEAR(r->error_handler);
    Py_TYPE(r)->tp_free((PyObject *)r);
}

static PyObject *Ring_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    RingObject *r = (RingObject *)type->tp_alloc(type, 0);
    if (r == NULL) return NULL;
    r->fd = r->wake_rfd = r->wake_wfd = -1;
    r->reg_index = -1;
    r->head.next = r->head.prev = &r->head;
    r->closed = 1; /* until __init__ succeeds */
    return (PyObject *)r;
}

static const struct { unsigned flag; const char *name; } optional_setup[] = {
    /* Dropped in this order on EINVAL: newest kernel feature first. */
    {IORING_SETUP_DEFER_TASKRUN, "DEFER_TASKRUN"},
    {IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_R_DISABLED, "SINGLE_ISSUER"},
    {IORING_SETUP_TASKRUN_FLAG, "TASKRUN_FLAG"},
    {IORING_SETUP_COOP_TASKRUN, "COOP_TASKRUN"},
    {IORING_SETUP_SUBMIT_ALL, "SUBMIT_ALL"},
    {IORING_SETUP_CQSIZE, "CQSIZE"},
};
#define N_OPTIONAL (sizeof optional_setup / sizeof optional_setup[0])

static const unsigned char required_ops[] = {
    IORING_OP_RECV, IORING_OP_SEND, IORING_OP_SENDMSG, IORING_OP_RECVMSG, IORING_OP_ACCEPT,
    IORING_OP_POLL_ADD, IORING_OP_ASYNC_CANCEL, IORING_OP_READ, IORING_OP_WRITE, IORING_OP_NOP,
};

/* Ring(entries=1024, cq_factor=4, reject_flags=0)
   reject_flags: setup flags to treat as if the kernel answered EINVAL (tests
   use it to exercise the flag-by-flag fallback). */
static int Ring_init(RingObject *r, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"entries", "cq_factor", "reject_flags", NULL};
    unsigned entries = 1024, cq_factor = 4, reject = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|III:Ring", kwlist, &entries, &cq_factor, &reject))
        return -1;
    if (r->fd >= 0) { PyErr_SetString(PyExc_RuntimeError, "Ring already initialised"); return -1; }
    r->p_entries = entries;
    r->p_cq_factor = cq_factor;
    r->p_reject = reject;
    if (entries == 0 || cq_factor == 0) { PyErr_SetString(PyExc_ValueError, "entries and cq_factor must be positive"); return -1; }

    unsigned flags = IORING_SETUP_CQSIZE;
    for (size_t i = 0; i < N_OPTIONAL; i++) flags |= optional_setup[i].flag;
    size_t next_drop = 0;
    struct io_uring_params p;
    int fd;
    for (;;) {
        memset(&p, 0, sizeof p);
        p.flags = flags;
        p.cq_entries = entries * cq_factor;
        if (flags & reject) { fd = -1; errno = EINVAL; }
        else fd = sys_setup(entries, &p);
        if (fd >= 0) break;
        if (errno != EINVAL || next_drop >= N_OPTIONAL) {
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        flags &= ~optional_setup[next_drop++].flag;
    }
    r->fd = fd;
    r->setup_flags = flags;
    r->features = p.features;
    if (!(p.features & IORING_FEAT_EXT_ARG) || !(p.features & IORING_FEAT_NODROP)) {
        close(fd);
        r->fd = -1;
        PyObject *exc = PyObject_CallFunction(PyExc_OSError, "is", ENOTSUP,
                     "the kernel's io_uring lacks IORING_FEAT_EXT_ARG/NODROP (Linux 5.11+ needed)");
        if (exc) { PyErr_SetObject(PyExc_OSError, exc); Py_DECREF(exc); }
        return -1;
    }
    r->sq_entries = p.sq_entries;
    r->cq_entries = p.cq_entries;
    r->sq_sz = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    r->cq_sz = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    if (p.features & IORING_FEAT_SINGLE_MMAP) {
        if (r->cq_sz > r->sq_sz) r->sq_sz = r->cq_sz;
        r->cq_sz = r->sq_sz;
    }
    r->sq_ptr = mmap(NULL, r->sq_sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQ_RING);
    if (r->sq_ptr == MAP_FAILED) goto fail_errno;
    if (p.features & IORING_FEAT_SINGLE_MMAP) r->cq_ptr = r->sq_ptr;
    else {
        r->cq_ptr = mmap(NULL, r->cq_sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_CQ_RING);
        if (r->cq_ptr == MAP_FAILED) goto fail_errno;
    }
    r->sqes_sz = p.sq_entries * sizeof(struct io_uring_sqe);
    r->sqes = mmap(NULL, r->sqes_sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQES);
    if (r->sqes == MAP_FAILED) goto fail_errno;

    char *sq = r->sq_ptr, *cq = r->cq_ptr;
    r->sq_khead = (unsigned *)(sq + p.sq_off.head);
    r->sq_ktail = (unsigned *)(sq + p.sq_off.tail);
    r->sq_kflags = (unsigned *)(sq + p.sq_off.flags);
    r->sq_array = (unsigned *)(sq + p.sq_off.array);
    r->sq_mask = *(unsigned *)(sq + p.sq_off.ring_mask);
    r->cq_khead = (unsigned *)(cq + p.cq_off.head);
    r->cq_ktail = (unsigned *)(cq + p.cq_off.tail);
    r->cq_koverflow = (unsigned *)(cq + p.cq_off.overflow);
    r->cq_mask = *(unsigned *)(cq + p.cq_off.ring_mask);
    r->cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
    /* We always fill slot (tail & mask), so the index array is the identity. */
    for (unsigned i = 0; i < p.sq_entries; i++) r->sq_array[i] = i;
    r->sqe_tail = *r->sq_ktail;

    /* Opcode probe: allowed before the ring is enabled. */
    size_t psz = sizeof(struct io_uring_probe) + 256 * sizeof(struct io_uring_probe_op);
    struct io_uring_probe *probe = PyMem_Calloc(1, psz);
    if (probe == NULL) { PyErr_NoMemory(); goto fail; }
    if (sys_register(fd, REGISTER_PROBE, probe, 256) == 0) {
        for (unsigned i = 0; i < probe->ops_len && i < 256; i++)
            if (probe->ops[i].flags & IO_URING_OP_SUPPORTED) r->opcodes[probe->ops[i].op] = 1;
    }
    PyMem_Free(probe);
    for (size_t i = 0; i < sizeof required_ops; i++) {
        if (!r->opcodes[required_ops[i]]) {
            PyObject *exc = PyObject_CallFunction(PyExc_OSError, "is", ENOTSUP,
                         "the kernel's io_uring lacks a required opcode");
            if (exc) { PyErr_SetObject(PyExc_OSError, exc); Py_DECREF(exc); }
            goto fail;
        }
    }

    if (r->wake_rfd < 0) {
        int p[2];
        if (pipe2(p, O_CLOEXEC | O_NONBLOCK) < 0) goto fail_errno;
        r->wake_rfd = p[0];
        r->wake_wfd = p[1];
    }
    r->closed = 0;
    if (ring_arm_wake(r) < 0) goto fail;
    return 0;

fail_errno:
    PyErr_SetFromErrno(PyExc_OSError);
fail:
    ring_unmap(r);
    close(fd);
    r->fd = -1; /* the wake pipe, if made, is closed with the Ring object */
    r->closed = 1;
    return -1;
}

static PyObject *flag_names(unsigned flags, const unsigned *bits, const char *const *names, size_t n) {
    PyObject *lst = PyList_New(0);
    if (lst == NULL) return NULL;
    for (size_t i = 0; i < n; i++) {
        if (!(flags & bits[i])) continue;
        PyObject *s = PyUnicode_FromString(names[i]);
        if (s == NULL || PyList_Append(lst, s) < 0) { Py_XDECREF(s); Py_DECREF(lst); return NULL; }
        Py_DECREF(s);
    }
    return lst;
}

/* reset(): replace the kernel ring by a fresh one (same parameters).  Used
   when a SINGLE_ISSUER loop is run by a new thread; refused while anything
   is in flight, because in-flight memory cannot move between rings. */
static PyObject *Ring_reset(RingObject *r, PyObject *unused) {
    if (r->dispatching) return PyErr_Format(PyExc_RuntimeError, "cannot reset from a completion callback");
    if (r->ninflight) return PyErr_Format(PyExc_RuntimeError, "cannot reset a ring with operations in flight");
    unsigned e = r->p_entries, c = r->p_cq_factor, rej = r->p_reject;
    if (!r->closed) ring_shutdown(r, 0.0);
    r->enabled = 0;
    r->reg_index = -1;
    r->wake_armed = 0;
    __atomic_store_n(&r->wake_pending, 0, __ATOMIC_RELEASE);
    r->abandoned = 0;
    PyObject *args = Py_BuildValue("(III)", e, c, rej);
    if (args == NULL) return NULL;
    int rc = Ring_init(r, args, NULL);
    Py_DECREF(args);
    if (rc < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *Ring_info(RingObject *r, PyObject *unused) {
    static const unsigned sbits[] = {IORING_SETUP_CQSIZE, IORING_SETUP_R_DISABLED, IORING_SETUP_SUBMIT_ALL,
                                     IORING_SETUP_COOP_TASKRUN, IORING_SETUP_TASKRUN_FLAG,
                                     IORING_SETUP_SINGLE_ISSUER, IORING_SETUP_DEFER_TASKRUN};
    static const char *const snames[] = {"CQSIZE", "R_DISABLED", "SUBMIT_ALL", "COOP_TASKRUN",
                                         "TASKRUN_FLAG", "SINGLE_ISSUER", "DEFER_TASKRUN"};
    static const unsigned fbits[] = {IORING_FEAT_SINGLE_MMAP, IORING_FEAT_NODROP, IORING_FEAT_SUBMIT_STABLE,
                                     IORING_FEAT_RW_CUR_POS, IORING_FEAT_FAST_POLL, IORING_FEAT_EXT_ARG,
                                     IORING_FEAT_NATIVE_WORKERS, IORING_FEAT_CQE_SKIP, IORING_FEAT_LINKED_FILE,
                                     IORING_FEAT_REG_REG_RING};
    static const char *const fnames[] = {"SINGLE_MMAP", "NODROP", "SUBMIT_STABLE", "RW_CUR_POS", "FAST_POLL",
                                         "EXT_ARG", "NATIVE_WORKERS", "CQE_SKIP", "LINKED_FILE", "REG_REG_RING"};
    PyObject *setup = flag_names(r->setup_flags, sbits, snames, 7);
    PyObject *feat = flag_names(r->features, fbits, fnames, 10);
    PyObject *res = NULL;
    if (setup && feat)
        res = Py_BuildValue("{s:N,s:N,s:I,s:I,s:O,s:n,s:K,s:K,s:K,s:K,s:K,s:i}",
                            "setup_flags", setup, "features", feat,
                            "sq_entries", r->sq_entries, "cq_entries", r->cq_entries,
                            "registered_ring_fd", r->reg_index >= 0 ? Py_True : Py_False,
                            "inflight", r->ninflight,
                            "enters", r->n_enter, "waits", r->n_wait,
                            "submitted", r->n_submit, "completions", r->n_cqe,
                            "overflow_flushes", r->n_overflow, "abandoned", r->abandoned);
    else { Py_XDECREF(setup); Py_XDECREF(feat); }
    return res;
}

static PyObject *Ring_supports(RingObject *r, PyObject *o) {
    long op = PyLong_AsLong(o);
    if (op == -1 && PyErr_Occurred()) return NULL;
    return PyBool_FromLong(op >= 0 && op < 256 && r->opcodes[op]);
}

static PyObject *Ring_get_owner(RingObject *r, void *c) {
    if (!r->enabled) Py_RETURN_NONE;
    return PyLong_FromUnsignedLong((unsigned long)r->owner);
}

static PyObject *Ring_get_inflight(RingObject *r, void *c) { return PyLong_FromSsize_t(r->ninflight); }
static PyObject *Ring_get_closed(RingObject *r, void *c) { return PyBool_FromLong(r->closed); }
static PyObject *Ring_get_ring_fd(RingObject *r, void *c) { return PyLong_FromLong(r->fd); }
static PyObject *Ring_get_single_issuer(RingObject *r, void *c) {
    return PyBool_FromLong((r->setup_flags & IORING_SETUP_SINGLE_ISSUER) != 0);
}

static PyObject *Ring_get_rw_nowait(RingObject *r, void *c) { return PyBool_FromLong(r->rw_nowait); }

static int Ring_set_rw_nowait(RingObject *r, PyObject *v, void *c) {
    int t = v == NULL ? 0 : PyObject_IsTrue(v);
    if (t < 0) return -1;
    r->rw_nowait = t;
    return 0;
}

static PyObject *Ring_get_error_handler(RingObject *r, void *c) {
    PyObject *h = r->error_handler ? r->error_handler : Py_None;
    Py_INCREF(h);
    return h;
}

static int Ring_set_error_handler(RingObject *r, PyObject *v, void *c) {
    Py_XINCREF(v);
    Py_XSETREF(r->error_handler, v);
    return 0;
}

static PyMethodDef Ring_methods[] = {
    {"recv", (PyCFunction)(void (*)(void))Ring_recv, METH_FASTCALL, "recv(op, nbytes, flags=0)"},
    {"recv_into", (PyCFunction)(void (*)(void))Ring_recv_into, METH_FASTCALL, "recv_into(op, buffer, nbytes=0, flags=0)"},
    {"send", (PyCFunction)(void (*)(void))Ring_send, METH_FASTCALL, "send(op, data, flags=0)"},
    {"sendv", (PyCFunction)(void (*)(void))Ring_sendv, METH_FASTCALL, "sendv(op, buffers)"},
    {"recvfrom", (PyCFunction)(void (*)(void))Ring_recvfrom, METH_FASTCALL, "recvfrom(op, nbytes, flags=0)"},
    {"recvfrom_into", (PyCFunction)(void (*)(void))Ring_recvfrom_into, METH_FASTCALL, "recvfrom_into(op, buffer, nbytes=0, flags=0)"},
    {"accept", (PyCFunction)(void (*)(void))Ring_accept, METH_FASTCALL, "accept(op, multishot=False)"},
    {"poll", (PyCFunction)(void (*)(void))Ring_poll, METH_FASTCALL, "poll(op, events, multishot=False)"},
    {"poll_fd", (PyCFunction)(void (*)(void))Ring_poll_fd, METH_FASTCALL,
     "poll_fd(op, fd, events): one-shot poll of fd, which the ring closes after the final completion"},
    {"read", (PyCFunction)(void (*)(void))Ring_read, METH_FASTCALL, "read(op, nbytes)"},
    {"read_into", (PyCFunction)(void (*)(void))Ring_read_into, METH_FASTCALL, "read_into(op, buffer, nbytes=0)"},
    {"write", (PyCFunction)(void (*)(void))Ring_write, METH_FASTCALL, "write(op, data)"},
    {"post", (PyCFunction)(void (*)(void))Ring_post, METH_FASTCALL, "post(op, res)"},
    {"cancel", (PyCFunction)Ring_cancel, METH_O, "cancel(op) -> bool"},
    {"run", (PyCFunction)Ring_run, METH_O, "run(timeout): submit, wait, dispatch completions"},
    {"wakeup", (PyCFunction)Ring_wakeup, METH_NOARGS, "wake a blocked run() from any thread"},
    {"wakeup_fd", (PyCFunction)Ring_wakeup_fd, METH_NOARGS, "the wake pipe's write end (for signal.set_wakeup_fd)"},
    {"close", (PyCFunction)(void (*)(void))Ring_close, METH_FASTCALL, "close(timeout=5.0) -> ops abandoned"},
    {"ring_info", (PyCFunction)Ring_info, METH_NOARGS, "setup flags, features and counters"},
    {"reset", (PyCFunction)Ring_reset, METH_NOARGS, "rebuild the kernel ring (nothing may be in flight)"},
    {"supports_opcode", (PyCFunction)Ring_supports, METH_O, "is an IORING_OP_* supported"},
    {NULL},
};

static PyGetSetDef Ring_getset[] = {
    {"owner", (getter)Ring_get_owner, NULL, "thread ident that enabled the ring, or None", NULL},
    {"inflight", (getter)Ring_get_inflight, NULL, "operations awaiting their final completion", NULL},
    {"closed", (getter)Ring_get_closed, NULL, "closed", NULL},
    {"ring_fd", (getter)Ring_get_ring_fd, NULL, "the io_uring fd", NULL},
    {"single_issuer", (getter)Ring_get_single_issuer, NULL, "IORING_SETUP_SINGLE_ISSUER in use", NULL},
    {"inject_rw_nowait", (getter)Ring_get_rw_nowait, (setter)Ring_set_rw_nowait,
     "tests: submit READ/WRITE with RWF_NOWAIT (-EAGAIN when not ready, as older kernels "
     "do for O_NONBLOCK files)", NULL},
    {"error_handler", (getter)Ring_get_error_handler, (setter)Ring_set_error_handler,
     "called as error_handler(op, exc) when a completion callback raises an Exception", NULL},
    {NULL},
};

static PyTypeObject Ring_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "iocp_policy._uring.Ring",
    .tp_basicsize = sizeof(RingObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Ring(entries=1024, cq_factor=4, reject_flags=0): an io_uring instance.",
    .tp_new = Ring_new,
    .tp_init = (initproc)Ring_init,
    .tp_dealloc = (destructor)Ring_dealloc,
    .tp_traverse = (traverseproc)Ring_traverse,
    .tp_clear = (inquiry)Ring_clear,
    .tp_methods = Ring_methods,
    .tp_getset = Ring_getset,
};

static struct PyModuleDef uring_module = {
    PyModuleDef_HEAD_INIT, "iocp_policy._uring",
    "io_uring completion port core (see the comment at the top of _uring.c).", -1, NULL,
};

PyMODINIT_FUNC PyInit__uring(void) {
    if (PyType_Ready(&Op_Type) < 0 || PyType_Ready(&Ring_Type) < 0) return NULL;
    PyObject *m = PyModule_Create(&uring_module);
    if (m == NULL) return NULL;
    graveyard = PyList_New(0);
    if (graveyard == NULL) return NULL;
    Py_INCREF(graveyard);
    if (PyModule_AddObject(m, "graveyard", graveyard) < 0) return NULL;
    Py_INCREF(&Op_Type);
    Py_INCREF(&Ring_Type);
    if (PyModule_AddObject(m, "Op", (PyObject *)&Op_Type) < 0) return NULL;
    if (PyModule_AddObject(m, "Ring", (PyObject *)&Ring_Type) < 0) return NULL;
    PyModule_AddIntConstant(m, "IORING_OP_RECV", IORING_OP_RECV);
    PyModule_AddIntConstant(m, "IORING_OP_SEND", IORING_OP_SEND);
    PyModule_AddIntConstant(m, "IORING_OP_ACCEPT", IORING_OP_ACCEPT);
    PyModule_AddIntConstant(m, "IORING_OP_POLL_ADD", IORING_OP_POLL_ADD);
    PyModule_AddIntConstant(m, "IORING_OP_SPLICE", IORING_OP_SPLICE);
    PyModule_AddIntConstant(m, "IORING_SETUP_SINGLE_ISSUER", IORING_SETUP_SINGLE_ISSUER);
    PyModule_AddIntConstant(m, "IORING_SETUP_DEFER_TASKRUN", IORING_SETUP_DEFER_TASKRUN);
    PyModule_AddIntConstant(m, "IORING_SETUP_COOP_TASKRUN", IORING_SETUP_COOP_TASKRUN);
    PyModule_AddIntConstant(m, "IORING_SETUP_TASKRUN_FLAG", IORING_SETUP_TASKRUN_FLAG);
    PyModule_AddIntConstant(m, "IORING_SETUP_SUBMIT_ALL", IORING_SETUP_SUBMIT_ALL);
    PyModule_AddIntConstant(m, "IORING_SETUP_CQSIZE", IORING_SETUP_CQSIZE);
    return m;
}
