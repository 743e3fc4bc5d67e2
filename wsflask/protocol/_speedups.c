/*
 * wsflask.protocol._speedups: compiled twins of the protocol core's hot loops.
 *
 * apply_mask / apply_mask_inplace  XOR (un)masking, 8 bytes at a time (RFC 6455 section 5.3)
 * encode_frame                     one frame in one allocation (section 5.2)
 * scan_frames                      every complete frame of one receive buffer (section 5.2)
 * scan_messages                    the plain whole messages at the start of a buffer, as events
 * head_fields                      the header fields of a valid handshake head (RFC 7230 3.2)
 *
 * Each function has a pure-Python twin (mask.py, frames.py, messages.py, handshake.py) that defines its behaviour;
 * tests/protocol/test_speedups.py feeds both the same inputs. The module is optional:
 * speedups.py falls back to the twins when it is missing or WSFLASK_NO_EXTENSIONS is set.
 * Nothing here does I/O or keeps state between calls.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* ------------------------------------------------------------------ masking */

/* dst[i] = src[i] ^ key[i % 4] for i < n; src and dst may be the same buffer. */
static void
xor_mask(const unsigned char *src, unsigned char *dst, Py_ssize_t n,
         const unsigned char *key)
{
    Py_ssize_t i = 0;
    if (n >= 8) {
        unsigned char key8[8];
        uint64_t k, a, b, c, d;
        memcpy(key8, key, 4);
        memcpy(key8 + 4, key, 4);
        memcpy(&k, key8, 8);
        /* memcpy loads and stores: no alignment assumption, compiled to plain moves. */
        for (; i + 32 <= n; i += 32) {
            memcpy(&a, src + i, 8);
            memcpy(&b, src + i + 8, 8);
            memcpy(&c, src + i + 16, 8);
            memcpy(&d, src + i + 24, 8);
            a ^= k; b ^= k; c ^= k; d ^= k;
            memcpy(dst + i, &a, 8);
            memcpy(dst + i + 8, &b, 8);
            memcpy(dst + i + 16, &c, 8);
            memcpy(dst + i + 24, &d, 8);
        }
        for (; i + 8 <= n; i += 8) {
            memcpy(&a, src + i, 8);
            a ^= k;
            memcpy(dst + i, &a, 8);
        }
    }
    /* i is a multiple of 8 here, so the key phase is still i % 4. */
    for (; i < n; i++) {
        dst[i] = src[i] ^ key[i & 3];
    }
}

/* Fill view with the 4-byte key in obj; ValueError for any other length. */
static int
get_key(PyObject *obj, Py_buffer *view)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_SIMPLE) < 0) {
        return -1;
    }
    if (view->len != 4) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_ValueError, "the masking key must be 4 bytes");
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(apply_mask_doc,
"apply_mask(data, mask, /) -> bytes\n\n"
"Return data XOR the 4-byte mask repeated (RFC 6455 section 5.3).");

static PyObject *
apply_mask(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer data, key;
    PyObject *result = NULL;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "apply_mask() takes exactly 2 arguments");
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &data, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (get_key(args[1], &key) < 0) {
        PyBuffer_Release(&data);
        return NULL;
    }
    result = PyBytes_FromStringAndSize(NULL, data.len);
    if (result != NULL) {
        xor_mask((const unsigned char *)data.buf,
                 (unsigned char *)PyBytes_AS_STRING(result), data.len,
                 (const unsigned char *)key.buf);
    }
    PyBuffer_Release(&key);
    PyBuffer_Release(&data);
    return result;
}

PyDoc_STRVAR(apply_mask_inplace_doc,
"apply_mask_inplace(buffer, mask, /) -> None\n\n"
"XOR a writable buffer (bytearray, writable memoryview) with the mask, in place.");

static PyObject *
apply_mask_inplace(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer data, key;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "apply_mask_inplace() takes exactly 2 arguments");
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &data, PyBUF_WRITABLE) < 0) {
        if (PyErr_ExceptionMatches(PyExc_BufferError)) {  /* read-only: as slice assignment */
            PyErr_Clear();
            PyErr_SetString(PyExc_TypeError, "cannot modify read-only memory");
        }
        return NULL;
    }
    if (get_key(args[1], &key) < 0) {
        PyBuffer_Release(&data);
        return NULL;
    }
    xor_mask((const unsigned char *)data.buf, (unsigned char *)data.buf, data.len,
             (const unsigned char *)key.buf);
    PyBuffer_Release(&key);
    PyBuffer_Release(&data);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ encoding */

static PyObject *str_opcode, *str_payload, *str_fin, *str_rsv, *str_mask, *str_data;
static PyObject *empty_tuple;  /* new_event()'s arguments to tp_new */

/* Match one keyword name; interned names compare by identity first. */
static int
kw_is(PyObject *name, PyObject *interned)
{
    return name == interned || PyUnicode_Compare(name, interned) == 0;
}

/* One operand of the first byte's ``|`` as a C long; *wide is set when it does not fit
 * (the frame's first byte is then out of range, a ValueError as in Python). */
static int
as_bits(PyObject *obj, long *out, int *wide)
{
    int overflow = 0;
    long value;
    PyObject *index = PyNumber_Index(obj);
    if (index == NULL) {
        return -1;
    }
    value = PyLong_AsLongAndOverflow(index, &overflow);
    Py_DECREF(index);
    if (value == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (overflow) {
        *wide = 1;
    }
    *out = value;
    return 0;
}

/* Sort encode_frame's arguments (FASTCALL) into the five slots; NULL when absent. */
static int
encode_args(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames, PyObject **slots)
{
    static PyObject **names[] = {&str_opcode, &str_payload, &str_fin, &str_rsv, &str_mask};
    Py_ssize_t i, j, nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    if (nargs > 2) {
        PyErr_Format(PyExc_TypeError,
                     "encode_frame() takes from 1 to 2 positional arguments but %zd were given",
                     nargs);
        return -1;
    }
    for (i = 0; i < nargs; i++) slots[i] = args[i];
    for (i = 0; i < nkw; i++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, i);
        for (j = 0; j < 5; j++) {
            if (kw_is(name, *names[j])) break;
        }
        if (j == 5) {
            if (!PyErr_Occurred()) {
                PyErr_Format(PyExc_TypeError,
                             "encode_frame() got an unexpected keyword argument '%U'", name);
            }
            return -1;
        }
        if (slots[j] != NULL) {
            PyErr_Format(PyExc_TypeError,
                         "encode_frame() got multiple values for argument '%U'", name);
            return -1;
        }
        slots[j] = args[nargs + i];
    }
    if (slots[0] == NULL) {
        PyErr_SetString(PyExc_TypeError,
                        "encode_frame() missing 1 required positional argument: 'opcode'");
        return -1;
    }
    return 0;
}

/* Write the header for a payload of n bytes; return its length (mask key excluded). */
static Py_ssize_t
write_head(unsigned char *out, long first, Py_ssize_t n, int masked)
{
    Py_ssize_t head = 2;
    out[0] = (unsigned char)first;
    if (n < 126) {
        out[1] = (unsigned char)n;
    } else if (n < 65536) {
        out[1] = 126;
        out[2] = (unsigned char)(n >> 8);
        out[3] = (unsigned char)n;
        head = 4;
    } else {
        uint64_t len = (uint64_t)n;
        int b;
        out[1] = 127;
        for (b = 0; b < 8; b++) out[2 + b] = (unsigned char)(len >> (56 - 8 * b));
        head = 10;
    }
    if (masked) out[1] |= 0x80;
    return head;
}

PyDoc_STRVAR(encode_frame_doc,
"encode_frame(opcode, payload=b'', *, fin=True, rsv=0, mask=None) -> bytes\n\n"
"Return one complete frame; the twin of frames.encode_frame_python.");

/* Errors come in the order the Python twin meets them: len(payload), the first byte's
 * operands, its range, the key, and last the payload's concatenation. */
static PyObject *
encode_frame(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *slots[5] = {NULL, NULL, NULL, NULL, NULL}, *result = NULL;
    Py_buffer payload = {0}, key = {0};
    int have_payload = 0, have_key = 0, fin = 1, wide = 0;
    long opcode, rsv = 0, first;
    Py_ssize_t head, length;
    unsigned char *out;

    if (encode_args(args, nargs, kwnames, slots) < 0) return NULL;
    if (slots[1] != NULL) {
        if (PyObject_GetBuffer(slots[1], &payload, PyBUF_SIMPLE) == 0) {
            have_payload = 1;
        } else {
            if (PyObject_Size(slots[1]) < 0) return NULL;  /* len() fails first in Python */
            PyErr_Clear();
        }
    }
    if (slots[2] != NULL && (fin = PyObject_IsTrue(slots[2])) < 0) goto done;
    if (slots[3] != NULL && as_bits(slots[3], &rsv, &wide) < 0) goto done;
    if (as_bits(slots[0], &opcode, &wide) < 0) goto done;
    first = (fin ? 0x80 : 0) | rsv | opcode;
    if (wide || first < 0 || first > 255) {
        PyErr_SetString(PyExc_ValueError, "bytes must be in range(0, 256)");
        goto done;
    }
    if (slots[4] != NULL && slots[4] != Py_None) {
        if (get_key(slots[4], &key) < 0) goto done;
        have_key = 1;
    }
    if (slots[1] != NULL && !have_payload) {
        PyErr_Format(PyExc_TypeError, "can't concat %.100s to bytes",
                     Py_TYPE(slots[1])->tp_name);
        goto done;
    }
    length = payload.len;
    result = PyBytes_FromStringAndSize(NULL, (length < 126 ? 2 : length < 65536 ? 4 : 10)
                                                 + (have_key ? 4 : 0) + length);
    if (result == NULL) goto done;
    out = (unsigned char *)PyBytes_AS_STRING(result);
    head = write_head(out, first, length, have_key);
    if (have_key) {
        memcpy(out + head, key.buf, 4);
        xor_mask((const unsigned char *)payload.buf, out + head + 4, length,
                 (const unsigned char *)key.buf);
    } else if (length) {
        memcpy(out + head, payload.buf, (size_t)length);
    }
done:
    if (have_key) PyBuffer_Release(&key);
    if (have_payload) PyBuffer_Release(&payload);
    return result;
}

/* ------------------------------------------------------------------ decoding */

/* A Python int limit as a C value in [-1, LLONG_MAX]: lengths are below 2**63, so a larger
 * limit admits every length and a negative one refuses every length, as in Python. */
static int
as_limit(PyObject *obj, long long *out)
{
    int overflow = 0;
    long long value = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (value == -1 && PyErr_Occurred()) return -1;
    if (overflow > 0) value = LLONG_MAX;
    else if (overflow < 0 || value < -1) value = -1;
    *out = value;
    return 0;
}

PyDoc_STRVAR(scan_frames_doc,
"scan_frames(buf, pos, expect_mask, max_payload, max_compressed, allowed_rsv, /)\n"
"    -> (frames, pos, need, bad)\n\n"
"Decode every complete frame of buf from pos, applying the checks of\n"
"FrameDecoder._parse_head in the same order. frames: (fin, opcode, rsv, payload) tuples,\n"
"payloads unmasked. pos: where decoding stopped. need: the end of the incomplete frame\n"
"at pos once its header is complete, else 0. bad: False, or when the header at pos breaks\n"
"a rule, the violation code the twin's ProtocolError carries (errors.VIOLATION_CODES);\n"
"the caller re-reads that header with the Python twin to raise the exact error.");

static PyObject *
scan_frames(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view;
    PyObject *frames = NULL, *result = NULL;
    Py_ssize_t pos, n;
    long long max_payload, max_compressed;
    long allowed_rsv;
    int expect_mask;
    const char *bad = NULL;  /* a ProtocolError.code (errors.py), set where the twin raises */
    unsigned long long need = 0;
    const unsigned char *buf;

    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "scan_frames() takes exactly 6 arguments");
        return NULL;
    }
    pos = PyLong_AsSsize_t(args[1]);
    if (pos == -1 && PyErr_Occurred()) return NULL;
    if ((expect_mask = PyObject_IsTrue(args[2])) < 0) return NULL;
    if (as_limit(args[3], &max_payload) < 0 || as_limit(args[4], &max_compressed) < 0) {
        return NULL;
    }
    allowed_rsv = PyLong_AsLong(args[5]);
    if (allowed_rsv == -1 && PyErr_Occurred()) return NULL;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) return NULL;
    buf = (const unsigned char *)view.buf;
    n = view.len;
    if (pos < 0 || pos > n) {
        PyErr_SetString(PyExc_ValueError, "pos out of range");
        goto done;
    }
    frames = PyList_New(0);
    if (frames == NULL) goto done;

    while (n - pos >= 2) {
        const unsigned char *p = buf + pos;
        unsigned int b0 = p[0], b1 = p[1], opcode = b0 & 0x0F, rsv = b0 & 0x70;
        unsigned long long length = b1 & 0x7F;
        Py_ssize_t avail = n - pos, head = 2;
        PyObject *payload, *frame;

        if (opcode >= 0x8 && opcode <= 0xA) {
            /* section 5.5: unfragmented, at most 125 bytes; RSV never set (RFC 7692 6.1) */
            if (!(b0 & 0x80)) { bad = "fragmented_control"; break; }
            if (length > 125) { bad = "control_too_long"; break; }
            if (rsv) { bad = "reserved_bits"; break; }
        } else if (opcode > 0x2) {
            bad = "reserved_opcode"; break;  /* section 5.2 */
        }
        if (rsv & ~allowed_rsv) { bad = "reserved_bits"; break; }  /* section 5.2 */
        if (((b1 & 0x80) != 0) != (expect_mask != 0)) {              /* section 5.1 */
            bad = expect_mask ? "unmasked" : "masked_server_frame";
            break;
        }
        if (length == 126) {
            if (avail < 4) break;
            length = ((unsigned long long)p[2] << 8) | p[3];
            head = 4;
            if (length < 126) { bad = "bad_length"; break; }    /* 5.2: minimal length */
        } else if (length == 127) {
            int b;
            if (avail < 10) break;
            length = 0;
            for (b = 0; b < 8; b++) length = (length << 8) | p[2 + b];
            head = 10;
            if (length >> 63) { bad = "bad_length"; break; }    /* 5.2: top bit 0 */
            if (length < 65536) { bad = "bad_length"; break; }  /* 5.2: minimal length */
        }
        /* section 10.4: the budget, decided from the header (length < 2**63 here) */
        if (opcode < 0x8 && (long long)length > (rsv ? max_compressed : max_payload)) {
            bad = "too_big"; break;
        }
        if (expect_mask) {
            head += 4;
            if (head > avail) break;
        }
        if (length > (unsigned long long)(avail - head)) {
            need = (unsigned long long)pos + (unsigned long long)head + length;
            break;
        }
        payload = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)length);
        if (payload == NULL) goto fail;
        if (expect_mask) {
            xor_mask(p + head, (unsigned char *)PyBytes_AS_STRING(payload),
                     (Py_ssize_t)length, p + head - 4);
        } else if (length) {
            memcpy(PyBytes_AS_STRING(payload), p + head, (size_t)length);
        }
        frame = PyTuple_New(4);
        if (frame == NULL) {
            Py_DECREF(payload);
            goto fail;
        }
        PyTuple_SET_ITEM(frame, 0, Py_NewRef((b0 & 0x80) ? Py_True : Py_False));
        PyTuple_SET_ITEM(frame, 1, PyLong_FromLong((long)opcode));  /* small ints: cached */
        PyTuple_SET_ITEM(frame, 2, PyLong_FromLong((long)rsv));
        PyTuple_SET_ITEM(frame, 3, payload);
        if (PyList_Append(frames, frame) < 0) {
            Py_DECREF(frame);
            goto fail;
        }
        Py_DECREF(frame);
        pos += head + (Py_ssize_t)length;
    }
    if (bad == NULL) {
        result = Py_BuildValue("(NnKO)", frames, pos, need, Py_False);
    } else {  /* the error path only */
        result = Py_BuildValue("(NnKs)", frames, pos, need, bad);
    }
    frames = NULL;  /* stolen by N, even on failure */
    goto done;
fail:
    Py_CLEAR(frames);
done:
    PyBuffer_Release(&view);
    return result;
}

PyDoc_STRVAR(scan_messages_doc,
"scan_messages(buf, expect_mask, max_payload, text_type, binary_type, /)\n"
"    -> (events, end)\n\n"
"The plain whole messages at the start of buf: unfragmented, uncompressed text and binary\n"
"frames (first byte 0x81 or 0x82), masked as expect_mask says, with a minimal length of at\n"
"most max_payload, complete, text valid UTF-8. Each becomes text_type(str) or\n"
"binary_type(bytes) (made without calling __init__: the type's only field is data).\n"
"end: where the first other frame starts; the frame decoder judges it and what follows.");

/* ``cls(data)`` for a dataclass whose only field is ``data``, without its Python __init__. */
static PyObject *
new_event(PyObject *cls, PyObject *data)
{
    PyTypeObject *type = (PyTypeObject *)cls;
    PyObject *event = type->tp_new(type, empty_tuple, NULL);
    if (event == NULL) return NULL;
    if (PyObject_SetAttr(event, str_data, data) < 0) {
        Py_DECREF(event);
        return NULL;
    }
    return event;
}

/* The payload of the frame at p (head bytes of header, the key last when masked), unmasked,
 * as bytes, or decoded as str for text (unmasked on the stack or in a scratch buffer: one
 * allocation, the str); NULL with no exception set when the text is not valid UTF-8 (the
 * frame decoder reports that), NULL with one set on a real error. */
static PyObject *
message_data(const unsigned char *p, Py_ssize_t head, Py_ssize_t length, int masked, int text)
{
    const unsigned char *key = p + head - 4;
    if (!text) {
        PyObject *raw = PyBytes_FromStringAndSize(masked ? NULL : (const char *)p + head, length);
        if (raw != NULL && masked)
            xor_mask(p + head, (unsigned char *)PyBytes_AS_STRING(raw), length, key);
        return raw;
    }
    unsigned char stack[512], *scratch = NULL;
    const unsigned char *src = p + head;
    if (masked) {
        unsigned char *dst = stack;
        if (length > (Py_ssize_t)sizeof stack) {
            if ((dst = scratch = PyMem_Malloc((size_t)length)) == NULL) return PyErr_NoMemory();
        }
        xor_mask(p + head, dst, length, key);
        src = dst;
    }
    PyObject *str = PyUnicode_DecodeUTF8((const char *)src, length, "strict");
    PyMem_Free(scratch);
    if (str == NULL && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) PyErr_Clear();
    return str;
}

static PyObject *
scan_messages(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view;
    PyObject *events, *result = NULL;
    long long max_payload;
    int expect_mask;
    Py_ssize_t pos = 0, n;

    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "scan_messages() takes exactly 5 arguments");
        return NULL;
    }
    if ((expect_mask = PyObject_IsTrue(args[1])) < 0) return NULL;
    if (as_limit(args[2], &max_payload) < 0) return NULL;
    if (!PyType_Check(args[3]) || !PyType_Check(args[4])) {
        PyErr_SetString(PyExc_TypeError, "scan_messages() needs the two event types");
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) return NULL;
    n = view.len;
    if ((events = PyList_New(0)) == NULL) goto done;
    while (n - pos >= 2) {
        const unsigned char *p = (const unsigned char *)view.buf + pos;
        unsigned long long length = p[1] & 0x7F;
        Py_ssize_t avail = n - pos, head = 2;
        if ((p[0] != 0x81 && p[0] != 0x82) || ((p[1] & 0x80) != 0) != (expect_mask != 0)) break;
        if (length == 126) {
            if (avail < 4) break;
            length = ((unsigned long long)p[2] << 8) | p[3];
            head = 4;
            if (length < 126) break;
        } else if (length == 127) {
            if (avail < 10) break;
            length = 0;
            for (int b = 0; b < 8; b++) length = (length << 8) | p[2 + b];
            head = 10;
            if ((length >> 63) || length < 65536) break;
        }
        if ((long long)length > max_payload) break;
        head += expect_mask ? 4 : 0;
        if (head > avail || length > (unsigned long long)(avail - head)) break;
        PyObject *data = message_data(p, head, (Py_ssize_t)length, expect_mask, p[0] == 0x81);
        if (data == NULL) {
            if (PyErr_Occurred()) Py_CLEAR(events);
            break;  /* invalid UTF-8: the decoder fails the connection with 1007 */
        }
        PyObject *event = new_event(p[0] == 0x81 ? args[3] : args[4], data);
        Py_DECREF(data);
        if (event == NULL || PyList_Append(events, event) < 0) {
            Py_XDECREF(event);
            Py_CLEAR(events);
            break;
        }
        Py_DECREF(event);
        pos += head + (Py_ssize_t)length;
    }
    if (events != NULL) result = Py_BuildValue("(Nn)", events, pos);
done:
    PyBuffer_Release(&view);
    return result;
}

/* ------------------------------------------------------------------ handshake head */

/* RFC 7230 section 3.2.6 tchar, and the bytes a field value may hold (field-vchar, SP,
 * HTAB, obs-text: every byte but the CTLs other than HTAB). */
static unsigned char is_tchar[256], is_value[256];

static void
init_head_tables(void)
{
    const char *extra = "!#$%&'*+-.^_`|~";
    int c;
    for (c = 0; c < 256; c++) {
        is_tchar[c] = (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')
                      || (c != 0 && strchr(extra, c) != NULL);
        is_value[c] = c == '\t' || (c >= 0x20 && c != 0x7F);
    }
}

/* text, or the equal string held in shared (one object for common names and values) */
static PyObject *
shared_text(PyObject *shared, PyObject *text)
{
    PyObject *same;
    if (text == NULL) return NULL;
    same = PyDict_GetItemWithError(shared, text);
    if (same == NULL) return PyErr_Occurred() ? (Py_DECREF(text), NULL) : text;
    Py_DECREF(text);
    return Py_NewRef(same);
}

/* Fields seen before, kept by head_fields' caller: the same bound as handshake.py's
 * SEEN_FIELDS_MAX, and the same lengths (a longer line is never hashed for it). */
#define SEEN_FIELDS_MAX 256
#define SEEN_NAME_MAX 32
#define SEEN_VALUE_MAX 64

/* (key, text), or the equal tuple held in seen; a new short field named in cached is
 * added to seen (emptied first when full). Steals key and text. */
static PyObject *
seen_field(PyObject *seen, PyObject *cached, PyObject *key, PyObject *text,
           Py_ssize_t name_len, Py_ssize_t value_len)
{
    PyObject *field = PyTuple_Pack(2, key, text), *same;
    int wanted;

    Py_DECREF(key);
    Py_DECREF(text);
    if (field == NULL || name_len > SEEN_NAME_MAX || value_len > SEEN_VALUE_MAX) return field;
    same = PyDict_GetItemWithError(seen, field);
    if (same != NULL) {
        Py_DECREF(field);
        return Py_NewRef(same);
    }
    if (PyErr_Occurred() || (wanted = PySet_Contains(cached, PyTuple_GET_ITEM(field, 0))) < 0) {
        Py_DECREF(field);
        return NULL;
    }
    if (wanted) {
        if (PyDict_GET_SIZE(seen) >= SEEN_FIELDS_MAX) PyDict_Clear(seen);
        if (PyDict_SetItem(seen, field, field) < 0) {
            Py_DECREF(field);
            return NULL;
        }
    }
    return field;
}

/* one field line: append (name, value) to fields and value to index[name] */
static int
add_field(PyObject *fields, PyObject *index, PyObject *const *tables, const unsigned char *name,
          Py_ssize_t name_len, const unsigned char *value, Py_ssize_t value_len)
{
    PyObject *key, *text, *field, *values;
    Py_UCS1 *out;
    Py_ssize_t i;
    int rc;

    if ((key = PyUnicode_New(name_len, 127)) == NULL) return -1;
    out = PyUnicode_1BYTE_DATA(key);
    for (i = 0; i < name_len; i++) {  /* tchar only: ASCII, lowered as bytes.lower() does */
        unsigned char c = name[i];
        out[i] = (c >= 'A' && c <= 'Z') ? (Py_UCS1)(c + 32) : (Py_UCS1)c;
    }
    if ((key = shared_text(tables[0], key)) == NULL) return -1;
    text = shared_text(tables[0], PyUnicode_DecodeLatin1((const char *)value, value_len, NULL));
    if (text == NULL) {
        Py_DECREF(key);
        return -1;
    }
    field = seen_field(tables[1], tables[2], key, text, name_len, value_len);
    if (field == NULL) return -1;
    key = PyTuple_GET_ITEM(field, 0);  /* borrowed from field, which fields keeps */
    text = PyTuple_GET_ITEM(field, 1);
    rc = PyList_Append(fields, field);
    Py_DECREF(field);
    if (rc < 0) return -1;
    values = PyDict_GetItemWithError(index, key);
    if (values != NULL) return PyList_Append(values, text);
    if (PyErr_Occurred() || (values = PyList_New(1)) == NULL) return -1;
    PyList_SET_ITEM(values, 0, Py_NewRef(text));
    rc = PyDict_SetItem(index, key, values);
    Py_DECREF(values);
    return rc;
}

PyDoc_STRVAR(head_fields_doc,
"head_fields(block, shared, seen, cached, /) -> (fields, index) | None\n\n"
"The fields of block, a run of 'name:value CRLF' lines, when every line is valid:\n"
"names lower-cased, values trimmed of SP/HTAB, each string replaced by its equal in\n"
"shared (a str -> str dict) when there is one, each field by its equal tuple in seen\n"
"(short fields named in the set cached are added to seen, bounded), and the values\n"
"indexed by name. None as soon as anything is unusual: the twin's line loop then gives\n"
"the precise error.");

/* The next 'name:value CRLF' line at p: its name and trimmed value, and where the line
 * after it starts; NULL when the line is unusual. */
static const unsigned char *
next_field(const unsigned char *p, const unsigned char *end, const unsigned char **name,
           Py_ssize_t *name_len, const unsigned char **value, Py_ssize_t *value_len)
{
    const unsigned char *value_end;
    *name = p;
    while (p < end && is_tchar[*p]) p++;
    if (p == *name || p == end || *p != ':') return NULL;
    *name_len = p - *name;
    *value = ++p;
    while (p < end && is_value[*p]) p++;
    if (end - p < 2 || p[0] != '\r' || p[1] != '\n') return NULL;
    value_end = p;
    while (*value < value_end && (**value == ' ' || **value == '\t')) (*value)++;
    while (value_end > *value && (value_end[-1] == ' ' || value_end[-1] == '\t')) value_end--;
    *value_len = value_end - *value;
    return p + 2;
}

static PyObject *
head_fields(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *fields, *index, *result = NULL;
    const unsigned char *p, *begin, *end, *name, *value;
    Py_ssize_t name_len, value_len;

    if (nargs != 4 || !PyBytes_Check(args[0]) || !PyDict_Check(args[1])
        || !PyDict_Check(args[2]) || !PyAnySet_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError,
                        "head_fields() takes a bytes block, two dicts and a frozenset");
        return NULL;
    }
    begin = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    end = begin + PyBytes_GET_SIZE(args[0]);
    for (p = begin; p < end;) {  /* every line valid first: nothing learned from a bad block */
        if ((p = next_field(p, end, &name, &name_len, &value, &value_len)) == NULL) {
            Py_RETURN_NONE;
        }
    }
    if ((fields = PyList_New(0)) == NULL) return NULL;
    if ((index = PyDict_New()) == NULL) goto done;
    for (p = begin; p < end;) {
        p = next_field(p, end, &name, &name_len, &value, &value_len);
        if (add_field(fields, index, args + 1, name, name_len, value, value_len) < 0) goto done;
    }
    result = Py_BuildValue("(NO)", PyList_AsTuple(fields), index);
done:
    Py_DECREF(fields);
    Py_XDECREF(index);
    return result;
}

/* ------------------------------------------------------------------ module */

static PyMethodDef methods[] = {
    {"apply_mask", (PyCFunction)(void (*)(void))apply_mask, METH_FASTCALL, apply_mask_doc},
    {"apply_mask_inplace", (PyCFunction)(void (*)(void))apply_mask_inplace, METH_FASTCALL,
     apply_mask_inplace_doc},
    {"encode_frame", (PyCFunction)(void (*)(void))encode_frame,
     METH_FASTCALL | METH_KEYWORDS, encode_frame_doc},
    {"scan_frames", (PyCFunction)(void (*)(void))scan_frames, METH_FASTCALL, scan_frames_doc},
    {"scan_messages", (PyCFunction)(void (*)(void))scan_messages, METH_FASTCALL,
     scan_messages_doc},
    {"head_fields", (PyCFunction)(void (*)(void))head_fields, METH_FASTCALL, head_fields_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "wsflask.protocol._speedups",
    "Compiled twins of the protocol core's masking, frame encoding, frame scanning and "
    "handshake field parsing.",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    init_head_tables();
    if (str_opcode == NULL) {
        if ((str_opcode = PyUnicode_InternFromString("opcode")) == NULL) return NULL;
        if ((str_payload = PyUnicode_InternFromString("payload")) == NULL) return NULL;
        if ((str_fin = PyUnicode_InternFromString("fin")) == NULL) return NULL;
        if ((str_rsv = PyUnicode_InternFromString("rsv")) == NULL) return NULL;
        if ((str_mask = PyUnicode_InternFromString("mask")) == NULL) return NULL;
        if ((str_data = PyUnicode_InternFromString("data")) == NULL) return NULL;
        if ((empty_tuple = PyTuple_New(0)) == NULL) return NULL;
    }
    return PyModule_Create(&module);
}
