/*
 * wsflask._framestacks: keeps the frame-stack chunks of ended greenlets for the next ones.
 *
 * Why it exists: since 3.11, CPython keeps a thread's interpreter frames in "data stack"
 * chunks of 16 KiB (DATA_STACK_CHUNK_SIZE), taken from the object arena allocator, which
 * maps them with mmap. greenlet gives every greenlet its own data stack, so each connection
 * greenlet maps a fresh chunk on its first call, faults its first page in, and unmaps it
 * when it ends: an mmap, a page fault and a munmap per connection, about 8 us of a 9.6 us
 * greenlet lifecycle on the development machine (loadtests/RESULTS.md).
 *
 * What it does: keep(capacity) puts a wrapper around the process's arena allocator
 * (PyObject_SetArenaAllocator, a public API) once; from then on a freed block of exactly
 * 16 KiB goes onto a stack of at most `capacity` blocks instead of back to the kernel, and
 * the next 16 KiB request pops one. Every other size (pymalloc's arenas, a deep recursion's
 * larger chunks) passes straight through to the allocator that was there before, and so does
 * every 16 KiB block once the stack is full. keep(0) releases what the stack holds and
 * caches no more; the wrapper itself stays (the allocator may be wrapped again on top of it,
 * so it is never taken out). The blocks stay mapped memory from that allocator, so either
 * one may free them.
 *
 * The arena allocator runs under the GIL; a spin flag guards the stack as well, for
 * interpreters that run without one (a subinterpreter's own GIL, the free-threaded build).
 * On Pythons before 3.11 there are no such chunks: keep() returns False and installs nothing.
 * Its pure-Python twin is wsflask/framestacks.py's fallback, which caches nothing: the
 * process behaves the same, it only pays the kernel calls.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdatomic.h>

#define CHUNK_SIZE (16 * 1024)
/* 16 MiB: far above what a burst of short connections keeps in flight */
#define MAX_CAPACITY 1024

static PyObjectArenaAllocator previous;
static int installed;
static atomic_flag busy = ATOMIC_FLAG_INIT;
static void *stack[MAX_CAPACITY];
static Py_ssize_t held, capacity;
static unsigned long long reused, mapped, unmapped;

static void lock(void) {
    while (atomic_flag_test_and_set_explicit(&busy, memory_order_acquire)) {
    }
}

static void unlock(void) { atomic_flag_clear_explicit(&busy, memory_order_release); }

static void *chunk_alloc(void *ctx, size_t size) {
    (void)ctx;
    if (size == CHUNK_SIZE) {
        void *block = NULL;
        lock();
        if (held > 0) {
            block = stack[--held];
            reused++;
        } else {
            mapped++;
        }
        unlock();
        if (block != NULL) {
            return block;
        }
    }
    return previous.alloc(previous.ctx, size);
}

static void chunk_free(void *ctx, void *block, size_t size) {
    (void)ctx;
    if (size == CHUNK_SIZE && block != NULL) {
        int kept = 0;
        lock();
        if (held < capacity) {
            stack[held++] = block;
            kept = 1;
        } else {
            unmapped++;
        }
        unlock();
        if (kept) {
            return;
        }
    }
    previous.free(previous.ctx, block, size);
}

/* Give back every block beyond `limit`, one at a time (the flag is never held across a call
 * into the previous allocator). */
static void release_above(Py_ssize_t limit) {
    for (;;) {
        void *block = NULL;
        lock();
        if (held > limit) {
            block = stack[--held];
            unmapped++;
        }
        unlock();
        if (block == NULL) {
            return;
        }
        previous.free(previous.ctx, block, CHUNK_SIZE);
    }
}

static PyObject *keep(PyObject *module, PyObject *arg) {
    (void)module;
    Py_ssize_t wanted = PyLong_AsSsize_t(arg);
    if (wanted == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (wanted < 0 || wanted > MAX_CAPACITY) {
        PyErr_Format(PyExc_ValueError, "capacity must be 0..%d blocks, not %zd", MAX_CAPACITY,
                     wanted);
        return NULL;
    }
#if PY_VERSION_HEX < 0x030B0000
    Py_RETURN_FALSE; /* no data-stack chunks before 3.11 */
#else
    if (!installed) {
        PyObjectArenaAllocator wrapper = {NULL, chunk_alloc, chunk_free};
        PyObject_GetArenaAllocator(&previous);
        PyObject_SetArenaAllocator(&wrapper);
        installed = 1;
    }
    lock();
    capacity = wanted;
    unlock();
    release_above(wanted);
    Py_RETURN_TRUE;
#endif
}

static PyObject *stats(PyObject *module, PyObject *unused) {
    (void)module;
    (void)unused;
    lock();
    Py_ssize_t c = capacity, h = held;
    unsigned long long r = reused, m = mapped, u = unmapped;
    unlock();
    return Py_BuildValue("{s:O,s:n,s:n,s:K,s:K,s:K}", "installed",
                         installed ? Py_True : Py_False, "capacity", c, "held", h, "reused", r,
                         "mapped", m, "unmapped", u);
}

static PyMethodDef methods[] = {
    {"keep", keep, METH_O,
     "keep(capacity, /) -> bool: cache up to capacity freed 16 KiB frame-stack chunks."},
    {"stats", stats, METH_NOARGS, "stats() -> dict: the cache's capacity, contents and counts."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "wsflask._framestacks",
    "Reuses the 16 KiB frame-stack chunks of ended greenlets (see wsflask.framestacks).", -1,
    methods,
};

PyMODINIT_FUNC PyInit__framestacks(void) { return PyModule_Create(&module); }
