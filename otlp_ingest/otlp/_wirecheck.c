/* Proving, in one pass over the protobuf wire bytes, that a request is valid as it stands: the C
 * side of otlp_ingest/otlp/wire_check.py (see its docstring for what "valid" means and why).
 *
 *     configure(messages)          # the schema, built from the protobuf descriptors once
 *     item_count(root, body) -> int  # -1: not proven (decode with upb and validate as usual)
 *
 * `messages` is a list with one entry per message type, (is_item, fields), where `fields` is a
 * list of (number, kind, repeated, child, id_length, id_may_be_empty, once_bit):
 *
 *   number           the field number, 1..MAX_FIELD-1 (wire_check.py refuses a schema beyond it)
 *   kind             KIND_* below: how the field's bytes are checked
 *   repeated         1 when the field is repeated (then numeric fields may also come packed)
 *   child            for KIND_MESSAGE, the index of its message type in `messages`
 *   id_length        > 0 for an id field (KIND_BYTES): the only valid non-empty length
 *   id_may_be_empty  for an id field, 1 when length 0 (absent) is valid too
 *   once_bit         0..63: the field may occur at most once among the fields with this bit
 *                    (a oneof, or a singular message field, that parsers would merge); -1: any
 *
 * The walk answers -1 for anything it does not expect, and only a well-formed body answers a
 * count: every tag, varint and length complete and in bounds; field numbers 1..2^29-1; no
 * groups (wire types 3 and 4) and no wire types 6 or 7; every known field with the wire type of
 * its kind (numeric repeated fields also packed); every string valid UTF-8 (no overlong forms,
 * no surrogates, nothing above U+10FFFF); nesting at most MAX_DEPTH; every id field's last
 * occurrence of a valid length; no once_bit set twice. Unknown fields are skipped by wire
 * type, as upb keeps them. The count is the number of messages of an item type (is_item).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define KIND_VARINT 1
#define KIND_I64 2
#define KIND_I32 3
#define KIND_BYTES 4
#define KIND_STRING 5
#define KIND_MESSAGE 6

#define WIRE_VARINT 0
#define WIRE_I64 1
#define WIRE_LEN 2
#define WIRE_I32 5

#define MAX_FIELD 64
#define MAX_IDS 4
#define MAX_DEPTH 32

typedef struct {
    uint8_t kind; /* 0: not a known field */
    uint8_t repeated;
    int8_t id_slot; /* index into the message's id rules, -1: not an id */
    int8_t once_bit;
    int32_t child;
} Field;

typedef struct {
    Py_ssize_t length;
    int may_be_empty;
} IdRule;

typedef struct {
    int is_item;
    int n_ids;
    IdRule ids[MAX_IDS];
    Field fields[MAX_FIELD];
} Message;

static Message *schema = NULL;
static Py_ssize_t schema_size = 0;

/* Reads a varint at *p (below end) into *out; 0 if it is truncated or longer than 10 bytes. */
static inline int read_varint(const uint8_t **p, const uint8_t *end, uint64_t *out) {
    const uint8_t *q = *p;
    if (q < end && *q < 0x80) { /* the common case: one byte */
        *out = *q;
        *p = q + 1;
        return 1;
    }
    uint64_t value = 0;
    for (int shift = 0; shift < 70 && q < end; shift += 7) {
        uint8_t byte = *q++;
        if (shift == 63 && byte > 1) {
            return 0; /* beyond 64 bits */
        }
        value |= (uint64_t)(byte & 0x7f) << shift;
        if (!(byte & 0x80)) {
            *p = q;
            *out = value;
            return 1;
        }
    }
    return 0;
}

/* Reads a LEN field's length; *p is then its first byte. 0 if the length runs past end. */
static inline int read_length(const uint8_t **p, const uint8_t *end, Py_ssize_t *length) {
    uint64_t n;
    if (!read_varint(p, end, &n) || n > (uint64_t)(end - *p)) {
        return 0;
    }
    *length = (Py_ssize_t)n;
    return 1;
}

static int utf8_valid(const uint8_t *s, const uint8_t *end) {
    while (s < end) {
        uint64_t word;
        if (end - s >= 8 && (memcpy(&word, s, 8), !(word & 0x8080808080808080ULL))) {
            s += 8; /* eight ASCII bytes */
            continue;
        }
        uint8_t c = *s;
        if (c < 0x80) {
            s++;
            continue;
        }
        Py_ssize_t left = end - s;
        if (c >= 0xC2 && c <= 0xDF) {
            if (left < 2 || (s[1] & 0xC0) != 0x80) return 0;
            s += 2;
        } else if (c >= 0xE0 && c <= 0xEF) {
            if (left < 3 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80) return 0;
            if (c == 0xE0 && s[1] < 0xA0) return 0; /* overlong */
            if (c == 0xED && s[1] > 0x9F) return 0; /* surrogate */
            s += 3;
        } else if (c >= 0xF0 && c <= 0xF4) {
            if (left < 4 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80 || (s[3] & 0xC0) != 0x80)
                return 0;
            if (c == 0xF0 && s[1] < 0x90) return 0; /* overlong */
            if (c == 0xF4 && s[1] > 0x8F) return 0; /* above U+10FFFF */
            s += 4;
        } else {
            return 0;
        }
    }
    return 1;
}

/* Skips a field this message type does not declare; 0 on a group or an invalid wire type. */
static inline int skip_unknown(const uint8_t **p, const uint8_t *end, int wire) {
    uint64_t ignored;
    Py_ssize_t length;
    switch (wire) {
    case WIRE_VARINT:
        return read_varint(p, end, &ignored);
    case WIRE_I64:
        if (end - *p < 8) return 0;
        *p += 8;
        return 1;
    case WIRE_LEN:
        if (!read_length(p, end, &length)) return 0;
        *p += length;
        return 1;
    case WIRE_I32:
        if (end - *p < 4) return 0;
        *p += 4;
        return 1;
    default:
        return 0;
    }
}

/* A packed repeated numeric field's bytes: whole varints, or a multiple of the fixed width. */
static int packed_valid(const uint8_t *p, const uint8_t *end, int kind) {
    uint64_t ignored;
    switch (kind) {
    case KIND_VARINT:
        while (p < end) {
            if (!read_varint(&p, end, &ignored)) return 0;
        }
        return 1;
    case KIND_I64:
        return (end - p) % 8 == 0;
    default:
        return (end - p) % 4 == 0;
    }
}

/* Checks one message of type `index` spanning [p, end); adds its items to *count. */
static int check_message(const uint8_t *p, const uint8_t *end, const Message *message, int depth,
                         Py_ssize_t *count) {
    Py_ssize_t id_length[MAX_IDS] = {0};
    uint64_t seen = 0;
    if (depth > MAX_DEPTH) {
        return 0;
    }
    while (p < end) {
        uint64_t tag;
        if (!read_varint(&p, end, &tag) || (tag >> 3) == 0 || (tag >> 3) > 0x1fffffff) {
            return 0;
        }
        uint64_t number = tag >> 3;
        int wire = (int)(tag & 7);
        const Field *field = number < MAX_FIELD ? &message->fields[number] : NULL;
        if (field == NULL || field->kind == 0) {
            if (!skip_unknown(&p, end, wire)) return 0;
            continue;
        }
        if (field->once_bit >= 0) {
            uint64_t bit = (uint64_t)1 << field->once_bit;
            if (seen & bit) return 0;
            seen |= bit;
        }
        int kind = field->kind;
        Py_ssize_t length;
        if (wire != WIRE_LEN) {
            int expected = kind == KIND_VARINT ? WIRE_VARINT : kind == KIND_I64 ? WIRE_I64
                           : kind == KIND_I32 ? WIRE_I32 : -1;
            if (wire != expected || !skip_unknown(&p, end, wire)) return 0;
            continue;
        }
        if (!read_length(&p, end, &length)) return 0;
        const uint8_t *body = p;
        p += length;
        switch (kind) {
        case KIND_BYTES:
            if (field->id_slot >= 0) id_length[field->id_slot] = length;
            break;
        case KIND_STRING:
            if (!utf8_valid(body, p)) return 0;
            break;
        case KIND_MESSAGE:
            if (!check_message(body, p, &schema[field->child], depth + 1, count)) return 0;
            break;
        default: /* a packed repeated numeric field */
            if (!field->repeated || !packed_valid(body, p, kind)) return 0;
        }
    }
    for (int i = 0; i < message->n_ids; i++) {
        const IdRule *rule = &message->ids[i];
        if (id_length[i] != rule->length && !(id_length[i] == 0 && rule->may_be_empty)) {
            return 0;
        }
    }
    if (message->is_item) {
        (*count)++;
    }
    return 1;
}

/* item_count(root, body): METH_FASTCALL, as it runs once per request. */
static PyObject *item_count(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "item_count(root, body) takes 2 arguments");
        return NULL;
    }
    Py_ssize_t root = PyLong_AsSsize_t(args[0]);
    if (root == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (root < 0 || root >= schema_size) {
        PyErr_SetString(PyExc_ValueError, "no such message type (configure() first)");
        return NULL;
    }
    Py_buffer body;
    if (PyObject_GetBuffer(args[1], &body, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    Py_ssize_t count = 0;
    const uint8_t *p = (const uint8_t *)body.buf;
    int ok = check_message(p, p + body.len, &schema[root], 0, &count);
    PyBuffer_Release(&body);
    return PyLong_FromSsize_t(ok ? count : -1);
}

static int parse_field(PyObject *entry, Message *message, Py_ssize_t n_messages) {
    int number, kind, repeated, child, id_length, may_be_empty, once_bit;
    if (!PyArg_ParseTuple(entry, "iiiiiii", &number, &kind, &repeated, &child, &id_length, &may_be_empty,
                          &once_bit)) {
        return 0;
    }
    if (number < 1 || number >= MAX_FIELD || kind < KIND_VARINT || kind > KIND_MESSAGE ||
        (kind == KIND_MESSAGE && (child < 0 || child >= n_messages)) || once_bit < -1 || once_bit > 63 ||
        (id_length > 0 && (kind != KIND_BYTES || message->n_ids == MAX_IDS))) {
        PyErr_Format(PyExc_ValueError, "invalid schema field %d", number);
        return 0;
    }
    Field *field = &message->fields[number];
    field->kind = (uint8_t)kind;
    field->repeated = (uint8_t)(repeated != 0);
    field->child = child;
    field->once_bit = (int8_t)once_bit;
    field->id_slot = -1;
    if (id_length > 0) {
        field->id_slot = (int8_t)message->n_ids;
        message->ids[message->n_ids].length = id_length;
        message->ids[message->n_ids].may_be_empty = may_be_empty != 0;
        message->n_ids++;
    }
    return 1;
}

static PyObject *configure(PyObject *module, PyObject *arg) {
    (void)module;
    PyObject *messages = PySequence_Fast(arg, "configure() takes a list of message types");
    if (messages == NULL) {
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(messages);
    Message *table = calloc(n ? (size_t)n : 1, sizeof(Message));
    if (table == NULL) {
        Py_DECREF(messages);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        int is_item;
        PyObject *fields;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(messages, i), "pO", &is_item, &fields)) {
            goto fail;
        }
        table[i].is_item = is_item;
        PyObject *seq = PySequence_Fast(fields, "fields must be a list");
        if (seq == NULL) {
            goto fail;
        }
        for (Py_ssize_t j = 0; j < PySequence_Fast_GET_SIZE(seq); j++) {
            if (!parse_field(PySequence_Fast_GET_ITEM(seq, j), &table[i], n)) {
                Py_DECREF(seq);
                goto fail;
            }
        }
        Py_DECREF(seq);
    }
    Py_DECREF(messages);
    free(schema);
    schema = table;
    schema_size = n;
    Py_RETURN_NONE;
fail:
    Py_DECREF(messages);
    free(table);
    return NULL;
}

static PyMethodDef methods[] = {
    {"configure", configure, METH_O, "configure(messages): the schema to check against."},
    {"item_count", (PyCFunction)(void (*)(void))item_count, METH_FASTCALL,
     "item_count(root, body) -> items in a request proven valid as it stands, or -1."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_wirecheck", NULL, -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__wirecheck(void) { return PyModule_Create(&module); }
