/*
 * wsflask._iterator: the compiled twin of websocket.MessagesPython, the iterator behind
 * ``for message in ws``.
 *
 * Why it exists: a greenlet that waits keeps a copy of its C stack. A Python iterator that
 * waits inside ``__next__`` (or a generator) adds a second interpreter frame to that stack,
 * about 380 bytes, plus its own object, on every idle connection. This iterator calls the
 * connection's ``_step()`` for each pass and, when ``_step`` hands back the socket to wait
 * on, waits here in C: the greenlet sleeps one C frame above the handler's own.
 *
 * What it does, exactly as the twin does (tests/test_messages_iterator.py runs both):
 *   step = ws._step(None, woken)      (woken is 0 on the first pass)
 *   None          -> the connection closed: StopIteration
 *   str or bytes  -> the message
 *   anything else -> a gevent socket: watcher = sock._read_event;
 *                    watcher.start(getcurrent().switch); sock.hub.switch(); watcher.stop();
 *                    then another pass with woken = 1 (_READY: read at once), or 2
 *                    (_CLOSED) when the wait raised OSError (the socket closed under us:
 *                    the next pass reports the end). Any other exception propagates
 *                    after ws._woke(False).
 * It does no I/O of its own and holds no buffer; it knows nothing of the protocol.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* Under AddressSanitizer (make asan): the frames that are on the C stack while the greenlet
 * is switched out get no stack redzones. greenlet copies a waiting greenlet's stack with a
 * plain memcpy, which ASan would report as a read of those redzones (a false positive of
 * stack switching, not an error here). Their heap accesses go through CPython, which is not
 * instrumented either way; UBSan still checks them. */
#if defined(__SANITIZE_ADDRESS__)
#define SWITCHED_OUT __attribute__((no_sanitize_address))
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SWITCHED_OUT __attribute__((no_sanitize_address))
#endif
#endif
#ifndef SWITCHED_OUT
#define SWITCHED_OUT
#endif

static PyObject *getcurrent;  /* greenlet.getcurrent */
/* ``woken`` for ``ws._step``: 0, _READY, _CLOSED (websocket.py); small ints, never freed */
static PyObject *woken_none, *woken_ready, *woken_closed;
static PyObject *str_step, *str_woke, *str_read_event, *str_hub, *str_switch, *str_start,
    *str_stop;

typedef struct {
    PyObject_HEAD
    PyObject *ws;
} Messages;

/* ``obj.name()``, for the calls during which the greenlet may switch out (hub.switch(), and
 * ws._step(), which can wait itself): CPython's PyObject_CallMethodNoArgs is an inline
 * helper with an argument array of its own, which ASan would give redzones (see above). */
static SWITCHED_OUT PyObject *
call_method(PyObject *obj, PyObject *name)
{
    PyObject *args[1] = {obj};
    return PyObject_VectorcallMethod(name, args, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

/* ``ws._step(None, woken)``, likewise. */
static SWITCHED_OUT PyObject *
call_step(PyObject *ws, PyObject *woken)
{
    PyObject *args[3] = {ws, Py_None, woken};
    return PyObject_VectorcallMethod(str_step, args, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

/* Wait until ``sock`` is readable: 0, or -1 with an exception set. */
static SWITCHED_OUT int
wait_readable(PyObject *sock)
{
    PyObject *watcher = NULL, *hub = NULL, *current = NULL, *switch_ = NULL, *r = NULL;
    int rc = -1;
    if ((watcher = PyObject_GetAttr(sock, str_read_event)) == NULL) goto done;
    if ((hub = PyObject_GetAttr(sock, str_hub)) == NULL) goto done;
    if ((current = PyObject_CallNoArgs(getcurrent)) == NULL) goto done;
    if ((switch_ = PyObject_GetAttr(current, str_switch)) == NULL) goto done;
    if ((r = PyObject_CallMethodOneArg(watcher, str_start, switch_)) == NULL) goto done;
    Py_CLEAR(r);
    Py_CLEAR(switch_);  /* the watcher holds it while armed */
    Py_CLEAR(current);
    r = call_method(hub, str_switch);
    rc = r == NULL ? -1 : 0;
    Py_CLEAR(r);
    {   /* watcher.stop(), keeping the wait's exception, if any */
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyObject *s = PyObject_CallMethodNoArgs(watcher, str_stop);
        if (s == NULL) {
            if (type != NULL) {  /* the first error wins */
                PyErr_Clear();
                PyErr_Restore(type, value, tb);
            }
            rc = -1;
        }
        else {
            Py_DECREF(s);
            PyErr_Restore(type, value, tb);
        }
    }
done:
    Py_XDECREF(watcher);
    Py_XDECREF(hub);
    Py_XDECREF(current);
    Py_XDECREF(switch_);
    return rc;
}

/* The wait raised (a kill, a Timeout): ws._woke(False), keeping that exception (the first
 * error wins). Always NULL, with an exception set. */
static PyObject *
woke_and_raise(PyObject *ws)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyObject *r = PyObject_CallMethodOneArg(ws, str_woke, Py_False);
    if (r == NULL)
        PyErr_Clear();
    Py_XDECREF(r);
    PyErr_Restore(type, value, tb);
    return NULL;
}

static SWITCHED_OUT PyObject *
messages_next(Messages *self)
{
    PyObject *ws = self->ws, *woken = woken_none;
    for (;;) {
        PyObject *step = call_step(ws, woken);
        if (step == NULL) return NULL;
        if (step == Py_None) {  /* closed: the end, without an exception */
            Py_DECREF(step);
            return NULL;
        }
        if (PyUnicode_Check(step) || PyBytes_Check(step)) return step;
        int rc = wait_readable(step);
        Py_DECREF(step);
        woken = woken_ready;
        if (rc < 0) {
            if (!PyErr_ExceptionMatches(PyExc_OSError)) return woke_and_raise(ws);
            PyErr_Clear();  /* closed under the wait (cancel_wait): the next pass ends it */
            woken = woken_closed;
        }
    }
}

static PyObject *
messages_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *ws;
    if (kwargs != NULL && PyDict_GET_SIZE(kwargs) != 0) {
        PyErr_SetString(PyExc_TypeError, "Messages() takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_UnpackTuple(args, "Messages", 1, 1, &ws)) return NULL;
    Messages *self = (Messages *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    Py_INCREF(ws);
    self->ws = ws;
    return (PyObject *)self;
}

/* Not tracked by the cyclic GC (16 bytes less per waiting connection): it refers only to
 * its connection, and nothing in wsflask refers back to it, so it is never in a cycle. */
static void
messages_dealloc(Messages *self)
{
    Py_CLEAR(self->ws);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

PyDoc_STRVAR(messages_doc,
             "Messages(ws)\n--\n\n"
             "The messages of ``ws`` until it closes: ``ws._step()`` per pass, waiting for "
             "input in C (the compiled twin of ``wsflask.websocket.MessagesPython``).");

static PyTypeObject MessagesType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "wsflask._iterator.Messages",
    .tp_basicsize = sizeof(Messages),
    .tp_dealloc = (destructor)messages_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = messages_doc,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)messages_next,
    .tp_new = messages_new,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "wsflask._iterator",
    "The compiled twin of the connection's message iterator (``for message in ws``).",
    -1, NULL, NULL, NULL, NULL, NULL,
};

static int
intern(PyObject **slot, const char *text)
{
    if (*slot == NULL) *slot = PyUnicode_InternFromString(text);
    return *slot == NULL ? -1 : 0;
}

PyMODINIT_FUNC
PyInit__iterator(void)
{
    if (intern(&str_step, "_step") < 0 || intern(&str_woke, "_woke") < 0 ||
        intern(&str_read_event, "_read_event") < 0 || intern(&str_hub, "hub") < 0 ||
        intern(&str_switch, "switch") < 0 || intern(&str_start, "start") < 0 ||
        intern(&str_stop, "stop") < 0)
        return NULL;
    if (woken_none == NULL) {
        woken_none = PyLong_FromLong(0);
        woken_ready = PyLong_FromLong(1);
        woken_closed = PyLong_FromLong(2);
        if (woken_none == NULL || woken_ready == NULL || woken_closed == NULL) return NULL;
    }
    if (getcurrent == NULL) {
        PyObject *greenlet = PyImport_ImportModule("greenlet");
        if (greenlet == NULL) return NULL;
        getcurrent = PyObject_GetAttrString(greenlet, "getcurrent");
        Py_DECREF(greenlet);
        if (getcurrent == NULL) return NULL;
    }
    if (PyType_Ready(&MessagesType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&MessagesType);
    if (PyModule_AddObject(m, "Messages", (PyObject *)&MessagesType) < 0) {
        Py_DECREF(&MessagesType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
