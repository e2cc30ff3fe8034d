/* Writing and reading one ring record's bytes in one call each: the C side of the hot paths of
 * ring/writer.py (`try_write`) and ring/reader.py (`read`). Byte layout: ring/layout.py.
 *
 *     put(mm, offset, payload, signal, flags, item_count, seq, new_head)
 *     read(mm, capacity, pos, head, max_payload, seq) -> (seq, signal, item_count, start, end,
 *                                                        payload) | None
 *
 * `put` stores the record header (payload_len u32, crc u32, signal u16, flags u16, item_count
 * u32, seq u64, little-endian) at mm[offset], the payload (bytes, or a list of bytes written as
 * their concatenation) after it, then publishes the record: head := new_head, then
 * head_seq := seq + 1, each one 8-byte release store (the reader sees the record bytes before
 * the head that covers them). The caller has decided where the record goes and that it fits.
 *
 * `read` is the whole of RingReader.read for the record at stream position `pos` below the
 * published `head`: follow a wrap marker, check the header lies inside the ring and below head,
 * its seq is `seq`, its flags are exactly FLAG_CRC32C, copy the payload out and check the CRC-32C
 * of header bytes [8, 24) and that copy (not of the shared bytes, which a writer could change)
 * against the header's. It answers None for anything
 * else, and the reader then runs its Python lines, which raise the precise RingCorrupt (or read
 * a zlib-CRC record of an old ring).
 *
 * Both handle CRC-32C records only (layout.FLAG_CRC32C): the Python code keeps zlib's CRC-32 of
 * old rings. CRC-32C (Castagnoli, reflected, init and final xor ~0) is computed with the SSE 4.2
 * instruction where the CPU has it, else by table, and equals google_crc32c's value.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define HEADER_SIZE 256 /* layout.HEADER_SIZE: records start after the ring header */
#define OFF_HEAD 64
#define OFF_HEAD_SEQ 72
#define RECORD_HEADER_SIZE 24
#define META_OFFSET 8
#define FLAG_CRC32C 0x1

static uint32_t table[256];

static void init_table(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        table[i] = c;
    }
}

static uint32_t extend_table(uint32_t crc, const uint8_t *p, size_t n) {
    crc = ~crc;
    while (n--) crc = table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
__attribute__((target("sse4.2"))) static uint32_t extend_sse42(uint32_t crc, const uint8_t *p, size_t n) {
    uint64_t c = ~crc;
    for (; n >= 8; p += 8, n -= 8) {
        uint64_t word;
        memcpy(&word, p, 8);
        c = __builtin_ia32_crc32di(c, word);
    }
    uint32_t c32 = (uint32_t)c;
    while (n--) c32 = __builtin_ia32_crc32qi(c32, *p++);
    return ~c32;
}
#define HAVE_SSE42 1
#endif

static uint32_t (*extend)(uint32_t, const uint8_t *, size_t) = extend_table;

/* The ring's buffer, checked to hold `size` bytes at `offset`. */
static int record_view(PyObject *mm, Py_buffer *view, Py_ssize_t offset, Py_ssize_t size) {
    if (PyObject_GetBuffer(mm, view, PyBUF_WRITABLE) < 0) return 0;
    if (offset < HEADER_SIZE || size < 0 || offset > view->len - size) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_ValueError, "record outside the ring");
        return 0;
    }
    return 1;
}

static void put_le(uint8_t *p, uint64_t value, int bytes) {
    for (int i = 0; i < bytes; i++) p[i] = (uint8_t)(value >> (8 * i));
}

/* put(mm, offset, payload, signal, flags, item_count, seq, new_head) */
static PyObject *put(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError, "put() takes 8 arguments");
        return NULL;
    }
    Py_ssize_t offset = PyLong_AsSsize_t(args[1]);
    unsigned long signal = PyLong_AsUnsignedLong(args[3]);
    unsigned long flags = PyLong_AsUnsignedLong(args[4]);
    unsigned long item_count = PyLong_AsUnsignedLong(args[5]);
    unsigned long long seq = PyLong_AsUnsignedLongLong(args[6]);
    unsigned long long new_head = PyLong_AsUnsignedLongLong(args[7]);
    if (PyErr_Occurred()) return NULL;
    if (signal > 0xffff || !(flags & FLAG_CRC32C) || flags > 0xffff || item_count > 0xffffffffUL) {
        PyErr_SetString(PyExc_ValueError, "signal, flags or item_count out of range");
        return NULL;
    }
    PyObject *payload = args[2];
    int is_list = PyList_Check(payload);
    Py_ssize_t parts = is_list ? PyList_GET_SIZE(payload) : 1;
    Py_ssize_t length = 0;
    for (Py_ssize_t i = 0; i < parts; i++) {
        Py_buffer part;
        if (PyObject_GetBuffer(is_list ? PyList_GET_ITEM(payload, i) : payload, &part, PyBUF_SIMPLE) < 0) {
            return NULL;
        }
        length += part.len;
        PyBuffer_Release(&part);
    }
    if (length > 0xffffffffLL) {
        PyErr_SetString(PyExc_ValueError, "payload too large for a record");
        return NULL;
    }
    Py_buffer view;
    if (!record_view(args[0], &view, offset, RECORD_HEADER_SIZE + length)) return NULL;
    uint8_t *record = (uint8_t *)view.buf + offset;
    put_le(record + 8, signal, 2);
    put_le(record + 10, flags, 2);
    put_le(record + 12, item_count, 4);
    put_le(record + 16, seq, 8);
    uint32_t crc = extend(0, record + META_OFFSET, RECORD_HEADER_SIZE - META_OFFSET);
    uint8_t *p = record + RECORD_HEADER_SIZE;
    Py_ssize_t written = 0;
    for (Py_ssize_t i = 0; i < parts; i++) {
        Py_buffer part;
        if (PyObject_GetBuffer(is_list ? PyList_GET_ITEM(payload, i) : payload, &part, PyBUF_SIMPLE) < 0) {
            PyBuffer_Release(&view);
            return NULL;
        }
        if (written + part.len > length) { /* a part grew in between: never write past the record */
            PyBuffer_Release(&part);
            PyBuffer_Release(&view);
            PyErr_SetString(PyExc_ValueError, "payload changed while being written");
            return NULL;
        }
        memcpy(p, part.buf, (size_t)part.len);
        crc = extend(crc, p, (size_t)part.len);
        p += part.len;
        written += part.len;
        PyBuffer_Release(&part);
    }
    if (written != length) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "payload changed while being written");
        return NULL;
    }
    put_le(record, (uint64_t)length, 4);
    put_le(record + 4, crc, 4);
    /* Publish: the record bytes above are visible before head, head before head_seq. */
    __atomic_store_n((uint64_t *)((uint8_t *)view.buf + OFF_HEAD), (uint64_t)new_head, __ATOMIC_RELEASE);
    __atomic_store_n((uint64_t *)((uint8_t *)view.buf + OFF_HEAD_SEQ), (uint64_t)seq + 1, __ATOMIC_RELEASE);
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
}

static uint64_t get_le(const uint8_t *p, int bytes) {
    uint64_t value = 0;
    for (int i = bytes - 1; i >= 0; i--) value = value << 8 | p[i];
    return value;
}

#define WRAP_MARKER 0xFFFFFFFFu

/* read(mm, capacity, pos, head, max_payload, seq) */
static PyObject *read_record(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "read() takes 6 arguments");
        return NULL;
    }
    unsigned long long capacity = PyLong_AsUnsignedLongLong(args[1]);
    unsigned long long pos = PyLong_AsUnsignedLongLong(args[2]);
    unsigned long long head = PyLong_AsUnsignedLongLong(args[3]);
    unsigned long long max_payload = PyLong_AsUnsignedLongLong(args[4]);
    unsigned long long seq = PyLong_AsUnsignedLongLong(args[5]);
    if (PyErr_Occurred()) return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) return NULL;
    PyObject *result = NULL;
    const uint8_t *data = (const uint8_t *)view.buf + HEADER_SIZE;
    if (capacity == 0 || pos % 8 || (unsigned long long)view.len < HEADER_SIZE + capacity) goto other;
    unsigned long long phys = pos % capacity;
    if (capacity - phys < 4) goto other;
    if (get_le(data + phys, 4) == WRAP_MARKER) {
        pos += capacity - phys;
        phys = 0;
        if (pos >= head) goto other;
    }
    if (capacity - phys < RECORD_HEADER_SIZE) goto other;
    const uint8_t *record = data + phys;
    unsigned long long length = get_le(record, 4);
    unsigned long long end = pos + ((RECORD_HEADER_SIZE + length + 7) & ~7ULL);
    if (length > max_payload || end - pos > capacity - phys || end > head) goto other;
    if (get_le(record + 10, 2) != FLAG_CRC32C || get_le(record + 16, 8) != seq) goto other;
    PyObject *payload = PyBytes_FromStringAndSize((const char *)record + RECORD_HEADER_SIZE, (Py_ssize_t)length);
    if (payload == NULL) goto done;
    uint32_t crc = extend(0, record + META_OFFSET, RECORD_HEADER_SIZE - META_OFFSET);
    crc = extend(crc, (const uint8_t *)PyBytes_AS_STRING(payload), (size_t)length);
    if (crc != (uint32_t)get_le(record + 4, 4)) {
        Py_DECREF(payload);
        goto other;
    }
    result = Py_BuildValue("(KkkKKN)", seq, (unsigned long)get_le(record + 8, 2),
                           (unsigned long)get_le(record + 12, 4), pos, end, payload);
    goto done;
other:
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&view);
    return result;
}

/* crc32c(data, crc=0): for tests, against google_crc32c. */
static PyObject *crc32c(PyObject *module, PyObject *args) {
    (void)module;
    Py_buffer data;
    unsigned int crc = 0;
    if (!PyArg_ParseTuple(args, "y*|I", &data, &crc)) return NULL;
    uint32_t value = extend(crc, (const uint8_t *)data.buf, (size_t)data.len);
    PyBuffer_Release(&data);
    return PyLong_FromUnsignedLong(value);
}

static PyMethodDef methods[] = {
    {"put", (PyCFunction)(void (*)(void))put, METH_FASTCALL,
     "put(mm, offset, payload, signal, flags, item_count, seq, new_head): write and publish a record."},
    {"read", (PyCFunction)(void (*)(void))read_record, METH_FASTCALL,
     "read(mm, capacity, pos, head, max_payload, seq) -> the record's fields, or None (see above)."},
    {"crc32c", crc32c, METH_VARARGS, "crc32c(data, crc=0) -> CRC-32C of data, extending crc."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_records", NULL, -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__records(void) {
    init_table();
#ifdef HAVE_SSE42
    if (__builtin_cpu_supports("sse4.2")) extend = extend_sse42;
#endif
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddStringConstant(m, "implementation", extend == extend_table ? "table" : "sse4.2") < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
