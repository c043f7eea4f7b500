/* A CPython entry point for the kernel's planned calls, built into the same
 * shared library as cpu_kernel.c where the Python headers are present (see
 * colu.ops.cpu). It is optional: without it every call goes through ctypes.
 *
 * Why: on a (64, 512) tensor the kernel itself takes about 2-3 us and the
 * Python around it as much again. Through ctypes a call pays for writing the
 * pointers into the argument block from Python, the thread count, the ctypes
 * call and torch.empty_like; here one METH_FASTCALL call does all of it,
 * measured about 0.5 us less per call (4.6 -> 4.1 us for a soft RCoLU
 * forward), a tenth of a small call.
 *
 * call(block, half, x[, grad]) -> out: block is the address of a planned
 * argument block of colu_run (see colu_abi.h), which is only read: the call
 * copies it to its stack and fills in the data pointers there, so one block
 * can serve the forward and the backward on any thread. x (and grad) must be
 * contiguous tensors of the planned shape and dtype; the caller guarantees it.
 * The GIL is released while the kernel runs, as ctypes does. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "colu_abi.h"

typedef int64_t i64;

static PyObject *empty_like, *num_threads, *s_data_ptr;

static int data_ptr(PyObject* t, i64* out) {
    PyObject* r = PyObject_CallMethodNoArgs(t, s_data_ptr);
    if (r == NULL) return -1;
    *out = (i64)(intptr_t)PyLong_AsVoidPtr(r);
    Py_DECREF(r);
    return PyErr_Occurred() ? -1 : 0;
}

static PyObject* entry_call(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 3 && nargs != 4) {
        PyErr_Format(PyExc_TypeError, "call(block, half, x[, grad]) takes 3 or 4 arguments, got %zd", nargs);
        return NULL;
    }
    if (empty_like == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "call() before init(torch.empty_like, torch.get_num_threads)");
        return NULL;
    }
    const i64* block = (const i64*)PyLong_AsVoidPtr(args[0]);
    if (block == NULL) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "call(): block is a null address");
        return NULL;
    }
    const int half = PyObject_IsTrue(args[1]);
    if (half < 0) return NULL;
    i64 a[COLU_ARG_COUNT];
    memcpy(a, block, sizeof a);
    a[COLU_ARG_BACKWARD] = nargs == 4;
    a[COLU_ARG_GRAD] = 0;
    PyObject* nt = PyObject_CallNoArgs(num_threads);
    if (nt == NULL) return NULL;
    a[COLU_ARG_THREADS] = PyLong_AsLongLong(nt);
    Py_DECREF(nt);
    if (a[COLU_ARG_THREADS] == -1 && PyErr_Occurred()) return NULL;
    if (data_ptr(args[2], &a[COLU_ARG_X]) || (nargs == 4 && data_ptr(args[3], &a[COLU_ARG_GRAD]))) return NULL;
    PyObject* out = PyObject_CallOneArg(empty_like, args[2]);
    if (out == NULL) return NULL;
    if (data_ptr(out, &a[COLU_ARG_OUT])) {
        Py_DECREF(out);
        return NULL;
    }
    int ran;
    Py_BEGIN_ALLOW_THREADS
    ran = half ? colu_run_half(a) : colu_run(a);
    Py_END_ALLOW_THREADS
    if (!ran) {
        Py_DECREF(out);
        if (half && !colu_half_ok((const colu_cfg*)(intptr_t)a[COLU_ARG_CFG], (int)a[COLU_ARG_DTYPE]))
            PyErr_SetString(PyExc_RuntimeError, "call(): the kernel does not take this half-precision configuration");
        else /* a float32 call whose norms overflowed, with no memory to compute it again in float64 */
            PyErr_SetString(PyExc_MemoryError, "colu: no memory to compute this call again in float64 (its float32 "
                                               "section norms overflowed); free some memory, or pass float64 tensors");
        return NULL;
    }
    return out;
}

static PyObject* entry_init(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "init(empty_like, get_num_threads) takes 2 arguments, got %zd", nargs);
        return NULL;
    }
    Py_XSETREF(empty_like, Py_NewRef(args[0]));
    Py_XSETREF(num_threads, Py_NewRef(args[1]));
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"call", (PyCFunction)(void (*)(void))entry_call, METH_FASTCALL, "call(block, half, x[, grad]) -> out"},
    {"init", (PyCFunction)(void (*)(void))entry_init, METH_FASTCALL, "init(empty_like, get_num_threads)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_colu_cpu", "colu's CPU kernel entry point", -1, methods};

PyMODINIT_FUNC PyInit__colu_cpu(void) {
    if (s_data_ptr == NULL && (s_data_ptr = PyUnicode_InternFromString("data_ptr")) == NULL) return NULL;
    return PyModule_Create(&module);
}
