/*
 * micromono._speedups: the optional compiled half of Instance.invoke (micromono/engine.py).
 *
 * It does in one C call what the pure-Python `Instance.invoke` does in about fifteen interpreter steps and one
 * ctypes call: copy the request into the guest's inbox, store `kind` and the length in the raw argument buffer,
 * call `wasmtime_func_call_unchecked` with the GIL released, and copy the reply out of the guest's memory as bytes.
 * Anything unusual (a request larger than the inbox, a trap or error, an application error, a reply outside the
 * view) is handed back to Python, which handles it exactly as the pure path does. The pure-Python path is the
 * default and the tested reference; this one is used only when MICROMONO_SPEEDUPS=1 (docs/architecture.md).
 *
 * It links against nothing: the address of `wasmtime_func_call_unchecked` comes from Python (the same symbol
 * engine.py's ctypes path calls), so it always matches the wasmtime that wasmtime-py loaded.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

typedef void *(*call_unchecked_fn)(void *ctx, void *func, void *args, size_t nargs, void **trap);

static call_unchecked_fn call_unchecked;

/* What the pure path keeps per instance, as plain addresses: engine.py's `_FAST_ARGS` struct, packed into one
 * bytes object (`Instance._fast`) in this order and with native sizes. */
typedef struct {
    void *ctx, *func, *buf, *trap;
    char *inbox;
    size_t inbox_cap;
} fast_args;

/* Result codes handed back to Python with a value, when the reply is not a plain success. */
enum { TOO_LARGE = 1, FAILED = 2, CHECK_REPLY = 3 };

static PyObject *set_call(PyObject *self, PyObject *address) {
    void *p = PyLong_AsVoidPtr(address);
    if (p == NULL) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "the address of wasmtime_func_call_unchecked is 0");
        return NULL;
    }
    call_unchecked = (call_unchecked_fn)p;
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

/* invoke(args, view, kind, request) -> bytes | (code, value)
 *   args:    bytes, a packed fast_args (ctx, func, buf, trap, inbox address, inbox capacity)
 *   view:    the instance's memoryview over guest memory (its length bounds the reply)
 *   returns: a copy of the reply, or (TOO_LARGE, 0), (FAILED, error pointer), (CHECK_REPLY, r) */
static PyObject *invoke(PyObject *self, PyObject *const *argv, Py_ssize_t argc) {
    if (argc != 4 || !PyBytes_CheckExact(argv[0]) || PyBytes_GET_SIZE(argv[0]) != (Py_ssize_t)sizeof(fast_args)
        || !PyMemoryView_Check(argv[1])) {
        PyErr_SetString(PyExc_TypeError, "invoke(args: packed fast_args bytes, view: memoryview, kind, request)");
        return NULL;
    }
    if (call_unchecked == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "set_call() was not called");
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
    /* mm_handle(kind, len): two wasmtime_val_raw_t slots of 16 bytes; the i64 result comes back in slot 0. */
    char *buf = (char *)a.buf;
    int32_t k = (int32_t)kind, n = (int32_t)request.len;
    memcpy(buf, &k, 4);
    memcpy(buf + 16, &n, 4);
    PyBuffer_Release(&request);

    void **trap = (void **)a.trap;
    void *err;
    Py_BEGIN_ALLOW_THREADS
    err = call_unchecked(a.ctx, a.func, buf, 2, trap);
    Py_END_ALLOW_THREADS
    if (err != NULL || *trap != NULL) return handoff(FAILED, PyLong_FromVoidPtr(err));

    int64_t r;
    memcpy(&r, buf, 8);
    uint64_t ptr = (uint64_t)r >> 32, end = ptr + ((uint64_t)r & 0xffffffffu);
    if (r < 0 || end > (uint64_t)view->len) return handoff(CHECK_REPLY, PyLong_FromLongLong(r));
    return PyBytes_FromStringAndSize((const char *)view->buf + ptr, (Py_ssize_t)(end - ptr));
}

static PyMethodDef methods[] = {
    {"set_call", set_call, METH_O, "Set the address of wasmtime_func_call_unchecked."},
    {"invoke", (PyCFunction)(void (*)(void))invoke, METH_FASTCALL, "The hot path of Instance.invoke."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "micromono._speedups", NULL, -1, methods};

PyMODINIT_FUNC PyInit__speedups(void) { return PyModule_Create(&module); }
