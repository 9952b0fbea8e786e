/*
 * micromono._speedups: the optional compiled half of Instance.begin (micromono/engine.py).
 *
 * It does in one C call what the pure-Python `Instance.begin` does in about twenty interpreter steps and four ctypes
 * calls: copy the request into the guest's inbox, store `kind` and the length in the entry's wasmtime_val_t
 * arguments, set the store's epoch deadline, start `mm_handle` with `wasmtime_func_call_async`, run its first slice
 * with `wasmtime_call_future_poll` (the GIL released), and, when the guest finished within the slice, delete the
 * future and copy the reply out of the guest's memory as bytes. A guest still running after its slice is handed back
 * as (SUSPENDED, future address); anything unusual (a request larger than the inbox, a trap or error, an application
 * error, a reply outside the view) is handed back to Python too, which handles it exactly as the pure path does.
 * The pure-Python path is the default and the tested reference; this one is used only when MICROMONO_SPEEDUPS=1
 * (docs/architecture.md).
 *
 * It links against nothing: the addresses of the four wasmtime functions come from Python (the same symbols
 * engine.py's ctypes path calls), so they always match the wasmtime that wasmtime-py loaded.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

typedef void *(*call_async_fn)(void *ctx, void *func, void *args, size_t nargs, void *results, size_t nresults,
                               void **trap, void **err);
typedef bool (*poll_fn)(void *future);
typedef void (*delete_fn)(void *future);
typedef void (*set_deadline_fn)(void *ctx, uint64_t ticks);

static call_async_fn call_async;
static poll_fn future_poll;
static delete_fn future_delete;
static set_deadline_fn set_deadline;

/* What the pure path keeps per instance, as plain addresses: engine.py's `_FAST_ARGS` struct, packed into one
 * bytes object (`Instance._fast`) in this order and with native sizes. `vals` is three wasmtime_val_t of 32 bytes:
 * two arguments, one result (an i32 at byte 8 of each, the i64 result at byte 72). */
typedef struct {
    void *ctx, *func, *vals, *trap, *err;
    char *inbox;
    size_t inbox_cap;
} fast_args;

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
 *   args:    bytes, a packed fast_args (ctx, func, vals, trap, err, inbox address, inbox capacity)
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

static PyMethodDef methods[] = {
    {"call_import_address", call_import_address, METH_NOARGS,
     "The address of the C `micromono.call` import (wasmtime_func_async_callback_t; env: the Python handler)."},
    {"set_calls", (PyCFunction)(void (*)(void))set_calls, METH_FASTCALL,
     "Set the addresses of wasmtime_func_call_async, wasmtime_call_future_poll, wasmtime_call_future_delete and "
     "wasmtime_context_set_epoch_deadline."},
    {"begin", (PyCFunction)(void (*)(void))begin, METH_FASTCALL, "The hot path of Instance.begin."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "micromono._speedups", NULL, -1, methods};

PyMODINIT_FUNC PyInit__speedups(void) { return PyModule_Create(&module); }
