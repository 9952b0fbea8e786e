/*
 * micromono._speedups: the compiled half of Instance.begin (micromono/engine/native.py).
 *
 * It does in one C call what the pure-Python `Instance.begin` does in four ctypes calls and the interpreter steps
 * around them: copy the request into the guest's inbox, store `kind` and the length in the entry's wasmtime_val_t
 * arguments, set the store's epoch deadline, start `mm_handle` with `wasmtime_func_call_async`, run its first slice
 * with `wasmtime_call_future_poll` (the GIL released), and, when the guest finished within the slice, delete the
 * future and copy the reply out of the guest's memory as bytes. A guest still running after its slice is handed back
 * as (SUSPENDED, future address); anything unusual (a request larger than the inbox, a trap or error, an application
 * error, a reply outside the view) is handed back to Python too, which handles it exactly as the pure path does.
 * The pure-Python path is the tested reference; this one is used when it is built and current (micromono/
 * _accelerate.py checks SOURCE_SHA256, the digest of this file that setup.py compiles in), unless MICROMONO_PURE=1.
 *
 * It also holds the compiled path's epoch ticker (`ticker_start`, below): a thread that ends guests' slices
 * without ever taking the GIL.
 *
 * It links against nothing: the addresses of the wasmtime functions come from Python (the same symbols the engine's
 * ctypes path calls, micromono/engine/ffi.py), so they always match the wasmtime that wasmtime-py loaded.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

typedef void *(*call_async_fn)(void *ctx, void *func, void *args, size_t nargs, void *results, size_t nresults,
                               void **trap, void **err);
typedef bool (*poll_fn)(void *future);
typedef void (*delete_fn)(void *future);
typedef void (*set_deadline_fn)(void *ctx, uint64_t ticks);

static call_async_fn call_async;
static poll_fn future_poll;
static delete_fn future_delete;
static set_deadline_fn set_deadline;

/* What the pure path keeps per instance, as plain addresses: engine/instance.py's `_FAST_ARGS` struct, packed into one
 * bytes object (`Instance._fast`) in this order and with native sizes. `vals` is three wasmtime_val_t of 32 bytes:
 * two arguments, one result (an i32 at byte 8 of each, the i64 result at byte 72). */
typedef struct {
    void *ctx, *func, *vals, *trap, *err;
    char *inbox;
    size_t inbox_cap;
    void *ticker; /* the engine's native ticker (marked busy here), or NULL when the ticker is Python's */
} fast_args;

static void ticker_mark_busy(void *ticker);

/* Result codes handed back to Python with a value, when the reply is not a plain success. */
enum { TOO_LARGE = 1, FAILED = 2, CHECK_REPLY = 3, SUSPENDED = 4 };

static void *address_of(PyObject *value) {
    void *p = PyLong_AsVoidPtr(value);
    if (p == NULL && !PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "a wasmtime function address is 0");
    return p;
}

static PyObject *set_calls(PyObject *self, PyObject *const *argv, Py_ssize_t argc) {
    if (argc != 4) {
        PyErr_SetString(PyExc_TypeError, "set_calls(call_async, future_poll, future_delete, set_epoch_deadline)");
        return NULL;
    }
    void *p[4];
    for (int i = 0; i < 4; i++)
        if ((p[i] = address_of(argv[i])) == NULL) return NULL;
    call_async = (call_async_fn)p[0];
    future_poll = (poll_fn)p[1];
    future_delete = (delete_fn)p[2];
    set_deadline = (set_deadline_fn)p[3];
    Py_RETURN_NONE;
}

static PyObject *handoff(int code, PyObject *value) {
    if (value == NULL) return NULL;
    PyObject *c = PyLong_FromLong(code);
    PyObject *t = c == NULL ? NULL : PyTuple_Pack(2, c, value);
    Py_XDECREF(c);
    Py_DECREF(value);
    return t;
}

/* begin(args, view, kind, request) -> bytes | (code, value)
 *   args:    bytes, a packed fast_args (ctx, func, vals, trap, err, inbox address, inbox capacity, ticker or 0)
 *   view:    the instance's memoryview over guest memory (its length bounds the reply)
 *   returns: a copy of the reply, or (TOO_LARGE, 0), (FAILED, 0), (CHECK_REPLY, r), (SUSPENDED, future) */
static PyObject *begin(PyObject *self, PyObject *const *argv, Py_ssize_t argc) {
    if (argc != 4 || !PyBytes_CheckExact(argv[0]) || PyBytes_GET_SIZE(argv[0]) != (Py_ssize_t)sizeof(fast_args)
        || !PyMemoryView_Check(argv[1])) {
        PyErr_SetString(PyExc_TypeError, "begin(args: packed fast_args bytes, view: memoryview, kind, request)");
        return NULL;
    }
    if (call_async == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "set_calls() was not called");
        return NULL;
    }
    fast_args a;
    memcpy(&a, PyBytes_AS_STRING(argv[0]), sizeof a);
    if (a.ticker != NULL) ticker_mark_busy(a.ticker);
    Py_buffer *view = PyMemoryView_GET_BUFFER(argv[1]);
    long kind = PyLong_AsLong(argv[2]);
    if (kind == -1 && PyErr_Occurred()) return NULL;

    Py_buffer request;
    if (PyObject_GetBuffer(argv[3], &request, PyBUF_SIMPLE) < 0) return NULL;
    if ((size_t)request.len > a.inbox_cap) {
        PyBuffer_Release(&request);
        return handoff(TOO_LARGE, PyLong_FromLong(0));
    }
    memcpy(a.inbox, request.buf, (size_t)request.len);
    /* mm_handle(kind, len): two i32 arguments; the i64 result comes back in the third value. */
    char *vals = (char *)a.vals;
    int32_t k = (int32_t)kind, n = (int32_t)request.len;
    memcpy(vals + 8, &k, 4);
    memcpy(vals + 40, &n, 4);
    PyBuffer_Release(&request);

    void **trap = (void **)a.trap, **err = (void **)a.err;
    void *future;
    bool done;
    set_deadline(a.ctx, 2);
    future = call_async(a.ctx, a.func, vals, 2, vals + 64, 1, trap, err);
    Py_BEGIN_ALLOW_THREADS
    done = future_poll(future);
    Py_END_ALLOW_THREADS
    if (!done) return handoff(SUSPENDED, PyLong_FromVoidPtr(future));
    future_delete(future);
    if (*err != NULL || *trap != NULL) return handoff(FAILED, PyLong_FromLong(0));

    int64_t r;
    memcpy(&r, vals + 72, 8);
    uint64_t ptr = (uint64_t)r >> 32, end = ptr + ((uint64_t)r & 0xffffffffu);
    if (r < 0 || end > (uint64_t)view->len) return handoff(CHECK_REPLY, PyLong_FromLongLong(r));
    return PyBytes_FromStringAndSize((const char *)view->buf + ptr, (Py_ssize_t)(end - ptr));
}

/* The `micromono.call` import (a wasmtime async host function) in C, so that the arguments reach Python without
 * libffi's closure and ctypes' conversions: read the six i32 arguments, call the engine's Python handler (`env`, a
 * callable the engine keeps alive as long as its linker) as
 * handler(target_ptr, target_len, request_ptr, request_len, reply_ptr, reply_cap, results, trap_ret, continuation)
 * and, when it returns an int, write it as the import's result with a continuation that is ready at once. The handler returns
 * None when it has filled the continuation (a callee that gave up its slice) or the trap itself. */
typedef struct {
    bool (*callback)(void *env);
    void *env;
    void (*finalizer)(void *env);
} continuation_t;

static bool ready(void *env) { return true; }

static void call_import(void *env, void *caller, const char *args, size_t nargs, char *results, size_t nresults,
                        void **trap_ret, continuation_t *cont) {
    cont->callback = ready;
    cont->env = NULL;
    cont->finalizer = NULL;
    PyGILState_STATE gil = PyGILState_Ensure();
    PyObject *argv[9] = {NULL};
    int ok = 1;
    for (int i = 0; i < 6; i++) {
        uint32_t v;
        memcpy(&v, args + 32 * i + 8, 4);
        if ((argv[i] = PyLong_FromUnsignedLong(v)) == NULL) ok = 0;
    }
    if (ok && ((argv[6] = PyLong_FromVoidPtr(results)) == NULL || (argv[7] = PyLong_FromVoidPtr(trap_ret)) == NULL
               || (argv[8] = PyLong_FromVoidPtr(cont)) == NULL))
        ok = 0;
    PyObject *handler = (PyObject *)env;
    PyObject *r = ok ? PyObject_Vectorcall(handler, argv, 9, NULL) : NULL;
    for (int i = 0; i < 9; i++) Py_XDECREF(argv[i]);
    if (r == NULL) {
        PyErr_WriteUnraisable(handler); /* the handler never raises; a failure here is ours, not the guest's */
        int32_t code = -1;
        memcpy(results + 8, &code, 4);
    } else {
        if (PyLong_CheckExact(r)) {
            int32_t v = (int32_t)PyLong_AsLong(r);
            memcpy(results + 8, &v, 4);
        }
        Py_DECREF(r);
    }
    PyGILState_Release(gil);
}

static PyObject *call_import_address(PyObject *self, PyObject *unused) {
    return PyLong_FromVoidPtr((void *)call_import);
}


/* The epoch ticker of the compiled path (engine/clock.py's `NativeTicker`): a thread of its own that never takes the GIL
 * while it ticks. Every `period_ns` (sleeps until absolute times, so ticks do not drift) it writes the monotonic time and
 * the tick count into the process's deadline clock (engine/clock.py's `DeadlineClock`, a ctypes struct of a double and
 * a uint64 whose address it is given) and calls wasmtime_engine_increment_epoch, which ends the slice of whichever
 * guest is running. The pure path's ticker does the same from Python, and needs the GIL for each tick: the loop
 * thread waits for it in a futex about once per slice, which is what keeps the pure path's slices long.
 *
 * Idle: after IDLE_TICKS ticks in which no guest entry began or resumed (`ticker_busy` was not called), it waits on
 * a condition variable until one does. `active` and `waiting` are sequentially consistent, so either the ticker sees
 * the entry's `active` before it waits or the entry sees `waiting` and signals under the lock the ticker holds until
 * it waits: no wake-up is lost.
 *
 * The idle wait is still bounded (IDLE_HEARTBEAT_NS): at its end the ticker ticks once and waits again. Under heavy
 * load from other processes the ticker was seen waiting while a guest ran in its slice (tests/test_preemption.py,
 * its endless loops beside a busy neighbour, with two CPU-bound processes beside the suite), which froze the event
 * loop until something else ticked; the cause is not yet known (docs/architecture.md, *Preemption*). The heartbeat
 * turns such a freeze into a slice at most IDLE_HEARTBEAT_NS long, at the cost of a few wake-ups a second without the
 * GIL while the daemon is idle. */
enum { IDLE_TICKS = 20 };
enum { IDLE_HEARTBEAT_NS = 10 * 1000 * 1000 };

typedef struct {
    double now;
    uint64_t tick;
} deadline_clock;

typedef void (*increment_fn)(void *engine);

typedef struct {
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    void *engine;
    increment_fn increment;
    deadline_clock *clock;
    int64_t period_ns;
    PyObject *setup; /* called once on the thread as it starts, with the GIL (placement.py), or NULL */
    int active, waiting, stopped;
} ticker;

static double seconds(const struct timespec *t) { return (double)t->tv_sec + (double)t->tv_nsec * 1e-9; }

static void advance(struct timespec *t, int64_t ns) {
    int64_t total = (int64_t)t->tv_nsec + ns;
    t->tv_sec += (time_t)(total / 1000000000);
    t->tv_nsec = (long)(total % 1000000000);
}

static bool later(const struct timespec *a, const struct timespec *b) {
    return a->tv_sec != b->tv_sec ? a->tv_sec > b->tv_sec : a->tv_nsec > b->tv_nsec;
}

static void *ticker_main(void *arg) {
    ticker *t = arg;
    if (t->setup != NULL) {
        PyGILState_STATE gil = PyGILState_Ensure();
        PyObject *r = PyObject_CallNoArgs(t->setup);
        if (r == NULL) PyErr_WriteUnraisable(t->setup);
        Py_XDECREF(r);
        PyGILState_Release(gil);
    }
    /* The lock is held except while ticking; the thread sleeps in pthread_cond_timedwait until the next tick is due
     * (the last one plus the period), so `ticker_set_period` and `ticker_stop` take effect at once when they
     * signal. */
    struct timespec last, next, now;
    clock_gettime(CLOCK_MONOTONIC, &last);
    int idle = 0;
    pthread_mutex_lock(&t->lock);
    while (!__atomic_load_n(&t->stopped, __ATOMIC_SEQ_CST)) {
        if (idle >= IDLE_TICKS) {
            __atomic_store_n(&t->waiting, 1, __ATOMIC_SEQ_CST);
            struct timespec until;
            clock_gettime(CLOCK_MONOTONIC, &until);
            advance(&until, IDLE_HEARTBEAT_NS);
            int waited = 0;
            while (!__atomic_load_n(&t->active, __ATOMIC_SEQ_CST) && !__atomic_load_n(&t->stopped, __ATOMIC_SEQ_CST)
                   && waited != ETIMEDOUT)
                waited = pthread_cond_timedwait(&t->wake, &t->lock, &until);
            __atomic_store_n(&t->waiting, 0, __ATOMIC_SEQ_CST);
            /* Woken by an entry: tick from now on. The heartbeat ran out: one tick, then wait again. */
            idle = waited == ETIMEDOUT && !__atomic_load_n(&t->active, __ATOMIC_SEQ_CST) ? IDLE_TICKS - 1 : 0;
            clock_gettime(CLOCK_MONOTONIC, &last);
            continue;
        }
        int64_t period = __atomic_load_n(&t->period_ns, __ATOMIC_RELAXED);
        next = last;
        advance(&next, period);
        if (pthread_cond_timedwait(&t->wake, &t->lock, &next) != ETIMEDOUT) continue; /* re-paced, stopped, spurious */
        pthread_mutex_unlock(&t->lock);
        clock_gettime(CLOCK_MONOTONIC, &now);
        struct timespec late = next;
        advance(&late, period);
        last = later(&now, &late) ? now : next; /* a period behind: go on from now, without a burst to catch up */
        idle = __atomic_exchange_n(&t->active, 0, __ATOMIC_SEQ_CST) ? 0 : idle + 1;
        double at = seconds(&now);
        uint64_t bits;
        memcpy(&bits, &at, sizeof bits);
        __atomic_store_n((uint64_t *)&t->clock->now, bits, __ATOMIC_RELAXED);
        __atomic_fetch_add(&t->clock->tick, 1, __ATOMIC_RELAXED);
        t->increment(t->engine);
        pthread_mutex_lock(&t->lock);
    }
    pthread_mutex_unlock(&t->lock);
    return NULL;
}

static const char TICKER_CAPSULE[] = "micromono._speedups.ticker";

static void ticker_free(ticker *t) {
    pthread_mutex_destroy(&t->lock);
    pthread_cond_destroy(&t->wake);
    Py_XDECREF(t->setup);
    PyMem_RawFree(t);
}

static ticker *ticker_of(PyObject *capsule) { return PyCapsule_GetPointer(capsule, TICKER_CAPSULE); }

/* ticker_start(engine, increment, clock, period_ns, setup) -> capsule
 *   engine:    the wasm_engine_t address; increment: wasmtime_engine_increment_epoch's address
 *   clock:     the address of a deadline_clock (engine/clock.py's DeadlineClock), which must outlive the ticker
 *   setup:     a callable run on the new thread as it starts, or None */
static PyObject *ticker_start(PyObject *self, PyObject *const *argv, Py_ssize_t argc) {
    if (argc != 5) {
        PyErr_SetString(PyExc_TypeError, "ticker_start(engine, increment_epoch, clock, period_ns, setup)");
        return NULL;
    }
    void *p[3];
    for (int i = 0; i < 3; i++)
        if ((p[i] = address_of(argv[i])) == NULL) return NULL;
    long long period = PyLong_AsLongLong(argv[3]);
    if (period == -1 && PyErr_Occurred()) return NULL;
    if (period < 1000 || period > 100000LL * 1000 * 1000 * 1000) {
        PyErr_Format(PyExc_ValueError, "ticker_start: period_ns must be 1000..10**14, got %lld", period);
        return NULL;
    }
    if (argv[4] != Py_None && !PyCallable_Check(argv[4])) {
        PyErr_SetString(PyExc_TypeError, "ticker_start: setup must be callable or None");
        return NULL;
    }
    ticker *t = PyMem_RawCalloc(1, sizeof *t);
    if (t == NULL) return PyErr_NoMemory();
    pthread_mutex_init(&t->lock, NULL);
    pthread_condattr_t monotonic;
    pthread_condattr_init(&monotonic);
    pthread_condattr_setclock(&monotonic, CLOCK_MONOTONIC); /* timed waits until a time of the ticks' clock */
    pthread_cond_init(&t->wake, &monotonic);
    pthread_condattr_destroy(&monotonic);
    t->engine = p[0];
    t->increment = (increment_fn)p[1];
    t->clock = p[2];
    t->period_ns = period;
    t->setup = argv[4] == Py_None ? NULL : Py_NewRef(argv[4]);
    t->active = 1;
    PyObject *capsule = PyCapsule_New(t, TICKER_CAPSULE, NULL);
    if (capsule == NULL) {
        ticker_free(t);
        return NULL;
    }
    int err = pthread_create(&t->thread, NULL, ticker_main, t);
    if (err != 0) {
        Py_DECREF(capsule);
        ticker_free(t);
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return capsule;
}

static void ticker_mark_busy(void *ticker_ptr) {
    ticker *t = ticker_ptr;
    __atomic_store_n(&t->active, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&t->waiting, __ATOMIC_SEQ_CST)) {
        pthread_mutex_lock(&t->lock);
        pthread_cond_signal(&t->wake);
        pthread_mutex_unlock(&t->lock);
    }
}

/* ticker_busy(capsule): a guest entry is about to run; wakes the ticker if it waits. (`begin` does the same for
 * the ticker in its fast_args.) */
static PyObject *ticker_busy(PyObject *self, PyObject *capsule) {
    ticker *t = ticker_of(capsule);
    if (t == NULL) return NULL;
    ticker_mark_busy(t);
    Py_RETURN_NONE;
}

/* ticker_address(capsule) -> int: the ticker's address, for fast_args. */
static PyObject *ticker_address(PyObject *self, PyObject *capsule) {
    ticker *t = ticker_of(capsule);
    if (t == NULL) return NULL;
    return PyLong_FromVoidPtr(t);
}

/* ticker_set_period(capsule, period_ns): the next tick comes period_ns after the last one (at once if that is past),
 * and so on. */
static PyObject *ticker_set_period(PyObject *self, PyObject *const *argv, Py_ssize_t argc) {
    if (argc != 2) {
        PyErr_SetString(PyExc_TypeError, "ticker_set_period(ticker, period_ns)");
        return NULL;
    }
    ticker *t = ticker_of(argv[0]);
    if (t == NULL) return NULL;
    long long period = PyLong_AsLongLong(argv[1]);
    if (period == -1 && PyErr_Occurred()) return NULL;
    if (period < 1000 || period > 100000LL * 1000 * 1000 * 1000) {
        PyErr_Format(PyExc_ValueError, "ticker_set_period: period_ns must be 1000..10**14, got %lld", period);
        return NULL;
    }
    pthread_mutex_lock(&t->lock);
    __atomic_store_n(&t->period_ns, (int64_t)period, __ATOMIC_RELAXED);
    pthread_cond_signal(&t->wake); /* a sleep until the old period's tick ends now, and the next is timed anew */
    pthread_mutex_unlock(&t->lock);
    Py_RETURN_NONE;
}

/* ticker_waiting(capsule) -> bool: whether the ticker waits for an entry (for tests and status). */
static PyObject *ticker_waiting(PyObject *self, PyObject *capsule) {
    ticker *t = ticker_of(capsule);
    if (t == NULL) return NULL;
    return PyBool_FromLong(__atomic_load_n(&t->waiting, __ATOMIC_SEQ_CST));
}

/* ticker_stop(capsule): end the thread; the capsule is dead after (a second stop raises). */
static PyObject *ticker_stop(PyObject *self, PyObject *capsule) {
    ticker *t = ticker_of(capsule);
    if (t == NULL) return NULL;
    if (PyCapsule_SetName(capsule, "micromono._speedups.ticker (stopped)") < 0) return NULL;
    pthread_mutex_lock(&t->lock);
    __atomic_store_n(&t->stopped, 1, __ATOMIC_SEQ_CST);
    pthread_cond_signal(&t->wake);
    pthread_mutex_unlock(&t->lock);
    Py_BEGIN_ALLOW_THREADS /* the thread may be running `setup`, which needs the GIL */
    pthread_join(t->thread, NULL);
    Py_END_ALLOW_THREADS
    /* The struct itself stays: instances' packed fast_args may still point at it, and `begin` marking a stopped
     * ticker busy is harmless (it no longer waits). It is small, and there is one per engine the process made. */
    Py_CLEAR(t->setup);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"call_import_address", call_import_address, METH_NOARGS,
     "The address of the C `micromono.call` import (wasmtime_func_async_callback_t; env: the Python handler)."},
    {"set_calls", (PyCFunction)(void (*)(void))set_calls, METH_FASTCALL,
     "Set the addresses of wasmtime_func_call_async, wasmtime_call_future_poll, wasmtime_call_future_delete and "
     "wasmtime_context_set_epoch_deadline."},
    {"begin", (PyCFunction)(void (*)(void))begin, METH_FASTCALL, "The hot path of Instance.begin."},
    {"ticker_start", (PyCFunction)(void (*)(void))ticker_start, METH_FASTCALL,
     "Start an epoch ticker thread that never takes the GIL while it ticks; returns its capsule."},
    {"ticker_busy", ticker_busy, METH_O, "A guest entry is about to run: wake the ticker if it waits."},
    {"ticker_set_period", (PyCFunction)(void (*)(void))ticker_set_period, METH_FASTCALL,
     "Tick every period_ns from the next tick on."},
    {"ticker_address", ticker_address, METH_O, "The ticker's address, for begin's packed arguments."},
    {"ticker_waiting", ticker_waiting, METH_O, "Whether the ticker waits for a guest entry."},
    {"ticker_stop", ticker_stop, METH_O, "Stop the ticker thread and free it."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "micromono._speedups", NULL, -1, methods};

/* The sha256 of this file, compiled in by setup.py, so that micromono/_accelerate.py can tell a current build from a
 * stale one. A build without it is never taken for current. */
#ifndef MICROMONO_SOURCE_SHA256
#define MICROMONO_SOURCE_SHA256 ""
#endif

PyMODINIT_FUNC PyInit__speedups(void) {
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddStringConstant(m, "SOURCE_SHA256", MICROMONO_SOURCE_SHA256) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
